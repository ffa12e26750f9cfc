#!/usr/bin/env bash
# The README's API walkthrough, runnable: sign in with a wallet (SIWE), upload a contribution, sign its
# EIP-712 payload, let the daemon relay it, and watch it confirmed by the indexer; then the owner accepts it
# and publishes a version, a train job fine-tunes the base model on it, and the adapter's hash is checked on
# chain; last, an inference on the fresh adapter is paid on chain (FeeRouter, pay-first) and answered with
# its Proof of Attribution, which `openledger attribution verify` recomputes (given --database-url). Uses only curl, jq, sha256sum and cast. scripts/test.sh runs it against a fresh stack; run it against `scripts/dev.sh` yourself.
#
#   scripts/api-demo.sh [--api URL] [--rpc-url URL] [--manifest FILE]
#
#   --api URL       the daemon (default http://127.0.0.1:8080)
#   --rpc-url URL   the chain (default http://127.0.0.1:8545)
#   --manifest F    deployment manifest (default deployments/<chainId>.json)
#   --database-url U  the daemon's database: also verify the attribution with the CLI
#
# Keys are anvil's dev accounts: #0 creates a Datanet, #4 contributes (and never pays gas).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

API=http://127.0.0.1:8080
RPC_URL=http://127.0.0.1:8545
MANIFEST=""
DB_URL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --api) API="${2:?}"; shift 2 ;;
    --rpc-url) RPC_URL="${2:?}"; shift 2 ;;
    --manifest) MANIFEST="${2:?}"; shift 2 ;;
    --database-url) DB_URL="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
need_toolchain
CHAIN_ID="$("$CAST" chain-id --rpc-url "$RPC_URL")"
MANIFEST="${MANIFEST:-deployments/$CHAIN_ID.json}"
REGISTRY="$(jq -r .contracts.Registry.address "$MANIFEST")"
TOKEN_ADDR="$(jq -r .contracts.OpenToken.address "$MANIFEST")"
OWNER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
KEY=0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a
ADDR="$("$CAST" wallet address "$KEY")"
step() { printf '\n## %s\n' "$*" >&2; }

step "a Datanet to contribute to (created by #0 with cast; the fee is 10 OPEN)"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$TOKEN_ADDR" "approve(address,uint256)" "$REGISTRY" 10ether
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "createDatanet(string,string[],bool,address[])" "ipfs://qa-datanet" "[qa]" false "[]"
DATANET="$("$CAST" call --rpc-url "$RPC_URL" "$REGISTRY" "datanetCount()(uint256)")"
echo "datanet $DATANET" >&2
# the daemon's indexer picks it up within a block or two
wait_until 300 curl -sf --max-time 10 -o /dev/null "$API/api/datanets/$DATANET" || die "the indexer never showed Datanet $DATANET"
curl -sf "$API/api/datanets/$DATANET" | jq -c '{id, owner, stats}' >&2

step "sign in with the wallet (EIP-4361)"
CHALLENGE="$(curl -sf "$API/api/auth/nonce")"
NONCE="$(jq -r .nonce <<<"$CHALLENGE")"
DOMAIN="$(jq -r .domain <<<"$CHALLENGE")"
ISSUED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
MESSAGE="$DOMAIN wants you to sign in with your Ethereum account:
$("$CAST" to-check-sum-address "$ADDR")

Sign in to OpenLedger

URI: http://$DOMAIN
Version: 1
Chain ID: $CHAIN_ID
Nonce: $NONCE
Issued At: $ISSUED"
SIGNATURE="$("$CAST" wallet sign --private-key "$KEY" "$MESSAGE")"
TOKEN="$(curl -sf -X POST "$API/api/auth/siwe" -H 'content-type: application/json' \
  -d "$(jq -n --arg m "$MESSAGE" --arg s "$SIGNATURE" '{message: $m, signature: $s}')" | jq -r .token)"
AUTH="authorization: Bearer $TOKEN"
curl -sf "$API/api/auth/me" -H "$AUTH" | jq -c . >&2

step "upload a contribution (JSON Lines)"
printf '%s\n' '{"prompt": "What is the capital of France?", "completion": "Paris."}' \
  '{"prompt": "What is 12 * 12?", "completion": "144."}' >"${TMPDIR:-/tmp}/qa.jsonl"
UPLOAD="$(curl -sf -X POST "$API/api/uploads?datanet_id=$DATANET&filename=qa.jsonl" -H "$AUTH" \
  -H 'content-type: application/jsonl' --data-binary @"${TMPDIR:-/tmp}/qa.jsonl")"
UPLOAD_ID="$(jq -r .id <<<"$UPLOAD")"
jq -c '{id, content_hash, records, state}' <<<"$UPLOAD" >&2

