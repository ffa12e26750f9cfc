//! Test harness: a real anvil (OP-stack mode) with the suite deployed by scripts/deploy.sh, funded actors
//! driving the contracts with alloy, and helpers to index into, and dump, a real Postgres.
//! Needs `scripts/setup.sh` (anvil, forge, node) and a Postgres in DATABASE_URL (`scripts/test.sh` does both).
//!
//! A dev-dependency of the indexer's and the daemon's tests (`use openledger_testkit as common;`); the
//! daemon's part (`daemon`, feature `daemon`) is their `support`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[cfg(feature = "daemon")]
pub mod daemon;
pub mod proxy;
pub mod shared;

pub use shared::{Shared, fixture_database, remove_at_exit};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use openledger_chain::Deployment;
use openledger_indexer::{Indexer, IndexerConfig, Mode};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};

/// How long a test waits for another process or task before calling it stalled: far beyond what a loaded
/// machine needs, never a measure of speed.
pub const STALL: Duration = Duration::from_secs(300);

/// Numbers the nodes this process starts (their chain ids).
static NEXT_CHAIN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Send a contract call and wait for a successful receipt.
#[macro_export]
macro_rules! send {
    ($call:expr) => {{
        let receipt = $call.send().await.unwrap().get_receipt().await.unwrap();
        assert!(receipt.status(), "transaction reverted");
        receipt
    }};
}

/// anvil's default dev keys (mnemonic "test test ... junk"), accounts #0..#9.
pub const KEYS: [&str; 10] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A private anvil with the suite deployed; killed on drop.
pub struct TestChain {
    _broadcast: RemoveOnDrop,
    _node: KillOnDrop,
    pub url: String,
    pub deployment: Deployment,
    _dir: tempfile::TempDir,
}

/// A node under a watchdog shell (`WATCHED`): the node dies when this process's end of the shell's stdin
/// closes, which dropping this does, and so does the end of the test process however it ends (a fixture
/// shared by a test binary is never dropped).
struct KillOnDrop(Child);

/// `sh -c WATCHED sh <program> <args>...`: runs the program with stdin from /dev/null, kills it when the
/// shell's stdin reaches its end, and exits with the program's status (so a node that fails to start is seen
/// to exit).
const WATCHED: &str = r#"exec 3<&0; "$@" </dev/null & node=$!; (cat <&3 >/dev/null; kill -9 $node 2>/dev/null) & wait $node"#;

