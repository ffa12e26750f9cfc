//! `openledger settle`: build the next settlement epoch and propose its root (resuming one in flight);
//! `settle accept` accepts a root whose challenge delay has passed; `settle verify` recomputes an epoch
//! from the chain and the attribution records; `settle watch` recomputes every pending root and disputes a
//! wrong one; `settle list` shows the epochs.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::chain::{Chain, KeyArgs};
use crate::settlement::{Outcome, SettleConfig, Settler, store, verify};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SettleArgs {
    #[command(subcommand)]
    pub command: Option<SettleCommand>,
    /// The epoch to settle: the next one (or the one in flight). An epoch already settled is printed as it
    /// stands; a later one is refused.
    #[arg(long)]
    pub epoch: Option<u64>,
    /// Build and check the epoch (role, pool balance, a simulated proposal) and print it; store and send
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub chain: super::ChainArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub opts: SettleOpts,
}

#[derive(Debug, clap::Subcommand)]
pub enum SettleCommand {
    /// Recompute an epoch from the chain's logs and the stored attribution records and compare it with the
    /// root on chain; exit non-zero unless they agree.
    Verify {
        #[arg(long)]
        epoch: u64,
        #[command(flatten)]
        chain: super::ChainArgs,
    },
    /// Accept the pending root once its challenge delay has passed (anyone may; `serve --settle-every-secs`
    /// does it by itself).
    Accept {
        #[command(flatten)]
        chain: super::ChainArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        opts: SettleOpts,
    },
    /// Watch the pending root: recompute each one as `verify` does and dispute one that does not match (or
    /// that this database never built) during its challenge delay, posting the RewardDistributor's
    /// `disputeBond` from this key (approved as needed). Runs until stopped; prints one line per finding.
    Watch {
        #[command(flatten)]
        chain: super::ChainArgs,
        #[command(flatten)]
        key: KeyArgs,
        /// Seconds between two looks at the pending root.
        #[arg(long, default_value_t = DEFAULT_WATCH_INTERVAL_SECS)]
        interval_secs: u64,
        /// Look once, print the finding and exit (non-zero when the root is wrong and could not be disputed).
        #[arg(long)]
        once: bool,
    },
    /// The settlement epochs of this deployment, newest first.
    List {
        #[command(flatten)]
        chain: super::ChainArgs,
    },
}

/// Seconds between two looks of `settle watch` at the pending root.
pub const DEFAULT_WATCH_INTERVAL_SECS: u64 = 30;

/// How epochs are cut and proposals followed (shared by `settle` and `serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct SettleOpts {
    /// A block is settled once it is this many blocks below the head (and indexed).
    #[arg(long, env = "OPENLEDGER_FINALITY_DEPTH", default_value_t = 64)]
    pub finality_depth: u64,
    /// Blocks per epoch; 0: an epoch takes everything final when it is built.
    #[arg(long, env = "OPENLEDGER_EPOCH_BLOCKS", default_value_t = 0)]
    pub epoch_blocks: u64,
    /// Seconds without a receipt before a transaction of the daemon's key (a proposal; under `serve` also a
    /// relay, a sponsored payment, a publication) is re-sent at its nonce with higher fees.
    #[arg(long, default_value_t = crate::chain::DEFAULT_BUMP_AFTER_SECS)]
    pub bump_after_secs: u64,
    /// Fee increase of each re-send, in percent (at least 10).
    #[arg(long, default_value_t = crate::chain::DEFAULT_BUMP_PERCENT, value_parser = clap::value_parser!(u64).range(10..=500))]
    pub bump_percent: u64,
    /// Seconds one run waits for the receipt and then for the indexer (the state is kept; a rerun
    /// resumes).
    #[arg(long, default_value_t = 300)]
    pub settle_timeout_secs: u64,
}

impl SettleOpts {
    /// How the daemon's key re-sends a transaction without a receipt.
    pub fn send_policy(&self) -> crate::chain::SendPolicy {
        crate::chain::SendPolicy {
            bump_after: Duration::from_secs(self.bump_after_secs.max(1)),
            bump_percent: self.bump_percent,
        }
    }

    pub fn config(&self) -> SettleConfig {
        SettleConfig {
            finality_depth: self.finality_depth,
            epoch_blocks: self.epoch_blocks,
            bump_after: Duration::from_secs(self.bump_after_secs.max(1)),
            bump_percent: self.bump_percent,
            confirm_timeout: Duration::from_secs(self.settle_timeout_secs.max(1)),
            ..SettleConfig::default()
        }
    }
}

async fn settler(
    global: &GlobalArgs,
    chain: &super::ChainArgs,
    key: Option<&KeyArgs>,
    opts: SettleConfig,
) -> anyhow::Result<(super::db::Database, Settler)> {
    let deployment = chain.deployment().await?;
    let key = match key {
        Some(k) => k.load()?,
        None => None,
    };
    let c = Chain::connect(&chain.rpc_url(), &deployment, key, Duration::from_secs(30)).await?;
    let db = super::db::open(global).await?;
    let s = Settler::new(crate::settlement::Context::new(
        db.pool.clone(),
        deployment,
        c,
        opts,
    )?);
    Ok((db, s))
}

