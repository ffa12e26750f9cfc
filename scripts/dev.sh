#!/usr/bin/env bash
# Start the local OpenLedger stack and keep it running until Ctrl-C: an OP-stack-mode anvil devnet with the
# contract suite deployed, and `openledger index` following it into Postgres (DATABASE_URL if set, else a
# private cluster under .dev/openledger).
#
#   scripts/dev.sh [--port N] [--chain-id N] [--block-time S] [--fresh]
#
#   --port N        JSON-RPC port (default 8545)
#   --chain-id N    chain id of the devnet (default 7331, OpenLedger's local id)
#   --block-time S  seconds per block; 0 mines each transaction at once (default 0)
#   --fresh         forget the saved chain state and the local index (.dev/) and deploy anew
#
# The chain state is saved on exit and loaded on the next start, so the deployment in
# deployments/<chainId>.json stays valid across restarts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PORT=8545
CHAIN_ID=7331
BLOCK_TIME=0
FRESH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="${2:?}"; shift 2 ;;
    --chain-id) CHAIN_ID="${2:?}"; shift 2 ;;
    --block-time) BLOCK_TIME="${2:?}"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
need_toolchain
URL="http://127.0.0.1:$PORT"
if "$CAST" chain-id --rpc-url "$URL" >/dev/null 2>&1; then
  die "something already answers JSON-RPC on port $PORT: stop it or pass --port"
fi
mkdir -p .dev
STATE=".dev/anvil-state-$CHAIN_ID.json"
if [ "$FRESH" = 1 ]; then
  # a new chain reuses the same addresses: the old index must go too, or it would look like a deep reorg
  rm -rf "$STATE" "deployments/$CHAIN_ID.json" "$ROOT/.dev/openledger"
  [ -n "${DATABASE_URL:-}" ] && log "note: --fresh does not empty DATABASE_URL; drop its chain index yourself"
fi

args=(--port "$PORT" --chain-id "$CHAIN_ID" --network optimism --state "$STATE" --silent)
[ "$BLOCK_TIME" != 0 ] && args+=(--block-time "$BLOCK_TIME")
log "starting anvil on $URL (chain $CHAIN_ID, state $STATE)"
"$ANVIL" "${args[@]}" &
ANVIL_PID=$!
INDEX_PID=""
cleanup() {
  if [ -n "$INDEX_PID" ]; then kill "$INDEX_PID" 2>/dev/null || true; wait "$INDEX_PID" 2>/dev/null || true; fi
  log "stopping anvil (state saved to $STATE)"
  kill "$ANVIL_PID" 2>/dev/null || true
  wait "$ANVIL_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM
wait_rpc "$URL" || die "anvil did not start (port $PORT taken?)"

MANIFEST="$(scripts/deploy.sh --rpc-url "$URL")"

log "building openledger"
cargo build --locked -q -p openledger-daemon || die "cargo build failed"
DATA_DIR="$ROOT/.dev/openledger"
"$OPENLEDGER_BIN" --data-dir "$DATA_DIR" index --rpc-url "ws://127.0.0.1:$PORT" --manifest "$MANIFEST" \
  2> >(sed -u 's/^/[indexer] /' >&2) &
INDEX_PID=$!
if [ -n "${DATABASE_URL:-}" ]; then
  PSQL="psql $DATABASE_URL"
else
  # the private cluster's port is in its postmaster.pid (line 4) once it accepts connections
  pidfile="$DATA_DIR/postgres/pgdata/postmaster.pid"
  PSQL="psql (the private cluster did not come up: see the [indexer] lines)"
  for _ in $(seq 600); do
    pg_port="$(sed -n 4p "$pidfile" 2>/dev/null || true)"
    if [ -n "$pg_port" ] && psql "postgres://openledger@127.0.0.1:$pg_port/openledger" -tAc 'select 1' >/dev/null 2>&1; then
      PSQL="psql postgres://openledger@127.0.0.1:$pg_port/openledger"
      break
    fi
    kill -0 "$INDEX_PID" 2>/dev/null || break
    sleep 0.1
  done
fi

cat >&2 <<MSG

OpenLedger local stack is up.
  JSON-RPC     $URL   (chain id $CHAIN_ID, OP-stack transaction types)
  contracts    $MANIFEST
  indexer      openledger index (following by newHeads subscription)
  database     $PSQL
  deployer     anvil dev account #0 (holds the dev genesis allocation)
  daemon       anvil dev account #1 (settler)
  walkthrough  scripts/demo.sh --rpc-url $URL
Ctrl-C stops it.
MSG
wait "$ANVIL_PID"
