//! OpenAI-compatible inference: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /v1/models/{model}`.
//! `model` is the base model's id or a trained adapter's `ft-<job id>`; `stream: true` answers with
//! server-sent events in OpenAI's chunk format. Beyond OpenAI's fields a request may carry `top_k`,
//! `repetition_penalty`, and for pay-first `request_id` (the bytes32 paid to FeeRouter) with an optional
//! `payer`. Every response names its inference (`id`, the `x-openledger-inference-id` header, and an
//! `openledger` object with the payment).
//!
//! Only HTTP lives here: handlers, SSE framing, and the status of each `InferenceError`; the service that
//! checks, charges, records and attributes a request is `inference::service`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use openledger_model::serve::Event;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Json;
use super::{ApiError, ApiResult, Auth, Problem};
use crate::inference::credits::CreditError;
use crate::inference::error::InferenceError;
use crate::inference::payment::PaymentError;
use crate::inference::records::RecordError;
use crate::inference::request::{ChatRequest, CompletionRequest, Kind, Prepared};
use crate::inference::service::{self, Origin, Running, Serving};
use crate::inference::{Inference, ResolveError};
use crate::models::adapter_name;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(chat_completions))
        .routes(routes!(completions))
}

fn engine(s: &AppState) -> ApiResult<Arc<Inference>> {
    s.inference.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "this daemon serves no model (started with --no-inference or none installed)".into(),
        )
    })
}

/// The models this daemon serves: its base model and every adapter trained on it.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, description = "OpenAI's model list", body = Object)))]
async fn list_models(State(s): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        json!({ "object": "list", "data": served(&s).await? }),
    ))
}

/// One served model (what the OpenAI clients' `models.retrieve` asks for).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "inference",
    params(("model" = String, Path, description = "A model id as `/v1/models` lists it")),
    responses((status = 200, body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn get_model(
    State(s): State<AppState>,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> ApiResult<axum::Json<Value>> {
    served(&s)
        .await?
        .into_iter()
        .find(|m| m["id"] == model.as_str())
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(format!("this daemon serves no model {model:?}")))
}

/// The models this daemon serves, as OpenAI's model objects.
async fn served(s: &AppState) -> ApiResult<Vec<Value>> {
    let inf = engine(s)?;
    let rows = crate::models::adapters_on(&s.pool, &inf.base_hash).await?;
    let mut data = vec![json!({
        "id": inf.base_id, "object": "model", "created": inf.started.unix_timestamp(), "owned_by": "openledger",
    })];
    for (job, owner, created) in rows {
        data.push(json!({
            "id": adapter_name(job), "object": "model", "created": created.unix_timestamp(),
            "owned_by": owner, "parent": inf.base_id,
        }));
    }
    Ok(data)
}

/// The service behind the handlers, or 503 when this daemon serves no model.
fn serving(s: &AppState) -> ApiResult<Serving> {
    Ok(Serving::new(
        s.pool.clone(),
        s.index.clone(),
        s.chain.clone(),
        s.deployment.clone(),
        engine(s)?,
        s.index_progress.clone(),
    ))
}

// OpenAI's request schemas are large and documented by OpenAI: the document states their required fields and
// lets the rest through (a value OpenAI's reference refuses is a 400 that names it).
const EXTRA_FIELDS: &str = "See OpenAI's API reference; extra fields: top_k, repetition_penalty, request_id (served only to a caller signed in as its payer), request_secret (the request id is its keccak256), payer";

fn request_schema(
    required: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(required).unwrap_or_else(|_| {
        utoipa::openapi::schema::ObjectBuilder::new()
            .description(Some(EXTRA_FIELDS))
            .into()
    })
}

impl utoipa::PartialSchema for ChatRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        request_schema(json!({
            "type": "object", "description": EXTRA_FIELDS, "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "description": "A model id as /v1/models lists it"},
                "messages": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {"type": "string"}
                    }
                }}
            }
        }))
    }
}
impl utoipa::ToSchema for ChatRequest {}

