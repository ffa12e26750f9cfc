#!/usr/bin/env bash
# The project's one test command (the README's, and what .ci/run calls). Run scripts/setup.sh once first.
#
# Contracts: format, build with lints as errors, committed ABIs match the sources, forge unit/fuzz/invariant
# tests, gas snapshot unchanged, line coverage >= 95%, slither clean of medium/high findings, then a real deployment to a fresh anvil (OP-stack
# mode) walked through with cast exactly as the README shows, and a second deploy that must send nothing.
# Rust: fmt, clippy -D warnings, and the workspace tests against real anvil nodes and a real Postgres
# (DATABASE_URL, else the machine's server on 127.0.0.1:5432, else a private throwaway cluster); then the
# README's API walkthrough (scripts/api-demo.sh), the economy demo (scripts/economy-demo.sh: contribute, train,
# pay, settle on serve's schedule, claim, verify) and the official openai clients (scripts/openai-client-check.py, .mjs)
# against a fresh `openledger serve`; and the web UI (scripts/test-ui.sh: its unit tests, then the no-code path
# end to end in headless Chromium on a fresh dev stack).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_toolchain

passed=0
failed=0
tests_passed=0
tests_failed=0
step() {
  local name="$1" t0=$SECONDS; shift
  printf '\n== %s\n' "$name" >&2
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); log "FAILED: $name"; fi
  log "$((SECONDS - t0)) s: $name"
}
summary() {
  printf '\n' >&2
  echo "test.sh steps: $passed passed, $failed failed ($SECONDS s)" >&2
  echo "tests: $tests_passed passed, $tests_failed failed"
  [ "$failed" = 0 ]
}

forge_tests() {
  local out
  out="$(mktemp)"
  "$FORGE" test 2>&1 | grep -vE '^\s*[|╭╰+]' >"$out"
  local rc=${PIPESTATUS[0]}
  grep -E '^\[(PASS|FAIL)|^Suite result|^Ran ' "$out" >&2
  local fails oks
  fails=$(sed -n 's/^Ran .*tests passed, \([0-9]*\) failed.*/\1/p' "$out" | tail -1)
  oks=$(sed -n 's/^Ran .*: \([0-9]*\) tests passed.*/\1/p' "$out" | tail -1)
  tests_passed=$((tests_passed + ${oks:-0}))
  tests_failed=$((tests_failed + ${fails:-0}))
  [ "$rc" = 0 ] && [ "${fails:-1}" = 0 ] || { cat "$out" >&2; return 1; }
}

snapshot_check() {
  local out
  out="$("$FORGE" snapshot --check 2>&1)" && return 0
  echo "$out" | grep -vE '^\s*[|╭╰+]' | grep -iE 'diff|gas|fail' | head -40 >&2
  return 1
}

deploy_and_walkthrough() {
  local port chain=7339 dir pid status=0
  port="$(free_port)"
  dir="$(mktemp -d)"
  "$ANVIL" --port "$port" --chain-id "$chain" --network optimism --silent &
  pid=$!
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null || true" RETURN
  local url="http://127.0.0.1:$port"
  wait_rpc "$url" || { log "anvil did not start"; return 1; }
  scripts/deploy.sh --rpc-url "$url" --out "$dir/$chain.json" >/dev/null || return 1
  jq -e '.chainId == 7339 and (.contracts | length) == 7 and .startBlock >= 1' "$dir/$chain.json" >/dev/null \
    || { log "bad manifest: $(cat "$dir/$chain.json")"; return 1; }
  if scripts/demo.sh --rpc-url "$url" --manifest "$dir/$chain.json" >/dev/null; then
    tests_passed=$((tests_passed + 1))
  else
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # deploying again must notice the suite and send nothing
  local before after
  before="$("$CAST" block-number --rpc-url "$url")"
  scripts/deploy.sh --rpc-url "$url" --out "$dir/$chain.json" >/dev/null 2>&1 || status=1
  after="$("$CAST" block-number --rpc-url "$url")"
  [ "$before" = "$after" ] || { log "second deploy sent transactions ($before -> $after)"; status=1; }
  rm -rf "$dir"
  return $status
}

