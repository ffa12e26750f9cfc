//! ModelFactory: installed base models, the adapters training jobs produced, and their files. Training itself
//! is a job: `POST /api/jobs` with `kind: "train"`. Everything here is public, like the chain it mirrors.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
        .routes(routes!(model_file))
        .routes(routes!(adapter_by_hash))
        .routes(routes!(manifest_by_hash))
}

/// Base models this daemon can train on (found under `<data dir>/models` at start).
#[utoipa::path(get, path = "/api/base-models", tag = "models",
    responses((status = 200, body = Vec<BaseModelRow>)))]
async fn list_base_models(State(s): State<AppState>) -> ApiResult<Json<Vec<BaseModelRow>>> {
    Ok(Json(models::base_models(&s.pool).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
struct ModelFilter {
    /// Only models trained by this address.
    owner: Option<String>,
}

/// Trained adapters, newest first.
#[utoipa::path(get, path = "/api/models", tag = "models", params(ModelFilter, Page),
    responses((status = 200, body = Vec<TrainedModel>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_models(
    State(s): State<AppState>,
    Query(f): Query<ModelFilter>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Vec<TrainedModel>>> {
    let (limit, offset) = page.resolve()?;
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
    let model = models::trained_model(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no trained model from job {id}")))?;
    let sources: Vec<(i32, String, String, String, String, i32, i64)> = sqlx::query_as(
        "SELECT source, datanet_id::text, contribution_id::text, contributor, content_hash, examples, tokens
         FROM training_sources WHERE job_id = $1 ORDER BY source",
    )
    .bind(id)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(ModelDetail {
        model,
        sources: sources
            .into_iter()
            .map(|r| {
                serde_json::json!({ "source": r.0, "datanet_id": r.1, "contribution_id": r.2,
                    "contributor": r.3, "content_hash": r.4, "examples": r.5, "tokens": r.6 })
            })
            .collect(),
        files: FILES.iter().map(|f| f.to_string()).collect(),
    }))
}

/// The files of a trained model's folder that may be downloaded.
const FILES: [&str; 5] = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "manifest.json",
    "dataset.json",
    "dataset.tokens",
];

async fn send_file(dir: &str, name: &str) -> ApiResult<Response> {
    let path = std::path::Path::new(dir).join(name);
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "trained model file unreadable");
        ApiError::NotFound(format!("{name} is not available on this daemon"))
    })?;
    let ct = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// A file of a trained model: the PEFT adapter (`adapter_model.safetensors`, `adapter_config.json`), the
/// training manifest, or the tokenized training set (`dataset.tokens`, u32 little-endian, indexed by
/// `dataset.json`).
#[utoipa::path(get, path = "/api/models/{job_id}/files/{name}", tag = "models",
    params(("job_id" = String, Path, description = "The training job's id"),
           ("name" = String, Path, description = "adapter_model.safetensors, adapter_config.json, manifest.json, dataset.json or dataset.tokens")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn model_file(
    State(s): State<AppState>,
    Path((job_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id("job id", &job_id)?;
    if !FILES.contains(&name.as_str()) {
        return Err(ApiError::NotFound(format!(
            "no file {name:?}; a trained model has {}",
            FILES.join(", ")
        )));
    }
    let model = models::trained_model(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no trained model from job {id}")))?;
    send_file(&model.dir, &name).await
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
