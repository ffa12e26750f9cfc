//! Per-address quotas on what costs the operator: bytes stored, relays (gas the daemon's key pays), training
//! steps, concurrent jobs and batch lines. Ground floor: the domains that take such actions (uploads, relays,
//! the job queue) charge here inside their own transaction, so a refused or rolled-back action is never
//! counted, and every `serve` sharing the database sees one count. Operators (admin keys) are not charged.
//!
//! Daily quotas are a rolling 24-hour window over `quota_usage`; the concurrent-jobs quota counts the owner's
//! queued and running jobs.

use std::time::Duration;

use alloy::primitives::Address;
use sqlx::PgConnection;

/// Bytes (new contribution content, batch input files) an address may upload per day, by default (100 MiB).
pub const DEFAULT_UPLOAD_BYTES_PER_DAY: u64 = 100 * 1024 * 1024;
/// Contributions the daemon relays (and pays gas for) per address and day, by default.
pub const DEFAULT_RELAYS_PER_DAY: u64 = 1_000;
/// Training steps an address may queue per day, by default.
pub const DEFAULT_TRAIN_STEPS_PER_DAY: u64 = 20_000;
/// Jobs an address may have queued or running at once (relays not counted), by default.
pub const DEFAULT_CONCURRENT_JOBS: u64 = 16;
/// Batch inference lines an address may queue per day, by default.
pub const DEFAULT_BATCH_LINES_PER_DAY: u64 = 200_000;
/// The window of the daily quotas.
pub const WINDOW: Duration = Duration::from_secs(86_400);
/// What a 429 for too many concurrent jobs suggests waiting, in seconds.
const CONCURRENT_RETRY_SECS: u64 = 30;

/// The limits (`openledger serve --quota-*`); 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub upload_bytes_per_day: u64,
    pub relays_per_day: u64,
    pub train_steps_per_day: u64,
    pub concurrent_jobs: u64,
    pub batch_lines_per_day: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            upload_bytes_per_day: DEFAULT_UPLOAD_BYTES_PER_DAY,
            relays_per_day: DEFAULT_RELAYS_PER_DAY,
            train_steps_per_day: DEFAULT_TRAIN_STEPS_PER_DAY,
            concurrent_jobs: DEFAULT_CONCURRENT_JOBS,
            batch_lines_per_day: DEFAULT_BATCH_LINES_PER_DAY,
        }
    }
}

/// One quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    UploadBytes,
    Relays,
    TrainSteps,
    ConcurrentJobs,
    BatchLines,
}

impl Quota {
    /// The `serve` flag that sets it: what a 429 names.
    pub fn flag(self) -> &'static str {
        match self {
            Quota::UploadBytes => "--quota-upload-bytes-per-day",
            Quota::Relays => "--quota-relays-per-day",
            Quota::TrainSteps => "--quota-train-steps-per-day",
            Quota::ConcurrentJobs => "--quota-concurrent-jobs",
            Quota::BatchLines => "--quota-batch-lines-per-day",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Quota::UploadBytes => "upload_bytes",
            Quota::Relays => "relays",
            Quota::TrainSteps => "train_steps",
            Quota::ConcurrentJobs => "concurrent_jobs",
            Quota::BatchLines => "batch_lines",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Quota::UploadBytes => "uploaded bytes",
            Quota::Relays => "relayed contributions",
            Quota::TrainSteps => "training steps",
            Quota::ConcurrentJobs => "queued or running jobs",
            Quota::BatchLines => "batch lines",
        }
    }
}

