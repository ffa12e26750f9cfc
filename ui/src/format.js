// Formatting and parsing shared by the pages: OPEN amounts (18 decimals, as BigInt), addresses, times,
// and the Datanet metadata URI the UI writes.
const WEI = 10n ** 18n;

/**
 * `1234500000000000000` -> `1.2345`: at most `digits` decimals, rounded down, trailing zeros dropped; an
 * amount too small for that keeps two significant digits (`31000000000000` -> `0.000031`).
 */
export function formatOpen(wei, digits = 4) {
  const n = BigInt(wei ?? 0);
  const neg = n < 0n;
  const a = neg ? -n : n;
  const whole = a / WEI;
  const all = (a % WEI).toString().padStart(18, "0");
  let frac = all.slice(0, digits).replace(/0+$/, "");
  if (frac === "" && whole === 0n && a !== 0n) {
    const first = all.search(/[1-9]/);
    frac = all.slice(0, first + 2).replace(/0+$/, "");
  }
  const w = whole.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${neg ? "-" : ""}${w}${frac ? "." + frac : ""}`;
}

/** `"1.5"` -> 1500000000000000000n; throws on anything but a non-negative decimal with <= 18 decimals. */
export function parseOpen(text) {
  const s = String(text).trim();
  const m = /^(\d+)(?:\.(\d{0,18}))?$/.exec(s);
  if (!m) throw new Error(`"${text}" is not an amount of OPEN (e.g. 2.5)`);
  return BigInt(m[1]) * WEI + BigInt((m[2] ?? "").padEnd(18, "0") || "0");
}

export const shortHex = (h, n = 6) => (h && h.length > 2 * n + 2 ? `${h.slice(0, n + 2)}…${h.slice(-n + 2)}` : h ?? "");

/** 0-100 from parts per million, e.g. 125000 -> "12.5%". */
export const ppmPercent = (ppm) => `${(Number(ppm) / 1e4).toFixed(Number(ppm) % 1e4 === 0 ? 0 : 1)}%`;

/** Seconds as "1 h 5 min", "3 min 20 s", "12 s". */
export function formatDuration(s) {
  if (!Number.isFinite(s) || s < 0) return "—";
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${s} s`;
}

/** A model's size as people write it: 134515008 -> "135M", 1235814400 -> "1.2B". */
export function formatParams(n) {
  if (!Number.isFinite(n) || n <= 0) return null;
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  if (n >= 1e3) return `${Math.round(n / 1e3)}K`;
  return String(n);
}

/** `count(1, "Datanet")` -> "1 Datanet", `count(2, "Datanet")` -> "2 Datanets" (`many` for irregular plurals). */
export const count = (n, one, many = `${one}s`) => `${n} ${Number(n) === 1 ? one : many}`;

/** The metadata URI of a Datanet the UI creates: its name and description, self-contained. */
export function datanetUri({ name, description }) {
  return "data:application/json," + encodeURIComponent(JSON.stringify({ name, description }));
}

/**
 * What a Datanet's metadata URI says about it: `{name, description, uri}`. A URI the UI did not write
 * (`ipfs://…`, `https://…`) describes nothing by itself: the name is "Datanet <id>", the description empty,
 * and `uri` the URI to show as a link; `uri` is null for the UI's own.
 */
export function datanetMeta(uri, id) {
  const prefix = "data:application/json,";
  if (typeof uri === "string" && uri.startsWith(prefix)) {
    try {
      const v = JSON.parse(decodeURIComponent(uri.slice(prefix.length)));
      if (typeof v.name === "string" && v.name) return { name: v.name, description: String(v.description ?? ""), uri: null };
    } catch {
      // not ours: show the URI
    }
  }
  return { name: `Datanet ${id}`, description: "", uri: uri || null };
}

/** Case-insensitive match of a Datanet against a search box: name, description, tags, owner, id. */
export function matchesDatanet(d, query) {
  const q = query.trim().toLowerCase();
  if (!q) return true;
  const meta = datanetMeta(d.metadata_uri, d.id);
  return [meta.name, meta.description, meta.uri ?? "", d.owner, d.id, ...(d.tags ?? [])].some((f) => String(f).toLowerCase().includes(q));
}

/** What the pending root means for this address: the raise, or that it leaves the total as it is. */
export function pendingText(r) {
  const until = `Its root is in the challenge period until ${new Date(r.pending.valid_at).toLocaleString()} (chain time)`;
  const raise = BigInt(r.pending.cumulative ?? 0) - BigInt(r.cumulative ?? 0);
  if (raise <= 0n) return `Epoch ${r.pending.epoch} earns this address nothing new: its total stays ${formatOpen(r.cumulative)} OPEN. ${until}.`;
  return `Epoch ${r.pending.epoch} raises this address's total by ${formatOpen(raise)} to ${formatOpen(r.pending.cumulative)} OPEN. ${until}; the daemon accepts it then, and the ${formatOpen(raise)} OPEN become claimable.`;
}

/** What each export of a trained model is, by its download name. */
export const EXPORTS = {
  "adapter.gguf": "the adapter as a GGUF LoRA (llama.cpp --lora, Ollama ADAPTER), next to the base model's GGUF",
  "model.gguf": "the merged model as a GGUF (adapted weights in f16; ?dtype=f32 or q8_0)",
  "model-hf.zip": "the merged model as a Hugging Face folder (bf16; ?dtype=f16 or f32)",
  Modelfile: "an Ollama Modelfile for model.gguf",
};

/** Copy-paste commands that run a model's exports in llama.cpp and Ollama (only those it offers). */
export function exportCommands(name, exports, baseModel) {
  const has = (e) => exports.includes(e);
  const out = [];
  if (has("adapter.gguf")) out.push(`llama-cli -m ${baseModel}.gguf --lora adapter.gguf -cnv`);
  if (has("model.gguf")) out.push("llama-cli -m model.gguf -cnv");
  if (has("Modelfile") && has("model.gguf")) out.push(`ollama create ${name} -f Modelfile && ollama run ${name}`);
  if (has("model-hf.zip")) out.push(`unzip model-hf.zip && python -c "from transformers import pipeline; print(pipeline('text-generation', 'model-hf')('Hello'))"`);
  return out;
}
