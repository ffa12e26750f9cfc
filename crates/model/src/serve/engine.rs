//! The serving engine: one thread owns the model and runs continuous batching; requests arrive over a
//! channel and results leave through each request's sink, so callers (the async API) never block on it.
//!
//! Each iteration admits waiting requests while there is room (sequences, KV budget, distinct adapters,
//! adapter resident), then runs one batched step: a decode token for every running sequence plus prefill
//! chunks up to the token budget. Adapters missing from the cache load on a separate thread; their
//! requests wait while the others keep decoding.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::adapter::{AdapterCache, AdapterRef, InsertError, ServedAdapter};
use super::constraint::Constraint;
use super::forward::{Backend, SeqStep};
use super::sampling::{Sampler, SamplingParams, TokenLogprobs};
use super::text::TextStream;
use crate::error::ModelError;
use crate::tokenizer::TextTokenizer;

/// Engine limits. Defaults suit a 2-core machine and a 135M model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub max_seqs: usize,
    /// Prompt tokens processed per step across all sequences (decode tokens always fit).
    pub max_batch_tokens: usize,
    /// Distinct adapters in one batch.
    pub max_active_adapters: usize,
    /// Host memory for resident adapters.
    pub adapter_cache_bytes: usize,
    /// Requests waiting or running; beyond it `submit` answers `Busy`.
    pub max_queue: usize,
    /// Memory for KV caches (host memory; the device backend allocates it on its device, in whole blocks):
    /// a request reserves `prompt + max_tokens` positions when admitted.
    pub kv_cache_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_new_tokens: usize,
}

/// Sequences decoded together in one batch, by default.
pub const DEFAULT_MAX_SEQS: usize = 32;
/// Prompt tokens processed per batched step, by default.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 256;
/// Distinct adapters in one batch, by default (LoRAX's `--max-active-adapters`).
pub const DEFAULT_MAX_ACTIVE_ADAPTERS: usize = 128;
/// Memory for resident adapters, MiB, by default.
pub const DEFAULT_ADAPTER_CACHE_MB: usize = 1024;
/// Requests waiting or running, by default.
pub const DEFAULT_MAX_QUEUE: usize = 256;
/// Memory for KV caches, MiB, by default.
pub const DEFAULT_KV_CACHE_MB: usize = 2048;
/// The largest `max_tokens` a request may ask for, by default.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 4096;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_seqs: DEFAULT_MAX_SEQS,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            max_active_adapters: DEFAULT_MAX_ACTIVE_ADAPTERS,
            adapter_cache_bytes: DEFAULT_ADAPTER_CACHE_MB << 20,
            max_queue: DEFAULT_MAX_QUEUE,
            kv_cache_bytes: DEFAULT_KV_CACHE_MB << 20,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
        }
    }
}

/// Interactive requests are admitted before batch-job ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Interactive,
    Batch,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model's end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the model's context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    /// From submission to admission (adapter load and queueing included).
    pub queued: Duration,
    /// From submission to the first token.
    pub first_token: Duration,
    pub total: Duration,
    /// Each generated token's log-probabilities, when the request asked for them (`SamplingParams::logprobs`).
    pub logprobs: Vec<TokenLogprobs>,
}

/// What a request's sink receives, in order: `Started`, `Token`s, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    Started,
    /// A sampled token (`None`: text held back for stop sequences, released at the end) and the text it
    /// made showable.
    Token {
        id: Option<u32>,
        text: String,
        /// The token's log-probabilities, when the request asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    Done(Finished),
    Failed(String),
}

/// Receives a request's events on the engine thread; returning `false` (the client went away) drops the
/// sequence and frees its cache. The engine drops a request's sink only after it has ended the request
/// (freed its place in the queue and its cache), whichever way it ended.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// One generation request.
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// `None`: the base model alone.
    pub adapter: Option<AdapterRef>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Generate `max_tokens` even past the model's EOS (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// A grammar the output must follow (structured outputs); the sequence ends when it is complete.
    pub constraint: Option<Constraint>,
    pub priority: Priority,
    pub sink: Sink,
}

