//! Batch inference, as OpenAI's Batch API has it: a JSON Lines input file (one request per line,
//! `{"custom_id", "method": "POST", "url", "body"}`), run by a `batch_inference` job at low priority, and
//! two output files: the successful responses and the failed ones, each line naming its `custom_id`.

use std::collections::HashSet;

use alloy::primitives::Address;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;

use super::request::Kind;
use crate::quotas::{Quota, QuotaError, Quotas};

/// Lines an input file may hold (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;

/// One request of an input file.
#[derive(Debug, Clone)]
pub struct Line {
    pub custom_id: String,
    pub body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    custom_id: String,
    method: String,
    url: String,
    body: Value,
}

/// Parses and checks an input file: every line a request to `url` (one endpoint per file, as OpenAI
/// requires), `custom_id`s unique. The error names the first bad line (1-based).
pub fn parse(bytes: &[u8], url: Option<&str>) -> Result<(Kind, Vec<Line>), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8".to_string())?;
    let mut kind: Option<(Kind, String)> = url
        .map(|u| {
            Kind::from_url(u)
                .map(|k| (k, u.to_string()))
                .ok_or_else(|| format!("endpoint must be one of {:?}, got {u:?}", Kind::URLS))
        })
        .transpose()?;
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: RawLine =
            serde_json::from_str(raw).map_err(|e| format!("line {n}: not a batch request: {e}"))?;
        if l.method != "POST" {
            return Err(format!("line {n}: method must be POST"));
        }
        let k = Kind::from_url(&l.url)
            .ok_or_else(|| format!("line {n}: url must be one of {:?}", Kind::URLS))?;
        match &kind {
            Some((_, u)) if *u != l.url => {
                return Err(format!(
                    "line {n}: url {:?} differs from the batch's endpoint {u:?}",
                    l.url
                ));
            }
            Some(_) => {}
            None => kind = Some((k, l.url.clone())),
        }
        if l.custom_id.is_empty() || l.custom_id.len() > 512 {
            return Err(format!("line {n}: custom_id must be 1 to 512 characters"));
        }
        if !seen.insert(l.custom_id.clone()) {
            return Err(format!(
                "line {n}: custom_id {:?} is used twice",
                l.custom_id
            ));
        }
        if !l.body.is_object() {
            return Err(format!("line {n}: body must be a JSON object"));
        }
        if l.body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(format!("line {n}: stream is not available in a batch"));
        }
        lines.push(Line {
            custom_id: l.custom_id,
            body: l.body,
        });
        if lines.len() > MAX_LINES {
            return Err(format!("a batch holds at most {MAX_LINES} requests"));
        }
    }
    match kind {
        Some((k, _)) if !lines.is_empty() => Ok((k, lines)),
        _ => Err("the file holds no requests".into()),
    }
}

/// A stored file.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct File {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub filename: String,
    pub size: i64,
    /// Requests in an input file.
    pub lines: Option<i32>,
    pub created_at: time::OffsetDateTime,
}

pub fn new_file_id() -> String {
    format!("file-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// The columns `File` reads.
pub const FILE_COLUMNS: &str =
    "id, owner, purpose, filename, octet_length(bytes)::bigint AS size, lines, created_at";

/// Stores a file (`lines`: the requests of an input file); `id` already taken leaves the first one (a
/// resumed batch writes its outputs again).
pub async fn store_file(
    pool: &PgPool,
    id: &str,
    owner: Address,
    purpose: &str,
    filename: &str,
    bytes: &[u8],
    lines: Option<usize>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    insert_file(&mut conn, id, owner, purpose, filename, bytes, lines).await
}

/// Stores a batch input file its owner uploaded, its bytes charged to the owner's daily upload quota in the
/// same transaction.
pub async fn store_input_file(
    pool: &PgPool,
    id: &str,
    owner: Address,
    filename: &str,
    bytes: &[u8],
    lines: usize,
    quotas: &Quotas,
) -> Result<(), QuotaError> {
    let mut tx = pool.begin().await?;
    quotas
        .charge(&mut tx, owner, Quota::UploadBytes, bytes.len() as u64, None)
        .await?;
    insert_file(&mut tx, id, owner, "batch", filename, bytes, Some(lines)).await?;
    tx.commit().await?;
    Ok(())
}

async fn insert_file(
    conn: &mut sqlx::PgConnection,
    id: &str,
    owner: Address,
    purpose: &str,
    filename: &str,
    bytes: &[u8],
    lines: Option<usize>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO files (id, owner, purpose, filename, bytes, lines) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(format!("{owner:#x}"))
    .bind(purpose)
    .bind(filename)
    .bind(bytes)
    .bind(lines.map(|n| n as i32))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn file(pool: &PgPool, id: &str) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn file_bytes(pool: &PgPool, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM files WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The ids of a batch job's two output files.
pub fn output_file_ids(job_id: i64) -> (String, String) {
    (
        format!("file-batch{job_id}-output"),
        format!("file-batch{job_id}-errors"),
    )
}

/// `(total done, failed)` lines of a batch so far.
pub async fn counts(pool: &PgPool, job_id: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status_code >= 300) FROM batch_results WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
}
