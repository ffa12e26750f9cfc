#!/usr/bin/env bash
# Start the local OpenLedger stack and keep it running until Ctrl-C: an OP-stack-mode anvil devnet with the
# contract suite deployed, and `openledger serve` (REST API, in-process indexer, job workers) on it, with
# Postgres from DATABASE_URL if set, else a private cluster under .dev/openledger.
#
#   scripts/dev.sh [--port N] [--api-port N] [--chain-id N] [--block-time S] [--fresh] [--demo]
#
#   --port N        JSON-RPC port (default 8545)
#   --api-port N    the daemon's HTTP port (default 8080)
#   --chain-id N    chain id of the devnet (default 7331, OpenLedger's local id)
#   --block-time S  seconds per block; 0 mines each transaction at once (default 0)
#   --fresh         forget the saved chain state and the local index (.dev/) and deploy anew
#   --demo          once it is up, run the whole economy (scripts/economy-demo.sh): contributors contribute,
#                   an adapter is trained, inferences are paid, the daemon settles, contributors claim
#
# The chain state is saved on exit and loaded on the next start, so the deployment in
# deployments/<chainId>.json stays valid across restarts.
# While it runs, ~/.local/state/openledger/dev-stack.env ($OPENLEDGER_DEV_STACK overrides) names its database,
# node, manifest and API: `openledger status`, `keys create`, `settle list` ... follow it from any directory.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PORT=8545
API_PORT=8080
CHAIN_ID=7331
BLOCK_TIME=0
FRESH=0
DEMO=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="${2:?}"; shift 2 ;;
    --api-port) API_PORT="${2:?}"; shift 2 ;;
    --chain-id) CHAIN_ID="${2:?}"; shift 2 ;;
    --block-time) BLOCK_TIME="${2:?}"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    --demo) DEMO=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
need_toolchain
URL="http://127.0.0.1:$PORT"
if "$CAST" chain-id --rpc-url "$URL" >/dev/null 2>&1; then
  die "something already answers JSON-RPC on port $PORT: stop it or pass --port"
