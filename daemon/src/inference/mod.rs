//! OpenLoRA serving inside the daemon: the engine on the base model (here), which model a request names
//! (`resolve`), what a request asks for (`request`), what it costs and how it is paid (`payment`,
//! `credits`), the `inferences` row that records it (`records`), batch input files (`batch`), and the
//! service that takes one request from its checks to its record (`service`, failing with `error`).
//! The HTTP side (OpenAI-compatible) is `api/openai.rs`; this module knows nothing of HTTP.
//!
//! May import `attribution`, `models`, `chain` and `common`; never `api`, `jobs` or `state`.

pub mod batch;
pub mod credits;
pub mod error;
pub mod logprobs;
pub mod payment;
pub mod records;
pub mod request;
pub mod service;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use openledger_model::serve::{
    AdapterRef, DeviceConfig, DeviceModel, Engine, EngineConfig, Grammars, ServingModel,
};
use openledger_model::{BaseModel, Device, Llama, Precision, TextTokenizer};
use sqlx::PgPool;

use crate::attribution::{AttributionConfig, Attributor};
use crate::models;

/// Price per 1,000 tokens (OPEN wei, 0.001 OPEN) of models whose developer set none, by default.
pub const DEFAULT_PRICE_PER_1K: U256 = U256::from_limbs([1_000_000_000_000_000, 0, 0, 0]);
/// Seconds a pay-first request waits for the indexer to see its payment, by default.
pub const DEFAULT_PAYMENT_WAIT_SECS: u64 = 10;
/// Blocks an `InferencePaid` must be under before it serves a pay-first request, by default outside local
/// devnets (on a devnet: 0). About 20 s on an OP Stack chain.
pub const DEFAULT_PAYMENT_CONFIRMATIONS: u64 = 10;
/// `max_tokens` of requests that give none, by default.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Where the served model runs, by default.
pub const DEFAULT_SERVE_DEVICE: &str = "cpu";
/// Lines of one batch job in flight at once, by default.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 8;
/// Seconds an interactive inference's row stays its process's without a renewal (renewed every third of
/// it); a row whose process died is failed by any live `serve` after this.
pub const DEFAULT_INFERENCE_LEASE_SECS: u64 = 30;

/// Serving settings (`openledger serve --help` documents the flags).
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// The base model to serve: an id from `/api/base-models` or a path [default: the first one installed].
    pub model: Option<String>,
    /// How the base weights are held for serving [default: int8, the engine's fast batched matmul].
    pub precision: Precision,
    /// `cpu`, or `cuda:N`: bf16 weights (f32 with `Precision::F32`) and a paged KV cache on that GPU.
    pub device: String,
    pub engine: EngineConfig,
    /// Price per 1,000 tokens (OPEN wei) of models whose developer set none.
    pub default_price_per_1k: U256,
    /// Pay from the daemon's key for requests that bring no payment of their own (the dev stack), up to
    /// `sponsor_limits`, and never above the default price.
    pub sponsor: bool,
    pub sponsor_limits: payment::SponsorLimits,
    /// How long a pay-first request waits for the indexer to see its payment.
    pub payment_wait: Duration,
    /// Blocks the payment's block must be under (counting itself) before it serves: 1 = mined, 0 = no wait.
    pub payment_confirmations: u64,
    /// `max_tokens` when a request gives none (capped by what the context leaves).
    pub default_max_tokens: usize,
    /// Lines of one batch job in flight at once (the rest of `engine.max_seqs` stays for interactive calls).
    pub batch_concurrency: usize,
    /// Proof of Attribution of every inference of a trained adapter.
    pub attribution: AttributionConfig,
    /// How long an interactive inference's row stays this process's without a renewal.
    pub lease: Duration,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            model: None,
            precision: Precision::Int8,
            device: DEFAULT_SERVE_DEVICE.into(),
            engine: EngineConfig::default(),
            default_price_per_1k: DEFAULT_PRICE_PER_1K,
            sponsor: false,
            sponsor_limits: payment::SponsorLimits::default(),
            payment_wait: Duration::from_secs(DEFAULT_PAYMENT_WAIT_SECS),
            payment_confirmations: 0,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            batch_concurrency: DEFAULT_BATCH_CONCURRENCY,
            lease: Duration::from_secs(DEFAULT_INFERENCE_LEASE_SECS),
            attribution: AttributionConfig::default(),
        }
    }
}

