//! ModelFactory's records: the base models installed under `<data dir>/models` (registered with their
//! content hash), and the adapters training jobs produced, with the contributions each was trained on.

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, U256};
use openledger_model::ModelConfig;
use openledger_model::weights::{ModelFormat, content_hash, inspect};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

/// The `model` name of a trained adapter: what `/v1/models` lists and requests name.
pub fn adapter_name(job_id: i64) -> String {
    format!("ft-{job_id}")
}

/// An installed base model.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BaseModelRow {
    /// The file or folder name (`SmolLM2-135M-Instruct.Q4_1`).
    pub id: String,
    #[serde(skip)]
    pub path: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    pub architecture: String,
    /// `0x`-prefixed SHA-256 of the GGUF file (what `sha256sum` prints), or of a folder's file listing.
    pub hash: String,
    pub size_bytes: i64,
    /// The model family, as people name it (`Llama`, `Qwen 2`, `Gemma 3`...).
    pub family: String,
    /// Number of weights (embeddings counted once when tied).
    pub parameters: i64,
    /// The longest sequence the model was trained for, in tokens.
    pub context_length: i64,
    /// The model's hyper-parameters (layers, hidden size, context...).
    #[schema(value_type = Object)]
    pub config: Value,
}

fn row_to_base(r: (String, String, String, String, String, i64, Value)) -> BaseModelRow {
    // rows registered by older versions hold a llama configuration without the newer fields: serde's
    // defaults read them as llama
    let cfg = serde_json::from_value::<ModelConfig>(r.6.clone()).ok();
    BaseModelRow {
        id: r.0,
        path: r.1,
        format: r.2,
        architecture: r.3,
        hash: r.4,
        size_bytes: r.5,
        family: cfg
            .as_ref()
            .map_or("unknown", |c| c.family.display_name())
            .to_string(),
        parameters: cfg
            .as_ref()
            .map_or(0, |c| i64::try_from(c.num_parameters()).unwrap_or(i64::MAX)),
        context_length: cfg.as_ref().map_or(0, |c| c.max_position_embeddings as i64),
        config: r.6,
    }
}

const BASE_COLS: &str = "id, path, format, architecture, hash, size_bytes, config";

pub async fn base_models(pool: &PgPool) -> Result<Vec<BaseModelRow>, sqlx::Error> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BASE_COLS} FROM base_models ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(row_to_base).collect())
}

/// By id (case-insensitive) or by hash.
pub async fn base_model(pool: &PgPool, key: &str) -> Result<Option<BaseModelRow>, sqlx::Error> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BASE_COLS} FROM base_models WHERE lower(id) = lower($1) OR hash = lower($1) ORDER BY id LIMIT 1"
    )))
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(row_to_base))
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Model(#[from] openledger_model::ModelError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn model_id_for(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    name.strip_suffix(".gguf").unwrap_or(name).to_string()
}

fn size_and_mtime(path: &Path) -> Result<(i64, OffsetDateTime), RegisterError> {
    let io = |e| RegisterError::Io(path.display().to_string(), e);
    let meta = std::fs::metadata(path).map_err(io)?;
    let mut size = meta.len() as i64;
    let mut mtime = meta.modified().map_err(io)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(io)? {
            let m = e.map_err(io)?.metadata().map_err(io)?;
            size += m.len() as i64;
            mtime = mtime.max(m.modified().map_err(io)?);
        }
    }
    Ok((size, OffsetDateTime::from(mtime)))
}