/// An action the quota has no room for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub quota: Quota,
    pub owner: Address,
    pub limit: u64,
    /// What the window (or, for concurrent jobs, the queue) holds already.
    pub used: u64,
    /// What the refused action needed.
    pub asked: u64,
    /// Seconds until enough of the window expires for the action to fit (a lower bound for concurrent jobs).
    pub retry_after: u64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Exceeded {
            quota,
            owner,
            limit,
            used,
            asked,
            ..
        } = self;
        let unit = quota.unit();
        match quota {
            Quota::ConcurrentJobs => write!(
                f,
                "{owner:#x} has {used} {unit} and may have at most {limit} ({}); wait for one to finish",
                quota.flag()
            ),
            _ if asked > limit => write!(
                f,
                "this needs {asked} {unit}, more than the {limit} an address may use per day ({})",
                quota.flag()
            ),
            _ => write!(
                f,
                "{owner:#x} used {used} of its {limit} {unit} per day ({}) and this needs {asked}; \
                 retry in {} s",
                quota.flag(),
                self.retry_after
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{0}")]
    Exceeded(Exceeded),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl Quotas {
    /// No limits at all (operators, tools).
    pub const UNLIMITED: Quotas = Quotas {
        upload_bytes_per_day: 0,
        relays_per_day: 0,
        train_steps_per_day: 0,
        concurrent_jobs: 0,
        batch_lines_per_day: 0,
    };

    fn limit(&self, q: Quota) -> u64 {
        match q {
            Quota::UploadBytes => self.upload_bytes_per_day,
            Quota::Relays => self.relays_per_day,
            Quota::TrainSteps => self.train_steps_per_day,
            Quota::ConcurrentJobs => self.concurrent_jobs,
            Quota::BatchLines => self.batch_lines_per_day,
        }
    }

    /// Charges `amount` of a daily quota to `owner` inside the caller's transaction, or refuses. With `reference`
    /// the charge is made once: charging the same reference again costs nothing.
    pub async fn charge(
        &self,
        conn: &mut PgConnection,
        owner: Address,
        quota: Quota,
        amount: u64,
        reference: Option<&str>,
    ) -> Result<(), QuotaError> {
        let limit = self.limit(quota);
        if limit == 0 || quota == Quota::ConcurrentJobs {
            return Ok(());
        }
        let who = format!("{owner:#x}");
        lock(conn, &who, quota).await?;
        let secs = WINDOW.as_secs_f64();
        sqlx::query(
            "DELETE FROM quota_usage WHERE owner = $1 AND quota = $2
               AND at <= now() - make_interval(secs => $3)",
        )
        .bind(&who)
        .bind(quota.key())
        .bind(secs)
        .execute(&mut *conn)
        .await?;
        if let Some(r) = reference {
            let charged: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM quota_usage WHERE owner = $1 AND quota = $2 AND ref = $3)",
            )
            .bind(&who)
            .bind(quota.key())
            .bind(r)
            .fetch_one(&mut *conn)
            .await?;
            if charged {
                return Ok(());
            }
        }
        // the window's charges, oldest first, with the seconds until each leaves it
        let rows: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT amount, GREATEST(0, extract(epoch FROM at + make_interval(secs => $3) - now()))::float8
             FROM quota_usage WHERE owner = $1 AND quota = $2 ORDER BY at, id",
        )
        .bind(&who)
        .bind(quota.key())
        .bind(secs)
        .fetch_all(&mut *conn)
        .await?;
        let used: u64 = rows.iter().map(|(a, _)| *a as u64).sum();
        if used.saturating_add(amount) > limit {
            // the wait until the oldest charges have left enough room (never, if the action is too big)
            let mut left = used;
            let mut retry_after = WINDOW.as_secs();
            if amount <= limit {
                for (a, secs_left) in &rows {
                    left = left.saturating_sub(*a as u64);
                    if left + amount <= limit {
                        retry_after = secs_left.ceil().max(1.0) as u64;
                        break;
                    }
                }
            }
            return Err(QuotaError::Exceeded(Exceeded {
                quota,
                owner,
                limit,
                used,
                asked: amount,
                retry_after,
            }));
        }
        sqlx::query("INSERT INTO quota_usage (owner, quota, amount, ref) VALUES ($1, $2, $3, $4)")
            .bind(&who)
            .bind(quota.key())
            .bind(i64::try_from(amount).unwrap_or(i64::MAX))
            .bind(reference)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Refuses a new job when `owner` already has `concurrent_jobs` queued or running (relays, which the
    /// daemon queues for each signed contribution, have their own quota and are not counted). Serialised per
    /// owner until the caller's transaction ends, so concurrent submissions cannot overshoot together.
    pub async fn check_concurrent_jobs(
        &self,
        conn: &mut PgConnection,
        owner: Address,
        not_counted: &[&str],
    ) -> Result<(), QuotaError> {
        let limit = self.concurrent_jobs;
        if limit == 0 {
            return Ok(());
        }
        let who = format!("{owner:#x}");
        lock(conn, &who, Quota::ConcurrentJobs).await?;
        let skip: Vec<String> = not_counted.iter().map(|s| s.to_string()).collect();
        let used: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE owner = $1 AND state IN ('queued', 'running')
               AND kind <> ALL($2)",
        )
        .bind(&who)
        .bind(&skip)
        .fetch_one(&mut *conn)
        .await?;
        let used = used.max(0) as u64;
        if used >= limit {
            return Err(QuotaError::Exceeded(Exceeded {
                quota: Quota::ConcurrentJobs,
                owner,
                limit,
                used,
                asked: 1,
                retry_after: CONCURRENT_RETRY_SECS,
            }));
        }
        Ok(())
    }
}

/// The reference under which a job's use is charged (once, whatever its attempts).
pub fn job_ref(job_id: i64) -> String {
    format!("job:{job_id}")
}

/// Records `reference` as charged (nothing) to `owner`: what an exempt action (an operator's) leaves, so a
/// later `charge` of the same reference costs nothing.
pub async fn settled(
    conn: &mut PgConnection,
    owner: Address,
    quota: Quota,
    reference: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO quota_usage (owner, quota, amount, ref) VALUES ($1, $2, 0, $3)
         ON CONFLICT (owner, quota, ref) WHERE ref IS NOT NULL DO NOTHING",
    )
    .bind(format!("{owner:#x}"))
    .bind(quota.key())
    .bind(reference)
    .execute(conn)
    .await?;
    Ok(())
}

/// Serialises charges of one owner and quota until the transaction ends.
async fn lock(conn: &mut PgConnection, owner: &str, quota: Quota) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("quota:{}:{owner}", quota.key()))
        .execute(conn)
        .await?;
    Ok(())
}
