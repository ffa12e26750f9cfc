//! Paying for an inference through `FeeRouter.payInference(modelId, requestId, amount)`.
//!
//! - pay-first: the client pays, then calls the API; the request is served once the indexer has seen an
//!   `InferencePaid` for that id and model whose amount covers the price in force at the payment's block,
//!   and only to whoever the payment is for: a caller signed in as its payer (`request_id`), or a caller
//!   who knows the secret the request id is the keccak256 of (`request_secret`). Request ids are public
//!   (the mempool, the chain, settlement reports); the payer's session and the secret are not. The
//!   `inferences` row claims the payment so it serves once.
//! - sponsored: the daemon pays from its own key with a fresh request id before serving.
//!
//! The price covers the most the request may use: `ceil(price_per_1k * (prompt_tokens + max_tokens) / 1000)`.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{FeeRouter, OpenToken};
use openledger_indexer::query::ChainIndex;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::chain::{Chain, SendError};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("{0}")]
    Required(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
    /// A pay-first `request_id` from a caller not signed in: who the payer is cannot be checked.
    #[error("{0}")]
    SignIn(String),
    /// The caller is signed in as someone other than the payer it names.
    #[error("{0}")]
    NotPayer(String),
    /// The daemon's payment for the request is sent but not mined yet: the request is answered once it is.
    #[error("{0}")]
    Pending(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A payment an inference may use.
#[derive(Debug, Clone)]
pub struct Paid {
    pub payer: Address,
    pub request_id: B256,
    pub amount: U256,
    pub tx_hash: B256,
}

/// The model's price per 1,000 tokens: its developer's, else the default.
pub async fn price_per_1k(pool: &PgPool, job_id: i64, default: U256) -> Result<U256, sqlx::Error> {
    let p = crate::models::price(pool, job_id).await?;
    Ok(p.and_then(|(p, _)| p.parse().ok()).unwrap_or(default))
}

/// What a request of `tokens` (prompt + max_tokens) costs, rounded up.
pub fn required(price_per_1k: U256, tokens: usize) -> U256 {
    (price_per_1k * U256::from(tokens)).div_ceil(U256::from(1000))
}

/// Who may spend a pay-first payment, as the request shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spender {
    /// The caller is signed in as the payer: only that payer's payment under the request id.
    Payer(Address),
    /// The caller knows the secret whose keccak256 is the request id: a payment under it from `payer` if
    /// named, else from anyone (who paid under a hash only the secret's holder can open).
    Secret(Option<Address>),
}

impl Spender {
    fn payer(self) -> Option<Address> {
        match self {
            Spender::Payer(a) => Some(a),
            Spender::Secret(a) => a,
        }
    }
}

/// What a pay-first request needs: its id, who spends it, the model (its on-chain id and training job),
/// and the tokens the price covers.
#[derive(Debug, Clone, Copy)]
pub struct PayFirst {
    pub request_id: B256,
    pub spender: Spender,
    pub model_id: U256,
    pub job_id: i64,
    pub tokens: usize,
    /// The daemon's price for a model whose developer set none.
    pub default_price: U256,
    /// Blocks the payment's block must be under, counting itself, before it serves.
    pub confirmations: u64,
}

/// Longest pause between two looks at the index while a pay-first request waits, should a notification of
/// the indexer's progress be lost.
const PAYMENT_RECHECK: Duration = Duration::from_secs(2);

/// Waits (up to `wait`) for the indexer to see the client's payment, and checks it against the price in
/// force at its block. Returns the payment and that price. The index is read again whenever `progress`
/// moves (the indexer committed blocks: `crate::notify`), and at the latest every `PAYMENT_RECHECK`.
pub async fn find_payment(
    index: &ChainIndex,
    pool: &PgPool,
    req: PayFirst,
    wait: Duration,
    mut progress: watch::Receiver<u64>,
) -> Result<(Paid, U256), PaymentError> {
    let PayFirst {
        request_id,
        model_id,
        ..
    } = req;
    let deadline = Instant::now() + wait;
    loop {
        // progress from here on wakes the wait below
        progress.borrow_and_update();
        let found = index
            .best_payment(request_id, model_id, req.spender.payer())
            .await
            .map_err(|e| PaymentError::Unavailable(format!("the chain index: {e}")))?;
        if let Some(p) = found {
            if p.model_id != model_id {
                return Err(PaymentError::Refused(format!(
                    "request {request_id:#x} paid for model {}, not model {model_id}",
                    p.model_id
                )));
            }
            // a payment a reorg could still take back serves once it is deep enough
            let head = index
                .indexed_through()
                .await
                .map_err(|e| PaymentError::Unavailable(format!("the chain index: {e}")))?
                .unwrap_or(0);
            let depth = (head + 1).saturating_sub(p.block_number);
            if depth < req.confirmations {
                if Instant::now() >= deadline {
                    return Err(PaymentError::Required(format!(
                        "the payment of request {request_id:#x} (block {}) has {depth} of the {} \
                         confirmations this daemon waits for; send the request again shortly",
                        p.block_number, req.confirmations
                    )));
                }
                crate::notify::progress_or(&mut progress, until(deadline)).await;
                continue;
            }
            let price = crate::models::price_at(pool, req.job_id, p.block_number)
                .await?
                .unwrap_or(req.default_price);
            let need = required(price, req.tokens);
            if p.amount < need {
                return Err(PaymentError::Required(format!(
                    "request {request_id:#x} paid {} wei, this request needs {need} wei \
                     (price per 1k tokens in force at block {} x (prompt + max_tokens))",
                    p.amount, p.block_number
                )));
            }
            let paid = Paid {
                payer: p.payer,
                request_id,
                amount: p.amount,
                tx_hash: p.tx_hash,
            };
            return Ok((paid, price));
        }
        if Instant::now() >= deadline {
            let from = match req.spender.payer() {
                Some(a) => format!(" from {a:#x}"),
                None => String::new(),
            };
            return Err(PaymentError::Required(format!(
                "no InferencePaid for request {request_id:#x} and model {model_id}{from} has been indexed \
                 (pay FeeRouter.payInference({model_id}, {request_id:#x}, amount) first)"
            )));
        }
        crate::notify::progress_or(&mut progress, until(deadline)).await;
    }
}

/// The pause before the next look at the index: the recheck period, or what is left until `deadline`.
fn until(deadline: Instant) -> Duration {
    PAYMENT_RECHECK.min(deadline.saturating_duration_since(Instant::now()))
}

/// How much the daemon's key may pay on callers' behalf, per period: each signed-in caller (anonymous callers
/// are never sponsored) and everyone together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SponsorLimits {
    pub per_caller: U256,
    pub total: U256,
    pub period: Duration,
}

