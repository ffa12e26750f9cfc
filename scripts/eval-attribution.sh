#!/usr/bin/env bash
# Proof of Attribution evaluation on planted contributors: ten contributors with an invented fact each
# (a verbatim canary and a fact taught in paraphrase), one fact contributed by two of them, and a
# background contributor with generic data; SmolLM2-135M-Instruct fine-tuned with LoRA on it (CPU, a few
# minutes), held-out queries answered by the int8 serving engine and attributed as the daemon attributes
# inferences. Prints top-1 and MRR per method (span, gradient, combined, BM25, random) and item class,
# the payout share reaching the right contributor, the shared fact's split, the "no attribution" share on
# generic prompts, then RESULT lines (attr_top1_verbatim and attr_top1_paraphrase: the combined method).
#
#   scripts/eval-attribution.sh [--epochs N] [--json FILE] [--reuse DIR]
#
# --epochs   training epochs over the planted data (default 12)
# --json     also write every item's answer, spans, gradient top and weights to FILE
# --reuse    keep the trained adapter in DIR, and on later runs attribute with it instead of retraining
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

EPOCHS=12
JSON=()
REUSE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) EPOCHS="${2:?--epochs needs a number}"; shift 2 ;;
    --json) JSON=(--json "${2:?--json needs a file}"); shift 2 ;;
    --reuse) REUSE=(--reuse "${2:?--reuse needs a folder}"); shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

MODEL="$(scripts/fetch-model.sh)"
log "building the evaluation (dev profile: the model and attribution crates are optimised in it)"
cargo build --locked -q -p openledger-attribution --example eval_attribution
"$CARGO_TARGET_DIR/debug/examples/eval_attribution" "$MODEL" --epochs "$EPOCHS" "${JSON[@]}" "${REUSE[@]}"
