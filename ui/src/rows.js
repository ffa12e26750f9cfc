// Pasted rows -> an upload the daemon accepts: JSON Lines objects, "prompt<TAB>completion" lines, or
// free text (one document per blank-line-separated paragraph).

/** The row formats the daemon reads (daemon/src/content.rs), as the Contribute form names them. */
export const ROW_FORMATS = {
  text: "text",
  prompt_completion: "prompt/completion",
  openai_chat: "OpenAI chat (messages)",
  alpaca: "Alpaca (instruction/input/output)",
  sharegpt: "ShareGPT (conversations)",
};

/** Which row format a JSON object is in (the daemon's rule: the first key family it finds), or null. */
export function rowFormat(v) {
  if (!v || typeof v !== "object" || Array.isArray(v)) return null;
  if ("text" in v) return "text";
  if ("prompt" in v || "completion" in v) return "prompt_completion";
  if ("messages" in v) return "openai_chat";
  if ("instruction" in v || "output" in v) return "alpaca";
  if ("conversations" in v) return "sharegpt";
  return null;
}

/** "OpenAI chat (messages): 3, Alpaca (instruction/input/output): 1" from counts per row format. */
export function describeFormats(counts) {
  return Object.entries(counts ?? {}).map(([k, n]) => `${ROW_FORMATS[k] ?? k}: ${n}`).join(", ");
}

/** @returns {{body: string, format: "jsonl"|"text", records: number, contentType: string, formats: Object<string, number>}} */
export function rowsToUpload(text) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
  if (lines.length === 0) throw new Error("nothing to contribute: paste at least one row");
  if (lines[0].startsWith("{")) {
    const formats = {};
    const out = lines.map((l, i) => {
      let v;
      try {
        v = JSON.parse(l);
      } catch (e) {
        throw new Error(`row ${i + 1} is not valid JSON: ${e.message}`);
      }
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error(`row ${i + 1} is not a JSON object`);
      const f = rowFormat(v);
      if (!f) throw new Error(`row ${i + 1} is in no format the daemon reads (${Object.values(ROW_FORMATS).join("; ")})`);
      formats[f] = (formats[f] ?? 0) + 1;
      return JSON.stringify(v);
    });
    return { body: out.join("\n") + "\n", format: "jsonl", records: out.length, contentType: "application/jsonl", formats };
  }
  if (lines.every((l) => l.includes("\t"))) {
    const out = lines.map((l, i) => {
      const [prompt, ...rest] = l.split("\t");
      const completion = rest.join("\t").trim();
      if (!prompt.trim() || !completion) throw new Error(`row ${i + 1} needs a prompt and a completion`);
      return JSON.stringify({ prompt: prompt.trim(), completion });
    });
    return { body: out.join("\n") + "\n", format: "jsonl", records: out.length, contentType: "application/jsonl",
      formats: { prompt_completion: out.length } };
  }
  const docs = text.split(/\r?\n\s*\r?\n/).map((p) => p.trim()).filter(Boolean);
  return { body: docs.join("\n\n") + "\n", format: "text", records: docs.length, contentType: "text/plain",
    formats: { text: 1 } };
}

/** The content type of an uploaded file, from its name. */
export function fileContentType(name) {
  if (/\.jsonl$/i.test(name)) return "application/jsonl";
  if (/\.(md|markdown)$/i.test(name)) return "text/markdown";
  return "text/plain";
}

/**
 * A contribution's stored content (canonical JSON Lines) as lines a curator reads: "prompt → completion",
 * the text, or a chat's turns; at most `max` of them, and how many more there are.
 * @returns {{rows: string[], more: number}}
 */
export function previewRows(jsonl, max = 20) {
  const lines = String(jsonl ?? "").split("\n").filter((l) => l.trim() !== "");
  const rows = lines.slice(0, max).map((l) => {
    let v;
    try {
      v = JSON.parse(l);
    } catch {
      return l;
    }
    if (v && typeof v === "object") {
      if (typeof v.prompt === "string" && typeof v.completion === "string") return `${v.prompt} → ${v.completion}`;
      if (typeof v.text === "string") return v.text;
      if (Array.isArray(v.messages)) return v.messages.map((m) => `${m?.role ?? "?"}: ${m?.content ?? ""}`).join(" · ");
    }
    return l;
  });
  return { rows, more: Math.max(0, lines.length - max) };
}
