//! What every request handler shares.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use openledger_chain::Deployment;
use openledger_indexer::IndexerStatus;
use openledger_indexer::query::ChainIndex;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

use crate::auth::SiweConfig;
use crate::chain::{Chain, ChainError};
use crate::inference::Inference;
use crate::jobs::queue::Queue;
use crate::jobs::worker::Registry;
use crate::quotas::Quotas;

/// Largest contribution upload, bytes, by default.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;
/// Authenticated requests per minute and address, by default.
pub const DEFAULT_RATE_PER_MINUTE: NonZeroU32 = nonzero(600);
/// Burst allowance above the steady rate, per address, by default.
pub const DEFAULT_RATE_BURST: NonZeroU32 = nonzero(120);

const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}
/// Requests per minute from one IP address (an IPv6 /64) that carry no valid token, by default.
pub const DEFAULT_IP_RATE_PER_MINUTE: NonZeroU32 = nonzero(600);
/// Burst allowance above the steady rate, per IP address, by default (a first visit to the web app loads
/// about 40 files).
pub const DEFAULT_IP_RATE_BURST: NonZeroU32 = nonzero(200);
/// Requests handled at once by one process, by default; more get 429 with Retry-After.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Seconds a request may take until its response starts, by default (a stream's body is not limited).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;

/// Lifetime of a wallet session, seconds, by default.
pub const DEFAULT_SESSION_TTL_SECS: u64 = 86_400;
/// Lifetime of a contribution signature (its EIP-712 `deadline`), seconds, by default.
pub const DEFAULT_SIGNATURE_TTL_SECS: u64 = 3_600;
/// `/readyz` fails while the indexer is more than this many blocks behind, by default.
pub const DEFAULT_READY_MAX_LAG: u64 = 32;

/// API settings (defaults in `ApiConfig::new`; `openledger serve --help` documents the flags).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest contribution upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: usize,
    /// Authenticated requests per minute and address.
    pub rate_per_minute: NonZeroU32,
    /// Requests an address may send in a burst above the steady rate.
    pub rate_burst: NonZeroU32,
    /// Requests per minute per client IP address (IPv6: per /64) without a valid token.
    pub ip_rate_per_minute: NonZeroU32,
    /// Burst allowance per client IP address.
    pub ip_rate_burst: NonZeroU32,
    /// The request header whose last address is the client's (set by a reverse proxy in front of the
    /// daemon, e.g. `x-forwarded-for`); `None`: the TCP peer's address.
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// Requests handled at once; more get 429 with Retry-After.
    pub max_concurrent_requests: usize,
    /// How long a request may take until its response starts.
    pub request_timeout: Duration,
    /// Per-address quotas.
    pub quotas: Quotas,
    /// Sign-in rules.
    pub siwe: SiweConfig,
    /// Default lifetime of a `contributeWithSig` signature (its `deadline`).
    pub signature_ttl: Duration,
    /// `/readyz` fails while the in-process indexer is more than this many blocks behind the head.
    pub ready_max_lag: u64,
    /// The chain's JSON-RPC URL as browsers should reach it (the web UI's dev wallet, links to the node);
    /// `None`: not advertised.
    pub public_rpc_url: Option<String>,
    /// Offer the node's own unlocked accounts (anvil's dev keys) as a wallet in the web UI: devnets only.
    pub dev_wallet: bool,
    /// Job slots this process runs (the operator view).
    pub worker_slots: usize,
    /// Seconds between settlement rounds, when this process settles.
    pub settle_every_secs: Option<u64>,
}

impl ApiConfig {
    pub fn new(chain_id: u64, domain: impl Into<String>) -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_json_bytes: 64 * 1024,
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            rate_burst: DEFAULT_RATE_BURST,
            ip_rate_per_minute: DEFAULT_IP_RATE_PER_MINUTE,
            ip_rate_burst: DEFAULT_IP_RATE_BURST,
            client_ip_header: None,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            quotas: Quotas::default(),
            siwe: SiweConfig {
                domain: domain.into(),
                chain_id,
                nonce_ttl: Duration::from_secs(600),
                session_ttl: Duration::from_secs(DEFAULT_SESSION_TTL_SECS),
                clock_skew: Duration::from_secs(60),
            },
            signature_ttl: Duration::from_secs(DEFAULT_SIGNATURE_TTL_SECS),
            ready_max_lag: DEFAULT_READY_MAX_LAG,
            public_rpc_url: None,
            dev_wallet: false,
            worker_slots: 0,
            settle_every_secs: None,
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub deployment: Deployment,
    pub index: ChainIndex,
    pub queue: Queue,
    pub jobs: Registry,
    pub chain: Option<Chain>,
    pub cfg: ApiConfig,
    pub limiter: DefaultKeyedRateLimiter<Address>,
    /// Requests without a valid token, per client IP address.
    pub ip_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// One permit per request being handled.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Bumped whenever the indexer commits progress (Postgres NOTIFY, any process): pay-first requests
    /// wait on it for their payment.
    pub index_progress: watch::Receiver<u64>,
    /// Job ids whose rows changed, from Postgres NOTIFY (any process).
    pub job_events: broadcast::Sender<i64>,
    /// The in-process indexer's progress, when `serve` runs one.
    pub indexer: Option<watch::Receiver<IndexerStatus>>,
    pub metrics: Option<PrometheusHandle>,
    /// The OpenLoRA engine, when this process serves a model.
    pub inference: Option<Arc<Inference>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("chain_id", &self.deployment.chain_id)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("chain_id", &self.0.deployment.chain_id)
            .field("jobs", &self.0.jobs)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Everything `AppState::new` needs.
#[derive(Debug)]
pub struct StateParts {
    pub pool: PgPool,
    pub deployment: Deployment,
    pub chain: Option<Chain>,
    pub cfg: ApiConfig,
    pub jobs: Registry,
    pub job_events: broadcast::Sender<i64>,
    pub indexer: Option<watch::Receiver<IndexerStatus>>,
    pub metrics: Option<PrometheusHandle>,
    pub inference: Option<Arc<Inference>>,
    /// See `Inner::index_progress`.
    pub index_progress: watch::Receiver<u64>,
}

impl AppState {
    pub fn new(p: StateParts) -> Result<Self, openledger_indexer::IndexerError> {
        let quota = Quota::per_minute(p.cfg.rate_per_minute).allow_burst(p.cfg.rate_burst);
        let ip_quota = Quota::per_minute(p.cfg.ip_rate_per_minute).allow_burst(p.cfg.ip_rate_burst);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            p.cfg.max_concurrent_requests.max(1),
        ));
        Ok(Self(Arc::new(Inner {
            index: ChainIndex::new(p.pool.clone(), &p.deployment)?,
            queue: Queue::new(p.pool.clone()),
            pool: p.pool,
            deployment: p.deployment,
            jobs: p.jobs,
            chain: p.chain,
            cfg: p.cfg,
            limiter: RateLimiter::keyed(quota),
            ip_limiter: RateLimiter::keyed(ip_quota),
            in_flight,
            index_progress: p.index_progress,
            job_events: p.job_events,
            indexer: p.indexer,
            metrics: p.metrics,
            inference: p.inference,
        })))
    }

    /// The chain connection, or `ChainError::NotConnected` when this daemon runs without one.
    pub fn chain(&self) -> Result<&Chain, ChainError> {
        self.chain.as_ref().ok_or(ChainError::NotConnected)
    }
}
