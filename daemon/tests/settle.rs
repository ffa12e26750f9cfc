//! Settlement end to end on anvil + Postgres, through the real `openledger` binary, one test per feature
//! over one stack built once for this binary (`SETTLE`): three contributors contribute, a curator accepts,
//! a tiny adapter is trained, a payer pays FeeRouter and infers, every answer is attributed. Each test then
//! settles what it needs on top of whatever epochs the others left (they take turns, in any order):
//! `openledger settle` refuses bad input with the state unchanged, proposes reward roots when killed at each
//! state of the submission and restarted, derives an epoch again after a reorg, bumps a stuck proposal and
//! carries a revoked root's payments; the root is accepted, `openledger claim` pays each contributor
//! exactly what the attribution weights say, and `openledger settle verify` agrees with the chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::daemon as support;
use openledger_testkit::send;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::anvil::ReorgOptions;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use axum::http::StatusCode;
use common::{KEYS, TestChain, ether, url_of};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{FeeRouter, OpenToken, Registry, RewardDistributor};
use openledger_daemon::chain::Chain;
use openledger_daemon::content::{Format, canonicalise};
use openledger_daemon::inference::{Inference, InferenceConfig};
use openledger_daemon::training::TrainSettings;

use openledger_daemon::state::ApiConfig;
use openledger_indexer::{Indexer, Mode};
use openledger_model::{BaseModel, ModelConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;
use tokio::sync::watch;

/// The contributors (anvil accounts), the payer, and the daemon (relayer, curator, settler).
const CONTRIBUTORS: [usize; 3] = [2, 3, 4];
const PAYER: usize = 5;
const DAEMON: usize = 1;
/// The first request id's byte (`B256::repeat_byte`); each later request takes the next.
const FIRST_RID: u8 = 1;

struct World {
    chain: TestChain,
    pool: PgPool,
    app: axum::Router,
    api_url: String,
    manifest: PathBuf,
    data: tempfile::TempDir,
    model_id: U256,
    model_name: String,
    /// A session of the payer: a pay-first request id serves only its payer.
    payer_session: String,
    /// Kept so that the job workers keep running.
    _stop: watch::Sender<bool>,
    /// The next request id's byte.
    next_rid: AtomicU8,
    /// Requests paid and used by an answer, and requests paid and never used, in order.
    used: Mutex<Vec<B256>>,
    held: Mutex<Vec<B256>>,
    /// The accepted root, once a test has made one.
    accepted: Mutex<Option<Accepted>>,
}

fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            json!({"prompt": format!("What is the ledger code of item {i}?"),
                   "completion": format!("The ledger code of item {i} is OL-{:03}-{}.", i * 7 % 1000, ["ALPHA", "BETA", "GAMMA"][i % 3])})
            .to_string()
        })
        .collect()
}

