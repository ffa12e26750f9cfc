// The app shell: configuration from the daemon, the signed-in session and wallet, the hash router that
// loads one page module per view (so the first load carries only what the first page needs), and toasts.
import { api, session, onSignedOut } from "./api.js";
import { h, mount } from "./dom.js";
import { siweMessage } from "./siwe.js";
import { Wallet, jsonRpc } from "./wallet.js";
import { shortHex } from "./format.js";

const ROUTES = [
  [/^\/?$/, "home"],
  [/^\/connect$/, "connect"],
  [/^\/datanets$/, "datanets"],
  [/^\/datanets\/(\d+)$/, "datanet"],
  [/^\/train$/, "train"],
  [/^\/jobs\/(\d+)$/, "job"],
  [/^\/models$/, "models"],
  [/^\/models\/(\d+)$/, "model"],
  [/^\/chat$/, "chat"],
  [/^\/rewards$/, "rewards"],
  [/^\/operator$/, "operator"],
];
const WALLET_KEY = "openledger.wallet";
// providers whose account and chain events are already watched (one listener each, however often the
// wallet is reconnected)
const watched = new WeakSet();

const ctx = {
  config: null,
  wallet: null,
  api,
  leave: [],
  /** Registers cleanup (timers, streams) for when the user leaves the page. */
  onLeave(fn) {
    this.leave.push(fn);
  },
  get address() {
    return session.get()?.address ?? null;
  },
  toast(message, bad = false) {
    const t = h("div", { class: `toast${bad ? " bad" : ""}` }, message);
    document.getElementById("toasts").append(t);
    setTimeout(() => t.remove(), bad ? 12000 : 5000);
  },
  /** Uses a wallet: remembers it, asks for its account and checks the chain. */
  async useWallet(w) {
    await w.connect();
    if (w.kind === "injected" && typeof w.provider.on === "function" && !watched.has(w.provider)) {
      // the session belongs to one address and one chain: a switch in the wallet ends it
      watched.add(w.provider);
      w.provider.on("accountsChanged", (accounts) => {
        const a = (accounts?.[0] ?? "").toLowerCase();
        if (this.address && a !== this.address) {
          session.clear();
          this.wallet = null;
          renderAccount();
          this.toast("The wallet switched accounts: sign in again as the new one.", true);
          route(true);
        }
      });
      w.provider.on("chainChanged", () => location.reload());
    }
    this.wallet = w;
    localStorage.setItem(WALLET_KEY, JSON.stringify({ kind: w.kind, address: w.address }));
    renderAccount();
    return w;
  },
  /** The wallet of the signed-in address, reconnected if the page was reloaded. */
  async needWallet() {
    if (this.wallet?.address) {
      if (this.address && this.wallet.address !== this.address) {
        throw new Error(`the wallet is on ${shortHex(this.wallet.address)} but you signed in as ${shortHex(this.address)}: sign in again`);
      }
      return this.wallet;
    }
    const saved = JSON.parse(localStorage.getItem(WALLET_KEY) ?? "null");
    let w = null;
    if (saved?.kind === "dev" && this.config.dev_wallet) w = Wallet.dev(this.config, saved.address);
    else if (saved?.kind === "injected") w = Wallet.injected(this.config);
    if (!w) throw new Error("connect a wallet first (Connect, top right)");
    await this.useWallet(w);
    if (this.address && w.address !== this.address) {
      throw new Error(`the wallet is on ${shortHex(w.address)} but you signed in as ${shortHex(this.address)}: switch it back, or sign in again`);
    }
    return w;
  },
  /** eth_call without asking the wallet for anything: the chain's public RPC, else a connected wallet. */
  async read(to, data) {
    if (this.config.rpc_url) return jsonRpc(this.config.rpc_url).request({ method: "eth_call", params: [{ to, data }, "latest"] });
    if (this.wallet) return this.wallet.call(to, data);
    throw new Error("no way to read the chain: connect a wallet");
  },
  /** Sign-In with Ethereum through the wallet: a fresh nonce, the wallet's signature, a session. */
  async signIn(w) {
    await this.useWallet(w);
    const n = await api("/api/auth/nonce");
    const message = siweMessage({ domain: n.domain, address: w.address, chainId: n.chain_id, nonce: n.nonce, uri: `${location.protocol}//${n.domain}` });
    const signature = await w.personalSign(message);
    const s = await api("/api/auth/siwe", { json: { message, signature } });
    session.set({ token: s.token, address: s.address.toLowerCase(), expires_at: s.expires_at });
    renderAccount();
    return s;
  },
  async signOut() {
    try {
      await api("/api/auth/logout", { method: "POST" });
    } catch {
      // the session may already be gone
    }
    session.clear();
    localStorage.removeItem(WALLET_KEY);
    this.wallet = null;
    renderAccount();
    route(true);
  },
  /** A "sign in first" panel for pages that need a session; null when signed in. */
  needSignIn(what) {
    if (this.address) return null;
    return h("div", { class: "card" }, h("p", {}, `Sign in to ${what}.`), h("a", { class: "button", href: "#/connect" }, "Connect and sign in"));
  },
  go(hash) {
    location.hash = hash;
  },
};

