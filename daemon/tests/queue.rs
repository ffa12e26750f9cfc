//! The job queue against a real Postgres: two workers sharing it, a worker killed mid-job, cancellation,
//! retries and graceful release.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::Address;
use futures::FutureExt;
use futures::future::BoxFuture;
use openledger_daemon::jobs::queue::{CancelOutcome, Charged, JobState, NewJob, Queue};
use openledger_daemon::jobs::worker::{
    self, JobContext, JobError, JobHandler, Registry, WorkerConfig,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

/// What each job should do, by its `mode` parameter, and a record of what happened.
#[derive(Clone)]
struct TestJob {
    /// (job id, attempt, worker) per start
    starts: Arc<Mutex<Vec<(i64, i32, String)>>>,
    /// job ids whose run future was dropped before finishing
    dropped: Arc<Mutex<Vec<i64>>>,
    /// `held` jobs wait until this turns true
    gate: Arc<watch::Sender<bool>>,
    /// job ids with a run in progress (in any worker)
    live: Arc<Mutex<std::collections::HashSet<i64>>>,
    /// job ids that started while a run of theirs was still in progress elsewhere
    overlaps: Arc<Mutex<Vec<i64>>>,
}

impl Default for TestJob {
    fn default() -> Self {
        TestJob {
            starts: Arc::default(),
            dropped: Arc::default(),
            gate: Arc::new(watch::channel(false).0),
            live: Arc::default(),
            overlaps: Arc::default(),
        }
    }
}

impl TestJob {
    /// Lets every `held` job (running or still to come) finish.
    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

/// Ends a run's life: always off `live`; onto `dropped` unless the run finished (`finished`).
struct DropGuard {
    id: i64,
    dropped: Arc<Mutex<Vec<i64>>>,
    live: Arc<Mutex<std::collections::HashSet<i64>>>,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        // off `live` before it counts as dropped, so a later start never sees it running
        self.live.lock().unwrap().remove(&self.id);
        if !self.finished {
            self.dropped.lock().unwrap().push(self.id);
        }
    }
}

impl JobHandler for TestJob {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn validate(&self, params: &Value) -> Result<Value, String> {
        Ok(params.clone())
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        async move {
            self.starts
                .lock()
                .unwrap()
                .push((ctx.id(), ctx.attempt(), ctx.lease.worker.clone()));
            if !self.live.lock().unwrap().insert(ctx.id()) {
                self.overlaps.lock().unwrap().push(ctx.id());
            }
            let mut guard = DropGuard {
                id: ctx.id(),
                dropped: self.dropped.clone(),
                live: self.live.clone(),
                finished: false,
            };
            let mode = ctx.params()["mode"].as_str().unwrap_or("ok").to_owned();
            let r = match mode.as_str() {
                "ok" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ctx.log("working").await;
                    ctx.metric(1, "loss", 0.5).await;
                    ctx.progress(0.5).await;
                    Ok(json!({ "done": ctx.id() }))
                }
                // runs until the test opens the gate
                "held" => {
                    let mut open = self.gate.subscribe();
                    let _ = open.wait_for(|o| *o).await;
                    ctx.log("working").await;
                    ctx.metric(1, "loss", 0.5).await;
                    ctx.progress(0.5).await;
                    Ok(json!({ "done": ctx.id() }))
                }
                // hangs on its first attempt, succeeds on later ones
                "hang_first" if ctx.attempt() == 1 => futures::future::pending().await,
                "hang_first" => Ok(json!({ "attempt": ctx.attempt() })),
                "hang" => futures::future::pending().await,
                "flaky" if ctx.attempt() == 1 => Err(JobError::retryable("node hiccup")),
                "flaky" => Ok(json!({ "attempt": ctx.attempt() })),
                _ => Err(JobError::fatal("bad input")),
            };
            guard.finished = true;
            r
        }
        .boxed()
    }
}

/// How long a test waits for a state before calling the system stalled: far beyond what a loaded machine
/// needs, never a measure of speed.
const STALL: Duration = Duration::from_secs(300);

