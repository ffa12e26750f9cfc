//! The job queue's database side. Every state change is one statement or one transaction, fenced by the
//! claim (`worker` + `attempts`), so a worker that lost its job (reaped after a stale heartbeat, or
//! cancelled) can never complete it: several `serve` processes may share one database.

use std::time::Duration;

use alloy::primitives::Address;
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::quotas::{self, Quota, QuotaError, Quotas};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    /// Owner address.
    pub owner: String,
    #[schema(value_type = Object)]
    pub params: Value,
    /// queued, running, succeeded, failed or cancelled.
    pub state: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub run_after: OffsetDateTime,
    pub worker: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub heartbeat_at: Option<OffsetDateTime>,
    pub cancel_requested: bool,
    /// 0 to 1.
    pub progress: f32,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
}

impl Job {
    pub fn state(&self) -> JobState {
        JobState::parse(&self.state).unwrap_or(JobState::Failed)
    }
}

#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct LogLine {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct MetricPoint {
    pub step: i64,
    pub name: String,
    pub value: f64,
}

/// A new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub owner: Address,
    pub params: Value,
    pub priority: i32,
    pub max_attempts: i32,
}

/// Filters for listing.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner: Option<Address>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// What a claim hands a worker: the job and its fencing token.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    pub worker: String,
    pub attempt: i32,
}

/// How a cancel request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its worker stops it at its next heartbeat.
    Requested,
    /// It had already finished.
    AlreadyFinished(JobState),
}

/// The longest wait before a failed attempt's retry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long after its creation a job is retried for as long as what it needs (the node, the database) is
/// away, whatever its attempts.
pub const UNAVAILABLE_RETRY_WINDOW: Duration = Duration::from_secs(3600);

const JOB_COLUMNS: &str = "id, kind, owner, params, state, priority, attempts, max_attempts, run_after, worker, \
     heartbeat_at, cancel_requested, progress, result, error, created_at, started_at, finished_at";

/// What a submitted job is charged against.
#[derive(Debug, Clone, Copy)]
pub enum Charged<'a> {
    /// The owner's quotas.
    Within(&'a Quotas),
    /// Nothing: an operator's job.
    Exempt,
}

/// The queue over one database.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
}

impl Queue {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn submit(&self, new: &NewJob) -> Result<Job, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let job = Self::submit_in(&mut tx, new).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Queues a job submitted by its owner, within the owner's quotas: the concurrent-jobs limit (kinds in
    /// `not_counted` aside) and the daily `usage`, charged in the transaction that inserts the job. An
    /// operator's job (`Charged::Exempt`) is checked and charged against nothing, and marked as settled so
    /// that nothing is charged when it runs either.
    pub async fn submit_charged(
        &self,
        new: &NewJob,
        charged: Charged<'_>,
        usage: &[(Quota, u64)],
        not_counted: &[&str],
    ) -> Result<Job, QuotaError> {
        let mut tx = self.pool.begin().await?;
        let quotas = match charged {
            Charged::Within(q) => q,
            Charged::Exempt => &Quotas::UNLIMITED,
        };
        quotas
            .check_concurrent_jobs(&mut tx, new.owner, not_counted)
            .await?;
        let job = Self::submit_in(&mut tx, new).await?;
        let reference = quotas::job_ref(job.id);
        for &(quota, amount) in usage {
            quotas
                .charge(&mut tx, new.owner, quota, amount, Some(&reference))
                .await?;
        }
        if matches!(charged, Charged::Exempt) {
            quotas::settled(&mut tx, new.owner, Quota::TrainSteps, &reference).await?;
        }
        tx.commit().await?;
        Ok(job)
    }