async fn world(pool: PgPool) -> World {
    let chain = TestChain::start().await;
    let d = chain.deployment.clone();
    let registry_addr = d.address(ContractKind::Registry).unwrap();
    let token = |i| OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), chain.actor(i));
    let registry = |i| Registry::new(registry_addr, chain.actor(i));
    send!(token(0).transfer(TestChain::address_of(DAEMON), ether(100)));
    send!(token(DAEMON).approve(registry_addr, ether(100)));
    send!(registry(DAEMON).createDatanet("ipfs://dn1".into(), vec![], false, vec![]));
    // three records from each contributor, stored as uploads and contributed on chain
    let recs = records(9);
    let mut ids = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let who = CONTRIBUTORS[i % 3];
        let c = canonicalise(r.as_bytes(), Format::Jsonl, 1 << 20).unwrap();
        openledger_testkit::daemon::store_upload(
            &pool,
            TestChain::address_of(who),
            d.chain_id,
            1,
            &c,
        )
        .await;
        send!(registry(who).contribute(U256::from(1), c.hash, format!("ipfs://r{i}")));
        ids.push(U256::from(i + 1));
    }
    send!(registry(DAEMON).reviewContributions(U256::from(1), ids, true));

    let data = tempfile::tempdir().unwrap();
    BaseModel::random(ModelConfig::tiny(), 3)
        .unwrap()
        .save_hf_dir(&data.path().join("models/tiny-llama"))
        .unwrap();
    let manifest = data.path().join("manifest.json");
    std::fs::write(&manifest, serde_json::to_vec(&d).unwrap()).unwrap();
    let key: PrivateKeySigner = KEYS[DAEMON].parse().unwrap();
    let daemon_chain = Chain::connect(&chain.url, &d, Some(key.clone()), Duration::from_secs(10))
        .await
        .unwrap();
    let settings = TrainSettings::new(data.path().to_path_buf(), "cpu");
    openledger_daemon::models::scan_models_dir(&pool, &settings.models_dir())
        .await
        .unwrap();
    let jobs = openledger_daemon::serve::registry(
        &pool,
        &d,
        &daemon_chain,
        Duration::from_secs(30),
        &settings,
        openledger_daemon::quotas::Quotas::UNLIMITED,
        None,
    )
    .unwrap();
    let mut indexer = Indexer::new(chain.config(), d.clone(), pool.clone())
        .await
        .unwrap();
    tokio::spawn(async move { indexer.run(Mode::Follow).await });
    let (stop, _workers) = start_workers(&pool, &jobs, "settle-test");
    let plain_app = openledger_daemon::api::app(state_with(
        pool.clone(),
        d.clone(),
        Some(daemon_chain.clone()),
        jobs.clone(),
        ApiConfig::new(d.chain_id, DOMAIN),
    ));
    let session = sign_in(&plain_app, &key).await;
    wait_accepted(&plain_app, 1, 9).await;
    publish_version(&plain_app, &session, 1).await;
    let job = trained(
        &plain_app,
        &session,
        json!({"base_model": "tiny-llama", "datanets": [{"id": "1"}],
               "config": {"steps": 12, "batch_size": 2, "learning_rate": 0.01, "max_seq_len": 64,
                          "eval_fraction": 0.25, "eval_every": 4, "checkpoint_every": 4, "seed": 1}}),
    )
    .await;
    let job_id = job["id"].as_i64().unwrap();
    let model_id: U256 = job["result"]["published"]["model_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // serve the adapter, over HTTP too (for `openledger claim`)
    let inf = Inference::load(
        &pool,
        &data.path().join("models"),
        InferenceConfig {
            model: Some("tiny-llama".into()),
            payment_wait: Duration::from_secs(10),
            default_max_tokens: 6,
            ..InferenceConfig::default()
        },
    )
    .await
    .unwrap();
    let app = openledger_daemon::api::app(state_serving(
        pool.clone(),
        d.clone(),
        Some(daemon_chain),
        jobs,
        ApiConfig::new(d.chain_id, DOMAIN),
        Some(inf),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let served = app.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            served.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    // the payer's OPEN, approved to FeeRouter
    let router = d.address(ContractKind::FeeRouter).unwrap();
    send!(token(0).transfer(TestChain::address_of(PAYER), ether(20)));
    send!(token(PAYER).approve(router, ether(20)));
    let payer: PrivateKeySigner = KEYS[PAYER].parse().unwrap();
    let payer_session = sign_in(&app, &payer).await;
    World {
        chain,
        pool,
        app,
        api_url,
        manifest,
        data,
        model_id,
        model_name: format!("ft-{job_id}"),
        payer_session,
        _stop: stop,
        next_rid: AtomicU8::new(FIRST_RID),
        used: Mutex::new(Vec::new()),
        held: Mutex::new(Vec::new()),
        accepted: Mutex::new(None),
    }
}

impl World {
    fn addr(&self, k: ContractKind) -> Address {
        self.chain.deployment.address(k).unwrap()
    }

    async fn pay(&self, rid: B256) {
        let fee = FeeRouter::new(self.addr(ContractKind::FeeRouter), self.chain.actor(PAYER));
        send!(fee.payInference(self.model_id, rid, ether(1)));
        wait_payment_indexed(&self.pool, &self.chain.deployment, rid).await;
    }

    /// Pays for one inference and makes it; its answer is attributed.
    async fn pay_and_infer(&self, rid: B256, item: usize) {
        self.pay(rid).await;
        let body = json!({"model": self.model_name, "max_tokens": 5, "temperature": 0,
                          "messages": [{"role": "user", "content": format!("What is the ledger code of item {item}?")}],
                          "request_id": rid.to_string()});
        let r = post_json(
            &self.app,
            "/v1/chat/completions",
            Some(&self.payer_session),
            body,
        )
        .await;
        r.expect(StatusCode::OK);
        let v = r.json();
        assert_eq!(v["openledger"]["attribution"]["status"], "complete", "{v}");
    }

    /// Waits until the indexer has the head.
    async fn indexed(&self) {
        let index =
            openledger_indexer::query::ChainIndex::new(self.pool.clone(), &self.chain.deployment)
                .unwrap();
        until("the indexer reaches the head", || async {
            let head = self.chain.head().await;
            (index.indexed_through().await.unwrap() >= Some(head)).then_some(())
        })
        .await
    }

    /// The real binary, awaited without blocking this runtime (the in-process indexer must keep running).
    async fn cli(&self, key: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_openledger"));
        c.args(["--database-url", &url_of(&self.pool)])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("OPENLEDGER_FAILPOINT")
            .env("OPENLEDGER_PRIVATE_KEY", KEYS[key])
            .env("OPENLEDGER_RPC_URL", &self.chain.url)
            .env("OPENLEDGER_MANIFEST", &self.manifest)
            .env("OPENLEDGER_URL", &self.api_url);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().await.unwrap()
    }

    /// `openledger settle` from the daemon's key with a finality depth of 0 (anvil), plus `extra`.
    async fn settle(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.indexed().await;
        let mut args = vec![
            "--json",
            "settle",
            "--finality-depth",
            "0",
            "--settle-timeout-secs",
            "300",
        ];
        args.extend_from_slice(extra);
        self.cli(DAEMON, &args, env).await
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    fn distributor(
        &self,
    ) -> RewardDistributor::RewardDistributorInstance<alloy::providers::DynProvider> {
        RewardDistributor::new(
            self.addr(ContractKind::RewardDistributor),
            self.chain.plain(),
        )
    }

    async fn balance(&self, who: Address) -> U256 {
        OpenToken::new(self.addr(ContractKind::OpenToken), self.chain.plain())
            .balanceOf(who)
            .call()
            .await
            .unwrap()
    }

    /// RootProposed events of `epoch` on chain.
    async fn proposals(&self, epoch: u64) -> usize {
        let f = alloy::rpc::types::Filter::new()
            .address(self.addr(ContractKind::RewardDistributor))
            .event_signature(
                <RewardDistributor::RootProposed as alloy::sol_types::SolEvent>::SIGNATURE_HASH,
            )
            .topic1(B256::from(U256::from(epoch)))
            .from_block(0);
        self.chain.plain().get_logs(&f).await.unwrap().len()
    }
}

fn ok_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn failed_with(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
}

/// What each account is owed through `epoch`'s payments, computed in SQL from the index and the stored
/// weights (independently of the settler): floor(Σ pool · weight / 1e6) per contributor.
async fn expected(w: &World, payments: &[B256]) -> BTreeMap<String, U256> {
    let rids: Vec<String> = payments.iter().map(|r| r.to_string()).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT aw.contributor, floor(sum(p.pool_amount * aw.weight) / 1000000)::text
         FROM inference_payments p
         JOIN inferences i ON i.payer = p.payer AND i.request_id = p.request_id AND i.status = 'succeeded'
         JOIN attribution_weights aw ON aw.inference_id = i.id
         WHERE p.request_id = ANY($1)
         GROUP BY aw.contributor",
    )
    .bind(&rids)
    .fetch_all(&w.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, v)| (a, v.parse().unwrap()))
        .collect()
}

/// The settlement stack, built once for this binary: three payments made before any test runs (two of them
/// used by an attributed answer, one never used and therefore held).
static SETTLE: common::Shared<World> = common::Shared::new(|| Box::pin(settle_fixture()));

async fn settle_fixture() -> World {
    let w = world(common::fixture_database("settle").await).await;
    common::remove_at_exit(w.data.path());
    w.used_item(0).await;
    w.used_item(4).await;
    w.held().await;
    w
}

/// What `World::accepted` found or made: the accepted root and the payments it settles.
#[derive(Clone)]
struct Accepted {
    epoch: u64,
    total: U256,
    treasury: String,
    /// The used requests paid before the accepted root was built (every one is in it).
    rids: Vec<B256>,
}

impl World {
    /// A request id no test has used.
    fn fresh(&self) -> B256 {
        let n = self.next_rid.fetch_add(1, Ordering::SeqCst);
        self.used.lock().unwrap().push(B256::repeat_byte(n));
        B256::repeat_byte(n)
    }

    /// A fresh request, paid and used by an attributed answer (a question about item `item`).
    async fn used_item(&self, item: usize) -> B256 {
        let rid = self.fresh();
        self.pay_and_infer(rid, item).await;
        rid
    }

    /// A fresh request, paid and used (the item asked about follows the id).
    async fn used(&self) -> B256 {
        let item = self.next_rid.load(Ordering::SeqCst) as usize % 9;
        self.used_item(item).await
    }

    /// A fresh request, paid and never used: every epoch holds it.
    async fn held(&self) -> B256 {
        let rid = self.fresh();
        self.used.lock().unwrap().retain(|r| *r != rid);
        self.held.lock().unwrap().push(rid);
        self.pay(rid).await;
        rid
    }

    fn held_rids(&self) -> Vec<B256> {
        self.held.lock().unwrap().clone()
    }

    async fn latest_epoch(&self) -> u64 {
        self.distributor().latestEpoch().call().await.unwrap()
    }

    /// Settles whatever is payable and not yet settled (nothing, if nothing is).
    async fn settle_pending(&self) {
        let out = self.settle(&[], &[]).await;
        if !out.status.success() {
            failed_with(&out, "nothing to settle");
        }
    }

    /// The accepted root: found, or made once by proposing every payable payment and accepting the root
    /// after the challenge delay (checking that it cannot be accepted before).
    async fn accepted(&self) -> Accepted {
        if let Some(a) = self.accepted.lock().unwrap().clone() {
            return a;
        }
        self.settle_pending().await;
        self.used().await;
        let proposed = ok_json(&self.settle(&[], &[]).await);
        assert_eq!(proposed["state"], "final", "{proposed}");
        let rids = self.used.lock().unwrap().clone();
        let latest = self.latest_epoch().await;
        failed_with(
            &self
                .cli(DAEMON, &["settle", "accept", "--finality-depth", "0"], &[])
                .await,
            "no root to accept",
        );
        self.chain.plain().anvil_increase_time(3601).await.unwrap();
        self.chain.plain().anvil_mine(Some(1), None).await.unwrap();
        self.indexed().await;
        let acc = ok_json(
            &self
                .cli(
                    DAEMON,
                    &["--json", "settle", "accept", "--finality-depth", "0"],
                    &[],
                )
                .await,
        );
        assert_eq!(acc["state"], "accepted", "{acc}");
        assert_eq!(acc["epoch"].as_u64(), Some(latest));
        let list = ok_json(&self.cli(DAEMON, &["--json", "settle", "list"], &[]).await);
        let states: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert_eq!(states[0], "accepted", "{list}");
        assert_eq!(list[0]["epoch"].as_u64(), Some(latest), "{list}");
        assert!(
            states[1..]
                .iter()
                .all(|s| *s == "superseded" || *s == "revoked"),
            "every earlier root was superseded (or revoked): {list}"
        );
        let a = Accepted {
            epoch: latest,
            total: u256_of(&list[0]["total"]),
            treasury: list[0]["treasury"].as_str().unwrap().to_owned(),
            rids,
        };
        *self.accepted.lock().unwrap() = Some(a.clone());
        a
    }

    /// Pays and uses a fresh request, then settles it with the settler killed at `failpoint` and settles
    /// again: the epoch ends final and proposed exactly once. Returns the epoch and the final report.
    async fn crash_and_resume(&self, failpoint: &str) -> (u64, Value) {
        self.settle_pending().await;
        self.used().await;
        let epoch = self.latest_epoch().await + 1;
        let crash = self
            .settle(&[], &[("OPENLEDGER_FAILPOINT", failpoint)])
            .await;
        assert!(!crash.status.success(), "killed at {failpoint}");
        let resumed = ok_json(&self.settle(&[], &[]).await);
        assert_eq!(
            (resumed["epoch"].as_u64(), resumed["state"].as_str()),
            (Some(epoch), Some("final")),
            "{resumed}"
        );
        assert_eq!(self.proposals(epoch).await, 1, "proposed exactly once");
        assert_eq!(self.latest_epoch().await, epoch);
        (epoch, resumed)
    }

    /// Settlement rows of `epoch` in `state`.
    async fn epochs_in(&self, epoch: u64, state: &str) -> i64 {
        self.count(&format!(
            "SELECT count(*) FROM settlement_epochs WHERE epoch = {epoch} AND state = '{state}'"
        ))
        .await
    }
}

/// Bad input is refused with a clear reason and nothing is stored: a window that is not final, a skipped
/// epoch, a key without SETTLER_ROLE, and a distributor holding less than the root would promise.
#[test]
fn settle_refuses_bad_input_and_stores_nothing() {
    SETTLE.run(|w| async move {
        w.used().await;
        let epochs = "SELECT count(*) FROM settlement_epochs";
        let before = w.count(epochs).await;
        failed_with(
            &w.settle(&["--epoch-blocks", "1000000"], &[]).await,
            "is not final yet",
        );
        let next = w.latest_epoch().await + 1;
        failed_with(
            &w.settle(&["--epoch", &(next + 1).to_string()], &[]).await,
            &format!("the next epoch is {next}"),
        );
        let stranger = ["--json", "settle", "--finality-depth", "0", "--dry-run"];
        failed_with(
            &w.cli(2, &stranger, &[]).await,
            "does not have SETTLER_ROLE",
        );
        // the pool drained (as if the index held payments the distributor never received)
        let distributor = w.addr(ContractKind::RewardDistributor);
        let open = w.addr(ContractKind::OpenToken);
        let held_by_pool = w.balance(distributor).await;
        assert!(held_by_pool > U256::ZERO);
        let pools: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT pool_amount::text FROM inference_payments")
                .fetch_all(&w.pool)
                .await
                .unwrap();
        let forty_percent = ether(1) * U256::from(4) / U256::from(10);
        assert_eq!(
            pools,
            vec![forty_percent.to_string()],
            "40% of each 1 OPEN payment"
        );
        let out = OpenToken::transferCall {
            to: TestChain::address_of(0),
            value: held_by_pool,
        }
        .abi_encode();
        w.chain.impersonated(distributor, open, out).await;
        let drained = w.settle(&[], &[]).await;
        let back = OpenToken::new(open, w.chain.actor(0));
        send!(back.transfer(distributor, held_by_pool));
        failed_with(&drained, "but the RewardDistributor holds 0 wei");
        assert_eq!(w.count(epochs).await, before, "bad input stored nothing");
    });
}

/// A dry run reports the epoch as it would be (what it includes, what it holds and why) and stores and
/// sends nothing; with fixed windows it takes every whole window that is final.
#[test]
fn a_dry_run_reports_the_epoch_and_stores_nothing() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        w.used().await;
        w.used().await;
        w.held().await;
        let epochs = "SELECT count(*) FROM settlement_epochs";
        let before = w.count(epochs).await;
        let latest = w.latest_epoch().await;
        let dry = ok_json(&w.settle(&["--dry-run"], &[]).await);
        let held = w.held_rids().len();
        assert_eq!(dry["epoch"].as_u64(), Some(latest + 1), "{dry}");
        assert_eq!(dry["included"], 2, "{dry}");
        assert_eq!(dry["held"], held, "{dry}");
        assert_eq!(
            dry["held_reasons"]["no inference has used this payment yet"], held,
            "{dry}"
        );
        assert_eq!(w.count(epochs).await, before);
        // fixed windows of 2 blocks: quiet windows do not hold the epoch back, it takes every whole
        // window that is final
        let windows = ok_json(&w.settle(&["--dry-run", "--epoch-blocks", "2"], &[]).await);
        assert_eq!(windows["included"], 2, "{windows}");
        let from = windows["from_block"].as_u64().unwrap();
        let to = windows["to_block"].as_u64().unwrap();
        assert_eq!((to + 1 - from) % 2, 0, "whole windows: {windows}");
        assert!(to + 2 > w.chain.head().await, "{windows}");
        assert_eq!(w.count(epochs).await, before);
        assert_eq!(w.latest_epoch().await, latest, "nothing was sent");
    });
}

