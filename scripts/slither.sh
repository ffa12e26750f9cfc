#!/usr/bin/env bash
# Static analysis of contracts/src with slither (crytic-compile's foundry mode builds through forge).
# Fails on any medium or high finding; SECURITY.md explains each finding that is accepted.
# Config: slither.config.json (the `timestamp` detector is off: see SECURITY.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain
VENV="$ROOT/.tools/slither"
[ -x "$VENV/bin/slither" ] || die "slither missing: run scripts/setup.sh (it installs it into .tools/slither)"
# its own build dirs: crytic-compile runs `forge clean` first, which must not wipe contracts/out
FOUNDRY_OUT=contracts/out-slither FOUNDRY_CACHE_PATH=contracts/cache-slither \
  "$VENV/bin/slither" . --config-file slither.config.json --fail-medium
