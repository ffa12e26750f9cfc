//! Workers: claim jobs, keep their lease alive, run the handler of the job's kind, and stop it on
//! cancellation or lease loss. Shutdown hands running jobs back to the queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use super::queue::{JobState, Lease, Queue};
use crate::quotas::Quota;

/// Why a job attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    /// Worth another attempt (a node or database hiccup), or final (bad parameters, a revert).
    pub retryable: bool,
    /// The node or the database was away: the attempt is retried even past `max_attempts` while the job
    /// is younger than [`super::queue::UNAVAILABLE_RETRY_WINDOW`], so an outage does not fail the jobs it meets.
    pub unavailable: bool,
}

impl JobError {
    pub fn retryable(m: impl std::fmt::Display) -> Self {
        Self {
            message: m.to_string(),
            retryable: true,
            unavailable: false,
        }
    }

    /// A failure of the node or the database, not of the job: retried through an outage.
    pub fn unavailable(m: impl std::fmt::Display) -> Self {
        Self {
            message: m.to_string(),
            retryable: true,
            unavailable: true,
        }
    }

    pub fn fatal(m: impl std::fmt::Display) -> Self {
        Self {
            message: m.to_string(),
            retryable: false,
            unavailable: false,
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        let m = format!("database: {e}");
        if openledger_indexer::is_connection_error(&e) {
            JobError::unavailable(m)
        } else {
            JobError::retryable(m)
        }
    }
}

/// Why a submission is refused after its parameters parsed: shown to the submitter with the matching status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not do this (403).
    Forbidden(String),
    /// The parameters name something that cannot be used: an unknown model, a Datanet without data (422).
    Invalid(String),
    /// What the parameters name could not be checked: the database or the index is away (503, retry).
    Unavailable(String),
}

/// The database could not be reached: `Unavailable`; it refused what the parameters named (a value it cannot
/// store, such as a NUL in an id): `Invalid`.
impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        if openledger_indexer::is_connection_error(&e) {
            Refusal::Unavailable(format!("database: {e}"))
        } else {
            Refusal::Invalid(format!("database: {e}"))
        }
    }
}

impl From<openledger_indexer::IndexerError> for Refusal {
    fn from(e: openledger_indexer::IndexerError) -> Self {
        match e {
            openledger_indexer::IndexerError::Db(e) => e.into(),
            other => Refusal::Invalid(format!("index: {other}")),
        }
    }
}

/// What a running job can do: report and notice cancellation.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub lease: Lease,
    queue: Queue,
}

impl JobContext {
    pub fn id(&self) -> i64 {
        self.lease.job.id
    }

    pub fn params(&self) -> &Value {
        &self.lease.job.params
    }

    pub fn attempt(&self) -> i32 {
        self.lease.attempt
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub async fn log(&self, message: impl AsRef<str>) {
        tracing::info!(job = self.id(), "{}", message.as_ref());
        if let Err(e) = self.queue.log(self.id(), "info", message.as_ref()).await {
            tracing::warn!(job = self.id(), error = %e, "could not store a job log line");
        }
    }

    pub async fn progress(&self, p: f32) {
        if let Err(e) = self.queue.progress(&self.lease, p).await {
            tracing::warn!(job = self.id(), error = %e, "could not store job progress");
        }
    }

    pub async fn metric(&self, step: i64, name: &str, value: f64) {
        if let Err(e) = self.queue.metric(self.id(), step, name, value).await {
            tracing::warn!(job = self.id(), error = %e, "could not store a job metric");
        }
    }
}

/// One kind of job. `validate` runs at submission (bad parameters never reach the queue); `run` may be
/// dropped at any await point (cancellation, shutdown), so it must leave nothing half-written.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Whether users may submit it through the API (internal kinds are queued by the daemon itself).
    fn submittable(&self) -> bool {
        true
    }
    /// Checks and normalises parameters; the error is shown to the submitter.
    fn validate(&self, params: &Value) -> Result<Value, String>;
    /// Whether `caller` may submit these (validated) parameters, and whether what they name is usable.
    fn authorize(
        &self,
        _caller: alloy::primitives::Address,
        _admin: bool,
        _params: &Value,
    ) -> BoxFuture<'_, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }
    /// What these (validated, authorized) parameters use of the owner's daily quotas, charged when the job
    /// is queued (a job whose use is known only once it runs charges then, under the reference
    /// `quotas::job_ref`).
    fn usage(&self, _params: &Value) -> BoxFuture<'_, Result<Vec<(Quota, u64)>, Refusal>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>>;
}

