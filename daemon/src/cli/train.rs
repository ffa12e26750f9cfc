//! `openledger train`: fine-tune a base model on Datanet versions (or `--import` a PEFT adapter trained
//! elsewhere) as a `train` job run by this process, with a progress bar; the same job (checks, provenance, on-chain publishing) the API queues.

use std::time::Duration;

use alloy::primitives::Address;
use anyhow::{Context, bail};
use openledger_indexer::{Indexer, IndexerConfig, Mode};
use openledger_model::train::{Schedule, TrainConfig};
use openledger_model::{LoraConfig, Proj};
use tokio::sync::{broadcast, watch};

use super::GlobalArgs;
use crate::chain::{Chain, KeyArgs};
use crate::jobs::queue::{JobState, NewJob, Queue};
use crate::jobs::train::TrainJob;
use crate::jobs::worker::{self, JobHandler, Refusal, Registry, WorkerConfig};
use crate::training::TrainSettings;
use crate::training::params::{DatanetRef, TrainParams};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Base model id (see `openledger models list`) or hash.
    #[arg(long = "base", default_value = "SmolLM2-135M-Instruct.Q4_1")]
    pub base: String,
    /// A Datanet to train on, `ID` (its latest version) or `ID:VERSION`; repeat for several.
    #[arg(long = "datanet", required_unless_present = "import", value_parser = parse_datanet)]
    pub datanets: Vec<DatanetRef>,
    /// Train nothing: import a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) trained
    /// elsewhere on the base model, then register and publish it like a trained adapter.
    #[arg(long, conflicts_with = "datanets", value_name = "DIR")]
    pub import: Option<std::path::PathBuf>,
    /// Passes over the training set (ignored with --steps).
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Optimiser steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long = "lr", default_value_t = 2e-4)]
    pub learning_rate: f64,
    /// Learning-rate decay after warm-up: constant, linear or cosine.
    #[arg(long, default_value = "cosine", value_parser = parse_schedule)]
    pub schedule: Schedule,
    /// Linear warm-up steps [default: 5% of the steps].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Longest sequence in tokens (documents are windowed to it).
    #[arg(long, default_value_t = 256)]
    pub max_seq_len: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Projections to adapt, comma-separated: q,k,v,o,gate,up,down (or `all`).
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of examples held out to measure eval loss.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 20)]
    pub eval_every: usize,
    /// Clip gradients to this global norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Checkpoint every this many steps (a restarted job resumes from the last).
    #[arg(long, default_value_t = 25)]
    pub checkpoint_every: usize,
    /// Keep the adapter local: no registerModel / publishAdapter.
    #[arg(long)]
    pub no_publish: bool,
    /// `cpu` (all cores) or `cuda:N` (builds with `--features cuda`).
    #[arg(long, env = "OPENLEDGER_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Do not index in this process (an `openledger serve` or `index` keeps the same database current).
    #[arg(long)]
    pub no_index: bool,
    /// Seconds to wait for each receipt and for the indexer.
    #[arg(long, default_value_t = 120)]
    pub confirm_timeout_secs: u64,
    #[command(flatten)]
    pub chain: super::ChainArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

fn parse_datanet(s: &str) -> Result<DatanetRef, String> {
    let (id, version) = match s.split_once(':') {
        Some((i, v)) => (i, Some(v.to_string())),
        None => (s, None),
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected ID or ID:VERSION, got {s:?}"));
    }
    Ok(DatanetRef {
        id: id.to_string(),
        version,
    })
}

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| "expected constant, linear or cosine".to_string())
}

