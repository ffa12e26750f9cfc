//! `openledger serve` as a library function: the API, the in-process indexer and the job workers in one
//! process, with graceful shutdown (in-flight requests get a grace period, running jobs go back to the
//! queue, every committed index range is kept).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openledger_chain::Deployment;
use openledger_indexer::{Indexer, IndexerConfig, IndexerStatus, Mode};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::chain::Chain;
use crate::inference::Inference;
use crate::inference::service::Serving;
use crate::jobs::batch::BatchJob;
use crate::jobs::relay::RelayJob;
use crate::jobs::snapshot::SnapshotJob;
use crate::jobs::train::TrainJob;
use crate::jobs::worker::{self, Registry, WorkerConfig};
use crate::state::{ApiConfig, AppState, StateParts};
use crate::training::TrainSettings;

/// Where `serve` listens, by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Seconds in-flight requests get to finish after a shutdown signal, by default.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Seconds the relayer waits for a receipt, and then for the indexer, per attempt, by default.
pub const DEFAULT_CONFIRM_TIMEOUT_SECS: u64 = 120;

/// Everything `serve` needs, already resolved from flags and environment.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub api: ApiConfig,
    /// Index in-process (`None`: another process indexes into the same database).
    pub indexer: Option<IndexerConfig>,
    pub workers: WorkerConfig,
    /// Job slots in this process (0: API only).
    pub worker_slots: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long the relayer waits for a receipt, then for the index.
    pub confirm_timeout: Duration,
    /// Where training finds base models and writes adapters, and its device.
    pub training: TrainSettings,
    /// Model serving (`None`: this process serves no model).
    pub inference: Option<crate::inference::InferenceConfig>,
    /// Scheduled settlement and its period (`None`: settle by hand with `openledger settle`).
    pub settlement: Option<(crate::settlement::SettleConfig, Duration)>,
    /// The connection with the settler's key, when it is not the daemon's own (`None`: the daemon's key
    /// settles, as on a devnet).
    pub settler: Option<Chain>,
    /// How the daemon's key re-sends a transaction that waits for its receipt.
    pub send_policy: crate::chain::SendPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Indexer(#[from] openledger_indexer::IndexerError),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// The job kinds this process runs: relaying only with a key (so key-less processes never claim relays).
/// Training runs charge their owners' step quota (`quotas`) when the submission could not.
pub fn registry(
    pool: &PgPool,
    deployment: &Deployment,
    chain: &Chain,
    confirm_timeout: Duration,
    training: &TrainSettings,
    quotas: crate::quotas::Quotas,
    inference: Option<(&Arc<crate::inference::Inference>, &watch::Receiver<u64>)>,
) -> Result<Registry, openledger_indexer::IndexerError> {
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), deployment)?;
    let mut r = Registry::default()
        .with(SnapshotJob {
            index: index.clone(),
            chain: Some(chain.clone()),
            tx_timeout: confirm_timeout,
        })
        .with(
            TrainJob::new(
                pool.clone(),
                index.clone(),
                Some(chain.clone()),
                training.clone(),
                confirm_timeout,
            )
            .with_quotas(quotas),
        );
    // only a process that serves a model claims batches
    if let Some((inf, index_progress)) = inference {
        r = r.with(BatchJob {
            concurrency: inf.cfg.batch_concurrency,
            problem: crate::api::openai::batch_problem,
            serving: Serving::new(
                pool.clone(),
                index.clone(),
                Some(chain.clone()),
                deployment.clone(),
                inf.clone(),
                index_progress.clone(),
            ),
        });
    }
    if chain.signer().is_some() {
        r = r.with(RelayJob {
            pool: pool.clone(),
            index,
            chain: chain.clone(),
            confirm_timeout,
        });
    }
    Ok(r)
}

/// The background tasks of one `serve` process, stopped in order at shutdown.
struct Tasks {
    stop: watch::Sender<bool>,
    listener: JoinHandle<()>,
    indexer: Option<JoinHandle<()>>,
    workers: Option<JoinHandle<()>>,
    registration: Option<JoinHandle<()>>,
    settle: Option<JoinHandle<()>>,
    attribution: Option<JoinHandle<()>>,
    leases: JoinHandle<()>,
    keeper: JoinHandle<()>,
}

