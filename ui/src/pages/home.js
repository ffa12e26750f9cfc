// Where a new user starts: the way from nothing to chatting with their own model and claiming rewards,
// each step with where it stands for them now.
import { h } from "../dom.js";
import { count } from "../format.js";

export async function render(ctx) {
  const [datanets, models] = await Promise.all([
    ctx.api("/api/datanets?limit=1000").catch(() => []),
    ctx.api("/api/models?limit=1000").catch(() => []),
  ]);
  const me = ctx.address;
  const mine = (xs, f) => (me ? xs.filter((x) => (x[f] ?? "").toLowerCase() === me).length : 0);
  const step = (n, title, text, href, cta, done) =>
    h("li", { class: "card" }, h("h2", {}, `${n}. ${title}`, done ? h("span", { class: "badge succeeded" }, " done") : null),
      h("p", {}, text), h("a", { class: "button", href }, cta));
  return h("section", {},
    h("h1", {}, "OpenLedger"),
    h("p", {}, "Contribute data to Datanets, fine-tune a model on it, chat with it and see whose data answered — every answer's fee flows back to the contributors, on chain."),
    h("ol", { class: "grid" },
      step(1, "Connect", "Sign in with your wallet (or a dev account on the local stack).", "#/connect", me ? "Switch account" : "Connect", !!me),
      step(2, "Datanets", `${count(datanets.length, "Datanet")}. Create one, contribute rows, accept them and publish a version.`, "#/datanets", "Open Datanets", mine(datanets, "owner") > 0),
      step(3, "Train", "Pick a base model and Datanet versions; watch the loss fall.", "#/train", "Train a model", mine(models, "owner") > 0),
      step(4, "Chat", `${count(models.length, "fine-tuned model")}. Ask; each answer shows the contributions it came from.`, "#/chat", "Open chat", false),
      step(5, "Rewards", "What your contributions earned, and a button to claim it.", "#/rewards", "See rewards", false)));
}
