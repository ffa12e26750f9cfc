//! Inference credit: a signed-in caller's balance and ledger, and grants by admins (`openledger credits`
//! does the same from the command line). See `inference::credits` for how inferences draw on it.

use alloy::primitives::U256;
use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Auth;
use super::error::{Json, Path, Query};
use super::types::parse_address;
use super::{ApiError, ApiResult, Problem};
use crate::inference::credits::{self, Credit, CreditError};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_credit))
        .routes(routes!(change_credit))
}

#[derive(Debug, Deserialize, IntoParams)]
struct LedgerLimit {
    /// Ledger entries to return, newest first (1-500, default 50).
    limit: Option<i64>,
}

fn limit(l: &LedgerLimit) -> ApiResult<i64> {
    match l.limit.unwrap_or(50) {
        n @ 1..=500 => Ok(n),
        n => Err(ApiError::BadRequest(format!(
            "limit must be 1-500 (got {n})"
        ))),
    }
}

/// The caller's inference credit (OPEN wei) and its ledger.
#[utoipa::path(get, path = "/api/credits", tag = "inference", params(LedgerLimit), security(("bearer" = [])),
    responses((status = 200, body = Credit),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn my_credit(
    State(s): State<AppState>,
    auth: Auth,
    Query(l): Query<LedgerLimit>,
) -> ApiResult<Json<Credit>> {
    Ok(Json(
        credits::show(&s.pool, auth.0.address, limit(&l)?).await?,
    ))
}

/// A grant (positive `amount`) or a revocation (`"revoke": true`) of inference credit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditChange {
    /// OPEN wei, a positive decimal string.
    pub amount: String,
    #[serde(default)]
    pub revoke: bool,
    pub note: Option<String>,
}

/// Grants or revokes an address's inference credit (admins only: an API key from `openledger keys`).
#[utoipa::path(post, path = "/api/credits/{address}", tag = "inference", security(("bearer" = [])),
    params(("address" = String, Path)), request_body = CreditChange,
    responses((status = 200, body = Credit),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn change_credit(
    State(s): State<AppState>,
    auth: Auth,
    Path(address): Path<String>,
    Json(c): Json<CreditChange>,
) -> ApiResult<Json<Credit>> {
    if !auth.0.admin {
        return Err(ApiError::Forbidden(
            "only admins (API keys) grant inference credit".into(),
        ));
    }
    let address = parse_address("address", &address)?;
    let amount = parse_amount(&c.amount)?;
    let note = c.note.as_deref();
    let r = if c.revoke {
        credits::revoke(&s.pool, address, amount, note).await
    } else {
        credits::grant(&s.pool, address, amount, note).await
    };
    match r {
        Ok(_) => {}
        Err(e @ CreditError::Insufficient { .. }) => return Err(ApiError::Conflict(e.to_string())),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%address, %amount, revoke = c.revoke, by = %auth.0.address, "inference credit changed");
    Ok(Json(credits::show(&s.pool, address, 50).await?))
}

/// A positive amount of wei, as a decimal string.
pub fn parse_amount(v: &str) -> ApiResult<U256> {
    let bad = || {
        ApiError::BadRequest(format!(
            "amount must be a positive whole number of wei (got {v:?})"
        ))
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let a: U256 = v.parse().map_err(|_| bad())?;
    if a.is_zero() {
        return Err(bad());
    }
    Ok(a)
}