/// Registers (or refreshes) the base model at `path`: metadata is read and the file hashed only when its
/// size or modification time changed since the last registration.
pub async fn register_base_model(
    pool: &PgPool,
    path: &Path,
) -> Result<BaseModelRow, RegisterError> {
    let path = path
        .canonicalize()
        .map_err(|e| RegisterError::Io(path.display().to_string(), e))?;
    let path_s = path.display().to_string();
    let (size, mtime) = size_and_mtime(&path)?;
    let known: Option<(i64, OffsetDateTime)> =
        sqlx::query_as("SELECT size_bytes, modified_at FROM base_models WHERE path = $1")
            .bind(&path_s)
            .fetch_optional(pool)
            .await?;
    if known.is_some_and(|(s, m)| s == size && (m - mtime).abs() < time::Duration::milliseconds(1))
    {
        return base_model_by_path(pool, &path_s).await;
    }
    let p = path.clone();
    let (format, config, hash) = tokio::task::spawn_blocking(move || {
        let (format, config) = inspect(&p)?;
        Ok::<_, openledger_model::ModelError>((format, config, content_hash(&p)?))
    })
    .await
    .map_err(|e| RegisterError::Io(path_s.clone(), std::io::Error::other(e)))??;
    let format = match format {
        ModelFormat::Gguf => "gguf",
        ModelFormat::Safetensors => "safetensors",
    };
    let architecture = config.family.model_type();
    let config = serde_json::to_value(&config).unwrap_or(Value::Null);
    sqlx::query(
        "INSERT INTO base_models (id, path, format, architecture, hash, size_bytes, modified_at, config)
         VALUES ($1, $2, $3, $8, $4, $5, $6, $7)
         ON CONFLICT (path) DO UPDATE
           SET format = $3, hash = $4, size_bytes = $5, modified_at = $6, config = $7, architecture = $8",
    )
    .bind(model_id_for(&path))
    .bind(&path_s)
    .bind(format)
    .bind(&hash)
    .bind(size)
    .bind(mtime)
    .bind(&config)
    .bind(architecture)
    .execute(pool)
    .await?;
    tracing::info!(model = %model_id_for(&path), %hash, architecture, "registered base model");
    base_model_by_path(pool, &path_s).await
}

async fn base_model_by_path(pool: &PgPool, path: &str) -> Result<BaseModelRow, RegisterError> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BASE_COLS} FROM base_models WHERE path = $1"
    )))
    .bind(path)
    .fetch_one(pool)
    .await?;
    Ok(row_to_base(row))
}

/// Registers every `*.gguf` file and every folder holding a `config.json` under `dir`; files that are not
/// usable models are logged and skipped. Returns the registered models.
pub async fn scan_models_dir(
    pool: &PgPool,
    dir: &Path,
) -> Result<Vec<BaseModelRow>, RegisterError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RegisterError::Io(dir.display().to_string(), e)),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "gguf")
                || (p.is_dir() && p.join("config.json").exists())
        })
        .collect();
    paths.sort();
    for p in paths {
        match register_base_model(pool, &p).await {
            Ok(r) => out.push(r),
            Err(RegisterError::Db(e)) => return Err(RegisterError::Db(e)),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping: not a usable base model")
            }
        }
    }
    Ok(out)
}

/// A trained adapter, as the API lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrainedModel {
    /// The training job that produced it.
    pub job_id: i64,
    pub owner: String,
    pub base_model: String,
    pub base_model_hash: String,
    /// The Datanet versions trained on: `[{"datanet_id", "version", "root"}]`.
    #[schema(value_type = Vec<Object>)]
    pub datanets: Value,
    /// SHA-256 of `adapter_model.safetensors`.
    pub adapter_hash: String,
    /// SHA-256 of `manifest.json` (the on-chain `trainingConfigHash`).
    pub manifest_hash: String,
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// On-chain ids once published.
    pub model_id: Option<String>,
    pub adapter_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    pub dir: String,
    /// The chain `model_id` is on.
    #[serde(skip)]
    pub chain_id: Option<i64>,
}

type TrainedRow = (
    i64,
    String,
    String,
    String,
    Value,
    String,
    String,
    Value,
    Option<String>,
    Option<String>,
    OffsetDateTime,
    String,
    Option<i64>,
);

fn trained(r: TrainedRow) -> TrainedModel {
    TrainedModel {
        job_id: r.0,
        owner: r.1,
        base_model: r.2,
        base_model_hash: r.3,
        datanets: r.4,
        adapter_hash: r.5,
        manifest_hash: r.6,
        metrics: r.7,
        model_id: r.8,
        adapter_id: r.9,
        created_at: r.10,
        dir: r.11,
        chain_id: r.12,
    }
}

