//! Uploaded contribution content and relay requests in Postgres. Content is stored once per hash; an
//! upload ties it to an owner and a Datanet; a relay is one signed `contributeWithSig` the daemon sends.

use std::collections::HashMap;

use alloy::primitives::{Address, B256, U256};
use serde::Serialize;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use crate::content::Canonical;
use crate::quotas::{Quota, QuotaError, Quotas};

#[derive(Debug, Clone, FromRow)]
pub struct UploadRow {
    pub id: i64,
    pub owner: String,
    pub chain_id: i64,
    pub datanet_id: String,
    pub content_hash: String,
    pub filename: String,
    pub metadata_uri: String,
    pub created_at: OffsetDateTime,
    pub format: String,
    pub records: i32,
    pub byte_size: i32,
}

const UPLOAD_SELECT: &str =
    "SELECT u.id, u.owner, u.chain_id, u.datanet_id::text AS datanet_id, u.content_hash,
        u.filename, u.metadata_uri, u.created_at, c.format, c.records, c.byte_size
     FROM uploads u JOIN contents c USING (content_hash)";

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct RelayRow {
    pub id: i64,
    pub upload_id: i64,
    pub contributor: String,
    pub nonce: String,
    pub deadline: String,
    pub signature: String,
    pub state: String,
    pub tx_hash: Option<String>,
    pub contribution_id: Option<String>,
    pub error: Option<String>,
    pub job_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const RELAY_SELECT: &str = "SELECT id, upload_id, contributor, nonce::text AS nonce, deadline::text AS deadline,
        signature, state, tx_hash, contribution_id::text AS contribution_id, error, job_id, created_at, updated_at
     FROM relays";

/// What one upload is: who, for which Datanet of which chain, what, under which name.
#[derive(Debug, Clone, Copy)]
pub struct NewUpload<'a> {
    pub owner: Address,
    pub chain_id: u64,
    pub datanet_id: U256,
    pub content: &'a Canonical,
    pub filename: &'a str,
    pub metadata_uri: &'a str,
}

/// Stores content (once) and the owner's upload of it (once per Datanet), charging a new upload's bytes to
/// the owner's daily quota in the same transaction (uploading the same content again is free). Returns the
/// upload and whether it is new.
pub async fn store(
    pool: &PgPool,
    new: NewUpload<'_>,
    quotas: &Quotas,
) -> Result<(UploadRow, bool), QuotaError> {
    let NewUpload {
        owner,
        chain_id,
        datanet_id,
        content,
        filename,
        metadata_uri,
    } = new;
    let mut tx = pool.begin().await?;
    let hash = format!("{:#x}", content.hash);
    sqlx::query(
        "INSERT INTO contents (content_hash, format, records, byte_size, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (content_hash) DO NOTHING",
    )
    .bind(&hash)
    .bind(content.format.as_str())
    .bind(content.records.len() as i32)
    .bind(content.bytes.len() as i32)
    .bind(&content.bytes)
    .execute(&mut *tx)
    .await?;
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO uploads (owner, chain_id, datanet_id, content_hash, filename, metadata_uri)
         VALUES ($1, $2, $3::numeric, $4, $5, $6)
         ON CONFLICT (owner, chain_id, datanet_id, content_hash) DO NOTHING RETURNING id",
    )
    .bind(format!("{owner:#x}"))
    .bind(chain_id as i64)
    .bind(datanet_id.to_string())
    .bind(&hash)
    .bind(filename)
    .bind(metadata_uri)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_some() {
        quotas
            .charge(
                &mut tx,
                owner,
                Quota::UploadBytes,
                content.bytes.len() as u64,
                None,
            )
            .await?;
    }
    let row: UploadRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{UPLOAD_SELECT} WHERE u.owner = $1 AND u.chain_id = $2 AND u.datanet_id = $3::numeric AND u.content_hash = $4"
    )))
    .bind(format!("{owner:#x}"))
    .bind(chain_id as i64)
    .bind(datanet_id.to_string())
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((row, inserted.is_some()))
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<UploadRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{UPLOAD_SELECT} WHERE u.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn list(
    pool: &PgPool,
    owner: Address,
    limit: i64,
    offset: i64,
) -> Result<Vec<UploadRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{UPLOAD_SELECT} WHERE u.owner = $1 ORDER BY u.id DESC LIMIT $2 OFFSET $3"
    )))
    .bind(format!("{owner:#x}"))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// The content each `(contributor, content hash)` pair uploaded on this chain, keyed by the pair: content is
