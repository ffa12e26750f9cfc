//! OpenAI-compatible inference: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.
//! `model` is the base model's id or a trained adapter's `ft-<job id>`; `stream: true` answers with
//! server-sent events in OpenAI's chunk format. Beyond OpenAI's fields a request may carry `top_k`,
//! `repetition_penalty`, and for pay-first `request_id` (the bytes32 paid to FeeRouter) with an optional
//! `payer`. Every response names its inference (`id`, the `x-openledger-inference-id` header, and an
//! `openledger` object with the payment).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use openledger_chain::Deployment;
use openledger_indexer::query::ChainIndex;
use openledger_model::serve::{
    Event, Finished, GenerateRequest, Priority, SamplingParams, SubmitError,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Json;
use super::types::{parse_address, parse_hash};
use super::{ApiError, ApiResult, Auth, Problem};
use crate::attribution::{self, AttributionError, Gradient, GradientMode, Subject};
use crate::chain::Chain;
use crate::inference::credits::{self, CreditError};
use crate::inference::payment::{self, Paid, PaymentError};
use crate::inference::records::{self, NewInference, RecordError};
use crate::inference::{Inference, ResolveError, Target, adapter_name};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
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
    let inf = engine(&s)?;
    let rows: Vec<(i64, String, time::OffsetDateTime)> = sqlx::query_as(
        "SELECT job_id, owner, created_at FROM trained_models WHERE lower(base_model_hash) = lower($1)
         ORDER BY job_id",
    )
    .bind(&inf.base_hash)
    .fetch_all(&s.pool)
    .await?;
    let mut data = vec![json!({
        "id": inf.base_id, "object": "model", "created": inf.started.unix_timestamp(), "owned_by": "openledger",
    })];
    for (job, owner, created) in rows {
        data.push(json!({
            "id": adapter_name(job), "object": "model", "created": created.unix_timestamp(),
            "owned_by": owner, "parent": inf.base_id,
        }));
    }
    Ok(axum::Json(json!({ "object": "list", "data": data })))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The generation fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    logprobs: Option<Value>,
    request_id: Option<String>,
    payer: Option<String>,
}

/// A chat completion request (OpenAI's fields, plus `top_k`, `repetition_penalty`, `request_id`, `payer`).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// A text completion request.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

// OpenAI's request schemas are large and documented by OpenAI: the OpenAPI document names them as objects.
macro_rules! opaque_schema {
    ($($t:ty),*) => {$(
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .description(Some("See OpenAI's API reference; extra fields: top_k, repetition_penalty, request_id, payer"))
                    .into()
            }
        }
        impl utoipa::ToSchema for $t {}
    )*};
}
opaque_schema!(ChatRequest, CompletionRequest);

/// Which endpoint: chat or text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// OpenAI's chat completion.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference",
    responses((status = 200, description = "A chat.completion, or with stream: true server-sent chat.completion.chunk events", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 402, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json")))]
async fn chat_completions(
    State(s): State<AppState>,
    auth: Option<Auth>,
    Json(req): Json<ChatRequest>,
) -> ApiResult<Response> {
    let sv = Serving::of(&s)?;
    let prompt = chat_prompt(&sv.inf, &req)?;
    let origin = Origin::interactive(auth.map(|a| a.0.address));
    run(sv, origin, req.common, prompt, Kind::Chat).await
}

/// The chat template applied to the messages, tokenized.
fn chat_prompt(inf: &Inference, req: &ChatRequest) -> ApiResult<Vec<u32>> {
    if req.messages.is_empty() {
        return Err(ApiError::BadRequest("messages must not be empty".into()));
    }
    let mut msgs = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer"
        ) {
            return Err(ApiError::BadRequest(format!(
                "unknown message role {:?}",
                m.role
            )));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(x)) => t.push_str(x),
                        _ => {
                            return Err(ApiError::BadRequest(
                                "only text content parts are supported".into(),
                            ));
                        }
                    }
                }
                t
            }
        };
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role.clone()
        };
        msgs.push((role, text));
    }
    let pairs: Vec<(&str, &str)> = msgs.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
    let text = inf.tokenizer.render_chat(&pairs, true).map_err(|e| {
        ApiError::BadRequest(format!("the chat template refused the messages: {e}"))
    })?;
    inf.tokenizer.encode(&text).map_err(ApiError::internal)
}