impl utoipa::PartialSchema for CompletionRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        request_schema(json!({
            "type": "object", "description": EXTRA_FIELDS, "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string", "description": "A model id as /v1/models lists it"},
                "prompt": {"type": "string"}
            }
        }))
    }
}
impl utoipa::ToSchema for CompletionRequest {}

/// What a completion's 503 means.
const SLOW_PAYMENT: &str = "The node, the database or the engine is unavailable, or the payment this daemon \
    made for the request (or for the caller's earlier request to the model) is sent but not mined yet: retry \
    after Retry-After; a payment is never made or charged twice, and one mined late serves the caller's next \
    request";

/// OpenAI's chat completion.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference", request_body = ChatRequest,
    security((), ("bearer" = [])),
    responses((status = 200, description = "A chat.completion, or with stream: true server-sent chat.completion.chunk events", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json",
               description = "A pay-first request_id from a caller not signed in as its payer (send request_secret instead), or a request the daemon would sponsor from a caller not signed in"),
              (status = 402, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json",
               description = "Signed in as someone other than the named payer"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json",
               description = SLOW_PAYMENT)))]
async fn chat_completions(
    State(s): State<AppState>,
    auth: Option<Auth>,
    Json(req): Json<ChatRequest>,
) -> ApiResult<Response> {
    let sv = serving(&s)?;
    let req = req.prepare(&sv.inf)?;
    run(sv, Origin::interactive(auth.map(|a| a.0.address)), req).await
}

/// OpenAI's (legacy) text completion.
#[utoipa::path(post, path = "/v1/completions", tag = "inference", request_body = CompletionRequest,
    security((), ("bearer" = [])),
    responses((status = 200, description = "A text_completion, or with stream: true server-sent events", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json",
               description = "A pay-first request_id from a caller not signed in as its payer (send request_secret instead), or a request the daemon would sponsor from a caller not signed in"),
              (status = 402, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json",
               description = "Signed in as someone other than the named payer"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json",
               description = SLOW_PAYMENT)))]
async fn completions(
    State(s): State<AppState>,
    auth: Option<Auth>,
    Json(req): Json<CompletionRequest>,
) -> ApiResult<Response> {
    let sv = serving(&s)?;
    let req = req.prepare(&sv.inf)?;
    run(sv, Origin::interactive(auth.map(|a| a.0.address)), req).await
}

/// Starts the request and answers with the whole response or, with `stream: true`, server-sent events;
/// either way the inference id is in `x-openledger-inference-id`.
async fn run(sv: Serving, origin: Origin, req: Prepared) -> ApiResult<Response> {
    let r = service::start(&sv, origin, req).await?;
    let id = r.id.clone();
    let mut res = if r.stream {
        stream_response(r).into_response()
    } else {
        axum::Json(service::collect(r).await?).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-openledger-inference-id", v);
    }
    Ok(res)
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Invalid(m) => ApiError::BadRequest(m),
            InferenceError::Resolve(e) => e.into(),
            InferenceError::NotPayable(m) => ApiError::Conflict(m),
            InferenceError::PaymentRequired(m) => ApiError::PaymentRequired(m),
            InferenceError::Payment(e) => e.into(),
            InferenceError::Credit(e) => e.into(),
            InferenceError::Record(e) => e.into(),
            InferenceError::Chain(e) => e.into(),
            InferenceError::Overloaded => ApiError::Overloaded(1),
            InferenceError::Unavailable(m) => ApiError::Unavailable(m),
            InferenceError::Internal(m) => ApiError::Internal(m),
            InferenceError::Db(e) => e.into(),
        }
    }
}