# scripts/deploy.sh outside a devnet (anvil behind a proxy that names itself geth): devnet keys, local.json,
# configs naming dev accounts or no guardian, and the unedited example are refused, and nothing is sent.
deploy_refuses_outside_devnet() {
  local port proxy_port pid ppid status=0 dir out before
  port="$(free_port)"; proxy_port="$(free_port)"; dir="$(mktemp -d)"
  "$ANVIL" --port "$port" --silent &
  pid=$!
  node scripts/rpc-as-client.js "$proxy_port" "http://127.0.0.1:$port" "Geth/v1.14.11-stable" &
  ppid=$!
  # shellcheck disable=SC2064
  trap "kill $pid $ppid 2>/dev/null || true; rm -rf '$dir'" RETURN
  local url="http://127.0.0.1:$proxy_port"
  wait_rpc "$url" || { log "the proxy did not start"; return 1; }
  before="$("$CAST" block-number --rpc-url "$url")"
  local own_key="0x$(openssl rand -hex 32)"
  jq '.guardian = "0x0000000000000000000000000000000000000000" | del(._example)' \
    contracts/script/config/production.example.json >contracts/script/config/.no-guardian.test.json
  jq '.settler = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8" | del(._example)' \
    contracts/script/config/production.example.json >contracts/script/config/.dev-settler.test.json
  refused() { # expected words, then deploy.sh's arguments (DEPLOYER_PRIVATE_KEY from the caller)
    local want="$1"; shift
    if out="$(scripts/deploy.sh --rpc-url "$url" --out "$dir/m.json" "$@" 2>&1)"; then
      log "deploy.sh outside a devnet was not refused ($*)"; status=1
    elif ! grep -q "$want" <<<"$out"; then
      log "deploy.sh was refused without saying \"$want\": $out"; status=1
    fi
  }
  DEPLOYER_PRIVATE_KEY="" refused "give both --config"
  DEPLOYER_PRIVATE_KEY="$own_key" refused "give both --config"
  DEPLOYER_PRIVATE_KEY="$own_key" refused "local.json gives 90%" --config local.json
  DEPLOYER_PRIVATE_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 \
    refused "public dev key" --config production.example.json
  DEPLOYER_PRIVATE_KEY="$own_key" refused "names no guardian" --config .no-guardian.test.json
  DEPLOYER_PRIVATE_KEY="$own_key" refused "public dev account" --config .dev-settler.test.json
  DEPLOYER_PRIVATE_KEY="$own_key" refused "is an example" --config production.example.json
  rm -f contracts/script/config/.no-guardian.test.json contracts/script/config/.dev-settler.test.json
  [ "$("$CAST" block-number --rpc-url "$url")" = "$before" ] || { log "a refused deploy sent transactions"; status=1; }
  [ ! -e "$dir/m.json" ] || { log "a refused deploy wrote a manifest"; status=1; }
  # a config of one's own and a key of one's own: deployed
  jq 'del(._example)' contracts/script/config/production.example.json >contracts/script/config/.own.test.json
  "$CAST" rpc --rpc-url "http://127.0.0.1:$port" anvil_setBalance \
    "$("$CAST" wallet address --private-key "$own_key")" 0x56bc75e2d63100000 >/dev/null
  DEPLOYER_PRIVATE_KEY="$own_key" scripts/deploy.sh --rpc-url "$url" --out "$dir/m.json" \
    --config .own.test.json >/dev/null 2>&1 || { log "deploy.sh with an own config and key failed"; status=1; }
  rm -f contracts/script/config/.own.test.json
  jq -e '(.contracts | length) == 7' "$dir/m.json" >/dev/null 2>&1 || { log "no manifest after the own deploy"; status=1; }
  # the daemon on that chain: sponsoring strangers' requests with real OPEN needs asking for
  if out="$(timeout 60 "$OPENLEDGER_BIN" serve --rpc-url "$url" --manifest "$dir/m.json" --sponsor-inference \
    --listen 127.0.0.1:0 2>&1)"; then
    log "serve --sponsor-inference outside a devnet was not refused"; status=1
  elif ! grep -q "add --sponsor-on-public-chain" <<<"$out"; then
    log "serve --sponsor-inference outside a devnet failed without saying why: $out"; status=1
  fi
  # ... and settling on a schedule needs a settler key that is not the daemon's own
  settle_refused() { # expected words, then env assignments
    local want="$1"; shift
    if out="$(env "$@" timeout 60 "$OPENLEDGER_BIN" serve --rpc-url "$url" --manifest "$dir/m.json" \
      --settle-every-secs 5 --listen 127.0.0.1:0 2>&1)"; then
      log "serve --settle-every-secs outside a devnet was not refused ($*)"; status=1
    elif ! grep -q "$want" <<<"$out"; then
      log "serve --settle-every-secs was refused without saying \"$want\": $out"; status=1
    fi
  }
  # ... and the web app's dev accounts (the node's unlocked ones) are for devnets only
  if out="$(timeout 60 "$OPENLEDGER_BIN" serve --rpc-url "$url" --manifest "$dir/m.json" --dev-wallet \
    --listen 127.0.0.1:0 2>&1)"; then
    log "serve --dev-wallet outside a devnet was not refused"; status=1
  elif ! grep -q "local devnets (anvil, hardhat) only" <<<"$out"; then
    log "serve --dev-wallet outside a devnet failed without saying why: $out"; status=1
  fi
  settle_refused "needs a settler key of its own" OPENLEDGER_PRIVATE_KEY="$own_key"
  settle_refused "is the daemon's own key" OPENLEDGER_PRIVATE_KEY="$own_key" OPENLEDGER_SETTLER_PRIVATE_KEY="$own_key"
  return $status
}

