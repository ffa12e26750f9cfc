#!/usr/bin/env bash
# Walk the whole on-chain flow with plain `cast`, as a dApp would, against a deployed suite:
#   Datanet -> contribution -> curation -> version -> model -> paid inference (read InferencePaid)
#   -> reward root -> challenge delay -> claim.
# Every command is printed before it runs, so this doubles as a tutorial (see README).
#
#   scripts/demo.sh [--rpc-url URL] [--manifest FILE]
#     --rpc-url URL    default: $RPC_URL, else http://127.0.0.1:8545
#     --manifest FILE  default: deployments/<chainId>.json
#
# Needs a local anvil (it uses anvil's dev accounts and evm_increaseTime) with the suite deployed by
# scripts/deploy.sh. Prints `GAS <function> <gasUsed>` for the key transactions on stdout; exits non-zero
# if any balance or event is not what the contracts promise.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

RPC_URL="${RPC_URL:-http://127.0.0.1:8545}"
M=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rpc-url) RPC_URL="${2:?}"; shift 2 ;;
    --manifest) M="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
need_toolchain
CHAIN_ID="$(cast chain-id --rpc-url "$RPC_URL")" || die "no node at $RPC_URL"
M="${M:-deployments/$CHAIN_ID.json}"
[ -f "$M" ] || die "$M missing: run scripts/deploy.sh --rpc-url $RPC_URL first"
export ETH_RPC_URL="$RPC_URL"

addr() { jq -r ".contracts.$1.address" "$M"; }
TOKEN=$(addr OpenToken); REGISTRY=$(addr Registry); ROUTER=$(addr FeeRouter); POOL=$(addr RewardDistributor)

# anvil's dev accounts (its default mnemonic); #0 holds the dev genesis allocation, #1 is the daemon (settler)
MNEMONIC="test test test test test test test test test test test junk"
key() { cast wallet private-key --mnemonic "$MNEMONIC" --mnemonic-index "$1"; }
HOLDER_KEY=$(key 0); SETTLER_KEY=$(key 1); USER_KEY=$(key 2); OWNER_KEY=$(key 3); CONTRIB_KEY=$(key 4); DEV_KEY=$(key 5)
USER=$(cast wallet address --private-key $USER_KEY)
OWNER=$(cast wallet address --private-key $OWNER_KEY)
CONTRIB=$(cast wallet address --private-key $CONTRIB_KEY)
DEV=$(cast wallet address --private-key $DEV_KEY)

run() { printf '\n$ %s\n' "$*" >&2; "$@"; }
# send a transaction, print its hash; fail loudly if it reverted
tx() {
  local key="$1"; shift
  printf '\n$ cast send %s\n' "$*" >&2
  local out
  out=$(cast send --private-key "$key" --json "$@") || die "transaction failed: cast send $*"
  [ "$(jq -r .status <<<"$out")" = "0x1" ] || die "reverted: cast send $*"
  jq -r .transactionHash <<<"$out"
}
gas_of() { cast receipt "$1" gasUsed; }
bal() { cast call "$TOKEN" "balanceOf(address)(uint256)" "$1" | awk '{print $1}'; }
expect_eq() { [ "$1" = "$2" ] || die "$3: expected $2, got $1"; printf '  ok: %s = %s\n' "$3" "$1" >&2; }

log "chain $CHAIN_ID, manifest $M"
tx $HOLDER_KEY "$TOKEN" "transfer(address,uint256)" "$USER" 1000ether >/dev/null
tx $HOLDER_KEY "$TOKEN" "transfer(address,uint256)" "$OWNER" 100ether >/dev/null

# 1. A Datanet (the registration fee is paid in OPEN)
FEE=$(cast call "$REGISTRY" "datanetFee()(uint256)" | awk '{print $1}')
tx $OWNER_KEY "$TOKEN" "approve(address,uint256)" "$REGISTRY" "$FEE" >/dev/null
tx $OWNER_KEY "$REGISTRY" "createDatanet(string,string[],bool,address[])" "ipfs://demo-datanet" "[solidity,audits]" false "[]" >/dev/null
DATANET=$(cast call "$REGISTRY" "datanetCount()(uint256)")

