#!/usr/bin/env bash
# Training benchmark: LoRA fine-tuning throughput and peak memory of the candle trainer (release build) on
# SmolLM2-135M-Instruct, CPU, against PyTorch + PEFT on the same GGUF, corpus windows and settings, in the
# same run. Two configurations: r=8 on q,v (the headline) and r=8 on all seven projections. Sequence 256,
# batch 4, AdamW, gradient clipping, no dropout; the first step of each run is a warm-up and not timed.
#
#   scripts/bench-train.sh [--steps N] [--threads T] [--no-baseline]
#
# The baseline lives in .tools/bench-py (torch, transformers, peft, gguf from PyPI; about 3 GB, installed on
# first use). Ends with RESULT lines; train_tokens_per_s and train_vs_pytorch_ratio are the headline.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

STEPS=4
THREADS="$(nproc)"
BASELINE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS="${2:?}"; shift 2 ;;
    --threads) THREADS="${2:?}"; shift 2 ;;
    --no-baseline) BASELINE=0; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
SEQ=256
BATCH=4
RANK=8

MODEL="$(scripts/fetch-model.sh)"
log "building the trainer benchmark (release)"
cargo build --locked -q --release -p openledger-model --example bench_train
BIN="$CARGO_TARGET_DIR/release/examples/bench_train"

if [ "$BASELINE" = 1 ]; then
  PY="$ROOT/.tools/bench-py/bin/python"
  if ! "$PY" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
    log "installing the PyTorch + PEFT baseline into .tools/bench-py (PyPI, ~3 GB)"
    python3 -m venv "$ROOT/.tools/bench-py"
    "$ROOT/.tools/bench-py/bin/pip" install -q --disable-pip-version-check \
      torch==2.15.0 transformers==5.23.0 peft==0.21.2 gguf==0.19.0
  fi
fi

# the corpus: this repository's prose and Solidity, repeated as needed (tokenized identically by both)
corpus="$(mktemp)"
trap 'rm -f "$corpus"' EXIT
for _ in 1 2 3 4; do cat README.md BENCHMARKS.md contracts/src/*.sol >> "$corpus"; done

field() { awk -v k="$1" '$1 == k { print $2 }'; }
declare -A OURS_TPS OURS_MB TORCH_TPS TORCH_MB
for targets in q,v all; do
  log "candle: LoRA r=$RANK on $targets, seq $SEQ, batch $BATCH, $STEPS timed steps, $THREADS threads"
  # the malloc tuning `openledger serve` / `openledger train` apply to themselves (daemon/src/cli/malloc.rs)
  out="$(GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.trim_threshold=8589934592:glibc.malloc.mmap_threshold=33554432}" \
    RAYON_NUM_THREADS="$THREADS" "$BIN" "$MODEL" "$targets" "$RANK" "$SEQ" "$BATCH" "$STEPS" "$corpus")"
  OURS_TPS[$targets]="$(field tokens_per_s <<<"$out")"
  OURS_MB[$targets]="$(field peak_rss_mb <<<"$out")"
  log "  ${OURS_TPS[$targets]} tokens/s, peak RSS ${OURS_MB[$targets]} MB"
  if [ "$BASELINE" = 1 ]; then
    log "PyTorch + PEFT: same settings"
    out="$("$PY" scripts/bench_train_pytorch.py "$MODEL" "$targets" "$RANK" "$SEQ" "$BATCH" "$STEPS" "$corpus" "$THREADS")"
    TORCH_TPS[$targets]="$(field tokens_per_s <<<"$out")"
    TORCH_MB[$targets]="$(field peak_rss_mb <<<"$out")"
    log "  ${TORCH_TPS[$targets]} tokens/s, peak RSS ${TORCH_MB[$targets]} MB"
  fi
done

printf '\n%-8s %14s %12s %16s %14s %8s\n' targets "candle tok/s" "candle MB" "pytorch tok/s" "pytorch MB" ratio
for targets in q,v all; do
  ratio="-"
  [ "$BASELINE" = 1 ] && ratio="$(awk -v a="${OURS_TPS[$targets]}" -v b="${TORCH_TPS[$targets]}" 'BEGIN { printf "%.2f", a / b }')"
  printf '%-8s %14s %12s %16s %14s %8s\n' "$targets" "${OURS_TPS[$targets]}" "${OURS_MB[$targets]}" \
    "${TORCH_TPS[$targets]:--}" "${TORCH_MB[$targets]:--}" "$ratio"
done
echo
echo "RESULT train_tokens_per_s ${OURS_TPS[q,v]} tokens/s"
echo "RESULT train_peak_rss_mb ${OURS_MB[q,v]} MB"
echo "RESULT train_all_proj_tokens_per_s ${OURS_TPS[all]} tokens/s"
if [ "$BASELINE" = 1 ]; then
  echo "RESULT pytorch_train_tokens_per_s ${TORCH_TPS[q,v]} tokens/s"
  echo "RESULT pytorch_train_peak_rss_mb ${TORCH_MB[q,v]} MB"
  echo "RESULT train_vs_pytorch_ratio $(awk -v a="${OURS_TPS[q,v]}" -v b="${TORCH_TPS[q,v]}" 'BEGIN { printf "%.2f", a / b }') x"
  echo "RESULT train_all_proj_vs_pytorch_ratio $(awk -v a="${OURS_TPS[all]}" -v b="${TORCH_TPS[all]}" 'BEGIN { printf "%.2f", a / b }') x"
fi