/// OpenAI's (legacy) text completion.
#[utoipa::path(post, path = "/v1/completions", tag = "inference",
    responses((status = 200, description = "A text_completion, or with stream: true server-sent events", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 402, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json")))]
async fn completions(
    State(s): State<AppState>,
    auth: Option<Auth>,
    Json(req): Json<CompletionRequest>,
) -> ApiResult<Response> {
    let sv = Serving::of(&s)?;
    let prompt = completion_prompt(&sv.inf, &req)?;
    let origin = Origin::interactive(auth.map(|a| a.0.address));
    run(sv, origin, req.common, prompt, Kind::Completion).await
}

fn completion_prompt(inf: &Inference, req: &CompletionRequest) -> ApiResult<Vec<u32>> {
    match &req.prompt {
        Value::String(p) => inf.tokenizer.encode(p).map_err(ApiError::internal),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => inf
            .tokenizer
            .encode(a[0].as_str().unwrap_or_default())
            .map_err(ApiError::internal),
        Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_u64()) => {
            let vocab = inf.tokenizer.vocab_size() as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(t) if t < vocab => Ok(t as u32),
                    _ => Err(ApiError::BadRequest(format!(
                        "token id {v} is outside the vocabulary"
                    ))),
                })
                .collect::<ApiResult<Vec<u32>>>()
        }
        _ => Err(ApiError::BadRequest(
            "prompt must be a string, a list of one string, or a list of token ids".into(),
        )),
    }
}

fn sampling(c: &Common) -> ApiResult<SamplingParams> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::BadRequest(
            "n must be 1 (one choice per request)".into(),
        ));
    }
    if c.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
    {
        return Err(ApiError::BadRequest("logprobs are not supported".into()));
    }
    Ok(SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0),
        top_p: c.top_p.unwrap_or(1.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        seed: c.seed,
    })
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
            PaymentError::Unavailable(m) => ApiError::Unavailable(m),
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

/// What serving a request needs, whether it came over HTTP or from a batch job's input file.
#[derive(Clone)]
pub struct Serving {
    pub pool: PgPool,
    pub index: ChainIndex,
    pub chain: Option<Chain>,
    pub deployment: Deployment,
    pub inf: Arc<Inference>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("inf", &self.inf)
            .finish_non_exhaustive()
    }
}

impl Serving {
    pub fn of(s: &AppState) -> ApiResult<Self> {
        Ok(Serving {
            pool: s.pool.clone(),
            index: s.index.clone(),
            chain: s.chain.clone(),
            deployment: s.deployment.clone(),
            inf: engine(s)?,
        })
    }

    fn chain(&self) -> ApiResult<&Chain> {
        self.chain.as_ref().ok_or_else(|| {
            ApiError::Unavailable("this daemon has no connection to the chain".into())
        })
    }
}

/// Who asks, how urgently, and (for a batch job) which line of which batch.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub caller: Option<Address>,
    pub priority: Priority,
    /// `(job id, line index)`.
    pub batch: Option<(i64, i32)>,
}

impl Origin {
    fn interactive(caller: Option<Address>) -> Self {
        Origin {
            caller,
            priority: Priority::Interactive,
            batch: None,
        }
    }
}

impl Kind {
    /// The endpoints a batch line may name (`url`).
    pub const URLS: [&'static str; 2] = ["/v1/chat/completions", "/v1/completions"];

    pub fn from_url(url: &str) -> Option<Self> {
        match url {
            "/v1/chat/completions" => Some(Kind::Chat),
            "/v1/completions" => Some(Kind::Completion),
            _ => None,
        }
    }
}

/// Serves one request of a batch at batch priority and returns the body an HTTP call would have got
/// (the error's problem otherwise). The same checks, payment and record as an interactive call.
pub async fn execute(
    sv: &Serving,
    origin: Origin,
    kind: Kind,
    body: Value,
) -> Result<(String, Value), ApiError> {
    let bad = |e: serde_json::Error| ApiError::BadRequest(format!("invalid request body: {e}"));
    let (common, prompt) = match kind {
        Kind::Chat => {
            let req: ChatRequest = serde_json::from_value(body).map_err(bad)?;
            let prompt = chat_prompt(&sv.inf, &req)?;
            (req.common, prompt)
        }
        Kind::Completion => {
            let req: CompletionRequest = serde_json::from_value(body).map_err(bad)?;
            let prompt = completion_prompt(&sv.inf, &req)?;
            (req.common, prompt)
        }
    };
    if common.stream {
        return Err(ApiError::BadRequest(
            "stream is not available in a batch".into(),
        ));
    }
    let r = start(sv, origin, common, prompt, kind).await?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(sv.clone(), r.id.clone(), r.attribution, r.rx, out_tx));
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = whole_response(&r.id, &r.model, created, kind, r.meta, out_rx).await?;
    Ok((r.id, body.0))
}

