//! The `openledger` binary on bad input: a clear message on stderr and a non-zero exit, nothing half-done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn openledger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_openledger"))
}

const MANIFEST: &str = r#"{
  "chainId": 7331, "deployer": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "config": "local.json", "startBlock": 1,
  "contracts": {
    "TimelockController": {"address": "0x5fbdb2315678afecb367f032d93f642f64180aa3", "block": 1, "txHash": "0xcf6acda5663de5fdc348cde2c1e3082ffa01e8b45ac98c0e65f07a5ac8ef18da"},
    "OpenToken": {"address": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512", "block": 2, "txHash": "0xb473838acea28ced0d5f3e7b352549afadd1c5212cce5190d496e9b8097f339e"},
    "OpenGovernor": {"address": "0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0", "block": 3, "txHash": "0xeffb427bb6c6c53df4a6cdc61a8af5192c867853430d76e3fe620128c10bc53d"},
    "Registry": {"address": "0xcf7ed3acca5a467e9e704c703e8d87f634fb0fc9", "block": 4, "txHash": "0x8bda5cbe9ec779f282c4cd9de166fdf69b01cfd1cd694d9675f7ae5fa5fd9a2f"},
    "RewardDistributor": {"address": "0xdc64a140aa3e981100a9beca4e685f962f0cf6c9", "block": 5, "txHash": "0xa5940537b39868df6d74afbaedb7035008bb85b62a485e5f057da9d1c12e50a1"},
    "FeeRouter": {"address": "0x5fc8d32690cc91d4c39d9d3abcbd16989f875707", "block": 6, "txHash": "0x8f8a39cbe3b9e80243737048f9685e4c74b042d72799248f289159e8658e6799"},
    "Staking": {"address": "0x0165878a594ca255338adfa4d48449f69242eb8f", "block": 7, "txHash": "0xd8e84094f6426d18952316e1b32fd06b893377fa4fcf44fe78bc0609b6654f42"}
  },
  "roles": {"admin": "0x5fbdb2315678afecb367f032d93f642f64180aa3", "treasury": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
    "governor": "0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0", "settlers": [], "revokers": [], "slashers": []}
}"#;

#[test]
fn a_missing_or_broken_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = openledger()
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "index",
            "--manifest",
        ])
        .arg(dir.path().join("absent.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read deployment manifest"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is said once: {err}"
    );

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let out = openledger()
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "index",
            "--manifest",
        ])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not valid"));
}

#[test]
fn a_node_that_never_answers_is_reported_after_the_startup_timeout() {
    let Ok(db) = std::env::var("DATABASE_URL") else {
        panic!("DATABASE_URL must point at a Postgres server (scripts/test.sh sets it)");
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, MANIFEST).unwrap();
    // a socket that accepts connections (into its backlog) and never answers, held for the whole test
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = openledger()
        .args([
            "--database-url",
            &db,
            "index",
            "--rpc-url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .arg("--manifest")
        .arg(&manifest)
        .args(["--startup-timeout-secs", "1", "--rpc-timeout-secs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no JSON-RPC node answers"), "{err}");
    // it gives up instead of retrying for ever: a bound far above its 1 s timeouts, not a measure of speed
    assert!(started.elapsed().as_secs() < 120);
    drop(silent);
}

#[test]
fn an_unreachable_database_is_a_clear_error_and_the_password_stays_hidden() {
    let out = openledger()
        .args([
            "--database-url",
            "postgres://user:hunter2@127.0.0.1:1/db",
            "migrate",
        ])
        .env("OPENLEDGER_DB_CONNECT_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to Postgres"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}
