//! `openledger serve`: the REST API, the in-process indexer and the job workers in one process.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use openledger_indexer::IndexerConfig;

use openledger_attribution::{grad, span, weights};
use openledger_model::serve::engine;

use super::GlobalArgs;
use crate::chain::{Chain, KeyArgs, SettlerKeyArgs};
use crate::jobs::{WorkerConfig, worker};
use crate::serve::ServeConfig;
use crate::state::ApiConfig;
use crate::training::TrainSettings;
use crate::{inference, quotas, state};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OPENLEDGER_LISTEN", default_value = crate::serve::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub chain: super::ChainArgs,
    /// The domain sign-in messages must name (EIP-4361 `domain`) [default: the --listen address].
    #[arg(long, env = "OPENLEDGER_SIWE_DOMAIN")]
    pub domain: Option<String>,
    /// The chain's JSON-RPC URL as browsers reach it, for the web UI [default: --rpc-url when it is an
    /// http(s) URL on a loopback host; a remote node's URL may carry an API key, so it is never published
    /// unless given here].
    #[arg(long, env = "OPENLEDGER_PUBLIC_RPC_URL")]
    pub public_rpc_url: Option<String>,
    /// Offer the node's unlocked accounts (anvil's well-known dev keys) as a wallet in the web UI. Devnets
    /// only: anyone who can open the page can sign with those accounts.
    #[arg(long, env = "OPENLEDGER_DEV_WALLET")]
    pub dev_wallet: bool,
    /// Do not index in this process (another `openledger index` or `serve` fills the same database).
    #[arg(long)]
    pub no_index: bool,
    /// Jobs this process runs at once (0: serve the API only).
    #[arg(long, env = "OPENLEDGER_WORKERS", default_value_t = worker::DEFAULT_CONCURRENCY)]
    pub workers: usize,
    /// Largest contribution upload in bytes.
    #[arg(long, env = "OPENLEDGER_MAX_UPLOAD_BYTES", default_value_t = state::DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: usize,
    /// Authenticated requests per minute and address.
    #[arg(long, env = "OPENLEDGER_RATE_LIMIT_PER_MINUTE", default_value_t = state::DEFAULT_RATE_PER_MINUTE)]
    pub rate_limit_per_minute: NonZeroU32,
    /// Burst allowance above the steady rate, per address.
    #[arg(long, env = "OPENLEDGER_RATE_LIMIT_BURST", default_value_t = state::DEFAULT_RATE_BURST)]
    pub rate_limit_burst: NonZeroU32,
    /// Requests per minute to /api and /v1 that carry no valid token, per client IP address (an IPv6
    /// address counts by its /64); a token that fails to authenticate counts here too.
    #[arg(long, env = "OPENLEDGER_IP_RATE_LIMIT_PER_MINUTE", default_value_t = state::DEFAULT_IP_RATE_PER_MINUTE)]
    pub ip_rate_limit_per_minute: NonZeroU32,
    /// Burst allowance above the steady rate, per client IP address.
    #[arg(long, env = "OPENLEDGER_IP_RATE_LIMIT_BURST", default_value_t = state::DEFAULT_IP_RATE_BURST)]
    pub ip_rate_limit_burst: NonZeroU32,
    /// Take the client's IP address from this request header (its last address: the one your reverse proxy
    /// appended, e.g. `x-forwarded-for`) instead of the TCP peer. Only behind a proxy that sets it: otherwise
    /// clients choose their own address.
    #[arg(long, env = "OPENLEDGER_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// Requests handled at once (health probes aside); more get 429 with Retry-After.
    #[arg(long, env = "OPENLEDGER_MAX_CONCURRENT_REQUESTS", default_value_t = state::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Seconds a request may take until its response starts (an event stream's or a streamed completion's
    /// body is not limited); slower ones get 503 with Retry-After.
    #[arg(long, env = "OPENLEDGER_REQUEST_TIMEOUT_SECS", default_value_t = state::DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    #[command(flatten)]
    pub quotas: QuotaArgs,
    /// Lifetime of a wallet session, in seconds.
    #[arg(long, default_value_t = state::DEFAULT_SESSION_TTL_SECS)]
    pub session_ttl_secs: u64,
    /// Default lifetime of a contribution signature (its EIP-712 `deadline`), in seconds.
    #[arg(long, default_value_t = state::DEFAULT_SIGNATURE_TTL_SECS)]
    pub signature_ttl_secs: u64,
    /// Seconds between a running job's heartbeats (cancellation is noticed at the latest then).
    #[arg(long, default_value_t = worker::DEFAULT_HEARTBEAT_SECS)]
    pub job_heartbeat_secs: u64,
    /// Seconds without a heartbeat after which a running job is taken back from its (dead) worker.
    #[arg(long, default_value_t = worker::DEFAULT_STALE_SECS)]
    pub job_stale_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = crate::serve::DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Seconds the relayer waits for a receipt, and then for the indexer, per attempt.
    #[arg(long, default_value_t = crate::serve::DEFAULT_CONFIRM_TIMEOUT_SECS)]
    pub confirm_timeout_secs: u64,
    /// Blocks the in-process indexer stays behind the head.
    #[arg(long, default_value_t = IndexerConfig::DEFAULT_CONFIRMATIONS)]
    pub confirmations: u64,
    /// Milliseconds between head polls of the in-process indexer (http URLs).
    #[arg(long, default_value_t = IndexerConfig::DEFAULT_POLL_INTERVAL_MS)]
    pub poll_interval_ms: u64,
    /// /readyz fails while the indexer is more than this many blocks behind.
    #[arg(long, default_value_t = state::DEFAULT_READY_MAX_LAG)]
    pub ready_max_lag: u64,
    /// Device for training: `cpu` (all cores) or `cuda:N` (builds with `--features cuda`).
    #[arg(long, env = "OPENLEDGER_DEVICE", default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
    /// Settle every this many seconds: propose the next epoch when payments are final, follow proposals,
    /// accept roots whose challenge delay passed (0: off; needs the settler key).
    #[arg(long, env = "OPENLEDGER_SETTLE_EVERY_SECS", default_value_t = 0)]
    pub settle_every_secs: u64,
    #[command(flatten)]
    pub settler_key: SettlerKeyArgs,
    #[command(flatten)]
    pub settle: super::settle::SettleOpts,
}

