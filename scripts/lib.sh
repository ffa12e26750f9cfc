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

# Wait until a JSON-RPC endpoint answers eth_chainId (default 30 s).
wait_rpc() {
  local url="$1" tries="${2:-150}"
  for _ in $(seq "$tries"); do
    "$CAST" chain-id --rpc-url "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# Rust builds share one target directory outside the clone, so fresh clones (and CI) reuse earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/openledger-target}"
OPENLEDGER_BIN="$CARGO_TARGET_DIR/debug/openledger"

# The browser of the UI tests: Debian's Chromium (OPENLEDGER_CHROMIUM overrides, e.g. on macOS).
ui_chromium() {
  echo "${OPENLEDGER_CHROMIUM:-/usr/bin/chromium}"
}

# The newest Postgres server binaries (initdb, pg_ctl) of the machine, or nothing.
pg_bin_dir() {
  if [ -n "${OPENLEDGER_PG_BIN:-}" ]; then echo "$OPENLEDGER_PG_BIN"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

# Export DATABASE_URL for tests: the given one, else the machine's server on 127.0.0.1:5432, else a private
# throwaway cluster under .dev/test-postgres (stopped by stop_test_postgres).
ensure_test_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then return 0; fi
  if psql "postgres://postgres@127.0.0.1:5432/postgres" -tAc 'select 1' >/dev/null 2>&1; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
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