impl TrainArgs {
    fn params(&self) -> anyhow::Result<TrainParams> {
        let targets = if self.targets == "all" {
            Proj::ALL.to_vec()
        } else {
            self.targets
                .split(',')
                .map(|t| Proj::parse(t).with_context(|| format!("unknown projection {t:?}")))
                .collect::<anyhow::Result<_>>()?
        };
        let import = self
            .import
            .as_ref()
            .map(|d| {
                std::fs::canonicalize(d)
                    .with_context(|| format!("the adapter folder {}", d.display()))
            })
            .transpose()?;
        Ok(TrainParams {
            base_model: self.base.clone(),
            datanets: self.datanets.clone(),
            import,
            publish: !self.no_publish,
            config: TrainConfig {
                epochs: self.epochs,
                steps: self.steps,
                learning_rate: self.learning_rate,
                schedule: self.schedule,
                warmup_steps: self.warmup_steps,
                batch_size: self.batch_size,
                grad_accum: self.grad_accum,
                max_seq_len: self.max_seq_len,
                lora: LoraConfig {
                    rank: self.rank,
                    alpha: self.alpha,
                    dropout: self.dropout,
                    targets,
                },
                seed: self.seed,
                eval_fraction: self.eval_fraction,
                eval_every: self.eval_every,
                max_grad_norm: self.max_grad_norm,
                weight_decay: self.weight_decay,
                checkpoint_every: self.checkpoint_every,
            },
        })
    }
}

pub async fn run(global: &GlobalArgs, args: TrainArgs) -> anyhow::Result<()> {
    let params = args.params()?;
    // parameter mistakes are reported before anything connects
    params.config.validate(usize::MAX)?;
    openledger_model::device(&args.device)?;
    let deployment = args.chain.deployment().await?;
    let chain = Chain::connect(
        &args.chain.rpc_url(),
        &deployment,
        args.key.load()?,
        Duration::from_secs(30),
    )
    .await?;
    let db = super::db::open(global).await?;
    let pool = db.pool.clone();
    // a `serve` on the same database may send from the same key
    let chain = chain.with_send_lock(pool.clone());
    let settings = TrainSettings::new(global.data_dir(), &args.device);
    crate::models::scan_models_dir(&pool, &settings.models_dir()).await?;
    let files = settings.clone();
    let timeout = Duration::from_secs(args.confirm_timeout_secs.max(1));
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), &deployment)?;
    let handler = TrainJob::new(pool.clone(), index, Some(chain.clone()), settings, timeout);

    let (stop_tx, stop_rx) = watch::channel(false);
    let indexer_task = if args.no_index {
        None
    } else {
        Some(follow_chain(&args.chain.rpc_url(), &deployment, &pool, stop_rx.clone()).await?)
    };

    let owner = chain.signer().unwrap_or(Address::ZERO);
    let queue = Queue::new(pool.clone());
    let job = submit(&handler, &queue, owner, &params).await?;
    eprintln!(
        "job {} queued; training in this process (Ctrl-C checkpoints and stops)",
        job.id
    );

    let (events, _) = broadcast::channel(64);
    let listener = crate::notify::spawn_listener(pool.clone(), events.clone(), watch::channel(0).0);
    let worker_task = tokio::spawn(worker::run(
        queue.clone(),
        Registry::default().with(handler),
        WorkerConfig {
            concurrency: 1,
            ..WorkerConfig::default()
        },
        format!("{}/train", worker::worker_id()),
        events,
        stop_rx,
    ));
    let bar = progress_bar();
    let outcome = tokio::select! {
        r = follow(&queue, job.id, &bar) => r,
        _ = super::shutdown_signal() => {
            bar.abandon_with_message("interrupted: the job goes back to the queue and resumes from its checkpoint");
            Err(anyhow::anyhow!("interrupted (job {} will resume from its checkpoint when run again)", job.id))
        }
    };
    let _ = stop_tx.send(true);
    let _ = worker_task.await;
    if let Some(t) = indexer_task {
        let _ = t.await;
    }
    listener.abort();
    let done = outcome?;
    print_outcome(global.json, &done, &files)?;
    if done.state != JobState::Succeeded.as_str() {
        bail!(
            "job {} {}: {}",
            done.id,
            done.state,
            done.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Checks the job as the API would (validate, authorize) and queues it for `owner`.
async fn submit(
    handler: &TrainJob,
    queue: &Queue,
    owner: Address,
    params: &TrainParams,
) -> anyhow::Result<crate::jobs::queue::Job> {
    let value = handler
        .validate(&serde_json::to_value(params)?)
        .map_err(anyhow::Error::msg)?;
    if let Err(r) = handler.authorize(owner, true, &value).await {
        let (Refusal::Invalid(m) | Refusal::Forbidden(m) | Refusal::Unavailable(m)) = r;
        bail!("{m}");
    }
    Ok(queue
        .submit(&NewJob {
            kind: crate::jobs::train::KIND.into(),
            owner,
            params: value,
            priority: 0,
            max_attempts: 3,
        })
        .await?)
}

/// Indexes up to the head (the checks before queueing read the index), then follows the chain until `stop`.
async fn follow_chain(
    rpc_url: &str,
    deployment: &openledger_chain::Deployment,
    pool: &sqlx::PgPool,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut indexer = Indexer::new(
        IndexerConfig::new(rpc_url.to_owned()),
        deployment.clone(),
        pool.clone(),
    )
    .await?;
    indexer.run(Mode::UntilHead).await?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            r = indexer.run(Mode::Follow) => if let Err(e) = r { tracing::error!(error = %e, "indexer stopped") },
            _ = worker::stopped(&mut stop) => {}
        }
    }))
}