/// Runs until `shutdown` resolves.
pub async fn run(
    cfg: ServeConfig,
    pool: PgPool,
    deployment: Deployment,
    chain: Chain,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // every process sharing the database takes the key's nonces one at a time, and re-sends what waits
    let chain = chain
        .with_send_lock(pool.clone())
        .with_send_policy(cfg.send_policy);
    let mut cfg = cfg;
    cfg.settler = cfg.settler.map(|c| {
        c.with_send_lock(pool.clone())
            .with_send_policy(cfg.send_policy)
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events, _) = broadcast::channel(1024);
    let (index_tx, index_progress) = watch::channel(0);
    let listener_task = crate::notify::spawn_listener(pool.clone(), events.clone(), index_tx);
    let (indexer_task, indexer_status) =
        spawn_indexer(cfg.indexer.clone(), &deployment, &pool, stop_rx.clone()).await?;
    let inference = load_inference(&pool, &cfg).await;
    // completes attributions whose gradient part was queued (or left pending by an earlier process)
    let attribution_task = inference
        .as_ref()
        .map(|i| tokio::spawn(i.attribution.clone().run_queue(pool.clone())));
    let lease_task = spawn_inference_leases(
        &pool,
        &deployment,
        &chain,
        inference.as_ref(),
        stop_rx.clone(),
    );
    let jobs = registry(
        &pool,
        &deployment,
        &chain,
        cfg.confirm_timeout,
        &cfg.training,
        cfg.api.quotas,
        inference.as_ref().map(|i| (i, &index_progress)),
    )?;
    let worker_id = worker::worker_id();
    let (worker_task, registration) = if cfg.worker_slots > 0 {
        let mut wcfg = cfg.workers.clone();
        wcfg.concurrency = cfg.worker_slots;
        let task = tokio::spawn(worker::run(
            crate::jobs::Queue::new(pool.clone()),
            jobs.clone(),
            wcfg,
            worker_id.clone(),
            events.clone(),
            stop_rx.clone(),
        ));
        let registration = register_worker(&pool, &worker_id, &jobs.kinds(), stop_rx.clone()).await;
        (Some(task), Some(registration))
    } else {
        (None, None)
    };
    let settle_task = spawn_settler(&cfg, &pool, &deployment, &chain, stop_rx.clone());
    let keeper = spawn_key_keeper(&chain, cfg.send_policy, stop_rx.clone());
    let tasks = Tasks {
        stop: stop_tx,
        listener: listener_task,
        indexer: indexer_task,
        workers: worker_task,
        registration,
        settle: settle_task,
        attribution: attribution_task,
        leases: lease_task,
        keeper,
    };

    let state = AppState::new(StateParts {
        pool: pool.clone(),
        deployment,
        chain: Some(chain),
        cfg: cfg.api,
        jobs,
        job_events: events,
        indexer: indexer_status,
        metrics: crate::metrics::handle(),
        inference,
        index_progress,
    })?;
    spawn_limiter_sweep(state.clone(), stop_rx);
    let app = crate::api::app(state);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(%local, worker = %worker_id, "serving the API on http://{local} (docs at /docs)");
    let result = serve_http(listener, app, shutdown, cfg.shutdown_grace).await;
    tracing::info!("shutting down: releasing running jobs");
    tasks.stop(&pool, &worker_id).await;
    result
}

/// The in-process indexer, restarted after transient failures, and its status for `/readyz`.
async fn spawn_indexer(
    cfg: Option<IndexerConfig>,
    deployment: &Deployment,
    pool: &PgPool,
    mut stop: watch::Receiver<bool>,
) -> Result<
    (
        Option<JoinHandle<()>>,
        Option<watch::Receiver<IndexerStatus>>,
    ),
    ServeError,
> {
    let Some(icfg) = cfg else {
        return Ok((None, None));
    };
    let mut indexer = Indexer::new(icfg, deployment.clone(), pool.clone()).await?;
    let status = indexer.status();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = indexer.run(Mode::Follow) => match r {
                    Ok(()) => return,
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "indexer: transient failure; resuming in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "indexer stopped; /readyz reports it");
                        return;
                    }
                },
                _ = worker::stopped(&mut stop) => return,
            }
        }
    });
    Ok((Some(task), Some(status)))
}

/// Registers the installed base models, then loads the one to serve (`None`: serving is off or the model
/// cannot load; the inference routes answer 503 and say so).
async fn load_inference(pool: &PgPool, cfg: &ServeConfig) -> Option<Arc<Inference>> {
    let dir = cfg.training.models_dir();
    match crate::models::scan_models_dir(pool, &dir).await {
        Ok(found) => tracing::info!(
            dir = %dir.display(),
            models = ?found.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "base models"
        ),
        Err(e) => tracing::warn!(error = %e, "could not scan the base models directory"),
    }
    match Inference::load(pool, &dir, cfg.inference.clone()?).await {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!(error = %e, "not serving inference");
            None
        }
    }
}

/// Settlement on a schedule, when configured and the daemon has the settler key.
fn spawn_settler(
    cfg: &ServeConfig,
    pool: &PgPool,
    deployment: &Deployment,
    chain: &Chain,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let (scfg, every) = cfg.settlement.clone()?;
    let chain = cfg.settler.as_ref().unwrap_or(chain);
    if chain.signer().is_none() {
        tracing::warn!("--settle-every-secs needs the settler key; not settling");
        return None;
    }
    match crate::settlement::Context::new(pool.clone(), deployment.clone(), chain.clone(), scfg)
        .map(crate::settlement::Settler::new)
    {
        Ok(s) => {
            tracing::info!(every_secs = every.as_secs(), "settling on a schedule");
            Some(tokio::spawn(crate::settlement::submit::run_schedule(
                s, every, stop,
            )))
        }
        Err(e) => {
            tracing::warn!(error = %e, "not settling");
            None
        }
    }
}