impl std::fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateRequest")
            .field("prompt_tokens", &self.prompt.len())
            .field("adapter", &self.adapter)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: this many requests are waiting or running.
    #[error("the engine is at capacity ({0} requests waiting or running)")]
    Busy(usize),
    #[error(transparent)]
    Invalid(ModelError),
    #[error("the engine has stopped")]
    Stopped,
}

/// Counters, readable from any thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub adapter_loads: AtomicU64,
    pub adapter_load_failures: AtomicU64,
    /// Sum of load times, microseconds.
    pub adapter_load_micros: AtomicU64,
    pub resident_adapters: AtomicUsize,
    pub resident_adapter_bytes: AtomicUsize,
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
}

enum Cmd {
    Submit(Box<GenerateRequest>, Instant),
    Loaded(String, Result<Arc<ServedAdapter>, String>, Duration),
    /// Adapters made ahead of time (benchmarks, tests): resident without touching the disk.
    Preload(Vec<Arc<ServedAdapter>>),
}

/// Handle to the engine thread; dropping every handle stops it once running work is done.
pub struct Engine {
    tx: Mutex<mpsc::Sender<Cmd>>,
    in_flight: Arc<AtomicUsize>,
    pub stats: Arc<Stats>,
    cfg: EngineConfig,
    context: usize,
    vocab: usize,
    kv_bytes_per_token: usize,
    /// Tokens that end a sequence (the model's EOS, and for chat models the end-of-turn token).
    pub eos: Vec<u32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl Engine {
    /// Starts the engine thread (and its adapter loader) on `model` (any [`Backend`]: the int8
    /// `ServingModel`, or a `DeviceModel` on a GPU).
    pub fn start<B: Backend>(
        mut model: B,
        tokenizer: TextTokenizer,
        cfg: EngineConfig,
    ) -> std::io::Result<Engine> {
        model.prepare(&cfg).map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::channel();
        let (load_tx, load_rx) = mpsc::channel::<AdapterRef>();
        let stats = Arc::new(Stats::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let eos = tokenizer.stop_ids();
        let context = model.config().max_position_embeddings;
        let vocab = model.config().vocab_size;
        let kv_bytes_per_token = model.kv_bytes_per_token();
        let model_cfg = model.config().clone();
        let back = tx.clone();
        std::thread::Builder::new()
            .name("adapter-loader".into())
            .spawn(move || {
                for r in load_rx {
                    let t0 = Instant::now();
                    let res = ServedAdapter::load(&r, &model_cfg)
                        .map(Arc::new)
                        .map_err(|e| e.to_string());
                    if back.send(Cmd::Loaded(r.id, res, t0.elapsed())).is_err() {
                        return;
                    }
                }
            })?;
        let kv_budget_tokens = model.reserve_tokens(cfg.kv_cache_bytes / kv_bytes_per_token.max(1));
        let mut state = State {
            model,
            tokenizer,
            cfg: cfg.clone(),
            eos: eos.clone(),
            cache: AdapterCache::new(cfg.adapter_cache_bytes),
            waiting: [VecDeque::new(), VecDeque::new()],
            running: Vec::new(),
            loading: HashSet::new(),
            staged: HashMap::new(),
            kv_budget_tokens,
            kv_reserved: 0,
            load_tx,
            stats: stats.clone(),
            in_flight: in_flight.clone(),
        };
        std::thread::Builder::new()
            .name("serve-engine".into())
            .spawn(move || state.run(rx))?;
        Ok(Engine {
            tx: Mutex::new(tx),
            in_flight,
            stats,
            cfg,
            context,
            vocab,
            kv_bytes_per_token,
            eos,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The width of the model's logits (token ids below it can be sampled).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Requests waiting or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a request of this shape would be accepted: prompt and `max_tokens` within the context and
    /// the KV budget, sampling values in range. `submit` checks the same; callers that must act before
    /// submitting (take a payment) check first.
    pub fn check(
        &self,
        prompt_len: usize,
        max_tokens: usize,
        sampling: &SamplingParams,
    ) -> Result<(), ModelError> {
        let inv = |name, reason: String| Err(ModelError::invalid(name, reason));
        if prompt_len == 0 {
            return inv("prompt", "the prompt has no tokens".into());
        }
        if prompt_len >= self.context {
            return inv(
                "prompt",
                format!(
                    "{prompt_len} tokens; the model's context is {} tokens",
                    self.context
                ),
            );
        }
        if max_tokens == 0 || max_tokens > self.cfg.max_new_tokens {
            return inv(
                "max_tokens",
                format!("{max_tokens} (must be 1..={})", self.cfg.max_new_tokens),
            );
        }
        if prompt_len + max_tokens > self.context {
            return inv(
                "max_tokens",
                format!(
                    "{prompt_len} prompt tokens + max_tokens {max_tokens} exceed the model's context of {} tokens",
                    self.context
                ),
            );
        }
        let need = (prompt_len + max_tokens) * self.kv_bytes_per_token;
        if need > self.cfg.kv_cache_bytes {
            return inv(
                "max_tokens",
                format!(
                    "prompt + max_tokens need {} MB of KV cache; this server has {} MB",
                    need >> 20,
                    self.cfg.kv_cache_bytes >> 20
                ),
            );
        }
        sampling.validate()
    }

    /// Checks the request (`check`), then queues it.
    pub fn submit(&self, req: GenerateRequest) -> Result<(), SubmitError> {
        self.check(req.prompt.len(), req.max_tokens, &req.sampling)
            .map_err(SubmitError::Invalid)?;
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.max_queue {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Busy(n));
        }
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let tx = self.tx.lock().map_err(|_| SubmitError::Stopped)?;
        tx.send(Cmd::Submit(Box::new(req), Instant::now()))
            .map_err(|_| {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                SubmitError::Stopped
            })
    }

    /// Makes adapters resident without reading them from disk (benchmarks and tests).
    pub fn preload(&self, adapters: Vec<Arc<ServedAdapter>>) -> Result<(), SubmitError> {
        let tx = self.tx.lock().map_err(|_| SubmitError::Stopped)?;
        tx.send(Cmd::Preload(adapters))
            .map_err(|_| SubmitError::Stopped)
    }
}

struct Pending {
    req: Box<GenerateRequest>,
    submitted: Instant,
    /// The cache lookup was counted (a hit or a miss).
    counted: bool,
}

struct Running<C> {
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    generated: Vec<u32>,
    max_tokens: usize,
    cache: C,
    adapter: Option<Arc<ServedAdapter>>,
    sampler: Sampler,
    constraint: Option<Constraint>,
    logprobs: Vec<TokenLogprobs>,
    text: TextStream,
    sink: Sink,
    reserved: usize,
    ignore_eos: bool,
    submitted: Instant,
    queued: Duration,
    first_token: Option<Duration>,
}

struct State<B: Backend> {
    model: B,
    tokenizer: TextTokenizer,
    cfg: EngineConfig,
    eos: Vec<u32>,
    cache: AdapterCache,
    /// Interactive, then batch.
    waiting: [VecDeque<Pending>; 2],
    running: Vec<Running<B::Cache>>,
    loading: HashSet<String>,
    /// Loaded adapters waiting for room in the cache.
    staged: HashMap<String, Arc<ServedAdapter>>,
    kv_budget_tokens: usize,
    kv_reserved: usize,
    load_tx: mpsc::Sender<AdapterRef>,
    stats: Arc<Stats>,
    in_flight: Arc<AtomicUsize>,
}

enum Outcome {
    Continue,
    Finish(FinishReason),
    Cancelled,
    Failed(String),
}

impl<B: Backend> State<B> {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            if self.running.is_empty() {
                // requests that waited for the last sequences to finish start now
                self.admit();
            }
            if self.running.is_empty() {
                // nothing to decode: sleep until a request or a load arrives
                match rx.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.running.is_empty() && self.waiting.iter().all(|w| w.is_empty()) {
                            return;
                        }
                        break;
                    }
                }
            }
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn handle(&mut self, c: Cmd) {
        match c {
            Cmd::Submit(req, submitted) => {
                let q = match req.priority {
                    Priority::Interactive => 0,
                    Priority::Batch => 1,
                };
                self.waiting[q].push_back(Pending {
                    req,
                    submitted,
                    counted: false,
                });
            }
            Cmd::Loaded(id, res, took) => {
                self.loading.remove(&id);
                match res {
                    Ok(a) => {
                        self.stats.adapter_loads.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .adapter_load_micros
                            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                        tracing::debug!(adapter = %id, ms = took.as_millis(), "adapter loaded");
                        self.staged.insert(id, a);
                    }
                    Err(e) => {
                        self.stats
                            .adapter_load_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(adapter = %id, error = %e, "adapter load failed");
                        let msg = format!("adapter {id} cannot be loaded: {e}");
                        self.fail_waiting(&id, &msg);
                    }
                }
            }
            Cmd::Preload(list) => {
                for a in list {
                    if let Err(e) = self.cache.insert(a) {
                        tracing::warn!(?e, "preload: adapter not resident");
                    }
                }
            }
        }
    }

    fn fail_waiting(&mut self, id: &str, msg: &str) {
        for q in &mut self.waiting {
            let mut keep = VecDeque::with_capacity(q.len());
            for mut p in q.drain(..) {
                if p.req.adapter.as_ref().is_some_and(|a| a.id == id) {
                    (p.req.sink)(Event::Failed(msg.to_string()));
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                } else {
                    keep.push_back(p);
                }
            }
            *q = keep;
        }
    }

    fn active_adapters(&self) -> HashSet<String> {
        self.running
            .iter()
            .filter_map(|r| r.adapter.as_ref().map(|a| a.id.clone()))
            .collect()
    }

    /// Moves waiting requests into the batch while they fit.
    fn admit(&mut self) {
        let mut active = self.active_adapters();
        for q in 0..2 {
            let mut i = 0;
            while i < self.waiting[q].len() && self.running.len() < self.cfg.max_seqs {
                let reserve = {
                    let p = &self.waiting[q][i];
                    self.model
                        .reserve_tokens(p.req.prompt.len() + p.req.max_tokens)
                };
                if self.kv_reserved + reserve > self.kv_budget_tokens {
                    // first come, first served: a large request is not overtaken forever
                    break;
                }
                let adapter = match self.waiting[q][i].req.adapter.clone() {
                    None => None,
                    Some(r) => {
                        if !active.contains(&r.id) && active.len() >= self.cfg.max_active_adapters {
                            i += 1;
                            continue;
                        }
                        match self.resident(&r, q, i) {
                            Resident::Yes(a) => Some(a),
                            Resident::Wait => {
                                i += 1;
                                continue;
                            }
                            Resident::Failed(msg) => {
                                if let Some(mut p) = self.waiting[q].remove(i) {
                                    (p.req.sink)(Event::Failed(msg));
                                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                                }
                                continue;
                            }
                        }
                    }
                };
                let Some(p) = self.waiting[q].remove(i) else {
                    break;
                };
                let mut req = p.req;
                if !(req.sink)(Event::Started) {
                    if let Some(a) = &adapter {
                        self.cache.release(&a.id);
                    }
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let cache = match self.model.new_cache(reserve) {
                    Ok(c) => c,
                    Err(e) => {
                        (req.sink)(Event::Failed(format!("no KV cache: {e}")));
                        if let Some(a) = &adapter {
                            self.cache.release(&a.id);
                        }
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                };
                if let Some(a) = &adapter {
                    active.insert(a.id.clone());
                }
                self.kv_reserved += reserve;
                let req = *req;
                self.stats
                    .prompt_tokens
                    .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
                self.running.push(Running {
                    cache,
                    sampler: Sampler::new(req.sampling, &req.prompt),
                    constraint: req.constraint,
                    logprobs: Vec::new(),
                    text: TextStream::new(req.stop),
                    prompt: req.prompt,
                    fed: 0,
                    generated: Vec::new(),
                    max_tokens: req.max_tokens,
                    adapter,
                    sink: req.sink,
                    reserved: reserve,
                    ignore_eos: req.ignore_eos,
                    submitted: p.submitted,
                    queued: p.submitted.elapsed(),
                    first_token: None,
                });
            }
        }
    }

    fn resident(&mut self, r: &AdapterRef, q: usize, i: usize) -> Resident {
        let first_look = !self.waiting[q][i].counted;
        self.waiting[q][i].counted = true;
        if first_look {
            if let Some(a) = self.cache.acquire(&r.id) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Resident::Yes(a);
            }
            self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        } else if let Some(a) = self.cache.pin(&r.id) {
            return Resident::Yes(a);
        }
        if let Some(a) = self.staged.get(&r.id).cloned() {
            return match self.cache.insert(a) {
                Ok(()) => {
                    self.staged.remove(&r.id);
                    match self.cache.pin(&r.id) {
                        Some(a) => Resident::Yes(a),
                        None => Resident::Wait,
                    }
                }
                Err(InsertError::Full) => Resident::Wait,
                Err(InsertError::TooLarge { bytes, budget }) => {
                    self.staged.remove(&r.id);
                    Resident::Failed(format!(
                        "adapter {} needs {} MB, more than the adapter cache's {} MB",
                        r.id,
                        bytes >> 20,
                        budget >> 20
                    ))
                }
            };
        }
        if self.loading.insert(r.id.clone()) && self.load_tx.send(r.clone()).is_err() {
            return Resident::Failed("the adapter loader has stopped".into());
        }
        Resident::Wait
    }

    fn publish(&self) {
        let (n, bytes) = self.cache.usage();
        self.stats.resident_adapters.store(n, Ordering::Relaxed);
        self.stats
            .resident_adapter_bytes
            .store(bytes, Ordering::Relaxed);
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.stats.waiting.store(
            self.waiting.iter().map(|w| w.len()).sum(),
            Ordering::Relaxed,
        );
    }

    fn step(&mut self) {
        let mut budget = self.cfg.max_batch_tokens.max(1);
        // decode tokens first (they never wait), then prompt chunks with what is left of the budget
        let mut plan: Vec<(usize, usize, usize)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            if r.fed == r.prompt.len() {
                plan.push((i, 0, 1));
                budget = budget.saturating_sub(1);
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            if r.fed < r.prompt.len() && budget > 0 {
                let n = (r.prompt.len() - r.fed).min(budget);
                budget -= n;
                plan.push((i, r.fed, n));
            }
        }
        plan.sort_unstable();
        let mut want = Vec::with_capacity(plan.len());
        let result = {
            let mut planned = plan.iter().peekable();
            let mut seqs = Vec::with_capacity(plan.len());
            for (i, r) in self.running.iter_mut().enumerate() {
                let Some(&&(j, from, n)) = planned.peek() else {
                    break;
                };
                if j != i {
                    continue;
                }
                planned.next();
                let decoding = r.fed == r.prompt.len();
                let tokens = if decoding {
                    &r.generated[r.generated.len() - 1..]
                } else {
                    &r.prompt[from..from + n]
                };
                let want_logits = decoding || from + n == r.prompt.len();
                want.push((i, want_logits, if decoding { 0 } else { n }));
                seqs.push(SeqStep {
                    tokens,
                    cache: &mut r.cache,
                    adapter: r.adapter.as_deref(),
                    want_logits,
                });
            }
            self.model.step(&mut seqs)
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "engine step failed; failing its sequences");
                let msg = format!("inference failed: {e}");
                for mut r in std::mem::take(&mut self.running) {
                    (r.sink)(Event::Failed(msg.clone()));
                    self.end(r);
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        let mut logits = logits.into_iter();
        let mut outcomes = Vec::with_capacity(want.len());
        for (i, want_logits, fed) in want {
            let r = &mut self.running[i];
            r.fed += fed;
            if !want_logits {
                continue;
            }
            let Some(mut row) = logits.next() else {
                break;
            };
            // log-probabilities are the model's own: taken before the grammar and the sampler change the row
            let raw = r.sampler.params().logprobs.map(|k| (row.clone(), k));
            if let Some(c) = r.constraint.as_mut()
                && let Err(e) = c.mask(&mut row)
            {
                outcomes.push((i, Outcome::Failed(format!("structured output failed: {e}"))));
                continue;
            }
            let tok = r.sampler.sample(&mut row);
            if let Some(c) = r.constraint.as_mut()
                && let Err(e) = c.consume(tok)
            {
                outcomes.push((i, Outcome::Failed(format!("structured output failed: {e}"))));
                continue;
            }
            let lp = raw.map(|(raw, k)| TokenLogprobs::from_logits(&raw, tok, k));
            outcomes.push((i, self.after_token(i, tok, lp)));
        }
        // remove finished sequences, highest index first so the others keep their places
        outcomes.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, o) in outcomes {
            match o {
                Outcome::Continue => {}
                Outcome::Finish(reason) => {
                    let mut r = self.running.swap_remove(i);
                    let tail = r.text.flush();
                    if !tail.is_empty() {
                        (r.sink)(Event::Token {
                            id: None,
                            text: tail,
                            logprobs: None,
                        });
                    }
                    let fin = Finished {
                        reason,
                        prompt_tokens: r.prompt.len(),
                        tokens: std::mem::take(&mut r.generated),
                        text: r.text.text().to_string(),
                        queued: r.queued,
                        first_token: r.first_token.unwrap_or_default(),
                        total: r.submitted.elapsed(),
                        logprobs: std::mem::take(&mut r.logprobs),
                    };
                    (r.sink)(Event::Done(fin));
                    self.stats.completed.fetch_add(1, Ordering::Relaxed);
                    self.end(r);
                }
                Outcome::Cancelled => {
                    let r = self.running.swap_remove(i);
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.end(r);
                }
                Outcome::Failed(m) => {
                    let mut r = self.running.swap_remove(i);
                    (r.sink)(Event::Failed(m));
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.end(r);
                }
            }
        }
    }

    /// Records a sampled token and decides whether the sequence goes on.
    fn after_token(&mut self, i: usize, tok: u32, logprobs: Option<TokenLogprobs>) -> Outcome {
        let context = self.model.config().max_position_embeddings;
        let r = &mut self.running[i];
        if r.first_token.is_none() {
            r.first_token = Some(r.submitted.elapsed());
        }
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if !r.ignore_eos && self.eos.contains(&tok) {
            return Outcome::Finish(FinishReason::Stop);
        }
        r.generated.push(tok);
        let text = match r.text.push(&self.tokenizer, tok) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "detokenization failed");
                String::new()
            }
        };
        if let Some(lp) = &logprobs {
            r.logprobs.push(lp.clone());
        }
        if !(r.sink)(Event::Token {
            id: Some(tok),
            text,
            logprobs,
        }) {
            return Outcome::Cancelled;
        }
        // a stop sequence, or a grammar with nothing left to allow (its output is complete)
        if r.text.stopped() || r.constraint.as_ref().is_some_and(|c| c.is_stopped()) {
            return Outcome::Finish(FinishReason::Stop);
        }
        if r.generated.len() >= r.max_tokens || B::cache_len(&r.cache) + 1 >= context {
            return Outcome::Finish(FinishReason::Length);
        }
        Outcome::Continue
    }

    fn end(&mut self, r: Running<B::Cache>) {
        self.kv_reserved = self.kv_reserved.saturating_sub(r.reserved);
        if let Some(a) = &r.adapter {
            self.cache.release(&a.id);
        }
        self.model.free_cache(r.cache);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Resident {
    Yes(Arc<ServedAdapter>),
    Wait,
    Failed(String),
}
