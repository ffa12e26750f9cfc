#!/usr/bin/env bash
# Settlement at scale and its gas (release build, CPU):
#   - one epoch of 1,000,000 payments (each split over 3 contributors, 10% unattributed) among 1,000,000
#     contributors, half of them with leaves from an earlier epoch: the split, the cumulative leaves, the
#     OpenZeppelin tree and every proof, timed, and the process's peak memory (goal: < 10 s, < 2 GB);
#   - on a fresh anvil with the suite deployed: gasUsed of proposing that root and of claims with its
#     depth-20 proofs (real transactions: 21,000 base and calldata included): the first claim of an account
#     that already holds OPEN, of one that has none, and a returning claim (a second root over the same
#     accounts, one wei more each).
#
#   scripts/bench-settle.sh [ACCOUNTS [PAYMENTS]]
#
# Ends with RESULT lines; settle_1m_seconds and claim_gas are the headline.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain

case "${1:-}" in -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
ACCOUNTS="${1:-1000000}"
PAYMENTS="${2:-$ACCOUNTS}"
# anvil's dev account #3 holds OPEN (funded below); FRESH never held any
HOLDER=0x90F79bf6EB2c4f870365E785982E1f101E93b906
HOLDER_KEY=0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
FRESH=0x000000000000000000000000000000000000bEEF
DEPLOYER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d

log "building the settlement benchmark (release)"
cargo build --locked -q --release -p openledger-settlement --example bench_settle
BIN="$CARGO_TARGET_DIR/release/examples/bench_settle"
dir="$(mktemp -d)"
port="$(free_port)"
"$ANVIL" --port "$port" --chain-id 7341 --network optimism --silent &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT

out="$("$BIN" --accounts "$ACCOUNTS" --payments "$PAYMENTS" --include "$HOLDER,$FRESH" --out "$dir/tree.json")"
echo "$out"

url="http://127.0.0.1:$port"
wait_rpc "$url" || die "anvil did not start"
scripts/deploy.sh --rpc-url "$url" --out "$dir/m.json" >/dev/null 2>&1 || die "deploy failed"
TOKEN="$(jq -r .contracts.OpenToken.address "$dir/m.json")"
POOL="$(jq -r .contracts.RewardDistributor.address "$dir/m.json")"
ROOT_HASH="$(jq -r .root "$dir/tree.json")"
TOTAL="$(jq -r .total "$dir/tree.json")"
gas_of() { "$CAST" receipt --rpc-url "$url" "$1" gasUsed; }
send() { "$CAST" send --rpc-url "$url" --json "$@" | jq -r .transactionHash; }
# the pool holds the root's total (as FeeRouter payments would have put it there); the holder some OPEN
send --private-key "$DEPLOYER_KEY" "$TOKEN" "transfer(address,uint256)" "$POOL" "$TOTAL" >/dev/null
send --private-key "$DEPLOYER_KEY" "$TOKEN" "transfer(address,uint256)" "$HOLDER" 1000000000000000000 >/dev/null
uri="openledger://settlement/7341/1/0x$(printf '%064d' 0)"
tx="$(send --private-key "$SETTLER_KEY" "$POOL" "proposeRoot(uint64,bytes32,uint256,string)" 1 "$ROOT_HASH" "$TOTAL" "$uri")"
propose_gas="$(gas_of "$tx")"
delay="$("$CAST" call --rpc-url "$url" "$POOL" "challengeDelay()(uint64)")"
"$CAST" rpc --rpc-url "$url" evm_increaseTime "$((delay + 1))" >/dev/null
"$CAST" rpc --rpc-url "$url" evm_mine >/dev/null
send --private-key "$SETTLER_KEY" "$POOL" "acceptRoot()" >/dev/null
claim() { # account -> gasUsed of its claim (sent by the holder; anyone may)
  local leaf cum proof
  leaf="$(jq -c --arg a "$1" '.leaves[] | select((.account | ascii_downcase) == ($a | ascii_downcase))' "$dir/tree.json")"
  cum="$(jq -r .cumulative <<<"$leaf")"
  proof="[$(jq -r '.proof | join(",")' <<<"$leaf")]"
  gas_of "$(send --private-key "$HOLDER_KEY" "$POOL" "claim(address,uint256,bytes32[])" "$1" "$cum" "$proof")"
}
holder_gas="$(claim "$HOLDER")"
fresh_gas="$(claim "$FRESH")"
bal="$("$CAST" call --rpc-url "$url" "$TOKEN" "balanceOf(address)(uint256)" "$FRESH" | awk '{print $1}')"
want="$(jq -r --arg a "$FRESH" '.leaves[] | select((.account | ascii_downcase) == ($a | ascii_downcase)) | .cumulative' "$dir/tree.json")"
[ "$bal" = "$want" ] || die "the fresh account received $bal, not $want"
# a second root: the same accounts, the two measured ones owed one wei more; the holder claims again
"$BIN" --accounts "$ACCOUNTS" --payments "$PAYMENTS" --include "$HOLDER,$FRESH" --extra-wei 1 --out "$dir/tree.json" >/dev/null
send --private-key "$DEPLOYER_KEY" "$TOKEN" "transfer(address,uint256)" "$POOL" 2 >/dev/null
send --private-key "$SETTLER_KEY" "$POOL" "proposeRoot(uint64,bytes32,uint256,string)" 2 "$(jq -r .root "$dir/tree.json")" \
  "$(jq -r .total "$dir/tree.json")" "$uri" >/dev/null
"$CAST" rpc --rpc-url "$url" evm_increaseTime "$((delay + 1))" >/dev/null
"$CAST" rpc --rpc-url "$url" evm_mine >/dev/null
send --private-key "$SETTLER_KEY" "$POOL" "acceptRoot()" >/dev/null
returning_gas="$(claim "$HOLDER")"
depth="$(jq '.leaves[0].proof | length' "$dir/tree.json")"
echo "gasUsed (real transactions, proof depth $depth): proposeRoot $propose_gas; first claim by an OPEN holder $holder_gas, by an account with no OPEN $fresh_gas; returning claim $returning_gas"
grep '^RESULT' <<<"$out"
echo "RESULT propose_root_gas $propose_gas gas"
echo "RESULT claim_gas $holder_gas gas"
echo "RESULT claim_gas_no_balance $fresh_gas gas"
echo "RESULT claim_gas_returning $returning_gas gas"