    /// Inserts a job inside a caller's transaction (e.g. together with the row it works on).
    pub async fn submit_in(
        conn: &mut sqlx::PgConnection,
        new: &NewJob,
    ) -> Result<Job, sqlx::Error> {
        let job: Job = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (kind, owner, params, priority, max_attempts) VALUES ($1, $2, $3, $4, $5)
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(&new.kind)
        .bind(format!("{:#x}", new.owner))
        .bind(&new.params)
        .bind(new.priority)
        .bind(new.max_attempts)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, 'info', $2)")
            .bind(job.id)
            .bind(format!("queued by {}", job.owner))
            .execute(&mut *conn)
            .await?;
        Ok(job)
    }

    pub async fn get(&self, id: i64) -> Result<Option<Job>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn list(&self, f: &JobFilter) -> Result<Vec<Job>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR kind = $3)
             ORDER BY id DESC LIMIT $4 OFFSET $5"
        )))
        .bind(f.owner.map(|a| format!("{a:#x}")))
        .bind(f.state.map(JobState::as_str))
        .bind(f.kind.as_deref())
        .bind(f.limit)
        .bind(f.offset)
        .fetch_all(&self.pool)
        .await
    }

    /// Claims the next runnable job of one of `kinds` for `worker`, skipping rows other workers hold.
    pub async fn claim(
        &self,
        worker: &str,
        kinds: &[String],
    ) -> Result<Option<Lease>, sqlx::Error> {
        let job: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET state = 'running', worker = $1, attempts = attempts + 1, heartbeat_at = now(),
                    started_at = now(), error = NULL
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE state = 'queued' AND run_after <= now() AND kind = ANY($2)
                 ORDER BY priority DESC, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(worker)
        .bind(kinds)
        .fetch_optional(&self.pool)
        .await?;
        let Some(job) = job else { return Ok(None) };
        self.log(
            job.id,
            "info",
            &format!("attempt {} started on {worker}", job.attempts),
        )
        .await?;
        Ok(Some(Lease {
            attempt: job.attempts,
            worker: worker.to_owned(),
            job,
        }))
    }

    /// Renews the lease. `None`: the lease is gone (reaped, or finished elsewhere); `Some(cancel_requested)`.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<Option<bool>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE jobs SET heartbeat_at = now()
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'
             RETURNING cancel_requested",
        )
        .bind(lease.job.id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn progress(&self, lease: &Lease, progress: f32) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE jobs SET progress = $4 WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
        )
        .bind(lease.job.id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .bind(progress.clamp(0.0, 1.0))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn log(&self, job_id: i64, level: &str, message: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, $2, $3)")
            .bind(job_id)
            .bind(level)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn metric(
        &self,
        job_id: i64,
        step: i64,
        name: &str,
        value: f64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO job_metrics (job_id, step, name, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id, name, step) DO UPDATE SET value = EXCLUDED.value, at = now()",
        )
        .bind(job_id)
        .bind(step)
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finishes a leased job. False if the lease was lost: then nothing is written.
    pub async fn finish(
        &self,
        lease: &Lease,
        state: JobState,
        result: Option<&Value>,
        error: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE jobs SET state = $4, result = $5, error = $6, worker = NULL, heartbeat_at = NULL,
                    finished_at = now(), progress = CASE WHEN $4 = 'succeeded' THEN 1 ELSE progress END
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
        )
        .bind(lease.job.id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .bind(state.as_str())
        .bind(result)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        let line = match error {
            Some(e) => format!("{}: {e}", state.as_str()),
            None => state.as_str().to_owned(),
        };
        let level = if state == JobState::Succeeded {
            "info"
        } else {
            "error"
        };
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, $2, $3)")
            .bind(lease.job.id)
            .bind(level)
            .bind(line)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A failed attempt: back to the queue while attempts remain, else failed. The wait doubles with each
    /// attempt (`backoff`, twice that, ...; at most `MAX_BACKOFF`), so a job outlasts an outage of its node or
    /// database of a minute or more rather than spending its attempts within seconds.
    /// `unavailable`: the node or the database was away, and the job is retried past its attempts while it
    /// is younger than [`UNAVAILABLE_RETRY_WINDOW`].
    pub async fn fail_attempt(
        &self,
        lease: &Lease,
        error: &str,
        backoff: Duration,
        unavailable: bool,
    ) -> Result<JobState, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(
            "WITH j AS (SELECT attempts < max_attempts
                               OR ($7 AND created_at > now() - make_interval(secs => $8)) AS again
                        FROM jobs WHERE id = $1)
             UPDATE jobs SET state = CASE WHEN j.again THEN 'queued' ELSE 'failed' END,
                    run_after = now() + make_interval(secs => LEAST($4 * power(2, attempts - 1), $6)),
                    error = $5, worker = NULL,
                    heartbeat_at = NULL,
                    finished_at = CASE WHEN j.again THEN NULL ELSE now() END
             FROM j
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'
             RETURNING state",
        )
        .bind(lease.job.id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .bind(backoff.as_secs_f64())
        .bind(error)
        .bind(MAX_BACKOFF.as_secs_f64())
        .bind(unavailable)
        .bind(UNAVAILABLE_RETRY_WINDOW.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(JobState::Failed);
        };
        let msg = if state == "queued" {
            format!("attempt {} failed, will retry: {error}", lease.attempt)
        } else {
            format!(
                "attempt {} failed, no attempts left: {error}",
                lease.attempt
            )
        };
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, 'error', $2)")
            .bind(lease.job.id)
            .bind(msg)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(JobState::parse(&state).unwrap_or(JobState::Failed))
    }

    /// Hands a leased job back untouched (graceful shutdown): the attempt does not count.
    pub async fn release(&self, lease: &Lease) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, worker = NULL, heartbeat_at = NULL
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
        )
        .bind(lease.job.id)
        .bind(&lease.worker)
        .bind(lease.attempt)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            self.log(
                lease.job.id,
                "warn",
                "released back to the queue (worker shutting down)",
            )
            .await?;
        }
        Ok(r.rows_affected() == 1)
    }

    /// Running jobs whose worker stopped beating for `stale_after`: retried while attempts remain.
    pub async fn reap(&self, stale_after: Duration) -> Result<Vec<(i64, JobState)>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled'
                                          WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,
                    error = 'worker ' || worker || ' stopped heartbeating',
                    worker = NULL, heartbeat_at = NULL,
                    finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN now() END
             WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)
             RETURNING id, state, error",
        )
        .bind(stale_after.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        for (id, state, error) in &rows {
            sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, 'warn', $2)")
                .bind(id)
                .bind(format!("{error}; now {state}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(id, s, _)| (id, JobState::parse(&s).unwrap_or(JobState::Failed)))
            .collect())
    }

    /// Cancels a queued job at once, or asks the worker of a running one to stop.
    pub async fn cancel(&self, id: i64) -> Result<Option<CancelOutcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(state) = state.as_deref().and_then(JobState::parse) else {
            return Ok(None);
        };
        let outcome = match state {
            JobState::Queued => {
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', finished_at = now(), cancel_requested = true WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                CancelOutcome::Cancelled
            }
            JobState::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested
            }
            done => return Ok(Some(CancelOutcome::AlreadyFinished(done))),
        };
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, 'warn', $2)")
            .bind(id)
            .bind(match outcome {
                CancelOutcome::Cancelled => "cancelled",
                _ => "cancellation requested",
            })
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    /// Puts a failed or cancelled job back in the queue with fresh attempts. `Err(state)` if it is not.
    pub async fn retry(&self, id: i64) -> Result<Option<Result<Job, JobState>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let job: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else { return Ok(None) };
        if !matches!(job.state(), JobState::Failed | JobState::Cancelled) {
            return Ok(Some(Err(job.state())));
        }
        let job: Job = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_after = now(), cancel_requested = false,
                    error = NULL, result = NULL, progress = 0, finished_at = NULL
             WHERE id = $1 RETURNING {JOB_COLUMNS}"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO job_logs (job_id, level, message) VALUES ($1, 'info', 'queued again (retry)')")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Ok(job)))
    }

    pub async fn logs(&self, id: i64, after: i64, limit: i64) -> Result<Vec<LogLine>, sqlx::Error> {
        sqlx::query_as(
            "SELECT seq, at, level, message FROM job_logs WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn metrics(&self, id: i64) -> Result<Vec<MetricPoint>, sqlx::Error> {
        sqlx::query_as(
            "SELECT step, name, value FROM job_metrics WHERE job_id = $1 ORDER BY name, step",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
    }

    /// Jobs per state (for `/metrics` and `openledger status`).
    pub async fn depth(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await
    }
}
