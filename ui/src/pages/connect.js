// Connect a wallet and sign in (EIP-4361): the browser's wallet, or a dev account of the devnet's node.
import { h, busy, table, errorTo } from "../dom.js";
import { Wallet } from "../wallet.js";
import { formatOpen, shortHex } from "../format.js";

export async function render(ctx) {
  const out = h("section", {}, h("h1", {}, "Connect"));
  const status = h("p", { role: "status" });
  const fail = errorTo(status);
  const after = () => ctx.go("#/");
  if (ctx.address) {
    out.append(h("div", { class: "card" }, h("p", {}, "Signed in as ", h("code", {}, ctx.address), "."),
      h("button", { type: "button", class: "secondary", onclick: () => ctx.signOut() }, "Sign out")));
  }
  const injected = Wallet.injected(ctx.config);
  const card = h("div", { class: "card" }, h("h2", {}, "Browser wallet"));
  if (injected) {
    const b = h("button", { type: "button" }, "Connect wallet and sign in");
    b.addEventListener("click", () => busy(b, "Waiting for the wallet…", async () => {
      await ctx.signIn(injected);
      after();
    }, fail));
    card.append(h("p", {}, `Signs a Sign-In with Ethereum message for ${ctx.config.siwe_domain} (no transaction, no gas). Chain ${ctx.config.chain_id}.`), b);
  } else {
    card.append(h("p", { class: "muted" }, "No browser wallet found (e.g. MetaMask). Install one, or use a dev account below on the local stack."));
  }
  out.append(card);
  if (ctx.config.dev_wallet) {
    const dev = h("div", { class: "card" }, h("h2", {}, "Dev account (local devnet)"),
      h("p", {}, "The devnet's node signs for its unlocked accounts (anvil's well-known dev keys). Only offered because this daemon runs with --dev-wallet: never on a real network."));
    let accounts = [];
    try {
      accounts = await Wallet.devAccounts(ctx.config);
    } catch (e) {
      dev.append(h("p", { class: "error" }, `The node at ${ctx.config.rpc_url} does not answer: ${e.message}`));
    }
    const probe = Wallet.dev(ctx.config, accounts[0] ?? "0x0000000000000000000000000000000000000000");
    const balances = await Promise.all(accounts.map((a) => probe.openBalance(a).catch(() => null)));
    dev.append(table(["#", "account", "OPEN", ""], accounts.map((a, i) => {
      const b = h("button", { type: "button", "data-account": a, "aria-label": `Sign in as dev account ${i} ${a}` }, "Sign in");
      b.addEventListener("click", () => busy(b, "Signing in…", async () => {
        await ctx.signIn(Wallet.dev(ctx.config, a));
        after();
      }, fail));
      return [String(i), h("code", { title: a }, shortHex(a, 10)), balances[i] == null ? "?" : formatOpen(balances[i]), b];
    }), "The node has no unlocked accounts."));
    out.append(dev);
  }
  out.append(status);
  return out;
}
