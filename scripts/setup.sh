#!/usr/bin/env bash
# Installs everything a fresh machine needs to build, test and run OpenLedger. Idempotent: a second run
# only checks. Nothing is downloaded outside the package registries (npm here).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then die "missing system packages ($*): install them, or run this as root"; fi
  log "installing $* from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Node.js runs the npm toolchain and the solc shim.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v python3 >/dev/null || apt_install python3
command -v jq >/dev/null || apt_install jq
command -v curl >/dev/null || apt_install curl
# the API benchmark (scripts/bench-api.sh) only: not worth failing the setup over
command -v wrk >/dev/null || (apt_install wrk) || log "could not install wrk: scripts/bench-api.sh needs it"
command -v psql >/dev/null || apt_install postgresql-client
# The Postgres server binaries: the daemon starts a private cluster with them when no DATABASE_URL is given.
[ -x "$(pg_bin_dir)/initdb" ] || apt_install postgresql
command -v runuser >/dev/null || apt_install util-linux
# OpenBLAS: the GEMMs of CPU LoRA training (crates/model, feature `openblas`, on by default) link against it.
{ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q 'libopenblas\.so ' || apt_install libopenblas-dev
# The web UI's browser tests (scripts/test-ui.sh) drive Debian's Chromium with playwright-core: no test tool
# may download a browser of its own.
[ -x "$(ui_chromium)" ] || apt_install chromium
type -P cargo >/dev/null || die "no Rust toolchain (cargo): install Rust 1.95+ (rustup) first"

# forge/anvil/cast 1.7.1, solc 0.8.30 (wasm), OpenZeppelin: pinned in package-lock.json.
stamp="node_modules/.openledger-lock"
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  # Not `npm ci`: forge/anvil/cast list platform packages upstream never published (e.g. darwin-amd64), so
  # the lock can't name them and `npm ci` rejects it. `npm install --no-save` installs exactly the locked
  # versions and leaves the lock untouched.
  log "npm install (locked versions)"
  npm install --no-save --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# Link the native binaries of the npm packages into .tools/bin (see lib.sh for why not node_modules/.bin).
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) platform=linux-amd64 ;;
  Linux-aarch64) platform=linux-arm64 ;;
  Darwin-arm64) platform=darwin-arm64 ;;
  Darwin-x86_64) platform=darwin-amd64 ;;
  *) die "no forge build for $(uname -s)-$(uname -m)" ;;
esac
mkdir -p "$TOOLS"
for tool in forge anvil cast; do
  bin="$ROOT/node_modules/@foundry-rs/$tool-$platform/bin/$tool"
  [ -x "$bin" ] || die "$bin missing: @foundry-rs/$tool publishes no $platform build"
  ln -sf "$bin" "$TOOLS/$tool"
done
need_toolchain
chmod +x scripts/solc-shim.js
# `openledger` on the PATH the README assumes: .tools/bin/openledger runs this checkout's build (building it
# the first time); linked into ~/.local/bin too when that directory is on the PATH
cat > "$TOOLS/openledger" <<WRAPPER
#!/usr/bin/env bash
# written by scripts/setup.sh: runs the openledger binary of $ROOT (scripts/dev.sh rebuilds it)
bin="\${CARGO_TARGET_DIR:-$CARGO_TARGET_DIR}/debug/openledger"
if [ ! -x "\$bin" ]; then
  echo "[openledger] not built yet: cargo build -p openledger-daemon (a few minutes the first time)" >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="\${CARGO_TARGET_DIR:-$CARGO_TARGET_DIR}" cargo build --locked -q -p openledger-daemon) || exit 1
fi
exec "\$bin" "\$@"
WRAPPER
chmod +x "$TOOLS/openledger"
case ":$PATH:" in
  *":$HOME/.local/bin:"*)
    if [ -z "${CI:-}" ] && { [ ! -e "$HOME/.local/bin/openledger" ] || [ -L "$HOME/.local/bin/openledger" ]; }; then
      ln -sf "$TOOLS/openledger" "$HOME/.local/bin/openledger"
      log "openledger is on your PATH (~/.local/bin/openledger -> .tools/bin/openledger)"
    fi ;;
  *) log "put openledger, forge, anvil and cast on your PATH: export PATH=\"$TOOLS:\$PATH\"" ;;
