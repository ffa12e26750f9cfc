//! Reorgs and interruptions: whatever happens, the database ends up equal to a fresh index of the final
//! canonical chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::send;

use std::time::Duration;

use alloy::primitives::{U256, keccak256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::TransactionRequest;
use alloy::rpc::types::anvil::{ReorgOptions, TransactionData};
use alloy::sol_types::SolCall;
use common::{STALL, TestChain, dump, ether, fresh_database};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{FeeRouter, OpenToken, Registry};
use openledger_indexer::{Indexer, Mode};
use sqlx::PgPool;

/// A model to pay for, a funded payer (anvil #2) with a standing allowance; returns the model id.
async fn setup_payments(chain: &TestChain) -> U256 {
    let d = &chain.deployment;
    let addr = |k| d.address(k).unwrap();
    let token = |i| OpenToken::new(addr(ContractKind::OpenToken), chain.actor(i));
    let registry = |i| Registry::new(addr(ContractKind::Registry), chain.actor(i));
    send!(token(0).transfer(TestChain::address_of(2), ether(1_000_000)));
    send!(token(0).transfer(TestChain::address_of(3), ether(100)));
    send!(token(2).approve(addr(ContractKind::FeeRouter), U256::MAX));
    send!(token(3).approve(addr(ContractKind::Registry), U256::MAX));
    send!(registry(3).createDatanet("ipfs://d".into(), vec![], false, vec![]));
    send!(registry(3).contribute(U256::from(1), keccak256("x"), "u".into()));
    send!(registry(3).reviewContributions(U256::from(1), vec![U256::from(1)], true));
    send!(registry(3).publishVersion(U256::from(1), keccak256("v"), 1, "u".into()));
    let spec = Registry::ModelSpec {
        baseModel: "base".into(),
        baseModelHash: keccak256("b"),
        datanetIds: vec![U256::from(1)],
        datanetVersions: vec![1],
        trainingConfigHash: keccak256("c"),
        metadataURI: "u".into(),
    };
    send!(registry(3).registerModel(spec));
    U256::from(1)
}

fn payment(chain: &TestChain, model: U256, tag: &str) -> TransactionRequest {
    let router = chain.deployment.address(ContractKind::FeeRouter).unwrap();
    let data = FeeRouter::payInferenceCall {
        modelId: model,
        requestId: keccak256(tag),
        amount: ether(1),
    }
    .abi_encode();
    TransactionRequest::default()
        .from(TestChain::address_of(2))
        .to(router)
        .input(data.into())
}

async fn pay(chain: &TestChain, model: U256, tag: &str) {
    let router = FeeRouter::new(
        chain.deployment.address(ContractKind::FeeRouter).unwrap(),
        chain.actor(2),
    );
    let r = router
        .payInference(model, keccak256(tag), ether(1))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());
}

