#!/usr/bin/env bash
# Load run: a release `openledger serve` (serving the base model) on loopback, over a fresh anvil deployment and a
# Postgres cluster of the run's own, under everything at once for a bounded time:
#   - reads: wrk, 256 connections on a public page (a Datanet's contributions, 20 rows from the index);
#   - 32 concurrent chat completions on the base model (max_tokens 16);
#   - uploads (4 clients, each a new text) and job submissions (4 clients, datanet_snapshot), signed in.
# Phase "steady": zero 5xx is required. Phase "restart": the same, with the Postgres cluster restarted
# (pg_ctl restart -m fast) in the middle: answers while it is away must be 503 with Retry-After (never a 500, never
# a dropped connection), and the daemon must serve again afterwards. Prints p50/p99 and throughput per kind.
#
#   scripts/bench-load.sh [--duration S]        (each phase lasts S seconds; default 30)
#
# The load generators (wrk, scripts/bench_load.py) share the machine's cores with the daemon and the node. Rate
# limits and quotas are lifted for the run: it measures capacity, not the limits (daemon/tests/api.rs tests those).
# Ends with RESULT lines.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain
command -v wrk >/dev/null || die "wrk is missing: run scripts/setup.sh (Debian package wrk)"

DURATION=30
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

BIN="$(release_openledger)"

work="$(mktemp -d)"
chmod 755 "$work"
port="$(free_port)"
api_port="$(free_port)"
pg_port="$(free_port)"
"$ANVIL" --port "$port" --chain-id 7337 --network optimism --silent &
anvil_pid=$!
serve_pid=""
pg=()
[ "$(id -u)" = 0 ] && pg=(runuser -u postgres --)
PG_BIN="$(pg_bin_dir)"
[ -x "$PG_BIN/initdb" ] || die "no Postgres server binaries: run scripts/setup.sh"
pg_ctl() { "${pg[@]}" "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w "$@" >/dev/null; }
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  kill "$anvil_pid" 2>/dev/null || true
  wait "$anvil_pid" 2>/dev/null || true
  pg_ctl -m immediate stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# the run's own Postgres cluster, so that it can be restarted
mkdir -p "$work/pg" && [ "$(id -u)" = 0 ] && chown postgres "$work/pg" "$work"
"${pg[@]}" "$PG_BIN/initdb" -D "$work/pg" -U openledger --auth=trust -N >/dev/null
pg_ctl -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200" start
DB_URL="postgres://openledger@127.0.0.1:$pg_port/postgres"

url="http://127.0.0.1:$port"
wait_rpc "$url" || die "anvil did not start"
scripts/deploy.sh --rpc-url "$url" --out "$work/m.json" >/dev/null 2>&1 || die "deploy failed"
bench_datanet "$url" "$work/m.json" 20 load

"$BIN" --database-url "$DB_URL" --log warn,sqlx::postgres::notice=error serve --rpc-url "$url" --manifest "$work/m.json" \
  --listen "127.0.0.1:$api_port" --workers 0 \
  --rate-limit-per-minute 100000000 --rate-limit-burst 100000000 \
  --ip-rate-limit-per-minute 100000000 --ip-rate-limit-burst 100000000 \
  --quota-concurrent-jobs 0 --quota-upload-bytes-per-day 0 2>"$work/serve.log" &
serve_pid=$!
API="http://127.0.0.1:$api_port"
wait_ready "$API" "$serve_pid" || { tail -20 "$work/serve.log" >&2; die "serve did not become ready"; }
for _ in $(seq 100); do
  [ "$(curl -sf "$API/api/datanets/1" | jq -r .contribution_count)" = 20 ] && break
  sleep 0.2
done
MODEL="$(curl -sf "$API/v1/models" | jq -r '.data[0].id')"
[ -n "$MODEL" ] && [ "$MODEL" != null ] || die "serve lists no model (scripts/setup.sh installs the base model)"
# the Datanet's owner submits snapshots; another address uploads
JOB_KEY="$("$BIN" --database-url "$DB_URL" --log warn --json keys create \
  --address 0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266 --label load-jobs | jq -r .key)"
UPLOAD_KEY="$("$BIN" --database-url "$DB_URL" --log warn --json keys create \
  --address 0x70997970c51812dc3a010c7d01b50e0d17dc79c8 --label load-uploads | jq -r .key)"
READ_PATH="/api/datanets/1/contributions?limit=20"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API$READ_PATH")" = 200 ] || die "read endpoint fails"

cat >"$work/count.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) s5xx = 0; s503 = 0; s429 = 0 end
function response(status, headers, body)
  if status >= 500 then s5xx = s5xx + 1 end
  if status == 503 then s503 = s503 + 1 end
  if status == 429 then s429 = s429 + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("s5xx"); b = b + t:get("s503"); c = c + t:get("s429") end
  io.write(string.format("STATUS %d %d %d\n", a, b, c))
end
LUA

