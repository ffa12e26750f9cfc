// A tiny DOM builder: h("button", {onclick, class: "x"}, "text", child...). Strings become text nodes,
// so API data is never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Markup this UI generated itself (the SVG charts, which escape their text). */
export function trusted(markup) {
  const t = document.createElement("template");
  t.innerHTML = markup;
  return t.content;
}

/** A labelled form field with optional help text (ids wire label and help for screen readers). */
let fieldSeq = 0;
export function field(label, input, help) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const out = [h("label", { for: id }, label), input];
  if (help) {
    input.setAttribute("aria-describedby", `${id}-help`);
    out.push(h("p", { class: "help", id: `${id}-help` }, help));
  }
  return h("div", { class: "field" }, out);
}

export const badge = (state) => h("span", { class: `badge ${state}` }, state);

/** A table from rows of cells; `empty` shown when there are none. */
export function table(headers, rows, empty = "Nothing yet.", caption) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      // each cell names its column: on a phone the rows stack as label / value pairs (app.css)
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { "data-label": typeof headers[i] === "string" ? headers[i] : "" }, c)))))));
}

/** Runs `fn` with the button disabled and a busy label; errors go to `onError`. */
export async function busy(button, label, fn, onError) {
  const old = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = label;
  try {
    return await fn();
  } catch (e) {
    if (onError) onError(e);
    else throw e;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = old;
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An error handler for `busy` that shows the error's message in `el`. */
export const errorTo = (el) => (e) => {
  el.className = "error";
  el.textContent = e?.message ?? String(e);
};

/**
 * Polls `ready()` every `ms` until it is true, at most `tries` times; resolves whether it got there. The
 * default bound (5 minutes) is for the indexer on a busy node: it usually answers within a second.
 */
export async function until(ready, tries = 600, ms = 500) {
  for (let i = 0; i < tries; i++) {
    if (await ready()) return true;
    await sleep(ms);
  }
  return false;
}

/** A figure with its label (the grids of numbers on the Datanet, rewards, job and operator pages). */
export const stat = (label, value, id) => h("div", { class: "stat", id }, h("b", {}, value == null ? "—" : value), label);