step "sign the EIP-712 payload in the wallet; the daemon relays it and pays the gas"
PAYLOAD="$(curl -sf "$API/api/uploads/$UPLOAD_ID/typed-data" -H "$AUTH")"
jq .typed_data <<<"$PAYLOAD" >"${TMPDIR:-/tmp}/contribute.json"
SIG712="$("$CAST" wallet sign --private-key "$KEY" --data --from-file "${TMPDIR:-/tmp}/contribute.json")"
RELAY="$(curl -sf -X POST "$API/api/uploads/$UPLOAD_ID/relay" -H "$AUTH" -H 'content-type: application/json' \
  -d "$(jq -n --arg s "$SIG712" --argjson p "$PAYLOAD" '{signature: $s, nonce: $p.nonce, deadline: $p.deadline}')")"
JOB="$(jq -r .job_id <<<"$RELAY")"
jq -c '{id, state, job_id}' <<<"$RELAY" >&2

step "follow the relay job (Server-Sent Events) until it ends"
# (a display only: the state below is what counts, so a stream cut short is no failure)
curl -sfN --max-time 600 "$API/api/jobs/$JOB/events" -H "$AUTH" | sed -n 's/^data: //p' \
  | jq -rR 'fromjson? // . | if type == "object" then (.message // ("job " + .state)) else "end: " + . end' >&2 \
  || true

step "the upload is confirmed: the indexer saw the ContributionSubmitted event"
upload_confirmed() {
  RESULT="$(curl -sf --max-time 10 "$API/api/uploads/$UPLOAD_ID" -H "$AUTH")" && STATE="$(jq -r .state <<<"$RESULT")" \
    && [ "$STATE" = confirmed ]
}
STATE=""
wait_until 300 upload_confirmed || true
jq -c '{state, contribution: .contribution | {id, contributor, tx_hash, status}}' <<<"$RESULT" >&2
[ "$STATE" = confirmed ] || die "the upload did not get confirmed (state $STATE)"
ONCHAIN="$("$CAST" call --rpc-url "$RPC_URL" "$REGISTRY" "contributionByHash(uint256,address,bytes32)(uint256)" \
  "$DATANET" "$ADDR" "$(jq -r .content_hash <<<"$RESULT")")"
[ "$ONCHAIN" = "$(jq -r .contribution.id <<<"$RESULT")" ] || die "chain says contribution $ONCHAIN"
echo "contribution $ONCHAIN of Datanet $DATANET is on chain, credited to $ADDR" >&2

wait_job() { # id -> the finished job
  local j deadline=$((SECONDS + 1200))
  while [ "$SECONDS" -lt "$deadline" ]; do
    j="$(curl -sf "$API/api/jobs/$1" -H "$AUTH")"
    case "$(jq -r .state <<<"$j")" in succeeded|failed|cancelled) echo "$j"; return ;; esac
    sleep 0.5
  done
  die "job $1 did not finish in 20 minutes"
}

step "the owner (#0) accepts it and publishes version 1 with the root a datanet_snapshot job computed"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "reviewContributions(uint256,uint256[],bool)" "$DATANET" "[$ONCHAIN]" true
accepted() { [ "$(curl -sf --max-time 10 "$API/api/datanets/$DATANET" | jq .stats.accepted)" = 1 ]; }
wait_until 300 accepted || die "the acceptance was never indexed"
SNAP="$(curl -sf -X POST "$API/api/jobs" -H "$AUTH" -H 'content-type: application/json' \
  -d "$(jq -n --arg d "$DATANET" '{kind: "datanet_snapshot", params: {datanet_id: $d}}')" | jq -r .id)"
SNAP="$(wait_job "$SNAP")"
ROOT="$(jq -r .result.root <<<"$SNAP")"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "publishVersion(uint256,bytes32,uint64,string)" "$DATANET" "$ROOT" "$(jq -r .result.contribution_count <<<"$SNAP")" \
  "openledger://datanets/$DATANET/versions/$ROOT"
published() { [ "$(curl -sf --max-time 10 "$API/api/datanets/$DATANET/versions" | jq length)" = 1 ]; }
wait_until 300 published || die "version 1 was never indexed"
echo "version 1 root $ROOT" >&2

step "fine-tune the base model on it (a train job) and watch the loss live"
BASE="$(curl -sf "$API/api/base-models" | jq -r 'map(.id) | (map(select(startswith("SmolLM2"))) + .)[0] // empty')"
[ -n "$BASE" ] || die "no base model installed (scripts/setup.sh fetches SmolLM2)"
TRAIN="$(curl -sf -X POST "$API/api/jobs" -H "$AUTH" -H 'content-type: application/json' -d "$(jq -n \
  --arg b "$BASE" --arg d "$DATANET" '{kind: "train", params: {base_model: $b, datanets: [{id: $d}],
    config: {steps: 6, batch_size: 2, max_seq_len: 64, learning_rate: 0.001, eval_fraction: 0, eval_every: 3}}}')" \
  | jq -r .id)"
