//! OpenAI's Files and Batch API, enough for `client.files.create(purpose="batch")`,
//! `client.batches.create/retrieve/list/cancel` and `client.files.content`: a batch is a
//! `batch_inference` job (`jobs/batch.rs`) whose id is `batch_<job id>`.

use alloy::primitives::Address;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{Json, Path, Query};
use super::{ApiError, ApiResult, Auth, Problem};
use crate::inference::batch::{self, File};
use crate::jobs::batch::{KIND, parse_params};
use crate::jobs::queue::{CancelOutcome, JobFilter, NewJob};
use crate::jobs::{Job, JobState, Refusal};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_file, list_files))
        .routes(routes!(get_file))
        .routes(routes!(file_content))
        .routes(routes!(create_batch, list_batches))
        .routes(routes!(get_batch))
        .routes(routes!(cancel_batch))
}

fn file_json(f: &File) -> Value {
    json!({
        "id": f.id, "object": "file", "bytes": f.size, "created_at": f.created_at.unix_timestamp(),
        "filename": f.filename, "purpose": f.purpose, "status": "processed",
    })
}

/// The caller's file; another's is "not found" (its id says nothing to them).
async fn owned_file(s: &AppState, a: &Auth, id: &str) -> ApiResult<File> {
    batch::file(&s.pool, id)
        .await?
        .filter(|f| a.may_access(&f.owner))
        .ok_or_else(|| ApiError::NotFound(format!("no file {id}")))
}

/// The multipart form of `POST /v1/files`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FileUpload {
    /// The JSON Lines file: one `{"custom_id", "method": "POST", "url", "body"}` per line.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `batch`.
    #[schema(pattern = "^batch$")]
    purpose: String,
}

/// Upload a batch input file: multipart form with `file` (JSON Lines) and `purpose` = `batch`. Every line
/// is checked now (`{"custom_id", "method": "POST", "url", "body"}`, one endpoint per file).
#[utoipa::path(post, path = "/v1/files", tag = "batches", security(("bearer" = [])),
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "OpenAI's file object", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 415, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn upload_file(
    State(s): State<AppState>,
    a: Auth,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType("send multipart/form-data with file and purpose".into())
        })?;
    let limit = s.cfg.max_upload_bytes as u64;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit + 64 * 1024)
            .per_field(limit),
    );
    let mut form = multer::Multipart::with_constraints(
        body.into_data_stream().map_err(std::io::Error::other),
        boundary,
        constraints,
    );
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the file is larger than the limit of {limit} bytes"
        ))
    };
    let form_error = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large()
        }
        other => ApiError::BadRequest(format!("the form could not be read: {other}")),
    };
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(form_error)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("batch.jsonl").to_string();
                file = Some((name, field.bytes().await.map_err(form_error)?));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(p) => {
            return Err(ApiError::BadRequest(format!(
                "purpose must be batch (the only kind of file this server keeps), got {p:?}"
            )));
        }
        None => return Err(ApiError::BadRequest("the form has no purpose field".into())),
    }
    let (filename, bytes) =
        file.ok_or_else(|| ApiError::BadRequest("the form has no file field".into()))?;
    if filename.len() > 255 {
        return Err(ApiError::BadRequest(
            "filename is longer than 255 bytes".into(),
        ));
    }
    let (_, lines) = batch::parse(&bytes, None).map_err(ApiError::InvalidContent)?;
    let id = batch::new_file_id();
    batch::store_input_file(
        &s.pool,
        &id,
        a.0.address,
        &filename,
        &bytes,
        lines.len(),
        a.quotas(&s),
    )
    .await?;
    let f = batch::file(&s.pool, &id)
        .await?
        .ok_or_else(|| ApiError::Internal("the stored file vanished".into()))?;
    tracing::info!(file = %id, bytes = f.size, "batch input uploaded");
    Ok(axum::Json(file_json(&f)))
}

/// The caller's files, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "batches", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's file list", body = Object),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn list_files(State(s): State<AppState>, a: Auth) -> ApiResult<axum::Json<Value>> {
    let rows: Vec<File> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM files WHERE owner = $1 ORDER BY created_at DESC LIMIT 1000",
        batch::FILE_COLUMNS
    )))
    .bind(format!("{:#x}", a.0.address))
    .fetch_all(&s.pool)
    .await?;
    let data: Vec<Value> = rows.iter().map(file_json).collect();
    Ok(axum::Json(
        json!({"object": "list", "data": data, "has_more": false}),
    ))
}

/// A file's metadata.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "batches", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's file object", body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_file(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(file_json(&owned_file(&s, &a, &id).await?)))
}

/// A file's bytes: an input file, or a batch's output or error file (JSON Lines).
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "batches", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, content_type = "application/jsonl", body = String),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn file_content(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let f = owned_file(&s, &a, &id).await?;
    let bytes = batch::file_bytes(&s.pool, &f.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no file {id}")))?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], bytes).into_response())
}

fn parse_batch_id(id: &str) -> ApiResult<i64> {
    id.strip_prefix("batch_")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::NotFound(format!("no batch {id}")))
}

/// The caller's batch (another's, or a job of another kind, is not found).
async fn owned_batch(s: &AppState, a: &Auth, id: &str) -> ApiResult<Job> {
    let n = parse_batch_id(id)?;
    s.queue
        .get(n)
        .await?
        .filter(|j| j.kind == KIND && a.may_access(&j.owner))
        .ok_or_else(|| ApiError::NotFound(format!("no batch {id}")))
}

