//! The inference service: one request from its checks to its record. `start` checks it, takes its payment
//! (pay-first, credit or sponsored), records it and hands it to the engine, then follows the engine's
//! events on a task of its own (`pump`) that records the outcome whether or not the caller stays, and
//! attributes a finished inference of a trained adapter in the transaction that marks it succeeded.
//! `collect` assembles OpenAI's whole-response body; the HTTP layer streams the events instead when asked.

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use openledger_chain::Deployment;
use openledger_indexer::query::ChainIndex;
use openledger_model::serve::{
    Event, Finished, GenerateRequest, Priority, SamplingParams, SubmitError, TokenLogprobs,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use super::credits::{self, CreditError};
use super::error::InferenceError;
use super::logprobs;
use super::payment::{self, Paid, PaymentError};
use super::records::{self, NewInference};
use super::request::{Common, Kind, Prepared};
use super::tools::Tools;
use super::{Inference, Target};
use crate::attribution::{self, AttributionError, Gradient, GradientMode, Subject};
use crate::chain::{Chain, ChainError};
use crate::common;

/// What serving a request needs, whether it came over HTTP or from a batch job's input file.
#[derive(Clone)]
pub struct Serving {
    pub pool: PgPool,
    pub index: ChainIndex,
    pub chain: Option<Chain>,
    pub deployment: Deployment,
    pub inf: Arc<Inference>,
    /// Moves when the indexer commits progress (`notify`): pay-first requests wait on it.
    pub index_progress: watch::Receiver<u64>,
}

impl Serving {
    pub fn new(
        pool: PgPool,
        index: ChainIndex,
        chain: Option<Chain>,
        deployment: Deployment,
        inf: Arc<Inference>,
        index_progress: watch::Receiver<u64>,
    ) -> Self {
        Serving {
            pool,
            index,
            chain,
            deployment,
            inf,
            index_progress,
        }
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("inf", &self.inf)
            .finish_non_exhaustive()
    }
}

impl Serving {
    fn chain(&self) -> Result<&Chain, ChainError> {
        self.chain.as_ref().ok_or(ChainError::NotConnected)
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
    /// A call over the API, signed in or not.
    pub fn interactive(caller: Option<Address>) -> Self {
        Origin {
            caller,
            priority: Priority::Interactive,
            batch: None,
        }
    }
}

/// What a started request passes on: each choice's tokens as the engine makes them, then the whole
/// answer once every choice has finished and the inference is recorded (a failure of any choice fails it).
#[derive(Debug)]
pub enum Out {
    /// A token of choice `choice` (its text may be empty: held back for stop sequences).
    Token {
        choice: usize,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// Every choice, in index order, and the inference's attribution (`openledger.attribution`).
    Done {
        choices: Vec<Finished>,
        attribution: Option<Value>,
    },
    Failed(String),
}

/// A choice's engine event.
type ChoiceEvent = (usize, Event);

/// A request the engine has started on.
#[derive(Debug)]
pub struct Running {
    pub id: String,
    pub model: String,
    pub kind: Kind,
    /// The response's `openledger` object: the inference id and its payment.
    pub meta: Value,
    pub stream: bool,
    pub include_usage: bool,
    /// Unix seconds, OpenAI's `created`.
    pub created: i64,
    /// How many choices the answer has (`n`).
    pub choices: usize,
    /// The engine's events, the end recorded before it arrives here.
    pub events: mpsc::UnboundedReceiver<Out>,
    /// The request asked for log-probabilities (each token event carries them).
    pub logprobs: bool,
    /// Renders token ids (log-probabilities name tokens by their text).
    pub inf: Arc<Inference>,
    /// The tools offered: the answer is read for calls (`tool_calls`).
    pub tools: Option<Tools>,
}

/// Serves one request of a batch and returns its inference id and the body an HTTP call would have got.
/// The same checks, payment and record as an interactive call.
pub async fn execute(
    sv: &Serving,
    origin: Origin,
    kind: Kind,
    body: Value,
) -> Result<(String, Value), InferenceError> {
    let req = Prepared::from_body(&sv.inf, kind, body)?;
    if req.common.stream {
        return Err(InferenceError::Invalid(
            "stream is not available in a batch".into(),
        ));
    }
    let r = start(sv, origin, req).await?;
    let id = r.id.clone();
    Ok((id, collect(r).await?))
}

/// Checks the request, takes its payment, records it and hands it to the engine; returns once the engine
/// has started it (an adapter that cannot load fails here, before any response is sent).
pub async fn start(sv: &Serving, origin: Origin, req: Prepared) -> Result<Running, InferenceError> {
    let Prepared {
        kind,
        common: mut c,
        prompt,
        mut constraint,
        tools,
    } = req;
    let admitted = admit(sv, kind, &mut c, prompt.len()).await?;
    let n = admitted.choices;
    // pay (or find the payment) before anything is generated: n choices are paid as n completions
    let id = records::new_id();
    let pay = Pay {
        origin,
        request_id: c.request_id.as_deref(),
        request_secret: c.request_secret.as_deref(),
        payer: c.payer.as_deref(),
        tokens: n * (prompt.len() + admitted.max_tokens),
        id: &id,
    };
    let charge = charge(sv, &admitted.target, pay).await?;
    let (job_id, model_id, adapter) = match &admitted.target {
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
            kind: kind.record_name(),
            base_model_hash: &sv.inf.base_hash,
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
            max_tokens: admitted.max_tokens,
            choices: n,
            lease: origin
                .batch
                .is_none()
                .then(|| (sv.inf.lease_owner.as_str(), sv.inf.cfg.lease)),
        },
    )
    .await?;
    let attribution = job_id.map(|j| (j, prompt.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let logprobs = admitted.params.logprobs.is_some();
    // one sequence per choice, each with its own grammar state and (when seeded) its own seed
    let reqs: Vec<GenerateRequest> = (0..n)
        .map(|i| {
            let tx = tx.clone();
            let mut sampling = admitted.params.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            GenerateRequest {
                prompt: prompt.clone(),
                adapter: adapter.clone(),
                sampling,
                max_tokens: admitted.max_tokens,
                stop: admitted.stop.clone(),
                ignore_eos: false,
                // the last choice takes the compiled grammar, the others a copy of it
                constraint: if i + 1 == n {
                    constraint.take()
                } else {
                    constraint.as_ref().map(|c| c.fork())
                },
                priority: origin.priority,
                sink: Box::new(move |e| tx.send((i, e)).is_ok()),
            }
        })
        .collect();
    drop(tx);
    if let Some(user) = &c.user {
        tracing::info!(inference = %id, user = %user, "end user");
    }
    let (rx, early) = submit(sv, &id, reqs, rx).await?;
    let meta = json!({
        "inference_id": id,
        "payment": paid.map(|p| payment_json(mode, p)).unwrap_or(json!({"mode": "free"})),
    });
    let (out_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(pump(
        sv.clone(),
        id.clone(),
        attribution,
        (n, early, rx),
        out_tx,
    ));
    Ok(Running {
        id,
        model: c.model,
        kind,
        choices: n,
        meta,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        created: time::OffsetDateTime::now_utc().unix_timestamp(),
        events,
        logprobs,
        inf: sv.inf.clone(),
        tools,
    })
}

/// A request that passed every check made before payment.
struct Admitted {
    params: SamplingParams,
    target: Target,
    max_tokens: usize,
    stop: Vec<String>,
    /// `n`: how many sequences answer it.
    choices: usize,
}

/// The checks made before any payment is taken: sampling settings and `n`, the model, the length against
/// the context, the stop sequences, and room in the engine's queue for every choice.
async fn admit(
    sv: &Serving,
    kind: Kind,
    c: &mut Common,
    prompt_len: usize,
) -> Result<Admitted, InferenceError> {
    let inf = &sv.inf;
    let params = c.sampling(kind, inf.engine.vocab_size())?;
    let choices = c.choices(inf.engine.config().max_queue)?;
    let target = inf
        .resolve(&sv.pool, &c.model, sv.deployment.chain_id)
        .await?;
    let room = inf.engine.context().saturating_sub(prompt_len);
    let max_tokens = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(inf.cfg.default_max_tokens.min(room).max(1));
    inf.engine
        .check(prompt_len, max_tokens, &params)
        .map_err(|e| InferenceError::Invalid(e.to_string()))?;
    let stop = c.take_stop()?;
    // a full queue refuses before the payment is taken (submit checks again: a race still frees a
    // pay-first payment and refunds credit, as any failure does)
    if inf.engine.in_flight() + choices > inf.engine.config().max_queue {
        return Err(InferenceError::Overloaded);
    }
    Ok(Admitted {
        params,
        target,
        max_tokens,
        stop,
        choices,
    })
}

/// Hands a recorded request's sequences (one per choice, their sinks feeding `rx`) to the engine and waits
/// until each has started, which says whether it runs at all; a refusal or failure is recorded on the
/// inference (and dropping `rx` then drops the sequences already started). Returns the events that came
/// while waiting (an early choice's tokens), for the pump to pass on first.
async fn submit(
    sv: &Serving,
    id: &str,
    reqs: Vec<GenerateRequest>,
    mut rx: mpsc::UnboundedReceiver<ChoiceEvent>,
) -> Result<(mpsc::UnboundedReceiver<ChoiceEvent>, Vec<ChoiceEvent>), InferenceError> {
    let n = reqs.len();
    for req in reqs {
        if let Err(e) = sv.inf.engine.submit(req) {
            let _ = records::ended(&sv.pool, id, "failed", Some(&e.to_string())).await;
            return Err(match e {
                SubmitError::Busy(_) => InferenceError::Overloaded,
                SubmitError::Invalid(m) => InferenceError::Invalid(m.to_string()),
                SubmitError::Stopped => {
                    InferenceError::Unavailable("the inference engine has stopped".into())
                }
            });
        }
    }
    // an adapter that cannot load fails here
    let (mut started, mut early) = (0, Vec::new());
    while started < n {
        match rx.recv().await {
            Some((_, Event::Started)) => started += 1,
            Some((_, Event::Failed(m))) => {
                let _ = records::ended(&sv.pool, id, "failed", Some(&m)).await;
                return Err(InferenceError::Unavailable(m));
            }
            Some(e) => early.push(e),
            None => {
                let m = "the engine dropped the request";
                let _ = records::ended(&sv.pool, id, "failed", Some(m)).await;
                return Err(InferenceError::Internal(m.into()));
            }
        }
    }
    Ok((rx, early))
}

/// How an inference is paid.
struct Charge {
    mode: &'static str,
    paid: Paid,
    price: U256,
}

/// What paying for one request goes by.
struct Pay<'a> {
    origin: Origin,
    /// Pay-first: the request's `request_id`, `request_secret` and `payer`.
    request_id: Option<&'a str>,
    request_secret: Option<&'a str>,
    payer: Option<&'a str>,
    /// Prompt + max_tokens: what the price covers.
    tokens: usize,
    /// The inference's id (credit charges name it).
    id: &'a str,
}

/// Finds (pay-first) or makes (sponsored) the payment for `pay.tokens` of `target`; `None` for the base
/// model, which is free.
async fn charge(
    sv: &Serving,
    target: &Target,
    pay: Pay<'_>,
) -> Result<Option<Charge>, InferenceError> {
    let inf = &sv.inf;
    let Target::Adapter {
        job_id,
        adapter,
        model_id,
    } = target
    else {
        if pay.request_id.is_some() || pay.request_secret.is_some() {
            return Err(InferenceError::Invalid(
                "the base model is free; request_id and request_secret are only for adapters"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let name = &adapter.id;
    let model_id = model_id.ok_or_else(|| {
        InferenceError::NotPayable(format!(
            "{name} is not registered on this chain yet, so it cannot be paid for"
        ))
    })?;
    if let Some((request_id, spender)) = pay_first(&pay)? {
        let req = payment::PayFirst {
            request_id,
            spender,
            model_id,
            job_id: *job_id,
            tokens: pay.tokens,
            default_price: inf.cfg.default_price_per_1k,
            confirmations: inf.cfg.payment_confirmations,
        };
        let (paid, price) = payment::find_payment(
            &sv.index,
            &sv.pool,
            req,
            inf.cfg.payment_wait,
            sv.index_progress.clone(),
        )
        .await?;
        return Ok(Some(Charge {
            mode: "pay_first",
            paid,
            price,
        }));
    }
    let price = payment::price_per_1k(&sv.pool, *job_id, inf.cfg.default_price_per_1k).await?;
    let need = payment::required(price, pay.tokens);
    let paid = sponsor(sv, &pay, name, model_id, price, need).await?;
    tracing::info!(inference = %pay.id, tx = %paid.tx_hash, amount = %paid.amount, "sponsored payment");
    Ok(Some(Charge {
        mode: "sponsored",
        paid,
        price,
    }))
}

/// A pay-first request's id and who may spend its payment: the keccak256 of `request_secret` (whoever knows
/// the secret), or `request_id` for a caller signed in as its payer. `None` without either.
fn pay_first(pay: &Pay<'_>) -> Result<Option<(B256, payment::Spender)>, InferenceError> {
    let payer = pay
        .payer
        .map(|p| common::parse_address("payer", p).map_err(InferenceError::Invalid))
        .transpose()?;
    let named = pay
        .request_id
        .map(|r| common::parse_hash("request_id", r).map_err(InferenceError::Invalid))
        .transpose()?;
    if let Some(secret) = pay.request_secret {
        let secret =
            common::parse_hash("request_secret", secret).map_err(InferenceError::Invalid)?;
        let rid = alloy::primitives::keccak256(secret);
        if named.is_some_and(|n| n != rid) {
            return Err(InferenceError::Invalid(format!(
                "request_id is not keccak256(request_secret) ({rid:#x}); send one or the other"
            )));
        }
        return Ok(Some((rid, payment::Spender::Secret(payer))));
    }
    let Some(rid) = named else {
        if payer.is_some() {
            return Err(InferenceError::Invalid(
                "payer names who paid a pay-first request: send it with request_secret or request_id".into(),
            ));
        }
        return Ok(None);
    };
    let Some(caller) = pay.origin.caller else {
        return Err(PaymentError::SignIn(format!(
            "request {rid:#x} is served only to its payer: sign in as the payer (a session or API key) \
             or pay under keccak256(secret) and send request_secret instead"
        ))
        .into());
    };
    if payer.is_some_and(|p| p != caller) {
        return Err(PaymentError::NotPayer(format!(
            "signed in as {caller:#x}, not as the payer named: a request_id is served only to its payer"
        ))
        .into());
    }
    Ok(Some((rid, payment::Spender::Payer(caller))))
}

/// A request without its own payment: the daemon pays from its key, against the caller's inference credit
/// unless it sponsors everything (`cfg.sponsor`); a batch line an interrupted run already paid for reuses
/// that payment.
async fn sponsor(
    sv: &Serving,
    pay: &Pay<'_>,
    name: &str,
    model_id: U256,
    price: U256,
    need: U256,
) -> Result<Paid, InferenceError> {
    let inf = &sv.inf;
    let id = pay.id;
    let earlier = match pay.origin.batch {
        Some((job, line)) => {
            records::unused_sponsored_payment(&sv.pool, job, line, model_id, need).await?
        }
        None => None,
    };
    if earlier.is_none()
        && let Some(caller) = pay.origin.caller
        && let Some(p) = unused_payment(sv, caller, name, model_id, need, id).await?
    {
        return Ok(p);
    }
    match (earlier, pay.origin.caller) {
        // the earlier attempt's credit charge was refunded when it failed: charge this one
        (Some(p), Some(caller)) if !inf.cfg.sponsor => {
            credits::charge(&sv.pool, caller, need, id).await?;
            Ok(p)
        }
        (Some(p), _) => Ok(p),
        // the daemon's money is spent for someone it can name and cap
        (None, None) if inf.cfg.sponsor => Err(PaymentError::SignIn(format!(
            "this daemon sponsors {name} only for signed-in callers (a wallet session or an API key: \
             Authorization: Bearer ...); sign in, or {}",
            pay_hint(model_id, need)
        ))
        .into()),
        (None, Some(caller)) if inf.cfg.sponsor => {
            // a developer who prices its model above the default cannot have the daemon pay that price
            if price > inf.cfg.default_price_per_1k {
                return Err(InferenceError::PaymentRequired(format!(
                    "{name} costs {price} wei per 1k tokens, more than the {} this daemon sponsors: {}",
                    inf.cfg.default_price_per_1k,
                    pay_hint(model_id, need)
                )));
            }
            let order = payment::Order {
                caller: Some(caller),
                model_id,
                amount: need,
                funding: payment::Funding::Sponsored(&inf.cfg.sponsor_limits),
                inference: id,
            };
            Ok(inf
                .sponsor
                .pay(sv.chain()?, &sv.deployment, &sv.pool, order)
                .await?)
        }
        (None, Some(caller)) => {
            match credits::charge(&sv.pool, caller, need, id).await {
                Ok(left) => {
                    tracing::info!(inference = %id, %caller, charged = %need, %left, "inference credit");
                }
                Err(CreditError::Insufficient { balance, .. }) => {
                    return Err(InferenceError::PaymentRequired(format!(
                        "{name} costs {need} wei of OPEN for this request and your inference credit \
                         is {balance} wei: {}, or ask the operator for credit",
                        pay_hint(model_id, need)
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            let order = payment::Order {
                caller: Some(caller),
                model_id,
                amount: need,
                funding: payment::Funding::Credit,
                inference: id,
            };
            let paid = match sv.chain() {
                Ok(chain) => inf
                    .sponsor
                    .pay(chain, &sv.deployment, &sv.pool, order)
                    .await
                    .map_err(InferenceError::from),
                Err(e) => Err(e.into()),
            };
            // a failed payment gave the charge back; one still being mined keeps it (it is used by the
            // caller's next request once mined, or refunded if it never is)
            if !matches!(
                &paid,
                Ok(_) | Err(InferenceError::Payment(PaymentError::Pending(_)))
            ) {
                credits::refund_inference(&sv.pool, id).await?;
            }
            paid
        }
        (None, None) => Err(InferenceError::PaymentRequired(format!(
            "{name} costs {need} wei of OPEN for this request: {} (or sign in with inference credit)",
            pay_hint(model_id, need)
        ))),
    }
}

/// A payment the daemon made for `caller`'s earlier request to the model that was mined after that request
/// gave up on it: this request uses it (nothing is charged again). `PaymentError::Pending` while such a
/// payment is still being mined: paying again would pay twice.
async fn unused_payment(
    sv: &Serving,
    caller: alloy::primitives::Address,
    name: &str,
    model_id: U256,
    need: U256,
    id: &str,
) -> Result<Option<Paid>, InferenceError> {
    let Some(me) = sv.chain.as_ref().and_then(|c| c.signer()) else {
        return Ok(None);
    };
    let take = || payment::take_unused(&sv.pool, me, caller, (model_id, need), id);
    if let Some(p) = take().await? {
        tracing::info!(inference = %id, request = %p.request_id, "an earlier sponsored payment, mined late, pays for this request");
        return Ok(Some(p));
    }
    let Some((rid, tx)) = payment::sending_for(&sv.pool, caller, model_id, need).await? else {
        return Ok(None);
    };
    payment::reconcile_one(&sv.pool, &sv.index, me, rid).await?;
    if let Some(p) = take().await? {
        return Ok(Some(p));
    }
    Err(PaymentError::Pending(format!(
        "the payment this daemon made for your earlier request to {name} ({}) is sent but not mined yet; \
         nothing more is charged: send the request again in a few seconds and it uses that payment once mined",
        tx.unwrap_or_else(|| format!("request id {rid:#x}"))
    ))
    .into())
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

/// Forwards the engine's events to the caller and records the outcome, whether or not the caller stays: once
/// every choice has finished, a trained adapter's inference is attributed and recorded in one transaction
/// with its choices; the first failure of any choice fails the inference (and drops the other sequences).
async fn pump(
    sv: Serving,
    id: String,
    attribution: Option<(i64, Vec<u32>)>,
    (n, early, mut rx): (
        usize,
        Vec<ChoiceEvent>,
        mpsc::UnboundedReceiver<ChoiceEvent>,
    ),
    out: mpsc::UnboundedSender<Out>,
) {
    let pool = &sv.pool;
    let mut finished: Vec<Option<Finished>> = (0..n).map(|_| None).collect();
    let mut early = early.into_iter();
    loop {
        let next = match early.next() {
            Some(e) => Some(e),
            None => rx.recv().await,
        };
        let o = match next {
            Some((i, Event::Token { text, logprobs, .. })) => Out::Token {
                choice: i,
                text,
                logprobs,
            },
            Some((i, Event::Done(f))) => {
                if let Some(slot) = finished.get_mut(i) {
                    *slot = Some(f);
                }
                if finished.iter().any(Option::is_none) {
                    continue;
                }
                let choices: Vec<Finished> = finished.drain(..).flatten().collect();
                record_answer(&sv, &id, attribution.as_ref(), choices).await
            }
            Some((_, Event::Failed(m))) => {
                if let Err(err) = records::ended(pool, &id, "failed", Some(&m)).await {
                    tracing::error!(inference = %id, error = %err, "recording the inference");
                }
                Out::Failed(m)
            }
            Some((_, Event::Started)) => continue,
            None => {
                let m = "the engine dropped the request";
                if let Err(err) = records::ended(pool, &id, "failed", Some(m)).await {
                    tracing::error!(inference = %id, error = %err, "recording the inference");
                }
                Out::Failed(m.into())
            }
        };
        let last = matches!(o, Out::Done { .. } | Out::Failed(_));
        if out.send(o).is_err() {
            // dropping `rx` makes the engine drop the sequences at their next token
            if let Err(err) =
                records::ended(pool, &id, "cancelled", Some("the client went away")).await
            {
                tracing::error!(inference = %id, error = %err, "recording the inference");
            }
            tracing::info!(inference = %id, "client went away; sequences dropped");
            return;
        }
        if last {
            return;
        }
    }
}

/// Records a finished answer (attributed first, for a trained adapter) and returns what the caller gets.
/// An answer whose record cannot be written is not delivered (it would be served and not recorded): the
/// caller gets a failure and the row fails (here, or by its lease once the database is back), which frees
/// a pay-first payment and refunds a credit charge.
async fn record_answer(
    sv: &Serving,
    id: &str,
    attribution: Option<&(i64, Vec<u32>)>,
    choices: Vec<Finished>,
) -> Out {
    let r = match attribution {
        Some((job, prompt)) => attribute_and_record(sv, id, *job, prompt, &choices)
            .await
            .map(Some),
        None => record(sv, id, &choices).await.map(|()| None),
    };
    match r {
        Ok(attribution) => Out::Done {
            choices,
            attribution,
        },
        Err(err) => {
            tracing::error!(inference = %id, error = %err, "recording the answer; not delivering it");
            let why = "the answer could not be recorded";
            if let Err(err) = records::ended(&sv.pool, id, "failed", Some(why)).await {
                tracing::warn!(inference = %id, error = %err, "the lease will fail it");
            }
            Out::Failed(format!(
                "{why} (the database is unavailable): send the request again; its payment is not used up"
            ))
        }
    }
}

/// Records the answer of an inference nothing is attributed for (the base model), in one transaction.
async fn record(sv: &Serving, id: &str, choices: &[Finished]) -> Result<(), sqlx::Error> {
    let mut tx = sv.pool.begin().await?;
    records::succeeded(&mut tx, id, choices).await?;
    tx.commit().await
}

/// Attributes a finished inference, every choice (its gradient part now, later or never, as configured; a
/// gradient failure defers it to the queued task), and records both in one transaction; returns what the
/// response carries.
async fn attribute_and_record(
    sv: &Serving,
    id: &str,
    job: i64,
    prompt: &[u32],
    choices: &[Finished],
) -> Result<Value, sqlx::Error> {
    let a = &sv.inf.attribution;
    let outputs: Vec<&[u32]> = choices.iter().map(|f| f.tokens.as_slice()).collect();
    let subject = Subject {
        inference_id: id,
        job_id: job,
        prompt,
        outputs: &outputs,
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
    records::succeeded(&mut tx, id, choices).await?;
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

/// A finished chat answer as OpenAI's assistant message, and its finish reason: the calls it makes, when
/// tools were offered and it makes any (`finish_reason: "tool_calls"`).
pub fn chat_message(tools: Option<&Tools>, f: &Finished) -> (Value, &'static str) {
    let reason = f.reason.as_str();
    if let Some(t) = tools {
        let (text, calls) = t.parse(&f.text);
        if !calls.is_empty() {
            let calls: Vec<Value> = calls.iter().map(|c| c.json(None)).collect();
            let finish = if reason == "stop" {
                "tool_calls"
            } else {
                reason
            };
            return (
                json!({"role": "assistant", "content": text, "tool_calls": calls}),
                finish,
            );
        }
    }
    (json!({"role": "assistant", "content": f.text}), reason)
}

/// OpenAI's `usage` object of a finished inference: the prompt once, the tokens of every choice.
pub fn usage(choices: &[Finished]) -> Value {
    let prompt = choices.first().map_or(0, |f| f.prompt_tokens);
    let completion: usize = choices.iter().map(|f| f.tokens.len()).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Waits for the end of a started request and assembles OpenAI's whole response (`chat.completion` or
/// `text_completion`, a choice per `n`), its `openledger` object carrying the payment and the attribution.
pub async fn collect(mut r: Running) -> Result<Value, InferenceError> {
    loop {
        match r.events.recv().await {
            Some(Out::Done {
                choices,
                attribution,
            }) => {
                if let Some(a) = attribution {
                    r.meta["attribution"] = a;
                }
                let list: Vec<Value> = choices
                    .iter()
                    .enumerate()
                    .map(|(i, f)| match r.kind {
                        Kind::Chat => {
                            let (message, finish) = chat_message(r.tools.as_ref(), f);
                            json!({
                                "index": i, "message": message, "finish_reason": finish,
                                "logprobs": if r.logprobs { logprobs::chat(&r.inf, &f.logprobs) } else { Value::Null },
                            })
                        }
                        Kind::Completion => json!({
                            "index": i, "text": f.text, "finish_reason": f.reason.as_str(),
                            "logprobs": if r.logprobs { logprobs::completion(&r.inf, &f.logprobs, 0).0 } else { Value::Null },
                        }),
                    })
                    .collect();
                return Ok(json!({
                    "id": r.id,
                    "object": if r.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": r.created, "model": r.model, "choices": list, "usage": usage(&choices),
                    "openledger": r.meta,
                }));
            }
            Some(Out::Failed(m)) => return Err(InferenceError::Unavailable(m)),
            Some(Out::Token { .. }) => {}
            None => {
                return Err(InferenceError::Internal(
                    "the engine dropped the request".into(),
                ));
            }
        }
    }
}