/// A caller's sponsored spend per period, by default: 1 OPEN (a thousand requests of a thousand tokens at the
/// default price).
pub const DEFAULT_SPONSOR_CAP_PER_CALLER: U256 =
    U256::from_limbs([1_000_000_000_000_000_000, 0, 0, 0]);
/// Everyone's sponsored spend per period, by default: 100 OPEN.
pub const DEFAULT_SPONSOR_CAP_TOTAL: U256 = U256::from_limbs([7_766_279_631_452_241_920, 5, 0, 0]);
/// The sponsorship period, by default: a day.
pub const DEFAULT_SPONSOR_PERIOD_SECS: u64 = 86_400;

impl Default for SponsorLimits {
    fn default() -> Self {
        SponsorLimits {
            per_caller: DEFAULT_SPONSOR_CAP_PER_CALLER,
            total: DEFAULT_SPONSOR_CAP_TOTAL,
            period: Duration::from_secs(DEFAULT_SPONSOR_PERIOD_SECS),
        }
    }
}

/// What the daemon pays FeeRouter for on a caller's behalf: who it is for, the model and amount, how it is
/// funded, and the request it is made for.
#[derive(Debug, Clone, Copy)]
pub struct Order<'a> {
    /// The signed-in caller it is for (`None`: a batch line or an operator's own request).
    pub caller: Option<Address>,
    pub model_id: U256,
    pub amount: U256,
    pub funding: Funding<'a>,
    /// The inference it pays for.
    pub inference: &'a str,
}

/// Who bears a payment the daemon makes.
#[derive(Debug, Clone, Copy)]
pub enum Funding<'a> {
    /// The daemon, within its caps (per caller and in total, per period).
    Sponsored(&'a SponsorLimits),
    /// The caller's inference credit, charged under `Order::inference` before the payment is made.
    Credit,
}