/// forge keeps a broadcast record per chain id; each test chain has its own id, so clean up after it.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // closing the pipe kills the node; the shell then exits with it
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestChain {
    pub async fn start() -> TestChain {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> TestChain {
        let root = repo_root();
        let anvil = root.join(".tools/bin/anvil");
        assert!(
            anvil.exists(),
            "{} missing: run scripts/setup.sh",
            anvil.display()
        );
        // a port taken between `free_port` and anvil's bind (another test's node) is retried on a new one
        let (port, chain_id, node) = 'start: {
            for _ in 0..5 {
                let port = free_port();
                // a chain id of its own (this process, this node): parallel tests' forge broadcasts (kept per
                // chain id) must not collide, and a node answering with it is this one
                let chain_id = (1_000_000
                    + u64::from(std::process::id()) * 1000
                    + NEXT_CHAIN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000)
                    .to_string();
                let child = Command::new("sh")
                    .args(["-c", WATCHED, "sh"])
                    .arg(&anvil)
                    .args([
                        "--port",
                        &port.to_string(),
                        "--chain-id",
                        &chain_id,
                        "--network",
                        "optimism",
                        "--silent",
                    ])
                    .args(extra)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut node = KillOnDrop(child);
                if wait_for_node(&mut node.0, port, chain_id.parse().unwrap()).await {
                    break 'start (port, chain_id, node);
                }
            }
            panic!("anvil could not start on a free port five times");
        };
        let url = format!("http://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.json");
        let out = Command::new("bash")
            .arg(root.join("scripts/deploy.sh"))
            .args(["--rpc-url", &url, "--out", manifest.to_str().unwrap()])
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deployment = Deployment::load(&manifest).unwrap();
        let broadcast = RemoveOnDrop(vec![
            root.join("contracts/broadcast/Deploy.s.sol")
                .join(&chain_id),
            root.join("contracts/cache/Deploy.s.sol").join(&chain_id),
        ]);
        // also at exit: a chain held by a shared fixture is never dropped
        for p in broadcast.0.iter().chain([&dir.path().to_path_buf()]) {
            remove_at_exit(p);
        }
        TestChain {
            _broadcast: broadcast,
            _node: node,
            url,
            deployment,
            _dir: dir,
        }
    }

    /// A provider sending from anvil account `i`.
    pub fn actor(&self, i: usize) -> DynProvider {
        let signer: PrivateKeySigner = KEYS[i].parse().unwrap();
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    pub fn address_of(i: usize) -> Address {
        KEYS[i].parse::<PrivateKeySigner>().unwrap().address()
    }

    /// A provider without a wallet (for anvil_* calls and impersonated sends).
    pub fn plain(&self) -> DynProvider {
        ProviderBuilder::new()
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    pub fn config(&self) -> IndexerConfig {
        let mut cfg = IndexerConfig::new(self.url.clone());
        cfg.startup_timeout = STALL;
        cfg.poll_interval = Duration::from_millis(50);
        cfg
    }

    /// Index everything up to the head into `pool`.
    pub async fn index(&self, pool: &PgPool, cfg: IndexerConfig) -> Indexer {
        let mut indexer = Indexer::new(cfg, self.deployment.clone(), pool.clone())
            .await
            .unwrap();
        indexer.run(Mode::UntilHead).await.unwrap();
        indexer
    }

    /// Sends `data` to `to` as `from` without its key (anvil impersonation), e.g. as the timelock or as a
    /// contract; fails the test if it reverts.
    pub async fn impersonated(&self, from: Address, to: Address, data: Vec<u8>) {
        use alloy::providers::ext::AnvilApi;
        let p = self.plain();
        p.anvil_impersonate_account(from).await.unwrap();
        p.anvil_set_balance(from, ether(10)).await.unwrap();
        let tx = alloy::rpc::types::TransactionRequest::default()
            .from(from)
            .to(to)
            .input(data.into());
        let r = p
            .send_transaction(tx)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status(), "impersonated call reverted");
        p.anvil_stop_impersonating_account(from).await.unwrap();
    }

    pub async fn head(&self) -> u64 {
        self.plain().get_block_number().await.unwrap()
    }
}

/// Waits until the anvil just started answers with its own chain id (no other node has it): `false` when it
/// exited (its port was taken); panics when it neither answers nor exits within `STALL`.
async fn wait_for_node(child: &mut Child, port: u16, chain_id: u64) -> bool {
    let url = format!("http://127.0.0.1:{port}");
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if p.get_chain_id().await.is_ok_and(|id| id == chain_id) {
            return true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "anvil did not start at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second, empty, migrated database on the same server as `pool`; `drop_fresh` removes it.
pub async fn fresh_database(pool: &PgPool) -> PgPool {
    let opts: PgConnectOptions = (*pool.connect_options()).clone();
    let name = format!("ol_fresh_{}_{}", std::process::id(), rand_suffix());
    let mut admin = opts.clone().database("postgres").connect().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let pool = PgPool::connect_with(opts.database(&name)).await.unwrap();
    openledger_db::MIGRATOR.run(&pool).await.unwrap();
    pool
}

/// Close and drop a database made by `fresh_database`.
pub async fn drop_fresh(pool: PgPool) {
    let opts: PgConnectOptions = (*pool.connect_options()).clone();
    let name = opts.get_database().unwrap_or_default().to_string();
    assert!(
        name.starts_with("ol_fresh_"),
        "only fresh databases are dropped"
    );
    pool.close().await;
    let mut admin = opts.database("postgres").connect().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// Every indexed table as sorted JSON rows (bookkeeping timestamps left out), for whole-database comparison.
pub async fn dump(pool: &PgPool) -> Vec<(String, Vec<String>)> {
    let tables = [
        "chain_events",
        "datanets",
        "datanet_changes",
        "contributions",
        "contribution_reviews",
        "datanet_versions",
        "models",
        "model_transfers",
        "adapters",
        "agents",
        "agent_operator_changes",
        "stakes",
        "unbondings",
        "stake_withdrawals",
        "slashes",
        "inference_payments",
        "reward_roots",
        "reward_root_outcomes",
        "reward_claims",
        "token_transfers",
        "token_allocations",
        "parameter_changes",
        "governance_proposals",
        "governance_votes",
        "governance_proposal_outcomes",
    ];
    let mut out = Vec::new();
    for t in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t)::text FROM {t} t ORDER BY 1"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        out.push((t.to_string(), rows));
    }
    let through: Vec<String> = sqlx::query_scalar(
        "SELECT chain_id || ':' || indexed_through FROM indexer_checkpoints ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    out.push(("checkpoint".into(), through));
    out
}

pub fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// A connection URL for the database behind `pool` (for binaries under test).
pub fn url_of(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap()
    )
}
