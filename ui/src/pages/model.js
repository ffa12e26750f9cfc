// A model's provenance (base model, Datanet versions, the contributions trained on, hashes, on-chain ids and
// transactions) and its price per 1,000 tokens, which its developer sets.
import { h, field, table, busy, errorTo } from "../dom.js";
import { formatOpen, parseOpen, shortHex, EXPORTS, exportCommands } from "../format.js";

export async function render(ctx, [id]) {
  const [detail, price] = await Promise.all([ctx.api(`/api/models/${id}`), ctx.api(`/api/models/${id}/price`)]);
  const m = detail; // the model's fields, flattened, with sources and files
  const job = ctx.address ? await ctx.api(`/api/jobs/${id}`).catch(() => null) : null;
  const manifest = await ctx.api(`/api/manifests/${detail.manifest_hash}`).catch(() => null);
  const published = job?.result?.published ?? null;
  const byContributor = new Map();
  for (const s of detail.sources) byContributor.set(s.contributor, (byContributor.get(s.contributor) ?? 0) + 1);
  const kv = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  const out = h("section", {},
    h("h1", {}, `Model ft-${m.job_id}`),
    h("div", { class: "row" }, h("a", { class: "button", href: `#/chat?model=ft-${m.job_id}` }, "Chat with it")),
    h("h2", {}, "Provenance"),
    h("dl", { class: "card" },
      kv("Base model", `${m.base_model} (sha256 ${shortHex(m.base_model_hash, 8)})`),
      kv("Developer", h("code", {}, m.owner)),
      kv("Trained on", (m.datanets ?? []).map((d) => h("div", {}, h("a", { href: `#/datanets/${d.datanet_id}` }, `Datanet ${d.datanet_id}`), ` version ${d.version}, root `, h("code", {}, shortHex(d.root, 8))))),
      kv("Contributions", `${detail.sources.length} from ${byContributor.size} contributor(s)`),
      kv("Adapter sha256", h("code", {}, m.adapter_hash)),
      kv("Manifest sha256 (on-chain training-config hash)", h("code", {}, m.manifest_hash)),
      kv("On chain", m.model_id ? `model ${m.model_id}, adapter ${m.adapter_id ?? "—"} on chain ${ctx.config.chain_id}` : "not registered yet"),
      published ? kv("Transactions", Object.entries(published).filter(([k]) => /tx|hash/i.test(k)).map(([k, v]) => h("div", {}, `${k}: `, h("code", {}, String(v))))) : null,
      kv("Files", detail.files.map((f) => h("div", {}, h("a", { href: `/api/models/${m.job_id}/files/${f}` }, f))))),
    h("h2", {}, "Contributions trained on"),
    table(["source", "Datanet", "contribution", "contributor", "examples", "tokens"], detail.sources.map((s) => [
      String(s.source), h("a", { href: `#/datanets/${s.datanet_id}` }, s.datanet_id),
      h("a", { href: `#/datanets/${s.datanet_id}?contribution=${s.contribution_id}` }, `#${s.contribution_id}`),
      h("code", { title: s.contributor }, shortHex(s.contributor)), String(s.examples), String(s.tokens),
    ]), "None (an imported adapter).", "Training sources"),
    evaluationCard(manifest?.evaluation),
    exportCard(m, detail.exports ?? []),
    priceCard(ctx, m, price));
  return out;
}

/** The held-out split's scores (the manifest's `evaluation`), so runs can be compared. */
export function evaluationCard(e) {
  const card = h("div", { class: "card" }, h("h2", {}, "Evaluation (held-out split)"));
  if (!e) {
    card.append(h("p", { class: "muted" }, "No held-out split (eval_fraction 0, or an imported adapter)."));
    return card;
  }
  const num = (x, d = 3) => (x == null ? "—" : Number(x).toFixed(d));
  const pct = (x) => (x == null ? "—" : `${(100 * x).toFixed(1)}%`);
  card.append(h("dl", {},
    h("dt", {}, "Examples"), h("dd", {}, String(e.eval_examples)),
    h("dt", {}, "Loss per token"), h("dd", {}, num(e.loss)),
    h("dt", {}, "Perplexity"), h("dd", {}, num(e.perplexity, 2)),
    h("dt", {}, "Answers scored"), h("dd", {}, String(e.answered)),
    h("dt", {}, "Exact match"), h("dd", {}, pct(e.exact_match)),
    h("dt", {}, "ROUGE-L"), h("dd", {}, num(e.rouge_l))));
  if (e.samples?.length) {
    card.append(table(["reference", "answer", "ROUGE-L"], e.samples.map((x) => [x.reference, x.answer, num(x.rouge_l)]), "", "Sample answers"));
  }
  return card;
}

/** Downloads for llama.cpp, Ollama and Hugging Face tools, with the commands that run them. */
function exportCard(m, exports) {
  const card = h("div", { class: "card" }, h("h2", {}, "Export"));
  if (!exports.length) {
    card.append(h("p", { class: "muted" }, "Its base model is not installed on this daemon, so it cannot be exported here."));
    return card;
  }
  card.append(h("p", { class: "muted" }, "Merged exports are made on the first download (a minute for a small model), then kept."));
  card.append(h("ul", {}, exports.map((e) => h("li", {},
    h("a", { href: `/api/models/${m.job_id}/export/${e}`, download: e }, e), ` — ${EXPORTS[e] ?? ""}`))));
  const cmds = exportCommands(`ft-${m.job_id}`, exports, m.base_model);
  if (cmds.length) card.append(h("pre", {}, h("code", {}, cmds.join("\n"))));
  return card;
}

function priceCard(ctx, m, price) {
  const eff = price.effective_price_per_1k;
  const card = h("div", { class: "card" }, h("h2", {}, "Price"),
    h("p", {}, eff == null ? "This daemon does not serve models." : `${formatOpen(eff, 6)} OPEN per 1,000 tokens (prompt plus answer) ${price.price_per_1k == null ? "— the daemon's default" : "— set by the developer"}.`));
  if (ctx.address !== m.owner.toLowerCase()) return card;
  const input = h("input", { type: "text", inputmode: "decimal", value: price.price_per_1k == null ? "" : formatOpen(price.price_per_1k, 18).replace(/,/g, "") });
  const msg = h("p", { role: "status" });
  const save = h("button", { type: "submit" }, "Set price");
  const form = h("form", {}, field("Your price (OPEN per 1,000 tokens)", input, "Empty: use the daemon's default. Part of each fee goes to the contributors whose data answered."), save, msg);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(save, "Saving…", async () => {
      const v = input.value.trim();
      await ctx.api(`/api/models/${m.job_id}/price`, { method: "PUT", json: { price_per_1k: v === "" ? null : parseOpen(v).toString() } });
      ctx.toast("Price saved");
      ctx.refresh();
    }, errorTo(msg));
  });
  card.append(form);
  return card;
}
