#!/usr/bin/env bash
# The web UI's tests (scripts/test.sh runs them): the front-end logic's unit tests (node --test ui/test/),
# then the whole no-code path end to end in headless Chromium (Debian's package, driven by playwright-core;
# no browser is downloaded) against a fresh dev stack: anvil + the suite + `openledger serve --dev-wallet
# --sponsor-inference` on a fresh database, settling every 2 s. ui/e2e/flow.mjs signs in with a dev
# account, creates a Datanet, contributes, curates, publishes a version, trains a tiny adapter, chats
# with it and sees the attribution, and claims the reward. Screenshots of each page go to
# $OPENLEDGER_UI_SCREENSHOTS (default .dev/ui-screenshots).
#
#   scripts/test-ui.sh [--unit-only]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain

UNIT_ONLY=0
[ "${1:-}" = "--unit-only" ] && UNIT_ONLY=1
log "front-end unit tests"
node --test --test-reporter=tap ui/test/ >&2
[ "$UNIT_ONLY" = 1 ] && exit 0

CHROMIUM="$(ui_chromium)"
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM: run scripts/setup.sh (Debian package chromium) or set OPENLEDGER_CHROMIUM"
[ -d node_modules/playwright-core ] || die "playwright-core missing: run scripts/setup.sh"
# the UI is compiled into the binary: build every time (a no-op when nothing changed)
cargo build --locked -q -p openledger-daemon
SHOTS="${OPENLEDGER_UI_SCREENSHOTS:-$ROOT/.dev/ui-screenshots}"
rm -rf "$SHOTS"

own_pg=0
if [ -z "${DATABASE_URL:-}" ]; then ensure_test_postgres; own_pg=1; fi
port="$(free_port)"; api_port="$(free_port)"; chain=7341; dir="$(mktemp -d)"; db="ol_ui_$$"
anvil_pid=""; serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && { stop_child "$serve_pid" || true; }
  mkdir -p "$SHOTS" && cp "$dir/serve.log" "$SHOTS/openledger.log" 2>/dev/null || true
  [ -n "$anvil_pid" ] && { kill "$anvil_pid" 2>/dev/null || true; wait "$anvil_pid" 2>/dev/null || true; }
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
  [ "$own_pg" = 1 ] && stop_test_postgres
  return 0
}
trap cleanup EXIT

url="http://127.0.0.1:$port"
"$ANVIL" --port "$port" --chain-id "$chain" --network optimism --silent &
anvil_pid=$!
wait_rpc "$url" || die "anvil did not start"
scripts/deploy.sh --rpc-url "$url" --out "$dir/$chain.json" >/dev/null 2>&1 || die "deploy failed"
# the daemon's key (#1) sponsors the chat's inferences: give it OPEN, as scripts/dev.sh does
"$CAST" send -q --rpc-url "$url" --private-key 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 \
  "$(jq -r .contracts.OpenToken.address "$dir/$chain.json")" 'transfer(address,uint256)' \
  0x70997970C51812dc3A010C7d01b50e0d17dc79C8 1000000000000000000000 >/dev/null
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
OPENLEDGER_PRIVATE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \
  "$OPENLEDGER_BIN" --database-url "${DATABASE_URL%/*}/$db" --log info serve --rpc-url "$url" \
  --manifest "$dir/$chain.json" --listen "127.0.0.1:$api_port" --poll-interval-ms 100 \
  --dev-wallet --sponsor-inference --settle-every-secs 2 --finality-depth 0 --payment-wait-secs 300 \
  2>"$dir/serve.log" &
serve_pid=$!
api="http://127.0.0.1:$api_port"
wait_ready "$api" "$serve_pid" || die "openledger serve did not become ready (its log: $SHOTS/openledger.log)"

log "end to end in $CHROMIUM (screenshots: $SHOTS)"
if ! node ui/e2e/flow.mjs --url "$api" --out "$SHOTS" --chromium "$CHROMIUM"; then
  log "the daemon's last words (all of it in $SHOTS/openledger.log):"
  grep -E ' (WARN|ERROR) ' "$dir/serve.log" | tail -20 >&2 || true
  exit 1
fi