/// trained for a contribution only when its on-chain contributor is the account that uploaded it (someone who
/// contributes a copied hash gets no content of the uploader's).
pub async fn bodies_uploaded_by(
    pool: &PgPool,
    chain_id: i64,
    pairs: &[(Address, B256)],
) -> Result<HashMap<(Address, B256), Vec<u8>>, sqlx::Error> {
    let owners: Vec<String> = pairs.iter().map(|(a, _)| format!("{a:#x}")).collect();
    let hashes: Vec<String> = pairs.iter().map(|(_, h)| format!("{h:#x}")).collect();
    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT DISTINCT ON (u.owner, u.content_hash) u.owner, u.content_hash, c.body
         FROM uploads u JOIN contents c USING (content_hash)
         JOIN unnest($2::text[], $3::text[]) AS w(owner, content_hash)
           ON w.owner = u.owner AND w.content_hash = u.content_hash
         WHERE u.chain_id = $1",
    )
    .bind(chain_id)
    .bind(&owners)
    .bind(&hashes)
    .fetch_all(pool)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (owner, hash, body) in rows {
        // the columns hold the fixed lowercase forms written above; a row that does not parse is not a match
        if let (Ok(o), Ok(h)) = (owner.parse(), hash.parse()) {
            out.insert((o, h), body);
        }
    }
    Ok(out)
}

pub async fn body(pool: &PgPool, hash: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM contents WHERE content_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await
}

pub async fn relays_of(pool: &PgPool, upload_id: i64) -> Result<Vec<RelayRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RELAY_SELECT} WHERE upload_id = $1 ORDER BY id"
    )))
    .bind(upload_id)
    .fetch_all(pool)
    .await
}

pub async fn relay(pool: &PgPool, id: i64) -> Result<Option<RelayRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{RELAY_SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A signed request to relay, as accepted by the API.
#[derive(Debug, Clone)]
pub struct NewRelay {
    pub upload_id: i64,
    pub contributor: Address,
    pub nonce: U256,
    pub deadline: U256,
    pub signature: String,
}

/// Records a relay request in `tx` (the relay job's `queue` adds its job in the same transaction).
/// `None` if this exact signature request (contributor, nonce, upload) is already recorded.
pub async fn insert_relay(
    tx: &mut Transaction<'_, Postgres>,
    r: &NewRelay,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO relays (upload_id, contributor, nonce, deadline, signature)
         VALUES ($1, $2, $3::numeric, $4::numeric, $5)
         ON CONFLICT (contributor, nonce, upload_id) DO NOTHING RETURNING id",
    )
    .bind(r.upload_id)
    .bind(format!("{:#x}", r.contributor))
    .bind(r.nonce.to_string())
    .bind(r.deadline.to_string())
    .bind(&r.signature)
    .fetch_optional(&mut **tx)
    .await
}

/// Ties relay `id` to the job that sends it, and reads the relay back.
pub async fn attach_job(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    job_id: i64,
) -> Result<RelayRow, sqlx::Error> {
    sqlx::query("UPDATE relays SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{RELAY_SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_one(&mut **tx)
        .await
}

/// Moves a relay along its state machine.
pub async fn set_relay_state(
    pool: &PgPool,
    id: i64,
    state: &str,
    tx_hash: Option<B256>,
    contribution_id: Option<U256>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE relays SET state = $2, tx_hash = COALESCE($3, tx_hash),
                contribution_id = COALESCE($4::numeric, contribution_id), error = $5, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(tx_hash.map(|h| format!("{h:#x}")))
    .bind(contribution_id.map(|c| c.to_string()))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