/// Per-address quotas over a rolling 24 hours (0: none). Operators (admin API keys) are not charged; going
/// over one is a 429 problem that names its flag, with Retry-After.
#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    /// Bytes an address may upload per day: new contribution content (the same content again is free) and
    /// batch input files.
    #[arg(long, env = "OPENLEDGER_QUOTA_UPLOAD_BYTES_PER_DAY", default_value_t = quotas::DEFAULT_UPLOAD_BYTES_PER_DAY)]
    pub quota_upload_bytes_per_day: u64,
    /// Contributions the daemon relays for an address per day (its key pays their gas).
    #[arg(long, env = "OPENLEDGER_QUOTA_RELAYS_PER_DAY", default_value_t = quotas::DEFAULT_RELAYS_PER_DAY)]
    pub quota_relays_per_day: u64,
    /// Training steps an address may use per day: `config.steps` are charged at submission, steps from
    /// `epochs` when the run has counted them (a run over the quota fails).
    #[arg(long, env = "OPENLEDGER_QUOTA_TRAIN_STEPS_PER_DAY", default_value_t = quotas::DEFAULT_TRAIN_STEPS_PER_DAY)]
    pub quota_train_steps_per_day: u64,
    /// Jobs (training, snapshots, batches) an address may have queued or running at once.
    #[arg(long, env = "OPENLEDGER_QUOTA_CONCURRENT_JOBS", default_value_t = quotas::DEFAULT_CONCURRENT_JOBS)]
    pub quota_concurrent_jobs: u64,
    /// Batch inference lines an address may queue per day.
    #[arg(long, env = "OPENLEDGER_QUOTA_BATCH_LINES_PER_DAY", default_value_t = quotas::DEFAULT_BATCH_LINES_PER_DAY)]
    pub quota_batch_lines_per_day: u64,
}

impl QuotaArgs {
    pub fn quotas(&self) -> quotas::Quotas {
        quotas::Quotas {
            upload_bytes_per_day: self.quota_upload_bytes_per_day,
            relays_per_day: self.quota_relays_per_day,
            train_steps_per_day: self.quota_train_steps_per_day,
            concurrent_jobs: self.quota_concurrent_jobs,
            batch_lines_per_day: self.quota_batch_lines_per_day,
        }
    }
}

