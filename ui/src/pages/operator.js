// The operator's view: chain and indexer, the job queue and workers, settlements. Refreshes itself.
import { h, table, badge, stat } from "../dom.js";
import { formatOpen, shortHex } from "../format.js";

export async function render(ctx) {
  const body = h("div", {});
  let stopped = false;
  ctx.onLeave(() => (stopped = true));
  const draw = async () => {
    const [st, settlements, jobs] = await Promise.all([
      ctx.api("/api/status"),
      ctx.api("/api/settlements").catch(() => []),
      ctx.address ? ctx.api("/api/jobs?limit=20").catch(() => null) : null,
    ]);
    const q = st.jobs ?? {};
    body.replaceChildren(
      h("h2", {}, "Chain and indexer"),
      h("div", { class: "grid" }, stat(`chain ${st.chain_id} head`, st.head), stat("indexed through", st.indexed_through),
        stat("indexer lag (blocks)", st.indexer_lag, "indexer-lag"), stat("relayer", st.relayer ? shortHex(st.relayer) : "none")),
      h("h2", {}, "Queue and workers"),
      h("div", { class: "grid" }, stat("worker slots", st.worker_slots), stat("running", q.running ?? 0), stat("queued", q.queued ?? 0),
        stat("succeeded", q.succeeded ?? 0), stat("failed", q.failed ?? 0)),
      h("p", { class: "muted" }, `Job kinds run here: ${(st.job_kinds ?? []).join(", ") || "none"}.`),
      jobs ? table(["job", "kind", "owner", "state", "progress", "worker", "created"], jobs.map((j) => [
        j.kind === "train" ? h("a", { href: `#/jobs/${j.id}` }, `#${j.id}`) : `#${j.id}`, j.kind, h("code", {}, shortHex(j.owner)), badge(j.state),
        `${Math.round((j.progress ?? 0) * 100)}%`, j.worker ?? "—", new Date(j.created_at).toLocaleString(),
      ]), "No jobs.", "Recent jobs") : h("p", { class: "muted" }, "Sign in to see jobs (admins see everyone's)."),
      h("h2", {}, "Settlements"),
      h("p", { class: "muted" }, st.settle_every_secs ? `This daemon settles every ${st.settle_every_secs} s.` : "This daemon does not run the settlement schedule (openledger settle does it by hand)."),
      table(["epoch", "state", "blocks", "payments", "held", "total", "root", ""], settlements.map((s) => [
        String(s.epoch), badge(s.state), `${s.from_block}–${s.to_block}`, String(s.included ?? 0), String(s.held ?? 0),
        s.total != null ? formatOpen(s.total, 6) : "—", h("code", { title: s.root }, shortHex(s.root ?? "", 8)),
        h("a", { href: `/api/settlements/${s.epoch}/report` }, "report"),
      ]), "No settlement yet.", "Settlements"));
  };
  await draw();
  (async () => {
    while (!stopped) {
      await new Promise((r) => setTimeout(r, 3000));
      if (!stopped) await draw().catch(() => {});
    }
  })();
  return h("section", {}, h("h1", {}, "Operator"), body);
}
