#!/usr/bin/env bash
# Deploy the OpenLedger contract suite to any JSON-RPC endpoint and write deployments/<chainId>.json.
#
#   scripts/deploy.sh [--rpc-url URL] [--config FILE] [--force]
#
#   --rpc-url URL   JSON-RPC endpoint (default: $RPC_URL, else http://127.0.0.1:8545)
#   --config FILE   deployment config under contracts/script/config/ (default: local.json)
#   --force         deploy a new suite even if the manifest's contracts are already on that chain
#   --out FILE      where to write the manifest (default: deployments/<chainId>.json)
#
# The deployer key comes from DEPLOYER_PRIVATE_KEY (default: anvil's first dev account, for local devnets).
# Idempotent: if deployments/<chainId>.json exists and its contracts have code on the chain, nothing is sent.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

RPC_URL="${RPC_URL:-http://127.0.0.1:8545}"
CONFIG="local.json"
FORCE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rpc-url) RPC_URL="${2:?--rpc-url needs a URL}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file name}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --out) OUT="${2:?--out needs a file}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
need_toolchain
CONFIG_PATH="contracts/script/config/$CONFIG"
[ -f "$CONFIG_PATH" ] || die "no deployment config at $CONFIG_PATH"
jq empty "$CONFIG_PATH" 2>/dev/null || die "$CONFIG_PATH is not valid JSON"

CHAIN_ID="$("$CAST" chain-id --rpc-url "$RPC_URL" 2>/dev/null)" || die "no JSON-RPC node answers at $RPC_URL"
MANIFEST="${OUT:-deployments/$CHAIN_ID.json}"

if [ -f "$MANIFEST" ] && [ "$FORCE" = 0 ]; then
  token="$(jq -r '.contracts.OpenToken.address' "$MANIFEST")"
  code="$("$CAST" code "$token" --rpc-url "$RPC_URL" 2>/dev/null || echo 0x)"
  if [ "$code" != "0x" ]; then
    log "suite already deployed on chain $CHAIN_ID (OpenToken at $token); use --force for a new one"
    echo "$MANIFEST"
    exit 0
  fi
  log "$MANIFEST names contracts that are not on this chain (a fresh node?): deploying again"
fi

if [ -z "${DEPLOYER_PRIVATE_KEY:-}" ]; then
  log "DEPLOYER_PRIVATE_KEY unset: using anvil's first dev account (fine for a local devnet only)"
  export DEPLOYER_PRIVATE_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
fi
DEPLOYER="$("$CAST" wallet address --private-key "$DEPLOYER_PRIVATE_KEY")" || die "DEPLOYER_PRIVATE_KEY is not a valid key"

log "deploying to chain $CHAIN_ID at $RPC_URL from $DEPLOYER with $CONFIG"
DEPLOY_CONFIG="$CONFIG" "$FORGE" script contracts/script/Deploy.s.sol:Deploy \
  --rpc-url "$RPC_URL" --broadcast --slow >&2 || die "forge script failed (nothing is recorded in $MANIFEST)"

mkdir -p "$(dirname "$MANIFEST")"
node scripts/write-manifest.js "contracts/broadcast/Deploy.s.sol/$CHAIN_ID/run-latest.json" \
  "$CONFIG_PATH" "$DEPLOYER" "$MANIFEST.tmp" >/dev/null
mv "$MANIFEST.tmp" "$MANIFEST"
log "wrote $MANIFEST"
echo "$MANIFEST"