/// OpenLoRA serving: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
#[derive(Debug, clap::Args)]
pub struct InferenceArgs {
    /// Serve no model (the inference routes answer 503).
    #[arg(long)]
    pub no_inference: bool,
    /// Base model to serve: an installed model's id or a path [default: the first installed].
    #[arg(long, env = "OPENLEDGER_SERVE_MODEL")]
    pub serve_model: Option<String>,
    /// How the served base weights are held: `int8` (repacked at load for the engine's batched int8
    /// matmul, fastest on CPUs), `native` (the file's quantized blocks through candle's kernels) or `f32`.
    #[arg(long, env = "OPENLEDGER_SERVE_WEIGHTS", value_enum, default_value_t = ServeWeights::Int8)]
    pub serve_weights: ServeWeights,
    /// Where the served model runs: `cpu`, or `cuda:N` (an NVIDIA GPU; builds with `--features cuda`):
    /// weights in bf16 there (`--serve-weights f32` keeps f32), the KV cache in blocks of GPU memory
    /// (`--kv-cache-mb`), adapters in GPU slots fed from the adapter cache.
    #[arg(long, env = "OPENLEDGER_SERVE_DEVICE", default_value = crate::inference::DEFAULT_SERVE_DEVICE)]
    pub serve_device: String,
    /// Sequences decoded together in one batch.
    #[arg(long, env = "OPENLEDGER_MAX_SEQS", default_value_t = engine::DEFAULT_MAX_SEQS)]
    pub max_seqs: usize,
    /// Prompt tokens processed per batched step (decode tokens always fit).
    #[arg(long, default_value_t = engine::DEFAULT_MAX_BATCH_TOKENS)]
    pub max_batch_tokens: usize,
    /// Distinct adapters in one batch.
    #[arg(long, env = "OPENLEDGER_MAX_ACTIVE_ADAPTERS", default_value_t = engine::DEFAULT_MAX_ACTIVE_ADAPTERS)]
    pub max_active_adapters: usize,
    /// Memory for resident adapters, in MB (least recently used ones are evicted).
    #[arg(long, env = "OPENLEDGER_ADAPTER_CACHE_MB", default_value_t = engine::DEFAULT_ADAPTER_CACHE_MB)]
    pub adapter_cache_mb: usize,
    /// Memory for KV caches, in MB: host memory, or GPU memory with `--serve-device cuda:N` (a request
    /// reserves prompt + max_tokens positions).
    #[arg(long, env = "OPENLEDGER_KV_CACHE_MB", default_value_t = engine::DEFAULT_KV_CACHE_MB)]
    pub kv_cache_mb: usize,
    /// Requests waiting or running; more get 429 with Retry-After.
    #[arg(long, env = "OPENLEDGER_MAX_QUEUE", default_value_t = engine::DEFAULT_MAX_QUEUE)]
    pub max_queue: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = engine::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// max_tokens of requests that give none.
    #[arg(long, default_value_t = inference::DEFAULT_MAX_TOKENS)]
    pub default_max_tokens: usize,
    /// Seconds an interactive inference's row stays this process's without a renewal (renewed every third
    /// of it): after a crash, any live `serve` fails the row this long after the last renewal, freeing its
    /// payment for a retry and refunding a credit charge.
    #[arg(long, env = "OPENLEDGER_INFERENCE_LEASE_SECS", default_value_t = inference::DEFAULT_INFERENCE_LEASE_SECS)]
    pub inference_lease_secs: u64,
    /// Lines of one batch inference job in flight at once (keep it below --max-seqs so interactive calls
    /// find room).
    #[arg(long, default_value_t = inference::DEFAULT_BATCH_CONCURRENCY)]
    pub batch_concurrency: usize,
    /// Price per 1,000 tokens (prompt + max_tokens), in OPEN wei, of adapters whose developer set none.
    #[arg(long, env = "OPENLEDGER_PRICE_PER_1K", default_value_t = inference::DEFAULT_PRICE_PER_1K)]
    pub price_per_1k: alloy::primitives::U256,
    /// Pay FeeRouter from the daemon's key for requests that bring no payment of their own (the dev stack):
    /// never above --price-per-1k, and within the caps below.
    #[arg(long, env = "OPENLEDGER_SPONSOR_INFERENCE")]
    pub sponsor_inference: bool,
    /// What sponsorship pays for one caller (anonymous callers together count as one) per
    /// --sponsor-period-secs, in OPEN wei.
    #[arg(long, default_value_t = inference::payment::DEFAULT_SPONSOR_CAP_PER_CALLER)]
    pub sponsor_cap_per_caller: alloy::primitives::U256,
    /// What sponsorship pays for everyone together per --sponsor-period-secs, in OPEN wei.
    #[arg(long, default_value_t = inference::payment::DEFAULT_SPONSOR_CAP_TOTAL)]
    pub sponsor_cap_total: alloy::primitives::U256,
    /// The period of the sponsorship caps, in seconds.
    #[arg(long, default_value_t = inference::payment::DEFAULT_SPONSOR_PERIOD_SECS)]
    pub sponsor_period_secs: u64,
    /// Seconds a pay-first request waits for the indexer to see its payment.
    #[arg(long, default_value_t = inference::DEFAULT_PAYMENT_WAIT_SECS)]
    pub payment_wait_secs: u64,
    /// Blocks a pay-first payment must be under (counting its own) before it serves [default: 0 on a local
    /// devnet, else 10].
    #[arg(long)]
    pub payment_confirmations: Option<u64>,
    /// Allow --sponsor-inference on a chain that is not a local devnet (its OPEN is real: set the
    /// --sponsor-cap-* flags deliberately).
    #[arg(long, requires = "sponsor_inference")]
    pub sponsor_on_public_chain: bool,
    #[command(flatten)]
    pub attribution: AttributionArgs,
}

