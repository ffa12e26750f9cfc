// OpenChat: pick a model, chat with streamed answers; under each answer its attribution — the spans that
// came from training data, linked to their contributions, and each contributor's share of this answer's fee.
import { h, field, busy, table, sleep } from "../dom.js";
import { readSse } from "../sse.js";
import { segments, shares, poolOf } from "../attribution.js";
import { formatOpen, ppmPercent, shortHex } from "../format.js";
import { calldata, wordAt } from "../abi.js";
import { keccak256, toHex } from "../keccak.js";

export async function render(ctx, _params, query) {
  const models = (await ctx.api("/v1/models")).data ?? [];
  const adapters = await ctx.api("/api/models?limit=1000").catch(() => []);
  const modelId = (name) => adapters.find((m) => `ft-${m.job_id}` === name)?.model_id ?? null;
  const sel = h("select", {}, models.map((m) => h("option", { value: m.id }, m.id.startsWith("ft-") ? `${m.id} (fine-tuned)` : `${m.id} (base model)`)));
  const wanted = query.get("model");
  // the newest fine-tuned model unless one is asked for (the list is oldest first)
  sel.value = models.some((m) => m.id === wanted) ? wanted : ([...models].reverse().find((m) => m.id.startsWith("ft-"))?.id ?? models[0]?.id ?? "");
  const pay = h("select", {});
  const payHelp = h("p", { class: "help" });
  const drawPay = () => {
    const free = !sel.value.startsWith("ft-");
    const opts = [];
    if (free) opts.push(["free", "Free (the base model has no training data to pay)"]);
    else {
      // the daemon sponsors signed-in callers only (it caps each one)
      if (ctx.config.sponsor_inference && ctx.address) opts.push(["sponsored", "Paid by this daemon (dev stack)"]);
      opts.push(["wallet", "Pay each answer from my wallet (FeeRouter)"]);
      if (ctx.address && !ctx.config.sponsor_inference) opts.push(["credit", "My inference credit on this daemon"]);
    }
    pay.replaceChildren(...opts.map(([v, t]) => h("option", { value: v }, t)));
    payHelp.textContent = free
      ? ""
      : "Part of every fee goes to the contributors whose data the answer used; see under each answer." +
        (ctx.config.sponsor_inference && !ctx.address ? " Sign in to have this daemon pay for your answers." : "");
  };
  sel.addEventListener("change", drawPay);
  drawPay();
  const log = h("div", { class: "chat-log", "aria-live": "polite" });
  const empty = h("p", { class: "muted" }, "No messages yet. Ask below: each answer shows the contributions it came from.");
  log.append(empty);
  const input = h("textarea", { rows: 2, placeholder: "Ask something…", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const msg = h("p", { role: "status" });
  const history = [];
  let abort = null;
  // a payment made for an answer that then failed, kept for the next try: { model, rid, amount }
  let unusedPayment = null;
  ctx.onLeave(() => abort?.abort());

  const ask = async () => {
    const text = input.value.trim();
    if (!text) throw new Error("type a question first");
    if (!sel.value) throw new Error("this daemon serves no model");
    const model = sel.value;
    const body = { model, messages: [...history, { role: "user", content: text }], stream: true, max_tokens: 64, temperature: 0 };
    const question = h("div", { class: "msg user" }, text);
    empty.remove();
    const answerEl = h("div", { class: "msg assistant" }, "…");
    log.append(question, answerEl);
    let answer = "";
    try {
      if (pay.value === "wallet") await payFromWallet(model, body);
      msg.textContent = "Generating…";
      abort = new AbortController();
      log.setAttribute("aria-busy", "true");
      const res = await ctx.api("/v1/chat/completions", { json: body, raw: true, signal: abort.signal });
      unusedPayment = null;
      let meta = null;
      let attribution = null;
      await readSse(res, (ev) => {
        if (ev.data === "[DONE]") return;
        const c = JSON.parse(ev.data);
        if (c.error) throw new Error(`the model failed: ${c.error.message ?? "unknown error"}`);
        if (c.openledger?.inference_id) meta = c.openledger;
        if (c.openledger?.attribution) attribution = c.openledger.attribution;
        const d = c.choices?.[0]?.delta?.content;
        if (d) {
          answer += d;
          answerEl.textContent = answer;
        }
      });
      log.removeAttribute("aria-busy");
      input.value = "";
      history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      msg.textContent = "";
      if (meta?.inference_id && model.startsWith("ft-")) {
        const box = h("div", { class: "attribution" }, h("p", { class: "muted" }, "Tracing the answer to its training data…"));
        answerEl.after(box);
        showAttribution(ctx, answerEl, box, answer, meta, attribution);
      }
    } catch (e) {
      // the question stays in the box for another try; the half answer is marked, not kept in the history
      log.removeAttribute("aria-busy");
      if (answer) answerEl.append(h("p", { class: "error" }, "(interrupted)"));
      else {
        question.remove();
        answerEl.remove();
      }
      throw e;
    }
  };

  /** Pays FeeRouter for this request from the wallet (or reuses a payment whose answer failed). */
  const payFromWallet = async (model, body) => {
    const id = modelId(model);
    if (!id) throw new Error(`${model} is not registered on chain yet, so it cannot be paid for`);
    const w = await ctx.needWallet();
    const price = await ctx.api(`/api/models/${model.slice(3)}/price`);
    // the daemon charges prompt + max_tokens tokens; a token covers at least one UTF-8 byte, so the bytes
    // of the messages plus the chat template's few dozen are an upper bound
    const bytes = new TextEncoder().encode(body.messages.map((m) => m.content).join("")).length;
    const tokens = BigInt(bytes + 32 * (body.messages.length + 1) + body.max_tokens);
    const amount = (BigInt(price.effective_price_per_1k) * tokens + 999n) / 1000n;
    if (unusedPayment && unusedPayment.model === model && unusedPayment.amount >= amount) {
      body.request_secret = unusedPayment.secret;
      body.payer = w.address;
      return;
    }
    const allowance = wordAt(await w.call(w.contract("OpenToken"), calldata("allowance(address,address)", [w.address, w.contract("FeeRouter")])));
    if (allowance < amount) {
      msg.textContent = "Approve OPEN for FeeRouter in the wallet…";
      await w.send("OpenToken", "approve(address,uint256)", [w.contract("FeeRouter"), amount * 20n], "approving OPEN");
    }
    // paid under keccak256(secret): the request id is public once sent; the secret goes only to the daemon,
    // so no one else can spend this payment
    const secretBytes = crypto.getRandomValues(new Uint8Array(32));
    const secret = toHex(secretBytes);
    const rid = toHex(keccak256(secretBytes));
    msg.textContent = `Pay ${formatOpen(amount, 6)} OPEN for this answer in the wallet…`;
    await w.send("FeeRouter", "payInference(uint256,bytes32,uint256)", [id, rid, amount], "paying for the answer");
    unusedPayment = { model, secret, amount };
    body.request_secret = secret;
    body.payer = w.address;
  };

  const form = h("form", {}, field("Model", sel), field("Payment", pay), payHelp, field("Message", input), send, msg);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (send.disabled) return;
    msg.className = "";
    busy(send, "Answering…", ask, (e) => {
      msg.className = "error";
      const kept = unusedPayment ? " Your payment is kept: Send again to use it." : "";
      msg.textContent = (e.name === "AbortError" ? "stopped" : e.message) + kept;
    });
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      // one question at a time: Enter while an answer streams does nothing
      if (!send.disabled) form.requestSubmit(send);
    }
  });
  return h("section", {}, h("h1", {}, "Chat"),
    models.length === 0 ? h("p", { class: "error" }, "This daemon serves no model.") : null,
    h("div", { class: "card" }, log), h("div", { class: "card" }, form));
}

