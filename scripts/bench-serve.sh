#!/usr/bin/env bash
# OpenLoRA serving benchmark, S-LoRA's protocol scaled to this machine (release build, CPU):
# SmolLM2-135M-Instruct Q4_1, N random rank-8 q,v adapters for N in {1, 8, 64, 512, 2048}, the adapter of
# each request drawn uniformly or by a power law, prompts and outputs of 8-128 tokens, all requests at once
# (saturation) and Poisson arrivals at 25/50/75/100% of the saturation rate. Baselines in the same run:
# the base model alone on the same requests, merge-and-swap (one adapter merged into the weights at a time),
# and llama.cpp on the same GGUF, single stream (PyPI llama-cpp-python, built on first use into
# .tools/llamacpp: about 10 minutes).
#
#   scripts/bench-serve.sh [--requests N] [--max-adapters N] [--threads T] [--weights int8|q8_0] [--no-llamacpp]
#
# --weights: the engine's base weights, int8 (what `serve` runs; default) or candle's Q8_0 kernels. With
# int8 the run ends with the base model through candle's Q8_0 kernels too, for comparison.
# Ends with RESULT lines; serve_2048_vs_base_ratio and serve_vs_llamacpp_ratio are the headline.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

REQUESTS=48
MAX_ADAPTERS=2048
THREADS="$(nproc)"
LLAMACPP=1
WEIGHTS=int8
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) REQUESTS="${2:?}"; shift 2 ;;
    --max-adapters) MAX_ADAPTERS="${2:?}"; shift 2 ;;
    --threads) THREADS="${2:?}"; shift 2 ;;
    --no-llamacpp) LLAMACPP=0; shift ;;
    --weights) WEIGHTS="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

MODEL="$(scripts/fetch-model.sh)"
log "building the serving benchmark (release)"
cargo build --locked -q --release -p openledger-model --example bench_serve
BIN="$CARGO_TARGET_DIR/release/examples/bench_serve"

if [ "$LLAMACPP" = 1 ]; then
  ensure_llamacpp
  PY="$LLAMACPP_PY"
  log "llama.cpp: single stream, $THREADS threads, 128 new tokens, greedy"
  lc="$("$PY" scripts/bench_serve_llamacpp.py "$MODEL" "$THREADS" 128 3)"
  echo "$lc"
fi

log "engine: $REQUESTS requests per run, up to $MAX_ADAPTERS adapters, $THREADS threads"
out="$(GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.trim_threshold=8589934592:glibc.malloc.mmap_threshold=33554432}" \
  RAYON_NUM_THREADS="$THREADS" BENCH_PRECISION="$WEIGHTS" "$BIN" "$MODEL" "$REQUESTS" "$MAX_ADAPTERS")"
echo "$out"

field() { awk -v k="$1" '$1 == k { print $2 }' <<<"$out"; }
n="$MAX_ADAPTERS"
echo
echo "RESULT serve_base_tokens_per_s $(field base_tokens_per_s) tokens/s"
echo "RESULT serve_${n}_uniform_tokens_per_s $(field "n${n}_uniform_tokens_per_s") tokens/s"
echo "RESULT serve_${n}_skewed_tokens_per_s $(field "n${n}_skewed_tokens_per_s") tokens/s"
echo "RESULT serve_${n}_requests_per_s $(field "n${n}_uniform_requests_per_s") requests/s"
echo "RESULT serve_${n}_ttft_p50_ms $(field "n${n}_uniform_ttft_p50_ms") ms"
echo "RESULT serve_${n}_ttft_p99_ms $(field "n${n}_uniform_ttft_p99_ms") ms"
echo "RESULT serve_${n}_rss_growth_mb $(field "n${n}_rss_growth_mb") MB"
echo "RESULT serve_${n}_adapter_mb $(field "n${n}_adapter_mb") MB"
echo "RESULT serve_cold_load_p50_ms $(field cold_load_p50_ms) ms"
echo "RESULT serve_cold_load_p99_ms $(field cold_load_p99_ms) ms"
echo "RESULT serve_disk_cache_hit_rate $(field disk64_cache16_hit_rate) fraction"
echo "RESULT serve_disk_cache_warm_hit_rate $(field disk64_cache16_warm_hit_rate) fraction"
[ -n "$(field int8_vs_candle_q8_0_ratio)" ] && echo "RESULT serve_int8_vs_candle_q8_0_ratio $(field int8_vs_candle_q8_0_ratio) x"
echo "RESULT serve_merge_swap_tokens_per_s $(field "n${n}_merge_swap_tokens_per_s") tokens/s"
echo "RESULT serve_merge_ms_p50 $(field merge_ms_p50) ms"
echo "RESULT serve_vs_merge_swap_ratio $(field vs_merge_swap_ratio) x"
echo "RESULT serve_${n}_vs_base_ratio $(field vs_base_ratio) x"
if [ "$LLAMACPP" = 1 ]; then
  lcps="$(awk '$1 == "llamacpp_tokens_per_s" { print $2 }' <<<"$lc")"
  echo "RESULT llamacpp_single_stream_tokens_per_s $lcps tokens/s"
  echo "RESULT serve_vs_llamacpp_ratio $(awk -v a="$(field "n${n}_uniform_tokens_per_s")" -v b="$lcps" 'BEGIN { printf "%.3f", a / b }') x"
fi