/// Proof of Attribution of inferences of trained adapters (all but --attribution-gradient are part of every
/// record, so `openledger attribution verify` must be given the same).
#[derive(Debug, clap::Args)]
pub struct AttributionArgs {
    /// When the gradient part runs: `sync` (the response carries the final weights; costs about one
    /// backward pass), `queued` (after the response; GET /api/inferences/{id}/attribution completes within
    /// seconds) or `off` (spans only).
    #[arg(long, env = "OPENLEDGER_ATTRIBUTION_GRADIENT", value_enum, default_value_t = crate::attribution::GradientMode::Sync)]
    pub attribution_gradient: crate::attribution::GradientMode,
    /// Shortest attributable span, in tokens.
    #[arg(long, default_value_t = span::DEFAULT_SPAN_MIN_LEN)]
    pub span_min_len: usize,
    /// Spans found more often than this in the training data are too common to attribute.
    #[arg(long, default_value_t = span::DEFAULT_SPAN_MAX_COUNT)]
    pub span_max_count: usize,
    /// Spans kept per output token (the rarest first).
    #[arg(long, default_value_t = span::DEFAULT_SPAN_DENSITY)]
    pub span_density: f64,
    /// Output tokens in a run of at least this many tokens that also occurs in the prompt are the
    /// prompt's; a span with fewer than --span-min-len tokens of its own is shown but not paid.
    #[arg(long, default_value_t = span::DEFAULT_PROMPT_MIN_LEN)]
    pub span_prompt_min_len: usize,
    /// Training examples (highest gradient scores) whose contributions share the gradient evidence.
    #[arg(long, default_value_t = grad::DEFAULT_GRADIENT_TOP_K)]
    pub gradient_top_k: usize,
    /// Sources below this share of an inference's contributor pool (parts per million) get nothing.
    #[arg(long, default_value_t = weights::DEFAULT_FLOOR_PPM)]
    pub attribution_floor_ppm: u64,
}

impl AttributionArgs {
    pub fn config(&self) -> crate::attribution::AttributionConfig {
        let d = crate::attribution::AttributionConfig::default();
        crate::attribution::AttributionConfig {
            gradient: self.attribution_gradient,
            span: openledger_attribution::SpanParams {
                min_len: self.span_min_len.max(1),
                max_count: self.span_max_count.max(1),
                density: self.span_density.max(0.0),
                prompt_min_len: Some(self.span_prompt_min_len.max(1)),
            },
            grad: openledger_attribution::GradParams {
                top_k: self.gradient_top_k.max(1),
                ..d.grad
            },
            combine: openledger_attribution::CombineParams {
                floor_ppm: self.attribution_floor_ppm,
                ..d.combine
            },
        }
    }
}

/// `--serve-weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeWeights {
    Int8,
    Native,
    F32,
}