fn progress(global: &GlobalArgs) -> indicatif::ProgressBar {
    if global.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn run(global: &GlobalArgs, args: SettleArgs) -> anyhow::Result<()> {
    match args.command {
        None => {
            let (_db, s) =
                settler(global, &args.chain, Some(&args.key), args.opts.config()).await?;
            let bar = progress(global);
            let out = s.settle(args.epoch, args.dry_run, &bar).await;
            bar.finish_and_clear();
            let out = out.context("settle")?;
            print(global, &out);
        }
        Some(SettleCommand::Verify { epoch, chain }) => {
            let (_db, s) = settler(global, &chain, None, SettleConfig::default()).await?;
            let v = verify::verify(s.context(), epoch).await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&v.json())?);
            } else if v.matches {
                println!(
                    "epoch {epoch}: matches the chain (root {}, total {} wei, {} payments, {} accounts)",
                    v.root, v.total, v.payments, v.accounts
                );
            } else {
                println!("epoch {epoch}: DOES NOT MATCH");
                for d in &v.differences {
                    println!("  {d}");
                }
            }
            if !v.matches {
                bail!(
                    "epoch {epoch} does not match its recomputation ({} differences)",
                    v.differences.len()
                );
            }
        }
        Some(SettleCommand::Accept { chain, key, opts }) => {
            let (_db, s) = settler(global, &chain, Some(&key), opts.config()).await?;
            match s.accept().await? {
                Some(v) if global.json => println!("{}", serde_json::to_string_pretty(&v)?),
                Some(v) => println!("epoch {}: {} (root {})", v["epoch"], v["state"], v["root"]),
                None => bail!(
                    "no root to accept: none is pending, or its challenge period is still running"
                ),
            }
        }
        Some(SettleCommand::Watch {
            chain,
            key,
            interval_secs,
            once,
        }) => watch(global, &chain, &key, interval_secs, once).await?,
        Some(SettleCommand::List { chain }) => {
            let (db, s) = settler(global, &chain, None, SettleConfig::default()).await?;
            let mut rows =
                store::epochs(&db.pool, s.context().chain_id, s.distributor_address()).await?;
            rows.reverse();
            if global.json {
                let v: Vec<_> = rows.iter().map(|r| r.json()).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "epoch  state       blocks           included  held  accounts  total (wei)  root"
                );
                for r in rows {
                    println!(
                        "{:<6} {:<11} {:>7}-{:<8} {:>8} {:>5} {:>9}  {}  {}",
                        r.epoch,
                        r.state,
                        r.from_block,
                        r.to_block,
                        r.included,
                        r.held,
                        r.accounts,
                        r.total,
                        r.root
                    );
                }
            }
        }
    }
    Ok(())
}

fn print(global: &GlobalArgs, out: &Outcome) {
    let v = out.json();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
        return;
    }
    let what = match out {
        Outcome::DryRun(_) => "dry run: would propose",
        Outcome::Epoch(_) => "settled",
        Outcome::Already(_) => "already",
    };
    println!(
        "epoch {} {what} ({}): blocks {}-{}, root {}, total {} wei, {} payments included, {} held, {} accounts",
        v["epoch"],
        v["state"].as_str().unwrap_or("not stored"),
        v["from_block"],
        v["to_block"],
        v["root"].as_str().unwrap_or("-"),
        v["total"].as_str().unwrap_or("-"),
        v["included"],
        v["held"],
        v["accounts"],
    );
    if let Some(reasons) = v["held_reasons"].as_object() {
        for (r, n) in reasons {
            println!("  held {n}: {r}");
        }
    }
}

async fn watch(
    global: &GlobalArgs,
    chain: &super::ChainArgs,
    key: &KeyArgs,
    interval_secs: u64,
    once: bool,
) -> anyhow::Result<()> {
    use crate::settlement::watch::{Finding, watch_once};
    let (_db, s) = settler(global, chain, Some(key), SettleConfig::default()).await?;
    if s.context().chain.signer().is_none() {
        bail!("settle watch disputes from a key: set OPENLEDGER_PRIVATE_KEY or --keystore");
    }
    let mut last: Option<Finding> = None;
    loop {
        let found = watch_once(s.context()).await;
        match &found {
            Ok(f) if last.as_ref() != Some(f) => {
                if global.json {
                    println!("{}", f.json());
                } else {
                    println!("{}", describe(f));
                }
            }
            Ok(_) => {}
            Err(e) if once => bail!("settle watch: {e}"),
            Err(e) => tracing::warn!(error = %e, "settle watch: this round failed; trying again"),
        }
        if once {
            if let Ok(Finding::TooLate { epoch, .. }) = &found {
                bail!(
                    "epoch {epoch}'s pending root is wrong and its challenge delay is over: ask the revoker"
                );
            }
            return Ok(());
        }
        if let Ok(f) = found {
            last = Some(f);
        }
        tokio::time::sleep(Duration::from_secs(interval_secs.max(1))).await;
    }
}

fn describe(f: &crate::settlement::watch::Finding) -> String {
    use crate::settlement::watch::Finding;
    match f {
        Finding::Nothing => "no root pending".into(),
        Finding::Matches { epoch, root } => format!("epoch {epoch}: pending root {root} matches"),
        Finding::Disputed {
            epoch,
            root,
            disputer,
        } => format!("epoch {epoch}: pending root {root} is disputed by {disputer:#x}"),
        Finding::TooLate {
            epoch,
            root,
            reason,
        } => format!(
            "epoch {epoch}: pending root {root} is WRONG and its challenge delay is over (ask the revoker): {reason}"
        ),
        Finding::DisputedNow {
            epoch,
            root,
            reason,
            tx,
        } => format!("epoch {epoch}: pending root {root} is WRONG; disputed in {tx}: {reason}"),
    }
}
