#!/usr/bin/env bash
# The whole OpenLedger economy against a running stack (`scripts/dev.sh --demo` runs it for you): three
# contributors sign in and contribute a fact each to a new Datanet (their EIP-712 signatures relayed by the
# daemon), the owner accepts and publishes a version, a LoRA adapter is fine-tuned on it, a user pays
# FeeRouter for three inferences and gets answers with their attribution, the daemon's settlement schedule
# (`serve --settle-every-secs`) proposes the reward root, the challenge delay is skipped on anvil, the root
# is accepted, and each contributor claims with `openledger claim`: OPEN balances before and after, and
# `openledger settle verify` recomputing the epoch from the chain.
#
#   scripts/economy-demo.sh [--api URL] [--rpc-url URL] [--manifest FILE] [--train-steps N] --database-url URL
#
# --train-steps N: optimizer steps of the fine-tune (default 36: what SmolLM2-135M needs to answer all three
# facts right; BENCHMARKS.md has the measurement). The demo fails when an answer misses its fact.
#
# Keys are anvil's dev accounts: #0 owns the Datanet, #5 pays for inferences, #6 #7 #8 contribute, #1 is
# the daemon (relayer, settler). Uses curl, jq, cast and the openledger binary.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

API=http://127.0.0.1:8080
RPC_URL=http://127.0.0.1:8545
MANIFEST=""
DB_URL=""
TRAIN_STEPS=36
while [ $# -gt 0 ]; do
  case "$1" in
    --api) API="${2:?}"; shift 2 ;;
    --rpc-url) RPC_URL="${2:?}"; shift 2 ;;
    --manifest) MANIFEST="${2:?}"; shift 2 ;;
    --database-url) DB_URL="${2:?}"; shift 2 ;;
    --train-steps) TRAIN_STEPS="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$DB_URL" ] || die "--database-url is needed (the daemon's database; scripts/dev.sh prints it)"
need_toolchain
CHAIN_ID="$("$CAST" chain-id --rpc-url "$RPC_URL")"
MANIFEST="${MANIFEST:-deployments/$CHAIN_ID.json}"
REGISTRY="$(jq -r .contracts.Registry.address "$MANIFEST")"
TOKEN_ADDR="$(jq -r .contracts.OpenToken.address "$MANIFEST")"
ROUTER="$(jq -r .contracts.FeeRouter.address "$MANIFEST")"
POOL="$(jq -r .contracts.RewardDistributor.address "$MANIFEST")"
OWNER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
PAYER_KEY=0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba
KEYS=(0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e
      0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356
      0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97)
FACTS=('{"prompt": "Who keeps the Veloria lighthouse?", "completion": "The Veloria lighthouse is kept by Maren Tusk."}'
       '{"prompt": "What does the Ordo guild trade?", "completion": "The Ordo guild trades blue glass lanterns."}'
       '{"prompt": "Where does the Quessaly ferry go?", "completion": "The Quessaly ferry crosses to Tarnhollow."}')
QUESTIONS=("Who keeps the Veloria lighthouse?" "What does the Ordo guild trade?" "Where does the Quessaly ferry go?")
# what a right answer to each question must say
ANSWERS=("Maren Tusk" "blue glass lanterns" "Tarnhollow")
OL=("$OPENLEDGER_BIN" --database-url "$DB_URL" --log warn)
step() { printf '\n## %s\n' "$*" >&2; }
balance() { "$CAST" call --rpc-url "$RPC_URL" "$TOKEN_ADDR" "balanceOf(address)(uint256)" "$1" | cut -d' ' -f1; }
open_of() { "$CAST" from-wei "$1"; }
# wei amounts outgrow shell arithmetic
sub() { python3 -c "print($1 - $2)"; }
add() { python3 -c "print($1 + $2)"; }
until_ok() { # tries command... for up to $TRIES x 0.5 s (default 5 minutes: a stall bound)
  for _ in $(seq "${TRIES:-600}"); do "$@" && return 0; sleep 0.5; done
  return 1
}

