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
use openledger_model::serve::Finished;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Json;
use super::{ApiError, ApiResult, Auth, Problem};
use crate::inference::credits::CreditError;
use crate::inference::error::InferenceError;
use crate::inference::logprobs;
use crate::inference::payment::PaymentError;
use crate::inference::records::RecordError;
use crate::inference::request::{ChatRequest, CompletionRequest, Kind, MAX_CHOICES, Prepared};
use crate::inference::service::{self, Origin, Out, Running, Serving};
use crate::inference::tools::Tools;
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

// OpenAI's request schemas are large and documented by OpenAI: the document lists every field this server
// takes, with its type (nullable, as null means "not given"); OpenAI's fields it does not implement and
// any other field are refused with a 400 that names them (a value OpenAI's reference refuses is a 400 too).
const EXTRA_FIELDS: &str = "See OpenAI's API reference. Every field listed is served; any other field (`echo` other than false, `best_of` other than 1, ...) is a 400 naming it. Extra fields: top_k, repetition_penalty, request_id (served only to a caller signed in as its payer), request_secret (the request id is its keccak256), payer. response_format json_object and json_schema are enforced by constrained decoding (strict or not); a schema feature the grammar engine does not implement (uniqueItems, not, a oneOf whose branches may overlap, ...) is a 400 naming it. logprobs are the model's own distribution, before penalties, logit_bias, temperature and response_format";

/// The fields both endpoints take besides their prompt, as JSON Schema.
fn common_properties() -> serde_json::Value {
    let t = |ty: &str| json!({ "type": [ty, "null"] });
    let uint = || json!({ "type": ["integer", "null"], "minimum": 0 });
    json!({
        "model": {"type": "string", "description": "A model id as /v1/models lists it"},
        "max_tokens": uint(), "max_completion_tokens": uint(),
        "temperature": t("number"), "top_p": t("number"), "top_k": uint(),
        "repetition_penalty": t("number"), "presence_penalty": t("number"), "frequency_penalty": t("number"),
        "seed": uint(),
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CHOICES,
              "description": "Choices to generate (default 1), each a sequence of its own sampled from seed + its index when seed is given; paid as n completions (n x (prompt + max_tokens) tokens); one inference and one attribution record, the pool split equally between the choices"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "stream": t("boolean"),
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        "logprobs": {"type": ["boolean", "integer", "null"], "description": "Chat: true or false; text completions: the number of alternatives, 0..=5"},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "description": "Chat: alternatives per token, 0..=20, with logprobs: true"},
        "logit_bias": {"type": ["object", "null"], "additionalProperties": {"type": "number"},
                       "description": "Token id (a string) to a bias added to its logit, -100..=100"},
        "response_format": {"type": ["object", "null"], "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"},
                "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}},
        "user": t("string"),
        "request_id": t("string"), "request_secret": t("string"), "payer": t("string"),
        "echo": {"type": ["boolean", "null"], "enum": [false, null]},
        "best_of": {"type": ["integer", "null"], "enum": [1, null]},
        "store": {"type": ["boolean", "null"], "enum": [false, null]},
    })
}

fn request_schema(
    prompt: &str,
    prompt_schema: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let mut props = common_properties();
    props[prompt] = prompt_schema;
    serde_json::from_value(json!({
        "type": "object", "description": EXTRA_FIELDS, "required": ["model", prompt],
        "properties": props, "additionalProperties": false,
    }))
    .unwrap_or_else(|_| {
        utoipa::openapi::schema::ObjectBuilder::new()
            .description(Some(EXTRA_FIELDS))
            .into()
    })
}

impl utoipa::PartialSchema for ChatRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut s = request_schema(
            "messages",
            json!({"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": ["string", "null"]},
                    "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}},
                    "tool_call_id": {"type": ["string", "null"]},
                    "name": {"type": ["string", "null"]}
                }
            }}),
        );
        // the chat-only fields: functions the model may call
        if let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) = &mut s {
            let extra = [
                (
                    "tools",
                    json!({"type": ["array", "null"], "items": {
                    "type": "object", "required": ["type", "function"],
                    "properties": {"type": {"type": "string", "enum": ["function"]},
                                   "function": {"type": "object", "required": ["name"], "properties": {
                                       "name": {"type": "string"}, "description": {"type": "string"},
                                       "parameters": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}}}),
                ),
                (
                    "tool_choice",
                    json!({"oneOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    {"type": "object", "required": ["type", "function"], "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
                    {"type": "null"}]}),
                ),
                ("parallel_tool_calls", json!({"type": ["boolean", "null"]})),
            ];
            for (k, v) in extra {
                match serde_json::from_value(v) {
                    Ok(v) => {
                        o.properties.insert(k.to_string(), v);
                    }
                    Err(e) => {
                        tracing::error!(field = k, error = %e, "documenting the chat request")
                    }
                }
            }
        }
        s
    }
}
impl utoipa::ToSchema for ChatRequest {}

