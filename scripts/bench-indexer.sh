#!/usr/bin/env bash
# Indexer benchmark: generate >= 100,000 mixed events on a local anvil (contributions, reviews, paid
# inferences with their token transfers, plain transfers; hundreds per block), backfill them into a fresh
# database with `openledger index --until-head`, then measure head lag while following.
#
#   scripts/bench-indexer.sh [--events N] [--lag-samples N] [--chain-cache DIR]
#
#   --chain-cache DIR  keep the generated chain (anvil state + manifest) in DIR and reuse it on later runs
#                      (generation takes minutes; the indexing measured is the same)
#
# Prints events/s and peak memory of the backfill and the lag from a transaction's receipt to its row being
# visible in Postgres, polling (http://) and subscribed (ws://). Ends with RESULT lines.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain

TARGET_EVENTS=100000
LAG_SAMPLES=20
CACHE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --events) TARGET_EVENTS="${2:?}"; shift 2 ;;
    --lag-samples) LAG_SAMPLES="${2:?}"; shift 2 ;;
    --chain-cache) CACHE="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

log "building openledger"
cargo build --locked -q -p openledger-daemon
"$FORGE" build -q

work="$(mktemp -d)"
port="$(free_port)"
state_args=()
cached=0
if [ -n "$CACHE" ]; then
  mkdir -p "$CACHE"
  CACHE="$(cd "$CACHE" && pwd)"
  [ -f "$CACHE/state.json" ] && [ -f "$CACHE/m.json" ] && [ -f "$CACHE/pump" ] && cached=1
  state_args=(--state "$CACHE/state.json")
fi
"$ANVIL" --port "$port" --chain-id 7337 --network optimism --gas-limit 300000000 --silent "${state_args[@]}" &
anvil_pid=$!
index_pid=""
bench_db=""
cleanup() {
  [ -n "$index_pid" ] && kill "$index_pid" 2>/dev/null && wait "$index_pid" 2>/dev/null
  kill "$anvil_pid" 2>/dev/null
  wait "$anvil_pid" 2>/dev/null
  if [ -n "$bench_db" ]; then
    for db in "$bench_db" "${bench_db}_http" "${bench_db}_ws"; do
      psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
    done
  fi
  stop_test_postgres
  rm -rf "$work"
}
trap cleanup EXIT
URL="http://127.0.0.1:$port"
export ETH_RPC_URL="$URL"
wait_rpc "$URL" || die "anvil did not start"
KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
send() { "$CAST" send -q --private-key $KEY "$@"; }
if [ "$cached" = 1 ]; then
  M="$CACHE/m.json"
  PUMP="$(cat "$CACHE/pump")"
  log "reusing the chain in $CACHE"
else
  M="$work/m.json"
  scripts/deploy.sh --rpc-url "$URL" --out "$M" >/dev/null 2>&1
fi
c() { jq -r ".contracts.$1.address" "$M"; }
if [ "$cached" = 0 ]; then
PUMP=$("$FORGE" create contracts/test/bench/EventPump.sol:EventPump --broadcast --private-key $KEY --rpc-url "$URL" \
  --json --constructor-args "$(c OpenToken)" "$(c Registry)" "$(c FeeRouter)" 2>/dev/null | sed -n "/^{/,\$p" | jq -r .deployedTo)
[ -n "$PUMP" ] && [ "$PUMP" != null ] || die "could not deploy the EventPump"
send "$(c OpenToken)" "transfer(address,uint256)" "$PUMP" 100000000ether
send "$PUMP" "setup()"

log "generating >= $TARGET_EVENTS events"
t0=$(date +%s)
# one round: 300 contributions + 300 reviews + 150 payments x 5 events + 500 transfers = 1,850 events
rounds=$(( (TARGET_EVENTS + 1849) / 1850 ))
for _ in $(seq "$rounds"); do
  send "$PUMP" "contribute(uint256)" 300
  send "$PUMP" "review(uint256)" 300
  send "$PUMP" "pay(uint256,uint256)" 150 1ether
  send "$PUMP" "scatter(uint256,uint256)" 500 1
