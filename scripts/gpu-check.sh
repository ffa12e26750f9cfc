#!/usr/bin/env bash
# The GPU check: every GPU path (serving, training, attribution) against transformers + PEFT on one device,
# then the GPU benchmarks; RESULT lines on stdout, report.md in the output folder.
#
#   scripts/gpu-check.sh --cpu [OUT]   here, every CI run (scripts/test.sh): the same example binary on the
#                                      CPU, on the committed family fixtures, tiny benchmarks
#   scripts/gpu-pack.sh                here, before lending a GPU: builds the CUDA binary into .gpu-pack/
#   scripts/gpu-check.sh [OUT]         on the GPU machine (no Rust, no network; copied with the working tree,
#                                      `carry: [".gpu-pack"]`): builds random-weight SmolLM2- and 1B-shaped
#                                      models with transformers there, checks, benchmarks, and runs the
#                                      PyTorch + PEFT baselines on the same card. Bounded: under 8 minutes.
# OUT defaults to $OUT (the device tool's output folder) or gpu-check-out.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
out="${1:-${OUT:-$ROOT/gpu-check-out}}"
mkdir -p "$out"
say() { echo "[gpu-check] $*" >&2; }

if [ "$cpu" = 1 ]; then
  source scripts/lib.sh
  fixtures=crates/model/tests/data/families
  cargo build --locked -q -p openledger-model --example gpu_check
  bin="$CARGO_TARGET_DIR/debug/examples/gpu_check"
  "$bin" --device cpu --out "$out" --bench "$fixtures/llama3" "$fixtures/qwen2" "$fixtures/gemma3" \
    | tee "$out/results.txt"
  exit "${PIPESTATUS[0]}"
fi

# on the GPU machine
pack="$ROOT/.gpu-pack"
[ -f "$pack/gpu_check.xz" ] || { say "no $pack/gpu_check.xz: run scripts/gpu-pack.sh here and carry .gpu-pack"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" >&2
bin="$(mktemp -d)/gpu_check"
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$pack/gpu_check.xz" "$bin"
chmod +x "$bin"
# cuBLAS, cuRAND (CUDA 13) from the machine: its CUDA toolkit, or the nvidia-* wheels PyTorch brought
libdirs="$pack"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")/../lib64"; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
for d in $(python3 -c 'import nvidia, os; [print(os.path.join(p, s, "lib")) for p in nvidia.__path__ for s in sorted(os.listdir(p))]' 2>/dev/null); do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin" | grep -q "not found"; then
  say "missing libraries (the binary wants CUDA 13's; looked in $libdirs):"; ldd "$bin" | grep "not found" >&2
  exit 1
fi
started=$(date +%s)
say "building random-weight models with transformers"
timeout 180 python3 scripts/gpu_models.py build "$out/models" 2>&1 | tail -5 >&2
# peak GPU memory of the whole check, sampled (ours: the training benchmark dominates)
( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.5; done ) > "$out/memory.txt" &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
say "checks and benchmarks (ours)"
status=0
timeout 240 "$bin" --device cuda:0 --out "$out" --bench "$out/models/llama-1b" "$out/models/smollm2" \
  | tee "$out/results.txt" || status=$?
kill $sampler 2>/dev/null || true
echo "RESULT ours_peak_gpu_mb $(sort -n "$out/memory.txt" | tail -1) MB" | tee -a "$out/results.txt"
say "baselines (PyTorch + PEFT, same card)"
timeout 150 python3 scripts/gpu_models.py baseline "$out/models" | tee -a "$out/results.txt" || status=$?
# ratios against the baselines measured in this run
awk '$1 == "RESULT" { v[$2] = $3 }
  END {
    if (v["train_tok_s"] && v["peft_train_tok_s"]) printf "RESULT train_vs_peft %.3f x\n", v["train_tok_s"] / v["peft_train_tok_s"]
    if (v["serve_tok_s_64_adapters"] && v["peft_generate_tok_s"]) printf "RESULT serve_64_vs_peft_generate %.3f x\n", v["serve_tok_s_64_adapters"] / v["peft_generate_tok_s"]
  }' "$out/results.txt" | tee -a "$out/results.txt"
say "done in $(( $(date +%s) - started )) s (status $status)"
exit "$status"
