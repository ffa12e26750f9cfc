# Sourced by the other scripts: repo root, tool paths, small helpers.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The native forge/anvil/cast binaries, linked here by scripts/setup.sh. Not node_modules/.bin: those are
# node wrappers that exit 0 even when the tool fails.
TOOLS="$ROOT/.tools/bin"
export PATH="$TOOLS:$PATH"
FORGE="$TOOLS/forge"
ANVIL="$TOOLS/anvil"
CAST="$TOOLS/cast"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

need_toolchain() {
  [ -x "$FORGE" ] && [ -x "$ANVIL" ] && [ -x "$CAST" ] || die "forge/anvil/cast missing: run scripts/setup.sh first"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until a JSON-RPC endpoint answers eth_chainId (default up to 300 s).
wait_rpc() {
  local url="$1" tries="${2:-1500}"
  for _ in $(seq "$tries"); do
    "$CAST" chain-id --rpc-url "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# Runs a command every 0.2 s until it succeeds; gives up (status 1) after SECS seconds. Scripts wait for a
# state (a block indexed, a server answering), never for a fixed time; SECS is only a stall bound.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

not_running() { ! kill -0 "$1" 2>/dev/null; }

# Waits until `openledger serve` at API answers /readyz (it may first load a model: up to SECS, default
# 300); fails at once, saying so, if its process PID has exited.
wait_ready() {
  local api="$1" pid="$2" secs="${3:-300}"
  serve_ready() { curl -sf --max-time 10 "$1/readyz" >/dev/null 2>&1 || not_running "$2"; }
  wait_until "$secs" serve_ready "$api" "$pid" || { log "openledger serve was not ready after $secs s"; return 1; }
  kill -0 "$pid" 2>/dev/null || { log "openledger serve exited before it was ready"; return 1; }
}

# SIGTERM to a child of this shell, then its exit status once it exits; after SECS (default 60) without
# exiting it is killed and the status is 1.
stop_child() {
  local pid="$1" secs="${2:-60}"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$secs" not_running "$pid"; then
    log "process $pid still running $secs s after SIGTERM: killed"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid"
}

# Rust builds share one target directory outside the clone, so fresh clones (and CI) reuse earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/openledger-target}"
OPENLEDGER_BIN="$CARGO_TARGET_DIR/debug/openledger"

# Cargo names the workspace's own crates by their path inside the workspace and judges a build of them fresh
# by the mtimes of the source files it last compiled: two clones sharing the target directory would each
# take the other's build of these crates as up to date (and build or test the other clone's code). So the
# clone that builds takes the directory over first: another clone's build of the workspace crates (or one
# of unknown origin) is cleaned; the dependencies, most of the build, stay shared. Every `cargo` call of the
# scripts goes through here, one at a time over the directory (flock); two clones' scripts running at the
# same time still share `$OPENLEDGER_BIN`, so run one clone's tests at a time.
cargo() {
  mkdir -p "$CARGO_TARGET_DIR"
  (
    if command -v flock >/dev/null; then flock 9; fi
    mark="$CARGO_TARGET_DIR/.openledger-clone"
    if [ "$(cat "$mark" 2>/dev/null)" != "$ROOT" ]; then
      if [ -f "$mark" ] || compgen -G "$CARGO_TARGET_DIR/*/.fingerprint/openledger*" >/dev/null; then
        log "the shared target directory holds a build of $(cat "$mark" 2>/dev/null || echo 'another clone'): rebuilding the workspace's crates for $ROOT"
        crates="$(command cargo metadata --manifest-path "$ROOT/Cargo.toml" --no-deps --format-version 1 \
          | jq -r '.packages[].name | "-p", .')"
        [ -n "$crates" ] || { log "cargo metadata failed: not cleaning"; exit 1; }
        # shellcheck disable=SC2086
        command cargo clean -q --manifest-path "$ROOT/Cargo.toml" $crates || exit 1
        # shellcheck disable=SC2086
        command cargo clean -q --manifest-path "$ROOT/Cargo.toml" --release $crates || exit 1
      fi
      echo "$ROOT" >"$mark"
    fi
    command cargo "$@"
  ) 9>"$CARGO_TARGET_DIR/.openledger-clone.lock"
}

# The CUDA toolchain of scripts/setup.sh (.tools/cuda, PyPI wheels) for builds with `--features cuda`:
# candle's kernels are compiled for CUDA_COMPUTE_CAP (90: H100 / H200; no GPU here to ask), and cudarc
# reads the CUDA version from this nvcc. Run in a subshell: it changes PATH and the build's environment.
cuda_env() {
  local home="$ROOT/.tools/cuda/nvidia/cu13"
  [ -x "$home/bin/nvcc" ] || die "no CUDA compiler under $home: run scripts/setup.sh"
  export CUDA_HOME="$home" CUDA_PATH="$home" NVCC="$home/bin/nvcc"
  export PATH="$home/bin:$PATH"
  export LIBRARY_PATH="$home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
}

# The browser of the UI tests: Debian's Chromium (OPENLEDGER_CHROMIUM overrides, e.g. on macOS).
ui_chromium() {
  echo "${OPENLEDGER_CHROMIUM:-/usr/bin/chromium}"
}

# The newest Postgres server binaries (initdb, pg_ctl) of the machine, or nothing.
pg_bin_dir() {
  if [ -n "${OPENLEDGER_PG_BIN:-}" ]; then echo "$OPENLEDGER_PG_BIN"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

# Export DATABASE_URL for tests: the given one, else a database of this clone's own on the machine's server
# on 127.0.0.1:5432, else a private throwaway cluster under .dev/test-postgres (stopped by
# stop_test_postgres). Its own database because sqlx's test harness keeps its registry of test databases in
# the database it is given and, when a test binary starts, drops the ones registered before it: two clones
# testing at once on one server would drop each other's databases in use.
ensure_test_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then return 0; fi
  local server="postgres://postgres@127.0.0.1:5432"
  if psql "$server/postgres" -tAc 'select 1' >/dev/null 2>&1; then
    local db
    db="openledger_test_$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    if [ "$(psql "$server/postgres" -tAc "select 1 from pg_database where datname = '$db'")" != 1 ]; then
      psql "$server/postgres" -qc "create database $db" >/dev/null 2>&1 \
        || [ "$(psql "$server/postgres" -tAc "select 1 from pg_database where datname = '$db'")" = 1 ] \
        || die "could not create the test database $db on $server"
    fi
    export DATABASE_URL="$server/$db"
    return 0
  fi
  local bin dir port run=()
  bin="$(pg_bin_dir)"
  [ -x "$bin/initdb" ] || die "no Postgres server binaries: run scripts/setup.sh"
  dir="$ROOT/.dev/test-postgres"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$dir"; run=(runuser -u postgres --); fi
  [ -f "$dir/data/PG_VERSION" ] || "${run[@]}" "$bin/initdb" -D "$dir/data" -U openledger --auth=trust -N >/dev/null
  port="$(free_port)"
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
    || die "could not start a private Postgres (see $dir/log)"
  TEST_PG_STOP=("${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop)
  export DATABASE_URL="postgres://openledger@127.0.0.1:$port/postgres"
}

stop_test_postgres() {
  if [ -n "${TEST_PG_STOP+x}" ]; then "${TEST_PG_STOP[@]}" >/dev/null 2>&1 || true; fi
}

# Benchmarks' chain fixture: anvil #0 creates Datanet 1 (ipfs://TAG, open) on the suite at URL (manifest
# MANIFEST) and contributes N rows to it (sent without waiting for receipts).
bench_datanet() {
  local url="$1" manifest="$2" n="$3" tag="$4" owner=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
  local registry token
  registry="$(jq -r .contracts.Registry.address "$manifest")"
  token="$(jq -r .contracts.OpenToken.address "$manifest")"
  "$CAST" send -q --rpc-url "$url" --private-key "$owner" "$token" "approve(address,uint256)" "$registry" 10ether
  "$CAST" send -q --rpc-url "$url" --private-key "$owner" "$registry" \
    "createDatanet(string,string[],bool,address[])" "ipfs://$tag" "[]" false "[]"
  for i in $(seq "$n"); do
    "$CAST" send -q --async --rpc-url "$url" --private-key "$owner" "$registry" \
      "contribute(uint256,bytes32,string)" 1 "$("$CAST" keccak "row $i")" "ipfs://row/$i" >/dev/null
  done
}

# wrk prints latencies as 812.00us / 1.23ms / 1.02s: to milliseconds.
wrk_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

# Builds the release `openledger` (logs on stderr) and prints its path.
release_openledger() {
  log "building openledger (release)"
  cargo build --locked -q --release -p openledger-daemon >&2
  echo "$CARGO_TARGET_DIR/release/openledger"
}

# llama-cpp-python 0.3.36 in .tools/llamacpp (the llama.cpp baseline of the serving benchmarks), built from
# PyPI on first use (~10 minutes). AVX2/AVX-512 kernels but not AMX: the native build's AMX path segfaults
# on the first decode on this machine kind (Sapphire Rapids VMs), and the engine does not use AMX either.
ensure_llamacpp() {
  LLAMACPP_PY="$ROOT/.tools/llamacpp/bin/python"
  "$LLAMACPP_PY" -c "import llama_cpp" 2>/dev/null && return 0
  log "installing llama-cpp-python 0.3.36 into .tools/llamacpp (PyPI; compiles llama.cpp, ~10 minutes)"
  python3 -m venv "$ROOT/.tools/llamacpp"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$ROOT/.tools/llamacpp/bin/pip" install -q --no-cache-dir \
    --disable-pip-version-check llama-cpp-python==0.3.36
}