async function showAttribution(ctx, answerEl, box, answer, meta, att) {
  for (let i = 0; i < 120 && !att?.weights; i++) {
    await sleep(i === 0 ? 0 : 1000);
    att = await ctx.api(`/api/inferences/${meta.inference_id}/attribution`).catch(() => att);
  }
  if (!att) {
    box.replaceChildren(h("p", { class: "muted" }, "No attribution for this answer."));
    return;
  }
  // highlight the spans found in the training data, each linked to its first contribution
  answerEl.replaceChildren(...segments(answer, att.spans).map((s) => {
    if (!s.span) return s.text;
    const c = s.span.contributions?.[0];
    const who = (s.span.contributions ?? []).map((x) => `contribution #${x.contribution_id} by ${shortHex(x.contributor)}`).join(", ");
    const label = `from ${who || "the training data"}`;
    return h("mark", { title: label }, c ? h("a", { href: `#/datanets/${c.datanet_id}?contribution=${c.contribution_id}`, "aria-label": `${s.text}, ${label}` }, s.text) : s.text);
  }));
  let pool = null;
  const payment = meta.payment;
  if (payment?.amount) {
    try {
      const r = await ctx.read(ctx.config.contracts.FeeRouter, calldata("split()"));
      pool = poolOf(payment.amount, { burnBps: wordAt(r, 0), developerBps: wordAt(r, 1), treasuryBps: wordAt(r, 2) });
    } catch {
      pool = null;
    }
  }
  const w = att.weights;
  const sh = shares(w, pool);
  box.replaceChildren(
    h("p", {}, payment?.amount ? `Fee ${formatOpen(payment.amount, 6)} OPEN (${payment.mode.replace("_", " ")})` : "", pool != null ? `; contributors' pool ${formatOpen(pool, 6)} OPEN, shared as below` : "",
      w && sh.length ? `; ${ppmPercent(w.no_attribution)} not attributed (to the protocol).` : "."),
    sh.length
      ? table(["contributor", "share of this answer", "", "OPEN"], sh.map((s) => [
          h("a", { href: `#/rewards?address=${s.contributor}` }, h("code", { title: s.contributor }, shortHex(s.contributor))),
          ppmPercent(s.ppm), h("div", { class: "bar", role: "img", "aria-label": ppmPercent(s.ppm) }, barFill(s.ppm)),
          s.wei == null ? "—" : formatOpen(s.wei, 6),
        ]), "", "Contributors of this answer")
      : h("p", { class: "muted" }, "No contribution shaped this answer enough to be paid: the contributors' share of its fee is not attributed (it goes to the protocol)."),
    h("p", { class: "help" }, `Method ${att.method}; inference ${meta.inference_id}. Shares settle on chain in the next epoch.`));
}

function barFill(ppm) {
  const s = h("span");
  s.style.width = `${Math.min(100, Number(ppm) / 1e4)}%`;
  return s;
}
