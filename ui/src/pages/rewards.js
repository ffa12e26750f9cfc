// Rewards of an address: earned (cumulative as of the latest accepted root), claimed, claimable, the
// claim (a wallet transaction to RewardDistributor with the daemon's Merkle proof), and one line per epoch.
import { h, field, table, trusted, busy, badge, sleep, errorTo, until, stat } from "../dom.js";
import { formatOpen, shortHex, pendingText } from "../format.js";
import { lineChart } from "../chart.js";
import { jsonRpc } from "../wallet.js";

export async function render(ctx, _p, query) {
  const address = (query.get("address") ?? ctx.address ?? "").toLowerCase();
  const lookup = h("input", { type: "text", value: address, placeholder: "0x…", spellcheck: "false" });
  const go = h("form", { class: "row" }, h("div", { class: "grow" }, field("Address", lookup)), h("button", { type: "submit" }, "Show"));
  go.addEventListener("submit", (ev) => {
    ev.preventDefault();
    ctx.go(`#/rewards?address=${encodeURIComponent(lookup.value.trim())}`);
  });
  const out = h("section", {}, h("h1", {}, "Rewards"), go);
  if (!address) {
    out.append(h("p", {}, "Sign in, or enter an address, to see what its contributions earned."));
    return out;
  }
  if (!/^0x[0-9a-f]{40}$/.test(address)) {
    out.append(h("p", { class: "error" }, `"${address}" is not an address (0x and 40 hex digits).`));
    return out;
  }
  const r = await ctx.api(`/api/rewards/${address}`);
  const open = (label, v, id) => stat(label, `${formatOpen(v)} OPEN`, id);
  out.append(h("p", { class: "muted" }, "For ", h("code", {}, r.account), r.epoch != null ? ` · latest accepted epoch ${r.epoch}` : ""),
    h("div", { class: "grid" }, open("earned", r.cumulative, "earned"), open("claimed", r.claimed, "claimed"), open("claimable now", r.claimable, "claimable")));
  const msg = h("p", { role: "status" });
  const skipMsg = h("p", { role: "status" });
  if (r.claim) {
    const b = h("button", { type: "button" }, `Claim ${formatOpen(r.claimable)} OPEN`);
    b.addEventListener("click", () => busy(b, "Claiming…", async () => {
      const w = await ctx.needWallet();
      msg.textContent = "Confirm the claim in the wallet…";
      await w.send("RewardDistributor", r.claim.function, r.claim.args, "claiming");
      msg.textContent = "Claimed; waiting for the indexer…";
      await until(async () => (await ctx.api(`/api/rewards/${address}`)).claimable === "0");
      ctx.toast(`Claimed ${formatOpen(r.claimable)} OPEN`);
      ctx.refresh();
    }, errorTo(msg)));
    out.append(h("div", { class: "card" }, h("p", {}, "The claim sends the OPEN to this address; anyone may send it (you pay the gas)."), b, msg));
  }
  if (r.pending) {
    const card = h("div", { class: "card" }, h("h2", {}, "On its way"),
      h("p", {}, pendingText(r)));
    if (ctx.config.dev_wallet && ctx.config.rpc_url) card.append(skipButton(ctx, r.pending.valid_at, address, skipMsg), skipMsg);
    out.append(card);
  }
  // while a root is on its way, redraw when the numbers change (the daemon accepts it on its schedule)
  if (r.pending) {
    let stopped = false;
    ctx.onLeave(() => (stopped = true));
    (async () => {
      while (!stopped) {
        await sleep(3000);
        const now = await ctx.api(`/api/rewards/${address}`).catch(() => null);
        if (!stopped && now && JSON.stringify(now) !== JSON.stringify(r)) return ctx.refresh();
      }
    })();
  }
  const hist = r.history ?? [];
  out.append(h("h2", {}, "By epoch"));
  if (hist.length) {
    out.append(h("div", { class: "card" }, trusted(lineChart([{ name: "earned (OPEN)", points: hist.map((x) => [Number(x.epoch), Number(BigInt(x.amount) / 10n ** 12n) / 1e6]) }],
      { title: "OPEN earned per settlement epoch", xLabel: "epoch", yLabel: "OPEN", bars: true }))));
  }
  out.append(table(["epoch", "state", "earned", "total after", "root"], hist.map((x) => [String(x.epoch), badge(x.state), formatOpen(x.amount, 6), formatOpen(x.cumulative, 6), h("code", { title: x.root }, shortHex(x.root, 8))]),
    "No settlement has paid this address yet. Contributions earn when answers that used them are paid and the next epoch settles.", "Rewards by epoch"));
  return out;
}

/** Devnets only: move the node's clock past the challenge delay (anvil's evm_increaseTime). */
function skipButton(ctx, validAt, address, msg) {
  const b = h("button", { type: "button", class: "secondary" }, "Skip the challenge delay (devnet)");
  b.addEventListener("click", () => busy(b, "Waiting for the daemon to accept…", async () => {
    const rpc = jsonRpc(ctx.config.rpc_url);
    const block = await rpc.request({ method: "eth_getBlockByNumber", params: ["latest", false] });
    const gap = Math.ceil(Date.parse(validAt) / 1000) - parseInt(block.timestamp, 16) + 1;
    if (gap > 0) await rpc.request({ method: "evm_increaseTime", params: [gap] });
    await rpc.request({ method: "evm_mine", params: [] });
    await until(async () => !(await ctx.api(`/api/rewards/${address}`)).pending, 120, 1000);
    ctx.refresh();
  }, errorTo(msg)));
  return b;
}