/// The loaded engine and what requests are checked against.
pub struct Inference {
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    /// Compiles `response_format` schemas into per-step token masks (`None`: this tokenizer's vocabulary
    /// cannot be read as bytes, so structured outputs are refused).
    pub grammars: Option<Grammars>,
    /// The base model's id (`/v1/models` lists it) and content hash (adapters must be trained on it).
    pub base_id: String,
    pub base_hash: String,
    pub cfg: InferenceConfig,
    pub started: time::OffsetDateTime,
    /// Pays for sponsored requests (`cfg.sponsor`).
    pub sponsor: payment::Sponsor,
    /// Attributes inferences of trained adapters.
    pub attribution: Arc<Attributor>,
    /// This process, as the `lease_owner` of the interactive inferences it answers.
    pub lease_owner: String,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference")
            .field("base_id", &self.base_id)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no base model to serve: install one under {0} (scripts/fetch-model.sh) or pass --serve-model"
    )]
    NoModel(PathBuf),
    #[error("base model {0:?} is not installed (see `openledger models list`)")]
    Unknown(String),
    #[error(transparent)]
    Model(#[from] openledger_model::ModelError),
    #[error(transparent)]
    Register(#[from] models::RegisterError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("engine thread: {0}")]
    Thread(std::io::Error),
}

impl Inference {
    /// Loads the base model (quantized weights stay quantized) and starts the engine.
    pub async fn load(
        pool: &PgPool,
        models_dir: &Path,
        cfg: InferenceConfig,
    ) -> Result<Arc<Inference>, LoadError> {
        let row = match &cfg.model {
            Some(m) if Path::new(m).exists() => {
                models::register_base_model(pool, Path::new(m)).await?
            }
            Some(m) => models::base_model(pool, m)
                .await?
                .ok_or_else(|| LoadError::Unknown(m.clone()))?,
            None => models::base_models(pool)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| LoadError::NoModel(models_dir.to_path_buf()))?,
        };
        let path = PathBuf::from(&row.path);
        let hash = row.hash.clone();
        let base = (path.clone(), hash.clone());
        let engine_cfg = cfg.engine.clone();
        let precision = cfg.precision;
        let device = cfg.device.clone();
        let (engine, tokenizer) = tokio::task::spawn_blocking(move || {
            let dev = openledger_model::device(&device)?;
            let mut base = BaseModel::load(&path, &Device::Cpu, Some(hash))?;
            if dev.is_cpu() {
                if precision == Precision::Quantized {
                    base = base.with_fast_kernels()?;
                }
                let llama = Llama::new(&base, precision, &Device::Cpu)?;
                let model = ServingModel::new(llama)?;
                let engine = Engine::start(model, base.tokenizer.clone(), engine_cfg)
                    .map_err(LoadError::Thread)?;
                return Ok::<_, LoadError>((engine, base.tokenizer));
            }
            // a GPU: the device engine, from f32 weights converted to bf16 (or kept f32)
            let mut dc = DeviceConfig::for_device(&dev);
            match precision {
                Precision::F32 => dc.dtype = openledger_model::DType::F32,
                Precision::Int8 => {}
                Precision::Quantized => {
                    return Err(LoadError::Model(openledger_model::ModelError::invalid(
                        "serve weights",
                        "native (quantized) weights are served on the CPU only; on a GPU use int8 (bf16 there) or f32",
                    )));
                }
            }
            let llama = Llama::new(&base, Precision::F32, &dev)?;
            let model = DeviceModel::new(&llama, dc)?;
            drop(llama);
            let engine = Engine::start(model, base.tokenizer.clone(), engine_cfg)
                .map_err(LoadError::Thread)?;
            Ok((engine, base.tokenizer))
        })
        .await
        .map_err(|e| LoadError::Thread(std::io::Error::other(e)))??;
        let grammars = {
            let (tokenizer, vocab) = (tokenizer.clone(), engine.vocab_size());
            tokio::task::spawn_blocking(move || Grammars::new(&tokenizer, vocab))
                .await
                .map_err(|e| LoadError::Thread(std::io::Error::other(e)))?
        };
        let grammars = match grammars {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "structured outputs (response_format) are off for this model");
                None
            }
        };
        tracing::info!(model = %row.id, context = engine.context(), "inference engine ready");
        let attribution = Arc::new(
            Attributor::new(cfg.attribution.clone(), tokenizer.clone(), base)
                .map_err(LoadError::Thread)?,
        );
        // charges an earlier process took without recording their inference
        match self::credits::refund_orphans(pool, Duration::from_secs(600)).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                refunded = n,
                "refunded inference credit of unrecorded or failed inferences"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeping inference credit"),
        }
        Ok(Arc::new(Inference {
            engine,
            tokenizer,
            grammars,
            base_id: row.id,
            base_hash: row.hash,
            cfg,
            started: time::OffsetDateTime::now_utc(),
            sponsor: payment::Sponsor::new(Duration::from_secs(60)),
            attribution,
            lease_owner: format!(
                "pid{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 6]>())
            ),
        }))
    }
}

/// What a request's `model` resolved to.
#[derive(Debug, Clone)]
pub enum Target {
    Base,
    Adapter {
        job_id: i64,
        /// `id` is the request's name for it (`ft-<job id>`).
        adapter: AdapterRef,
        /// The model id payments name on this daemon's chain (`None` until training published it there).
        model_id: Option<U256>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no model {0:?}: GET /v1/models lists the base model and every trained adapter (ft-<job id>)"
    )]
    Unknown(String),
    #[error("{name} was trained on base model {trained}, this server serves {served}")]
    WrongBase {
        name: String,
        trained: String,
        served: String,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl Inference {
    /// `chain_id`: the chain this daemon takes payments on.
    pub async fn resolve(
        &self,
        pool: &PgPool,
        model: &str,
        chain_id: u64,
    ) -> Result<Target, ResolveError> {
        if model.eq_ignore_ascii_case(&self.base_id) || model == self.base_hash {
            return Ok(Target::Base);
        }
        let job_id = model
            .strip_prefix("ft-")
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| ResolveError::Unknown(model.to_string()))?;
        let m = models::trained_model(pool, job_id)
            .await?
            .ok_or_else(|| ResolveError::Unknown(model.to_string()))?;
        if !m.base_model_hash.eq_ignore_ascii_case(&self.base_hash) {
            return Err(ResolveError::WrongBase {
                name: model.to_string(),
                trained: m.base_model.clone(),
                served: self.base_id.clone(),
            });
        }
        let here = m.chain_id == Some(chain_id as i64);
        Ok(Target::Adapter {
            job_id,
            adapter: AdapterRef {
                id: crate::models::adapter_name(job_id),
                dir: PathBuf::from(&m.dir),
                sha256: Some(m.adapter_hash.clone()),
            },
            model_id: m
                .model_id
                .as_deref()
                .filter(|_| here)
                .and_then(|s| s.parse().ok()),
        })
    }
}
