//! `openledger jobs`: list, show, cancel and retry jobs straight in the database (operator view).

use alloy::primitives::Address;

use super::GlobalArgs;
use crate::jobs::queue::{CancelOutcome, JobFilter, JobState, Queue};

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Newest jobs first.
    List {
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        owner: Option<Address>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One job with its logs.
    Show { id: i64 },
    /// Cancel a queued job, or ask a running one to stop.
    Cancel { id: i64 },
    /// Queue a failed or cancelled job again.
    Retry { id: i64 },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s)
        .ok_or_else(|| "expected queued, running, succeeded, failed or cancelled".into())
}

pub async fn run(global: &GlobalArgs, args: JobsArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    let q = Queue::new(db.pool.clone());
    match args.command {
        JobsCommand::List {
            state,
            kind,
            owner,
            limit,
        } => {
            let filter = JobFilter {
                owner,
                state,
                kind,
                limit: limit.clamp(1, 10_000),
                offset: 0,
            };
            list(global.json, &q, &filter).await?
        }
        JobsCommand::Show { id } => show(global.json, &q, id).await?,
        JobsCommand::Cancel { id } => match q.cancel(id).await? {
            None => anyhow::bail!("no job {id}"),
            Some(CancelOutcome::AlreadyFinished(s)) => {
                anyhow::bail!("job {id} already finished ({})", s.as_str())
            }
            Some(CancelOutcome::Cancelled) => println!("job {id} cancelled"),
            Some(CancelOutcome::Requested) => {
                println!("job {id} is running; its worker stops it at the next heartbeat")
            }
        },
        JobsCommand::Retry { id } => match q.retry(id).await? {
            None => anyhow::bail!("no job {id}"),
            Some(Err(s)) => anyhow::bail!(
                "job {id} is {}; only failed or cancelled jobs can be retried",
                s.as_str()
            ),
            Some(Ok(_)) => println!("job {id} queued again"),
        },
    }
    Ok(())
}

async fn list(json: bool, q: &Queue, filter: &JobFilter) -> anyhow::Result<()> {
    let jobs = q.list(filter).await?;
    if json {
        println!("{}", serde_json::to_string(&jobs)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<20}  {:<10}  {:>8}  {:>5}  owner",
        "id", "kind", "state", "progress", "tries"
    );
    for j in jobs {
        println!(
            "{:>6}  {:<20}  {:<10}  {:>7.0}%  {:>2}/{:<2}  {}",
            j.id,
            j.kind,
            j.state,
            j.progress * 100.0,
            j.attempts,
            j.max_attempts,
            j.owner
        );
    }
    Ok(())
}

async fn show(json: bool, q: &Queue, id: i64) -> anyhow::Result<()> {
    let job = q
        .get(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
    let logs = q.logs(id, 0, 10_000).await?;
    if json {
        println!("{}", serde_json::json!({ "job": job, "logs": logs }));
        return Ok(());
    }
    println!(
        "job {} ({}) owned by {}: {}",
        job.id, job.kind, job.owner, job.state
    );
    println!("params: {}", job.params);
    if let Some(r) = &job.result {
        println!("result: {r}");
    }
    if let Some(e) = &job.error {
        println!("error: {e}");
    }
    for l in logs {
        println!("  {} {:<5} {}", super::auth_time(l.at), l.level, l.message);
    }
    Ok(())
}