/// Pays FeeRouter from the daemon's key. Each payment is recorded (`daemon_payments`) under the request id
/// it pays before it is sent, so a payment whose receipt did not come in time is followed to the end
/// ([`reconcile`]) instead of being forgotten, paid twice or refunded while it may still be mined. Caps are
/// checked and the payment reserved under one Postgres lock: every `serve` process shares them.
#[derive(Debug)]
pub struct Sponsor {
    /// FeeRouter holds an unlimited allowance (an `approve(max)` this process made or saw).
    approved: std::sync::atomic::AtomicBool,
    timeout: Duration,
}

impl Sponsor {
    pub fn new(timeout: Duration) -> Self {
        Sponsor {
            approved: std::sync::atomic::AtomicBool::new(false),
            timeout,
        }
    }

    /// Pays `order.amount` for `order.model_id` under a fresh request id and waits for the receipt.
    /// `PaymentError::Pending` when the receipt did not come in time: the payment stays recorded as
    /// `sending`, and the caller's next request to the model uses it once mined ([`take_unused`]).
    pub async fn pay(
        &self,
        chain: &Chain,
        deployment: &openledger_chain::Deployment,
        pool: &PgPool,
        order: Order<'_>,
    ) -> Result<Paid, PaymentError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            PaymentError::Unavailable(format!("sponsoring the payment: {e}"))
        };
        let me = chain.signer().ok_or_else(|| {
            PaymentError::Unavailable("the daemon has no key to sponsor payments".into())
        })?;
        let router = deployment
            .address(ContractKind::FeeRouter)
            .map_err(|e| unavailable(&e))?;
        let request_id = B256::from(rand::random::<[u8; 32]>());
        reserve(pool, &order, request_id).await?;
        let sent = match self
            .send(chain, deployment, router, me, &order, request_id)
            .await
        {
            Ok(sent) => sent,
            Err(e) => {
                // nothing was sent: the reservation goes
                settle(pool, request_id, Settled::Failed(&e.to_string())).await?;
                return Err(e);
            }
        };
        sqlx::query("UPDATE daemon_payments SET tx_hash = $2 WHERE request_id = $1")
            .bind(format!("{request_id:#x}"))
            .bind(format!("{:#x}", sent.tx_hash))
            .execute(pool)
            .await?;
        match chain.confirm("payInference", &sent, self.timeout).await {
            Ok(r) => {
                settle(
                    pool,
                    request_id,
                    Settled::Paid {
                        tx: r.transaction_hash,
                        used_by: Some(order.inference),
                    },
                )
                .await?;
                // while this request waited for its receipt, the caller's next request may have found the
                // payment mined (`reconcile_one`) and taken it (`take_unused`): one payment, one inference
                if !claim(pool, request_id, order.inference).await? {
                    tracing::warn!(request = %request_id, inference = %order.inference, "a sponsored payment mined late was taken by the caller's next request");
                    return Err(PaymentError::Pending(
                        "the payment made for this request was mined late and paid for your next request \
                         instead; send this one again"
                            .into(),
                    ));
                }
                Ok(Paid {
                    payer: me,
                    request_id,
                    amount: order.amount,
                    tx_hash: r.transaction_hash,
                })
            }
            Err(e @ (SendError::Reverted { .. } | SendError::Dropped { .. })) => {
                settle(pool, request_id, Settled::Failed(&e.to_string())).await?;
                Err(PaymentError::Unavailable(format!(
                    "sponsoring the payment: {e}"
                )))
            }
            Err(e) => {
                tracing::warn!(request = %request_id, tx = %sent.tx_hash, error = %e, "a sponsored payment is not mined yet");
                Err(PaymentError::Pending(format!(
                    "the payment for this request ({}, request id {request_id:#x}) is sent but not mined yet;                      nothing more is charged: send the request again in a few seconds and it uses that                      payment once it is mined",
                    sent.tx_hash
                )))
            }
        }
    }

    /// Approves FeeRouter once (an unlimited allowance), then sends the payment, recorded under its request
    /// id.
    async fn send(
        &self,
        chain: &Chain,
        deployment: &openledger_chain::Deployment,
        router: Address,
        me: Address,
        order: &Order<'_>,
        request_id: B256,
    ) -> Result<crate::chain::Sent, PaymentError> {
        use std::sync::atomic::Ordering;
        let unavailable = |e: &dyn std::fmt::Display| {
            PaymentError::Unavailable(format!("sponsoring the payment: {e}"))
        };
        if !self.approved.load(Ordering::Acquire) {
            let token = deployment
                .address(ContractKind::OpenToken)
                .map_err(|e| unavailable(&e))?;
            let open = OpenToken::new(token, chain.provider().clone());
            let allowance = open
                .allowance(me, router)
                .call()
                .await
                .map_err(|e| unavailable(&e))?;
            // OpenZeppelin's ERC20 never spends down an allowance of U256::MAX
            if allowance != U256::MAX {
                chain
                    .send_confirmed("approve", open.approve(router, U256::MAX), self.timeout)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            self.approved.store(true, Ordering::Release);
        }
        let fee = FeeRouter::new(router, chain.provider().clone());
        chain
            .send_for(
                "payInference",
                Some(&format!("{request_id:#x}")),
                &fee.payInference(order.model_id, request_id, order.amount),
            )
            .await
            .map_err(|e| unavailable(&e))
    }
}