impl InferenceArgs {
    pub fn config(&self) -> Option<crate::inference::InferenceConfig> {
        (!self.no_inference).then(|| crate::inference::InferenceConfig {
            model: self.serve_model.clone(),
            precision: match self.serve_weights {
                ServeWeights::Int8 => openledger_model::Precision::Int8,
                ServeWeights::Native => openledger_model::Precision::Quantized,
                ServeWeights::F32 => openledger_model::Precision::F32,
            },
            device: self.serve_device.clone(),
            engine: openledger_model::serve::EngineConfig {
                max_seqs: self.max_seqs.max(1),
                max_batch_tokens: self.max_batch_tokens.max(1),
                max_active_adapters: self.max_active_adapters.max(1),
                adapter_cache_bytes: self.adapter_cache_mb << 20,
                max_queue: self.max_queue.max(1),
                kv_cache_bytes: self.kv_cache_mb << 20,
                max_new_tokens: self.max_new_tokens.max(1),
            },
            default_price_per_1k: self.price_per_1k,
            sponsor: self.sponsor_inference,
            sponsor_limits: inference::payment::SponsorLimits {
                per_caller: self.sponsor_cap_per_caller,
                total: self.sponsor_cap_total,
                period: Duration::from_secs(self.sponsor_period_secs.max(1)),
            },
            payment_wait: Duration::from_secs(self.payment_wait_secs),
            payment_confirmations: self.payment_confirmations.unwrap_or(0),
            default_max_tokens: self.default_max_tokens.max(1),
            batch_concurrency: self.batch_concurrency.max(1),
            attribution: self.attribution.config(),
            lease: Duration::from_secs(self.inference_lease_secs.max(1)),
        })
    }
}

/// The serving settings on this chain: a local devnet serves payments at once and may sponsor freely;
/// elsewhere payments wait for `DEFAULT_PAYMENT_CONFIRMATIONS` unless told otherwise, and sponsorship
/// must be asked for with --sponsor-on-public-chain.
fn inference_for(
    args: &InferenceArgs,
    devnet: bool,
) -> anyhow::Result<Option<crate::inference::InferenceConfig>> {
    let Some(mut cfg) = args.config() else {
        return Ok(None);
    };
    cfg.payment_confirmations = args.payment_confirmations.unwrap_or(if devnet {
        0
    } else {
        inference::DEFAULT_PAYMENT_CONFIRMATIONS
    });
    if cfg.sponsor && !devnet && !args.sponsor_on_public_chain {
        anyhow::bail!(
            "--sponsor-inference on a chain that is not a local devnet pays strangers' requests with this \
             daemon's real OPEN: add --sponsor-on-public-chain, and set --sponsor-cap-per-caller and \
             --sponsor-cap-total deliberately"
        );
    }
    Ok(Some(cfg))
}

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let key = args.key.load()?;
    let deployment = args.chain.deployment().await?;
    let chain = Chain::connect(
        &args.chain.rpc_url(),
        &deployment,
        key,
        Duration::from_secs(30),
    )
    .await?;
    match chain.signer() {
        Some(a) => tracing::info!(relayer = %a, "relaying and publishing from the daemon's key"),
        None => tracing::warn!(
            "no key (OPENLEDGER_PRIVATE_KEY or --keystore): relaying and publishing are off"
        ),
    }
    // asked once: what the node is decides the serving and settling rules below
    let devnet = match chain.is_devnet().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "the node does not say what it is: treating it as a public chain");
            false
        }
    };
    if args.dev_wallet && !devnet {
        anyhow::bail!(
            "--dev-wallet offers the node's unlocked accounts to every browser: local devnets (anvil, hardhat) only, \
             and this node is not one"
        );
    }
    let inference = inference_for(&args.inference, devnet)?;
    let settler = settler_for(&args, &chain, devnet, &deployment).await?;
    let db = super::db::open(global).await?;
    let mut api = ApiConfig::new(
        deployment.chain_id,
        args.domain
            .clone()
            .unwrap_or_else(|| args.listen.to_string()),
    );
    api.max_upload_bytes = args.max_upload_bytes;
    api.rate_per_minute = args.rate_limit_per_minute;
    api.rate_burst = args.rate_limit_burst;
    api.ip_rate_per_minute = args.ip_rate_limit_per_minute;
    api.ip_rate_burst = args.ip_rate_limit_burst;
    api.client_ip_header = args.client_ip_header.clone();
    api.max_concurrent_requests = args.max_concurrent_requests.max(1);
    api.request_timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    api.quotas = args.quotas.quotas();
    api.siwe.session_ttl = Duration::from_secs(args.session_ttl_secs.max(60));
    api.signature_ttl = Duration::from_secs(args.signature_ttl_secs.clamp(60, 604_800));
    api.ready_max_lag = args.ready_max_lag;
    api.public_rpc_url = args
        .public_rpc_url
        .clone()
        .or_else(|| loopback_http(&args.chain.rpc_url()));
    api.dev_wallet = args.dev_wallet;
    if args.dev_wallet && api.public_rpc_url.is_none() {
        tracing::warn!(
            "--dev-wallet needs a browser-reachable --public-rpc-url (the --rpc-url is not local http): the web UI offers no dev accounts"
        );
    }
    api.worker_slots = args.workers;
    api.settle_every_secs = (args.settle_every_secs > 0).then_some(args.settle_every_secs);
    let indexer = (!args.no_index).then(|| {
        let mut c = IndexerConfig::new(args.chain.rpc_url());
        c.confirmations = args.confirmations;
        c.poll_interval = Duration::from_millis(args.poll_interval_ms.max(1));
        c
    });
    let workers = WorkerConfig {
        heartbeat: Duration::from_secs(args.job_heartbeat_secs.max(1)),
        stale_after: Duration::from_secs(
            args.job_stale_secs.max(3 * args.job_heartbeat_secs.max(1)),
        ),
        ..WorkerConfig::default()
    };
    let cfg = ServeConfig {
        listen: args.listen,
        api,
        indexer,
        workers,
        worker_slots: args.workers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        confirm_timeout: Duration::from_secs(args.confirm_timeout_secs.max(1)),
        training: TrainSettings::new(global.data_dir(), &args.device),
        inference,
        settlement: (args.settle_every_secs > 0).then(|| {
            (
                args.settle.config(),
                Duration::from_secs(args.settle_every_secs),
            )
        }),
        settler,
        send_policy: args.settle.send_policy(),
    };
    // fail at start, not at the first job, on a device this build cannot use
    openledger_model::device(&args.device)?;
    crate::serve::run(
        cfg,
        db.pool.clone(),
        deployment,
        chain,
        super::shutdown_signal(),
    )
    .await
    .context("serve")?;
    Ok(())
}