curl -sfN --max-time 1200 "$API/api/jobs/$TRAIN/events" -H "$AUTH" | sed -n 's/^data: //p' \
  | jq -rR 'fromjson? // . | if type == "object" then (.message // ("job " + .state)) else "end: " + . end' >&2 \
  || true
TRAINED="$(wait_job "$TRAIN")"
[ "$(jq -r .state <<<"$TRAINED")" = succeeded ] || die "training failed: $(jq -r .error <<<"$TRAINED")"

step "the model and the adapter are on chain, with the hash of the adapter file"
MODEL="$(curl -sf "$API/api/models/$TRAIN")"
jq -c '{model_id, adapter_id, adapter_hash, manifest_hash, loss: [.metrics.first_loss, .metrics.final_loss]}' <<<"$MODEL" >&2
curl -sf -o "${TMPDIR:-/tmp}/adapter_model.safetensors" "$API/api/models/$TRAIN/files/adapter_model.safetensors"
FILE_HASH="0x$(sha256sum "${TMPDIR:-/tmp}/adapter_model.safetensors" | cut -d' ' -f1)"
CHAIN_HASH="$("$CAST" call --rpc-url "$RPC_URL" "$REGISTRY" "adapter(uint256)((uint64,uint64,bytes32))" \
  "$(jq -r .adapter_id <<<"$MODEL")" | grep -o '0x[0-9a-f]\{64\}')"
[ "$FILE_HASH" = "$CHAIN_HASH" ] || die "adapter file hash $FILE_HASH != on-chain contentHash $CHAIN_HASH"
echo "adapter $(jq -r .adapter_id <<<"$MODEL") of model $(jq -r .model_id <<<"$MODEL"): sha256 $FILE_HASH on chain" >&2

step "export it for llama.cpp and Ollama: the adapter as a GGUF LoRA, the merged GGUF, a Modelfile"
[ "$(jq -c .exports <<<"$MODEL")" = '["adapter.gguf","model.gguf","model-hf.zip","Modelfile"]' ] \
  || die "exports offered: $(jq -c .exports <<<"$MODEL")"
EXPORTS="$(mktemp -d)"
for f in adapter.gguf model.gguf Modelfile; do
  curl -sf --max-time 600 -o "$EXPORTS/$f" "$API/api/models/$TRAIN/export/$f" || die "exporting $f failed"
done
for f in adapter.gguf model.gguf; do [ "$(head -c4 "$EXPORTS/$f")" = GGUF ] || die "$f is not a GGUF file"; done
grep -qx 'FROM ./model.gguf' "$EXPORTS/Modelfile" || die "the Modelfile does not name model.gguf"
echo "adapter.gguf $(stat -c%s "$EXPORTS/adapter.gguf") bytes, model.gguf $(stat -c%s "$EXPORTS/model.gguf") bytes (run: llama-cli -m $BASE.gguf --lora adapter.gguf; ollama create ft-$TRAIN -f Modelfile)" >&2
rm -rf "$EXPORTS"

step "pay FeeRouter for an inference on it, ask, and read whose data answered"
ROUTER="$(jq -r .contracts.FeeRouter.address "$MANIFEST")"
# paid under keccak256(secret): the request id is public once sent, the secret only goes to the daemon
SECRET="$("$CAST" keccak "api-demo-$(date +%s%N)")"
REQUEST="$("$CAST" keccak "$SECRET")"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$TOKEN_ADDR" "approve(address,uint256)" "$ROUTER" 1ether
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$ROUTER" "payInference(uint256,bytes32,uint256)" \
  "$(jq -r .model_id <<<"$MODEL")" "$REQUEST" 1ether
ANSWER="$(curl -sf "$API/v1/chat/completions" -H 'content-type: application/json' -d "$(jq -n \
  --arg m "ft-$TRAIN" --arg r "$SECRET" '{model: $m, request_secret: $r, max_tokens: 12, temperature: 0,
    messages: [{role: "user", content: "What is the capital of France?"}]}')")"
ATT="$(jq .openledger.attribution <<<"$ANSWER")"
jq -c '{answer: .choices[0].message.content, inference: .openledger.inference_id}' <<<"$ANSWER" >&2
jq -c '{status, spans: [.spans[] | {text, contributors: [.contributions[].contributor]}], weights}' <<<"$ATT" >&2
[ "$(jq -r .status <<<"$ATT")" = complete ] || die "the inference was not attributed: $ATT"
INFERENCE="$(jq -r .openledger.inference_id <<<"$ANSWER")"
STORED="$(curl -sf "$API/api/inferences/$INFERENCE/attribution")"
[ "$(jq -r .record_hash <<<"$STORED")" = "$(jq -r .record_hash <<<"$ATT")" ] || die "stored attribution differs from the response"
if [ -n "$DB_URL" ]; then
  "$OPENLEDGER_BIN" --database-url "$DB_URL" --log warn attribution verify "$INFERENCE" >&2
fi
echo "API walkthrough ok"
