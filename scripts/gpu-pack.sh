#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine (which has no Rust toolchain): the `gpu_check`
# example with `--features cuda` (kernels for sm_90: H100 / H200), stripped, and the CUDA runtime it links,
# into .gpu-pack/ (git-ignored; the device tool carries it: `carry: [".gpu-pack"]`, 64 MiB at most).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
(cuda_env && cargo build --locked --release -p openledger-model --features cuda --example gpu_check)
rm -rf .gpu-pack && mkdir -p .gpu-pack
cp "$CARGO_TARGET_DIR/release/examples/gpu_check" .gpu-pack/
strip .gpu-pack/gpu_check
cp -L .tools/cuda/nvidia/cu13/lib/libcudart.so.13 .gpu-pack/
du -sh .gpu-pack >&2
[ "$(du -sm .gpu-pack | cut -f1)" -lt 60 ] || die ".gpu-pack is over 60 MiB: it will not travel"
log "packed: carry .gpu-pack and run scripts/gpu-check.sh on the GPU machine"