/// Records `order` as `sending` under `request_id`; a sponsored one only within its caps, checked under a
/// lock every process shares, with every payment not known to have failed counted.
async fn reserve(pool: &PgPool, order: &Order<'_>, request_id: B256) -> Result<(), PaymentError> {
    let mut tx = pool.begin().await?;
    if let Funding::Sponsored(limits) = order.funding {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('openledger-sponsorship', 0))")
            .execute(&mut *tx)
            .await?;
        let caller = order.caller.ok_or_else(|| {
            PaymentError::SignIn("the daemon sponsors only signed-in callers".into())
        })?;
        let secs = limits.period.as_secs_f64();
        let (mine, all): (String, String) = sqlx::query_as(
            "WITH spend AS (
                 SELECT caller, amount FROM sponsored_spend WHERE at > now() - make_interval(secs => $2)
                 UNION ALL
                 SELECT caller, amount FROM daemon_payments
                 WHERE funding = 'sponsored' AND state <> 'failed' AND created_at > now() - make_interval(secs => $2))
             SELECT COALESCE(sum(amount) FILTER (WHERE caller IS NOT DISTINCT FROM $1), 0)::text,
                    COALESCE(sum(amount), 0)::text FROM spend",
        )
        .bind(format!("{caller:#x}"))
        .bind(secs)
        .fetch_one(&mut *tx)
        .await?;
        let parse = |v: &str| v.parse::<U256>().unwrap_or(U256::MAX);
        let (mine, all) = (parse(&mine), parse(&all));
        let hours = secs / 3600.0;
        if mine.saturating_add(order.amount) > limits.per_caller {
            return Err(PaymentError::Required(format!(
                "this daemon sponsors at most {} wei per caller every {hours} h and has paid {mine} wei for \
                 {caller:#x}: pay first (FeeRouter.payInference) for this request",
                limits.per_caller
            )));
        }
        if all.saturating_add(order.amount) > limits.total {
            return Err(PaymentError::Required(format!(
                "this daemon's sponsorship ({} wei every {hours} h) is spent: pay first \
                 (FeeRouter.payInference) for this request",
                limits.total
            )));
        }
    }
    let (funding, charged) = match order.funding {
        Funding::Sponsored(_) => ("sponsored", None),
        Funding::Credit => ("credit", Some(order.inference)),
    };
    sqlx::query(
        "INSERT INTO daemon_payments (request_id, caller, model_id, amount, funding, charged_inference)
         VALUES ($1, $2, $3::numeric, $4::numeric, $5, $6)",
    )
    .bind(format!("{request_id:#x}"))
    .bind(order.caller.map(|c| format!("{c:#x}")))
    .bind(order.model_id.to_string())
    .bind(order.amount.to_string())
    .bind(funding)
    .bind(charged)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How a recorded payment ended.