/// Killed after the transaction is stored and before it is sent: the restart sends that stored
/// transaction; settling the epoch again reports it as it stands, and with nothing new it refuses.
#[test]
fn a_settler_killed_before_sending_sends_the_stored_transaction() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        w.used().await;
        let epoch = w.latest_epoch().await + 1;
        let crash = w
            .settle(&[], &[("OPENLEDGER_FAILPOINT", "before-send")])
            .await;
        assert!(!crash.status.success());
        assert_eq!(w.epochs_in(epoch, "submitted").await, 1);
        assert_eq!(w.latest_epoch().await, epoch - 1, "nothing was sent");
        let e = ok_json(&w.settle(&[], &[]).await);
        assert_eq!(e["state"], "final", "{e}");
        assert_eq!(e["epoch"].as_u64(), Some(epoch));
        assert_eq!(w.proposals(epoch).await, 1);
        assert_eq!(
            w.count(&format!(
                "SELECT count(*) FROM settlement_txs t JOIN settlement_epochs e ON e.id = t.epoch_id
                 WHERE e.epoch = {epoch} AND t.kind = 'propose'"
            ))
            .await,
            1,
            "the stored transaction itself was sent after the restart"
        );
        // settling the epoch again: reported as it stands, nothing sent
        let again = ok_json(&w.settle(&["--epoch", &epoch.to_string()], &[]).await);
        assert_eq!(again["root"], e["root"]);
        assert_eq!(w.proposals(epoch).await, 1);
        // nothing new: a clear refusal
        failed_with(&w.settle(&[], &[]).await, "nothing to settle");
    });
}

