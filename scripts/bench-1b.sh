#!/usr/bin/env bash
# The model side at 1B scale: randomly initialised models with Llama-3.2-1B's and Qwen2.5-1.5B's shapes
# (scripts/bench_1b_models.py; a weight's value does not change how fast it multiplies, so random weights
# are an honest stand-in for the real checkpoints, which no hub here can serve), measured against the
# baselines on the same files in the same run:
# - serving (release build, int8 engine): single-stream decode and throughput at saturation (24 requests,
#   8-128 prompt and output tokens) against llama.cpp's single stream on the same Q8_0 GGUF
#   (llama-cpp-python, built into .tools/llamacpp as scripts/bench-serve.sh builds it), and memory;
# - LoRA training (r=8 on q,v; sequence 256, batch 1; AdamW; the first step is a warm-up): tokens/s and peak
#   memory against PyTorch + PEFT in f32 on the same Hugging Face folder.
#
#   scripts/bench-1b.sh [--models llama3,qwen2] [--steps N] [--threads T] [--no-train] [--no-serve]
#
# The models (about 7 GB each: f32 safetensors and Q8_0 GGUF) are cached in .tools/bench-1b. Ends with
# RESULT lines; serve_1b_vs_llamacpp_ratio, serve_1b_batch1_vs_llamacpp_ratio and train_1b_vs_pytorch_ratio
# (the Llama-3.2-1B shape) are the headline.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MODELS=llama3,qwen2
STEPS=2
THREADS="$(nproc)"
TRAIN=1
SERVE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS="${2:?}"; shift 2 ;;
    --steps) STEPS="${2:?}"; shift 2 ;;
    --threads) THREADS="${2:?}"; shift 2 ;;
    --no-train) TRAIN=0; shift ;;
    --no-serve) SERVE=0; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

PY="$ROOT/.tools/bench-py/bin/python"
if ! "$PY" -c "import torch, transformers, peft, gguf, sentencepiece" 2>/dev/null; then
  log "installing PyTorch + PEFT + gguf into .tools/bench-py (PyPI, ~3 GB)"
  python3 -m venv "$ROOT/.tools/bench-py"
  "$ROOT/.tools/bench-py/bin/pip" install -q --disable-pip-version-check \
    torch==2.15.0 transformers==5.23.0 peft==0.21.2 gguf==0.19.0 tokenizers sentencepiece==0.2.3 protobuf
fi
DIR="$ROOT/.tools/bench-1b"
mkdir -p "$DIR"
log "the 1B-scale models (built on first use, a few minutes each)"
"$PY" scripts/bench_1b_models.py "$DIR" ${MODELS//,/ }

log "building the benchmarks (release)"
cargo build --locked -q --release -p openledger-model --example bench_serve --example bench_train
BIN="$CARGO_TARGET_DIR/release/examples"
if [ "$SERVE" = 1 ]; then
  ensure_llamacpp
  LPY="$LLAMACPP_PY"
fi

corpus="$(mktemp)"
trap 'rm -f "$corpus"' EXIT
for _ in 1 2 3 4 5 6 7 8; do cat README.md BENCHMARKS.md contracts/src/*.sol >> "$corpus"; done
field() { awk -v k="$1" '$1 == k { print $2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
MALLOC="${GLIBC_TUNABLES-glibc.malloc.trim_threshold=8589934592:glibc.malloc.mmap_threshold=33554432}"
declare -a RESULTS
for fam in ${MODELS//,/ }; do
  case "$fam" in
    llama3) name=llama-3.2-1b-shape; tag=1b ;;
    qwen2) name=qwen2.5-1.5b-shape; tag=qwen_1_5b ;;
    *) die "unknown model $fam (llama3 or qwen2)" ;;
  esac
  folder="$DIR/$name"
  if [ "$SERVE" = 1 ]; then
    log "$name: llama.cpp single stream, $THREADS threads, 64 new tokens"
    lc="$("$LPY" scripts/bench_serve_llamacpp.py "$folder/model.gguf" "$THREADS" 64 3)"
    echo "$lc"
    lc_tps="$(field llamacpp_tokens_per_s <<<"$lc")"
    log "$name: engine (int8), single stream, then 24 requests at saturation"
    out="$(GLIBC_TUNABLES="$MALLOC" RAYON_NUM_THREADS="$THREADS" BENCH_SCALE=1b BENCH_PRECISION=int8 \
      "$BIN/bench_serve" "$folder/model.gguf" 24 8)"
    echo "$out"
    sat="$(field base_tokens_per_s <<<"$out")"
    one="$(field single_tokens_per_s <<<"$out")"
    RESULTS+=("RESULT serve_${tag}_tokens_per_s $sat tokens/s"
      "RESULT serve_${tag}_batch1_tokens_per_s $one tokens/s"
      "RESULT serve_${tag}_8_adapters_tokens_per_s $(field n8_uniform_tokens_per_s <<<"$out") tokens/s"
      "RESULT serve_${tag}_llamacpp_tokens_per_s $lc_tps tokens/s"
      "RESULT serve_${tag}_peak_rss_mb $(field peak_rss_mb <<<"$out") MB"
      "RESULT serve_${tag}_vs_llamacpp_ratio $(ratio "$sat" "$lc_tps") x"
      "RESULT serve_${tag}_batch1_vs_llamacpp_ratio $(ratio "$one" "$lc_tps") x")
  fi
  if [ "$TRAIN" = 1 ]; then
    log "$name: candle LoRA r=8 on q,v, seq 256, batch 1, $STEPS timed steps"
    out="$(GLIBC_TUNABLES="$MALLOC" RAYON_NUM_THREADS="$THREADS" \
      "$BIN/bench_train" "$folder" q,v 8 256 1 "$STEPS" "$corpus")"
    echo "$out"
    ours="$(field tokens_per_s <<<"$out")"
    ours_mb="$(field peak_rss_mb <<<"$out")"
    log "$name: PyTorch + PEFT, same settings"
    out="$("$PY" scripts/bench_train_pytorch.py "$folder" q,v 8 256 1 "$STEPS" "$corpus" "$THREADS")"
    echo "$out"
    torch_tps="$(field tokens_per_s <<<"$out")"
    torch_mb="$(field peak_rss_mb <<<"$out")"
    RESULTS+=("RESULT train_${tag}_tokens_per_s $ours tokens/s"
      "RESULT train_${tag}_peak_rss_mb $ours_mb MB"
      "RESULT train_${tag}_pytorch_tokens_per_s $torch_tps tokens/s"
      "RESULT train_${tag}_pytorch_peak_rss_mb $torch_mb MB"
      "RESULT train_${tag}_vs_pytorch_ratio $(ratio "$ours" "$torch_tps") x"
      "RESULT train_${tag}_memory_vs_pytorch_ratio $(ratio "$ours_mb" "$torch_mb") x")
  fi
done
echo
log "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
printf '%s\n' "${RESULTS[@]}"