impl utoipa::PartialSchema for CompletionRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        request_schema("prompt", json!({"type": "string"}))
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
fn stream_choice(
    kind: Kind,
    index: usize,
    text: Option<&str>,
    role: bool,
    finish: Option<&str>,
    logprobs: Value,
) -> Value {
    match kind {
        Kind::Chat => {
            let mut d = json!({});
            if role {
                d["role"] = json!("assistant");
            }
            if let Some(t) = text {
                d["content"] = json!(t);
            }
            json!({"index": index, "delta": d, "finish_reason": finish, "logprobs": logprobs})
        }
        Kind::Completion => {
            json!({"index": index, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": logprobs})
        }
    }
}

/// A streamed chat choice with a delta as given.
fn raw_choice(index: usize, delta: Value, finish: Option<&str>) -> Value {
    json!({"index": index, "delta": delta, "finish_reason": finish, "logprobs": null})
}

/// The events of a started request as OpenAI's server-sent chunks: each choice's role (the first with the
/// inference's metadata), then text deltas as the choices make them (`index` names the choice), each
/// choice's finish (the last with the attribution), usage when asked, and `[DONE]`.
fn stream_response(r: Running) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let Running {
        id,
        model,
        kind,
        choices: n,
        meta,
        include_usage,
        created,
        events: rx,
        logprobs,
        inf,
        tools,
        ..
    } = r;
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let usage_head =
        json!({"id": id, "object": object, "created": created, "model": model, "choices": []});
    // shared by every event's future: an Arc each, not a copy of the strings and the tools per token
    let chunk = Arc::new(move |choice: Value, extra: Option<(&str, Value)>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        SseEvent::default().data(v.to_string())
    });
    let usage_head = Arc::new(usage_head);
    let tools = tools.map(Arc::new);
    let delta = move |i: usize, text: Option<&str>, role: bool, finish: Option<&str>, lp: Value| {
        stream_choice(kind, i, text, role, finish, lp)
    };
    // first each choice's role (the first with the inference's metadata), then text deltas, the finishes,
    // usage, [DONE]
    let mut meta = Some(meta);
    let first: Vec<Result<SseEvent, Infallible>> = (0..n)
        .map(|i| {
            let extra = meta.take().map(|m| ("openledger", m));
            Ok((*chunk)(delta(i, Some(""), true, None, Value::Null), extra))
        })
        .collect();
    // (events, done, each completion's text offset for its logprobs)
    let state = (rx, false, vec![0usize; n]);
    let body = futures::stream::unfold(state, move |(mut rx, done, mut offsets)| {
        let chunk = chunk.clone();
        let usage_head = usage_head.clone();
        let inf = inf.clone();
        let tools = tools.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    // with logprobs every token is a chunk (its text may be held back for stop sequences)
                    Some(Out::Token {
                        choice,
                        text,
                        logprobs: Some(lp),
                    }) if logprobs => {
                        let lp = std::slice::from_ref(&lp);
                        let v = match kind {
                            Kind::Chat => json!({ "content": logprobs::chat_content(&inf, lp) }),
                            Kind::Completion => {
                                let offset = offsets.get(choice).copied().unwrap_or_default();
                                let (v, next) = logprobs::completion(&inf, lp, offset);
                                if let Some(o) = offsets.get_mut(choice) {
                                    *o = next;
                                }
                                v
                            }
                        };
                        let text = if tools.is_some() {
                            None
                        } else {
                            Some(text.as_str())
                        };
                        return Some((
                            vec![(*chunk)(delta(choice, text, false, None, v), None)],
                            (rx, false, offsets),
                        ));
                    }
                    Some(Out::Token { choice, text, .. })
                        if !text.is_empty() && tools.is_none() =>
                    {
                        return Some((
                            vec![(*chunk)(
                                delta(choice, Some(&text), false, None, Value::Null),
                                None,
                            )],
                            (rx, false, offsets),
                        ));
                    }
                    Some(Out::Done {
                        choices,
                        attribution,
                    }) => {
                        // the last finish chunk carries the attribution, as the first one the metadata
                        let mut extra =
                            attribution.map(|a| ("openledger", json!({ "attribution": a })));
                        let mut evs = Vec::new();
                        let last = choices.len().saturating_sub(1);
                        for (i, f) in choices.iter().enumerate() {
                            let mut finish = f.reason.as_str();
                            if let Some(t) = &tools {
                                finish = tool_chunks(&*chunk, i, t, f, &mut evs);
                            }
                            evs.push((*chunk)(
                                delta(i, None, false, Some(finish), Value::Null),
                                if i == last { extra.take() } else { None },
                            ));
                        }
                        if include_usage {
                            // OpenAI's usage chunk has an empty choices list
                            let mut u = (*usage_head).clone();
                            u["usage"] = service::usage(&choices);
                            evs.push(SseEvent::default().data(u.to_string()));
                        }
                        evs.push(SseEvent::default().data("[DONE]"));
                        return Some((evs, (rx, true, offsets)));
                    }
                    Some(Out::Failed(m)) => {
                        let err = json!({"error": {"message": m, "type": "server_error"}});
                        return Some((
                            vec![SseEvent::default().data(err.to_string())],
                            (rx, true, offsets),
                        ));
                    }
                    Some(Out::Token { .. }) => {}
                    None => return None,
                }
            }
        }
    });
    let body = futures::StreamExt::flat_map(body, |evs| {
        futures::stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    let all = futures::StreamExt::chain(futures::stream::iter(first), body);
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// An answer offered tools is held to its end, then sent as its text or as OpenAI streams calls: each
/// call's id and name, then its arguments. Returns the choice's finish reason.
fn tool_chunks(
    chunk: &ChunkFn,
    index: usize,
    tools: &Tools,
    f: &Finished,
    evs: &mut Vec<SseEvent>,
) -> &'static str {
    let (message, finish) = service::chat_message(Some(tools), f);
    if message["content"].is_string() {
        let text_delta = json!({ "content": message["content"] });
        evs.push(chunk(raw_choice(index, text_delta, None), None));
    }
    for (i, c) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut head = c.clone();
        head["index"] = json!(i);
        head["function"]["arguments"] = json!("");
        evs.push(chunk(
            raw_choice(index, json!({ "tool_calls": [head] }), None),
            None,
        ));
        let args = json!({"index": i, "function": {"arguments": c["function"]["arguments"]}});
        evs.push(chunk(
            raw_choice(index, json!({ "tool_calls": [args] }), None),
            None,
        ));
    }
    finish
}