/// Killed after the send, before the receipt: the restart finds the transaction and sends nothing new.
#[test]
fn a_settler_killed_after_sending_finds_its_transaction() {
    SETTLE.run(|w| async move {
        w.crash_and_resume("after-send").await;
    });
}

/// Killed after the receipt, before the database knew: the restart records the mined proposal.
#[test]
fn a_settler_killed_after_the_receipt_records_the_proposal() {
    SETTLE.run(|w| async move {
        let (epoch, _) = w.crash_and_resume("after-receipt").await;
        assert_eq!(w.epochs_in(epoch, "final").await, 1);
    });
}

/// A reorg between build and proposal: the build is discarded and the epoch derived again, and no payment
/// is ever counted twice.
#[test]
fn a_reorg_between_build_and_proposal_derives_the_epoch_again() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        let rid = w.used().await;
        let latest = w.latest_epoch().await;
        let epoch = latest + 1;
        let paid_block: i64 =
            sqlx::query_scalar("SELECT block_number FROM inference_payments WHERE request_id = $1")
                .bind(rid.to_string())
                .fetch_one(&w.pool)
                .await
                .unwrap();
        let crash = w
            .settle(&[], &[("OPENLEDGER_FAILPOINT", "after-build")])
            .await;
        assert!(!crash.status.success());
        assert_eq!(w.epochs_in(epoch, "built").await, 1);
        let depth = w.chain.head().await - paid_block as u64 + 1;
        w.chain
            .plain()
            .anvil_reorg(ReorgOptions {
                depth,
                tx_block_pairs: vec![],
            })
            .await
            .unwrap();
        let rederived = w.settle(&[], &[]).await;
        let failed: String = sqlx::query_scalar(
            "SELECT error FROM settlement_epochs WHERE epoch = $1 AND state = 'failed'",
        )
        .bind(epoch as i64)
        .fetch_one(&w.pool)
        .await
        .unwrap();
        assert!(failed.contains("reorganised"), "{failed}");
        let still_paid = w
            .count(&format!(
                "SELECT count(*) FROM inference_payments WHERE request_id = '{rid}'"
            ))
            .await;
        // the inference served on it is marked while its payment is off the chain
        let marked: bool = sqlx::query_scalar(
            "SELECT payment_removed_at IS NOT NULL FROM inferences WHERE request_id = $1 AND status = 'succeeded'",
        )
        .bind(rid.to_string())
        .fetch_one(&w.pool)
        .await
        .unwrap();
        assert_eq!(marked, still_paid == 0, "marked exactly when the payment is gone");
        if still_paid == 0 {
            // the payment left the chain: nothing payable is new
            failed_with(&rederived, "nothing to settle");
            assert_eq!(w.latest_epoch().await, latest);
        } else {
            // anvil mined it again in a later block: the epoch includes it once
            let e = ok_json(&rederived);
            assert_eq!(e["state"], "final", "{e}");
        }
        assert_eq!(
            w.count(
                "SELECT count(*) FROM (SELECT 1 FROM settlement_payments WHERE included
                 GROUP BY chain_id, tx_hash, log_index HAVING count(*) > 1) d"
            )
            .await,
            0,
            "no payment counted twice"
        );
    });
}

