//! Settlement end to end on anvil + Postgres, through the real `openledger` binary: three contributors
//! contribute, a curator accepts, a tiny adapter is trained, a payer pays FeeRouter and infers, every
//! answer is attributed; then `openledger settle` proposes reward roots (killed at each state of the
//! submission and restarted), a reorg makes an epoch re-derive, bad input is refused with the state
//! unchanged, the root is accepted, `openledger claim` pays each contributor exactly what the
//! attribution weights say, and `openledger settle verify` agrees with the chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::daemon as support;
use openledger_testkit::send;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
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
use openledger_model::{BaseModel, LlamaConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;
use tokio::sync::watch;

/// The contributors (anvil accounts), the payer, and the daemon (relayer, curator, settler).
const CONTRIBUTORS: [usize; 3] = [2, 3, 4];
const PAYER: usize = 5;
const DAEMON: usize = 1;

struct World {
    chain: TestChain,
    pool: PgPool,
    app: axum::Router,
    api_url: String,
    manifest: PathBuf,
    _data: tempfile::TempDir,
    model_id: U256,
    model_name: String,
    stop: watch::Sender<bool>,
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
        openledger_daemon::uploads::store(
            &pool,
            TestChain::address_of(who),
            d.chain_id,
            U256::from(1),
            &c,
            "r.jsonl",
            "ipfs://r",
        )
        .await
        .unwrap();
        send!(registry(who).contribute(U256::from(1), c.hash, format!("ipfs://r{i}")));
        ids.push(U256::from(i + 1));
    }
    send!(registry(DAEMON).reviewContributions(U256::from(1), ids, true));

    let data = tempfile::tempdir().unwrap();
    BaseModel::random(LlamaConfig::tiny(), 3)
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
    World {
        chain,
        pool,
        app,
        api_url,
        manifest,
        _data: data,
        model_id,
        model_name: format!("ft-{job_id}"),
        stop,
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
        let r = post_json(&self.app, "/v1/chat/completions", None, body).await;
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

// the workers, the indexer, the HTTP server and the settle processes need more than 5 connections
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn contributors_are_paid_exactly_once(
    opts: sqlx::postgres::PgPoolOptions,
    conn: sqlx::postgres::PgConnectOptions,
) {
    let pool = opts.max_connections(12).connect_with(conn).await.unwrap();
    let w = world(pool).await;
    let rid = |n: u8| B256::repeat_byte(n);
    w.pay_and_infer(rid(1), 0).await;
    w.pay_and_infer(rid(2), 4).await;
    // paid, never used: held
    w.pay(rid(9)).await;

    // ---- bad input: refused, nothing stored
    let none = "SELECT count(*) FROM settlement_epochs";
    failed_with(
        &w.settle(&["--epoch-blocks", "1000000"], &[]).await,
        "is not final yet",
    );
    failed_with(
        &w.settle(&["--epoch", "2"], &[]).await,
        "the next epoch is 1",
    );
    let mut stranger = vec!["--json", "settle", "--finality-depth", "0"];
    stranger.push("--dry-run");
    failed_with(
        &w.cli(2, &stranger, &[]).await,
        "does not have SETTLER_ROLE",
    );
    // the pool drained (as if the index held payments the distributor never received)
    let distributor = w.addr(ContractKind::RewardDistributor);
    let open = w.addr(ContractKind::OpenToken);
    let held_by_pool = w.balance(distributor).await;
    assert_eq!(
        held_by_pool,
        ether(3) * U256::from(4) / U256::from(10),
        "40% of three payments"
    );
    let out = OpenToken::transferCall {
        to: TestChain::address_of(0),
        value: held_by_pool,
    }
    .abi_encode();
    w.chain.impersonated(distributor, open, out).await;
    failed_with(
        &w.settle(&[], &[]).await,
        "but the RewardDistributor holds 0 wei",
    );
    let back = OpenToken::new(open, w.chain.actor(0));
    send!(back.transfer(distributor, held_by_pool));
    assert_eq!(w.count(none).await, 0, "bad input stored nothing");

    // ---- a dry run: the epoch as it would be, nothing stored or sent
    let dry = ok_json(&w.settle(&["--dry-run"], &[]).await);
    assert_eq!(dry["epoch"], 1);
    assert_eq!(dry["included"], 2);
    assert_eq!(dry["held"], 1, "{dry}");
    assert_eq!(
        dry["held_reasons"]["no inference has used this payment yet"], 1,
        "{dry}"
    );
    assert_eq!(w.count(none).await, 0);
    // fixed windows of 2 blocks: the deployment's quiet first windows do not hold the epoch back, it
    // takes every whole window that is final
    let windows = ok_json(&w.settle(&["--dry-run", "--epoch-blocks", "2"], &[]).await);
    assert_eq!(windows["included"], 2, "{windows}");
    let from = windows["from_block"].as_u64().unwrap();
    let to = windows["to_block"].as_u64().unwrap();
    assert_eq!((to + 1 - from) % 2, 0, "whole windows: {windows}");
    assert!(to + 2 > w.chain.head().await, "{windows}");
    assert_eq!(w.count(none).await, 0);

    // ---- epoch 1, killed after the transaction is stored and before it is sent
    let crash = w
        .settle(&[], &[("OPENLEDGER_FAILPOINT", "before-send")])
        .await;
    assert!(!crash.status.success());
    assert_eq!(
        w.count("SELECT count(*) FROM settlement_epochs WHERE state = 'submitted'")
            .await,
        1
    );
    assert_eq!(
        w.distributor().latestEpoch().call().await.unwrap(),
        0,
        "nothing was sent"
    );
    let e1 = ok_json(&w.settle(&[], &[]).await);
    assert_eq!(e1["state"], "final", "{e1}");
    assert_eq!(e1["epoch"], 1);
    assert_eq!(w.proposals(1).await, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM settlement_txs WHERE kind = 'propose'")
            .await,
        1,
        "the stored transaction itself was sent after the restart"
    );
    // settling epoch 1 again: reported as it stands, nothing sent
    let again = ok_json(&w.settle(&["--epoch", "1"], &[]).await);
    assert_eq!(again["root"], e1["root"]);
    assert_eq!(w.proposals(1).await, 1);
    // nothing new: a clear refusal
    failed_with(&w.settle(&[], &[]).await, "nothing to settle");

    // ---- epoch 2, killed after the send, before the receipt
    w.pay_and_infer(rid(3), 5).await;
    let crash = w
        .settle(&[], &[("OPENLEDGER_FAILPOINT", "after-send")])
        .await;
    assert!(!crash.status.success());
    let e2 = ok_json(&w.settle(&[], &[]).await);
    assert_eq!(
        (e2["epoch"].as_i64(), e2["state"].as_str()),
        (Some(2), Some("final")),
        "{e2}"
    );
    assert_eq!(w.proposals(2).await, 1);

    // ---- epoch 3, killed after the receipt, before the database knew
    w.pay_and_infer(rid(4), 7).await;
    let crash = w
        .settle(&[], &[("OPENLEDGER_FAILPOINT", "after-receipt")])
        .await;
    assert!(!crash.status.success());
    let e3 = ok_json(&w.settle(&[], &[]).await);
    assert_eq!(
        (e3["epoch"].as_i64(), e3["state"].as_str()),
        (Some(3), Some("final")),
        "{e3}"
    );
    for e in 1..=3 {
        assert_eq!(w.proposals(e).await, 1, "epoch {e} proposed exactly once");
    }
    assert_eq!(w.distributor().latestEpoch().call().await.unwrap(), 3);

    // ---- a reorg between build and proposal: the build is discarded and the epoch derived again
    w.pay_and_infer(rid(5), 1).await;
    let paid_block: i64 =
        sqlx::query_scalar("SELECT block_number FROM inference_payments WHERE request_id = $1")
            .bind(rid(5).to_string())
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let crash = w
        .settle(&[], &[("OPENLEDGER_FAILPOINT", "after-build")])
        .await;
    assert!(!crash.status.success());
    assert_eq!(
        w.count("SELECT count(*) FROM settlement_epochs WHERE epoch = 4 AND state = 'built'")
            .await,
        1
    );
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
        "SELECT error FROM settlement_epochs WHERE epoch = 4 AND state = 'failed'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert!(failed.contains("reorganised"), "{failed}");
    let still_paid = w
        .count(&format!(
            "SELECT count(*) FROM inference_payments WHERE request_id = '{}'",
            rid(5)
        ))
        .await;
    if still_paid == 0 {
        // the payment left the chain: nothing payable is new
        failed_with(&rederived, "nothing to settle");
        assert_eq!(w.distributor().latestEpoch().call().await.unwrap(), 3);
    } else {
        // anvil mined it again in a later block: epoch 4 includes it once
        let e4 = ok_json(&rederived);
        assert_eq!(e4["state"], "final", "{e4}");
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

    // ---- the latest root becomes claimable after the challenge delay
    let latest = w.distributor().latestEpoch().call().await.unwrap();
    failed_with(
        &w.cli(DAEMON, &["settle", "accept", "--finality-depth", "0"], &[])
            .await,
        "no root to accept",
    );
    w.chain.plain().anvil_increase_time(3601).await.unwrap();
    w.chain.plain().anvil_mine(Some(1), None).await.unwrap();
    w.indexed().await;
    let acc = ok_json(
        &w.cli(
            DAEMON,
            &["--json", "settle", "accept", "--finality-depth", "0"],
            &[],
        )
        .await,
    );
    assert_eq!(acc["state"], "accepted", "{acc}");
    assert_eq!(acc["epoch"].as_u64(), Some(latest));
    let list = ok_json(&w.cli(DAEMON, &["--json", "settle", "list"], &[]).await);
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states[0], "accepted", "{list}");
    assert!(states[1..].iter().all(|s| *s == "superseded"), "{list}");

    // ---- claims: each contributor gets exactly floor(Σ pool · weight / 1e6)
    let settled: Vec<B256> = if latest == 4 {
        vec![rid(1), rid(2), rid(3), rid(4), rid(5)]
    } else {
        vec![rid(1), rid(2), rid(3), rid(4)]
    };
    let want = expected(&w, &settled).await;
    assert!(
        want.len() >= 2,
        "the answers were attributed to several contributors: {want:?}"
    );
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
    // the pool: what was claimed left it; the protocol's part and the held payment stay
    let total = u256_of(&list[0]["total"]);
    let inflow: String =
        sqlx::query_scalar("SELECT sum(pool_amount)::text FROM inference_payments")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let inflow: U256 = inflow.parse().unwrap();
    assert_eq!(pool_before - w.balance(distributor).await, claimed);
    assert_eq!(
        w.balance(distributor).await,
        inflow - claimed,
        "claims + unclaimed = pool inflow"
    );
    let unsettled = ether(1) * U256::from(4) / U256::from(10); // the held payment
    assert_eq!(
        total + unsettled,
        inflow,
        "every included pool is in the root"
    );
    let treasury = w.distributor_treasury_leaf(&list).await;
    assert_eq!(
        claimed + treasury,
        total,
        "contributors + protocol = the root's total"
    );

    // ---- a wrong or stale proof is refused by the contract
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

    // ---- the audit: recomputed from the chain and the records, equal to the roots on chain
    for e in 1..=latest {
        let v = ok_json(
            &w.cli(
                DAEMON,
                &["--json", "settle", "verify", "--epoch", &e.to_string()],
                &[],
            )
            .await,
        );
        assert_eq!(v["matches"], true, "epoch {e}: {v}");
    }
    // a record changed after the fact is caught
    let (id, canonical): (String, String) = sqlx::query_as(
        "SELECT a.inference_id, a.record_canonical FROM attributions a JOIN inferences i ON i.id = a.inference_id
         WHERE i.request_id = $1",
    )
    .bind(rid(1).to_string())
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
        .cli(DAEMON, &["settle", "verify", "--epoch", "1"], &[])
        .await;
    failed_with(&bad, "does not match");
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("hashes to"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    sqlx::query("UPDATE attributions SET record_canonical = $2 WHERE inference_id = $1")
        .bind(&id)
        .bind(&canonical)
        .execute(&w.pool)
        .await
        .unwrap();

    // ---- a stuck proposal is bumped: the node mines nothing until told; the settler re-sends the same
    // nonce with higher fees, and exactly one of them is mined
    w.pay_and_infer(rid(6), 2).await;
    w.indexed().await;
    let node = w.chain.plain();
    node.anvil_set_auto_mine(false).await.unwrap();
    let next = w.distributor().latestEpoch().call().await.unwrap() + 1;
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

    // ---- a revoked root: its payments go to the next epoch, once, on top of the build before it
    let revoker = w.chain.deployment.roles.revokers[0];
    w.chain
        .impersonated(
            revoker,
            distributor,
            RewardDistributor::revokeRootCall {}.abi_encode(),
        )
        .await;
    w.pay_and_infer(rid(7), 3).await;
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
    assert_eq!(carried, vec![rid(6).to_string(), rid(7).to_string()]);
    // extending the accepted build, not the revoked one: its total grows by exactly the two pools
    let accepted_total = u256_of(&list[0]["total"]);
    assert_eq!(
        u256_of(&after["total"]),
        accepted_total + ether(2) * U256::from(4) / U256::from(10)
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
    let _ = w.stop.send(true);
}

fn u256_of(v: &Value) -> U256 {
    v.as_str().unwrap().parse().unwrap()
}

impl World {
    /// The protocol's (treasury's) cumulative amount in the accepted build.
    async fn distributor_treasury_leaf(&self, list: &Value) -> U256 {
        let treasury = list[0]["treasury"].as_str().unwrap();
        let c: String = sqlx::query_scalar(
            "SELECT l.cumulative::text FROM settlement_leaves l JOIN settlement_epochs e ON e.id = l.epoch_id
             WHERE e.state = 'accepted' AND l.account = $1",
        )
        .bind(treasury)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        c.parse().unwrap()
    }
}
