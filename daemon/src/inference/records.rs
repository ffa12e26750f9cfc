//! The `inferences` table: a row is written (claiming its payment) before the engine starts, and
//! completed in one update when the generation ends.

use std::time::Duration;

use alloy::primitives::{Address, U256};
use openledger_model::serve::Finished;
use sqlx::PgPool;

use super::payment::Paid;

/// A new inference, as its row records it before serving.
#[derive(Debug, Clone)]
pub struct NewInference<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub kind: &'a str,
    pub base_model_hash: &'a str,
    pub job_id: Option<i64>,
    pub adapter_hash: Option<&'a str>,
    pub caller: Option<Address>,
    /// `pay_first`, `sponsored` or `free`.
    pub payment_mode: &'a str,
    pub chain_id: Option<i64>,
    pub model_id: Option<U256>,
    pub paid: Option<&'a Paid>,
    pub price_per_1k: Option<U256>,
    /// `(job id, line index)` of the batch this request came from.
    pub batch: Option<(i64, i32)>,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// `n`: how many choices answer it (each up to `max_tokens`).
    pub choices: usize,
    /// An interactive request's claim: the serving process and how long the row is its own without a
    /// renewal (`None` for batch lines, fenced by their job's lease).
    pub lease: Option<(&'a str, Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("request {0} has already been served: a payment pays for one inference")]
    PaymentUsed(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub fn new_id() -> String {
    format!("inf-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// Inserts the row; a payment another inference already used is refused by the unique index.
pub async fn insert(pool: &PgPool, n: &NewInference<'_>) -> Result<(), RecordError> {
    let r = sqlx::query(
        "INSERT INTO inferences (id, model, kind, base_model_hash, job_id, adapter_hash, caller, payment_mode,
                                 chain_id, model_id, payer, request_id, amount, price_per_1k, tx_hash,
                                 batch_job_id, batch_line, prompt_tokens, max_tokens, lease_owner, lease_expires_at,
                                 choices)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::numeric, $11, $12, $13::numeric, $14::numeric, $15,
                 $16, $17, $18, $19, $20,
                 CASE WHEN $20::text IS NULL THEN NULL ELSE now() + make_interval(secs => $21) END, $22)",
    )
    .bind(n.id)
    .bind(n.model)
    .bind(n.kind)
    .bind(n.base_model_hash)
    .bind(n.job_id)
    .bind(n.adapter_hash)
    .bind(n.caller.map(|a| format!("{a:#x}")))
    .bind(n.payment_mode)
    .bind(n.chain_id)
    .bind(n.model_id.map(|m| m.to_string()))
    .bind(n.paid.map(|p| format!("{:#x}", p.payer)))
    .bind(n.paid.map(|p| format!("{:#x}", p.request_id)))
    .bind(n.paid.map(|p| p.amount.to_string()))
    .bind(n.price_per_1k.map(|p| p.to_string()))
    .bind(n.paid.map(|p| format!("{:#x}", p.tx_hash)))
    .bind(n.batch.map(|b| b.0))
    .bind(n.batch.map(|b| b.1))
    .bind(n.prompt_tokens as i32)
    .bind(n.max_tokens as i32)
    .bind(n.lease.map(|(owner, _)| owner))
    .bind(n.lease.map_or(0.0, |(_, ttl)| ttl.as_secs_f64()))
    .bind(n.choices as i16)
    .execute(pool)
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(d)) if d.constraint() == Some("inferences_payment") => {
            Err(RecordError::PaymentUsed(
                n.paid
                    .map(|p| format!("{:#x}", p.request_id))
                    .unwrap_or_default(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Postgres text cannot hold NUL, which a model may emit: the stored text shows it as U+FFFD (the tokens,
/// stored too, are exact).
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn ids(tokens: &[u32]) -> Vec<i32> {
    tokens.iter().map(|&t| t as i32).collect()
}

/// Marks a running inference succeeded with its answer: choice 0 on the row (with the tokens of every
/// choice counted in `completion_tokens`, and the slowest choice's latency), the others in
/// `inference_choices`. Run it inside the transaction that records the attribution, when there is one.
pub async fn succeeded(
    db: &mut sqlx::PgConnection,
    id: &str,
    choices: &[Finished],
) -> Result<(), sqlx::Error> {
    let Some(first) = choices.first() else {
        return Err(sqlx::Error::Protocol("an answer without choices".into()));
    };
    let ms = |d: Duration| d.as_millis().min(i32::MAX as u128) as i32;
    let completion: usize = choices.iter().map(|f| f.tokens.len()).sum();
    let queued = choices.iter().map(|f| f.queued).min().unwrap_or_default();
    let first_token = choices
        .iter()
        .map(|f| f.first_token)
        .min()
        .unwrap_or_default();
    let total = choices.iter().map(|f| f.total).max().unwrap_or_default();
    let r = sqlx::query(
        "UPDATE inferences SET status = 'succeeded', completion_tokens = $2, output_tokens = $3, output_text = $4,
                finish_reason = $5, queue_ms = $6, first_token_ms = $7, latency_ms = $8, finished_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(completion as i32)
    .bind(ids(&first.tokens))
    .bind(storable(&first.text))
    .bind(first.reason.as_str())
    .bind(ms(queued))
    .bind(ms(first_token))
    .bind(ms(total))
    .execute(&mut *db)
    .await?;
    if r.rows_affected() == 0 {
        // the lease failed it meanwhile: its payment is free again, so the answer is not recorded as served
        return Ok(());
    }
    for (i, f) in choices.iter().enumerate().skip(1) {
        sqlx::query(
            "INSERT INTO inference_choices (inference_id, choice, output_tokens, output_text, finish_reason)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(i as i16)
        .bind(ids(&f.tokens))
        .bind(storable(&f.text))
        .bind(f.reason.as_str())
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

/// `failed` releases the payment (the unique index skips failed rows), so the client may retry with it,
/// and refunds a credit charge; `cancelled` (the client went away mid-stream) keeps both used.
pub async fn ended(
    pool: &PgPool,
    id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inferences SET status = $2, error = $3, finished_at = now() WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .execute(pool)
    .await?;
    if status == "failed" {
        super::credits::refund_inference(pool, id).await?;
    }
    Ok(())
}

/// Renews the leases of the interactive inferences `owner` (this process) is still answering.
pub async fn renew_leases(pool: &PgPool, owner: &str, ttl: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE inferences SET lease_expires_at = now() + make_interval(secs => $2)
         WHERE lease_owner = $1 AND status = 'running'",
    )
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Fails the interactive inferences whose lease ran out (the process answering them died or lost the
/// database for longer than the lease), as `ended(.., "failed", ..)` does: the payment is free for a retry
/// and a credit charge is refunded. The ids failed.
pub async fn reap_expired(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE inferences SET status = 'failed', finished_at = now(),
                error = 'interrupted: the process serving it stopped before the answer was complete'
         WHERE status = 'running' AND batch_job_id IS NULL AND lease_expires_at < now() RETURNING id",
    )
    .fetch_all(pool)
    .await?;
    for id in &ids {
        super::credits::refund_inference(pool, id).await?;
    }
    Ok(ids)
}

/// A sponsored payment made for this batch line by a run that was interrupted before the line finished,
/// and not used since: a resumed batch reuses it instead of paying twice.
pub async fn unused_sponsored_payment(
    pool: &PgPool,
    job_id: i64,
    line: i32,
    model_id: U256,
    need: U256,
) -> Result<Option<Paid>, sqlx::Error> {
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT i.payer, i.request_id, i.amount::text, i.tx_hash FROM inferences i
         WHERE i.batch_job_id = $1 AND i.batch_line = $2 AND i.payment_mode = 'sponsored'
           AND i.status = 'failed' AND i.model_id = $3::numeric AND i.amount >= $4::numeric
           AND NOT EXISTS (SELECT 1 FROM inferences j WHERE j.chain_id = i.chain_id AND j.payer = i.payer
                           AND j.request_id = i.request_id AND j.status <> 'failed')
         ORDER BY i.created_at DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(line)
    .bind(model_id.to_string())
    .bind(need.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(payer, rid, amount, tx)| {
        Some(Paid {
            payer: payer.parse().ok()?,
            request_id: rid.parse().ok()?,
            amount: amount.parse().ok()?,
            tx_hash: tx.parse().ok()?,
        })
    }))
}

/// Marks a batch's rows that an interrupted run left `running` as failed (which frees their payments
/// for the resumed run, and refunds their credit charges: a resumed line is charged again).
pub async fn fail_interrupted(pool: &PgPool, job_id: i64) -> Result<u64, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE inferences SET status = 'failed', error = 'interrupted: the batch job restarted', finished_at = now()
         WHERE batch_job_id = $1 AND status = 'running' RETURNING id",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    for id in &ids {
        super::credits::refund_inference(pool, id).await?;
    }
    Ok(ids.len() as u64)
}
