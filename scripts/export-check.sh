#!/usr/bin/env bash
# Exports against llama.cpp (PyPI llama-cpp-python, built on first use into .tools/llamacpp: about 10
# minutes): every family fixture's GGUF with its exported GGUF LoRA (`--lora`) gives in llama.cpp the logits
# of the exported merged GGUF (and transformers + PEFT's, as closely as llama.cpp's base gets to
# transformers'), and on SmolLM2-135M-Instruct an adapter trained on every projection, exported as a GGUF LoRA
# (base + `--lora`) and as the merged GGUF, gives our greedy tokens in llama.cpp; every Modelfile's TEMPLATE
# (and SYSTEM) renders, in Go's text/template as Ollama renders it, the prompt our chat template renders
# (Go from Debian's golang-go, installed on first use). Not part of CI (the
# llama.cpp build alone takes a third of CI's budget); `cargo test -p openledger-model --test families`
# checks the same files' arithmetic without llama.cpp.
#
#   scripts/export-check.sh [--threads T] [--out DIR]
#
# Ends with RESULT lines; exits 1 when llama.cpp or a Modelfile disagrees.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

THREADS="$(nproc)"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="${2:?}"; shift 2 ;;
    --out) OUT="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
status=0
log "llama.cpp on the exports"
"$LLAMACPP_PY" scripts/export_check_llamacpp.py "$OUT" "$FIXTURES" "$MODEL" "$THREADS" || status=1
# Ollama itself cannot be installed here (no PyPI or npm package): its Modelfile TEMPLATEs are rendered by
# Go's text/template, the engine Ollama runs them on, and must give the prompts our chat templates give
if ! command -v go >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "Go is missing: apt-get install golang-go (as root), then run this again"
  log "installing Go (Debian golang-go) for the Modelfile check"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
log "the Modelfiles' templates (Go text/template, as Ollama renders them) against our chat templates"
equal=0; total=0
for d in "$OUT" "$OUT"/families/*; do
  counts="$(go run scripts/modelfile_render.go "$d/Modelfile" "$d/chats.json")" || status=1
  read -r e t <<<"${counts:-0 0}"
  equal=$((equal + e)); total=$((total + t))
done
echo "RESULT modelfile_prompts_equal_ours $equal of_$total"
exit $status