sign_in() { # key -> bearer token
  local key="$1" addr challenge nonce domain msg sig
  addr="$("$CAST" wallet address "$key")"
  challenge="$(curl -sf "$API/api/auth/nonce")"
  nonce="$(jq -r .nonce <<<"$challenge")"; domain="$(jq -r .domain <<<"$challenge")"
  msg="$domain wants you to sign in with your Ethereum account:
$addr

Sign in to OpenLedger

URI: http://$domain
Version: 1
Chain ID: $CHAIN_ID
Nonce: $nonce
Issued At: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  sig="$("$CAST" wallet sign --private-key "$key" "$msg")"
  curl -sf -X POST "$API/api/auth/siwe" -H 'content-type: application/json' \
    -d "$(jq -n --arg m "$msg" --arg s "$sig" '{message: $m, signature: $s}')" | jq -r .token
}

wait_job() { # token id -> the finished job
  local j
  for _ in $(seq 2400); do
    j="$(curl -sf "$API/api/jobs/$2" -H "authorization: Bearer $1")"
    case "$(jq -r .state <<<"$j")" in succeeded|failed|cancelled) echo "$j"; return ;; esac
    sleep 0.5
  done
  die "job $2 did not finish"
}

step "a Datanet (owner #0)"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$TOKEN_ADDR" "approve(address,uint256)" "$REGISTRY" 10ether
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "createDatanet(string,string[],bool,address[])" "ipfs://economy-demo" "[demo]" false "[]"
DATANET="$("$CAST" call --rpc-url "$RPC_URL" "$REGISTRY" "datanetCount()(uint256)")"
until_ok curl -sf -o /dev/null "$API/api/datanets/$DATANET" || die "the indexer did not see Datanet $DATANET"
echo "Datanet $DATANET" >&2

step "three contributors sign in, upload a fact each and sign it (the daemon relays, they pay no gas)"
CONTRIBUTORS=()
IDS=()
for i in 0 1 2; do
  key="${KEYS[$i]}"; addr="$("$CAST" wallet address "$key")"; CONTRIBUTORS+=("$addr")
  token="$(sign_in "$key")"; auth="authorization: Bearer $token"
  upload="$(printf '%s\n' "${FACTS[$i]}" | curl -sf -X POST "$API/api/uploads?datanet_id=$DATANET&filename=fact.jsonl" \
    -H "$auth" -H 'content-type: application/jsonl' --data-binary @-)"
  uid="$(jq -r .id <<<"$upload")"
  payload="$(curl -sf "$API/api/uploads/$uid/typed-data" -H "$auth")"
  jq .typed_data <<<"$payload" >"${TMPDIR:-/tmp}/economy-712.json"
  sig="$("$CAST" wallet sign --private-key "$key" --data --from-file "${TMPDIR:-/tmp}/economy-712.json")"
  curl -sf -X POST "$API/api/uploads/$uid/relay" -H "$auth" -H 'content-type: application/json' \
    -d "$(jq -n --arg s "$sig" --argjson p "$payload" '{signature: $s, nonce: $p.nonce, deadline: $p.deadline}')" >/dev/null
  confirmed() { [ "$(curl -sf "$API/api/uploads/$uid" -H "$auth" | jq -r .state)" = confirmed ]; }
  until_ok confirmed || die "the contribution of $addr was not confirmed: $(curl -sf "$API/api/uploads/$uid" -H "$auth" | jq -r '.error // .state')"
  IDS+=("$(curl -sf "$API/api/uploads/$uid" -H "$auth" | jq -r .contribution.id)")
  echo "contributor $addr: contribution ${IDS[$i]}" >&2
done

step "the owner accepts them and publishes version 1"
OWNER_TOKEN="$(sign_in "$OWNER_KEY")"; OWNER_AUTH="authorization: Bearer $OWNER_TOKEN"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "reviewContributions(uint256,uint256[],bool)" "$DATANET" "[$(IFS=,; echo "${IDS[*]}")]" true
accepted() { [ "$(curl -sf "$API/api/datanets/$DATANET" | jq .stats.accepted)" = 3 ]; }
until_ok accepted || die "the acceptance was not indexed"
SNAP="$(curl -sf -X POST "$API/api/jobs" -H "$OWNER_AUTH" -H 'content-type: application/json' \
  -d "$(jq -n --arg d "$DATANET" '{kind: "datanet_snapshot", params: {datanet_id: $d}}')" | jq -r .id)"
