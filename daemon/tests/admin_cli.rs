//! The admin CLI through the real binary: keys, jobs, status, and `serve` start-up, readiness and
//! graceful shutdown against anvil and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use alloy::primitives::Address;
use common::{STALL, url_of};
use openledger_daemon::jobs::queue::{NewJob, Queue};
use serde_json::{Value, json};
use sqlx::PgPool;

fn openledger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_openledger"))
}

fn run(db: &str, args: &[&str]) -> Output {
    openledger()
        .args(["--database-url", db])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn keys_create_list_revoke(pool: PgPool) {
    let db = url_of(&pool);
    let addr = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
    let created = json_of(&run(
        &db,
        &[
            "--json",
            "keys",
            "create",
            "--address",
            addr,
            "--label",
            "ci",
            "--admin",
        ],
    ));
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("olk_"));
    let caller = openledger_daemon::auth::authenticate(&pool, key)
        .await
        .unwrap();
    assert!(caller.admin);
    assert_eq!(format!("{:#x}", caller.address), addr);
    // the secret is stored only hashed
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auth_tokens WHERE token_hash = $1 OR label = $1")
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    let listed = json_of(&run(&db, &["--json", "keys", "list"]));
    assert_eq!(listed[0]["label"], "ci");
    assert!(listed[0].get("key").is_none() && !listed.to_string().contains(key));
    let id = created["id"].as_i64().unwrap().to_string();
    assert!(run(&db, &["keys", "revoke", &id]).status.success());
    assert!(
        openledger_daemon::auth::authenticate(&pool, key)
            .await
            .is_err()
    );
    let again = run(&db, &["keys", "revoke", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live key"));
    let bad = run(&db, &["keys", "create", "--address", "0x12"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--address"));
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn jobs_and_status(pool: PgPool) {
    let db = url_of(&pool);
    let q = Queue::new(pool.clone());
    let job = q
        .submit(&NewJob {
            kind: "datanet_snapshot".into(),
            owner: Address::repeat_byte(1),
            params: json!({"datanet_id": "1"}),
            priority: 0,
            max_attempts: 3,
        })
        .await
        .unwrap();
    let id = job.id.to_string();
    let list = json_of(&run(&db, &["--json", "jobs", "list", "--state", "queued"]));
    assert_eq!(list[0]["id"], job.id);
    let show = json_of(&run(&db, &["--json", "jobs", "show", &id]));
    assert_eq!(show["job"]["kind"], "datanet_snapshot");
    assert!(
        show["logs"][0]["message"]
            .as_str()
            .unwrap()
            .contains("queued by")
    );
    assert!(run(&db, &["jobs", "cancel", &id]).status.success());
    assert_eq!(q.get(job.id).await.unwrap().unwrap().state, "cancelled");
    let again = run(&db, &["jobs", "cancel", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    assert!(run(&db, &["jobs", "retry", &id]).status.success());
    assert_eq!(q.get(job.id).await.unwrap().unwrap().state, "queued");
    let missing = run(&db, &["jobs", "show", "999999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job 999999"));
    assert!(
        !run(&db, &["jobs", "list", "--state", "sleeping"])
            .status
            .success()
    );

    let st = json_of(&run(
        &db,
        &["--json", "status", "--rpc-url", "http://127.0.0.1:1"],
    ));
    assert_eq!(st["head"], Value::Null);
    assert_eq!(st["jobs"]["queued"], 1);
    assert_eq!(st["workers"], json!([]));
}

/// Beside a running `scripts/dev.sh`, admin commands follow its stack from any directory (the file it writes
/// names its database, node, manifest and API) instead of starting an empty database of their own; what the
/// command line names still wins, and the file of a stack whose daemon is gone is ignored.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn admin_commands_follow_the_running_dev_stack(pool: PgPool) {
    let db = url_of(&pool);
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let manifest = dir.path().join("manifest.json");
    std::fs::write(&manifest, "{ not a manifest").unwrap();
    let stack = dir.path().join("dev-stack.env");
    let write_stack = |pid: u32| {
        std::fs::write(
            &stack,
            format!(
                "# written by scripts/dev.sh\nexport DATABASE_URL='{db}'\nexport OPENLEDGER_RPC_URL='http://127.0.0.1:1'\n\
                 export OPENLEDGER_MANIFEST='{}'\nexport OPENLEDGER_URL='http://127.0.0.1:2'\nexport OPENLEDGER_DEV_PID={pid}\n",
                manifest.display()
            ),
        )
        .unwrap();
    };
    let cli = |args: &[&str]| {
        openledger()
            .args(args)
            .current_dir(&elsewhere)
            .env("OPENLEDGER_DEV_STACK", &stack)
            .env("HOME", dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("OPENLEDGER_DATA_DIR")
            .env_remove("OPENLEDGER_RPC_URL")
            .env_remove("OPENLEDGER_MANIFEST")
            .env_remove("OPENLEDGER_URL")
            .env_remove("XDG_DATA_HOME")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // this test process stands in for the stack's daemon
    write_stack(std::process::id());
    let created = json_of(&cli(&[
        "--json",
        "keys",
        "create",
        "--address",
        "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
        "--label",
        "from-elsewhere",
    ]));
    let label: String = sqlx::query_scalar("SELECT label FROM auth_tokens WHERE id = $1")
        .bind(created["id"].as_i64().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(label, "from-elsewhere");
    let st = json_of(&cli(&["--json", "status"]));
    assert_eq!(st["rpc_url"], "http://127.0.0.1:1");
    // the stack's manifest, by its absolute path, from a directory without deployments/
    let out = cli(&["settle", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} is not valid", manifest.display())),
        "{err}"
    );
    // the stack's API
    let out = cli(&["infer", "--model", "m", "hi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon at http://127.0.0.1:2"));
    // named options win
    let st = json_of(&cli(&[
        "--json",
        "status",
        "--rpc-url",
        "http://127.0.0.1:3",
    ]));
    assert_eq!(st["rpc_url"], "http://127.0.0.1:3");
    // a stack whose daemon is gone is not followed (pid_max is at most 2^22)
    write_stack(u32::MAX - 1);
    let out = cli(&["infer", "--url", "http://127.0.0.1:4", "--model", "m", "hi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon at http://127.0.0.1:4"));
    let out = cli(&["--json", "status", "--database-url", &db]);
    assert_eq!(json_of(&out)["rpc_url"], "http://127.0.0.1:8545");
}

/// Waits until the `serve` on `port` answers `/readyz` (fails if it exits first).
async fn wait_ready(port: u16, child: &mut KillOnDrop) {
    let deadline = tokio::time::Instant::now() + STALL;
    while !matches!(http_get(port, "/readyz"), Some((200, _))) {
        if let Some(exit) = child.0.try_wait().unwrap() {
            panic!("serve exited before it was ready: {exit}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bare HTTP/1.0 GET (the test needs no HTTP client crate for this).
/// A child process killed if the test fails before it exits (a panicking test would otherwise leave a
/// server running, holding its test database).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    // a stall detector, not a measure of speed
    s.set_read_timeout(Some(STALL)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn serve_starts_indexes_and_shuts_down_cleanly(pool: PgPool) {
    let chain = common::TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, serde_json::to_string(&chain.deployment).unwrap()).unwrap();
    let port = common::free_port();
    // no CLI argument takes a key
    let refused = openledger()
        .args(["serve", "--private-key", common::KEYS[1]])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let mut child = openledger()
        .args([
            "--database-url",
            &url_of(&pool),
            "serve",
            "--rpc-url",
            &chain.url,
            "--manifest",
        ])
        .arg(&manifest)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll-interval-ms",
            "50",
        ])
        .env("OPENLEDGER_PRIVATE_KEY", common::KEYS[1])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // read stderr as it comes: debug logs fill a pipe's 64 KB within seconds, and a full pipe blocks the
    // server's logging threads (it then stops answering)
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut err = String::new();
        stderr.read_to_string(&mut err).map(|_| err)
    });
    let mut child = KillOnDrop(child);
    wait_ready(port, &mut child).await;
    let deadline = tokio::time::Instant::now() + STALL;
    // ready allows a small lag: wait until the indexer's first pass reaches the deployment
    let st = loop {
        let (code, body) = http_get(port, "/api/status").unwrap();
        assert_eq!(code, 200);
        let st: Value = serde_json::from_str(&body).unwrap();
        if st["indexed_through"].as_u64().unwrap_or(0) >= chain.deployment.start_block {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never indexed the deployment: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["chain_id"], chain.deployment.chain_id);
    assert_eq!(
        st["relayer"],
        format!("{:#x}", common::TestChain::address_of(1))
    );
    assert!(st["indexed_through"].as_u64().unwrap() >= chain.deployment.start_block);
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 1);
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("openledger_indexer_lag_blocks"),
        "{metrics}"
    );
    // SIGTERM: exits 0, deregisters
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait().unwrap();
        (s, logs.join().unwrap().unwrap())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
    assert!(
        !status.1.contains(&common::KEYS[1][2..]),
        "the key appeared in the logs"
    );
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 0);
}

#[tokio::test]
async fn deploy_wraps_the_deployment_and_checks_the_manifest() {
    let chain = common::TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fresh.json");
    let root = common::repo_root();
    let o = openledger()
        .args(["--json", "deploy", "--rpc-url", &chain.url, "--out"])
        .arg(&out)
        .arg("--repo")
        .arg(&root)
        .output()
        .unwrap();
    let v = json_of(&o);
    assert_eq!(v["chain_id"], chain.deployment.chain_id);
    assert_eq!(v["contracts"].as_object().unwrap().len(), 7);
    let written = openledger_chain::Deployment::load(&out).unwrap();
    assert_eq!(
        format!(
            "{:#x}",
            written
                .address(openledger_chain::ContractKind::Registry)
                .unwrap()
        ),
        v["contracts"]["Registry"]
    );
    // a second run finds the suite on chain and sends nothing
    let head = chain.head().await;
    let again = openledger()
        .args(["deploy", "--rpc-url", &chain.url, "--out"])
        .arg(&out)
        .arg("--repo")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(chain.head().await, head);
    // no node: a clear error, non-zero exit
    let bad = openledger()
        .args(["deploy", "--rpc-url", "http://127.0.0.1:1", "--repo"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no JSON-RPC node"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The base model `scripts/setup.sh` installs; the test that needs it fails when it is missing.
fn smollm_path() -> std::path::PathBuf {
    let p = std::env::var_os("OPENLEDGER_BASE_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/openledger/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} is absent: run scripts/setup.sh to fetch it",
        p.display()
    );
    p
}

/// `openledger serve` on `db` and `chain`, with `extra` options, once it answers `/readyz`.
async fn start_serve(
    db: &str,
    chain: &common::TestChain,
    manifest: &std::path::Path,
    extra: &[&str],
) -> (KillOnDrop, u16) {
    let port = common::free_port();
    let child = openledger()
        .args([
            "--database-url",
            db,
            "serve",
            "--rpc-url",
            &chain.url,
            "--manifest",
        ])
        .arg(manifest)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    wait_ready(port, &mut child).await;
    (child, port)
}

/// `kill -9` in the middle of an interactive answer: the row does not stay `running` forever. Its lease runs
/// out and a live `serve` (here a second one, serving no model) fails it, which frees its payment for a
/// retry and refunds a credit charge; the process that renews its lease keeps its own rows.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn an_answer_cut_by_kill_9_is_failed_once_its_lease_runs_out(pool: PgPool) {
    let chain = common::TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, serde_json::to_string(&chain.deployment).unwrap()).unwrap();
    let db = url_of(&pool);
    let model = smollm_path();
    let model = model.to_str().unwrap();
    let (mut first, port) = start_serve(
        &db,
        &chain,
        &manifest,
        &["--serve-model", model, "--inference-lease-secs", "2"],
    )
    .await;
    // a long streamed answer: read until its first token has arrived (the row is running), then kill
    let body = serde_json::to_string(&json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
        "max_tokens": 1500, "temperature": 0, "stream": true
    }))
    .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(STALL)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended before its first token: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (id, status, owner): (String, String, Option<String>) =
        sqlx::query_as("SELECT id, status, lease_owner FROM inferences")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "running", "the answer was cut mid-stream");
    assert!(owner.is_some_and(|o| o.starts_with("pid")));
    // nobody renews it now: a live serve fails it once the lease has run out
    let (second, _) = start_serve(
        &db,
        &chain,
        &manifest,
        &["--no-inference", "--inference-lease-secs", "2"],
    )
    .await;
    let error = common::daemon::until("the cut inference failed by the live serve", || async {
        let (st, err): (String, Option<String>) =
            sqlx::query_as("SELECT status, error FROM inferences WHERE id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        (st == "failed").then_some(err)
    })
    .await;
    assert!(
        error
            .unwrap_or_default()
            .contains("stopped before the answer was complete")
    );
    // (the rest looks at the reaper alone: no serve runs it meanwhile)
    drop(second);
    // a credit charge of a cut answer comes back when its row is failed
    use openledger_daemon::inference::credits;
    let payer = Address::repeat_byte(0x42);
    credits::grant(&pool, payer, alloy::primitives::U256::from(1000), None)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO inferences (id, model, kind, base_model_hash, payment_mode, prompt_tokens, max_tokens,
                                 lease_owner, lease_expires_at)
         VALUES ('inf-cut', 'm', 'chat', 'h', 'free', 1, 1, 'pid1-gone', now() - interval '1 second')",
    )
    .execute(&pool)
    .await
    .unwrap();
    credits::charge(&pool, payer, alloy::primitives::U256::from(300), "inf-cut")
        .await
        .unwrap();
    assert_eq!(
        credits::balance(&pool, payer).await.unwrap(),
        alloy::primitives::U256::from(700)
    );
    assert_eq!(
        openledger_daemon::inference::records::reap_expired(&pool)
            .await
            .unwrap(),
        vec!["inf-cut".to_string()]
    );
    assert_eq!(
        credits::balance(&pool, payer).await.unwrap(),
        alloy::primitives::U256::from(1000)
    );
    // a row whose lease is renewed is not touched: a live process's answer in flight, seen by the reaper
    sqlx::query(
        "INSERT INTO inferences (id, model, kind, base_model_hash, payment_mode, prompt_tokens, max_tokens,
                                 lease_owner, lease_expires_at)
         VALUES ('inf-live', 'm', 'chat', 'h', 'free', 1, 1, 'pid1-alive', now() + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        openledger_daemon::inference::records::reap_expired(&pool)
            .await
            .unwrap()
            .is_empty()
    );
    let st: String = sqlx::query_scalar("SELECT status FROM inferences WHERE id = 'inf-live'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(st, "running");
}
