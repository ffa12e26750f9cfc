//! Sign-In-with-Ethereum: get a nonce, sign the EIP-4361 message in the wallet, trade it for a session.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Json;
use super::{ApiError, ApiResult, Auth, Problem};
use crate::auth;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(nonce))
        .routes(routes!(siwe))
        .routes(routes!(me))
        .routes(routes!(logout))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NonceResponse {
    /// Put this in the message's `Nonce:` line; usable once.
    pub nonce: String,
    /// The nonce is refused after this time (RFC 3339).
    pub expires_at: String,
    /// The message's domain must be exactly this.
    pub domain: String,
    /// The message's `Chain ID:` must be this.
    pub chain_id: u64,
}

/// A fresh sign-in nonce, with what the message must name.
#[utoipa::path(get, path = "/api/auth/nonce", tag = "auth",
    responses((status = 200, body = NonceResponse)))]
async fn nonce(State(s): State<AppState>) -> ApiResult<Json<NonceResponse>> {
    let (nonce, exp) = auth::issue_nonce(&s.pool, s.cfg.siwe.nonce_ttl).await?;
    Ok(Json(NonceResponse {
        nonce,
        expires_at: rfc3339(exp),
        domain: s.cfg.siwe.domain.clone(),
        chain_id: s.cfg.siwe.chain_id,
    }))
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiweRequest {
    /// The EIP-4361 message exactly as signed.
    pub message: String,
    /// The wallet's `personal_sign` signature over it (0x-hex, 65 bytes).
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub address: String,
    pub expires_at: Option<String>,
}

/// Trade a signed EIP-4361 message for a session token.
#[utoipa::path(post, path = "/api/auth/siwe", tag = "auth", request_body = SiweRequest,
    responses((status = 201, body = SessionResponse),
              (status = 401, description = "Bad signature, domain, chain, nonce or time", body = Problem,
               content_type = "application/problem+json"),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn siwe(
    State(s): State<AppState>,
    Json(req): Json<SiweRequest>,
) -> ApiResult<(StatusCode, Json<SessionResponse>)> {
    let wallets = s.chain.as_ref().map(|c| c as &dyn auth::ContractWallets);
    let issued = auth::sign_in(&s.pool, &s.cfg.siwe, &req.message, &req.signature, wallets).await?;
    tracing::info!(address = %issued.address, "signed in");
    Ok((
        StatusCode::CREATED,
        Json(SessionResponse {
            token: issued.token,
            address: format!("{:#x}", issued.address),
            expires_at: issued.expires_at.map(rfc3339),
        }),
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    pub address: String,
    /// session or api_key
    pub kind: String,
    pub admin: bool,
    pub expires_at: Option<String>,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn me(Auth(c): Auth) -> Json<MeResponse> {
    Json(MeResponse {
        address: format!("{:#x}", c.address),
        kind: c.kind.as_str().into(),
        admin: c.admin,
        expires_at: c.expires_at.map(rfc3339),
    })
}

/// End the session (or revoke the API key) the request carries.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn logout(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<StatusCode> {
    if !auth::revoke(&s.pool, c.token_id).await? {
        return Err(ApiError::Unauthorized("already revoked".into()));
    }
    Ok(StatusCode::NO_CONTENT)
}