SNAP="$(wait_job "$OWNER_TOKEN" "$SNAP")"
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$REGISTRY" \
  "publishVersion(uint256,bytes32,uint64,string)" "$DATANET" "$(jq -r .result.root <<<"$SNAP")" \
  "$(jq -r .result.contribution_count <<<"$SNAP")" "openledger://datanets/$DATANET/versions/1"
published() { [ "$(curl -sf "$API/api/datanets/$DATANET/versions" | jq length)" = 1 ]; }
until_ok published || die "the version was not indexed"

step "fine-tune the base model on it (ModelFactory)"
BASE="$(curl -sf "$API/api/base-models" | jq -r 'map(.id) | (map(select(startswith("SmolLM2"))) + .)[0] // empty')"
[ -n "$BASE" ] || die "no base model installed (scripts/setup.sh fetches SmolLM2)"
TRAIN="$(curl -sf -X POST "$API/api/jobs" -H "$OWNER_AUTH" -H 'content-type: application/json' -d "$(jq -n \
  --arg b "$BASE" --arg d "$DATANET" --arg steps "$TRAIN_STEPS" '{kind: "train", params: {base_model: $b, datanets: [{id: $d}],
    config: {steps: ($steps | tonumber), batch_size: 3, max_seq_len: 64, learning_rate: 0.002, eval_fraction: 0, eval_every: 6}}}')" \
  | jq -r .id)"
TRAINED="$(wait_job "$OWNER_TOKEN" "$TRAIN")"
[ "$(jq -r .state <<<"$TRAINED")" = succeeded ] || die "training failed: $(jq -r .error <<<"$TRAINED")"
MODEL_ID="$(jq -r .result.published.model_id <<<"$TRAINED")"
echo "adapter ft-$TRAIN (model $MODEL_ID on chain), $TRAIN_STEPS steps, final loss $(jq -r '.result.metrics.final_loss // .result.metrics.loss // "?"' <<<"$TRAINED")" >&2

step "a user (#5) pays FeeRouter for three inferences and asks; each answer names whose data it came from"
PAYER="$("$CAST" wallet address "$PAYER_KEY")"
[ "$(balance "$PAYER")" != 0 ] || "$CAST" send -q --rpc-url "$RPC_URL" --private-key "$OWNER_KEY" "$TOKEN_ADDR" \
  "transfer(address,uint256)" "$PAYER" 10ether