# 2. A contribution, accepted by the owner, and a version committing to it
H=$(cast keccak "a solidity audit finding, CC-BY")
T=$(tx $CONTRIB_KEY "$REGISTRY" "contribute(uint256,bytes32,string)" "$DATANET" "$H" "ipfs://finding-1")
echo "GAS contribute $(gas_of "$T")"
CID=$(cast call "$REGISTRY" "contributionCount()(uint256)")
tx $OWNER_KEY "$REGISTRY" "reviewContributions(uint256,uint256[],bool)" "$DATANET" "[$CID]" true >/dev/null
tx $OWNER_KEY "$REGISTRY" "publishVersion(uint256,bytes32,uint64,string)" "$DATANET" "$(cast keccak v1)" 1 "ipfs://v1" >/dev/null

# 3. A model trained on that version
tx $DEV_KEY "$REGISTRY" "registerModel((string,bytes32,uint256[],uint64[],bytes32,string))" \
  "(SmolLM2-135M-Instruct,$(cast keccak base),[$DATANET],[1],$(cast keccak cfg),ipfs://model)" >/dev/null
MODEL=$(cast call "$REGISTRY" "modelCount()(uint256)")

# 4. A paid inference: approve, pay, read the InferencePaid event back
POOL0=$(bal "$POOL"); DEV0=$(bal "$DEV")
tx $USER_KEY "$TOKEN" "approve(address,uint256)" "$ROUTER" 10ether >/dev/null
REQ=$(cast keccak "request-$(date +%s%N)")
T=$(tx $USER_KEY "$ROUTER" "payInference(uint256,bytes32,uint256)" "$MODEL" "$REQ" 10ether)
echo "GAS payInference_first $(gas_of "$T")"
SIG="InferencePaid(address,uint256,bytes32,uint256,address,uint256,uint256,uint256,uint256)"
DATA=$(cast receipt "$T" --json | jq -r --arg t0 "$(cast keccak "$SIG")" '.logs[] | select(.topics[0]==$t0) | .data')
[ -n "$DATA" ] || die "no InferencePaid event in $T"
# payer, modelId and requestId are the indexed topics; the data holds the amount and its four parts
log "InferencePaid: amount, developer, burned, developerAmount, treasuryAmount, poolAmount ="
run cast decode-event --sig "InferencePaid(uint256,address,uint256,uint256,uint256,uint256)" "$DATA" >&2
POOL_PART=$(( $(bal "$POOL") - POOL0 ))
expect_eq "$(cast to-unit $POOL_PART ether)" "4" "pool share of a 10 OPEN fee (40%)"
expect_eq "$(cast to-unit $(( $(bal "$DEV") - DEV0 )) ether)" "4" "developer share (40%)"
# the same requestId again is refused: a replay
if cast send --private-key $USER_KEY "$ROUTER" "payInference(uint256,bytes32,uint256)" "$MODEL" "$REQ" 1ether >/dev/null 2>&1; then
  die "a replayed requestId was accepted"
fi
log "replaying requestId $REQ reverts, as it must"
# a second payment, as in steady use (balances and checkpoints already exist)
tx $USER_KEY "$TOKEN" "approve(address,uint256)" "$ROUTER" 10ether >/dev/null
T=$(tx $USER_KEY "$ROUTER" "payInference(uint256,bytes32,uint256)" "$MODEL" "$(cast keccak "$REQ")" 10ether)
echo "GAS payInference $(gas_of "$T")"

# 5. Settlement: a one-leaf cumulative tree paying the contributor 3 OPEN (root = leaf, empty proof)
LEAF=$(cast keccak "$(cast keccak "$(cast abi-encode 'f(address,uint256)' "$CONTRIB" 3ether)")")
EPOCH=$(( $(cast call "$POOL" "latestEpoch()(uint64)") + 1 ))
CLAIMED=$(cast call "$POOL" "totalClaimed()(uint256)" | awk '{print $1}')
T=$(tx $SETTLER_KEY "$POOL" "proposeRoot(uint64,bytes32,uint256,string)" "$EPOCH" "$LEAF" "$(( CLAIMED + 3000000000000000000 ))" "ipfs://epoch")
echo "GAS proposeRoot $(gas_of "$T")"
DELAY=$(cast call "$POOL" "challengeDelay()(uint64)")
run cast rpc evm_increaseTime "$DELAY" >/dev/null
run cast rpc evm_mine >/dev/null
tx $USER_KEY "$POOL" "acceptRoot()" >/dev/null
C0=$(bal "$CONTRIB")
T=$(tx $USER_KEY "$POOL" "claim(address,uint256,bytes32[])" "$CONTRIB" 3ether "[]")
echo "GAS claim $(gas_of "$T")"
expect_eq "$(cast to-unit $(( $(bal "$CONTRIB") - C0 )) ether)" "3" "contributor claimed"
log "demo complete"