/// Heartbeats every 100 ms and a lease that goes stale after 5 s: fifty missed heartbeats, so a live worker
/// on a loaded machine keeps its job, while a killed one's job is retried within seconds.
fn cfg() -> WorkerConfig {
    WorkerConfig {
        concurrency: 1,
        heartbeat: Duration::from_millis(100),
        stale_after: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(10),
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(pool: &PgPool, h: &TestJob, id: &str, cfg: WorkerConfig) -> Running {
    let (stop, rx) = watch::channel(false);
    let (events, _) = broadcast::channel(64);
    openledger_daemon::notify::spawn_listener(pool.clone(), events.clone(), watch::channel(0).0);
    let task = tokio::spawn(worker::run(
        Queue::new(pool.clone()),
        Registry::default().with(h.clone()),
        cfg,
        id.to_owned(),
        events,
        rx,
    ));
    Running { stop, task }
}

async fn submit(q: &Queue, mode: &str, max_attempts: i32) -> i64 {
    q.submit(&NewJob {
        kind: "test".into(),
        owner: Address::repeat_byte(7),
        params: json!({ "mode": mode }),
        priority: 0,
        max_attempts,
    })
    .await
    .unwrap()
    .id
}

async fn wait_state(q: &Queue, id: i64, want: JobState) -> openledger_daemon::jobs::Job {
    let deadline = tokio::time::Instant::now() + STALL;
    while tokio::time::Instant::now() < deadline {
        let j = q.get(id).await.unwrap().unwrap();
        if j.state() == want {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "job {id} never reached {want:?}: {:?}",
        q.get(id).await.unwrap()
    );
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn two_workers_share_the_queue_and_each_job_runs_once(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(submit(&q, "held", 3).await);
    }
    let a = start(&pool, &h, "worker-a", cfg());
    let b = start(&pool, &h, "worker-b", cfg());
    // each worker runs one job at a time and the jobs hold until the gate opens: two jobs running means
    // both workers took one, whatever the machine's speed
    wait_starts(&h, |s| s.len() >= 2).await;
    let first_two: std::collections::HashSet<String> = h.starts.lock().unwrap()[..2]
        .iter()
        .map(|(_, _, w)| w.split('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(first_two.len(), 2, "both workers took work: {first_two:?}");
    h.open_gate();
    for id in &ids {
        let j = wait_state(&q, *id, JobState::Succeeded).await;
        assert_eq!(j.result, Some(json!({ "done": id })));
        assert_eq!(j.attempts, 1);
        assert_eq!(j.progress, 1.0);
        assert!(j.worker.is_none());
        assert_eq!(q.metrics(*id).await.unwrap()[0].value, 0.5);
    }
    let starts = h.starts.lock().unwrap().clone();
    let mut per_job: HashMap<i64, usize> = HashMap::new();
    for (id, _, _) in &starts {
        *per_job.entry(*id).or_default() += 1;
    }
    assert!(
        per_job.values().all(|n| *n == 1),
        "a job ran twice: {starts:?}"
    );
    assert_eq!(per_job.len(), 8);
    for r in [a, b] {
        r.stop.send(true).unwrap();
        r.task.await.unwrap();
    }
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_killed_worker_job_is_retried_once_and_completed_once(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let id = submit(&q, "hang_first", 3).await;
    let a = start(&pool, &h, "doomed", cfg());
    let running = wait_state(&q, id, JobState::Running).await;
    assert!(running.worker.as_deref().unwrap().starts_with("doomed"));
    // the claim lands before the handler runs: kill it only once it is inside the job
    wait_started(&h, id).await;
    let lease_of_a = worker_lease(&q, id).await;
    // kill: no release, no more heartbeats
    a.task.abort();
    let _ = a.task.await;
    let b = start(&pool, &h, "survivor", cfg());
    let done = wait_state(&q, id, JobState::Succeeded).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(done.result, Some(json!({ "attempt": 2 })));
    let starts = h.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1].2.starts_with("survivor"));
    // the dead worker's lease can no longer complete, fail or release the job
    assert!(
        !q.finish(&lease_of_a, JobState::Succeeded, Some(&json!(1)), None)
            .await
            .unwrap()
    );
    assert!(!q.release(&lease_of_a).await.unwrap());
    assert_eq!(
        q.get(id).await.unwrap().unwrap().result,
        Some(json!({ "attempt": 2 }))
    );
    let logs = q.logs(id, 0, 100).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("stopped heartbeating")),
        "{logs:?}"
    );
    b.stop.send(true).unwrap();
    b.task.await.unwrap();
}

/// Waits until the handler is running `id` (the claim is committed before the handler is first polled).
async fn wait_started(h: &TestJob, id: i64) {
    wait_starts(h, |s| s.iter().any(|(j, _, _)| *j == id)).await;
}

/// Waits until the handler's record of starts satisfies `done`.
async fn wait_starts(h: &TestJob, done: impl Fn(&[(i64, i32, String)]) -> bool) {
    let deadline = tokio::time::Instant::now() + STALL;
    while tokio::time::Instant::now() < deadline {
        if done(&h.starts.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the handler never got there: {:?}",
        h.starts.lock().unwrap()
    );
}

/// The lease the current holder has (as the worker would see it).
async fn worker_lease(q: &Queue, id: i64) -> openledger_daemon::jobs::queue::Lease {
    let job = q.get(id).await.unwrap().unwrap();
    openledger_daemon::jobs::queue::Lease {
        worker: job.worker.clone().unwrap(),
        attempt: job.attempts,
        job,
    }
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_job_that_keeps_dying_fails_after_its_attempts(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let id = submit(&q, "hang", 1).await;
    let lease = q.claim("w", &["test".to_owned()]).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id);
    // no heartbeat follows this claim: after 300 ms the lease is older than 100 ms on any machine (a wait
    // for time itself to pass, not for another thread)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reaped = q.reap(Duration::from_millis(100)).await.unwrap();
    assert_eq!(reaped, vec![(id, JobState::Failed)]);
    let j = q.get(id).await.unwrap().unwrap();
    assert!(j.error.unwrap().contains("stopped heartbeating"));
    assert!(j.finished_at.is_some());
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn cancellation_stops_a_running_job_and_a_queued_one(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let id = submit(&q, "hang", 3).await;
    let w = start(&pool, &h, "w", cfg());
    wait_state(&q, id, JobState::Running).await;
    wait_started(&h, id).await;
    assert_eq!(q.cancel(id).await.unwrap(), Some(CancelOutcome::Requested));
    let j = wait_state(&q, id, JobState::Cancelled).await;
    assert!(j.finished_at.is_some());
    assert_eq!(
        h.dropped.lock().unwrap().as_slice(),
        &[id],
        "the handler was stopped"
    );
    assert_eq!(
        q.cancel(id).await.unwrap(),
        Some(CancelOutcome::AlreadyFinished(JobState::Cancelled))
    );
    // a queued job is cancelled without running
    w.stop.send(true).unwrap();
    w.task.await.unwrap();
    let queued = submit(&q, "ok", 3).await;
    assert_eq!(
        q.cancel(queued).await.unwrap(),
        Some(CancelOutcome::Cancelled)
    );
    let w = start(&pool, &h, "w2", cfg());
    // the worker claims in id order: once a later job has run, the cancelled one had its chance
    let later = submit(&q, "ok", 3).await;
    let done = wait_state(&q, later, JobState::Succeeded).await;
    assert_eq!(q.metrics(later).await.unwrap()[0].value, 0.5);
    assert_eq!(done.result, Some(json!({ "done": later })));
    assert_eq!(
        q.get(queued).await.unwrap().unwrap().state(),
        JobState::Cancelled
    );
    assert!(
        h.starts
            .lock()
            .unwrap()
            .iter()
            .all(|(j, _, _)| *j != queued)
    );
    assert_eq!(q.cancel(99_999).await.unwrap(), None);
    w.stop.send(true).unwrap();
    w.task.await.unwrap();
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn retryable_failures_retry_and_fatal_ones_do_not(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let flaky = submit(&q, "flaky", 3).await;
    let fatal = submit(&q, "explode", 3).await;
    let w = start(&pool, &h, "w", cfg());
    let j = wait_state(&q, flaky, JobState::Succeeded).await;
    assert_eq!(j.attempts, 2);
    let f = wait_state(&q, fatal, JobState::Failed).await;
    assert_eq!(f.attempts, 1);
    assert_eq!(f.error.as_deref(), Some("bad input"));
    w.stop.send(true).unwrap();
    w.task.await.unwrap();
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn shutdown_releases_running_jobs_without_spending_an_attempt(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let id = submit(&q, "hang_first", 2).await;
    let w = start(&pool, &h, "leaving", cfg());
    wait_state(&q, id, JobState::Running).await;
    wait_started(&h, id).await;
    w.stop.send(true).unwrap();
    w.task.await.unwrap();
    let j = q.get(id).await.unwrap().unwrap();
    assert_eq!(j.state(), JobState::Queued);
    assert_eq!(j.attempts, 0);
    assert!(j.worker.is_none());
    assert_eq!(h.dropped.lock().unwrap().as_slice(), &[id]);
}

/// Charges `n` training steps to `owner`, under job `job`'s reference if given (as a run does).
async fn steps(
    quotas: &openledger_daemon::quotas::Quotas,
    conn: &mut sqlx::PgConnection,
    owner: Address,
    n: u64,
    job: Option<i64>,
) -> Result<(), openledger_daemon::quotas::QuotaError> {
    let reference = job.map(openledger_daemon::quotas::job_ref);
    quotas
        .charge(
            conn,
            owner,
            openledger_daemon::quotas::Quota::TrainSteps,
            n,
            reference.as_deref(),
        )
        .await
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn daily_quotas_charge_in_the_jobs_transaction_and_a_reference_once(pool: PgPool) {
    use openledger_daemon::quotas::{Quota, QuotaError, Quotas};
    let q = Queue::new(pool.clone());
    let quotas = Quotas {
        train_steps_per_day: 1000,
        ..Quotas::default()
    };
    let owner = Address::repeat_byte(0x42);
    let job = |n: i64| NewJob {
        kind: "test".into(),
        owner,
        params: json!({ "mode": "ok", "n": n }),
        priority: 0,
        max_attempts: 1,
    };
    let first = q
        .submit_charged(
            &job(1),
            Charged::Within(&quotas),
            &[(Quota::TrainSteps, 600)],
            &[],
        )
        .await
        .unwrap();
    let refused = q
        .submit_charged(
            &job(2),
            Charged::Within(&quotas),
            &[(Quota::TrainSteps, 600)],
            &[],
        )
        .await
        .unwrap_err();
    let QuotaError::Exceeded(e) = refused else {
        panic!("{refused}")
    };
    assert_eq!(
        (e.quota, e.used, e.asked, e.limit),
        (Quota::TrainSteps, 600, 600, 1000)
    );
    assert!(e.to_string().contains("--quota-train-steps-per-day"), "{e}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "the refused job is not queued");
    // more than the whole quota is refused with no hope of a retry (a day)
    let huge = q
        .submit_charged(
            &job(3),
            Charged::Within(&quotas),
            &[(Quota::TrainSteps, 5000)],
            &[],
        )
        .await
        .unwrap_err();
    assert!(huge.to_string().contains("more than the 1000"), "{huge}");
    // a run charging the steps its submission charged already pays nothing more
    let mut tx = pool.begin().await.unwrap();
    steps(&quotas, &mut tx, owner, 600, Some(first.id))
        .await
        .unwrap();
    // an epoch-based job's run charges what it counted, once whatever its attempts
    let epochs = q
        .submit_charged(&job(4), Charged::Within(&quotas), &[], &[])
        .await
        .unwrap();
    for _ in 0..2 {
        steps(&quotas, &mut tx, owner, 300, Some(epochs.id))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let used: i64 = sqlx::query_scalar(
        "SELECT sum(amount)::bigint FROM quota_usage WHERE quota = 'train_steps'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(used, 900);
    // an operator's job is marked settled: its run is charged nothing, even to a full quota
    let op = q
        .submit_charged(&job(5), Charged::Exempt, &[], &[])
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    steps(&quotas, &mut tx, owner, 900, Some(op.id))
        .await
        .unwrap();
    let e = steps(&quotas, &mut tx, owner, 200, None).await.unwrap_err();
    assert!(matches!(e, QuotaError::Exceeded(_)), "{e}");
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn relays_per_day_are_a_quota_of_the_contributor(pool: PgPool) {
    use openledger_daemon::quotas::Quotas;
    use openledger_daemon::uploads::{NewRelay, NewUpload};
    let quotas = Quotas {
        relays_per_day: 1,
        ..Quotas::default()
    };
    let contributor = Address::repeat_byte(0x17);
    let content = openledger_daemon::content::canonicalise(
        b"a contribution",
        openledger_daemon::content::Format::Text,
        1024,
    )
    .unwrap();
    let (upload, _) = openledger_daemon::uploads::store(
        &pool,
        NewUpload {
            owner: contributor,
            chain_id: 31337,
            datanet_id: alloy::primitives::U256::from(1),
            content: &content,
            filename: "",
            metadata_uri: "ipfs://x",
        },
        &quotas,
    )
    .await
    .unwrap();
    let relay = |nonce: u64| NewRelay {
        upload_id: upload.id,
        contributor,
        nonce: alloy::primitives::U256::from(nonce),
        deadline: alloy::primitives::U256::from(u64::MAX),
        signature: "0x00".into(),
    };
    openledger_daemon::jobs::relay::queue(&pool, &relay(0), &quotas)
        .await
        .unwrap()
        .unwrap();
    let e = openledger_daemon::jobs::relay::queue(&pool, &relay(1), &quotas)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--quota-relays-per-day"), "{e}");
    let (relays, jobs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM relays), (SELECT count(*) FROM jobs)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (relays, jobs),
        (1, 1),
        "the refused relay left neither a row nor a job"
    );
    // relays do not count as the contributor's concurrent jobs
    let tight = Quotas {
        concurrent_jobs: 1,
        ..Quotas::default()
    };
    let mut tx = pool.begin().await.unwrap();
    tight
        .check_concurrent_jobs(
            &mut tx,
            contributor,
            &[openledger_daemon::jobs::relay::KIND],
        )
        .await
        .unwrap();
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn the_indexers_progress_wakes_listeners_in_every_process(pool: PgPool) {
    let (events, _) = broadcast::channel(8);
    let (index_tx, mut progress) = watch::channel(0);
    openledger_daemon::notify::spawn_listener(pool.clone(), events, index_tx);
    // the listener bumps once it listens (it may have missed progress while connecting)
    progress.changed().await.unwrap();
    let seen = *progress.borrow_and_update();
    sqlx::query(
        "INSERT INTO indexer_checkpoints (chain_id, deployment_key, indexed_through) VALUES (1, $1, 7)",
    )
    .bind(format!("{:#x}", Address::repeat_byte(1)))
    .execute(&pool)
    .await
    .unwrap();
    progress.changed().await.unwrap();
    assert!(*progress.borrow() > seen);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_worker_cut_off_from_the_database_stops_its_job_before_another_takes_it(pool: PgPool) {
    let q = Queue::new(pool.clone());
    let h = TestJob::default();
    let id = submit(&q, "hang_first", 3).await;
    // worker A reaches the database through a proxy the test can cut
    let (cut_off, proxy) = openledger_testkit::proxy::pool_through(&pool).await;
    let a = start(&cut_off, &h, "cut-off", cfg());
    wait_started(&h, id).await;
    // the database goes away for A alone: its heartbeats fail, and it stops the run at half the stale period
    proxy.cut();
    let b = start(&pool, &h, "survivor", cfg());
    let done = wait_state(&q, id, JobState::Succeeded).await;
    assert_eq!(done.result, Some(json!({ "attempt": 2 })));
    assert_eq!(
        h.dropped.lock().unwrap().clone(),
        vec![id],
        "A dropped its run"
    );
    assert!(
        h.overlaps.lock().unwrap().is_empty(),
        "a second worker started the job while the first still ran it"
    );
    let starts = h.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[0].2.starts_with("cut-off") && starts[1].2.starts_with("survivor"));
    b.stop.send(true).unwrap();
    b.task.await.unwrap();
    a.task.abort();
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn the_notification_listener_comes_back_after_the_database_does(pool: PgPool) {
    let (proxied, proxy) = openledger_testkit::proxy::pool_through(&pool).await;
    let (events, mut rx) = broadcast::channel(64);
    let (index_tx, mut progress) = watch::channel(0);
    openledger_daemon::notify::spawn_listener(proxied, events, index_tx);
    progress.changed().await.unwrap();
    progress.borrow_and_update();
    proxy.cut();
    // while the database is away for the listener, jobs change: those notifications are lost to it
    let q = Queue::new(pool.clone());
    submit(&q, "ok", 1).await;
    proxy.restore();
    // back: the listener reconnects, says so (waiters look again), and forwards what happens next
    progress.changed().await.unwrap();
    let id = submit(&q, "ok", 1).await;
    loop {
        if rx.recv().await.unwrap() == id {
            break;
        }
    }
}

/// A model may emit NUL, which Postgres text cannot hold: the answer is recorded all the same (an answer that
/// cannot be recorded is not delivered), its text showing U+FFFD there, its token ids exact; with `n` = 2 the
/// second choice is recorded beside the first, and the row counts the tokens of both.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn an_answer_with_a_nul_is_recorded(pool: PgPool) {
    use openledger_daemon::inference::records::{self, NewInference};
    use openledger_model::serve::engine::{FinishReason, Finished};
    let id = records::new_id();
    let hash = format!("0x{}", "ab".repeat(32));
    records::insert(
        &pool,
        &NewInference {
            id: &id,
            model: "base",
            kind: "chat",
            base_model_hash: &hash,
            job_id: None,
            adapter_hash: None,
            caller: None,
            payment_mode: "free",
            chain_id: None,
            model_id: None,
            paid: None,
            price_per_1k: None,
            batch: None,
            prompt_tokens: 3,
            max_tokens: 4,
            choices: 2,
            lease: Some(("test", Duration::from_secs(30))),
        },
    )
    .await
    .unwrap();
    let done = Finished {
        reason: FinishReason::Length,
        prompt_tokens: 3,
        tokens: vec![0, 7, 0],
        text: "a\0b".into(),
        queued: Duration::ZERO,
        first_token: Duration::ZERO,
        total: Duration::ZERO,
        logprobs: Vec::new(),
    };
    let second = Finished {
        reason: FinishReason::Stop,
        tokens: vec![9, 0],
        text: "c\0".into(),
        total: Duration::from_millis(5),
        ..done.clone()
    };
    let mut tx = pool.begin().await.unwrap();
    records::succeeded(&mut tx, &id, &[done, second])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (status, text, tokens, completion, latency): (String, String, Vec<i32>, i32, i32) =
        sqlx::query_as(
            "SELECT status, output_text, output_tokens, completion_tokens, latency_ms FROM inferences WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(text, "a\u{FFFD}b");
    assert_eq!(tokens, [0, 7, 0]);
    assert_eq!((completion, latency), (5, 5));
    let more: Vec<(i16, Vec<i32>, String, String)> = sqlx::query_as(
        "SELECT choice, output_tokens, output_text, finish_reason FROM inference_choices
         WHERE inference_id = $1 ORDER BY choice",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        more,
        [(1, vec![9, 0], "c\u{FFFD}".to_string(), "stop".to_string())]
    );
}