/// How a failed batch line reads in the batch's error file: the status and problem body the HTTP endpoint
/// would have answered (given to the batch job by whoever assembles the daemon).
pub fn batch_problem(e: InferenceError) -> (u16, Value) {
    let p = ApiError::from(e).problem();
    let status = p.status;
    (
        status,
        serde_json::to_value(&p).unwrap_or_else(|_| json!({ "status": status })),
    )
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Db(d) => d.into(),
            ResolveError::Unknown(_) => ApiError::NotFound(e.to_string()),
            ResolveError::WrongBase { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Required(m) => ApiError::PaymentRequired(m),
            PaymentError::Refused(m) => ApiError::PaymentRequired(m),
            PaymentError::Unavailable(m) | PaymentError::Pending(m) => ApiError::Unavailable(m),
            PaymentError::SignIn(m) => ApiError::Unauthorized(m),
            PaymentError::NotPayer(m) => ApiError::Forbidden(m),
            PaymentError::Db(d) => d.into(),
        }
    }
}

impl From<CreditError> for ApiError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::Insufficient { .. } => ApiError::PaymentRequired(e.to_string()),
            CreditError::Zero => ApiError::BadRequest(e.to_string()),
            CreditError::Db(d) => d.into(),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::PaymentUsed(_) => ApiError::Conflict(e.to_string()),
            RecordError::Db(d) => d.into(),
        }
    }
}

/// One streamed choice: a chat delta (with the role in the first) or a completion's text, and the finish
/// reason in the last.
fn stream_choice(kind: Kind, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
    match kind {
        Kind::Chat => {
            let mut d = json!({});
            if role {
                d["role"] = json!("assistant");
            }
            if let Some(t) = text {
                d["content"] = json!(t);
            }
            json!({"index": 0, "delta": d, "finish_reason": finish, "logprobs": null})
        }
        Kind::Completion => {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
        }
    }
}

/// The events of a started request as OpenAI's server-sent chunks: the role and the inference's metadata
/// first, then text deltas, the finish (with the attribution), usage when asked, and `[DONE]`.
fn stream_response(r: Running) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let Running {
        id,
        model,
        kind,
        meta,
        include_usage,
        created,
        events: rx,
        ..
    } = r;
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let usage_head =
        json!({"id": id, "object": object, "created": created, "model": model, "choices": []});
    let chunk = move |choice: Value, extra: Option<(&str, Value)>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        SseEvent::default().data(v.to_string())
    };
    let delta = move |text: Option<&str>, role: bool, finish: Option<&str>| {
        stream_choice(kind, text, role, finish)
    };
    // first the role (and the inference's metadata), then text deltas, the finish, usage, [DONE]
    let first = chunk(delta(Some(""), true, None), Some(("openledger", meta)));
    let state = (rx, false);
    let body = futures::stream::unfold(state, move |(mut rx, done)| {
        let chunk = chunk.clone();
        let usage_head = usage_head.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Some((Event::Token { text, .. }, _)) if !text.is_empty() => {
                        return Some((
                            vec![chunk(delta(Some(&text), false, None), None)],
                            (rx, false),
                        ));
                    }
                    Some((Event::Done(f), att)) => {
                        // the finish chunk carries the attribution, as the first one the metadata
                        let extra = att.map(|a| ("openledger", json!({ "attribution": a })));
                        let mut evs =
                            vec![chunk(delta(None, false, Some(f.reason.as_str())), extra)];
                        if include_usage {
                            // OpenAI's usage chunk has an empty choices list
                            let mut u = usage_head.clone();
                            u["usage"] = service::usage(&f);
                            evs.push(SseEvent::default().data(u.to_string()));
                        }
                        evs.push(SseEvent::default().data("[DONE]"));
                        return Some((evs, (rx, true)));
                    }
                    Some((Event::Failed(m), _)) => {
                        let err = json!({"error": {"message": m, "type": "server_error"}});
                        return Some((vec![SseEvent::default().data(err.to_string())], (rx, true)));
                    }
                    Some(_) => {}
                    None => return None,
                }
            }
        }
    });
    let body = futures::StreamExt::flat_map(body, |evs| {
        futures::stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    let all = futures::StreamExt::chain(futures::stream::once(async move { Ok(first) }), body);
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