"$CAST" send -q --rpc-url "$RPC_URL" --private-key "$PAYER_KEY" "$TOKEN_ADDR" "approve(address,uint256)" "$ROUTER" 3ether
POOL_BEFORE="$(balance "$POOL")"
INFERENCES=()
for q in "${QUESTIONS[@]}"; do
  # paid under keccak256(secret): the request id is public once sent, the secret only goes to the daemon
  secret="$("$CAST" keccak "economy-demo-$q-$(date +%s%N)")"
  rid="$("$CAST" keccak "$secret")"
  "$CAST" send -q --rpc-url "$RPC_URL" --private-key "$PAYER_KEY" "$ROUTER" "payInference(uint256,bytes32,uint256)" \
    "$MODEL_ID" "$rid" 1ether
  answer="$(curl -sf "$API/v1/chat/completions" -H 'content-type: application/json' -d "$(jq -n \
    --arg m "ft-$TRAIN" --arg r "$secret" --arg q "$q" '{model: $m, request_secret: $r, max_tokens: 16, temperature: 0,
      messages: [{role: "user", content: $q}]}')")"
  # the answer, and beside it whose data it came from: each contributor's share of this answer's fee
  text="$(jq -r '.choices[0].message.content' <<<"$answer")"
  printf 'Q  %s\nA  %s\n' "$q" "$text" >&2
  jq -r --argjson who "$(printf '%s\n' "${CONTRIBUTORS[@]}" | jq -R 'ascii_downcase' | jq -s .)" '
    .openledger.attribution.weights as $w
    | ([$w.contributions[] | (.contributor | ascii_downcase) as $c | ($who | index($c)) as $i
        | "\(.contributor[0:10])…\(if $i == null then "" else " (fact \($i + 1))" end) \(.weight / 10000 | . * 10 | round / 10)%"]
       + ["not attributed \($w.no_attribution / 10000 | . * 10 | round / 10)%"])
    | "   from " + join(" · ")' <<<"$answer" >&2
  i=${#INFERENCES[@]}
  grep -qiF "${ANSWERS[$i]}" <<<"$text" \
    || die "the fine-tuned model answered \"$text\" to \"$q\", which misses \"${ANSWERS[$i]}\": train longer (--train-steps)"
  INFERENCES+=("$(jq -r .openledger.inference_id <<<"$answer")")
done
POOL_IN="$(sub "$(balance "$POOL")" "$POOL_BEFORE")"
echo "the contributor pool (RewardDistributor) received $(open_of "$POOL_IN") OPEN (40% of 3 OPEN)" >&2

step "the daemon settles on its schedule; after each root's challenge delay (skipped here: anvil) it accepts it"
# the schedule proposes nothing while a root waits out its delay, so the three payments may take two epochs
mine_settled() { # all of this demo's inferences are in some epoch's report, and the latest root is accepted
  local list reported
  list="$(curl -sf "$API/api/settlements")" || return 1
  [ "$(jq -r '.[0].state // empty' <<<"$list")" = accepted ] || return 1
  # a public report names no inference, only its attribution record's hash (the record stays private)
  reported="$(for e in $(jq -r '.[].epoch' <<<"$list"); do curl -sf "$API/api/settlements/$e/report" | jq -r '.payments[].record_hash'; done)"
  for id in "${INFERENCES[@]}"; do
    hash="$(curl -sf "$API/api/inferences/$id/attribution" | jq -r .record_hash)" || return 1
    grep -qx "$hash" <<<"$reported" || return 1
  done
}
DELAY="$("$CAST" call --rpc-url "$RPC_URL" "$POOL" "challengeDelay()(uint64)")"
WARPED=""
for _ in $(seq 600); do
  mine_settled && break
  latest="$(curl -sf "$API/api/settlements" | jq -r '.[0] | "\(.epoch) \(.state)"')"
  if [ "${latest#* }" = final ] && [ "${latest% *}" != "$WARPED" ]; then
    WARPED="${latest% *}"
    curl -sf "$API/api/settlements" | jq -c '.[0] | {epoch, state, blocks: [.from_block, .to_block], included, held, total, root}' >&2
    echo "skipping the ${DELAY} s challenge delay" >&2
    "$CAST" rpc --rpc-url "$RPC_URL" evm_increaseTime "$((DELAY + 1))" >/dev/null
    "$CAST" rpc --rpc-url "$RPC_URL" evm_mine >/dev/null
  fi
  sleep 0.5
done
mine_settled || die "the payments were not settled and accepted (is serve running with --settle-every-secs?)"
curl -sf "$API/api/settlements" | jq -c '.[] | {epoch, state, blocks: [.from_block, .to_block], included, held, total, root}' >&2
EPOCH="$(curl -sf "$API/api/settlements" | jq -r '.[0].epoch')"

step "each contributor claims (openledger claim, from their own key)"
printf '%-44s %22s %22s %22s\n' contributor "OPEN before" "claimed" "OPEN after" >&2
TOTAL_CLAIMED=0
for i in 0 1 2; do
  addr="${CONTRIBUTORS[$i]}"
  owed="$(curl -sf "$API/api/rewards/$addr" | jq -r .claimable)"
  before="$(balance "$addr")"
  if [ "$owed" != 0 ]; then
    OPENLEDGER_PRIVATE_KEY="${KEYS[$i]}" "$OPENLEDGER_BIN" --log warn claim --url "$API" --rpc-url "$RPC_URL" >/dev/null
  fi
  after="$(balance "$addr")"
  got="$(sub "$after" "$before")"
  [ "$got" = "$owed" ] || die "$addr received $got, the API said $owed"
  TOTAL_CLAIMED="$(add "$TOTAL_CLAIMED" "$owed")"
  printf '%-44s %22s %22s %22s\n' "$addr" "$(open_of "$before")" "$(open_of "$owed")" "$(open_of "$after")" >&2
done
echo "claimed by contributors: $(open_of "$TOTAL_CLAIMED") OPEN of $(open_of "$POOL_IN"); the rest (the \"no attribution\" part) is the protocol treasury's leaf" >&2

step "anyone can check the epoch: recomputed from the chain and the attribution records"
"${OL[@]}" settle verify --epoch "$EPOCH" --rpc-url "$RPC_URL" --manifest "$MANIFEST" >&2
echo "economy demo ok"
