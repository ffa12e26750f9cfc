// The daemon's REST API: bearer session, RFC 9457 problem bodies turned into errors that say what to do.

const KEY = "openledger.session";

/**
 * What a problem body tells the user: its detail, then when to try again (a 429 or 503's `retry_after`) and
 * which of the server's limits refused it (`limit`, the `serve` flag).
 */
export function problemMessage(status, problem) {
  let m = problem?.detail || problem?.title || `HTTP ${status}`;
  const after = Number(problem?.retry_after);
  if (Number.isFinite(after) && after > 0) m = `${/[.!?]$/.test(m) ? m : `${m}.`} Try again in ${after} s.`;
  if (typeof problem?.limit === "string" && problem.limit) m += ` (server limit: ${problem.limit})`;
  return m;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problemMessage(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

export const session = {
  get() {
    try {
      const s = JSON.parse(localStorage.getItem(KEY) ?? "null");
      if (s && s.expires_at && Date.parse(s.expires_at) < Date.now()) return null;
      return s;
    } catch {
      return null;
    }
  },
  set(s) {
    localStorage.setItem(KEY, JSON.stringify(s));
  },
  clear() {
    localStorage.removeItem(KEY);
  },
};

const listeners = new Set();
/** Called with no argument when the server drops the session (401). */
export const onSignedOut = (fn) => listeners.add(fn);

/**
 * @param {string} path
 * @param {{method?: string, json?: unknown, body?: BodyInit, headers?: Record<string,string>, raw?: boolean,
 *          signal?: AbortSignal}} [opts]
 */
export async function api(path, opts = {}) {
  const headers = { accept: "application/json", ...(opts.headers ?? {}) };
  const s = session.get();
  if (s?.token) headers.authorization = `Bearer ${s.token}`;
  let body = opts.body;
  if (opts.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, { method: opts.method ?? (body ? "POST" : "GET"), headers, body, signal: opts.signal });
  if (opts.raw && res.ok) return res;
  if (!res.ok) {
    let problem = null;
    try {
      problem = await res.json();
    } catch {
      // not JSON
    }
    if (res.status === 401 && s?.token) {
      session.clear();
      listeners.forEach((f) => f());
    }
    throw new ApiError(res.status, problem);
  }
  const type = res.headers.get("content-type") ?? "";
  return type.includes("json") ? res.json() : res.text();
}
