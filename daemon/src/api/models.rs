//! ModelFactory: installed base models, the adapters training jobs produced, and their files. Training itself
//! is a job: `POST /api/jobs` with `kind: "train"`. Everything here is public, like the chain it mirrors.

use alloy::primitives::U256;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Auth;
use super::error::{Json, Path, Query};
use super::types::{Page, parse_address, parse_id};
use super::{ApiError, ApiResult, Problem};
use crate::models::{self, BaseModelRow, TrainedModel};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_base_models))
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(get_price, set_price))
        .routes(routes!(model_file))
        .routes(routes!(model_export))
        .routes(routes!(adapter_by_hash))
        .routes(routes!(manifest_by_hash))
}

/// Base models this daemon can train on (found under `<data dir>/models` at start).
#[utoipa::path(get, path = "/api/base-models", tag = "models",
    responses((status = 200, body = Vec<BaseModelRow>)))]
async fn list_base_models(State(s): State<AppState>) -> ApiResult<Json<Vec<BaseModelRow>>> {
    Ok(Json(models::base_models(&s.pool).await?))
}

/// The filter and the page in one query string (two extractors that each refuse the other's fields would
/// refuse every filtered request).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ModelFilter {
    /// Only models trained by this address.
    owner: Option<String>,
    /// At most this many items (1-1000, default 100).
    limit: Option<i64>,
    /// Skip this many items.
    offset: Option<i64>,
}