/// The handlers this process runs, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<&'static str, Arc<dyn JobHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    pub fn with(mut self, h: impl JobHandler) -> Self {
        self.handlers.insert(h.kind(), Arc::new(h));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn JobHandler>> {
        self.handlers.get(kind)
    }

    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().map(|k| k.to_string()).collect()
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs this process runs at once.
    pub concurrency: usize,
    /// How often a running job's lease is renewed (and cancellation checked).
    pub heartbeat: Duration,
    /// A running job whose heartbeat is older than this is taken back (its worker is presumed dead).
    pub stale_after: Duration,
    /// Idle workers look for work at least this often (notifications wake them sooner).
    pub poll: Duration,
    /// Delay before a failed attempt is retried.
    pub retry_backoff: Duration,
}

/// Jobs one process runs at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Seconds between a running job's heartbeats, by default.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 2;
/// Seconds without a heartbeat after which a running job is taken back, by default.
pub const DEFAULT_STALE_SECS: u64 = 30;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            heartbeat: Duration::from_secs(DEFAULT_HEARTBEAT_SECS),
            stale_after: Duration::from_secs(DEFAULT_STALE_SECS),
            poll: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Resolves once `rx` turns true (the `Ref` `wait_for` returns is not `Send`, so it is dropped here).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A stable-per-process worker identity: host, pid and a random suffix.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let suffix: u32 = rand::random();
    format!("{host}:{}:{suffix:08x}", std::process::id())
}

/// Runs `concurrency` worker loops plus the reaper until `shutdown` turns true; running jobs are then
/// released back to the queue.
pub async fn run(
    queue: Queue,
    registry: Registry,
    cfg: WorkerConfig,
    id: String,
    wake: broadcast::Sender<i64>,
    shutdown: watch::Receiver<bool>,
) {
    let registry = Arc::new(registry);
    let mut set = JoinSet::new();
    for slot in 0..cfg.concurrency.max(1) {
        set.spawn(slot_loop(
            queue.clone(),
            registry.clone(),
            cfg.clone(),
            format!("{id}/{slot}"),
            wake.subscribe(),
            shutdown.clone(),
        ));
    }
    set.spawn(reaper(queue.clone(), cfg.clone(), shutdown.clone()));
    while set.join_next().await.is_some() {}
}

