//! The `Auth` extractor: resolves the bearer token and applies the caller's rate limit.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;

use super::{ApiError, limits};
use crate::auth::{self, AuthError, Caller};
use crate::quotas::Quotas;
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

    /// The quotas this caller's actions are charged against: none for operators.
    pub fn quotas<'a>(&self, s: &'a AppState) -> &'a Quotas {
        if self.0.admin {
            &Quotas::UNLIMITED
        } else {
            &s.cfg.quotas
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Db(d) => ApiError::Internal(format!("auth: {d}")),
            AuthError::Chain(d) => ApiError::Unavailable(format!("sign-in: {d}")),
            AuthError::Unavailable => ApiError::Unavailable("the database is unavailable".into()),
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

impl Auth {
    /// Authenticates `token` and charges its address's rate limit. A token that does not authenticate is
    /// charged to the client's IP address instead, like a request without one (so guessing tokens is as
    /// slow as any anonymous traffic).
    async fn resolve(token: &str, parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = match auth::authenticate(&state.pool, token).await {
            Ok(c) => c,
            Err(e) => {
                if !matches!(
                    e,
                    AuthError::Db(_) | AuthError::Unavailable | AuthError::Chain(_)
                ) && let Some(ip) = limits::client_of(parts)
                {
                    limits::charge_ip(state, ip)?;
                }
                return Err(e.into());
            }
        };
        if let Err(not_until) = state.limiter.check_key(&caller.address) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            metrics::counter!("openledger_rate_limited_total", "limit" => "address").increment(1);
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
        let token = limits::bearer(&parts.uri, &parts.headers).ok_or(AuthError::Missing)?;
        Auth::resolve(&token, parts, state).await
    }
}

/// `Option<Auth>`: anonymous callers are `None`; a token that is present must be valid.
impl OptionalFromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        match limits::bearer(&parts.uri, &parts.headers) {
            Some(token) => Auth::resolve(&token, parts, state).await.map(Some),
            None => Ok(None),
        }
    }
}
