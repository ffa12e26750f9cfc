//! Bad input gets a clear error (or a logged skip), never a crash loop or a silent gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;

use std::time::{Duration, Instant};

use alloy::primitives::{Address, Bytes, keccak256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::TransactionRequest;
use common::TestChain;
use openledger_chain::ContractKind;
use openledger_indexer::{Indexer, IndexerConfig, IndexerError, Mode};
use sqlx::PgPool;

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_node_that_does_not_answer_is_a_clear_error(pool: PgPool) {
    let chain = TestChain::start().await;
    // a socket that accepts connections (into its backlog) and never answers, held for the whole test
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = IndexerConfig::new(format!(
        "http://127.0.0.1:{}",
        silent.local_addr().unwrap().port()
    ));
    cfg.startup_timeout = Duration::from_secs(1);
    cfg.rpc_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = Indexer::new(cfg, chain.deployment.clone(), pool)
        .await
        .unwrap_err();
    assert!(matches!(err, IndexerError::NoNode { .. }), "{err}");
    assert!(
        err.to_string().contains("no JSON-RPC node answers"),
        "{err}"
    );
    // it gives up instead of retrying for ever: a bound far above its 1 s timeouts, not a measure of speed
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "gives up after the start-up timeout"
    );
    drop(silent);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_manifest_for_another_chain_or_without_code_is_refused(pool: PgPool) {
    let chain = TestChain::start().await;

    let mut wrong_chain = chain.deployment.clone();
    wrong_chain.chain_id = 10;
    let err = Indexer::new(chain.config(), wrong_chain, pool.clone())
        .await
        .unwrap_err();
    let node_chain = chain.deployment.chain_id;
    assert!(
        matches!(err, IndexerError::WrongChain { manifest: 10, node, .. } if node == node_chain),
        "{err}"
    );

    let mut no_code = chain.deployment.clone();
    no_code.contracts.get_mut("Staking").unwrap().address = Address::repeat_byte(0x42);
    let err = Indexer::new(chain.config(), no_code, pool.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IndexerError::NotDeployed {
                contract: "Staking",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no code"), "{err}");

    let mut missing = chain.deployment.clone();
    missing.contracts.remove("FeeRouter");
    let err = Indexer::new(chain.config(), missing, pool.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("lacks contract FeeRouter"),
        "{err}"
    );

    let mut bad_cfg = chain.config();
    bad_cfg.initial_range = 0;
    let err = Indexer::new(bad_cfg, chain.deployment.clone(), pool.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, IndexerError::Config(_)), "{err}");

    // nothing was written by the refused attempts
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM indexer_checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn an_unknown_event_is_skipped_and_the_rest_indexed(pool: PgPool) {
    let chain = TestChain::start().await;
    let router = chain.deployment.address(ContractKind::FeeRouter).unwrap();
    // Replace the FeeRouter's code with one that emits LOG1(topic) for any call: an event no ABI knows.
    let topic = keccak256("SomethingNew(uint256)");
    let mut code = vec![0x7f];
    code.extend_from_slice(topic.as_slice());
    code.extend_from_slice(&[0x60, 0x00, 0x60, 0x00, 0xa1, 0x00]); // PUSH1 0 PUSH1 0 LOG1 STOP
    let p = chain.plain();
    p.anvil_set_code(router, Bytes::from(code)).await.unwrap();
    let sender = TestChain::address_of(0);
    let tx = TransactionRequest::default()
        .from(sender)
        .to(router)
        .input(Bytes::from(vec![1u8]).into());
    let receipt = p
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(receipt.inner.logs().len(), 1, "the log is on chain");

    let indexer = chain.index(&pool, chain.config()).await;
    assert_eq!(
        indexer.indexed_through(),
        chain.head().await,
        "no gap: the indexer moved past it"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_events WHERE tx_hash = $1")
        .bind(format!("{:#x}", receipt.transaction_hash))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the unknown event is skipped");
    let deployment_events: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        deployment_events > 20,
        "the deployment's own events are indexed"
    );
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_second_indexer_on_the_same_database_never_duplicates(pool: PgPool) {
    let chain = TestChain::start().await;
    let mut cfg = chain.config();
    cfg.initial_range = 1;
    cfg.max_range = 1;
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (cfg, d, pool) = (cfg.clone(), chain.deployment.clone(), pool.clone());
            tokio::spawn(async move {
                Indexer::new(cfg, d, pool)
                    .await
                    .unwrap()
                    .run(Mode::UntilHead)
                    .await
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let fresh = common::fresh_database(&pool).await;
    chain.index(&fresh, chain.config()).await;
    assert_eq!(
        common::dump(&pool).await,
        common::dump(&fresh).await,
        "two racing indexers = one"
    );
    common::drop_fresh(fresh).await;
}
