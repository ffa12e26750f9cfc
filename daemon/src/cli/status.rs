//! `openledger status`: chain head, indexer lag, queue depth and live workers.

use std::time::Duration;

use alloy::providers::{Provider, ProviderBuilder};

use super::GlobalArgs;
use crate::jobs::Queue;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON-RPC endpoint to read the head from (skipped if it does not answer) [default: the running dev
    /// stack's, else http://127.0.0.1:8545].
    #[arg(long, env = "OPENLEDGER_RPC_URL")]
    pub rpc_url: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<()> {
    let rpc_url = super::devstack::rpc_url(args.rpc_url.as_deref());
    let db = super::db::open(global).await?;
    let head = async {
        let p = ProviderBuilder::new().connect(&rpc_url).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), p.get_block_number())
            .await
            .ok()?
            .ok()
    }
    .await;
    let checkpoints: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT chain_id, deployment_key, indexed_through FROM indexer_checkpoints ORDER BY chain_id")
            .fetch_all(&db.pool)
            .await?;
    let depth = Queue::new(db.pool.clone()).depth().await?;
    let workers: Vec<(String, Vec<String>, f64)> = sqlx::query_as(
        "SELECT id, kinds, extract(epoch FROM now() - seen_at)::float8 FROM workers
         WHERE seen_at > now() - interval '30 seconds' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({
                "rpc_url": rpc_url,
                "head": head,
                "indexers": checkpoints.iter().map(|(c, k, t)| serde_json::json!({
                    "chain_id": c, "deployment": k, "indexed_through": t,
                    "lag": head.map(|h| h.saturating_sub(*t as u64)),
                })).collect::<Vec<_>>(),
                "jobs": depth.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "workers": workers.iter().map(|(id, kinds, ago)| serde_json::json!({
                    "id": id, "kinds": kinds, "seen_secs_ago": ago,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    match head {
        Some(h) => println!("chain head:  {h} ({rpc_url})"),
        None => println!("chain head:  unknown (no node at {rpc_url})"),
    }
    for (chain, key, through) in &checkpoints {
        let lag = head.map(|h| format!("{} blocks behind", h.saturating_sub(*through as u64)));
        println!(
            "indexer:     chain {chain} deployment {key}: through block {through} {}",
            lag.unwrap_or_default()
        );
    }
    if checkpoints.is_empty() {
        println!("indexer:     nothing indexed yet");
    }
    let total: i64 = depth.iter().map(|(_, n)| n).sum();
    let per: Vec<String> = depth.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("jobs:        {total} ({})", per.join(", "));
    println!("workers:     {} live", workers.len());
    for (id, kinds, ago) in workers {
        println!("  {id}  [{}]  seen {ago:.0}s ago", kinds.join(", "));
    }
    Ok(())
}
