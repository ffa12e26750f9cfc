#!/usr/bin/env bash
# Rebuild the contracts and refresh contracts/abi/*.json (`--check`: fail if the committed ones drifted).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain
"$FORGE" build --deny warnings >&2
node scripts/abi.js "$@"