/// Under the accepted root each contributor claims exactly floor(Σ pool · weight / 1e6) of the payments it
/// settles, once; what was claimed left the pool, the rest (the protocol's part, payments not yet
/// settled) stays.
#[test]
fn contributors_claim_exactly_their_attributed_share_once() {
    SETTLE.run(|w| async move {
        let acc = w.accepted().await;
        let want = expected(w, &acc.rids).await;
        assert!(
            want.len() >= 2,
            "the answers were attributed to several contributors: {want:?}"
        );
        let distributor = w.addr(ContractKind::RewardDistributor);
        let pool_before = w.balance(distributor).await;
        let mut claimed = U256::ZERO;
        for &c in &CONTRIBUTORS {
            let a = TestChain::address_of(c);
            let owed = want.get(&format!("{a:#x}")).copied().unwrap_or_default();
            let r = get(&w.app, &format!("/api/rewards/{a:#x}"), None)
                .await
                .json();
            assert_eq!(r["cumulative"], owed.to_string(), "{r}");
            assert_eq!(r["claimable"], owed.to_string(), "{r}");
            let before = w.balance(a).await;
            let out = w.cli(c, &["--json", "claim"], &[]).await;
            if owed.is_zero() {
                failed_with(&out, "nothing to claim");
                continue;
            }
            let v = ok_json(&out);
            assert_eq!(v["claimed"], owed.to_string());
            assert_eq!(w.balance(a).await - before, owed, "contributor #{c}");
            claimed += owed;
            // claiming twice: nothing more
            failed_with(&w.cli(c, &["claim"], &[]).await, "nothing to claim");
            w.indexed().await;
            let r = get(&w.app, &format!("/api/rewards/{a:#x}"), None)
                .await
                .json();
            assert_eq!(
                (r["claimed"].as_str(), r["claimable"].as_str()),
                (Some(owed.to_string().as_str()), Some("0")),
                "{r}"
            );
        }
        // the pool: what was claimed left it; the protocol's part and the payments not settled stay
        let pools: Vec<(String, String)> =
            sqlx::query_as("SELECT request_id, pool_amount::text FROM inference_payments")
                .fetch_all(&w.pool)
                .await
                .unwrap();
        let inflow: U256 = pools.iter().map(|p| p.1.parse::<U256>().unwrap()).sum();
        let settled: Vec<String> = acc.rids.iter().map(|r| r.to_string()).collect();
        let unsettled: U256 = pools
            .iter()
            .filter(|p| !settled.contains(&p.0))
            .map(|p| p.1.parse::<U256>().unwrap())
            .sum();
        assert!(
            unsettled >= ether(1) * U256::from(4) / U256::from(10),
            "the held payment is not settled"
        );
        assert_eq!(pool_before - w.balance(distributor).await, claimed);
        assert_eq!(
            w.balance(distributor).await,
            inflow - claimed,
            "claims + unclaimed = pool inflow"
        );
        assert_eq!(
            acc.total + unsettled,
            inflow,
            "every pool paid before the root was built is in it, every other pool is outside it"
        );
        let treasury = w.treasury_leaf(&acc).await;
        assert_eq!(
            claimed + treasury,
            acc.total,
            "contributors + protocol = the root's total"
        );
    });
}