/// The per-address rate limiter keeps a cell per address seen: forget the idle ones now and then.
fn spawn_limiter_sweep(state: AppState, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {
                    state.limiter.retain_recent();
                    state.ip_limiter.retain_recent();
                }
                _ = worker::stopped(&mut stop) => return,
            }
        }
    });
}

/// Serves `app` until `shutdown` resolves, then gives open requests `grace` to finish.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let (signalled_tx, signalled_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signalled_tx.send(true);
    });
    let mut s1 = signalled_rx.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = s1.wait_for(|s| *s).await;
    });
    let mut s2 = signalled_rx.clone();
    tokio::select! {
        r = server => r.map_err(ServeError::Http),
        // long-lived streams (SSE) would hold a graceful shutdown open forever
        _ = async move { let _ = s2.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still open after the grace period; closing them");
            Ok(())
        }
    }
}

impl Tasks {
    /// Stops every task: running jobs go back to the queue, the worker row goes last.
    async fn stop(self, pool: &PgPool, worker_id: &str) {
        let _ = self.stop.send(true);
        if let Some(t) = self.workers {
            let _ = t.await;
        }
        if let Some(t) = self.indexer {
            let _ = t.await;
        }
        if let Some(t) = self.settle {
            // a round in flight stops where it is: every step is stored, the next process resumes it
            t.abort();
        }
        // the registration's last refresh is done before the row goes: it is never written back
        if let Some(t) = self.registration {
            let _ = t.await;
        }
        let _ = sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker_id)
            .execute(pool)
            .await;
        self.listener.abort();
        // a pending record it was working on stays pending: the next process completes it
        if let Some(t) = self.attribution {
            t.abort();
        }
        let _ = self.leases.await;
        let _ = self.keeper.await;
    }
}

/// Follows every live transaction of the daemon's key (`Chain::tend_sends`), in every `serve`: one whose
/// sender stopped waiting (a timeout, a killed process) is re-sent with higher fees until it is mined, so it
/// never holds the key's later nonces back.
fn spawn_key_keeper(
    chain: &Chain,
    policy: crate::chain::SendPolicy,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let chain = chain.clone();
    let every = (policy.bump_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match chain.tend_sends().await {
                Ok(t) if t.bumped > 0 || t.dropped > 0 => {
                    tracing::info!(?t, "the key's waiting transactions")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "following the key's transactions"),
            }
        }
    })
}

/// Keeps this process's claim on the interactive inferences it answers (renewed every third of the lease)
/// and, in every `serve`, fails those whose process stopped renewing: a `kill -9` mid-answer leaves no row
/// `running` for longer than its lease, so its payment can be used again and a credit charge comes back.
/// Its pass also settles the daemon's payments whose sender stopped waiting (`payment::reconcile`).
fn spawn_inference_leases(
    pool: &PgPool,
    deployment: &Deployment,
    chain: &Chain,
    inference: Option<&Arc<Inference>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    use crate::inference::{payment, records};
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), deployment).ok();
    let payer = chain.signer();
    let own = inference.map(|i| (i.lease_owner.clone(), i.cfg.lease));
    let lease = own.as_ref().map_or(
        Duration::from_secs(crate::inference::DEFAULT_INFERENCE_LEASE_SECS),
        |(_, ttl)| *ttl,
    );
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Some((owner, ttl)) = &own
                && let Err(e) = records::renew_leases(&pool, owner, *ttl).await
            {
                tracing::warn!(error = %e, "renewing the leases of running inferences");
            }
            match records::reap_expired(&pool).await {
                Ok(ids) if !ids.is_empty() => tracing::warn!(
                    ?ids,
                    "failed inferences whose serving process stopped mid-answer (payments free for a retry, credit refunded)"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "failing inferences of stopped processes"),
            }
            if let (Some(index), Some(payer)) = (&index, payer) {
                match payment::reconcile(&pool, index, payer).await {
                    Ok(r) if r != payment::Reconciled::default() => {
                        tracing::info!(
                            ?r,
                            "settled the daemon's payments whose sender stopped waiting"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "settling the daemon's payments"),
                }
            }
        }
    })
}

/// Registers this process in `workers` (before it returns: the row is there once the API serves) and keeps
/// its `seen_at` fresh until stopped; the task ends at the stop.
async fn register_worker(
    pool: &PgPool,
    id: &str,
    kinds: &[String],
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let pool = pool.clone();
    let id = id.to_owned();
    let kinds = kinds.to_vec();
    let host = id.split(':').next().unwrap_or("host").to_owned();
    let register = move || {
        let (pool, id, host, kinds) = (pool.clone(), id.clone(), host.clone(), kinds.clone());
        async move {
            let r = sqlx::query(
                "INSERT INTO workers (id, hostname, pid, kinds) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
            )
            .bind(&id)
            .bind(&host)
            .bind(std::process::id() as i32)
            .bind(&kinds)
            .execute(&pool)
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "worker registration");
            }
        }
    };
    register().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = worker::stopped(&mut stop) => return,
            }
            register().await;
        }
    })
}
