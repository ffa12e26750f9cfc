// Server-sent events read from a fetch body (EventSource cannot send an Authorization header or a POST).

export class SseParser {
  constructor() {
    this.buf = "";
  }
  /** Feeds text; returns the complete events in it as `{event, data, id}`. */
  push(text) {
    this.buf += text.replace(/\r\n?/g, "\n");
    const out = [];
    let i;
    while ((i = this.buf.indexOf("\n\n")) >= 0) {
      const block = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 2);
      const ev = { event: "message", data: "", id: null };
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":") || line === "") continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        const value = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
        if (field === "data") data.push(value);
        else if (field === "event") ev.event = value;
        else if (field === "id") ev.id = value;
      }
      if (data.length === 0) continue;
      ev.data = data.join("\n");
      out.push(ev);
    }
    return out;
  }
}

/** Reads a fetch Response body as SSE, calling onEvent for each event; resolves when the body ends. */
export async function readSse(response, onEvent) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  const p = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const ev of p.push(dec.decode(value, { stream: true }))) onEvent(ev);
  }
}
