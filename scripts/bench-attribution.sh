#!/usr/bin/env bash
# Attribution cost per inference (release build, CPU): outputs of 128 tokens over training streams of 1M
# and 10M tokens. Span attribution: index build throughput, bytes per token on disk, query latency p50/p99;
# baseline in the same run: the infini-gram engine (PyPI infini-gram 2.6.0, installed on first use into
# .tools/infinigram) indexing the same token stream and answering the same span queries with its
# `attribute`. Gradient attribution: scoring against a store of one entry per 128 training tokens, and
# the backward pass of a 128-token answer against generating it (SmolLM2-135M-Instruct).
#
#   scripts/bench-attribution.sh [--no-infinigram] [TOKENS...]
#
# Ends with RESULT lines; attr_span_latency_ms (10M tokens) is the headline.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

IG=1
SIZES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-infinigram) IG=0; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown argument: $1" ;;
    *) SIZES+=("$1"); shift ;;
  esac
done
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000 10000000)

MODEL="$(scripts/fetch-model.sh)"
log "building the attribution benchmark (release)"
cargo build --locked -q --release -p openledger-attribution --example bench_attribution
BIN="$CARGO_TARGET_DIR/release/examples/bench_attribution"
EXPORT="$(mktemp -d)"
trap 'rm -rf "$EXPORT"' EXIT

out="$("$BIN" --model "$MODEL" --export "$EXPORT" "${SIZES[@]}")"
echo "$out"

if [ "$IG" = 1 ]; then
  PY="$ROOT/.tools/infinigram/bin/python"
  if ! "$PY" -c "import infini_gram" 2>/dev/null; then
    log "installing infini-gram 2.6.0 into .tools/infinigram (PyPI)"
    python3 -m venv "$ROOT/.tools/infinigram"
    "$ROOT/.tools/infinigram/bin/pip" install -q --disable-pip-version-check infini-gram==2.6.0 numpy
  fi
  for n in "${SIZES[@]}"; do
    m=$((n / 1000000))
    log "infini-gram: $n tokens"
    ig="$("$PY" scripts/bench_attribution_infinigram.py "$EXPORT/$n" "$n")"
    echo "$ig" | sed 's/^IG /  infini-gram /'
    val() { echo "$1" | awk -v k="$2" '$1 == "IG" && $2 == k {print $3}'; }
    res() { echo "$out" | awk -v k="$1" '$1 == "RESULT" && $2 == k {print $3}'; }
    ig_p50="$(val "$ig" p50_ms)"; ig_bytes="$(val "$ig" bytes_per_token)"; ig_build="$(val "$ig" build_tokens_per_s)"
    ours_p50="$(res "attr_span_latency_${m}m_p50_ms")"; ours_bytes="$(res "attr_span_bytes_per_token_${m}m")"
    ours_build="$(res "attr_span_build_${m}m_tokens_per_s")"
    echo "RESULT infinigram_latency_${m}m_p50_ms $ig_p50 ms"
    echo "RESULT infinigram_bytes_per_token_${m}m $ig_bytes bytes"
    echo "RESULT infinigram_build_${m}m_tokens_per_s $ig_build tokens/s"
    python3 -c "print('RESULT attr_span_vs_infinigram_speedup_${m}m %.2f x' % ($ig_p50 / $ours_p50))"
    python3 -c "print('RESULT attr_span_vs_infinigram_bytes_ratio_${m}m %.3f x' % ($ours_bytes / $ig_bytes))"
    python3 -c "print('RESULT attr_span_vs_infinigram_build_ratio_${m}m %.2f x' % ($ours_build / $ig_build))"
  done
fi
