// Pasted rows -> an upload the daemon accepts: JSON Lines objects, "prompt<TAB>completion" lines, or
// free text (one document per blank-line-separated paragraph).

/** @returns {{body: string, format: "jsonl"|"text", records: number, contentType: string}} */
export function rowsToUpload(text) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
  if (lines.length === 0) throw new Error("nothing to contribute: paste at least one row");
  if (lines[0].startsWith("{")) {
    const out = lines.map((l, i) => {
      let v;
      try {
        v = JSON.parse(l);
      } catch (e) {
        throw new Error(`row ${i + 1} is not valid JSON: ${e.message}`);
      }
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error(`row ${i + 1} is not a JSON object`);
      return JSON.stringify(v);
    });
    return { body: out.join("\n") + "\n", format: "jsonl", records: out.length, contentType: "application/jsonl" };
  }
  if (lines.every((l) => l.includes("\t"))) {
    const out = lines.map((l, i) => {
      const [prompt, ...rest] = l.split("\t");
      const completion = rest.join("\t").trim();
      if (!prompt.trim() || !completion) throw new Error(`row ${i + 1} needs a prompt and a completion`);
      return JSON.stringify({ prompt: prompt.trim(), completion });
    });
    return { body: out.join("\n") + "\n", format: "jsonl", records: out.length, contentType: "application/jsonl" };
  }
  const docs = text.split(/\r?\n\s*\r?\n/).map((p) => p.trim()).filter(Boolean);
  return { body: docs.join("\n\n") + "\n", format: "text", records: docs.length, contentType: "text/plain" };
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
