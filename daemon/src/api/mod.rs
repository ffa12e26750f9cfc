//! The REST API: `app(state)` builds the router (and its OpenAPI document) from one file per area.
//! Reads are public; writes need a bearer token (wallet session or API key) and are rate-limited per
//! address.
//!
//! HTTP only: handlers translate requests into calls on the domains below (`inference`, `jobs`,
//! `settlement`, `attribution`, `models`, ...) and their errors into `ApiError` (`From` impls at this
//! edge). May import every domain module and `state`; nothing below imports `api`.

mod attribution;
mod auth;
mod batches;
mod caller;
mod contributions;
mod credits;
mod datanets;
mod docs;
pub mod error;
mod jobs;
pub mod limits;
mod models;
pub mod openai;
mod ops;
mod rewards;
pub mod types;
mod web;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use caller::Auth;
pub use error::{ApiError, ApiResult, Problem};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenLedger daemon API",
        description = "Datanets and contributions from the chain index, contribution uploads and relaying, \
                       the job queue, base models and trained LoRA adapters. Errors are RFC 9457 problem documents (`application/problem+json`)."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign-In-with-Ethereum sessions"),
        (name = "datanets", description = "Datanets, contributions and versions as the indexer saw them"),
        (name = "uploads", description = "Contribution content, EIP-712 payloads and relaying"),
        (name = "jobs", description = "The job queue"),
        (name = "models", description = "ModelFactory: base models, trained adapters and their files"),
        (name = "inference", description = "OpenAI-compatible inference on the base model and its adapters (OpenLoRA)"),
        (name = "rewards", description = "Settlement epochs, contributors' rewards and claim proofs"),
        (name = "ops", description = "Health, readiness, metrics, status"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token from POST /api/auth/siwe, or an API key from `openledger keys create`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The routes and the OpenAPI document describing exactly them.
pub fn router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes())
        .merge(datanets::routes())
        .merge(contributions::routes())
        .merge(jobs::routes())
        .merge(models::routes())
        .merge(openai::routes())
        .merge(attribution::routes())
        .merge(batches::routes())
        .merge(credits::routes())
        .merge(rewards::routes())
        .merge(ops::routes())
        .merge(docs::routes())
        .split_for_parts()
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (api, openapi) = router();
    docs::set_document(&openapi);
    let json_limit = state.cfg.max_json_bytes;
    let request_id = HeaderName::from_static("x-request-id");
    api.merge(web::routes(state.cfg.public_rpc_url.as_deref()))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not take that method".into())
        })
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::guard,
        ))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("last-event-id")])
                .expose_headers([request_id.clone()]),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!("openledger_http_request_duration_seconds",
        "method" => method.clone(), "route" => route.clone(), "status" => status.clone())
    .record(start.elapsed().as_secs_f64());
    metrics::counter!("openledger_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    res
}