step "contracts: forge fmt --check" "$FORGE" fmt --check
step "contracts: build, warnings and lints are errors" "$FORGE" build --deny warnings
step "contracts: committed ABIs match the sources" node scripts/abi.js --check
step "contracts: unit, fuzz and invariant tests" forge_tests
step "contracts: gas matches .gas-snapshot (after an intended change: forge snapshot)" snapshot_check
step "contracts: line coverage >= 95%" scripts/coverage.sh 95
step "contracts: slither, no medium or high finding" scripts/slither.sh

# Every test binary runs (--no-fail-fast), so a failure in one crate never hides the others' results; the
# summary names each binary that failed or crashed (a binary that ends without a "test result" line).
# The GPU code, compiled here where no GPU is (see DEVELOPERS.md, "GPUs"): everything behind `cuda`.
cuda_clippy() {
  (cuda_env && cargo clippy --locked -p openledger-model -p openledger-daemon --all-targets \
    --features openledger-model/cuda,openledger-daemon/cuda -- -D warnings)
}

gpu_check_cpu() {
  local out
  out="$(mktemp -d)"
  scripts/gpu-check.sh --cpu "$out" >/dev/null
  local rc=$?
  rm -rf "$out"
  return "$rc"
}

cargo_tests() {
  local out rc
  out="$(mktemp)"
  RUST_BACKTRACE=0 cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out" \
    | grep -E '^test |^test result|^error|^ +(Running|Doc-tests) ' >&2
  rc=${PIPESTATUS[0]}
  local counts
  counts="$(count_cargo_tests <"$out")"
  log "$(sed -n '/^binaries /s/^binaries //p' <<<"$counts")"
  sed -n 's/^failed-binary /  failed: /p' <<<"$counts" >&2
  tests_passed=$((tests_passed + $(sed -n 's/^passed //p' <<<"$counts")))
  tests_failed=$((tests_failed + $(sed -n 's/^failed //p' <<<"$counts")))
  if [ "$rc" != 0 ]; then
    grep -A6 'panicked at' "$out" | head -80 >&2
    # cargo's own list, with the flags that rerun each failed target
    sed -n '/^error: [0-9]* targets\? failed:/,/^[^ ]/p' "$out" >&2
    # a build error or a crash that left no failing test behind still fails the step and the count
    [ "$(sed -n 's/^failed //p' <<<"$counts")" != 0 ] || tests_failed=$((tests_failed + 1))
    return 1
  fi
}

# Reads `cargo test` output; prints "passed N", "failed N" (failed tests, plus one per binary that crashed
# before its summary), "binaries ..." and one "failed-binary NAME" per binary with a failure.
count_cargo_tests() {
  awk '
    function close_binary() {
      if (name == "") return
      if (!seen) { bad[++nbad] = name " (ended without a test result: crashed or killed)"; failed++ }
      else if (this_failed > 0) bad[++nbad] = name " (" this_failed " failed)"
      name = ""
    }
    /^ +(Running|Doc-tests) / {
      close_binary()
      # "Running tests/serve.rs (.../deps/openledger_model-0123abcd)" -> "openledger_model tests/serve.rs"
      nbin++; name = $0; sub(/^ +(Running|Doc-tests) /, "", name); seen = 0; this_failed = 0
      if (match(name, / \(.*\)$/)) {
        bin = substr(name, RSTART + 2, RLENGTH - 3); name = substr(name, 1, RSTART - 1)
        sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin); name = bin " " name
      } else name = name " doc-tests"
      next
    }
    /^test result: / {
      seen = 1
      if (match($0, /[0-9]+ passed/)) passed += substr($0, RSTART, RLENGTH) + 0
      if (match($0, /[0-9]+ failed/)) { f = substr($0, RSTART, RLENGTH) + 0; failed += f; this_failed += f }
    }
    END {
      close_binary()
      printf "passed %d\nfailed %d\n", passed, failed
      printf "binaries cargo test: %d test targets ran (doc-tests included), %d with failures\n", nbin, nbad
      for (i = 1; i <= nbad; i++) print "failed-binary " bad[i]
    }'
}