async fn reaper(queue: Queue, cfg: WorkerConfig, mut shutdown: watch::Receiver<bool>) {
    let every = (cfg.stale_after / 3).max(Duration::from_millis(100));
    loop {
        match queue.reap(cfg.stale_after).await {
            Ok(reaped) => {
                for (id, state) in reaped {
                    tracing::warn!(
                        job = id,
                        state = state.as_str(),
                        "took back a job from a silent worker"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

async fn slot_loop(
    queue: Queue,
    registry: Arc<Registry>,
    cfg: WorkerConfig,
    worker: String,
    mut wake: broadcast::Receiver<i64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kinds = registry.kinds();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let lease = match queue.claim(&worker, &kinds).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed");
                None
            }
        };
        match lease {
            Some(lease) => {
                let started = std::time::Instant::now();
                let kind = lease.job.kind.clone();
                let state = run_one(&queue, &registry, &cfg, lease, &mut wake, &mut shutdown).await;
                metrics::histogram!("openledger_job_duration_seconds", "kind" => kind, "state" => state.as_str())
                    .record(started.elapsed().as_secs_f64());
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.poll) => {}
                    r = wake.recv() => {
                        if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                            tokio::time::sleep(cfg.poll).await;
                        }
                    }
                    _ = stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// How a run ended, as far as this worker knows.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Done(JobState),
    Released,
    LeaseLost,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done(s) => s.as_str(),
            Outcome::Released => "released",
            Outcome::LeaseLost => "lost",
        }
    }
}

async fn run_one(
    queue: &Queue,
    registry: &Registry,
    cfg: &WorkerConfig,
    lease: Lease,
    wake: &mut broadcast::Receiver<i64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let id = lease.job.id;
    let Some(handler) = registry.get(&lease.job.kind).cloned() else {
        let _ = queue
            .finish(
                &lease,
                JobState::Failed,
                None,
                Some("no handler for this kind"),
            )
            .await;
        return Outcome::Done(JobState::Failed);
    };
    tracing::info!(job = id, kind = %lease.job.kind, attempt = lease.attempt, "job started");
    let ctx = JobContext {
        lease: lease.clone(),
        queue: queue.clone(),
    };
    let mut work = handler.run(ctx);
    let mut beat = tokio::time::interval(cfg.heartbeat);
    beat.tick().await;
    // fencing: the lease is this worker's until `stale_after` past its last renewal, when any reaper may take
    // the job back; a worker that cannot renew (the database away, a partition) stops the run at half that,
    // so two workers never run one job at once
    let fence = cfg.stale_after / 2;
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::select! {
            r = &mut work => {
                return match r {
                    Ok(result) => match queue.finish(&lease, JobState::Succeeded, Some(&result), None).await {
                        Ok(true) => {
                            tracing::info!(job = id, "job succeeded");
                            Outcome::Done(JobState::Succeeded)
                        }
                        Ok(false) => Outcome::LeaseLost,
                        Err(e) => {
                            tracing::error!(job = id, error = %e, "could not record success; the job will be retried");
                            Outcome::LeaseLost
                        }
                    },
                    Err(e) => {
                        tracing::warn!(job = id, error = %e.message, retryable = e.retryable, "job attempt failed");
                        let state = if e.retryable {
                            queue.fail_attempt(&lease, &e.message, cfg.retry_backoff, e.unavailable).await
                        } else {
                            queue.finish(&lease, JobState::Failed, None, Some(&e.message)).await.map(|_| JobState::Failed)
                        };
                        Outcome::Done(state.unwrap_or(JobState::Failed))
                    }
                };
            }
            _ = beat.tick() => {
                let sent = std::time::Instant::now();
                let budget = fence.saturating_sub(renewed.elapsed()).max(Duration::from_millis(1));
                match tokio::time::timeout(budget, check_lease(queue, &lease)).await {
                    Ok(Renewal::Renewed) => renewed = sent,
                    Ok(Renewal::Stop(o)) => return o,
                    Ok(Renewal::Failed) | Err(_) => {}
                }
                if renewed.elapsed() >= fence {
                    tracing::warn!(job = id, secs = renewed.elapsed().as_secs(),
                        "could not renew the job's lease; stopping it before another worker may take it");
                    metrics::counter!("openledger_job_leases_abandoned_total").increment(1);
                    return Outcome::LeaseLost;
                }
            }
            w = wake.recv() => {
                // a change to this job (e.g. a cancel request) from any process
                let relevant = match w {
                    Ok(j) => j == id,
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(cfg.heartbeat).await;
                        false
                    }
                };
                if relevant {
                    let sent = std::time::Instant::now();
                    match tokio::time::timeout(cfg.heartbeat, check_lease(queue, &lease)).await {
                        Ok(Renewal::Renewed) => renewed = sent,
                        Ok(Renewal::Stop(o)) => return o,
                        Ok(Renewal::Failed) | Err(_) => {}
                    }
                }
            }
            _ = stopped(shutdown) => {
                drop(work);
                return match queue.release(&lease).await {
                    Ok(_) => Outcome::Released,
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "could not release the job; the reaper will");
                        Outcome::Released
                    }
                };
            }
        }
    }
}

/// What renewing a lease found.
enum Renewal {
    Renewed,
    /// The run must stop: cancelled, or the lease is someone else's now.
    Stop(Outcome),
    /// The database did not answer: the lease stands until it goes stale.
    Failed,
}

/// Renews the lease (and sees a cancellation).
async fn check_lease(queue: &Queue, lease: &Lease) -> Renewal {
    match queue.heartbeat(lease).await {
        Ok(Some(false)) => Renewal::Renewed,
        Ok(Some(true)) => {
            let _ = queue.finish(lease, JobState::Cancelled, None, None).await;
            tracing::info!(job = lease.job.id, "job cancelled");
            Renewal::Stop(Outcome::Done(JobState::Cancelled))
        }
        Ok(None) => {
            tracing::warn!(job = lease.job.id, "lost the job's lease; stopping it");
            Renewal::Stop(Outcome::LeaseLost)
        }
        Err(e) => {
            tracing::warn!(job = lease.job.id, error = %e, "heartbeat failed");
            Renewal::Failed
        }
    }
}