declare -A R
# phase NAME [restart]: everything at once for DURATION seconds; with "restart", Postgres restarts halfway
phase() {
  local name="$1" restart="${2:-}"
  wrk -t2 -c256 -d"${DURATION}s" --latency -s "$work/count.lua" "$API$READ_PATH" >"$work/wrk.$name" 2>&1 &
  local wrk_pid=$!
  .tools/openai/bin/python scripts/bench_load.py --api "$API" --seconds "$DURATION" --chat 32 --uploads 4 \
    --jobs 4 --upload-key "$UPLOAD_KEY" --job-key "$JOB_KEY" --model "$MODEL" >"$work/mix.$name" &
  local mix_pid=$!
  if [ -n "$restart" ]; then
    sleep "$((DURATION / 2))"
    log "restarting Postgres (pg_ctl restart -m fast)"
    local t0=$SECONDS
    pg_ctl -m fast restart -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200"
    log "Postgres back after $((SECONDS - t0)) s"
  fi
  wait "$wrk_pid" "$mix_pid"
  local out mix
  out="$(cat "$work/wrk.$name")"
  mix="$(cat "$work/mix.$name")"
  R["${name}_read_rps"]="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")"
  R["${name}_read_p50"]="$(wrk_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
  R["${name}_read_p99"]="$(wrk_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  read -r _ r5xx r503 r429 <<<"$(grep '^STATUS' <<<"$out")"
  R["${name}_read_5xx"]="$r5xx"; R["${name}_read_503"]="$r503"
  local socket
  socket="$(awk '/Socket errors/ {print $0}' <<<"$out")"
  printf '%-8s reads  %8s req/s  p50 %8s ms  p99 %8s ms  5xx %s (503 %s)  429 %s %s\n' "$name" \
    "${R[${name}_read_rps]}" "${R[${name}_read_p50]}" "${R[${name}_read_p99]}" "$r5xx" "$r503" "$r429" "$socket" >&2
  for kind in chat upload job; do
    local k
    k="$(jq -c ".$kind" <<<"$mix")"
    R["${name}_${kind}_rps"]="$(jq -r .rps <<<"$k")"
    R["${name}_${kind}_p50"]="$(jq -r .p50_ms <<<"$k")"
    R["${name}_${kind}_p99"]="$(jq -r .p99_ms <<<"$k")"
    R["${name}_${kind}_5xx"]="$(jq '[.statuses | to_entries[] | select(.key | startswith("5")) | .value] | add // 0' <<<"$k")"
    R["${name}_${kind}_500"]="$(jq '[.statuses | to_entries[] | select(.key | startswith("5")) | select(.key != "503") | .value] | add // 0' <<<"$k")"
    R["${name}_${kind}_bare"]="$(jq '.server_errors_without_retry_after' <<<"$k")"
    R["${name}_${kind}_conn"]="$(jq '[.connection_errors[]] | add // 0' <<<"$k")"
    printf '%-8s %-6s %8s req/s  p50 %8s ms  p99 %8s ms  statuses %s  connection errors %s\n' "$name" "$kind" \
      "${R[${name}_${kind}_rps]}" "${R[${name}_${kind}_p50]}" "${R[${name}_${kind}_p99]}" \
      "$(jq -c .statuses <<<"$k")" "$(jq -c .connection_errors <<<"$k")" >&2
  done
}

log "load: ${DURATION} s per phase on $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')) shared by wrk, the clients, the daemon and the node"
curl -s -o /dev/null "$API$READ_PATH"
phase steady
phase restart restart
wait_ready "$API" "$serve_pid" 60 || die "serve did not come back after the Postgres restart"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API$READ_PATH")" = 200 ] || die "reads fail after the restart"

fail=0
steady_5xx=$((R[steady_read_5xx] + R[steady_chat_5xx] + R[steady_upload_5xx] + R[steady_job_5xx]))
restart_500=$((R[restart_read_5xx] - R[restart_read_503] + R[restart_chat_500] + R[restart_upload_500] + R[restart_job_500]))
restart_503=$((R[restart_read_503] + R[restart_chat_5xx] - R[restart_chat_500] + R[restart_upload_5xx] - R[restart_upload_500] + R[restart_job_5xx] - R[restart_job_500]))
bare=$((R[restart_chat_bare] + R[restart_upload_bare] + R[restart_job_bare]))
conn=$((R[steady_chat_conn] + R[steady_upload_conn] + R[steady_job_conn] + R[restart_chat_conn] + R[restart_upload_conn] + R[restart_job_conn]))
[ "$steady_5xx" = 0 ] || { log "FAIL: $steady_5xx answers were 5xx under steady load"; fail=1; }
[ "$restart_500" = 0 ] || { log "FAIL: $restart_500 answers during the Postgres restart were 5xx other than 503"; fail=1; }
[ "$bare" = 0 ] || { log "FAIL: $bare 503s during the restart came without Retry-After"; fail=1; }
[ "$conn" = 0 ] || { log "FAIL: $conn connections failed (refused or dropped)"; fail=1; }

for k in read chat upload job; do
  echo "RESULT load_${k}_rps ${R[steady_${k}_rps]} req/s"
  echo "RESULT load_${k}_p99_ms ${R[steady_${k}_p99]} ms"
done
echo "RESULT load_5xx $steady_5xx count"
echo "RESULT load_restart_503 $restart_503 count"
echo "RESULT load_restart_other_5xx $restart_500 count"
for k in read chat upload job; do
  echo "RESULT load_restart_${k}_rps ${R[restart_${k}_rps]} req/s"
done
exit "$fail"
