"""The infini-gram baseline of scripts/bench-attribution.sh: builds infini-gram's suffix array over the
token stream bench_attribution exported (DIR/tokenized.0, offset.0; its version-4 u16 layout) with the
package's own indexer, then answers the same span queries with its OLMoTrace-style `attribute` (minimum
length 4, at most 10 occurrences, as ours). Prints its build throughput, bytes per token on disk and query
latency p50/p99 as `IG <name> <value>` lines.

    python bench_attribution_infinigram.py DIR TOKENS
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
from infini_gram.engine import InfiniGramEngine
import infini_gram


def build(d):
    # infini_gram.indexing.build_sa, one shard, two cores: make-part, merge, concat
    exe = os.path.join(os.path.dirname(infini_gram.__file__), "rust_indexing")
    ds = os.path.join(d, "tokenized.0")
    size = os.path.getsize(ds)
    ratio = int(np.ceil(np.log2(size) / 8))
    cpus = os.cpu_count() or 1
    parts, merged = os.path.join(d, "parts"), os.path.join(d, "merged")
    os.makedirs(parts, exist_ok=True)
    os.makedirs(merged, exist_ok=True)
    hack = 100000
    s = size // cpus
    s += s % 2
    procs = [subprocess.Popen([exe, "make-part", "--data-file", ds, "--parts-dir", parts,
                               "--start-byte", str(i * s), "--end-byte", str(min((i + 1) * s + hack, size)),
                               "--ratio", str(ratio), "--token-width", "2"], stdout=subprocess.DEVNULL)
             for i in range(cpus)]
    for p in procs:
        assert p.wait() == 0, "make-part failed"
    subprocess.run([exe, "merge", "--data-file", ds, "--parts-dir", parts, "--merged-dir", merged,
                    "--num-threads", str(cpus), "--hacksize", str(hack), "--ratio", str(ratio),
                    "--token-width", "2"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([exe, "concat", "--data-file", ds, "--merged-dir", merged, "--merged-file",
                    os.path.join(d, "table.0"), "--num-threads", str(cpus), "--ratio", str(ratio),
                    "--token-width", "2"], check=True, stdout=subprocess.DEVNULL)
    for x in (parts, merged):
        for f in os.listdir(x):
            os.remove(os.path.join(x, f))
        os.rmdir(x)


def main():
    d, tokens = sys.argv[1], int(sys.argv[2])
    t = time.time()
    build(d)
    build_s = time.time() - t
    size = sum(os.path.getsize(os.path.join(d, f)) for f in ("tokenized.0", "table.0", "offset.0"))
    engine = InfiniGramEngine(index_dir=d, eos_token_id=0, vocab_size=65535, version=4, token_dtype="u16")
    queries = json.load(open(os.path.join(d, "queries.json")))
    engine.attribute(input_ids=queries[0], delim_ids=[], min_len=4, max_cnt=10, enforce_bow=False)
    lat, spans = [], 0
    for q in queries:
        t = time.perf_counter()
        r = engine.attribute(input_ids=q, delim_ids=[], min_len=4, max_cnt=10, enforce_bow=False)
        lat.append((time.perf_counter() - t) * 1e3)
        spans += len(r["spans"])
    lat.sort()
    print(f"IG build_tokens_per_s {tokens / build_s:.0f}")
    print(f"IG bytes_per_token {size / tokens:.3f}")
    print(f"IG p50_ms {lat[len(lat) // 2]:.3f}")
    print(f"IG p99_ms {lat[len(lat) * 99 // 100]:.3f}")
    print(f"IG spans_per_query {spans / len(queries):.1f}")


if __name__ == "__main__":
    main()
