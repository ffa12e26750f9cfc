#!/usr/bin/env bash
# Line coverage of contracts/src by the forge tests (the gas benchmark is left out: coverage builds are
# unoptimised, so its gas bounds do not apply); fails below the threshold (default 95%).
#   scripts/coverage.sh [MIN_PERCENT]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain
MIN="${1:-95}"
report="$(FOUNDRY_PROFILE=coverage "$FORGE" coverage --report summary --no-match-coverage 'contracts/(test|script)' --no-match-contract GasBenchmark 2>&1)" \
  || { echo "$report" >&2; die "forge coverage failed"; }
echo "$report" | grep -E '^\| (contracts/src|Total|File)' >&2
# | Total | 100.00% (385/385) | ...   (the first column is lines)
read -r covered total < <(echo "$report" | sed -n 's/^| Total *| [0-9.]*% (\([0-9]*\)\/\([0-9]*\)).*/\1 \2/p')
[ -n "${total:-}" ] || die "could not read the coverage summary"
pct=$(python3 -c "print(f'{100*$covered/$total:.2f}')")
python3 -c "import sys; sys.exit(0 if $covered*100 >= $MIN*$total else 1)" \
  || die "line coverage of contracts/src is $pct%, below $MIN%"
echo "RESULT contracts_line_coverage $pct %"
