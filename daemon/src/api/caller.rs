//! The `Auth` extractor: resolves the bearer token and applies the caller's rate limit.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::ApiError;
use crate::auth::{self, AuthError, Caller};
use crate::state::AppState;

/// An authenticated caller. Browsers' `EventSource` cannot send headers, so on the event-stream routes
/// (`.../events`) the token may also come as `?access_token=`; elsewhere a token in a URL (kept in logs,
/// history and referrers) is not taken.
#[derive(Debug, Clone)]
pub struct Auth(pub Caller);

impl Auth {
    /// May this caller see or manage something owned by `owner`?
    pub fn may_access(&self, owner: &str) -> bool {
        self.0.admin || owner.eq_ignore_ascii_case(&format!("{:#x}", self.0.address))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Db(d) => ApiError::Internal(format!("auth: {d}")),
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if !parts.uri.path().ends_with("/events") {
        return None;
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

impl Auth {
    async fn resolve(token: &str, state: &AppState) -> Result<Self, ApiError> {
        let caller = auth::authenticate(&state.pool, token).await?;
        if let Err(not_until) = state.limiter.check_key(&caller.address) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            metrics::counter!("openledger_rate_limited_total").increment(1);
            return Err(ApiError::RateLimited(wait.as_secs().max(1)));
        }
        Ok(Auth(caller))
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(AuthError::Missing)?;
        Auth::resolve(&token, state).await
    }
}

/// `Option<Auth>`: anonymous callers are `None`; a token that is present must be valid.
impl OptionalFromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        match bearer(parts) {
            Some(token) => Auth::resolve(&token, state).await.map(Some),
            None => Ok(None),
        }
    }
}