esac

# slither (static analysis, run by scripts/test.sh) in its own venv under .tools/slither, pinned.
SLITHER_VERSION=0.11.6
if ! "$ROOT/.tools/slither/bin/pip" show slither-analyzer 2>/dev/null | grep -q "^Version: $SLITHER_VERSION$"; then
  log "installing slither-analyzer $SLITHER_VERSION into .tools/slither (PyPI)"
  python3 -m venv "$ROOT/.tools/slither" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$ROOT/.tools/slither/bin/pip" install -q --disable-pip-version-check "slither-analyzer==$SLITHER_VERSION"
fi
# Python's safetensors: the tests check that adapters load outside Rust, as PEFT users would load them.
PY_SAFETENSORS=0.8.0
PY_NUMPY=2.4.6
if ! "$ROOT/.tools/py/bin/pip" show safetensors 2>/dev/null | grep -q "^Version: $PY_SAFETENSORS$"; then
  log "installing safetensors $PY_SAFETENSORS + numpy $PY_NUMPY into .tools/py (PyPI)"
  python3 -m venv "$ROOT/.tools/py" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$ROOT/.tools/py/bin/pip" install -q --disable-pip-version-check "safetensors==$PY_SAFETENSORS" "numpy==$PY_NUMPY"
fi
# The official `openai` client: scripts/test.sh runs it unchanged against `serve` (OpenAI compatibility).
PY_OPENAI=3.57.0
if ! "$ROOT/.tools/openai/bin/pip" show openai 2>/dev/null | grep -q "^Version: $PY_OPENAI$"; then
  log "installing openai $PY_OPENAI into .tools/openai (PyPI)"
  python3 -m venv "$ROOT/.tools/openai" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$ROOT/.tools/openai/bin/pip" install -q --disable-pip-version-check "openai==$PY_OPENAI"
fi
# schemathesis: scripts/test.sh fuzzes the API against its own OpenAPI document
SCHEMATHESIS_VERSION=4.32.5
if ! "$ROOT/.tools/schemathesis/bin/pip" show schemathesis 2>/dev/null | grep -q "^Version: $SCHEMATHESIS_VERSION$"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into .tools/schemathesis (PyPI)"
  python3 -m venv "$ROOT/.tools/schemathesis" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$ROOT/.tools/schemathesis/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
# The CUDA compiler, headers and runtime (PyPI, no GPU needed): scripts/test.sh compiles the `cuda` feature
# (candle's kernels, for Hopper) on every run, and scripts/gpu-pack.sh builds what a GPU machine runs.
# Pinned to CUDA 13.0: the GPU machines' driver (580) loads nothing newer.
CUDA_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
if [ "$(cat "$ROOT/.tools/cuda/.openledger-wheels" 2>/dev/null)" != "$CUDA_WHEELS" ]; then
  log "installing the CUDA 13.0 compiler into .tools/cuda (PyPI wheels: $CUDA_WHEELS)"
  rm -rf "$ROOT/.tools/cuda"
  # shellcheck disable=SC2086
  "$ROOT/.tools/py/bin/pip" install -q --disable-pip-version-check --no-deps --target "$ROOT/.tools/cuda" $CUDA_WHEELS
  # the linker's -lcudart wants the unversioned name
  ln -sf libcudart.so.13 "$ROOT/.tools/cuda/nvidia/cu13/lib/libcudart.so"
  echo "$CUDA_WHEELS" > "$ROOT/.tools/cuda/.openledger-wheels"
fi
(cuda_env && nvcc --version | tail -1 >&2)
"$FORGE" --version | head -1 >&2
node scripts/solc-shim.js --version | tail -1 >&2
# the default base model for training and serving (checked by SHA-256; kept across runs)
log "base model: $(scripts/fetch-model.sh)"

log "ok"