/// A proof for more than the leaf says, or a proof of an older epoch, is refused by the contract; the
/// rewards API refuses a malformed address and answers zero for an account without a leaf.
#[test]
fn wrong_or_stale_proofs_are_refused() {
    SETTLE.run(|w| async move {
        w.accepted().await;
        let distributor = w.addr(ContractKind::RewardDistributor);
        let a = TestChain::address_of(CONTRIBUTORS[0]);
        let r = get(&w.app, &format!("/api/rewards/{a:#x}"), None)
            .await
            .json();
        let proof: Vec<B256> = r["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().parse().unwrap())
            .collect();
        let cumulative = u256_of(&r["cumulative"]);
        let d = RewardDistributor::new(distributor, w.chain.actor(CONTRIBUTORS[0]));
        let refused_as_invalid_proof = |account: Address, amount: U256, proof: Vec<B256>| {
            let call = d.claim(account, amount, proof);
            async move {
                let e = call.call().await.unwrap_err();
                assert!(
                    format!(
                        "{:?}",
                        e.as_decoded_interface_error::<RewardDistributor::RewardDistributorErrors>()
                    )
                    .contains("InvalidProof"),
                    "{e}"
                );
            }
        };
        refused_as_invalid_proof(a, cumulative + U256::from(1), proof).await;
        // an epoch-1 proof (of an account that has a leaf there) under a claim it does not prove
        let (holder, stale): (String, Vec<u8>) = sqlx::query_as(
            "SELECT l.account, l.proof FROM settlement_leaves l JOIN settlement_epochs e ON e.id = l.epoch_id
             WHERE e.epoch = 1 AND e.state <> 'failed' ORDER BY l.account LIMIT 1",
        )
        .fetch_one(&w.pool)
        .await
        .unwrap();
        let stale: Vec<B256> = stale.chunks(32).map(B256::from_slice).collect();
        refused_as_invalid_proof(holder.parse().unwrap(), U256::from(1), stale).await;
        get(&w.app, "/api/rewards/0x1234", None)
            .await
            .problem(400, "bad-request");
        let nobody = get(
            &w.app,
            &format!("/api/rewards/{:#x}", Address::repeat_byte(0x77)),
            None,
        )
        .await
        .json();
        assert_eq!(
            (nobody["cumulative"].as_str(), nobody["claimable"].as_str()),
            (Some("0"), Some("0"))
        );
    });
}

/// The audit recomputes every live root from the chain and the records and finds it equal to the root on
/// chain; a record changed after the fact is caught.
#[test]
fn the_audit_matches_every_root_and_catches_a_forged_record() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        let live: Vec<i64> = sqlx::query_scalar(
            "SELECT epoch FROM settlement_epochs WHERE state NOT IN ('failed', 'revoked') ORDER BY epoch",
        )
        .fetch_all(&w.pool)
        .await
        .unwrap();
        assert!(!live.is_empty());
        for e in &live {
            let v = ok_json(
                &w.cli(
                    DAEMON,
                    &["--json", "settle", "verify", "--epoch", &e.to_string()],
                    &[],
                )
                .await,
            );
            assert_eq!(v["matches"], true, "epoch {e}: {v}");
            // the public report names no inference (the ids open attribution records), only record hashes
            let report = get(&w.app, &format!("/api/settlements/{e}/report"), None)
                .await
                .json();
            let inferences: Vec<String> = sqlx::query_scalar("SELECT id FROM inferences")
                .fetch_all(&w.pool)
                .await
                .unwrap();
            let text = report.to_string();
            assert!(!text.contains("inference_id"), "epoch {e}: {report}");
            assert!(
                inferences.iter().all(|i| !text.contains(i.as_str())),
                "epoch {e} names an inference: {report}"
            );
        }
        // the fixture's first answer, in a live epoch, changed after the fact
        let first = B256::repeat_byte(FIRST_RID);
        let (id, canonical, epoch): (String, String, i64) = sqlx::query_as(
            "SELECT a.inference_id, a.record_canonical, e.epoch FROM attributions a
             JOIN inferences i ON i.id = a.inference_id
             JOIN inference_payments p ON p.payer = i.payer AND p.request_id = i.request_id
             JOIN settlement_payments sp ON sp.tx_hash = p.tx_hash AND sp.log_index = p.log_index AND sp.included
             JOIN settlement_epochs e ON e.id = sp.epoch_id AND e.state NOT IN ('failed', 'revoked')
             WHERE i.request_id = $1 ORDER BY e.epoch LIMIT 1",
        )
        .bind(first.to_string())
        .fetch_one(&w.pool)
        .await
        .unwrap();
        let forged = canonical.replacen("\"weight\":", "\"weight\":1", 1);
        sqlx::query("UPDATE attributions SET record_canonical = $2 WHERE inference_id = $1")
            .bind(&id)
            .bind(&forged)
            .execute(&w.pool)
            .await
            .unwrap();
        let bad = w
            .cli(DAEMON, &["settle", "verify", "--epoch", &epoch.to_string()], &[])
            .await;
        sqlx::query("UPDATE attributions SET record_canonical = $2 WHERE inference_id = $1")
            .bind(&id)
            .bind(&canonical)
            .execute(&w.pool)
            .await
            .unwrap();
        failed_with(&bad, "does not match");
        assert!(
            String::from_utf8_lossy(&bad.stdout).contains("hashes to"),
            "{}",
            String::from_utf8_lossy(&bad.stdout)
        );
    });
}