const TRAINED_COLS: &str = "job_id, owner, base_model, base_model_hash, datanets, adapter_hash, manifest_hash, \
    metrics, model_id::text, adapter_id::text, created_at, dir, chain_id";

/// Newest first; only `owner`'s unless `owner` is `None`.
pub async fn trained_models(
    pool: &PgPool,
    owner: Option<Address>,
    limit: i64,
    offset: i64,
) -> Result<Vec<TrainedModel>, sqlx::Error> {
    let rows: Vec<TrainedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRAINED_COLS} FROM trained_models WHERE ($1::text IS NULL OR owner = $1)
         ORDER BY job_id DESC LIMIT $2 OFFSET $3"
    )))
    .bind(owner.map(|o| format!("{o:#x}")))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(trained).collect())
}

/// Files of a trained model that give back its training data (the tokenized set and the attribution index
/// spans): readable only by whoever may read every permissioned Datanet the model was trained on.
pub fn gives_back_data(name: &str) -> bool {
    matches!(name, "dataset.json" | "dataset.tokens") || name.starts_with("attribution")
}

/// The first permissioned Datanet of the model's training set that `reader` (`None`: anonymous) may not read,
/// or `None` when it may read them all.
pub async fn unreadable_datanet(
    index: &openledger_indexer::query::ChainIndex,
    model: &TrainedModel,
    reader: Option<Address>,
) -> Result<Option<U256>, openledger_indexer::IndexerError> {
    let empty = vec![];
    for d in model.datanets.as_array().unwrap_or(&empty) {
        let Some(id) = d["datanet_id"]
            .as_str()
            .and_then(|s| s.parse::<U256>().ok())
        else {
            continue;
        };
        if index.may_read_datanet(id, reader).await? != Some(true) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

pub async fn trained_model(
    pool: &PgPool,
    job_id: i64,
) -> Result<Option<TrainedModel>, sqlx::Error> {
    let row: Option<TrainedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRAINED_COLS} FROM trained_models WHERE job_id = $1"
    )))
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(trained))
}

/// The adapter or manifest whose SHA-256 is `hash` (content-addressed downloads).
pub async fn trained_model_by_hash(
    pool: &PgPool,
    hash: &str,
) -> Result<Option<TrainedModel>, sqlx::Error> {
    let row: Option<TrainedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRAINED_COLS} FROM trained_models WHERE adapter_hash = lower($1) OR manifest_hash = lower($1)
         ORDER BY job_id LIMIT 1"
    )))
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(trained))
}

/// One contribution's share of a training set.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub source: i32,
    pub datanet_id: U256,
    pub contribution_id: U256,
    pub contributor: Address,
    pub content_hash: String,
    pub examples: i32,
    pub tokens: i64,
}

/// One contribution's share of a training set, as stored (amounts as decimal text).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceRow {
    pub source: i32,
    pub datanet_id: String,
    pub contribution_id: String,
    pub contributor: String,
    pub content_hash: String,
    pub examples: i32,
    pub tokens: i64,
}

/// The contributions model `job_id` was trained on, in source order.
pub async fn training_sources(pool: &PgPool, job_id: i64) -> Result<Vec<SourceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT source, datanet_id::text AS datanet_id, contribution_id::text AS contribution_id,
                contributor, content_hash, examples, tokens
         FROM training_sources WHERE job_id = $1 ORDER BY source",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
}

/// The adapters trained on base model `base_hash`, oldest first: (job id, owner, created).
pub async fn adapters_on(
    pool: &PgPool,
    base_hash: &str,
) -> Result<Vec<(i64, String, OffsetDateTime)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT job_id, owner, created_at FROM trained_models WHERE lower(base_model_hash) = lower($1)
         ORDER BY job_id",
    )
    .bind(base_hash)
    .fetch_all(pool)
    .await
}