/// What a finished job produced: its JSON, or a summary with the adapter's folder.
fn print_outcome(
    json: bool,
    done: &crate::jobs::Job,
    settings: &TrainSettings,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        let r = done.result.clone().unwrap_or_default();
        let m = &r["metrics"];
        println!("job {}: {}", done.id, done.state);
        println!(
            "  adapter  {}  (sha256 of adapter_model.safetensors)",
            r["adapter_hash"].as_str().unwrap_or("-")
        );
        println!(
            "  manifest {}  (on-chain trainingConfigHash)",
            r["manifest_hash"].as_str().unwrap_or("-")
        );
        println!(
            "  loss {:.4} -> {:.4}; held-out {} -> {}; {:.0} tokens/s",
            m["first_loss"].as_f64().unwrap_or(f64::NAN),
            m["final_loss"].as_f64().unwrap_or(f64::NAN),
            m["initial_eval_loss"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.4}")),
            m["final_eval_loss"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.4}")),
            m["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        if let Some(p) = r.get("published") {
            println!(
                "  on chain: model {} adapter {} (chain {})",
                p["model_id"].as_str().unwrap_or("-"),
                p["adapter_id"].as_str().unwrap_or("-"),
                p["chain_id"]
            );
        }
        let folder = crate::training::Job {
            id: done.id,
            created_at: done.created_at,
        };
        println!("  files: {}", settings.adapter_dir(&folder).display());
    }
    Ok(())
}

fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Polls the job until it ends, showing progress and the latest loss; logs go to stderr as they come.
async fn follow(
    queue: &Queue,
    id: i64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<crate::jobs::Job> {
    let mut seen_logs = 0usize;
    loop {
        let job = queue.get(id).await?.context("the job disappeared")?;
        let logs = queue.logs(id, seen_logs as i64, 1000).await?;
        for l in &logs {
            bar.suspend(|| eprintln!("{}", l.message));
        }
        seen_logs += logs.len();
        let metrics = queue.metrics(id).await?;
        let last = |n: &str| {
            metrics
                .iter()
                .filter(|m| m.name == n)
                .max_by_key(|m| m.step)
        };
        let mut msg = String::new();
        if let Some(l) = last("loss") {
            msg.push_str(&format!("step {} loss {:.4}", l.step, l.value));
        }
        if let Some(e) = last("eval_loss") {
            msg.push_str(&format!(" eval {:.4}", e.value));
        }
        if let Some(t) = last("tokens_per_s") {
            msg.push_str(&format!(" {:.0} tok/s", t.value));
        }
        if let Some(t) = last("eta_s") {
            msg.push_str(&format!(" ETA {:.0}s", t.value));
        }
        bar.set_position((job.progress * 1000.0) as u64);
        bar.set_message(msg);
        if matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled") {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
