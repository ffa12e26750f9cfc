#!/usr/bin/env python3
"""llama.cpp baseline for scripts/bench-serve.sh: one stream on the same GGUF, greedy, the same threads,
a fixed number of new tokens (EOS ignored). Prints `key value` lines.

    .tools/llamacpp/bin/python scripts/bench_serve_llamacpp.py <model.gguf> [threads] [tokens] [runs]
"""
import sys
import time

from llama_cpp import Llama


def main() -> int:
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(b"The history of the ledger begins", add_bos=False)
    rates = []
    for run in range(runs + 1):
        llm.reset()
        n = 0
        t = None
        start = time.perf_counter()
        for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            if t is None:
                # decode speed from the first generated token on (prefill excluded, as for the engine's p50)
                t = time.perf_counter()
            n += 1
            if n > tokens:
                break
        if run > 0:  # the first run warms up
            rates.append(tokens / (time.perf_counter() - t))
        first_ms = (t - start) * 1e3
    rates.sort()
    print(f"llamacpp_tokens_per_s {rates[len(rates) // 2]:.1f}")
    print(f"llamacpp_first_token_ms {first_ms:.1f}")
    print(f"llamacpp_threads {threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
