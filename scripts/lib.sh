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
