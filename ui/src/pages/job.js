// A training job, live: state, progress, the train and eval loss chart, tokens/s, ETA, logs; cancel.
import { h, trusted, badge, busy, stat } from "../dom.js";
import { lineChart } from "../chart.js";
import { formatDuration } from "../format.js";
import { eta } from "../estimate.js";

export async function render(ctx, [id]) {
  const need = ctx.needSignIn("follow a job");
  if (need) return h("section", {}, h("h1", {}, `Job ${id}`), need);
  const title = h("h1", {}, `Training job #${id}`);
  const stats = h("div", { class: "grid" });
  // screen readers hear state changes only, not every second's numbers
  const announce = h("p", { class: "sr-only", "aria-live": "polite" });
  let lastState = null;
  const cancel = h("button", { type: "button", class: "danger" }, "Cancel training");
  cancel.addEventListener("click", () => busy(cancel, "Cancelling…", () => ctx.api(`/api/jobs/${id}/cancel`, { method: "POST" }), (e) => (err.textContent = e.message)));
  const chart = h("div", { class: "card" });
  const logs = h("pre", { class: "card mono", tabindex: "0", "aria-label": "Job log" });
  const actions = h("div", { class: "row" });
  const err = h("p", { class: "error", role: "alert" });
  let logAfter = 0;
  let stopped = false;
  ctx.onLeave(() => (stopped = true));

  const tick = async () => {
    const [job, metrics] = await Promise.all([ctx.api(`/api/jobs/${id}`), ctx.api(`/api/jobs/${id}/metrics`)]);
    const lines = await ctx.api(`/api/jobs/${id}/logs?after=${logAfter}`).catch(() => []);
    for (const l of lines) {
      logs.append(`${new Date(l.at).toLocaleTimeString()} ${l.level} ${l.message}\n`);
      logAfter = Math.max(logAfter, l.seq);
    }
    if (lines.length) logs.scrollTop = logs.scrollHeight;
    const series = (name) => metrics.filter((p) => p.name === name).map((p) => [p.step, p.value]);
    const loss = series("loss");
    const evalLoss = series("eval_loss");
    const last = (name) => series(name).at(-1)?.[1];
    const total = job.params?.config?.steps ?? null;
    const step = loss.at(-1)?.[0] ?? 0;
    const elapsed = job.started_at ? (Date.now() - Date.parse(job.started_at)) / 1000 : null;
    const left = job.state === "running" ? last("eta_s") ?? eta(step, total, elapsed) : null;
    stats.replaceChildren(
      h("div", { class: "stat" }, h("b", {}, badge(job.state)), "state"),
      stat("progress", `${Math.round((job.progress ?? 0) * 100)}%${total ? ` (step ${step} of ${total})` : ""}`),
      stat("train loss", loss.length ? loss.at(-1)[1].toFixed(3) : "—"),
      stat("eval loss", evalLoss.length ? evalLoss.at(-1)[1].toFixed(3) : "—"),
      stat("tokens/s", last("tokens_per_s") != null ? Math.round(last("tokens_per_s")).toLocaleString() : "—"),
      stat("time left", left != null ? formatDuration(left) : job.state === "running" ? "estimating…" : "—"));
    chart.replaceChildren(loss.length
      ? trusted(lineChart([{ name: "train loss", points: loss }, { name: "eval loss", points: evalLoss }], { title: "Training and evaluation loss by step", xLabel: "step", yLabel: "loss" }))
      : h("p", { class: "muted" }, job.state === "queued" ? "Waiting for a worker…" : "The loss appears after the first step."));
    const done = ["succeeded", "failed", "cancelled"].includes(job.state);
    if (job.state !== lastState) {
      lastState = job.state;
      announce.textContent = `Job ${id} is ${job.state}.`;
      actions.replaceChildren();
    }
    // the same button stays in place (keyboard focus with it) while the job runs
    if (!done && !cancel.isConnected) actions.append(cancel);
    if (!done && job.cancel_requested && !cancel.disabled) {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
    }
    if (job.state === "succeeded" && !actions.querySelector("a")) {
      actions.append(h("a", { class: "button", href: `#/models/${id}` }, "Model page"), h("a", { class: "button", href: `#/chat?model=ft-${id}` }, "Chat with it"));
      const pub = job.result?.published;
      if (pub) actions.append(h("span", { class: "muted" }, ` registered on chain as model ${pub.model_id}`));
    }
    err.textContent = job.state === "failed" ? `Failed: ${job.error ?? "see the log"}` : "";
    return done;
  };

  const loop = async () => {
    while (!stopped) {
      let done = false;
      try {
        done = await tick();
      } catch (e) {
        err.textContent = e.message;
      }
      if (done) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  await tick().catch((e) => (err.textContent = e.message));
  loop();
  return h("section", {}, title, announce, stats, chart, actions, err, h("h2", {}, "Log"), logs,
    h("p", { class: "help" }, "Refreshes every second while the job runs."));
}
