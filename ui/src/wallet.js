// Wallets behind one EIP-1193 interface: the browser's injected wallet (MetaMask and the like), or, on a
// devnet whose daemon runs with --dev-wallet, one of the node's own unlocked accounts (anvil signs with its
// well-known dev keys; nothing secret lives in the page). Every transaction is simulated first, so a revert
// is named (from the suite's ABIs) before the wallet asks for a signature.
import { calldata, describeRevert, errorTable, wordAt } from "./abi.js";
import { utf8Hex } from "./siwe.js";
import { sleep } from "./dom.js";

export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

/** A plain JSON-RPC endpoint as an EIP-1193 provider. */
export function jsonRpc(url) {
  let id = 0;
  return {
    async request({ method, params = [] }) {
      let res;
      try {
        res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }) });
      } catch (e) {
        throw new RpcError(-32000, `the chain's node at ${url} does not answer (${e.message})`);
      }
      const j = await res.json();
      if (j.error) throw new RpcError(j.error.code, j.error.message, j.error.data);
      return j.result;
    },
  };
}

let errors = null;
/** The suite's custom errors by selector, from the ABIs the daemon serves (loaded on the first revert). */
async function errorsTable(names) {
  if (!errors) {
    const abis = await Promise.all(names.map((n) => fetch(`/app/abi/${n}.json`).then((r) => (r.ok ? r.json() : [])).catch(() => [])));
    errors = errorTable(abis);
  }
  return errors;
}

function revertData(e) {
  for (const d of [e?.data, e?.data?.data, e?.data?.originalError?.data, e?.error?.data]) {
    if (typeof d === "string" && /^0x[0-9a-fA-F]{8}/.test(d)) return d;
  }
  return null;
}

export class Wallet {
  /** @param {{request: Function}} provider @param {"injected"|"dev"} kind */
  constructor(provider, kind, config) {
    this.provider = provider;
    this.kind = kind;
    this.config = config;
    this.address = null;
  }

  static injected(config) {
    return globalThis.ethereum ? new Wallet(globalThis.ethereum, "injected", config) : null;
  }

  /** The node's account `account` (from its eth_accounts) as a wallet. */
  static dev(config, account) {
    const node = jsonRpc(config.rpc_url);
    const provider = {
      request: ({ method, params }) =>
        method === "eth_requestAccounts" || method === "eth_accounts" ? Promise.resolve([account]) : node.request({ method, params }),
    };
    return new Wallet(provider, "dev", config);
  }

  /** The node's unlocked accounts (empty when the node has none). */
  static async devAccounts(config) {
    if (!config.dev_wallet || !config.rpc_url) return [];
    return (await jsonRpc(config.rpc_url).request({ method: "eth_accounts" })) ?? [];
  }

  request(method, params = []) {
    return this.provider.request({ method, params });
  }

  async connect() {
    const [a] = await this.request("eth_requestAccounts");
    if (!a) throw new Error("the wallet shared no account");
    this.address = a.toLowerCase();
    await this.ensureChain();
    return this.address;
  }

  async ensureChain() {
    const want = this.config.chain_id;
    const have = parseInt(await this.request("eth_chainId"), 16);
    if (have === want) return;
    const hex = "0x" + want.toString(16);
    try {
      await this.request("wallet_switchEthereumChain", [{ chainId: hex }]);
    } catch (e) {
      if (e.code !== 4902 || !this.config.rpc_url) throw new Error(`switch the wallet to chain ${want} (it is on ${have})`);
      await this.request("wallet_addEthereumChain", [{ chainId: hex, chainName: `OpenLedger ${want}`, rpcUrls: [this.config.rpc_url], nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 } }]);
    }
  }

  personalSign(message) {
    return this.request("personal_sign", [utf8Hex(message), this.address]);
  }

  signTypedData(typedData) {
    return this.request("eth_signTypedData_v4", [this.address, JSON.stringify(typedData)]);
  }

  async call(to, data) {
    return this.request("eth_call", [{ to, data }, "latest"]);
  }

  contract(name) {
    const a = this.config.contracts[name];
    if (!a) throw new Error(`this deployment has no ${name}`);
    return a;
  }

  async openBalance(address = this.address) {
    return wordAt(await this.call(this.contract("OpenToken"), calldata("balanceOf(address)", [address])));
  }

  /** Why a call reverted, in words. */
  async explain(e) {
    const data = revertData(e);
    if (data) {
      const named = describeRevert(data, await errorsTable(Object.keys(this.config.contracts)));
      if (named) return named;
    }
    return e?.data?.message || e?.message || String(e);
  }

  /**
   * Sends a transaction calling `signature(args)` on contract `name`, after simulating it; resolves with the
   * receipt once mined successfully.
   */
  async send(name, signature, args, what = signature.split("(")[0]) {
    const to = this.contract(name);
    const data = calldata(signature, args);
    const tx = { from: this.address, to, data };
    try {
      await this.request("eth_call", [tx, "latest"]);
    } catch (e) {
      throw new Error(`${what} would fail: ${await this.explain(e)}`);
    }
    let hash;
    try {
      hash = await this.request("eth_sendTransaction", [tx]);
    } catch (e) {
      if (e.code === 4001) throw new Error(`${what}: you declined it in the wallet`);
      throw new Error(`${what}: ${await this.explain(e)}`);
    }
    return this.wait(hash, what);
  }

  async wait(hash, what) {
    for (let i = 0; i < 600; i++) {
      const r = await this.request("eth_getTransactionReceipt", [hash]);
      if (r) {
        if (r.status !== "0x1") throw new Error(`${what} reverted on chain (transaction ${hash})`);
        return r;
      }
      await sleep(i < 20 ? 250 : 1000);
    }
    throw new Error(`${what}: transaction ${hash} was not mined in time`);
  }
}