enum Settled<'a> {
    /// Mined as `tx`; used by the request `used_by` (`None`: by the caller's next request).
    Paid { tx: B256, used_by: Option<&'a str> },
    /// Never sent, reverted, or its nonce went to another transaction: nothing was paid.
    Failed(&'a str),
}

/// Whether `inference` holds the paid payment `request_id` (claiming it when no request does yet).
async fn claim(pool: &PgPool, request_id: B256, inference: &str) -> Result<bool, sqlx::Error> {
    let held: Option<i32> = sqlx::query_scalar(
        "UPDATE daemon_payments SET used_by = $2, used_at = COALESCE(used_at, now())
         WHERE request_id = $1 AND state = 'paid' AND (used_by IS NULL OR used_by = $2)
         RETURNING 1",
    )
    .bind(format!("{request_id:#x}"))
    .bind(inference)
    .fetch_optional(pool)
    .await?;
    Ok(held.is_some())
}

/// Settles a `sending` payment; a failed one funded by credit gives the charge back.
async fn settle(pool: &PgPool, request_id: B256, how: Settled<'_>) -> Result<(), sqlx::Error> {
    let rid = format!("{request_id:#x}");
    match how {
        Settled::Paid { tx, used_by } => {
            sqlx::query(
                "UPDATE daemon_payments SET state = 'paid', tx_hash = $2, used_by = COALESCE($3, used_by),
                        used_at = CASE WHEN $3::text IS NULL THEN used_at ELSE now() END, settled_at = now()
                 WHERE request_id = $1 AND state = 'sending'",
            )
            .bind(&rid)
            .bind(format!("{tx:#x}"))
            .bind(used_by)
            .execute(pool)
            .await?;
        }
        Settled::Failed(why) => {
            let charged: Option<Option<String>> = sqlx::query_scalar(
                "UPDATE daemon_payments SET state = 'failed', error = $2, settled_at = now()
                 WHERE request_id = $1 AND state = 'sending' RETURNING charged_inference",
            )
            .bind(&rid)
            .bind(why)
            .fetch_optional(pool)
            .await?;
            if let Some(Some(inference)) = charged {
                super::credits::refund_inference(pool, &inference).await?;
            }
        }
    }
    Ok(())
}

/// A payment the daemon (`payer`) made for `caller` and `model_id` of at least `need` that no request used
/// (its request got no answer while it was being mined), or a sponsored one whose request failed: claimed
/// for `inference`, so it serves once.
pub async fn take_unused(
    pool: &PgPool,
    payer: Address,
    caller: Address,
    (model_id, need): (U256, U256),
    inference: &str,
) -> Result<Option<Paid>, PaymentError> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "UPDATE daemon_payments SET used_by = $4, used_at = now()
         WHERE request_id = (SELECT request_id FROM daemon_payments
                             WHERE caller = $1 AND model_id = $2::numeric AND amount >= $3::numeric
                               AND state = 'paid'
                               AND (used_by IS NULL
                                    -- the daemon's own money, for a request that failed: not refunded
                                    -- to anyone, so it pays for the next one
                                    OR (funding = 'sponsored'
                                        AND EXISTS (SELECT 1 FROM inferences i
                                                    WHERE i.id = daemon_payments.used_by
                                                      AND i.status = 'failed')))
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING request_id, amount::text, tx_hash",
    )
    .bind(format!("{caller:#x}"))
    .bind(model_id.to_string())
    .bind(need.to_string())
    .bind(inference)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(rid, amount, tx)| {
        Some(Paid {
            payer,
            request_id: rid.parse().ok()?,
            amount: amount.parse().ok()?,
            tx_hash: tx?.parse().ok()?,
        })
    }))
}

/// The request id of a payment the daemon is still mining for `caller` and `model_id`, of at least `need`.
pub async fn sending_for(
    pool: &PgPool,
    caller: Address,
    model_id: U256,
    need: U256,
) -> Result<Option<(B256, Option<String>)>, PaymentError> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT request_id, tx_hash FROM daemon_payments
         WHERE caller = $1 AND model_id = $2::numeric AND amount >= $3::numeric AND state = 'sending'
         ORDER BY created_at LIMIT 1",
    )
    .bind(format!("{caller:#x}"))
    .bind(model_id.to_string())
    .bind(need.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(r, t)| Some((r.parse().ok()?, t))))
}

