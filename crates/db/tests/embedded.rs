//! The private cluster: created, used, stopped on drop, and found again with its data on the next start.
//! Needs the machine's Postgres server binaries (scripts/setup.sh installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use openledger_db::{EmbeddedPostgres, connect_and_migrate};

#[tokio::test]
async fn private_cluster_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg");

    let pg = tokio::task::spawn_blocking({
        let path = path.clone();
        move || EmbeddedPostgres::start(&path)
    })
    .await
    .unwrap()
    .unwrap();
    let url = pg.url();
    let pool = connect_and_migrate(&url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    sqlx::query("INSERT INTO indexer_checkpoints (chain_id, deployment_key, indexed_through) VALUES (1, $1, 42)")
        .bind(format!("0x{}", "ab".repeat(20)))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // a second start while it runs joins it instead of starting another
    let joined = tokio::task::spawn_blocking({
        let path = path.clone();
        move || EmbeddedPostgres::start(&path)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(joined.port(), pg.port());
    drop(joined); // not the owner: must not stop it
    let pool = connect_and_migrate(&url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    pool.close().await;

    drop(pg); // the owner stops it
    let err = connect_and_migrate(&url, 1, Duration::from_millis(300)).await;
    assert!(err.is_err(), "stopped with its owner");

    // started again: same data
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&path))
        .await
        .unwrap()
        .unwrap();
    let pool = connect_and_migrate(&pg.url(), 1, Duration::from_secs(10))
        .await
        .unwrap();
    let through: i64 =
        sqlx::query_scalar("SELECT indexed_through FROM indexer_checkpoints WHERE chain_id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(through, 42, "data survives a restart");
}