/// A stuck proposal is bumped: the node mines nothing until told; the settler re-sends the same nonce with
/// higher fees, and exactly one of them is mined.
#[test]
fn a_stuck_proposal_is_sent_again_with_higher_fees() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        w.used().await;
        w.indexed().await;
        let node = w.chain.plain();
        node.anvil_set_auto_mine(false).await.unwrap();
        let next = w.latest_epoch().await + 1;
        let attempts = format!(
            "SELECT count(*) FROM settlement_txs t JOIN settlement_epochs e ON e.id = t.epoch_id
             WHERE e.epoch = {next} AND t.kind = 'propose'"
        );
        let miner = async {
            // mine only once the proposal has been re-sent: the bump is what this checks
            until("the proposal re-sent with higher fees", || async {
                (w.count(&attempts).await >= 2).then_some(())
            })
            .await;
            node.anvil_mine(Some(1), None).await.unwrap();
            node.anvil_set_auto_mine(true).await.unwrap();
        };
        let (out, ()) = tokio::join!(w.settle(&["--bump-after-secs", "1"], &[]), miner);
        let bumped = ok_json(&out);
        assert_eq!(bumped["state"], "final", "{bumped}");
        assert_eq!(w.proposals(next).await, 1);
        let txs: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT t.nonce, t.max_fee::text, t.state, t.tx_hash FROM settlement_txs t
             JOIN settlement_epochs e ON e.id = t.epoch_id
             WHERE e.epoch = $1 AND t.kind = 'propose' ORDER BY t.sent_at",
        )
        .bind(next as i64)
        .fetch_all(&w.pool)
        .await
        .unwrap();
        assert!(txs.len() >= 2, "{txs:?}");
        assert!(txs.iter().all(|t| t.0 == txs[0].0), "one nonce: {txs:?}");
        let fees: Vec<u128> = txs.iter().map(|t| t.1.parse().unwrap()).collect();
        assert!(
            fees.windows(2).all(|f| f[1] > f[0]),
            "each re-send pays more: {txs:?}"
        );
        assert_eq!(txs.iter().filter(|t| t.2 == "mined").count(), 1, "{txs:?}");
        assert!(
            txs.iter().all(|t| t.2 == "mined" || t.2 == "replaced"),
            "{txs:?}"
        );
        assert_eq!(
            bumped["proposed_tx"].as_str(),
            txs.iter().find(|t| t.2 == "mined").map(|t| t.3.as_str())
        );
        let v = ok_json(
            &w.cli(
                DAEMON,
                &["--json", "settle", "verify", "--epoch", &next.to_string()],
                &[],
            )
            .await,
        );
        assert_eq!(v["matches"], true, "{v}");
    });
}

/// A revoked root: its payments go to the next epoch, once, on top of the live build before it.
#[test]
fn a_revoked_roots_payments_move_to_the_next_epoch_once() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        let first = w.used().await;
        let revoked = ok_json(&w.settle(&[], &[]).await);
        assert_eq!(revoked["state"], "final", "{revoked}");
        let next = w.latest_epoch().await;
        let base: String = sqlx::query_scalar(
            "SELECT total::text FROM settlement_epochs WHERE epoch < $1 AND state NOT IN ('failed', 'revoked')
             ORDER BY epoch DESC LIMIT 1",
        )
        .bind(next as i64)
        .fetch_one(&w.pool)
        .await
        .unwrap();
        let base: U256 = base.parse().unwrap();
        let distributor = w.addr(ContractKind::RewardDistributor);
        let revoker = w.chain.deployment.roles.revokers[0];
        let revoke = RewardDistributor::revokeRootCall {
            epoch: next,
            root: revoked["root"].as_str().unwrap().parse().unwrap(),
        };
        w.chain
            .impersonated(revoker, distributor, revoke.abi_encode())
            .await;
        let second = w.used().await;
        let after = ok_json(&w.settle(&[], &[]).await);
        assert_eq!(after["epoch"].as_u64(), Some(next + 1), "{after}");
        assert_eq!(after["state"], "final", "{after}");
        let states: Vec<(i64, String)> = sqlx::query_as(
            "SELECT epoch, state FROM settlement_epochs WHERE epoch >= $1 AND state <> 'failed' ORDER BY epoch",
        )
        .bind(next as i64)
        .fetch_all(&w.pool)
        .await
        .unwrap();
        assert_eq!(
            states,
            vec![
                (next as i64, "revoked".into()),
                (next as i64 + 1, "final".into())
            ]
        );
        let carried: Vec<String> = sqlx::query_scalar(
            "SELECT p.request_id FROM settlement_payments sp
             JOIN settlement_epochs e ON e.id = sp.epoch_id
             JOIN inference_payments p ON p.tx_hash = sp.tx_hash AND p.log_index = sp.log_index
             WHERE sp.included AND e.epoch = $1 ORDER BY p.request_id",
        )
        .bind(next as i64 + 1)
        .fetch_all(&w.pool)
        .await
        .unwrap();
        let mut want = vec![first.to_string(), second.to_string()];
        want.sort();
        assert_eq!(carried, want);
        // extending the live build before the revoked one: its total grows by exactly the two pools
        assert_eq!(
            u256_of(&after["total"]),
            base + ether(2) * U256::from(4) / U256::from(10)
        );
        let v = ok_json(
            &w.cli(
                DAEMON,
                &[
                    "--json",
                    "settle",
                    "verify",
                    "--epoch",
                    &(next + 1).to_string(),
                ],
                &[],
            )
            .await,
        );
        assert_eq!(v["matches"], true, "{v}");
    });
}

fn u256_of(v: &Value) -> U256 {
    v.as_str().unwrap().parse().unwrap()
}

impl World {
    /// The protocol's (treasury's) cumulative amount in the accepted build.
    async fn treasury_leaf(&self, acc: &Accepted) -> U256 {
        let c: String = sqlx::query_scalar(
            "SELECT l.cumulative::text FROM settlement_leaves l JOIN settlement_epochs e ON e.id = l.epoch_id
             WHERE e.state = 'accepted' AND e.epoch = $1 AND l.account = $2",
        )
        .bind(acc.epoch as i64)
        .bind(&acc.treasury)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        c.parse().unwrap()
    }
}

