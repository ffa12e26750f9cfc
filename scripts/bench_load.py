"""Mixed load against a running `openledger serve` (driven by scripts/bench-load.sh): for a bounded time, at
once, concurrent chat completions on the base model, contribution uploads and job submissions, each client a
thread in a loop on its own keep-alive connection (standard library only). Prints one JSON object: per kind
the requests, throughput, p50/p99 latency, the statuses seen, the 5xx answers without Retry-After, and
connection errors.

    bench_load.py --api URL --seconds S --chat N --uploads N --jobs N --upload-key K --job-key K --model ID
"""

import argparse
import http.client
import json
import os
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.statuses = {}
        self.errors = {}
        self.server_errors_without_retry_after = 0

    def record(self, status, seconds, retry_after):
        with self.lock:
            self.latencies.append(seconds)
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            if status >= 500 and not retry_after:
                self.server_errors_without_retry_after += 1

    def error(self, e):
        with self.lock:
            name = type(e).__name__
            self.errors[name] = self.errors.get(name, 0) + 1

    def summary(self, seconds):
        ms = lambda v: None if v is None else round(v * 1000, 1)
        return {
            "requests": len(self.latencies),
            "rps": round(len(self.latencies) / seconds, 1),
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "statuses": self.statuses,
            "server_errors_without_retry_after": self.server_errors_without_retry_after,
            "connection_errors": self.errors,
        }


def client(host, port, deadline, tally, make):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    while time.monotonic() < deadline:
        method, path, body, headers = make()
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            tally.record(r.status, time.monotonic() - t0, r.getheader("retry-after") is not None)
            if r.status in (429, 503):
                # a well-behaved client waits as told (at most a second, so the run keeps its length)
                time.sleep(min(float(r.getheader("retry-after") or 1), 1.0))
        except (OSError, http.client.HTTPException) as e:
            tally.error(e)
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            time.sleep(0.2)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--chat", type=int, default=32)
    ap.add_argument("--uploads", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--upload-key", required=True)
    ap.add_argument("--job-key", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.api)
    tallies = {"chat": Tally(), "upload": Tally(), "job": Tally()}
    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()
    salt = os.urandom(4).hex()

    def chat():
        body = json.dumps({"model": a.model, "max_tokens": a.max_tokens,
                           "messages": [{"role": "user", "content": "Name a colour of the sea."}]})
        return "POST", "/v1/chat/completions", body, {"content-type": "application/json"}

    def upload():
        with counter_lock:
            n = next(counter)
        body = f"Load run {salt}, contribution {n}: a short row of text.".encode()
        return "POST", "/api/uploads?datanet_id=1", body, {
            "authorization": f"Bearer {a.upload_key}", "content-type": "text/plain"}

    def job():
        body = json.dumps({"kind": "datanet_snapshot", "params": {"datanet_id": "1"}})
        return "POST", "/api/jobs", body, {
            "authorization": f"Bearer {a.job_key}", "content-type": "application/json"}

    start = time.monotonic()
    deadline = start + a.seconds
    threads = []
    for kind, make, n in (("chat", chat, a.chat), ("upload", upload, a.uploads), ("job", job, a.jobs)):
        for _ in range(n):
            t = threading.Thread(target=client, args=(u.hostname, u.port, deadline, tallies[kind], make))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    print(json.dumps({k: t.summary(elapsed) for k, t in tallies.items()}))


main()