/// The settler's own connection for `--settle-every-secs`: its key when one is given (never the daemon's own
/// key outside a devnet), the daemon's key on a devnet otherwise (`None`), and a refusal on any other chain.
async fn settler_for(
    args: &ServeArgs,
    chain: &Chain,
    devnet: bool,
    deployment: &openledger_chain::Deployment,
) -> anyhow::Result<Option<Chain>> {
    if args.settle_every_secs == 0 {
        return Ok(None);
    }
    let key = args.settler_key.load()?;
    let Some(key) = key else {
        if devnet {
            return Ok(None);
        }
        anyhow::bail!(
            "--settle-every-secs outside a local devnet needs a settler key of its own \
             (OPENLEDGER_SETTLER_PRIVATE_KEY or --settler-keystore): the daemon's key relays and sponsors from \
             an internet-facing host and must not also propose reward roots"
        );
    };
    if !devnet && chain.signer() == Some(key.address()) {
        anyhow::bail!(
            "the settler key is the daemon's own key ({:#x}): outside a local devnet give the settler a key \
             of its own",
            key.address()
        );
    }
    tracing::info!(settler = %key.address(), "settling from the settler key");
    Ok(Some(
        Chain::connect(
            &args.chain.rpc_url(),
            deployment,
            Some(key),
            Duration::from_secs(30),
        )
        .await?,
    ))
}

/// `url` when it is http(s) on a loopback host (a local devnet), which is safe to show browsers.
fn loopback_http(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    local.then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::loopback_http;

    #[test]
    fn only_local_rpc_urls_are_published_by_default() {
        for local in [
            "http://127.0.0.1:8545",
            "http://localhost:8545/",
            "https://[::1]:8545",
            "http://127.0.0.2",
        ] {
            assert_eq!(loopback_http(local).as_deref(), Some(local), "{local}");
        }
        for remote in [
            "https://eth.example.com/v2/SECRET",
            "http://10.0.0.5:8545",
            "ws://127.0.0.1:8545",
            "http://localhost.evil.com:8545",
            "http://user:pw@example.com:8545",
        ] {
            assert_eq!(loopback_http(remote), None, "{remote}");
        }
    }
}