/// Index the final chain from scratch into a new database and compare every table.
async fn assert_equals_fresh_index(chain: &TestChain, pool: &PgPool, what: &str) {
    let fresh = fresh_database(pool).await;
    chain.index(&fresh, chain.config()).await;
    let (a, b) = (dump(pool).await, dump(&fresh).await);
    for ((table, rows_a), (_, rows_b)) in a.iter().zip(b.iter()) {
        assert_eq!(
            rows_a.len(),
            rows_b.len(),
            "{what}: {table} row count differs from a fresh index"
        );
        assert_eq!(rows_a, rows_b, "{what}: {table} differs from a fresh index");
    }
    common::drop_fresh(fresh).await;
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn reorgs_of_depth_1_to_20_leave_the_canonical_chain(pool: PgPool) {
    let chain = TestChain::start().await;
    let model = setup_payments(&chain).await;
    for i in 0..30 {
        pay(&chain, model, &format!("history-{i}")).await;
    }
    let mut indexer = Indexer::new(chain.config(), chain.deployment.clone(), pool.clone())
        .await
        .unwrap();
    indexer.run(Mode::UntilHead).await.unwrap();
    let payments_before: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(payments_before, 30);

    for (round, depth) in [1u64, 2, 5, 11, 20].into_iter().enumerate() {
        // replace the last `depth` blocks with blocks holding other payments
        let pairs = (0..3)
            .map(|k| {
                (
                    TransactionData::JSON(payment(&chain, model, &format!("reorg-{round}-{k}"))),
                    k % depth,
                )
            })
            .collect();
        chain
            .plain()
            .anvil_reorg(ReorgOptions {
                depth,
                tx_block_pairs: pairs,
            })
            .await
            .unwrap();
        // and grow the new branch a little
        pay(&chain, model, &format!("after-{round}")).await;
        indexer.run(Mode::UntilHead).await.unwrap();
        assert_eq!(indexer.indexed_through(), chain.head().await);
        assert_equals_fresh_index(&chain, &pool, &format!("after a reorg of depth {depth}")).await;
    }
    assert!(
        indexer.status().borrow().reorgs >= 5,
        "every reorg was detected and repaired"
    );

    // a rollback: the chain gets shorter than what was indexed
    chain.plain().anvil_rollback(Some(4)).await.unwrap();
    indexer.run(Mode::UntilHead).await.unwrap();
    assert_eq!(indexer.indexed_through(), chain.head().await);
    assert_equals_fresh_index(&chain, &pool, "after a rollback of 4 blocks").await;

    // nothing from orphaned blocks remains: every stored block hash is canonical
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT DISTINCT block_number, block_hash FROM chain_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (n, hash) in stored {
        let block = chain
            .plain()
            .get_block_by_number((n as u64).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            format!("{:#x}", block.header.hash),
            hash,
            "block {n} is canonical"
        );
    }
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn killed_mid_backfill_resumes_without_gap_or_duplicate(pool: PgPool) {
    let chain = TestChain::start().await;
    let model = setup_payments(&chain).await;
    for i in 0..40 {
        pay(&chain, model, &format!("p-{i}")).await;
    }
    let mut cfg = chain.config();
    // tiny ranges: many transactions, many points to be killed at
    cfg.initial_range = 2;
    cfg.max_range = 2;
    let deployment = chain.deployment.clone();
    let start = chain.deployment.start_block as i64;
    // kill once the checkpoint passes each threshold, after a jitter that lands inside or between ranges
    let mut interrupted = 0;
    for (threshold, jitter_us) in [
        (5i64, 0u64),
        (12, 300),
        (20, 900),
        (28, 1_500),
        (36, 2_500),
        (44, 4_000),
    ] {
        let (cfg, deployment, pool2) = (cfg.clone(), deployment.clone(), pool.clone());
        let task = tokio::spawn(async move {
            let mut indexer = Indexer::new(cfg, deployment, pool2).await.unwrap();
            indexer.run(Mode::UntilHead).await.unwrap();
        });
        let deadline = tokio::time::Instant::now() + STALL;
        loop {
            let through: Option<i64> =
                sqlx::query_scalar("SELECT indexed_through FROM indexer_checkpoints")
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            if through.is_some_and(|t| t >= start + threshold) || task.is_finished() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backfill stalled"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_micros(jitter_us)).await;
        task.abort(); // drops the indexer wherever it is, mid-transaction included
        match task.await {
            // the kill landed while it ran
            Err(e) if e.is_cancelled() => interrupted += 1,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
            // it reached the head first: the later rounds start there
            Ok(()) => {}
        }
    }
    // however fast the machine, the first kills land mid-backfill (the test is not vacuous)
    assert!(
        interrupted >= 1,
        "no kill interrupted the backfill: it finished before each one"
    );
    let mut indexer = Indexer::new(cfg, deployment, pool.clone()).await.unwrap();
    indexer.run(Mode::UntilHead).await.unwrap();
    assert_equals_fresh_index(&chain, &pool, "after six kills").await;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(payments, 40);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn follows_the_head_as_blocks_arrive(pool: PgPool) {
    let chain = TestChain::start().await;
    let model = setup_payments(&chain).await;
    let mut cfg = chain.config();
    cfg.poll_interval = Duration::from_millis(20);
    let mut indexer = Indexer::new(cfg, chain.deployment.clone(), pool.clone())
        .await
        .unwrap();
    let mut status = indexer.status();
    let follower = tokio::spawn(async move { indexer.run(Mode::Follow).await });
    for i in 0..5 {
        pay(&chain, model, &format!("live-{i}")).await;
        let head = chain.head().await;
        tokio::time::timeout(STALL, status.wait_for(|s| s.indexed_through >= head))
            .await
            .expect("the follower catches up with each new block")
            .unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_payments")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(seen, i + 1);
    }
    follower.abort();
}

/// The database goes away for a while as the indexer follows the head (blocks keep coming), then comes back:
/// the indexer, rerun after each transient failure as `serve` does, catches up and the index equals a fresh
/// one: nothing missed, nothing twice.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_database_outage_while_following_resumes_without_gap_or_duplicate(pool: PgPool) {
    let chain = TestChain::start().await;
    let model = setup_payments(&chain).await;
    let (proxied, proxy) = common::proxy::pool_through(&pool).await;
    let mut cfg = chain.config();
    cfg.poll_interval = Duration::from_millis(20);
    let mut indexer = Indexer::new(cfg, chain.deployment.clone(), proxied)
        .await
        .unwrap();
    let follower = tokio::spawn(async move {
        loop {
            match indexer.run(Mode::Follow).await {
                Ok(()) => return,
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("the indexer stopped: {e}"),
            }
        }
    });
    let indexed_through = || async {
        sqlx::query_scalar::<_, i64>("SELECT max(indexed_through) FROM indexer_checkpoints")
            .fetch_one(&pool)
            .await
            .unwrap_or(0) as u64
    };
    let (node, indexed) = (&chain, &indexed_through);
    let caught_up = |what: &'static str| async move {
        let head = node.head().await;
        tokio::time::timeout(STALL, async {
            while indexed().await < head {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the indexer never reached block {head}"));
    };
    pay(&chain, model, "before").await;
    caught_up("before the outage").await;
    proxy.cut();
    for i in 0..5 {
        pay(&chain, model, &format!("during-{i}")).await;
    }
    proxy.restore();
    pay(&chain, model, "after").await;
    caught_up("after the outage").await;
    follower.abort();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, 7);
    assert_equals_fresh_index(&chain, &pool, "after a database outage").await;
}