/// Trained adapters, newest first.
#[utoipa::path(get, path = "/api/models", tag = "models", params(ModelFilter),
    responses((status = 200, body = Vec<TrainedModel>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_models(
    State(s): State<AppState>,
    Query(f): Query<ModelFilter>,
) -> ApiResult<Json<Vec<TrainedModel>>> {
    let (limit, offset) = Page {
        limit: f.limit,
        offset: f.offset,
    }
    .resolve()?;
    let owner = f
        .owner
        .as_deref()
        .map(|o| parse_address("owner", o))
        .transpose()?;
    Ok(Json(
        models::trained_models(&s.pool, owner, limit, offset).await?,
    ))
}

/// A trained model with its on-chain adapters and the contributions it was trained on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDetail {
    #[serde(flatten)]
    pub model: TrainedModel,
    /// The training set's sources: contribution, contributor, examples and tokens each.
    #[schema(value_type = Vec<Object>)]
    pub sources: Vec<serde_json::Value>,
    /// Files downloadable from `/api/models/{job_id}/files/{name}`.
    pub files: Vec<String>,
    /// Exports downloadable from `/api/models/{job_id}/export/{name}` (`adapter.gguf`, `model.gguf`,
    /// `model-hf.zip`, `Modelfile`): none when its base model is not installed on this daemon,
    /// `model.gguf` only for GGUF base models.
    pub exports: Vec<String>,
}

/// One trained model, by the id of the job that trained it.
#[utoipa::path(get, path = "/api/models/{job_id}", tag = "models",
    params(("job_id" = String, Path, description = "The training job's id")),
    responses((status = 200, body = ModelDetail),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_model(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<ModelDetail>> {
    let id = parse_id("job id", &job_id)?;
    let model = found_model(&s, id).await?;
    let sources = crate::models::training_sources(&s.pool, id).await?;
    let files = files_of(&model.dir).await;
    let exports = match crate::exports::source(&s.pool, &model).await {
        Ok(src) => crate::exports::ExportKind::ALL
            .into_iter()
            .filter(|k| src.offers(*k))
            .map(|k| k.download_name().to_string())
            .collect(),
        Err(crate::exports::ExportError::Unavailable(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(ModelDetail {
        model,
        sources: sources
            .into_iter()
            .map(|r| {
                serde_json::json!({ "source": r.source, "datanet_id": r.datanet_id,
                    "contribution_id": r.contribution_id, "contributor": r.contributor,
                    "content_hash": r.content_hash, "examples": r.examples, "tokens": r.tokens })
            })
            .collect(),
        files,
        exports,
    }))
}

/// The downloadable files the model's folder really holds: the fixed names first, in their order, then its
/// attribution segments' files by segment number (a model lists none it cannot serve).
async fn files_of(dir: &str) -> Vec<String> {
    let mut present = std::collections::HashSet::new();
    if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            if let Some(name) = e.file_name().to_str() {
                present.insert(name.to_owned());
            }
        }
    }
    let mut files: Vec<String> = FILES
        .iter()
        .filter(|f| present.contains(**f))
        .map(|f| f.to_string())
        .collect();
    let mut segments: Vec<(u32, String)> = present
        .into_iter()
        .filter(|n| crate::attribution::segments::is_segment_file(n))
        .map(|n| {
            let i = n["attribution-".len()..]
                .split('.')
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(u32::MAX);
            (i, n)
        })
        .collect();
    segments.sort();
    files.extend(segments.into_iter().map(|(_, n)| n));
    files
}

/// What one inference on a model costs, per 1,000 tokens of prompt plus `max_tokens`, in OPEN wei
/// (decimal strings: the amounts exceed JSON's safe integers).
#[derive(Debug, Serialize, ToSchema)]
pub struct Price {
    pub job_id: i64,
    /// The developer's price, or null where the model uses the daemon's default.
    pub price_per_1k: Option<String>,
    /// What this daemon charges now: the developer's price, else its default (null when it serves no
    /// model).
    pub effective_price_per_1k: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub updated_at: Option<OffsetDateTime>,
}

/// A developer's price: a positive decimal amount of OPEN wei per 1,000 tokens, or null to go back to the
/// daemon's default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    /// Wei per 1,000 tokens, in decimal without leading zeros: 1 to 10^36.
    #[schema(pattern = "^([1-9][0-9]{0,35}|1000000000000000000000000000000000000)$")]
    pub price_per_1k: Option<String>,
}

/// Prices above this are refused: 10^36 wei (10^18 OPEN) per 1,000 tokens keeps every request's cost far
/// inside 256 bits.
const MAX_PRICE_EXP: usize = 36;

fn parse_price(v: &str) -> ApiResult<U256> {
    let bad = || {
        ApiError::BadRequest(format!(
            "price_per_1k must be a positive whole number of OPEN wei, at most 10^{MAX_PRICE_EXP} (got {v:?})"
        ))
    };
    if v.starts_with('0') {
        return Err(bad());
    }
    match super::credits::parse_amount(v) {
        Ok(p) if p <= U256::from(10u8).pow(U256::from(MAX_PRICE_EXP)) => Ok(p),
        _ => Err(bad()),
    }
}

async fn found_model(s: &AppState, job_id: i64) -> ApiResult<TrainedModel> {
    models::trained_model(&s.pool, job_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no trained model from job {job_id}")))
}

/// The price of a model known to exist.
async fn price_of(s: &AppState, job_id: i64) -> ApiResult<Price> {
    let row = crate::models::price(&s.pool, job_id).await?;
    let default = s
        .inference
        .as_ref()
        .map(|i| i.cfg.default_price_per_1k.to_string());
    let (own, at) = row.map_or((None, None), |(p, at)| (Some(p), Some(at)));
    Ok(Price {
        job_id,
        effective_price_per_1k: own.clone().or(default),
        price_per_1k: own,
        updated_at: at,
    })
}

/// A trained model's price per 1,000 tokens.
#[utoipa::path(get, path = "/api/models/{job_id}/price", tag = "models",
    params(("job_id" = String, Path, description = "The training job's id")),
    responses((status = 200, body = Price),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_price(
    State(s): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Price>> {
    let id = parse_id("job id", &job_id)?;
    found_model(&s, id).await?;
    Ok(Json(price_of(&s, id).await?))
}

/// Sets (or, with null, clears) the price of a model; only its developer (the training job's owner) or
/// an admin may. Applies to payments mined after the chain's current head; payments already made keep the
/// price in force at their block.
#[utoipa::path(put, path = "/api/models/{job_id}/price", tag = "models", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "The training job's id")),
    request_body = SetPrice,
    responses((status = 200, body = Price),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn set_price(
    State(s): State<AppState>,
    auth: Auth,
    Path(job_id): Path<String>,
    Json(body): Json<SetPrice>,
) -> ApiResult<Json<Price>> {
    let id = parse_id("job id", &job_id)?;
    let price = body.price_per_1k.as_deref().map(parse_price).transpose()?;
    let model = found_model(&s, id).await?;
    if !auth.may_access(&model.owner) {
        return Err(ApiError::Forbidden(format!(
            "model {id} belongs to {}: only its developer sets its price",
            model.owner
        )));
    }
    // the new price holds payments mined after the chain's current head; earlier ones keep theirs
    let head = match &s.chain {
        Some(chain) => chain.head().await?,
        None => s.index.indexed_through().await?.unwrap_or(0),
    };
    crate::models::set_price(&s.pool, id, price, head + 1).await?;
    tracing::info!(job = id, price = ?price, by = %auth.0.address, "model price set");
    Ok(Json(price_of(&s, id).await?))
}

/// The files of a trained model's folder that may be downloaded, besides its attribution segments' (the
/// last two: the single index and gradient store of models trained before segments).
const FILES: [&str; 7] = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "manifest.json",
    "dataset.json",
    "dataset.tokens",
    "attribution.span",
    "attribution.grads",
];

/// Streams a file of a model's folder (gradient stores run to gigabytes: never read whole).
async fn send_file(dir: &str, name: &str) -> ApiResult<Response> {
    use tokio::io::AsyncReadExt;
    let path = std::path::Path::new(dir).join(name);
    let unreadable = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "trained model file unreadable");
        ApiError::NotFound(format!("{name} is not available on this daemon"))
    };
    let file = tokio::fs::File::open(&path).await.map_err(unreadable)?;
    let len = file.metadata().await.map_err(unreadable)?.len();
    let chunks = futures::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 16];
        let n = f.read(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, std::io::Error>((n > 0).then(|| (axum::body::Bytes::from(buf), f)))
    });
    let ct = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// A file of a trained model: the PEFT adapter (`adapter_model.safetensors`, `adapter_config.json`), the
/// training manifest, the tokenized training set (`dataset.tokens`, u32 little-endian, indexed by
/// `dataset.json`), or its attribution segments' files (`attribution-<i>.span`, `.grads`, `.keys`; the
/// manifest's `attribution.segments` lists them with their hashes).
#[utoipa::path(get, path = "/api/models/{job_id}/files/{name}", tag = "models",
    params(("job_id" = String, Path, description = "The training job's id"),
           ("name" = String, Path, description = "adapter_model.safetensors, adapter_config.json, manifest.json, dataset.json, dataset.tokens, or attribution-<i>.span / .grads / .keys")),
    security((), ("bearer" = [])),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
              (status = 401, body = Problem, content_type = "application/problem+json",
               description = "A file that gives back a permissioned Datanet's data, asked for anonymously"),
              (status = 403, body = Problem, content_type = "application/problem+json",
               description = "A file that gives back a permissioned Datanet's data, asked for by someone who may not read it"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn model_file(
    State(s): State<AppState>,
    auth: Option<Auth>,
    Path((job_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id("job id", &job_id)?;
    if !FILES.contains(&name.as_str()) && !crate::attribution::segments::is_segment_file(&name) {
        return Err(ApiError::NotFound(format!(
            "no file {name:?}; a trained model has {} and attribution-<i>.span, .grads and .keys",
            FILES[..5].join(", ")
        )));
    }
    let model = models::trained_model(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no trained model from job {id}")))?;
    if models::gives_back_data(&name) && !auth.as_ref().is_some_and(|a| a.0.admin) {
        let reader = auth.as_ref().map(|a| a.0.address);
        if let Some(d) = models::unreadable_datanet(&s.index, &model, reader).await? {
            let why = format!(
                "{name} gives back the training data of permissioned Datanet {d}: only its owner, curators \
                 and allowed contributors may download it"
            );
            return Err(match reader {
                None => ApiError::Unauthorized(format!("{why}; sign in")),
                Some(_) => ApiError::Forbidden(why),
            });
        }
    }
    send_file(&model.dir, &name).await
}

/// How an export is written.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// The merged weights' element type: `model.gguf` f16 (default), f32 or q8_0; `model-hf.zip` bf16
    /// (default), f16 or f32. The adapter and the Modelfile have none.
    pub dtype: Option<String>,
}

/// A trained model exported for other runtimes: `adapter.gguf` (the adapter as a GGUF LoRA: llama.cpp's
/// `--lora`, Ollama's `ADAPTER`), `model.gguf` (the merged model as a GGUF; GGUF base models),
/// `model-hf.zip` (the merged model as a Hugging Face folder) or `Modelfile` (Ollama's, naming
/// `model.gguf`). Made on the first request (merging a model takes a while), then served from the model's
/// folder.
#[utoipa::path(get, path = "/api/models/{job_id}/export/{name}", tag = "models",
    params(("job_id" = String, Path, description = "The training job's id"),
           ("name" = String, Path, description = "adapter.gguf, model.gguf, model-hf.zip or Modelfile"),
           ExportQuery),
    responses((status = 200, description = "The export", content_type = "application/octet-stream"),
              (status = 400, body = Problem, content_type = "application/problem+json",
               description = "A dtype the export is not written as, or an unknown query parameter"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "The model's base model is not installed here, or model.gguf of a model whose \
                              base is a Hugging Face folder")))]
async fn model_export(
    State(s): State<AppState>,
    Path((job_id, name)): Path<(String, String)>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    use crate::exports::{self, ExportKind};
    let id = parse_id("job id", &job_id)?;
    let kind = ExportKind::from_download_name(&name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no export {name:?}; a trained model exports as {}",
            ExportKind::ALL.map(|k| k.download_name()).join(", ")
        ))
    })?;
    let dtype = kind.dtype(q.dtype.as_deref())?;
    let model = found_model(&s, id).await?;
    let src = exports::source(&s.pool, &model).await?;
    let file = exports::cached(src, kind, dtype).await?;
    let dir = file
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    send_file(&dir, kind.download_name()).await
}

