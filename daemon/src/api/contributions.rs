//! Contribution uploads: store content, hand out the EIP-712 payload to sign, relay the signed
//! `contributeWithSig`, and show how far each upload got (uploaded -> pending -> submitted -> confirmed /
//! failed). An upload counts as confirmed as soon as the index holds its content hash in its Datanet,
//! whoever sent the transaction.

use std::str::FromStr;

use alloy::primitives::{Address, B256, Signature, U256};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::rfc3339;
use super::error::{Json, Path, Query};
use super::types::*;
use super::{ApiError, ApiResult, Auth, Problem};
use crate::chain::{Contribute, contribute_payload};
use crate::content::{self, ContentError, Format};
use crate::state::AppState;
use crate::uploads::{self, NewRelay, RelayRow, UploadRow};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload, list_uploads))
        .routes(routes!(get_upload))
        .routes(routes!(upload_content))
        .routes(routes!(typed_data))
        .routes(routes!(relay))
        .routes(routes!(get_relay))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RelayView {
    pub id: i64,
    pub upload_id: i64,
    pub contributor: String,
    pub nonce: String,
    pub deadline: String,
    /// pending, submitted, confirmed or failed.
    pub state: String,
    pub tx_hash: Option<String>,
    pub contribution_id: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The job that sends it (follow it at /api/jobs/{id}/events).
    pub job_id: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<RelayRow> for RelayView {
    fn from(r: RelayRow) -> Self {
        Self {
            id: r.id,
            upload_id: r.upload_id,
            contributor: r.contributor,
            nonce: r.nonce,
            deadline: r.deadline,
            state: r.state,
            tx_hash: r.tx_hash,
            contribution_id: r.contribution_id,
            error: r.error,
            job_id: r.job_id,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    pub id: i64,
    pub owner: String,
    pub datanet_id: String,
    /// keccak-256 of the canonical content: the `contentHash` to put on chain.
    pub content_hash: String,
    /// jsonl, text or markdown (as uploaded; stored canonically as JSON Lines).
    pub format: String,
    pub records: i32,
    /// Size of the canonical form.
    pub byte_size: i32,
    pub filename: String,
    pub metadata_uri: String,
    pub created_at: String,
    /// uploaded, pending, submitted, confirmed or failed.
    pub state: String,
    /// Why the latest relay failed, in words (the contract's refusal decoded), when `state` is failed.
    pub error: Option<String>,
    /// The on-chain contribution with this content in this Datanet, once indexed.
    pub contribution: Option<ContributionView>,
    pub relays: Vec<RelayView>,
    /// In the answer to an upload: how many rows came in each row format it recognised (text,
    /// prompt_completion, openai_chat, alpaca, sharegpt), all stored in the one canonical form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_formats: Option<std::collections::BTreeMap<String, usize>>,
}

async fn view(s: &AppState, u: UploadRow) -> ApiResult<UploadView> {
    let datanet = parse_u256("datanet id", &u.datanet_id)?;
    let hash = parse_hash("content hash", &u.content_hash)?;
    let owner = parse_address("owner", &u.owner)?;
    // confirmed only by the uploader's own contribution: someone else's of the same content is theirs
    let contribution = s.index.contribution_of(datanet, owner, hash).await?;
    let relays: Vec<RelayView> = uploads::relays_of(&s.pool, u.id)
        .await?
        .into_iter()
        .map(RelayView::from)
        .collect();
    let state = if contribution.is_some() {
        "confirmed".to_owned()
    } else {
        relays
            .last()
            .map(|r| r.state.clone())
            .unwrap_or_else(|| "uploaded".into())
    };
    let error = match relays.last() {
        Some(r) if state == "failed" => r.error.clone(),
        _ => None,
    };
    Ok(UploadView {
        id: u.id,
        owner: u.owner,
        datanet_id: u.datanet_id,
        content_hash: u.content_hash,
        format: u.format,
        records: u.records,
        byte_size: u.byte_size,
        filename: u.filename,
        metadata_uri: u.metadata_uri,
        created_at: rfc3339(u.created_at),
        state,
        error,
        contribution: contribution.map(ContributionView::from),
        relays,
        row_formats: None,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The Datanet to contribute to (decimal id).
    pub datanet_id: String,
    /// jsonl, text or markdown; else taken from Content-Type, else from the filename's extension.
    pub format: Option<String>,
    /// The original file name (kept for display; its extension may give the format).
    pub filename: Option<String>,
    /// The `metadataURI` to put on chain (default `openledger://content/<hash>`).
    pub metadata_uri: Option<String>,
}

fn content_error(e: ContentError) -> ApiError {
    match e {
        ContentError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
        other => ApiError::InvalidContent(other.to_string()),
    }
}

/// Upload contribution content as the raw request body: JSON Lines (per line `{"prompt","completion"}`,
/// `{"text"}`, OpenAI chat `{"messages"}`, Alpaca `{"instruction","input","output"}` or ShareGPT
/// `{"conversations"}`, all stored in one canonical form), plain text or Markdown. Returns the stored
/// upload with the rows counted per format (`row_formats`); uploading the same content again returns the
/// existing one (200).
#[utoipa::path(post, path = "/api/uploads", tag = "uploads", params(UploadQuery), security(("bearer" = [])),
    request_body(content = String, content_type = "application/jsonl", description = "the content (also text/plain, text/markdown)"),
    responses((status = 201, body = UploadView), (status = 200, body = UploadView, description = "already uploaded"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, description = "no such Datanet", content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 415, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn upload(
    State(s): State<AppState>,
    a: Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<UploadView>)> {
    let datanet = parse_u256("datanet_id", &q.datanet_id)?;
    let format = match q.format.as_deref() {
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::BadRequest(format!("format must be jsonl, text or markdown, got {f:?}"))
        })?,
        None => headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::from_media_type)
            .or_else(|| q.filename.as_deref().and_then(Format::from_filename))
            .ok_or_else(|| {
                ApiError::UnsupportedMediaType(
                    "send Content-Type application/jsonl, text/plain or text/markdown (or ?format=)".into(),
                )
            })?,
    };
    let filename = q.filename.unwrap_or_default();
    if filename.chars().count() > 255 {
        return Err(ApiError::BadRequest(
            "filename is longer than 255 characters".into(),
        ));
    }
    if let Some(u) = &q.metadata_uri
        && (u.is_empty() || u.chars().count() > 2048)
    {
        return Err(ApiError::BadRequest(
            "metadata_uri must be 1 to 2048 characters".into(),
        ));
    }
    let limit = s.cfg.max_upload_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "the upload is larger than the limit of {limit} bytes"
        ))
    })?;
    let canonical = content::canonicalise(&bytes, format, limit).map_err(content_error)?;
    if !s.index.datanet_exists(datanet).await? {
        return Err(ApiError::NotFound(format!(
            "no Datanet {datanet} (indexed)"
        )));
    }
    let metadata_uri = q
        .metadata_uri
        .unwrap_or_else(|| format!("openledger://content/{}", canonical.hash));
    let (row, created) = uploads::store(
        &s.pool,
        uploads::NewUpload {
            owner: a.0.address,
            chain_id: s.deployment.chain_id,
            datanet_id: datanet,
            content: &canonical,
            filename: &filename,
            metadata_uri: &metadata_uri,
        },
        a.quotas(&s),
    )
    .await?;
    if created {
        tracing::info!(upload = row.id, hash = %canonical.hash, records = canonical.records.len(), "content uploaded");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut v = view(&s, row).await?;
    v.row_formats = Some(
        canonical
            .formats
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
    );
    Ok((status, Json(v)))
}

/// The caller's uploads, newest first.
#[utoipa::path(get, path = "/api/uploads", tag = "uploads", params(Page), security(("bearer" = [])),
    responses((status = 200, body = Vec<UploadView>),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn list_uploads(
    State(s): State<AppState>,
    a: Auth,
    Query(page): Query<Page>,
) -> ApiResult<Json<Vec<UploadView>>> {
    let (limit, offset) = page.resolve()?;
    let rows = uploads::list(&s.pool, a.0.address, limit, offset).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(view(&s, r).await?);
    }
    Ok(Json(out))
}

/// 409 when `owner` has contributed this content to this Datanet already (the chain takes it once per
/// contributor).
async fn already_contributed(
    s: &AppState,
    datanet: U256,
    owner: Address,
    hash: B256,
) -> ApiResult<()> {
    match s.index.contribution_of(datanet, owner, hash).await? {
        Some(c) => Err(ApiError::Conflict(format!(
            "{owner:#x} has already contributed this content to Datanet {datanet} (contribution {})",
            c.id
        ))),
        None => Ok(()),
    }
}

async fn owned_upload(s: &AppState, a: &Auth, id: &str) -> ApiResult<UploadRow> {
    let id = parse_id("upload id", id)?;
    let u = uploads::get(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no upload {id}")))?;
    if !a.may_access(&u.owner) {
        return Err(ApiError::Forbidden(format!(
            "upload {id} belongs to another address"
        )));
    }
    Ok(u)
}

/// One upload and its progress towards the chain.
#[utoipa::path(get, path = "/api/uploads/{id}", tag = "uploads", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = UploadView),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_upload(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadView>> {
    let u = owned_upload(&s, &a, &id).await?;
    Ok(Json(view(&s, u).await?))
}

/// The stored content in canonical form (JSON Lines); its keccak-256 is the content hash.
#[utoipa::path(get, path = "/api/uploads/{id}/content", tag = "uploads", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, content_type = "application/jsonl", body = String),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn upload_content(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let u = owned_upload(&s, &a, &id).await?;
    let body = uploads::body(&s.pool, &u.content_hash)
        .await?
        .ok_or_else(|| ApiError::NotFound("the content is gone".into()))?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TypedDataQuery {
    /// Seconds the signature stays valid (60 to 604800; default from the server's configuration).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TypedDataResponse {
    /// `eth_signTypedData_v4` input: sign it with the wallet (or `cast wallet sign --data`).
    #[schema(value_type = Object)]
    pub typed_data: serde_json::Value,
    /// The EIP-712 digest the signature must cover.
    pub digest: String,
    pub nonce: String,
    pub deadline: String,
}

/// The EIP-712 `Contribute` payload for this upload, with the owner's current on-chain nonce.
#[utoipa::path(get, path = "/api/uploads/{id}/typed-data", tag = "uploads", params(("id" = i64, Path), TypedDataQuery),
    security(("bearer" = [])),
    responses((status = 200, body = TypedDataResponse),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, description = "already on chain", content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn typed_data(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
    Query(q): Query<TypedDataQuery>,
) -> ApiResult<Json<TypedDataResponse>> {
    let u = owned_upload(&s, &a, &id).await?;
    let ttl = q.ttl_secs.unwrap_or(s.cfg.signature_ttl.as_secs());
    if !(60..=604_800).contains(&ttl) {
        return Err(ApiError::BadRequest(
            "ttl_secs must be between 60 and 604800".into(),
        ));
    }
    let owner = parse_address("owner", &u.owner)?;
    let datanet = parse_u256("datanet id", &u.datanet_id)?;
    let hash = parse_hash("content hash", &u.content_hash)?;
    // a payload the chain would refuse is not served for signing
    already_contributed(&s, datanet, owner, hash).await?;
    let chain = s.chain()?;
    let nonce = chain
        .contribute_nonce(owner)
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the nonce: {e}")))?;
    // the contract compares the deadline with block.timestamp: count from the chain's clock
    let now = chain
        .now()
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the chain's time: {e}")))?;
    let deadline = U256::from(now + ttl);
    let p = contribute_payload(
        chain.chain_id(),
        chain.registry_address(),
        Contribute {
            contributor: owner,
            datanetId: datanet,
            contentHash: hash,
            metadataURI: u.metadata_uri.clone(),
            nonce,
            deadline,
        },
    );
    Ok(Json(TypedDataResponse {
        typed_data: p.typed_data,
        digest: p.digest.to_string(),
        nonce: nonce.to_string(),
        deadline: deadline.to_string(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayRequest {
    /// The owner's EIP-712 signature over the typed data (0x-hex, 65 bytes).
    pub signature: String,
    /// The `nonce` of the signed payload (decimal).
    pub nonce: String,
    /// The `deadline` of the signed payload (decimal unix time).
    pub deadline: String,
}

/// Relay the owner's signed `contributeWithSig` from the daemon's key. The signature is checked here
/// first; the returned relay's job sends it and follows it until the indexer confirms it.
#[utoipa::path(post, path = "/api/uploads/{id}/relay", tag = "uploads", params(("id" = i64, Path)),
    request_body = RelayRequest, security(("bearer" = [])),
    responses((status = 202, body = RelayView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, description = "already on chain, nonce used, or already queued", content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn relay(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
    Json(req): Json<RelayRequest>,
) -> ApiResult<(StatusCode, Json<RelayView>)> {
    let u = owned_upload(&s, &a, &id).await?;
    let nonce = parse_u256("nonce", &req.nonce)?;
    let deadline = parse_u256("deadline", &req.deadline)?;
    let sig = Signature::from_str(req.signature.trim())
        .map_err(|e| ApiError::BadRequest(format!("signature: {e}")))?;
    let owner = parse_address("owner", &u.owner)?;
    let datanet = parse_u256("datanet id", &u.datanet_id)?;
    let hash: B256 = parse_hash("content hash", &u.content_hash)?;
    let chain = s.chain()?;
    let now = chain
        .now()
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the chain's time: {e}")))?;
    if deadline <= U256::from(now) {
        return Err(ApiError::BadRequest(format!(
            "the deadline {deadline} has passed (the chain's time is {now}): fetch a fresh payload"
        )));
    }
    if chain.signer().is_none() {
        return Err(ApiError::Unavailable(
            "this daemon has no key to relay with".into(),
        ));
    }
    let p = contribute_payload(
        chain.chain_id(),
        chain.registry_address(),
        Contribute {
            contributor: owner,
            datanetId: datanet,
            contentHash: hash,
            metadataURI: u.metadata_uri.clone(),
            nonce,
            deadline,
        },
    );
    let signer: Address = sig
        .recover_address_from_prehash(&p.digest)
        .map_err(|e| ApiError::BadRequest(format!("signature: {e}")))?;
    if signer != owner {
        return Err(ApiError::BadRequest(format!(
            "the signature is by {signer:#x}, not by the upload's owner {owner:#x} (or it covers other values)"
        )));
    }
    already_contributed(&s, datanet, owner, hash).await?;
    let current = chain
        .contribute_nonce(owner)
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the nonce: {e}")))?;
    if nonce != current {
        return Err(ApiError::Conflict(format!(
            "the signature is for nonce {nonce} but the next nonce is {current}; fetch a fresh payload"
        )));
    }
    let row = crate::jobs::relay::queue(
        &s.pool,
        &NewRelay {
            upload_id: u.id,
            contributor: owner,
            nonce,
            deadline,
            signature: format!("{}", alloy::primitives::Bytes::from(sig.as_bytes())),
        },
        a.quotas(&s),
    )
    .await?
    .ok_or_else(|| ApiError::Conflict("this signed payload is already queued".into()))?;
    tracing::info!(relay = row.id, upload = u.id, "relay queued");
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

/// One relay.
#[utoipa::path(get, path = "/api/relays/{id}", tag = "uploads", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = RelayView),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_relay(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayView>> {
    let id = parse_id("relay id", &id)?;
    let r = uploads::relay(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no relay {id}")))?;
    if !a.may_access(&r.contributor) {
        return Err(ApiError::Forbidden(format!(
            "relay {id} belongs to another address"
        )));
    }
    Ok(Json(r.into()))
}
