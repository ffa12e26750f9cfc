#!/usr/bin/env bash
# Exports against llama.cpp (PyPI llama-cpp-python, built on first use into .tools/llamacpp: about 10
# minutes): every family fixture's GGUF with its exported GGUF LoRA (`--lora`) gives in llama.cpp the logits
# of the exported merged GGUF (and transformers + PEFT's, as closely as llama.cpp's base gets to
# transformers'), and on SmolLM2-135M-Instruct an adapter trained on every projection, exported as a GGUF LoRA
# (base + `--lora`) and as the merged GGUF, gives our greedy tokens in llama.cpp. Not part of CI (the
# llama.cpp build alone takes a third of CI's budget); `cargo test -p openledger-model --test families`
# checks the same files' arithmetic without llama.cpp.
#
#   scripts/export-check.sh [--threads T] [--out DIR]
#
# Ends with RESULT lines; exits 1 when llama.cpp disagrees.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

THREADS="$(nproc)"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="${2:?}"; shift 2 ;;
    --out) OUT="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
if [ -z "$OUT" ]; then
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi

MODEL="$(scripts/fetch-model.sh)"
ensure_llamacpp
log "building the export check (release)"
cargo build --locked -q --release -p openledger-model --example export_check
FIXTURES="$ROOT/crates/model/tests/data/families"
log "exporting: the family fixtures' adapters, and an adapter trained on SmolLM2 (about a minute)"
"$CARGO_TARGET_DIR/release/examples/export_check" "$MODEL" "$FIXTURES" "$OUT"
log "llama.cpp on the exports"
"$LLAMACPP_PY" scripts/export_check_llamacpp.py "$OUT" "$FIXTURES" "$MODEL" "$THREADS"