/// A job as OpenAI's batch object.
async fn batch_json(s: &AppState, j: &Job) -> ApiResult<Value> {
    let p = parse_params(&j.params).map_err(ApiError::Internal)?;
    // counted at upload: the file is not read again for every poll
    let total = batch::file(&s.pool, &p.input_file_id)
        .await?
        .and_then(|f| f.lines)
        .unwrap_or(0);
    let (done, failed) = batch::counts(&s.pool, j.id).await?;
    let ts = |t: Option<time::OffsetDateTime>| t.map(|t| t.unix_timestamp());
    let state = j.state();
    let status = match state {
        JobState::Queued if j.attempts == 0 => "validating",
        JobState::Queued | JobState::Running if j.cancel_requested => "cancelling",
        JobState::Queued | JobState::Running => "in_progress",
        JobState::Succeeded => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    };
    let result = j.result.clone().unwrap_or(Value::Null);
    let end = |want: JobState| ts(j.finished_at.filter(|_| state == want));
    Ok(json!({
        "id": format!("batch_{}", j.id),
        "object": "batch",
        "endpoint": p.endpoint,
        "input_file_id": p.input_file_id,
        "completion_window": p.completion_window,
        "status": status,
        "output_file_id": result.get("output_file_id"),
        "error_file_id": result.get("error_file_id"),
        "errors": j.error.as_ref().map(|e| json!({"object": "list", "data": [{"code": "failed", "message": e}]})),
        "created_at": j.created_at.unix_timestamp(),
        "in_progress_at": ts(j.started_at),
        "expires_at": j.created_at.unix_timestamp() + 24 * 3600,
        "completed_at": end(JobState::Succeeded),
        "failed_at": end(JobState::Failed),
        "cancelled_at": end(JobState::Cancelled),
        "request_counts": {"total": total, "completed": done - failed, "failed": failed},
        "metadata": p.metadata,
        "openledger": {"job_id": j.id, "progress": j.progress},
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// A file uploaded with purpose `batch`.
    pub input_file_id: String,
    /// `/v1/chat/completions` or `/v1/completions`.
    #[schema(pattern = "^/v1/(chat/)?completions$")]
    pub endpoint: String,
    /// `24h`.
    #[schema(pattern = "^24h$")]
    pub completion_window: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Start a batch: every line of the input file is served at batch priority (interactive calls go first),
/// paid (a `request_id` in the line's body, or sponsored) and recorded like an interactive call.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = CreateBatch, security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's batch object", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn create_batch(
    State(s): State<AppState>,
    a: Auth,
    Json(req): Json<CreateBatch>,
) -> ApiResult<axum::Json<Value>> {
    let handler = s.jobs.get(KIND).ok_or_else(|| {
        ApiError::Unavailable("this daemon serves no model, so it runs no batches".into())
    })?;
    let mut raw = json!({
        "input_file_id": req.input_file_id, "endpoint": req.endpoint,
        "completion_window": req.completion_window,
    });
    if let Some(m) = req.metadata {
        raw["metadata"] = m;
    }
    let params = handler.validate(&raw).map_err(ApiError::BadRequest)?;
    handler
        .authorize(a.0.address, a.0.admin, &params)
        .await
        .map_err(|r| match r {
            Refusal::Invalid(m) if m.starts_with("no file") => ApiError::NotFound(m),
            other => other.into(),
        })?;
    let job = super::jobs::submit_within_quotas(
        &s,
        &a,
        handler.as_ref(),
        &NewJob {
            kind: KIND.into(),
            owner: a.0.address,
            params,
            // below interactive work in the job queue too
            priority: -10,
            max_attempts: 5,
        },
    )
    .await?;
    tracing::info!(job = job.id, owner = %job.owner, "batch queued");
    Ok(axum::Json(batch_json(&s, &job).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchList {
    /// At most this many (1-100, default 20).
    pub limit: Option<i64>,
}

/// The caller's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(BatchList), security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's batch list", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn list_batches(
    State(s): State<AppState>,
    a: Auth,
    Query(q): Query<BatchList>,
) -> ApiResult<axum::Json<Value>> {
    let owner: Address = a.0.address;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1-100 (got {limit})"
        )));
    }
    let jobs = s
        .queue
        .list(&JobFilter {
            owner: Some(owner),
            state: None,
            kind: Some(KIND.into()),
            limit,
            offset: 0,
        })
        .await?;
    let mut data = Vec::with_capacity(jobs.len());
    for j in &jobs {
        data.push(batch_json(&s, j).await?);
    }
    Ok(axum::Json(json!({
        "object": "list", "data": data, "has_more": false,
        "first_id": data.first().map(|b| b["id"].clone()), "last_id": data.last().map(|b| b["id"].clone()),
    })))
}

/// A batch, with its progress and (once completed) its output and error files.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's batch object", body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_batch(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let j = owned_batch(&s, &a, &id).await?;
    Ok(axum::Json(batch_json(&s, &j).await?))
}

/// Cancel a batch: lines not yet served are not run (or paid); finished lines stay recorded.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's batch object", body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn cancel_batch(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let j = owned_batch(&s, &a, &id).await?;
    match s.queue.cancel(j.id).await? {
        Some(CancelOutcome::AlreadyFinished(st)) => Err(ApiError::Conflict(format!(
            "batch {id} has already ended ({})",
            st.as_str()
        ))),
        Some(_) => {
            let j = owned_batch(&s, &a, &id).await?;
            Ok((StatusCode::OK, axum::Json(batch_json(&s, &j).await?)))
        }
        None => Err(ApiError::NotFound(format!("no batch {id}"))),
    }
}