/// What [`reconcile`] settled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub paid: usize,
    pub failed: usize,
    pub released: usize,
}

/// A payment still `sending` after this long with no transaction recorded for it was never sent (its process
/// stopped first).
pub const UNSENT_GRACE: Duration = Duration::from_secs(300);

/// Settles the daemon's (`payer`'s) payments whose sender stopped waiting: `paid` once the index has its
/// `InferencePaid` under the request id (whichever attempt was mined), `failed` (credit refunded, cap freed) once every
/// transaction sent for it was dropped or none was ever sent; a claim by a request that never got its row
/// (its process stopped) is let go after `UNSENT_GRACE`. Run periodically by every `serve`.
pub async fn reconcile(
    pool: &PgPool,
    index: &ChainIndex,
    payer: Address,
) -> Result<Reconciled, PaymentError> {
    let mut out = Reconciled::default();
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM daemon_payments WHERE state = 'sending' ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    for rid in open {
        let Ok(request_id) = rid.parse::<B256>() else {
            continue;
        };
        match reconcile_one(pool, index, payer, request_id).await? {
            Some(true) => out.paid += 1,
            Some(false) => out.failed += 1,
            None => {}
        }
    }
    out.released = sqlx::query(
        "UPDATE daemon_payments p SET used_by = NULL, used_at = NULL
         WHERE state = 'paid' AND used_by IS NOT NULL AND used_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM inferences i WHERE i.id = p.used_by)",
    )
    .bind(UNSENT_GRACE.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected() as usize;
    Ok(out)
}

/// Settles one `sending` payment if its end is known: `Some(true)` paid, `Some(false)` failed, `None` still
/// open (its transaction may still be mined, or the index has not reached it).
pub async fn reconcile_one(
    pool: &PgPool,
    index: &ChainIndex,
    payer: Address,
    request_id: B256,
) -> Result<Option<bool>, PaymentError> {
    let rid = format!("{request_id:#x}");
    let age: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM daemon_payments
         WHERE request_id = $1 AND state = 'sending'",
    )
    .bind(&rid)
    .fetch_optional(pool)
    .await?;
    let Some(age) = age else {
        return Ok(None);
    };
    let found = index
        .best_payment(request_id, U256::ZERO, Some(payer))
        .await
        .map_err(|e| PaymentError::Unavailable(format!("reading the index: {e}")))?;
    if let Some(p) = found {
        let paid = Settled::Paid {
            tx: p.tx_hash,
            used_by: None,
        };
        settle(pool, request_id, paid).await?;
        tracing::info!(request = %rid, tx = %p.tx_hash, "a sponsored payment was mined late: the caller's next request uses it");
        return Ok(Some(true));
    }
    // the transactions sent for it: one still live or mined (the index will have it) keeps it open
    let (sent, open): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state IN ('sent', 'mined')) FROM key_sends
         WHERE reference = $1",
    )
    .bind(&rid)
    .fetch_one(pool)
    .await?;
    let why = if sent > 0 && open == 0 {
        "its transaction's nonce went to another transaction: it was never mined"
    } else if sent == 0 && age > UNSENT_GRACE.as_secs_f64() {
        "no transaction was sent for it"
    } else {
        return Ok(None);
    };
    tracing::warn!(request = %rid, why, "a sponsored payment failed (a credit charge is refunded)");
    settle(pool, request_id, Settled::Failed(why)).await?;
    Ok(Some(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sponsorship_defaults_are_what_their_docs_say() {
        let open = U256::from(10u64).pow(U256::from(18u64));
        assert_eq!(DEFAULT_SPONSOR_CAP_PER_CALLER, open);
        assert_eq!(DEFAULT_SPONSOR_CAP_TOTAL, open * U256::from(100u64));
    }

    #[test]
    fn the_price_covers_prompt_and_max_tokens_rounded_up() {
        let p = U256::from(1000u64);
        assert_eq!(required(p, 1), U256::from(1));
        assert_eq!(required(p, 1500), U256::from(1500));
        assert_eq!(required(U256::from(3u64), 1), U256::from(1));
        assert_eq!(required(U256::from(3u64), 1000), U256::from(3));
        assert_eq!(required(U256::from(3u64), 1001), U256::from(4));
    }
}