/// Frames one choice (and an extra top-level field) as a chunk event.
type ChunkFn = dyn Fn(Value, Option<(&str, Value)>) -> SseEvent + Send + Sync;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use utoipa::PartialSchema;

    use super::*;

    /// Every field the handlers take is in the document, and nothing else is allowed (a fallback schema
    /// without them would let a fuzzer's extra fields pass as valid).
    #[test]
    fn the_documented_request_schemas_list_every_field() {
        for (k, v) in common_properties().as_object().unwrap() {
            let parsed: Result<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>, _> =
                serde_json::from_value(v.clone());
            if let Err(e) = parsed {
                panic!("{k}: {v} is not a schema utoipa reads: {e}");
            }
        }
        for (schema, prompt) in [
            (ChatRequest::schema(), "messages"),
            (CompletionRequest::schema(), "prompt"),
        ] {
            let v = serde_json::to_value(&schema).unwrap();
            assert_eq!(v["additionalProperties"], json!(false), "{v}");
            for f in [
                "model",
                prompt,
                "response_format",
                "logprobs",
                "logit_bias",
                "user",
                "request_secret",
            ] {
                assert!(v["properties"].get(f).is_some(), "{f} missing: {v}");
            }
        }
        let chat = serde_json::to_value(ChatRequest::schema()).unwrap();
        for f in ["tools", "tool_choice", "parallel_tool_calls"] {
            assert!(chat["properties"].get(f).is_some(), "{f} missing");
        }
    }
}
