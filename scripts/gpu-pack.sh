#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine (which has no Rust toolchain): the `gpu_check`
# example with `--features cuda` (kernels for sm_90: H100 / H200; without OpenBLAS, which the GPU machine
# may lack), stripped and xz-compressed, and the CUDA runtime it links,
# into .gpu-pack/ (git-ignored; the device tool carries it: `carry: [".gpu-pack"]`, 64 MiB at most).
#
# candle 0.11 links cudarc dynamically: the binary needs libcuda (the driver's), cuBLAS, cuBLASLt, cuRAND
# and NVRTC at link time and at run time. Here they come from PyPI wheels (.tools/cuda-link, about 570 MB,
# only for this script) and a stub libcuda.so.1 made from the driver symbols cudarc uses (as the CUDA
# toolkit's own stubs/libcuda.so); there, from the driver and the machine's CUDA 13 libraries
# (scripts/gpu-check.sh looks in the toolkit and in PyTorch's wheels). Only libcudart (small) travels.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
LINK="$ROOT/.tools/cuda-link"
WHEELS="nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
if [ "$(cat "$LINK/.openledger-wheels" 2>/dev/null)" != "$WHEELS" ]; then
  log "installing cuBLAS, cuRAND and NVRTC 13.0 into .tools/cuda-link (PyPI, for linking)"
  rm -rf "$LINK"
  # shellcheck disable=SC2086
  "$ROOT/.tools/py/bin/pip" install -q --disable-pip-version-check --no-deps --target "$LINK" $WHEELS
  echo "$WHEELS" > "$LINK/.openledger-wheels"
fi
libs="$LINK/nvidia/cu13/lib"
for so in "$libs"/lib{cublas,cublasLt,curand,nvrtc}.so.*[0-9]; do
  base="${so##*/}"; ln -sf "$base" "$libs/${base%%.so.*}.so"
done
(
  cuda_env
  export LIBRARY_PATH="$libs:$LIBRARY_PATH"
  cargo build --locked --release -p openledger-model --no-default-features --features cuda --lib
  # the stub libcuda.so.1: every driver entry point cudarc references, as empty functions (never run:
  # the real driver's library is loaded in its place)
  stub="$LINK/stubs"; mkdir -p "$stub"
  rlib="$(ls -t "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib | head -1)"
  nm -u "$rlib" 2>/dev/null | awk '{print $2}' | grep -E '^cu[A-Z]' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$stub/libcuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda.c"
  export LIBRARY_PATH="$stub:$LIBRARY_PATH"
  cargo build --locked --release -p openledger-model --no-default-features --features cuda --example gpu_check
)
rm -rf .gpu-pack && mkdir -p .gpu-pack
cp "$CARGO_TARGET_DIR/release/examples/gpu_check" .gpu-pack/
strip .gpu-pack/gpu_check
readelf -d .gpu-pack/gpu_check | grep NEEDED >&2
# 60 MB of kernels (PTX and sm_90a code) compress to about 7 MB; gpu-check.sh unpacks with Python's lzma
xz -9 -T2 .gpu-pack/gpu_check
cp -L .tools/cuda/nvidia/cu13/lib/libcudart.so.13 .gpu-pack/
du -sh .gpu-pack >&2
[ "$(du -sm .gpu-pack | cut -f1)" -lt 60 ] || die ".gpu-pack is over 60 MiB: it will not travel"
log "packed: carry .gpu-pack and run scripts/gpu-check.sh on the GPU machine"