/// A developer's price for its model, per 1,000 tokens in OPEN wei (decimal text), and when it was set.
pub async fn price(
    pool: &PgPool,
    job_id: i64,
) -> Result<Option<(String, OffsetDateTime)>, sqlx::Error> {
    sqlx::query_as("SELECT price_per_1k::text, updated_at FROM model_prices WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// Sets model `job_id`'s price (`None`: back to the daemon's default) for payments mined from block
/// `from_block` on; payments mined before keep the price they were made under. One transaction.
pub async fn set_price(
    pool: &PgPool,
    job_id: i64,
    price: Option<U256>,
    from_block: u64,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    match price {
        Some(p) => sqlx::query(
            "INSERT INTO model_prices (job_id, price_per_1k) VALUES ($1, $2::numeric)
             ON CONFLICT (job_id) DO UPDATE SET price_per_1k = EXCLUDED.price_per_1k, updated_at = now()",
        )
        .bind(job_id)
        .bind(p.to_string()),
        None => sqlx::query("DELETE FROM model_prices WHERE job_id = $1").bind(job_id),
    }
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO model_price_changes (job_id, from_block, price_per_1k) VALUES ($1, $2, $3::numeric)",
    )
    .bind(job_id)
    .bind(i64::try_from(from_block).unwrap_or(i64::MAX))
    .bind(price.map(|p| p.to_string()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The developer's price of model `job_id` in force for a payment mined in `block`: `None` when the daemon's
/// default applies.
pub async fn price_at(pool: &PgPool, job_id: i64, block: u64) -> Result<Option<U256>, sqlx::Error> {
    let p: Option<Option<String>> = sqlx::query_scalar(
        "SELECT price_per_1k::text FROM model_price_changes WHERE job_id = $1 AND from_block <= $2
         ORDER BY from_block DESC, id DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(i64::try_from(block).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await?;
    Ok(p.flatten().and_then(|p| p.parse().ok()))
}

/// What a finished training run records, written in one transaction.
#[derive(Debug)]
pub struct NewTrainedModel<'a> {
    pub job_id: i64,
    pub owner: Address,
    pub base_model: &'a str,
    pub base_model_hash: &'a str,
    pub datanets: Value,
    pub adapter_hash: &'a str,
    pub manifest_hash: &'a str,
    pub dir: &'a Path,
    pub metrics: Value,
    pub sources: &'a [Source],
}

pub async fn insert_trained_model(
    pool: &PgPool,
    m: &NewTrainedModel<'_>,
) -> Result<(), sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO trained_models (job_id, owner, base_model, base_model_hash, datanets, adapter_hash,
                                     manifest_hash, dir, metrics)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(m.job_id)
    .bind(format!("{:#x}", m.owner))
    .bind(m.base_model)
    .bind(m.base_model_hash)
    .bind(&m.datanets)
    .bind(m.adapter_hash)
    .bind(m.manifest_hash)
    .bind(m.dir.display().to_string())
    .bind(&m.metrics)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        for s in m.sources {
            sqlx::query(
                "INSERT INTO training_sources (job_id, source, datanet_id, contribution_id, contributor,
                                               content_hash, examples, tokens)
                 VALUES ($1, $2, $3::numeric, $4::numeric, $5, $6, $7, $8)",
            )
            .bind(m.job_id)
            .bind(s.source)
            .bind(s.datanet_id.to_string())
            .bind(s.contribution_id.to_string())
            .bind(format!("{:#x}", s.contributor))
            .bind(&s.content_hash)
            .bind(s.examples)
            .bind(s.tokens)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

pub async fn set_onchain_ids(
    pool: &PgPool,
    job_id: i64,
    chain_id: u64,
    model_id: U256,
    adapter_id: Option<U256>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE trained_models SET chain_id = $2, model_id = $3::numeric, adapter_id = $4::numeric
         WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(chain_id as i64)
    .bind(model_id.to_string())
    .bind(adapter_id.map(|a| a.to_string()))
    .execute(pool)
    .await?;
    Ok(())
}