function renderAccount() {
  const el = document.getElementById("account");
  const a = ctx.address;
  if (a) {
    mount(el, h("span", { class: "mono", title: a }, `Signed in as ${shortHex(a)}`),
      h("button", { type: "button", class: "secondary", onclick: () => ctx.signOut() }, "Sign out"));
  } else {
    mount(el, h("a", { class: "button", href: "#/connect" }, "Connect"));
  }
}

async function route(ev) {
  // in-page anchors (the skip link) are not routes
  if (location.hash && !location.hash.startsWith("#/")) return;
  for (const f of ctx.leave.splice(0)) {
    try {
      f();
    } catch {
      // best effort
    }
  }
  const token = Symbol();
  route.current = token;
  const [path, qs] = (location.hash.replace(/^#/, "") || "/").split("?");
  const query = new URLSearchParams(qs ?? "");
  const main = document.getElementById("main");
  const hit = ROUTES.map(([re, page]) => [re.exec(path), page]).find(([m]) => m);
  for (const a of document.querySelectorAll("nav a")) {
    if (hit && path.startsWith(a.getAttribute("href").slice(1))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("nav").classList.remove("open");
  document.querySelector(".menu").setAttribute("aria-expanded", "false");
  if (!hit) {
    mount(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/" }, "Start here.")));
    main.dataset.page = location.hash;
    document.title = "Not found · OpenLedger";
    return;
  }
  const [m, page] = hit;
  // what the page gets: the shared context, with refresh/go/onLeave that do nothing (or clean up at
  // once) when the user has already moved on, so a late answer never redraws another page
  const current = () => route.current === token;
  const pctx = Object.create(ctx);
  pctx.refresh = () => current() && route(true);
  pctx.go = (hash) => current() && ctx.go(hash);
  pctx.onLeave = (fn) => (current() ? ctx.leave.push(fn) : fn());
  pctx.current = current;
  try {
    const mod = await import(`./pages/${page}.js`);
    const node = await mod.render(pctx, m.slice(1), query);
    if (route.current !== token) return;
    mount(main, node);
    main.dataset.page = location.hash;
  } catch (e) {
    if (route.current !== token) return;
    // a page about something the daemon does not know (a Datanet, a job, a model) answers 404
    if (e.status === 404) mount(main, h("h1", {}, "Not found"), h("p", {}, `${e.message[0]?.toUpperCase() ?? ""}${e.message.slice(1)}. `, h("a", { href: "#/" }, "Start here.")));
    else mount(main, h("h1", {}, "Something went wrong"), h("p", { class: "error" }, e.message));
    main.dataset.page = location.hash;
  }
  const h1 = main.querySelector("h1");
  document.title = h1 ? `${h1.textContent} · OpenLedger` : "OpenLedger";
  // a new page takes the focus (screen readers announce it); the first load leaves it to the skip link
  if (ev) {
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
  }
}

async function start() {
  const menu = document.querySelector(".menu");
  menu.addEventListener("click", () => {
    const nav = document.getElementById("nav");
    nav.classList.toggle("open");
    menu.setAttribute("aria-expanded", String(nav.classList.contains("open")));
  });
  try {
    ctx.config = await api("/api/config");
  } catch (e) {
    mount(document.getElementById("main"), h("h1", {}, "The daemon does not answer"), h("p", { class: "error" }, e.message));
    return;
  }
  onSignedOut(() => {
    renderAccount();
    ctx.toast("Your session ended: sign in again.", true);
  });
  renderAccount();
  document.querySelector(".skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", route);
  await route(null);
}

// pages re-render themselves through this after a state change
ctx.refresh = () => route(true);
start();
