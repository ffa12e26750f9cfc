// ModelFactory: a four-step wizard (base model, Datanet versions, the few settings that matter, estimate
// and start) and the list of your training jobs.
import { h, field, table, badge, busy, errorTo } from "../dom.js";
import { datanetMeta, formatDuration, formatParams } from "../format.js";
import { estimateTraining } from "../estimate.js";

const STEPS = ["Base model", "Datanets", "Settings", "Review and start"];

export async function render(ctx) {
  const need = ctx.needSignIn("train a model");
  if (need) return h("section", {}, h("h1", {}, "Train a model"), need);
  const [bases, datanets, jobs] = await Promise.all([
    ctx.api("/api/base-models"),
    ctx.api("/api/datanets?limit=1000"),
    ctx.api(`/api/jobs?kind=train&owner=${ctx.address}&limit=50`).catch(() => []),
  ]);
  const withVersions = datanets.filter((d) => d.latest_version);
  const versionsOf = new Map();
  const s = {
    step: 0,
    base: bases[0]?.id ?? "",
    picked: new Map(), // datanet id -> version
    steps: 30,
    learning_rate: 0.002,
    rank: 8,
    max_seq_len: 128,
    batch_size: 4,
    eval_fraction: 0.1,
  };
  const tps = await measuredThroughput(ctx);
  const body = h("div", { class: "card" });
  const msg = h("p", { role: "status" });

  const draw = async () => {
    msg.textContent = "";
    const nav = h("ol", { class: "steps", "aria-label": "Steps" }, STEPS.map((t, i) => h("li", { "aria-current": i === s.step ? "step" : null }, `${i + 1}. ${t}`)));
    const content = await [baseStep, datanetStep, settingsStep, reviewStep][s.step]();
    const back = h("button", { type: "button", class: "secondary", disabled: s.step === 0, onclick: () => { s.step--; draw(); } }, "Back");
    const next = s.step < 3 ? h("button", { type: "button", onclick: () => { const e = validate(); if (e) { msg.className = "error"; msg.textContent = e; return; } s.step++; draw(); } }, "Next") : startButton();
    body.replaceChildren(nav, h("fieldset", {}, h("legend", {}, STEPS[s.step]), content), h("div", { class: "row" }, back, next), msg);
    body.querySelector("input, select, button:not(:disabled)")?.focus();
  };

  const validate = () => {
    if (s.step === 0 && !s.base) return "no base model is installed on this daemon (scripts/setup.sh fetches SmolLM2)";
    if (s.step === 1 && s.picked.size === 0) return "pick at least one Datanet version to train on";
    if (s.step === 2) {
      if (!(s.steps >= 1 && s.steps <= 100000)) return "steps must be between 1 and 100000";
      if (!(s.learning_rate > 0 && s.learning_rate < 1)) return "the learning rate must be between 0 and 1";
      if (![4, 8, 16, 32].includes(s.rank)) return "the LoRA rank must be 4, 8, 16 or 32";
      if (!(s.max_seq_len >= 16 && s.max_seq_len <= 2048)) return "the sequence length must be between 16 and 2048 tokens";
      if (!(s.batch_size >= 1 && s.batch_size <= 64)) return "the batch size must be between 1 and 64";
      if (!(s.eval_fraction >= 0 && s.eval_fraction < 0.5)) return "the held-out share must be between 0 and 0.5";
    }
    return null;
  };

  const baseStep = () => {
    if (bases.length === 0) return h("p", { class: "error" }, "This daemon has no base model installed.");
    return h("div", {}, bases.map((b) => h("label", { class: "inline" },
      h("input", { type: "radio", name: "base", value: b.id, checked: s.base === b.id, onchange: () => (s.base = b.id) }),
      h("span", {}, h("b", {}, b.id), " ", h("span", { class: "muted" }, [
        b.family, formatParams(b.parameters), b.context_length ? `${b.context_length.toLocaleString()}-token context` : null,
        b.format, b.size_bytes ? `${Math.round(b.size_bytes / 1e6)} MB` : null,
      ].filter(Boolean).join(" · "))))),
      h("p", { class: "help" }, "The shared model your adapter is trained on top of; the adapter only learns a small low-rank update (LoRA)."));
  };

  const datanetStep = async () => {
    if (withVersions.length === 0) return h("p", {}, "No Datanet has a published version yet. ", h("a", { href: "#/datanets" }, "Create one and publish a version first."));
    const rows = await Promise.all(withVersions.map(async (d) => {
      if (!versionsOf.has(d.id)) versionsOf.set(d.id, await ctx.api(`/api/datanets/${d.id}/versions`));
      const vs = versionsOf.get(d.id);
      const m = datanetMeta(d.metadata_uri, d.id);
      const sel = h("select", { "aria-label": `version of ${m.name}` }, vs.slice().reverse().map((v) => h("option", { value: v.version }, `version ${v.version} (${v.contribution_count} contributions)`)));
      sel.value = s.picked.get(d.id) ?? vs.at(-1).version;
      const box = h("input", { type: "checkbox", checked: s.picked.has(d.id), "aria-label": `train on ${m.name}` });
      const sync = () => (box.checked ? s.picked.set(d.id, sel.value) : s.picked.delete(d.id));
      box.addEventListener("change", sync);
      sel.addEventListener("change", sync);
      return [box, h("a", { href: `#/datanets/${d.id}` }, m.name), sel];
    }));
    return h("div", {}, table(["", "Datanet", "version"], rows, "", "Datanets with versions"),
      h("p", { class: "help" }, "A version is a fixed set of accepted contributions; the model records exactly which, so every answer can be traced back to them."));
  };

  const num = (key, label, help, attrs = {}) => {
    const i = h("input", { type: "number", value: s[key], ...attrs });
    i.addEventListener("input", () => (s[key] = Number(i.value)));
    return field(label, i, help);
  };
  const settingsStep = () => h("div", {},
    num("steps", "Training steps", "How many updates to make. More steps fit the data more closely; a few dozen is enough for a small Datanet.", { min: 1, max: 100000 }),
    num("learning_rate", "Learning rate", "How big each update is. 0.002 suits a LoRA on a small model; lower it if the loss jumps around.", { step: "0.0001", min: 0 }),
    num("rank", "LoRA rank", "Capacity of the adapter: 4, 8, 16 or 32. Higher learns more and makes a bigger file.", { step: 4, min: 4, max: 32 }),
    num("max_seq_len", "Sequence length (tokens)", "Longer examples are cut to this. Short facts fit in 64-128 tokens.", { min: 16, max: 2048 }),
    num("batch_size", "Batch size", "Examples per step. Larger is smoother but slower per step.", { min: 1, max: 64 }),
    num("eval_fraction", "Held-out share", "Part of the data kept aside to check the model generalises (the eval loss); 0 for tiny Datanets.", { step: "0.05", min: 0, max: 0.5 }));

  const examples = () => [...s.picked.entries()].reduce((n, [id, v]) => n + Number(versionsOf.get(id)?.find((x) => x.version === v)?.contribution_count ?? 0), 0);
  const reviewStep = () => {
    const e = estimateTraining({ steps: s.steps, batchSize: s.batch_size, maxSeqLen: s.max_seq_len, examples: examples(), tokensPerSecond: tps });
    return h("div", {},
      h("dl", {},
        h("dt", {}, "Base model"), h("dd", {}, s.base),
        h("dt", {}, "Datanets"), h("dd", {}, [...s.picked.entries()].map(([id, v]) => `${datanetMeta(withVersions.find((d) => d.id === id)?.metadata_uri, id).name} v${v}`).join(", ")),
        h("dt", {}, "Settings"), h("dd", {}, `${s.steps} steps, learning rate ${s.learning_rate}, LoRA rank ${s.rank}, ${s.max_seq_len} tokens, batch ${s.batch_size}, ${Math.round(s.eval_fraction * 100)}% held out`),
        h("dt", {}, "Estimate"), h("dd", { id: "estimate" },
          `at most ${e.tokens.toLocaleString()} tokens processed; `,
          e.seconds == null ? "time: none of your training runs has finished here yet to measure this daemon's speed (a small run takes a minute or two on a laptop CPU)" : `about ${formatDuration(e.seconds)} on this daemon (it trained ${Math.round(tps)} tokens/s on your last run)`,
          ". Training costs no OPEN here; the daemon registers the finished adapter on chain and pays that gas.")));
  };

  const startButton = () => {
    const b = h("button", { type: "button" }, "Start training");
    b.addEventListener("click", () => busy(b, "Starting…", async () => {
      const job = await ctx.api("/api/jobs", { json: { kind: "train", params: {
        base_model: s.base,
        datanets: [...s.picked.entries()].map(([id, version]) => ({ id, version })),
        config: { steps: s.steps, learning_rate: s.learning_rate, lora: { rank: s.rank, alpha: 2 * s.rank }, max_seq_len: s.max_seq_len,
          batch_size: s.batch_size, eval_fraction: s.eval_fraction, eval_every: Math.max(1, Math.floor(s.steps / 6)) },
      } } });
      ctx.go(`#/jobs/${job.id}`);
    }, errorTo(msg)));
    return b;
  };

  await draw();
  return h("section", {},
    h("h1", {}, "Train a model"),
    h("p", {}, "Fine-tune a LoRA adapter on Datanet versions. You can leave this page: the job runs on the daemon."),
    body,
    h("h2", {}, "Your training jobs"),
    table(["job", "state", "progress", "created", ""], jobs.map((j) => [
      h("a", { href: `#/jobs/${j.id}` }, `#${j.id}`), badge(j.state), `${Math.round((j.progress ?? 0) * 100)}%`, new Date(j.created_at).toLocaleString(),
      j.state === "succeeded" ? h("a", { href: `#/chat?model=ft-${j.id}` }, "Chat") : "",
    ]), "None yet.", "Your training jobs"));
}

/** Tokens/s of the caller's latest finished training run on this daemon (null when none: the jobs list
 * shows non-admins their own jobs only). */
async function measuredThroughput(ctx) {
  try {
    const [last] = await ctx.api("/api/jobs?kind=train&state=succeeded&limit=1");
    if (!last) return null;
    const pts = (await ctx.api(`/api/jobs/${last.id}/metrics`)).filter((p) => p.name === "tokens_per_s").map((p) => p.value);
    return pts.length ? pts.reduce((a, b) => a + b, 0) / pts.length : null;
  } catch {
    return null;
  }
}