done
log "generated in $(( $(date +%s) - t0 )) s"
send "$(c OpenToken)" "approve(address,uint256)" "$(c FeeRouter)" 1000000000ether
if [ -n "$CACHE" ]; then cp "$M" "$CACHE/m.json"; echo "$PUMP" > "$CACHE/pump"; fi
fi
count=$("$CAST" rpc --raw eth_getLogs "[{\"fromBlock\":\"0x0\",\"toBlock\":\"latest\",\"address\":$(jq -c '[.contracts[].address]' "$M")}]" | jq length)
[ "$count" -ge "$TARGET_EVENTS" ] || die "only $count events on the chain"
blocks=$("$CAST" block-number)
log "chain holds $count events of the suite in $blocks blocks"

ensure_test_postgres
bench_db="ol_bench_$$"
psql "$DATABASE_URL" -qc "CREATE DATABASE $bench_db" >/dev/null
DB_URL="${DATABASE_URL%/*}/$bench_db"

log "backfill"
"$OPENLEDGER_BIN" --database-url "$DB_URL" migrate >/dev/null 2>&1   # schema set-up is not part of the figure
/usr/bin/time -v -o "$work/time.txt" "$OPENLEDGER_BIN" --database-url "$DB_URL" --json \
  index --rpc-url "$URL" --manifest "$M" --until-head >"$work/backfill.json" 2>"$work/backfill.log"
written=$(jq .events_written "$work/backfill.json")
secs=$(jq .elapsed_s "$work/backfill.json")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
eps=$(python3 -c "print(round($written/$secs))")
stored=$(psql "$DB_URL" -tAc "SELECT count(*) FROM chain_events")
[ "$stored" = "$written" ] || die "stored $stored events but the indexer reported $written"
log "backfilled $written events in ${secs}s (connect, checks, RPC, decoding, Postgres; migrations excluded)"

# Head lag: one payment per sample; from the receipt (mined) to its row in inference_payments.
measure_lag() {
  local rpc="$1" label="$2" lags=()
  local db="${bench_db}_$label" url
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  url="${DATABASE_URL%/*}/$db"
  "$OPENLEDGER_BIN" --database-url "$url" index --rpc-url "$rpc" --manifest "$M" --poll-interval-ms 100 \
    2>"$work/follow-$label.log" &
  index_pid=$!
  # wait for the backfill to finish
  until [ "$(psql "$url" -tAc "SELECT coalesce(max(indexed_through),0) FROM indexer_checkpoints" 2>/dev/null || echo 0)" -ge "$("$CAST" block-number)" ]; do
    kill -0 "$index_pid" 2>/dev/null || { tail -5 "$work/follow-$label.log" >&2; die "the indexer exited"; }
    sleep 0.2
  done
  for i in $(seq "$LAG_SAMPLES"); do
    local req; req=$("$CAST" keccak "lag-$label-$i-$(date +%s%N)")
    local t_start t_seen
    send "$(c FeeRouter)" "payInference(uint256,bytes32,uint256)" 1 "$req" 1ether
    t_start=$(date +%s%N)
    until [ "$(psql "$url" -tAc "SELECT count(*) FROM inference_payments WHERE request_id = '$req'")" = 1 ]; do :; done
    t_seen=$(date +%s%N)
    lags+=($(( (t_seen - t_start) / 1000000 )))
  done
  kill "$index_pid"; wait "$index_pid" 2>/dev/null || true; index_pid=""
  printf '%s\n' "${lags[@]}" | sort -n > "$work/lag-$label.txt"
}
measure_lag "$URL" http
measure_lag "ws://127.0.0.1:$port" ws
pct() { python3 -c "import sys; v=[int(x) for x in open('$1')]; print(v[min(len(v)-1, int(len(v)*$2))])"; }

echo "events: $written in $blocks blocks; backfill $(printf %.2f "$secs") s = $eps events/s; peak RSS $((rss_kb / 1024)) MiB"
echo "head lag, polling every 100 ms: p50 $(pct "$work/lag-http.txt" 0.5) ms, max $(pct "$work/lag-http.txt" 1) ms"
echo "head lag, newHeads subscription: p50 $(pct "$work/lag-ws.txt" 0.5) ms, max $(pct "$work/lag-ws.txt" 1) ms"
echo "RESULT indexer_backfill_events_per_s $eps events/s"
echo "RESULT indexer_backfill_peak_rss_mib $((rss_kb / 1024)) MiB"
echo "RESULT indexer_head_lag_ms $(pct "$work/lag-http.txt" 0.5) ms"
echo "RESULT indexer_head_lag_ws_ms $(pct "$work/lag-ws.txt" 0.5) ms"
