//! Command-line interface: global options, logging, and dispatch to one file per subcommand.
//!
//! The top floor with `serve.rs`: may import anything below; nothing imports `cli`.

mod attribution;
mod claim;
mod credits;
mod db;
mod deploy;
pub mod devstack;
mod index;
mod infer;
mod jobs;
mod keys;
pub mod malloc;
mod migrate;
mod models;
mod serve;
mod settle;
mod status;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// OpenLedger daemon and admin CLI. Logs go to stderr, results to stdout (`--json` for machines).
#[derive(Debug, Parser)]
#[command(name = "openledger", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand shares.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Postgres to use. Without it: the running dev stack's (`scripts/dev.sh`), else a private cluster
    /// started under `--data-dir` (and stopped on exit).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the daemon keeps its state (the private Postgres cluster and the base models among it)
    /// [default: the running dev stack's, else $XDG_DATA_HOME/openledger or ~/.local/share/openledger].
    #[arg(long, env = "OPENLEDGER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Seconds to keep retrying while Postgres does not accept connections (e.g. still starting).
    #[arg(
        long,
        env = "OPENLEDGER_DB_CONNECT_TIMEOUT_SECS",
        global = true,
        default_value_t = 30
    )]
    pub db_connect_timeout_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `openledger_indexer=debug`.
    #[arg(
        long,
        env = "RUST_LOG",
        global = true,
        default_value = "info,sqlx::postgres::notice=error"
    )]
    pub log: String,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalArgs {
    /// The Postgres URL to use: the one named; else, unless a data directory was named, the running dev
    /// stack's; `None`: a private cluster under [`Self::data_dir`].
    pub fn database_url(&self) -> Option<String> {
        if self.database_url.is_some() {
            return self.database_url.clone();
        }
        if self.data_dir.is_some() {
            return None;
        }
        devstack::current().and_then(|s| s.database_url.clone())
    }

    /// The data directory: the one named, else the running dev stack's, else the user's default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| devstack::current().and_then(|s| s.data_dir.clone()))
            .unwrap_or_else(default_data_dir)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate(migrate::MigrateArgs),
    /// Index the contracts' events into Postgres: backfill, then follow the head.
    Index(index::IndexArgs),
    /// Run the REST API, the indexer and the job workers.
    Serve(Box<serve::ServeArgs>),
    /// Deploy the contract suite and write its manifest.
    Deploy(deploy::DeployArgs),
    /// Create, list and revoke operator API keys.
    Keys(keys::KeysArgs),
    /// Grant, revoke and show inference credit (what sponsored inferences of an address draw on).
    Credits(credits::CreditsArgs),
    /// List, show, cancel and retry jobs.
    Jobs(jobs::JobsArgs),
    /// Chain head, indexer lag, queue depth, workers.
    Status(status::StatusArgs),
    /// Fine-tune a base model on Datanets (a LoRA adapter), then register it on chain.
    Train(Box<train::TrainArgs>),
    /// List or add base models.
    Models(models::ModelsArgs),
    /// Chat with a served model (streams the answer).
    Infer(Box<infer::InferArgs>),
    /// Proof of Attribution records: show one, or verify it against the public artifacts.
    Attribution(attribution::AttributionArgs),
    /// Settle the next epoch: split paid inferences by attribution and propose the reward root
    /// (`verify`, `accept`, `list` as subcommands).
    Settle(Box<settle::SettleArgs>),
    /// Claim an address's OPEN rewards (the proof comes from a running `serve`).
    Claim(Box<claim::ClaimArgs>),
}

/// `$XDG_DATA_HOME/openledger`, else `~/.local/share/openledger`, else `./.openledger`.
fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("openledger");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/openledger"),
        None => PathBuf::from(".openledger"),
    }
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // `serve` is a stack of its own and `deploy` makes a new deployment: neither follows the dev stack
    devstack::init(!matches!(
        cli.command,
        Command::Serve(_) | Command::Deploy(_)
    ));
    if let Some(s) = devstack::current() {
        tracing::info!(file = %s.path.display(), "following the running dev stack (scripts/dev.sh) where no option names another");
    }
    let result = match cli.command {
        Command::Migrate(args) => migrate::run(&cli.global, args).await,
        Command::Index(args) => index::run(&cli.global, args).await,
        Command::Serve(args) => serve::run(&cli.global, *args).await,
        Command::Deploy(args) => deploy::run(&cli.global, args).await,
        Command::Keys(args) => keys::run(&cli.global, args).await,
        Command::Credits(args) => credits::run(&cli.global, args).await,
        Command::Jobs(args) => jobs::run(&cli.global, args).await,
        Command::Status(args) => status::run(&cli.global, args).await,
        Command::Train(args) => train::run(&cli.global, *args).await,
        Command::Models(args) => models::run(&cli.global, args).await,
        Command::Infer(args) => infer::run(&cli.global, *args).await,
        Command::Attribution(args) => attribution::run(&cli.global, args).await,
        Command::Settle(args) => settle::run(&cli.global, *args).await,
        Command::Claim(args) => claim::run(&cli.global, *args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, each said once: a cause whose text its error already
/// includes (`#[error("{path}: {source}")]`) is not repeated.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Which chain, and which deployment of the suite on it (`index` and `serve`).
#[derive(Debug, clap::Args)]
pub struct ChainArgs {
    /// JSON-RPC endpoint; `ws://` follows new heads by subscription, `http://` polls
    /// [default: the running dev stack's, else http://127.0.0.1:8545].
    #[arg(long, env = "OPENLEDGER_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Deployment manifest written by scripts/deploy.sh [default: the running dev stack's, else
    /// deployments/<the node's chain id>.json].
    #[arg(long, env = "OPENLEDGER_MANIFEST")]
    pub manifest: Option<PathBuf>,
}

impl ChainArgs {
    /// The JSON-RPC endpoint (see the option).
    pub fn rpc_url(&self) -> String {
        devstack::rpc_url(self.rpc_url.as_deref())
    }

    /// Loads the manifest (asking the node for its chain id when none was named).
    pub async fn deployment(&self) -> anyhow::Result<openledger_chain::Deployment> {
        let manifest = self
            .manifest
            .clone()
            .or_else(|| devstack::current().and_then(|s| s.manifest.clone()));
        let path = manifest_path(&self.rpc_url(), manifest).await?;
        if !path.exists() && path.is_relative() {
            let cwd = std::env::current_dir().unwrap_or_default();
            anyhow::bail!(
                "no deployment manifest at {} (relative to {}): run from the repository root, pass \
                 --manifest, or start scripts/dev.sh (its manifest is found from anywhere)",
                path.display(),
                cwd.display()
            );
        }
        Ok(openledger_chain::Deployment::load(&path)?)
    }
}

/// `manifest`, else `deployments/<the node's chain id>.json`.
pub async fn manifest_path(rpc_url: &str, manifest: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = manifest {
        return Ok(p);
    }
    let source = openledger_indexer::source::ChainSource::connect(
        rpc_url,
        std::time::Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("no JSON-RPC node at {rpc_url}"))?;
    let chain_id = source.chain_id().await?;
    Ok(PathBuf::from(format!("deployments/{chain_id}.json")))
}

fn auth_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
