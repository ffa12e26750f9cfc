// Fine-tuned models (LoRA adapters on a shared base): what they were trained on, and their price.
import { h, table } from "../dom.js";
import { shortHex } from "../format.js";

export async function render(ctx) {
  const models = await ctx.api("/api/models?limit=1000");
  return h("section", {},
    h("h1", {}, "Models"),
    h("p", {}, "Every adapter here was trained on exact Datanet versions; its page shows which, and the chat shows whose data each answer used."),
    table(["model", "base", "Datanets", "developer", "on chain", ""], models.map((m) => [
      h("a", { href: `#/models/${m.job_id}` }, `ft-${m.job_id}`),
      m.base_model,
      (m.datanets ?? []).map((d) => `#${d.datanet_id} v${d.version}`).join(", "),
      h("code", { title: m.owner }, shortHex(m.owner)),
      m.model_id ? `model ${m.model_id}` : "not yet",
      h("a", { href: `#/chat?model=ft-${m.job_id}` }, "Chat"),
    ]), "No model yet: train one.", "Models"));
}
