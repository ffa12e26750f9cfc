#!/usr/bin/env bash
# API benchmark: wrk against a release `openledger serve` on loopback, over a fresh anvil deployment and a
# fresh database. Measures a public read (a Datanet's contributions page, 20 rows from the index) and job
# submission (authenticated POST /api/jobs: parse, validate, authorize against the index, insert + log row),
# each at 64 and 256 connections.
#
#   scripts/bench-api.sh [--duration S] [--contributions N]
#
# wrk and the daemon share the machine's cores. The daemon runs with --workers 0 (submitted jobs are only
# queued) and a per-address rate limit high enough not to throttle the single benchmark key.
# Ends with RESULT lines; api_read_* are the headline figures (64 connections).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain
command -v wrk >/dev/null || die "wrk is missing: run scripts/setup.sh (Debian package wrk)"

DURATION=15
CONTRIBUTIONS=50
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="${2:?}"; shift 2 ;;
    --contributions) CONTRIBUTIONS="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

BIN="$(release_openledger)"

work="$(mktemp -d)"
port="$(free_port)"
api_port="$(free_port)"
"$ANVIL" --port "$port" --chain-id 7336 --network optimism --silent &
anvil_pid=$!
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  kill "$anvil_pid" 2>/dev/null || true
  wait "$anvil_pid" 2>/dev/null || true
  [ -n "${BENCH_DB:-}" ] && psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1
  stop_test_postgres
  rm -rf "$work"
}
trap cleanup EXIT
url="http://127.0.0.1:$port"
wait_rpc "$url" || die "anvil did not start"
scripts/deploy.sh --rpc-url "$url" --out "$work/m.json" >/dev/null 2>&1 || die "deploy failed"

# a fresh database on the test server
ensure_test_postgres
ADMIN_URL="$DATABASE_URL"
BENCH_DB="ol_bench_api_$$"
psql "$ADMIN_URL" -qc "CREATE DATABASE $BENCH_DB" >/dev/null
DB_URL="${ADMIN_URL%/*}/$BENCH_DB"

log "seeding a Datanet with $CONTRIBUTIONS contributions"
bench_datanet "$url" "$work/m.json" "$CONTRIBUTIONS" bench

"$BIN" --database-url "$DB_URL" --log warn,sqlx::postgres::notice=error serve --rpc-url "$url" --manifest "$work/m.json" \
  --listen "127.0.0.1:$api_port" --workers 0 --rate-limit-per-minute 100000000 --rate-limit-burst 100000000 \
  --ip-rate-limit-per-minute 100000000 --ip-rate-limit-burst 100000000 --quota-concurrent-jobs 0 &
serve_pid=$!
API="http://127.0.0.1:$api_port"
for _ in $(seq 600); do
  curl -sf "$API/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$API/readyz" >/dev/null || die "serve did not become ready"
for _ in $(seq 100); do
  [ "$(curl -sf "$API/api/datanets/1" | jq -r .contribution_count)" = "$CONTRIBUTIONS" ] && break
  sleep 0.2
done
KEY="$("$BIN" --database-url "$DB_URL" --log warn --json keys create \
  --address 0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266 --label bench | jq -r .key)"

cat >"$work/submit.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"kind":"datanet_snapshot","params":{"datanet_id":"1"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

READ_PATH="/api/datanets/1/contributions?limit=20"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API$READ_PATH")" = 200 ] || die "read endpoint fails"

declare -A R
run_wrk() { # name connections extra-args...
  local name="$1" conns="$2"; shift 2
  local out
  out="$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency "$@" 2>&1)"
  local rps p50 p99 non2xx errors
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  p50="$(wrk_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
  p99="$(wrk_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
  errors="$(awk '/Socket errors/ {print $0}' <<<"$out")"
  printf '%-8s %5s conns  %10.0f req/s  p50 %8s ms  p99 %8s ms  non-2xx %s %s\n' \
    "$name" "$conns" "$rps" "$p50" "$p99" "${non2xx:-0}" "$errors" >&2
  R["${name}_${conns}_rps"]="$rps"
  R["${name}_${conns}_p50"]="$p50"
  R["${name}_${conns}_p99"]="$p99"
}

log "wrk: ${DURATION}s per run, 2 threads, on $(nproc) cores shared with the daemon"
curl -s -o /dev/null "$API$READ_PATH" # warm
for c in 64 256; do
  run_wrk read "$c" "$API$READ_PATH"
done
for c in 64 256; do
  run_wrk submit "$c" -s "$work/submit.lua" "$API/api/jobs"
done
queued="$(psql "$DB_URL" -tAc "SELECT count(*) FROM jobs")"
log "jobs queued by the submission runs: $queued"

echo "RESULT api_read_rps ${R[read_64_rps]} req/s"
echo "RESULT api_read_p99_ms ${R[read_64_p99]} ms"
echo "RESULT api_read_p50_ms ${R[read_64_p50]} ms"
echo "RESULT api_read_rps_256 ${R[read_256_rps]} req/s"
echo "RESULT api_read_p99_ms_256 ${R[read_256_p99]} ms"
echo "RESULT api_submit_rps ${R[submit_64_rps]} req/s"
echo "RESULT api_submit_p99_ms ${R[submit_64_p99]} ms"
echo "RESULT api_submit_rps_256 ${R[submit_256_rps]} req/s"
echo "RESULT api_submit_p99_ms_256 ${R[submit_256_p99]} ms"
