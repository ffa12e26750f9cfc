import { test } from "node:test";
import assert from "node:assert/strict";
import { siweMessage, utf8Hex } from "../src/siwe.js";
import { formatOpen, parseOpen, datanetMeta, datanetUri, matchesDatanet, ppmPercent, formatDuration, formatParams, count, pendingText, exportCommands, EXPORTS } from "../src/format.js";
import { rowsToUpload, fileContentType, previewRows, rowFormat, describeFormats } from "../src/rows.js";
import { ticks, layout, lineChart } from "../src/chart.js";
import { segments, shares, poolOf } from "../src/attribution.js";
import { estimateTraining, eta } from "../src/estimate.js";
import { SseParser } from "../src/sse.js";
import { problemMessage } from "../src/api.js";

test("the SIWE message has the daemon's line layout and a checksummed address", () => {
  const m = siweMessage({ domain: "127.0.0.1:8080", address: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8", chainId: 7331, nonce: "abc123", issuedAt: new Date("2026-12-04T10:00:00.123Z") });
  assert.equal(m, "127.0.0.1:8080 wants you to sign in with your Ethereum account:\n0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n\nSign in to OpenLedger\n\nURI: http://127.0.0.1:8080\nVersion: 1\nChain ID: 7331\nNonce: abc123\nIssued At: 2026-12-04T10:00:00Z");
  assert.equal(utf8Hex("é"), "0xc3a9");
});

test("OPEN amounts format and parse without floating point", () => {
  assert.equal(formatOpen("1234500000000000000"), "1.2345");
  assert.equal(formatOpen(10n ** 27n), "1,000,000,000");
  assert.equal(formatOpen("1"), "0.000000000000000001");
  assert.equal(formatOpen("31580965200000"), "0.000031");
  assert.equal(formatOpen(0), "0");
  assert.equal(parseOpen("2.5"), 2500000000000000000n);
  assert.equal(parseOpen("0.000000000000000001"), 1n);
  assert.throws(() => parseOpen("1e3"), /not an amount/);
  assert.throws(() => parseOpen("-1"), /not an amount/);
  assert.equal(ppmPercent(125000), "12.5%");
  assert.equal(ppmPercent(1000000), "100%");
  assert.equal(formatDuration(3725), "1 h 2 min");
  assert.equal(formatDuration(65), "1 min 5 s");
  assert.equal(formatParams(134515008), "135M");
  assert.equal(formatParams(1235814400), "1.2B");
  assert.equal(formatParams(0), null);
});

test("Datanet metadata round-trips through its URI and drives the search", () => {
  const uri = datanetUri({ name: "Lighthouses & ferries", description: "facts, 100% made up" });
  assert.deepEqual(datanetMeta(uri, "3"), { name: "Lighthouses & ferries", description: "facts, 100% made up", uri: null });
  // a URI the UI did not write is no description: it is shown as the metadata link
  assert.deepEqual(datanetMeta("ipfs://x", "4"), { name: "Datanet 4", description: "", uri: "ipfs://x" });
  assert.ok(matchesDatanet({ id: "4", owner: "0x1", metadata_uri: "ipfs://bafy" }, "bafy"));
  const d = { id: "3", owner: "0xabc", tags: ["geo"], metadata_uri: uri };
  assert.ok(matchesDatanet(d, "FERRIES"));
  assert.ok(matchesDatanet(d, "geo"));
  assert.ok(!matchesDatanet(d, "medicine"));
});

test("the Contribute form names the row formats it detects", () => {
  const rows = [
    '{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}',
    '{"instruction":"Add","input":"2+2","output":"4"}',
    '{"conversations":[{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello"}]}',
    '{"instruction":"Greet","output":"Hello"}',
  ].join("\n");
  const u = rowsToUpload(rows);
  assert.deepEqual(u.formats, { openai_chat: 1, alpaca: 2, sharegpt: 1 });
  assert.equal(describeFormats(u.formats), "OpenAI chat (messages): 1, Alpaca (instruction/input/output): 2, ShareGPT (conversations): 1");
  assert.equal(rowFormat({ prompt: "a", completion: "b" }), "prompt_completion");
  assert.equal(rowFormat({ text: "a" }), "text");
  assert.equal(rowFormat({ foo: 1 }), null);
  assert.deepEqual(rowsToUpload("Who?\tMaren.").formats, { prompt_completion: 1 });
});

test("pasted rows become JSON Lines or text, and bad rows are named", () => {
  const j = rowsToUpload('{"prompt":"a","completion":"b"}\n\n{"text":"c"}\n');
  assert.deepEqual([j.format, j.records, j.contentType], ["jsonl", 2, "application/jsonl"]);
  const t = rowsToUpload("Who?\tMaren.\nWhat?\tLanterns.");
  assert.equal(t.body, '{"prompt":"Who?","completion":"Maren."}\n{"prompt":"What?","completion":"Lanterns."}\n');
  const p = rowsToUpload("first paragraph\nstill first\n\nsecond");
  assert.deepEqual([p.format, p.records], ["text", 2]);
  assert.throws(() => rowsToUpload('{"text":"a"}\n{oops'), /row 2 is not valid JSON/);
  assert.throws(() => rowsToUpload('{"text":"a"}\n{"a":1}'), /row 2 is in no format/);
  assert.throws(() => rowsToUpload("  \n"), /nothing to contribute/);
  assert.equal(fileContentType("x.JSONL"), "application/jsonl");
  assert.equal(fileContentType("notes.md"), "text/markdown");
});

test("chart ticks are round and the lines fit the box", () => {
  assert.deepEqual(ticks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(ticks(0.13, 0.87, 4), [0.2, 0.4, 0.6, 0.8]);
  const L = layout([{ name: "train", points: [[1, 3], [2, 1], [3, 2]] }], { width: 100, height: 50, pad: 10 });
  assert.equal(L.lines[0].d, "M10.0,10.0L50.0,40.0L90.0,25.0");
  // bars start at zero and a lone epoch gets a whole-number axis
  const B = layout([{ name: "e", points: [[1, 0.5]] }], { width: 100, height: 50, pad: 10, bars: true });
  assert.deepEqual([B.y.lo, B.x.lo, B.x.hi], [0, 0.5, 1.5]);
  assert.ok(B.sy(0.5) < B.sy(0) - 20, "the bar is tall");
  const svg = lineChart([{ name: "a<b", points: [[0, 1]] }], { title: "Loss", xLabel: "step", yLabel: "loss" });
  assert.match(svg, /aria-label="Loss"/);
  assert.match(svg, /a&lt;b/);
});

test("attribution spans become highlighted segments, overlaps extend, missing text is skipped", () => {
  const answer = "The lighthouse is kept by Maren Tusk, they say.";
  const spans = [
    { start: 1, text: "lighthouse is kept" },
    { start: 3, text: "kept by Maren Tusk" },
    { start: 9, text: "not in the answer" },
  ];
  const s = segments(answer, spans);
  assert.equal(s.map((x) => x.text).join(""), answer);
  assert.deepEqual(s.map((x) => [x.text, x.span?.start ?? null]), [
    ["The ", null], ["lighthouse is kept", 1], [" by Maren Tusk", 3], [", they say.", null],
  ]);
  const sh = shares({ contributions: [{ contributor: "0xa", weight: 300000 }, { contributor: "0xb", weight: 500000 }, { contributor: "0xa", weight: 100000 }] }, 1000n);
  assert.deepEqual(sh, [{ contributor: "0xb", ppm: 500000, wei: 500n }, { contributor: "0xa", ppm: 400000, wei: 400n }]);
  assert.deepEqual(shares(null, 1n), []);
  // 10% burn, 30% developer, 20% treasury of 999 wei: 99 + 299 + 199 rounded down, the pool takes 402
  assert.equal(poolOf(999n, { burnBps: 1000, developerBps: 3000, treasuryBps: 2000 }), 402n);
});

test("training estimates and ETA", () => {
  assert.deepEqual(estimateTraining({ steps: 12, batchSize: 3, maxSeqLen: 64, examples: 3, tokensPerSecond: 100 }), { steps: 12, tokens: 2304, seconds: 23.04 });
  assert.equal(estimateTraining({ epochs: 2, batchSize: 4, gradAccum: 2, maxSeqLen: 10, examples: 17 }).steps, 5);
  assert.equal(estimateTraining({ steps: 1, batchSize: 1, maxSeqLen: 1, examples: 1 }).seconds, null);
  assert.equal(eta(5, 20, 10), 30);
  assert.equal(eta(0, 20, 10), null);
});

test("SSE frames split across chunks are reassembled", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: {\"a\":"), []);
  const evs = p.push("1}\n\nevent: end\r\ndata: x\r\ndata: y\r\n\r\n: keepalive\n\n");
  assert.deepEqual(evs, [{ event: "message", data: '{"a":1}', id: null }, { event: "end", data: "x\ny", id: null }]);
});

test("counts of one are singular", () => {
  assert.equal(count(1, "Datanet"), "1 Datanet");
  assert.equal(count(0, "Datanet"), "0 Datanets");
  assert.equal(count(2, "fine-tuned model"), "2 fine-tuned models");
  assert.equal(count("1", "entry", "entries"), "1 entry");
  assert.equal(count(3, "entry", "entries"), "3 entries");
});

test("a pending root says the raise, or that the total stays", () => {
  const r = { cumulative: "300000000000000000", pending: { epoch: 2, cumulative: "300000000000000000", valid_at: "2026-12-07T10:00:00Z" } };
  assert.match(pendingText(r), /^Epoch 2 earns this address nothing new: its total stays 0\.3 OPEN\./);
  assert.doesNotMatch(pendingText(r), /raises/);
  r.pending.cumulative = "450000000000000000";
  assert.match(pendingText(r), /^Epoch 2 raises this address's total by 0\.15 to 0\.45 OPEN\./);
  assert.match(pendingText({ cumulative: "0", pending: { epoch: 1, cumulative: "1000000000000000000", valid_at: "2026-12-07T10:00:00Z" } }), /by 1 to 1 OPEN/);
});

test("a contribution's stored rows read as prompt → completion, text or chat turns", () => {
  const body = [
    JSON.stringify({ prompt: "Who keeps the lighthouse?", completion: "Maren Tusk." }),
    JSON.stringify({ text: "A paragraph." }),
    JSON.stringify({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] }),
    JSON.stringify({ other: 1 }),
    "not json",
  ].join("\n") + "\n";
  const p = previewRows(body);
  assert.deepEqual(p.rows, ["Who keeps the lighthouse? → Maren Tusk.", "A paragraph.", "user: hi · assistant: hello", '{"other":1}', "not json"]);
  assert.equal(p.more, 0);
  const many = previewRows(Array.from({ length: 25 }, (_, i) => JSON.stringify({ text: `r${i}` })).join("\n"), 20);
  assert.equal(many.rows.length, 20);
  assert.equal(many.more, 5);
  assert.deepEqual(previewRows(""), { rows: [], more: 0 });
});

test("a refusal says when to try again and which server limit it hit", () => {
  const quota = { status: 429, title: "Too many requests", detail: "1000 relays a day is the quota.", retry_after: 3600, limit: "--quota-relays-per-day" };
  assert.equal(problemMessage(429, quota), "1000 relays a day is the quota. Try again in 3600 s. (server limit: --quota-relays-per-day)");
  assert.equal(problemMessage(503, { title: "Service unavailable", detail: "the database is unavailable", retry_after: 5 }), "the database is unavailable. Try again in 5 s.");
  assert.equal(problemMessage(404, { title: "Not found", detail: "no job 7" }), "no job 7");
  assert.equal(problemMessage(502, null), "HTTP 502");
});

test("export commands name only the exports a model offers", () => {
  const all = ["adapter.gguf", "model.gguf", "model-hf.zip", "Modelfile"];
  for (const e of all) assert.ok(EXPORTS[e], e);
  const cmds = exportCommands("ft-3", all, "SmolLM2-135M-Instruct.Q4_1");
  assert.equal(cmds[0], "llama-cli -m SmolLM2-135M-Instruct.Q4_1.gguf --lora adapter.gguf -cnv");
  assert.ok(cmds.includes("ollama create ft-3 -f Modelfile && ollama run ft-3"));
  // a Hugging Face base: no merged GGUF, so no Ollama command over it
  const hf = exportCommands("ft-4", ["adapter.gguf", "model-hf.zip", "Modelfile"], "Qwen2.5-0.5B");
  assert.ok(!hf.some((c) => c.includes("model.gguf") || c.startsWith("ollama")));
  assert.equal(exportCommands("ft-5", [], "x").length, 0);
});
