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

use crate::chain::Chain;

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

/// Whose sponsored spend a payment counts against, where it is recorded, and the caps.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    pub pool: &'a PgPool,
    /// The signed-in caller (sponsorship is for signed-in callers only).
    pub caller: Address,
    pub limits: &'a SponsorLimits,
}

/// Pays from the daemon's key, one payment at a time (the key's nonces), approving FeeRouter once.
#[derive(Debug)]
pub struct Sponsor {
    lock: tokio::sync::Mutex<()>,
    /// FeeRouter holds an unlimited allowance (an `approve(max)` this process made or saw).
    approved: std::sync::atomic::AtomicBool,
    timeout: Duration,
}

impl Sponsor {
    pub fn new(timeout: Duration) -> Self {
        Sponsor {
            lock: tokio::sync::Mutex::const_new(()),
            approved: std::sync::atomic::AtomicBool::new(false),
            timeout,
        }
    }

    /// Pays `amount` for `caller` within `limits`: the spend so far in the period is read and the payment
    /// recorded under the same lock, so concurrent requests cannot overshoot a cap together.
    pub async fn pay_capped(
        &self,
        chain: &Chain,
        deployment: &openledger_chain::Deployment,
        spend: Spend<'_>,
        model_id: U256,
        amount: U256,
    ) -> Result<Paid, PaymentError> {
        let Spend {
            pool,
            caller,
            limits,
        } = spend;
        let _one_at_a_time = self.lock.lock().await;
        let secs = i64::try_from(limits.period.as_secs()).unwrap_or(i64::MAX);
        let (mine, all): (String, String) = sqlx::query_as(
            "SELECT COALESCE(sum(amount) FILTER (WHERE caller IS NOT DISTINCT FROM $1), 0)::text,
                    COALESCE(sum(amount), 0)::text
             FROM sponsored_spend WHERE at > now() - make_interval(secs => $2::float8)",
        )
        .bind(format!("{caller:#x}"))
        .bind(secs as f64)
        .fetch_one(pool)
        .await?;
        let parse = |v: &str| v.parse::<U256>().unwrap_or(U256::MAX);
        let (mine, all) = (parse(&mine), parse(&all));
        let who = format!("{caller:#x}");
        let hours = limits.period.as_secs_f64() / 3600.0;
        if mine.saturating_add(amount) > limits.per_caller {
            return Err(PaymentError::Required(format!(
                "this daemon sponsors at most {} wei per caller every {hours} h and has paid {mine} wei for \
                 {who}: pay first (FeeRouter.payInference) for this request",
                limits.per_caller
            )));
        }
        if all.saturating_add(amount) > limits.total {
            return Err(PaymentError::Required(format!(
                "this daemon's sponsorship ({} wei every {hours} h) is spent: pay first \
                 (FeeRouter.payInference) for this request",
                limits.total
            )));
        }
        let paid = self.pay_locked(chain, deployment, model_id, amount).await?;
        sqlx::query(
            "INSERT INTO sponsored_spend (caller, amount, tx_hash) VALUES ($1, $2::numeric, $3)",
        )
        .bind(format!("{caller:#x}"))
        .bind(amount.to_string())
        .bind(format!("{:#x}", paid.tx_hash))
        .execute(pool)
        .await?;
        Ok(paid)
    }

    /// Pays `amount` (a caller's inference credit pays the daemon back).
    pub async fn pay(
        &self,
        chain: &Chain,
        deployment: &openledger_chain::Deployment,
        model_id: U256,
        amount: U256,
    ) -> Result<Paid, PaymentError> {
        let _one_at_a_time = self.lock.lock().await;
        self.pay_locked(chain, deployment, model_id, amount).await
    }

    async fn pay_locked(
        &self,
        chain: &Chain,
        deployment: &openledger_chain::Deployment,
        model_id: U256,
        amount: U256,
    ) -> Result<Paid, PaymentError> {
        use std::sync::atomic::Ordering;
        let unavailable = |e: &dyn std::fmt::Display| {
            PaymentError::Unavailable(format!("sponsoring the payment: {e}"))
        };
        let me = chain.signer().ok_or_else(|| {
            PaymentError::Unavailable("the daemon has no key to sponsor payments".into())
        })?;
        let router = deployment
            .address(ContractKind::FeeRouter)
            .map_err(|e| unavailable(&e))?;
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
                confirmed(
                    chain,
                    "approve",
                    open.approve(router, U256::MAX),
                    self.timeout,
                )
                .await?;
            }
            self.approved.store(true, Ordering::Release);
        }
        let request_id = B256::from(rand::random::<[u8; 32]>());
        let fee = FeeRouter::new(router, chain.provider().clone());
        let r = confirmed(
            chain,
            "payInference",
            fee.payInference(model_id, request_id, amount),
            self.timeout,
        )
        .await?;
        Ok(Paid {
            payer: me,
            request_id,
            amount,
            tx_hash: r.transaction_hash,
        })
    }
}

/// `Chain::send_confirmed` from the daemon's key; a failure leaves the request unpaid and unserved.
async fn confirmed<D: alloy::contract::CallDecoder + Clone>(
    chain: &Chain,
    what: &str,
    call: crate::chain::Call<'_, D>,
    timeout: Duration,
) -> Result<alloy::rpc::types::TransactionReceipt, PaymentError> {
    chain
        .send_confirmed(what, call, timeout)
        .await
        .map_err(|e| PaymentError::Unavailable(format!("sponsoring the payment: {e}")))
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
