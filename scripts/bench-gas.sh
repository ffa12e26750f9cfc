#!/usr/bin/env bash
# Gas of the hot paths, two ways:
#   - execution gas (what `forge test` measures; storage cold as in a real transaction, no 21k base),
#     from contracts/test/bench/GasBenchmark.t.sol, with proofs for a tree of ~1M contributors;
#   - gasUsed of real transactions (21k base and calldata included) sent by scripts/demo.sh to a fresh anvil.
# Ends with one `RESULT <name> <value> gas` line per figure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain

results=()
while read -r _ name value; do results+=("RESULT $name $value gas"); done < <(
  "$FORGE" test --match-contract GasBenchmark -vv 2>&1 | grep -E '^\s*RESULT ' | sort
)
[ "${#results[@]}" -gt 0 ] || die "the gas benchmark printed nothing (does it build?)"

port="$(free_port)"
dir="$(mktemp -d)"
"$ANVIL" --port "$port" --chain-id 7338 --network optimism --silent &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
wait_rpc "http://127.0.0.1:$port" || die "anvil did not start"
scripts/deploy.sh --rpc-url "http://127.0.0.1:$port" --out "$dir/m.json" >/dev/null 2>&1
while read -r _ fn used; do results+=("RESULT tx_gas_${fn} $used gas"); done < <(
  scripts/demo.sh --rpc-url "http://127.0.0.1:$port" --manifest "$dir/m.json" 2>/dev/null | grep '^GAS '
)
printf '%s\n' "${results[@]}"