/// A request the engine has started on.
struct Running {
    id: String,
    model: String,
    meta: Value,
    stream: bool,
    include_usage: bool,
    /// A trained adapter's job id and the prompt: what attribution needs once the output is known.
    attribution: Option<(i64, Vec<u32>)>,
    rx: mpsc::UnboundedReceiver<Event>,
}

async fn run(
    sv: Serving,
    origin: Origin,
    c: Common,
    prompt: Vec<u32>,
    kind: Kind,
) -> ApiResult<Response> {
    let r = start(&sv, origin, c, prompt, kind).await?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(sv.clone(), r.id.clone(), r.attribution, r.rx, out_tx));
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = r.id;
    let mut res = if r.stream {
        stream_response(
            id.clone(),
            r.model,
            created,
            kind,
            r.include_usage,
            r.meta,
            out_rx,
        )
        .into_response()
    } else {
        whole_response(&id, &r.model, created, kind, r.meta, out_rx)
            .await?
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-openledger-inference-id", v);
    }
    Ok(res)
}

/// Checks the request, takes its payment, records it and hands it to the engine; returns once the engine
/// has started it (an adapter that cannot load fails here, before any response is sent).
async fn start(
    sv: &Serving,
    origin: Origin,
    mut c: Common,
    prompt: Vec<u32>,
    kind: Kind,
) -> ApiResult<Running> {
    let inf = &sv.inf;
    let params = sampling(&c)?;
    let target = inf
        .resolve(&sv.pool, &c.model, sv.deployment.chain_id)
        .await?;
    let room = inf.engine.context().saturating_sub(prompt.len());
    let max_tokens = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(inf.cfg.default_max_tokens.min(room).max(1));
    // refused before any payment is taken
    inf.engine
        .check(prompt.len(), max_tokens, &params)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stop = match c.stop.take() {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(ApiError::BadRequest("at most 4 stop sequences".into())),
    };
    // a full queue refuses before the payment is taken (submit checks again: a race still frees a
    // pay-first payment and refunds credit, as any failure does)
    if inf.engine.in_flight() >= inf.engine.config().max_queue {
        return Err(ApiError::Overloaded(1));
    }
    // pay (or find the payment) before anything is generated
    let id = records::new_id();
    let charge = charge(sv, origin, &target, &c, prompt.len() + max_tokens, &id).await?;
    let (job_id, model_id, adapter) = match &target {
        Target::Base => (None, None, None),
        Target::Adapter {
            job_id,
            adapter,
            model_id,
        } => (Some(*job_id), *model_id, Some(adapter.clone())),
    };
    let (mode, paid, price) = match &charge {
        Some(c) => (c.mode, Some(&c.paid), Some(c.price)),
        None => ("free", None, None),
    };
    records::insert(
        &sv.pool,
        &NewInference {
            id: &id,
            model: &c.model,
            kind: if kind == Kind::Chat {
                "chat"
            } else {
                "completion"
            },
            base_model_hash: &inf.base_hash,
            job_id,
            adapter_hash: adapter.as_ref().and_then(|a| a.sha256.as_deref()),
            caller: origin.caller,
            payment_mode: mode,
            chain_id: paid.map(|_| sv.deployment.chain_id as i64),
            model_id,
            paid,
            price_per_1k: price,
            batch: origin.batch,
            prompt_tokens: prompt.len(),
            max_tokens,
        },
    )
    .await?;

    let attribution = job_id.map(|j| (j, prompt.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let submitted = inf.engine.submit(GenerateRequest {
        prompt,
        adapter,
        sampling: params,
        max_tokens,
        stop,
        ignore_eos: false,
        priority: origin.priority,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    });
    if let Err(e) = submitted {
        let _ = records::ended(&sv.pool, &id, "failed", Some(&e.to_string())).await;
        return Err(match e {
            SubmitError::Busy(_) => ApiError::Overloaded(1),
            SubmitError::Invalid(m) => ApiError::BadRequest(m.to_string()),
            SubmitError::Stopped => {
                ApiError::Unavailable("the inference engine has stopped".into())
            }
        });
    }
    // the first event says whether it runs at all (an adapter that cannot load fails here)
    match rx.recv().await {
        Some(Event::Started) => {}
        Some(Event::Failed(m)) => {
            let _ = records::ended(&sv.pool, &id, "failed", Some(&m)).await;
            return Err(ApiError::Unavailable(m));
        }
        _ => {
            let _ = records::ended(
                &sv.pool,
                &id,
                "failed",
                Some("the engine dropped the request"),
            )
            .await;
            return Err(ApiError::Internal("the engine dropped the request".into()));
        }
    }
    let meta = json!({
        "inference_id": id,
        "payment": paid.map(|p| payment_json(mode, p)).unwrap_or(json!({"mode": "free"})),
    });
    Ok(Running {
        id,
        model: c.model,
        meta,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        attribution,
        rx,
    })
}

/// How an inference is paid.
struct Charge {
    mode: &'static str,
    paid: Paid,
    price: U256,
}

/// Finds (pay-first) or makes (sponsored) the payment for `tokens` (prompt + max_tokens) of `target`;
/// `None` for the base model, which is free.
async fn charge(
    sv: &Serving,
    origin: Origin,
    target: &Target,
    c: &Common,
    tokens: usize,
    id: &str,
) -> ApiResult<Option<Charge>> {
    let inf = &sv.inf;
    let Target::Adapter {
        job_id,
        adapter,
        model_id,
    } = target
    else {
        if c.request_id.is_some() {
            return Err(ApiError::BadRequest(
                "the base model is free; request_id is only for adapters".into(),
            ));
        }
        return Ok(None);
    };
    let name = &adapter.id;
    let model_id = model_id.ok_or_else(|| {
        ApiError::Conflict(format!(
            "{name} is not registered on this chain yet, so it cannot be paid for"
        ))
    })?;
    let price = payment::price_per_1k(&sv.pool, *job_id, inf.cfg.default_price_per_1k).await?;
    let need = payment::required(price, tokens);
    let (mode, paid) = match &c.request_id {
        Some(rid) => {
            let rid: B256 = parse_hash("request_id", rid)?;
            let payer = c
                .payer
                .as_deref()
                .map(|p| parse_address("payer", p))
                .transpose()?;
            let wait = inf.cfg.payment_wait;
            let p = payment::find_payment(&sv.index, rid, model_id, payer, need, wait).await?;
            ("pay_first", p)
        }
        None => {
            // a batch line that an interrupted run already paid for reuses that payment
            let earlier = match origin.batch {
                Some((job, line)) => {
                    records::unused_sponsored_payment(&sv.pool, job, line, model_id, need).await?
                }
                None => None,
            };
            let p = match (earlier, origin.caller) {
                // the earlier attempt's credit charge was refunded when it failed: charge this one
                (Some(p), Some(caller)) if !inf.cfg.sponsor => {
                    credits::charge(&sv.pool, caller, need, id).await?;
                    p
                }
                (Some(p), _) => p,
                (None, _) if inf.cfg.sponsor => {
                    inf.sponsor
                        .pay(sv.chain()?, &sv.deployment, model_id, need)
                        .await?
                }
                (None, Some(caller)) => {
                    match credits::charge(&sv.pool, caller, need, id).await {
                        Ok(left) => {
                            tracing::info!(inference = %id, %caller, charged = %need, %left, "inference credit");
                        }
                        Err(CreditError::Insufficient { balance, .. }) => {
                            return Err(ApiError::PaymentRequired(format!(
                                "{name} costs {need} wei of OPEN for this request and your inference credit \
                                 is {balance} wei: {}, or ask the operator for credit",
                                pay_hint(model_id, need)
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let paid = match sv.chain() {
                        Ok(chain) => inf
                            .sponsor
                            .pay(chain, &sv.deployment, model_id, need)
                            .await
                            .map_err(ApiError::from),
                        Err(e) => Err(e),
                    };
                    match paid {
                        Ok(p) => p,
                        Err(e) => {
                            credits::refund(&sv.pool, caller, need, id).await?;
                            return Err(e);
                        }
                    }
                }
                (None, None) => {
                    return Err(ApiError::PaymentRequired(format!(
                        "{name} costs {need} wei of OPEN for this request: {} (or sign in with inference credit)",
                        pay_hint(model_id, need)
                    )));
                }
            };
            tracing::info!(inference = %id, tx = %p.tx_hash, amount = %p.amount, "sponsored payment");
            ("sponsored", p)
        }
    };
    Ok(Some(Charge { mode, paid, price }))
}

/// How to pay for a request yourself, for 402 messages.
fn pay_hint(model_id: U256, need: U256) -> String {
    format!(
        "pay FeeRouter.payInference({model_id}, <fresh bytes32 request id>, {need}) and send that request_id"
    )
}

fn payment_json(mode: &str, p: &Paid) -> Value {
    json!({
        "mode": mode, "payer": format!("{:#x}", p.payer), "request_id": format!("{:#x}", p.request_id),
        "amount": p.amount.to_string(), "tx_hash": format!("{:#x}", p.tx_hash),
    })
}

/// An engine event and, with `Done`, the inference's attribution (`openledger.attribution`).
type Out = (Event, Option<Value>);

/// Forwards the engine's events to the HTTP side and records the outcome, whether or not the client stays:
/// a finished inference of a trained adapter is attributed first, and its record is written in the
/// transaction that marks it succeeded.
async fn pump(
    sv: Serving,
    id: String,
    attribution: Option<(i64, Vec<u32>)>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    out: mpsc::UnboundedSender<Out>,
) {
    let pool = &sv.pool;
    while let Some(e) = rx.recv().await {
        let mut att = None;
        let r = match (&e, &attribution) {
            (Event::Done(f), Some((job, prompt))) => {
                attribute_and_record(&sv, &id, *job, prompt, f)
                    .await
                    .map(|v| att = Some(v))
            }
            (Event::Done(f), None) => records::succeeded(pool, &id, f).await,
            (Event::Failed(m), _) => records::ended(pool, &id, "failed", Some(m)).await,
            _ => Ok(()),
        };
        if let Err(err) = r {
            tracing::error!(inference = %id, error = %err, "recording the inference");
        }
        let last = matches!(e, Event::Done(_) | Event::Failed(_));
        if out.send((e, att)).is_err() {
            // dropping `rx` makes the engine drop the sequence at its next token
            if let Err(err) =
                records::ended(pool, &id, "cancelled", Some("the client went away")).await
            {
                tracing::error!(inference = %id, error = %err, "recording the inference");
            }
            tracing::info!(inference = %id, "client went away; sequence dropped");
            return;
        }
        if last {
            return;
        }
    }
}

/// Attributes a finished inference (its gradient part now, later or never, as configured; a gradient
/// failure defers it to the queued task) and records both in one transaction; returns what the response
/// carries.
async fn attribute_and_record(
    sv: &Serving,
    id: &str,
    job: i64,
    prompt: &[u32],
    f: &Finished,
) -> Result<Value, sqlx::Error> {
    let a = &sv.inf.attribution;
    let subject = Subject {
        inference_id: id,
        job_id: job,
        prompt,
        output: &f.tokens,
    };
    let mode = match a.cfg.gradient {
        GradientMode::Sync => Gradient::Run,
        GradientMode::Queued => Gradient::Defer,
        GradientMode::Off => Gradient::Skip,
    };
    let mut outcome = a.attribute(&sv.pool, &subject, mode).await;
    if let Err(AttributionError::Gradient(m)) = &outcome {
        tracing::warn!(inference = %id, error = %m, "gradient attribution failed; queued for a retry");
        outcome = a.attribute(&sv.pool, &subject, Gradient::Defer).await;
    }
    if let Err(e) = &outcome {
        tracing::warn!(inference = %id, error = %e, "inference flagged: it could not be attributed");
    }
    let mut tx = sv.pool.begin().await?;
    records::succeeded(&mut *tx, id, f).await?;
    attribution::store::save(&mut tx, id, job, prompt, &outcome).await?;
    tx.commit().await?;
    if outcome.as_ref().is_ok_and(|r| r.pending) {
        a.wake();
    }
    Ok(match outcome {
        Ok(r) => r.response(),
        Err(e) => json!({ "status": "flagged", "error": e.to_string() }),
    })
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.tokens.len(),
        "total_tokens": f.prompt_tokens + f.tokens.len(),
    })
}

async fn whole_response(
    id: &str,
    model: &str,
    created: i64,
    kind: Kind,
    mut meta: Value,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> ApiResult<axum::Json<Value>> {
    loop {
        match rx.recv().await {
            Some((Event::Done(f), att)) => {
                if let Some(a) = att {
                    meta["attribution"] = a;
                }
                let choice = match kind {
                    Kind::Chat => json!({
                        "index": 0, "message": {"role": "assistant", "content": f.text},
                        "finish_reason": f.reason.as_str(), "logprobs": null,
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": f.text, "finish_reason": f.reason.as_str(), "logprobs": null,
                    }),
                };
                return Ok(axum::Json(json!({
                    "id": id,
                    "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": created, "model": model, "choices": [choice], "usage": usage(&f),
                    "openledger": meta,
                })));
            }
            Some((Event::Failed(m), _)) => return Err(ApiError::Unavailable(m)),
            Some(_) => {}
            None => return Err(ApiError::Internal("the engine dropped the request".into())),
        }
    }
}

fn stream_response(
    id: String,
    model: String,
    created: i64,
    kind: Kind,
    include_usage: bool,
    meta: Value,
    rx: mpsc::UnboundedReceiver<Out>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
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
    let delta = move |text: Option<&str>, role: bool, finish: Option<&str>| match kind {
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
                            u["usage"] = usage(&f);
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