fi
if curl -s -o /dev/null "http://127.0.0.1:$API_PORT/" 2>/dev/null; then
  die "something already listens on port $API_PORT: stop it or pass --api-port"
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
DAEMON_PID=""
STACK_FILE=""
cleanup() {
  if [ -n "$STACK_FILE" ] && grep -qx "export OPENLEDGER_DEV_PID=$DAEMON_PID" "$STACK_FILE" 2>/dev/null; then
    rm -f "$STACK_FILE"
  fi
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  log "stopping anvil (state saved to $STATE)"
  kill "$ANVIL_PID" 2>/dev/null || true
  wait "$ANVIL_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM
wait_rpc "$URL" || die "anvil did not start (port $PORT taken?)"

MANIFEST="$(scripts/deploy.sh --rpc-url "$URL")"
# the daemon's key (#1) sponsors inferences on the dev stack: give it OPEN once (deployer #0 holds the supply)
DAEMON_ADDR=0x70997970C51812dc3A010C7d01b50e0d17dc79C8
TOKEN="$(jq -r '.contracts.OpenToken.address' "$MANIFEST")"
if [ "$("$CAST" call --rpc-url "$URL" "$TOKEN" 'balanceOf(address)(uint256)' "$DAEMON_ADDR" | cut -d' ' -f1)" = 0 ]; then
  "$CAST" send -q --rpc-url "$URL" --private-key 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 \
    "$TOKEN" 'transfer(address,uint256)' "$DAEMON_ADDR" 1000000000000000000000 >/dev/null \
    || die "could not fund the daemon's key with OPEN"
fi

log "building openledger"
cargo build --locked -q -p openledger-daemon || die "cargo build failed"
DATA_DIR="$ROOT/.dev/openledger"
# the base model setup.sh fetched, offered for training (linked, not copied)
mkdir -p "$DATA_DIR/models"
BASE_MODEL="$(scripts/fetch-model.sh)"
ln -sf "$BASE_MODEL" "$DATA_DIR/models/$(basename "$BASE_MODEL")"
# the daemon relays and publishes from anvil's dev account #1 (a well-known key: devnets only)
OPENLEDGER_PRIVATE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \
  "$OPENLEDGER_BIN" --data-dir "$DATA_DIR" serve --rpc-url "ws://127.0.0.1:$PORT" --manifest "$MANIFEST" \
  --listen "127.0.0.1:$API_PORT" --domain "127.0.0.1:$API_PORT" --sponsor-inference \
  --dev-wallet --public-rpc-url "$URL" \
  --settle-every-secs 5 --finality-depth 0 \
  2> >(sed -u 's/^/[openledger] /' >&2) &
DAEMON_PID=$!
DB_URL="${DATABASE_URL:-}"
if [ -n "${DATABASE_URL:-}" ]; then
  PSQL="psql $DATABASE_URL"
else
  # the private cluster's port is in its postmaster.pid (line 4) once it accepts connections
  pidfile="$DATA_DIR/postgres/pgdata/postmaster.pid"
  PSQL="psql (the private cluster did not come up: see the [openledger] lines)"
  for _ in $(seq 600); do
    pg_port="$(sed -n 4p "$pidfile" 2>/dev/null || true)"
    if [ -n "$pg_port" ] && psql "postgres://openledger@127.0.0.1:$pg_port/openledger" -tAc 'select 1' >/dev/null 2>&1; then
      DB_URL="postgres://openledger@127.0.0.1:$pg_port/openledger"
      PSQL="psql $DB_URL"
      break
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
fi

API="http://127.0.0.1:$API_PORT"
for _ in $(seq 600); do
  curl -sf "$API/readyz" >/dev/null 2>&1 && break
  kill -0 "$DAEMON_PID" 2>/dev/null || die "openledger serve exited (see the [openledger] lines)"
  sleep 0.1
done

# the file `openledger` reads to follow this stack from any directory (database, node, manifest, API), and a
# shell may `source`; removed when the stack stops
STACK_FILE="${OPENLEDGER_DEV_STACK:-${XDG_STATE_HOME:-$HOME/.local/state}/openledger/dev-stack.env}"
mkdir -p "$(dirname "$STACK_FILE")"
cat > "$STACK_FILE" <<ENV
# written by scripts/dev.sh while its stack runs (removed when it stops): \`openledger\` follows it
export DATABASE_URL='$DB_URL'
export OPENLEDGER_DATA_DIR='$DATA_DIR'
export OPENLEDGER_RPC_URL='$URL'
export OPENLEDGER_MANIFEST='$(realpath "$MANIFEST")'
export OPENLEDGER_URL='$API'
export OPENLEDGER_DEV_PID=$DAEMON_PID
export PATH="$ROOT/.tools/bin:\$PATH"
ENV

cat >&2 <<MSG

OpenLedger local stack is up.
  web app      $API/   (sign in with a dev account; Datanets, training, chat, rewards, operator view)
  JSON-RPC     $URL   (chain id $CHAIN_ID, OP-stack transaction types)
  contracts    $MANIFEST
  API          $API   (docs $API/docs, OpenAPI $API/openapi.json, metrics $API/metrics)
  daemon       openledger serve: API + indexer (newHeads subscription) + job workers
  database     $PSQL
  CLI          openledger status | keys create | settle list ... follow this stack from any directory
               (it reads $STACK_FILE; \`source\` it for DATABASE_URL and a PATH with openledger, forge, cast)
  deployer     anvil dev account #0 (holds the dev genesis allocation)
  relayer      anvil dev account #1 (settler: settles every 5 s; relays signed contributions)
  walkthrough  scripts/demo.sh --rpc-url $URL        (contracts, with cast)
               scripts/api-demo.sh --api $API   (sign in, upload, relay, confirm)
               scripts/economy-demo.sh --api $API --database-url $DB_URL
                                               (contribute, train, pay, settle, claim)
Ctrl-C stops it.
MSG
if [ "$DEMO" = 1 ]; then
  scripts/economy-demo.sh --api "$API" --rpc-url "$URL" --manifest "$MANIFEST" --database-url "$DB_URL" \
    || log "the economy demo failed (the stack keeps running)"
fi
wait "$ANVIL_PID"