/// An inference served on a payment that a reorg took off the chain is marked, and a payment mined again
/// clears the mark; other inferences are untouched (the index's rollback deletes rows in one statement, the
/// indexer inserts them in one).
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn an_inference_whose_payment_a_reorg_removed_is_marked(pool: PgPool) {
    let payer = format!("{:#x}", Address::repeat_byte(0x0a));
    let rid = |n: u8| B256::repeat_byte(n).to_string();
    for (id, r) in [("inf-1", rid(1)), ("inf-2", rid(2))] {
        sqlx::query(
            "INSERT INTO inferences (id, model, kind, base_model_hash, payment_mode, chain_id, payer, request_id,
                                     status, prompt_tokens, max_tokens)
             VALUES ($1, 'ft-1', 'chat', '0xbase', 'pay_first', 31337, $2, $3, 'succeeded', 3, 4)",
        )
        .bind(id)
        .bind(&payer)
        .bind(&r)
        .execute(&pool)
        .await
        .unwrap();
    }
    let pay = |r: String, log: i64, block: i64| {
        let (pool, payer) = (pool.clone(), payer.clone());
        async move {
            sqlx::query(
                "INSERT INTO inference_payments VALUES (31337, '0xtx', $1, $2, '0xblock', '0xrouter', $3, 1, $4,
                                                        10, '0xdev', 1, 4, 1, 4)",
            )
            .bind(log)
            .bind(block)
            .bind(&payer)
            .bind(&r)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    pay(rid(1), 0, 5).await;
    pay(rid(2), 1, 7).await;
    let marked = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM inferences WHERE payment_removed_at IS NOT NULL ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert!(marked().await.is_empty(), "paid and on chain");
    // a reorg above block 6 takes the second payment away
    sqlx::query("SELECT rollback_chain_index(31337, 6, ARRAY['0xrouter'])")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(marked().await, ["inf-2"]);
    // mined again in a later block
    pay(rid(2), 2, 9).await;
    assert!(marked().await.is_empty(), "back on chain");
}

/// `settle watch` leaves an honest pending root alone: it recomputes it, finds it equal, and disputes nothing.
#[test]
fn the_watcher_leaves_an_honest_root_alone() {
    SETTLE.run(|w| async move {
        w.settle_pending().await;
        w.used().await;
        let proposed = ok_json(&w.settle(&[], &[]).await);
        assert_eq!(proposed["state"], "final", "{proposed}");
        let out = w
            .cli(DAEMON, &["--json", "settle", "watch", "--once"], &[])
            .await;
        let v = ok_json(&out);
        assert_eq!(v["finding"], "matches", "{v}");
        assert_eq!(v["epoch"], proposed["epoch"], "{v}");
        let d = RewardDistributor::new(w.addr(ContractKind::RewardDistributor), w.chain.plain());
        assert_eq!(
            d.pendingDispute().call().await.unwrap().disputer,
            Address::ZERO
        );
    });
}

/// Attack: the settler key (stolen, or a buggy settler) proposes a root no honest build made. A watcher
/// (`settle watch`, from its own key) recomputes it, finds nothing behind it, and disputes it with the bond
/// during the challenge delay: the root can then not be accepted, a second watcher round spends nothing more,
/// and once the revoker upholds the dispute the root is gone and the watcher has its bond back.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_forged_root_is_disputed_by_the_watcher(pool: PgPool) {
    let chain = TestChain::start().await;
    let d = chain.deployment.clone();
    let data = tempfile::tempdir().unwrap();
    let manifest = data.path().join("manifest.json");
    std::fs::write(&manifest, serde_json::to_vec(&d).unwrap()).unwrap();
    const WATCHER: usize = 6;
    let token = OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), chain.actor(0));
    send!(token.transfer(TestChain::address_of(WATCHER), ether(25)));
    let distributor_addr = d.address(ContractKind::RewardDistributor).unwrap();
    let distributor = RewardDistributor::new(distributor_addr, chain.plain());
    let bond = U256::from(distributor.disputeBond().call().await.unwrap());
    assert!(bond > U256::ZERO);
    let watch = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_openledger"));
        c.args(["--database-url", &url_of(&pool)])
            .args(["--json", "settle", "watch", "--once"])
            .env_remove("RUST_LOG")
            .env("OPENLEDGER_PRIVATE_KEY", KEYS[WATCHER])
            .env("OPENLEDGER_RPC_URL", &chain.url)
            .env("OPENLEDGER_MANIFEST", &manifest);
        async move { c.output().await.unwrap() }
    };
    assert_eq!(ok_json(&watch().await)["finding"], "nothing pending");

    // the settler key proposes a root of its own making (its total within what the pool holds: zero)
    let forged = B256::repeat_byte(0xee);
    send!(
        RewardDistributor::new(distributor_addr, chain.actor(DAEMON)).proposeRoot(
            1,
            forged,
            U256::ZERO,
            "forged".into()
        )
    );
    let balance = || async {
        token
            .balanceOf(TestChain::address_of(WATCHER))
            .call()
            .await
            .unwrap()
    };
    let before = balance().await;
    let v = ok_json(&watch().await);
    assert_eq!(v["finding"], "wrong, disputed", "{v}");
    assert_eq!(v["epoch"], 1);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("not built by this daemon"),
        "{v}"
    );
    let open = distributor.pendingDispute().call().await.unwrap();
    assert_eq!(open.disputer, TestChain::address_of(WATCHER));
    assert_eq!(balance().await, before - bond, "the bond is posted");

    // frozen: past its delay it still cannot be accepted; the next round finds it disputed and spends nothing
    chain.plain().anvil_increase_time(3601).await.unwrap();
    chain.plain().anvil_mine(Some(1), None).await.unwrap();
    assert!(
        distributor.acceptRoot().call().await.is_err(),
        "a disputed root was acceptable"
    );
    let v = ok_json(&watch().await);
    assert_eq!(v["finding"], "disputed already", "{v}");
    assert_eq!(balance().await, before - bond);

    // the revoker upholds the dispute: the root is gone and the bond comes back
    let revoker = d.roles.revokers[0];
    let resolve = RewardDistributor::resolveDisputeCall {
        epoch: 1,
        root: forged,
        upheld: true,
    };
    chain
        .impersonated(revoker, distributor_addr, resolve.abi_encode())
        .await;
    assert_eq!(
        distributor.pendingRoot().call().await.unwrap().root,
        B256::ZERO
    );
    assert_eq!(balance().await, before);
    assert_eq!(ok_json(&watch().await)["finding"], "nothing pending");
}
