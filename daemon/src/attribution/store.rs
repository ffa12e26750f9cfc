//! The `attributions` and `attribution_weights` tables.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::{AttributionError, Record};

/// A stored attribution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub inference_id: String,
    pub job_id: i64,
    pub method: String,
    pub status: String,
    pub prompt_tokens: Vec<i32>,
    /// Parsed from `record_canonical` (the hashed text), not from the JSONB column.
    #[sqlx(skip)]
    pub record: Option<Value>,
    pub record_canonical: Option<String>,
    pub record_hash: Option<String>,
    pub no_attribution: Option<i64>,
    pub error: Option<String>,
    pub attempts: i32,
}

/// Inserts (or, for a pending record, completes) the attribution of `inference_id`: the record and its
/// weights, or the error that flags it. Runs inside the caller's transaction.
pub async fn save(
    tx: &mut PgConnection,
    inference_id: &str,
    job_id: i64,
    prompt: &[u32],
    outcome: &Result<Record, AttributionError>,
) -> Result<(), sqlx::Error> {
    let prompt: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let (status, none, error) = match outcome {
        Ok(r) if r.pending => ("pending", None, None),
        Ok(r) => (
            "complete",
            r.body["weights"]["no_attribution"].as_i64(),
            None,
        ),
        Err(e) => ("flagged", None, Some(e.to_string())),
    };
    let record = outcome.as_ref().ok();
    let (body, hash, canonical) = (
        record.map(|r| &r.body),
        record.map(|r| &r.hash),
        record.map(|r| &r.canonical),
    );
    sqlx::query(
        "INSERT INTO attributions (inference_id, job_id, method, status, prompt_tokens, record, record_hash,
                                   no_attribution, error, record_canonical)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (inference_id) DO UPDATE SET status = EXCLUDED.status, record = EXCLUDED.record,
             record_canonical = EXCLUDED.record_canonical,
             record_hash = EXCLUDED.record_hash, no_attribution = EXCLUDED.no_attribution,
             error = EXCLUDED.error, attempts = attributions.attempts + 1, updated_at = now()",
    )
    .bind(inference_id)
    .bind(job_id)
    .bind(
        record
            .and_then(|r| r.body["method"].as_str())
            .unwrap_or(openledger_attribution::METHOD),
    )
    .bind(status)
    .bind(&prompt)
    .bind(body)
    .bind(hash)
    .bind(none)
    .bind(error)
    .bind(canonical)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM attribution_weights WHERE inference_id = $1")
        .bind(inference_id)
        .execute(&mut *tx)
        .await?;
    if let (Ok(r), "complete") = (outcome, status) {
        let empty = vec![];
        let rows = r.body["weights"]["contributions"]
            .as_array()
            .unwrap_or(&empty);
        for w in rows {
            sqlx::query(
                "INSERT INTO attribution_weights (inference_id, source, datanet_id, contribution_id, contributor, weight)
                 VALUES ($1, $2, $3::numeric, $4::numeric, $5, $6)",
            )
            .bind(inference_id)
            .bind(w["source"].as_i64().unwrap_or(-1) as i32)
            .bind(w["datanet_id"].as_str())
            .bind(w["contribution_id"].as_str())
            .bind(w["contributor"].as_str())
            .bind(w["weight"].as_i64())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

pub async fn get(pool: &PgPool, inference_id: &str) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<Stored> = sqlx::query_as(
        "SELECT inference_id, job_id, method, status, prompt_tokens, record_canonical, record_hash,
                no_attribution, error, attempts
         FROM attributions WHERE inference_id = $1",
    )
    .bind(inference_id)
    .fetch_optional(pool)
    .await?;
    row.map(|mut r| {
        r.record = match r.record_canonical.as_deref() {
            Some(c) => Some(serde_json::from_str(c).map_err(|e| sqlx::Error::Decode(Box::new(e)))?),
            None => None,
        };
        Ok(r)
    })
    .transpose()
}

/// Every choice's output tokens of an inference, in choice order (choice 0 on its row, the others in
/// `inference_choices`); `None` when there is no such inference.
pub async fn outputs(
    pool: &PgPool,
    inference_id: &str,
) -> Result<Option<Vec<Vec<i32>>>, sqlx::Error> {
    let first: Option<Option<Vec<i32>>> =
        sqlx::query_scalar("SELECT output_tokens FROM inferences WHERE id = $1")
            .bind(inference_id)
            .fetch_optional(pool)
            .await?;
    let Some(first) = first else {
        return Ok(None);
    };
    let more: Vec<Vec<i32>> = sqlx::query_scalar(
        "SELECT output_tokens FROM inference_choices WHERE inference_id = $1 ORDER BY choice",
    )
    .bind(inference_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(
        std::iter::once(first.unwrap_or_default())
            .chain(more)
            .collect(),
    ))
}

/// Stored token ids as the model's.
pub fn tokens(outputs: &[Vec<i32>]) -> Vec<Vec<u32>> {
    outputs
        .iter()
        .map(|o| o.iter().map(|&t| t as u32).collect())
        .collect()
}

/// Pending records, oldest first, with their outputs (every choice's): what the queued gradient task works
/// through.
pub async fn pending(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(Stored, Vec<Vec<i32>>)>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT inference_id FROM attributions WHERE status = 'pending' ORDER BY created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let (Some(s), Some(outputs)) = (get(pool, &id).await?, outputs(pool, &id).await?) {
            out.push((s, outputs));
        }
    }
    Ok(out)
}
