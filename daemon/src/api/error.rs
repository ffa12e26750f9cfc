//! The one error type of the API: every failure leaves as `application/problem+json` (RFC 9457) with a stable
//! `type` per kind. Internal errors are logged with the request id and answered with no detail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// Seconds to wait before retrying (also the `Retry-After` header): limits, quotas, capacity and
    /// unavailability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The limit or quota that refused the request, as the `openledger serve` flag that sets it (e.g.
    /// `--quota-upload-bytes-per-day`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// What a 503 suggests waiting before a retry, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidContent(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over the signed-in address's rate limit.
    #[error("rate limit of this address exceeded (--rate-limit-per-minute); retry in {0} s")]
    RateLimited(u64),
    /// Over the rate limit of the client's IP address (requests without a valid token).
    #[error(
        "rate limit of this IP address for requests without a valid token exceeded (--ip-rate-limit-per-minute); retry in {0} s"
    )]
    IpRateLimited(u64),
    /// A per-address quota.
    #[error("{0}")]
    Quota(crate::quotas::Exceeded),
    /// Every request slot of the server is taken.
    #[error(
        "the server is handling as many requests as it takes (--max-concurrent-requests); retry in {0} s"
    )]
    Busy(u64),
    /// The request ran past `--request-timeout-secs`.
    #[error("the request took longer than this server's limit of {0} s (--request-timeout-secs)")]
    TimedOut(u64),
    #[error("{0}")]
    PaymentRequired(String),
    #[error("the server is at capacity; retry in {0} s")]
    Overloaded(u64),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            InvalidContent(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-content",
                "Invalid content",
            ),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            RateLimited(_) | IpRateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Quota(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
            ),
            Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded", "At capacity"),
            TimedOut(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            PaymentRequired(_) => (
                StatusCode::PAYMENT_REQUIRED,
                "payment-required",
                "Payment required",
            ),
            Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded", "At capacity"),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(_) => {
                "the server failed; the request id in the logs has the details".into()
            }
            // what the node or the database said may name its URL, and a node URL can carry an API key
            ApiError::Unavailable(d) => redact_urls(d),
            other => other.to_string(),
        };
        Problem {
            kind: format!("/problems/{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            retry_after: match self {
                ApiError::RateLimited(s)
                | ApiError::IpRateLimited(s)
                | ApiError::Overloaded(s)
                | ApiError::Busy(s) => Some(*s),
                ApiError::Quota(e) => Some(e.retry_after),
                ApiError::Unavailable(_) | ApiError::TimedOut(_) => {
                    Some(UNAVAILABLE_RETRY_AFTER_SECS)
                }
                _ => None,
            },
            limit: self.limit().map(str::to_owned),
        }
    }

    /// The `serve` flag of the limit that refused the request, if one did.
    pub fn limit(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::RateLimited(_) => "--rate-limit-per-minute",
            ApiError::IpRateLimited(_) => "--ip-rate-limit-per-minute",
            ApiError::Overloaded(_) => "--max-queue",
            ApiError::Busy(_) => "--max-concurrent-requests",
            ApiError::TimedOut(_) => "--request-timeout-secs",
            ApiError::Quota(e) => e.quota.flag(),
            _ => return None,
        })
    }
}

/// `text` with every http(s) / ws(s) URL in it replaced by `<url>`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .filter_map(|s| rest.find(s))
        .min()
    {
        out.push_str(&rest[..i]);
        out.push_str("<url>");
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ',' | ']' | '>'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = problem.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if openledger_indexer::is_connection_error(&e) {
            ApiError::Unavailable("the database is unavailable".into())
        } else {
            ApiError::Internal(format!("database: {e}"))
        }
    }
}

impl From<crate::quotas::QuotaError> for ApiError {
    fn from(e: crate::quotas::QuotaError) -> Self {
        match e {
            crate::quotas::QuotaError::Exceeded(x) => ApiError::Quota(x),
            crate::quotas::QuotaError::Db(d) => d.into(),
        }
    }
}

impl From<openledger_indexer::IndexerError> for ApiError {
    fn from(e: openledger_indexer::IndexerError) -> Self {
        match e {
            openledger_indexer::IndexerError::Db(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::chain::ChainError> for ApiError {
    fn from(e: crate::chain::ChainError) -> Self {
        use crate::chain::ChainError;
        match e {
            ChainError::Manifest(_) | ChainError::Key(_) => ApiError::Internal(e.to_string()),
            ChainError::NotConnected
            | ChainError::NoKey
            | ChainError::Connect { .. }
            | ChainError::WrongChain { .. }
            | ChainError::Rpc(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::settlement::SettleError> for ApiError {
    fn from(e: crate::settlement::SettleError) -> Self {
        use crate::settlement::SettleError;
        match e {
            SettleError::Db(e) => e.into(),
            SettleError::ForeignRoot { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a body with `Content-Type: application/json`".into(),
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<crate::exports::ExportError> for ApiError {
    fn from(e: crate::exports::ExportError) -> Self {
        use crate::exports::ExportError;
        match e {
            ExportError::Invalid(m) => ApiError::BadRequest(m),
            ExportError::Unavailable(m) => ApiError::Conflict(m),
            ExportError::Model(openledger_model::ModelError::Invalid { name, reason }) => {
                ApiError::BadRequest(format!("{name}: {reason}"))
            }
            ExportError::Db(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// `Json<T>` whose rejections are problems.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path<T>` whose rejections are problems.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `Query<T>` whose rejections are problems.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_node_is_reported_without_its_url() {
        let e = ApiError::Unavailable(
            "cannot reach the chain node at https://eth.example/v2/SECRETKEY (error sending request for url \
             (wss://eth.example/ws?key=SECRETKEY)): timed out"
                .into(),
        );
        let p = e.problem();
        assert!(
            !p.detail.contains("SECRETKEY") && !p.detail.contains("eth.example"),
            "{}",
            p.detail
        );
        assert_eq!(
            p.detail,
            "cannot reach the chain node at <url> (error sending request for url (<url>)): timed out"
        );
        assert_eq!(p.status, 503);
        // other kinds keep their words (they never carry a node's URL)
        assert_eq!(
            ApiError::BadRequest("see http://127.0.0.1:8080/docs".into())
                .problem()
                .detail,
            "see http://127.0.0.1:8080/docs"
        );
    }
}
