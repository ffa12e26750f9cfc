//! `openledger index`: backfill the deployment's events into Postgres, then follow the head.

use std::time::Duration;

use openledger_indexer::{Indexer, IndexerConfig, Mode};

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub chain: super::ChainArgs,
    /// Blocks to stay behind the head (0 indexes the head; reorgs are repaired either way).
    #[arg(long, default_value_t = 0)]
    pub confirmations: u64,
    /// Milliseconds between head polls.
    #[arg(long, default_value_t = 250)]
    pub poll_interval_ms: u64,
    /// Blocks below the head whose hashes are checked for reorgs.
    #[arg(long, default_value_t = 128)]
    pub reorg_window: u64,
    /// First eth_getLogs range in blocks (it adapts to the node and the event density).
    #[arg(long, default_value_t = 100)]
    pub initial_range: u64,
    /// Largest eth_getLogs range in blocks.
    #[arg(long, default_value_t = 100_000)]
    pub max_range: u64,
    /// Seconds before one RPC call counts as failed.
    #[arg(long, default_value_t = 30)]
    pub rpc_timeout_secs: u64,
    /// Seconds to wait for the node at start-up.
    #[arg(long, default_value_t = 30)]
    pub startup_timeout_secs: u64,
    /// Exit once caught up with the head instead of following it.
    #[arg(long)]
    pub until_head: bool,
}

impl IndexArgs {
    fn config(&self) -> IndexerConfig {
        let mut cfg = IndexerConfig::new(self.chain.rpc_url());
        cfg.confirmations = self.confirmations;
        cfg.poll_interval = Duration::from_millis(self.poll_interval_ms.max(1));
        cfg.reorg_window = self.reorg_window;
        cfg.initial_range = self.initial_range;
        cfg.max_range = self.max_range.max(self.initial_range);
        cfg.rpc_timeout = Duration::from_secs(self.rpc_timeout_secs.max(1));
        cfg.startup_timeout = Duration::from_secs(self.startup_timeout_secs);
        cfg
    }
}

pub async fn run(global: &GlobalArgs, args: IndexArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let deployment = args.chain.deployment().await?;
    let db = super::db::open(global).await?;
    let started = std::time::Instant::now();
    let mut indexer = Indexer::new(cfg, deployment, db.pool.clone()).await?;
    let status = indexer.status();
    let mode = if args.until_head {
        Mode::UntilHead
    } else {
        Mode::Follow
    };
    let progress = progress_bar(status.clone());
    tokio::select! {
        r = indexer.run(mode) => r?,
        _ = super::shutdown_signal() => tracing::info!("shutting down (every committed range is kept)"),
    }
    progress.abort();
    let s = status.borrow().clone();
    let elapsed = started.elapsed().as_secs_f64();
    if global.json {
        println!(
            "{}",
            serde_json::json!({
                "chain_id": s.chain_id, "head": s.head, "indexed_through": s.indexed_through,
                "events_written": s.events_written, "reorgs": s.reorgs, "elapsed_s": elapsed,
            })
        );
    } else {
        println!(
            "chain {}: indexed through block {} (head {}), {} events written in {elapsed:.2}s, {} reorgs repaired",
            s.chain_id, s.indexed_through, s.head, s.events_written, s.reorgs
        );
    }
    Ok(())
}

/// A progress bar of blocks indexed against the head, on a terminal only (logs stay readable elsewhere).
fn progress_bar(
    mut status: tokio::sync::watch::Receiver<openledger_indexer::IndexerStatus>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} blocks {pos}/{len} {wide_bar} {per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while status.changed().await.is_ok() {
            let s = status.borrow().clone();
            bar.set_length(s.head);
            bar.set_position(s.indexed_through.min(s.head));
            bar.set_message(format!("{} events", s.events_written));
        }
        bar.finish_and_clear();
    })
}