fn parse_sha256(h: &str) -> ApiResult<String> {
    let hex = h.strip_prefix("0x").unwrap_or(h);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "{h:?} is not a SHA-256 hash (64 hex digits)"
        )));
    }
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

/// An adapter by the SHA-256 it was published under (`openledger://adapters/<hash>` resolves here).
#[utoipa::path(get, path = "/api/adapters/{hash}", tag = "models",
    params(("hash" = String, Path, description = "SHA-256 of adapter_model.safetensors")),
    responses((status = 200, description = "adapter_model.safetensors", content_type = "application/octet-stream"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn adapter_by_hash(
    State(s): State<AppState>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash = parse_sha256(&hash)?;
    let m = models::trained_model_by_hash(&s.pool, &hash)
        .await?
        .filter(|m| m.adapter_hash == hash)
        .ok_or_else(|| ApiError::NotFound(format!("no adapter with hash {hash} on this daemon")))?;
    send_file(&m.dir, "adapter_model.safetensors").await
}

/// A training manifest by its SHA-256, the model's on-chain `trainingConfigHash`
/// (`openledger://manifests/<hash>` resolves here).
#[utoipa::path(get, path = "/api/manifests/{hash}", tag = "models",
    params(("hash" = String, Path, description = "SHA-256 of manifest.json")),
    responses((status = 200, description = "manifest.json", content_type = "application/json"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn manifest_by_hash(
    State(s): State<AppState>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash = parse_sha256(&hash)?;
    let m = models::trained_model_by_hash(&s.pool, &hash)
        .await?
        .filter(|m| m.manifest_hash == hash)
        .ok_or_else(|| {
            ApiError::NotFound(format!("no manifest with hash {hash} on this daemon"))
        })?;
    send_file(&m.dir, "manifest.json").await
}
