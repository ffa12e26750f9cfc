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
# Outside a local devnet (a node that is not anvil, hardhat or ganache) it refuses unless both --config and
# DEPLOYER_PRIVATE_KEY are given, the key is not a well-known dev key, the config is not local.json and
# names no dev account, and the config names a guardian (see production.example.json).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

RPC_URL="${RPC_URL:-http://127.0.0.1:8545}"
CONFIG="local.json"
CONFIG_GIVEN=0
FORCE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rpc-url) RPC_URL="${2:?--rpc-url needs a URL}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file name}"; CONFIG_GIVEN=1; shift 2 ;;
    --force) FORCE=1; shift ;;
    --out) OUT="${2:?--out needs a file}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# anvil's ten dev accounts (mnemonic "test test ... junk"): their keys are public
DEV_ACCOUNTS="0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266 0x70997970c51812dc3a010c7d01b50e0d17dc79c8
0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc 0x90f79bf6eb2c4f870365e785982e1f101e93b906
0x15d34aaf54267db7d7c367839aaf71a00a2c6a65 0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc
0x976ea74026e726554db657fa54763abd0c3a0aa9 0x14dc79964da2c08b23698b3d3cc7ca32193d9955
0x23618e81e3f5cdf7f54c3d65f7fbc0abf5b21e8f 0xa0ee7a142d267c1f36714e4a8f75612f20a79720"
CLIENT="$("$CAST" rpc web3_clientVersion --rpc-url "$RPC_URL" 2>/dev/null | tr -d '"' || true)"
case "$(tr '[:upper:]' '[:lower:]' <<<"$CLIENT")" in
  anvil*|hardhat*|ganache*) DEVNET=1 ;;
  *) DEVNET=0 ;;
esac
if [ "$DEVNET" = 0 ]; then
  where="chain $CHAIN_ID (node: ${CLIENT:-unknown}) is not a local devnet"
  [ "$CONFIG_GIVEN" = 1 ] && [ -n "${DEPLOYER_PRIVATE_KEY:-}" ] ||
    die "$where: give both --config <file> and DEPLOYER_PRIVATE_KEY (start from contracts/script/config/production.example.json)"
  [ "$CONFIG" != local.json ] || die "$where: local.json gives 90% of the supply to a public dev key; write a config of your own"
  key_addr="$("$CAST" wallet address --private-key "$DEPLOYER_PRIVATE_KEY" 2>/dev/null | tr '[:upper:]' '[:lower:]')" ||
    die "DEPLOYER_PRIVATE_KEY is not a valid key"
  ! grep -qw "$key_addr" <<<"$DEV_ACCOUNTS" || die "$where: DEPLOYER_PRIVATE_KEY is a public dev key ($key_addr)"
  for a in $(jq -r '[.allocations[].recipient, .settler, .guardian, .slasher] | .[] | ascii_downcase' "$CONFIG_PATH"); do
    ! grep -qw "$a" <<<"$DEV_ACCOUNTS" || die "$where: $CONFIG names $a, a public dev account"
  done
  [ "$(jq -r '.guardian | ascii_downcase' "$CONFIG_PATH")" != 0x0000000000000000000000000000000000000000 ] ||
    die "$where: $CONFIG names no guardian (a revoker besides the timelock is required outside devnets)"
  [ "$(jq -r '._example // false' "$CONFIG_PATH")" != true ] ||
    die "$where: $CONFIG is an example; copy it, put your own addresses in, and delete _example"
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