# The README's API walkthrough (scripts/api-demo.sh: SIWE sign-in, upload, EIP-712 relay, confirmation) against
# a fresh anvil and `openledger serve` on a fresh database.
# Whether a schemathesis run that exited non-zero found nothing about the API: no failure, and every error
# a "Runtime Error" raised inside Hypothesis while drawing a test case (the generator's own flakiness on a
# busy machine, which says nothing of the responses). It is said on stderr, not hidden.
fuzz_generator_only() {
  local summary errors
  summary="$(sed -n '/^=* SUMMARY =*$/,$p' "$1")"
  grep -q '^Failures:' <<<"$summary" && return 1
  errors="$(sed -n '/^Errors:/,/^$/p' <<<"$summary" | grep -E '^ +' || true)"
  [ -n "$errors" ] || return 1
  grep -vqE 'Runtime Error: [0-9]+$' <<<"$errors" && return 1
  grep -q 'hypothesis.errors' "$1" || return 1
  log "schemathesis: no finding about the API; its generator failed inside Hypothesis on: $(tr -s ' ' <<<"$errors")"
  return 0
}

api_walkthrough() {
  local port api_port chain=7340 dir anvil_pid serve_pid db status=0
  port="$(free_port)"; api_port="$(free_port)"; dir="$(mktemp -d)"; db="ol_api_walk_$$"
  "$ANVIL" --port "$port" --chain-id "$chain" --network optimism --silent &
  anvil_pid=$!
  local url="http://127.0.0.1:$port"
  wait_rpc "$url" || { log "anvil did not start"; kill $anvil_pid; return 1; }
  scripts/deploy.sh --rpc-url "$url" --out "$dir/$chain.json" >/dev/null 2>&1 || { kill $anvil_pid; return 1; }
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  OPENLEDGER_PRIVATE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \
    "$OPENLEDGER_BIN" --database-url "${DATABASE_URL%/*}/$db" --log warn serve --rpc-url "$url" \
    --manifest "$dir/$chain.json" --listen "127.0.0.1:$api_port" --poll-interval-ms 100 \
    --settle-every-secs 2 --finality-depth 0 --payment-wait-secs 300 \
    --rate-limit-per-minute 1000000 --rate-limit-burst 100000 \
    --ip-rate-limit-per-minute 1000000 --ip-rate-limit-burst 100000 \
    --quota-concurrent-jobs 0 --quota-upload-bytes-per-day 0 --quota-batch-lines-per-day 0 &
  serve_pid=$!
  local api="http://127.0.0.1:$api_port"
  if ! wait_ready "$api" "$serve_pid"; then
    tests_failed=$((tests_failed + 1))
    stop_child "$serve_pid" || true
    kill "$anvil_pid"; wait "$anvil_pid" 2>/dev/null || true
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$dir"
    return 1
  fi
  if scripts/api-demo.sh --api "$api" --rpc-url "$url" --manifest "$dir/$chain.json" \
    --database-url "${DATABASE_URL%/*}/$db" >/dev/null; then
    tests_passed=$((tests_passed + 1))
  else
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # the whole economy (what `scripts/dev.sh --demo` runs): contributors, training, paid inferences, the
  # settlement schedule, claims, `settle verify`
  if scripts/economy-demo.sh --api "$api" --rpc-url "$url" --manifest "$dir/$chain.json" \
    --database-url "${DATABASE_URL%/*}/$db" >/dev/null; then
    tests_passed=$((tests_passed + 1))
  else
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # the official openai client, unchanged, against the same serve (the base model from scripts/setup.sh)
  local key
  key="$("$OPENLEDGER_BIN" --database-url "${DATABASE_URL%/*}/$db" --log warn keys create \
    --address 0x70997970c51812dc3a010c7d01b50e0d17dc79c8 --label openai-check)"
  if OPENAI_API_KEY="$key" "$ROOT/.tools/openai/bin/python" scripts/openai-client-check.py --base-url "$api/v1" >&2; then
    tests_passed=$((tests_passed + 1))
  else
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # and the official JavaScript client (npm `openai`, pinned in package.json), unchanged
  if OPENAI_API_KEY="$key" node scripts/openai-client-check.mjs --base-url "$api/v1" >&2; then
    tests_passed=$((tests_passed + 1))
  else
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # schemathesis against /openapi.json: every route, every check, bounded in time; zero 5xx, zero answers the
  # document does not describe (rate limits and quotas are lifted for this serve: see above); logout is
  # left out, as it would end the session the run uses, and so is a job's event stream, which lasts as long as
  # the job (daemon/tests/api.rs and flow.rs test both)
  local fuzz_log
  fuzz_log="$dir/schemathesis.log"
  if "$ROOT/.tools/schemathesis/bin/st" --config-file scripts/schemathesis.toml run "$api/openapi.json" --url "$api" \
      --checks all --phases examples,coverage,fuzzing --max-time "${OPENLEDGER_FUZZ_SECS:-150}" --workers 2 --seed 7 \
      --exclude-path /api/auth/logout --exclude-path '/api/jobs/{id}/events' \
      --header "Authorization: Bearer $key" --no-color >"$fuzz_log" 2>&1 || fuzz_generator_only "$fuzz_log"; then
    tests_passed=$((tests_passed + 1))
    grep -E "^(Test cases|API Operations|Seed|Test Phases)|passed" "$fuzz_log" | tail -4 >&2 || true
  else
    log "schemathesis found failures:"
    sed -n '/^=* FAILURES =*$/,/^=* SUMMARY =*$/p; /^=* ERRORS =*$/,/^=* WARNINGS =*$/p' "$fuzz_log" | head -250 >&2
    tail -30 "$fuzz_log" >&2
    tests_failed=$((tests_failed + 1)); status=1
  fi
  # the README's OpenAI example exactly as written, but for this daemon's address and database, with the
  # PATH the README sets up (.tools/bin: the `openledger` setup.sh writes there)
  local example
  example="$(sed -n '/^<!-- openai-example:start -->$/,/^<!-- openai-example:end -->$/p' README.md | sed '1,2d;$d' | sed '$d')"
  if [ -n "$example" ] && (PATH="$ROOT/.tools/bin:$PATH" DATABASE_URL="${DATABASE_URL%/*}/$db" \
      bash -euo pipefail -c "${example//127.0.0.1:8080/127.0.0.1:$api_port}" | tail -2 | grep -q .) >&2; then
    tests_passed=$((tests_passed + 1))
  else
    log "the README's OpenAI example failed"; tests_failed=$((tests_failed + 1)); status=1
  fi
  stop_child "$serve_pid" || { log "serve did not exit cleanly on SIGTERM"; status=1; }
  kill "$anvil_pid"; wait "$anvil_pid" 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
  return $status
}

# The web UI: node's test runner for the front-end logic, then ui/e2e/flow.mjs in Chromium.
ui_tests() {
  local out rc
  out="$(mktemp)"
  scripts/test-ui.sh 2>&1 | tee "$out" | grep -E '^# (pass|fail)|\[ui-e2e\] (ok|FAILED)|^RESULT' >&2
  rc=${PIPESTATUS[0]}
  local unit_ok unit_bad e2e_ok
  unit_ok="$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$out" | head -1)"
  unit_bad="$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$out" | head -1)"
  e2e_ok="$(grep -c '^\[ui-e2e\] ok:' "$out" || true)"
  tests_passed=$((tests_passed + ${unit_ok:-0} + ${e2e_ok:-0}))
  tests_failed=$((tests_failed + ${unit_bad:-0}))
  [ "$rc" = 0 ] || { tail -40 "$out" >&2; tests_failed=$((tests_failed + 1)); return 1; }
}

ensure_test_postgres
trap stop_test_postgres EXIT
step "rust: cargo fmt --check" cargo fmt --all -- --check
step "rust: clippy, warnings are errors" cargo clippy --workspace --all-targets --locked -- -D warnings
step "rust: the cuda build compiles (candle's CUDA kernels for sm_90, nvcc 13.0 from PyPI), clippy clean" cuda_clippy
step "rust: workspace tests (real anvil, real Postgres)" cargo_tests
step "GPU check in CPU mode (scripts/gpu-check.sh --cpu): the GPU's serving, training and attribution paths against transformers" gpu_check_cpu
step "deploy to a fresh anvil + cast walkthrough + idempotent redeploy" deploy_and_walkthrough
step "outside a devnet: deploy refuses devnet keys and configs (sends nothing), serve refuses unasked sponsorship and settling from its own key" deploy_refuses_outside_devnet
step "daemon: the README's API walkthrough and economy demo (curl + cast) on a fresh stack" api_walkthrough
step "web UI: front-end unit tests, then sign-in to claim end to end in headless Chromium" ui_tests
summary
