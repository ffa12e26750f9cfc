//! Proof of Attribution in the daemon: for an inference of a trained adapter, the spans of its output found
//! in the adapter's training data, the training examples its gradient points at, the payout weights over
//! contributions, and the commitment that lets anyone recompute them (`openledger attribution verify`).
//!
//! The methods live in `openledger_attribution`; here are the model's artifacts (opened once, checked
//! against its manifest), the gradient worker (the f32 model on its own thread), the record and its
//! storage (`store`), the parameters a record names (`params`).
//!
//! May import `models` and `common` (and the model and attribution crates); never `inference`, `jobs`,
//! `training` or `api`.

pub mod build;
pub mod params;
pub mod segments;
pub mod store;
pub mod verify;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openledger_attribution::{
    CombineParams, GradParams, GradScores, GradStore, SCALE, Span, SpanIndex, SpanParams, SpanSet,
    combine, mean, method_of,
};
use openledger_model::{TextTokenizer, WordBreaks};
use serde_json::{Value, json};

use sqlx::PgPool;

use segments::{FileRef, file_sha256};

use crate::common::{canonical_json, sha256_hex};

pub use worker::GradientWorker;

/// When the gradient part of an attribution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GradientMode {
    /// Before the response: the completion carries its final weights (latency: about one backward pass).
    Sync,
    /// After the response, by a background task: the completion carries the spans, the record completes
    /// within seconds (GET /api/inferences/{id}/attribution).
    Queued,
    /// Span evidence only.
    Off,
}

/// Attribution settings (`openledger serve --help`); all but `gradient` are part of every record.
#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// When the gradient part runs [default: sync].
    pub gradient: GradientMode,
    pub span: SpanParams,
    /// Only `damping` and `top_k` are read here: the projection's `k` and seed are the model's own (its
    /// manifest), as they must match its stored training gradients.
    pub grad: GradParams,
    pub combine: CombineParams,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            gradient: GradientMode::Sync,
            span: SpanParams::default(),
            grad: GradParams::default(),
            combine: CombineParams::default(),
        }
    }
}

/// Why an inference could not be attributed. Every one of them flags the inference: it is never paid out
/// as if it had no attributable data.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("model ft-{0} is not a trained model here")]
    UnknownModel(i64),
    #[error("model ft-{job}: {reason}")]
    Missing { job: i64, reason: String },
    #[error(
        "model ft-{job}: {file} does not match its hash in the manifest (expected {want}, found {got})"
    )]
    HashMismatch {
        job: i64,
        file: String,
        want: String,
        got: String,
    },
    #[error("the output is empty: there is nothing to attribute")]
    EmptyOutput,
    #[error("choice {0}'s output is empty: there is nothing to attribute")]
    EmptyChoice(usize),
    #[error(transparent)]
    Span(#[from] openledger_attribution::SpanError),
    #[error("gradient: {0}")]
    Gradient(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A training source as records name it.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub datanet_id: String,
    pub contribution_id: String,
    pub contributor: String,
}

/// A model's gradient store (its segments' rows, in order) and what its gradients were taken under.
#[derive(Debug)]
pub struct GradArtifacts {
    pub store: GradStore,
    /// The projection's per-matrix dimensions and seed.
    pub k: usize,
    pub seed: u64,
    /// Each segment's gradient file.
    pub sha256: Vec<String>,
    /// The adapter gradients are taken under: `Lora::init(lora, adapter_seed)`.
    pub lora: openledger_model::LoraConfig,
    pub adapter_seed: u64,
}

/// A trained model's attribution files, opened and checked against its manifest.
#[derive(Debug)]
pub struct Artifacts {
    pub job_id: i64,
    pub manifest_sha256: String,
    pub adapter_sha256: String,
    /// Every segment's span index, queried as one.
    pub span: SpanSet,
    /// Each segment's span index file.
    pub span_sha256: Vec<String>,
    /// `None` for models trained before gradient attribution (their records say so).
    pub grads: Option<GradArtifacts>,
    pub sources: HashMap<usize, SourceRow>,
}

/// SHA-256 of token ids as little-endian u32s.
pub fn tokens_sha256(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// A model's folder, whose files are opened only once they hash as its manifest lists them.
struct Folder<'a> {
    job: i64,
    dir: &'a Path,
}

impl Folder<'_> {
    fn missing(&self, reason: String) -> AttributionError {
        AttributionError::Missing {
            job: self.job,
            reason,
        }
    }

    /// `f`'s path in the folder, once the file hashes to `f.sha256`.
    fn checked(&self, f: &FileRef) -> Result<PathBuf, AttributionError> {
        let path = self.dir.join(&f.file);
        if f.file.contains('/') || f.file.contains('\\') {
            return Err(self.missing(format!("unexpected file name {:?}", f.file)));
        }
        let got = file_sha256(&path).map_err(|e| self.missing(e.to_string()))?;
        if !got.eq_ignore_ascii_case(&f.sha256) {
            return Err(AttributionError::HashMismatch {
                job: self.job,
                file: f.file.clone(),
                want: f.sha256.clone(),
                got,
            });
        }
        Ok(path)
    }

    /// The manifest, once its bytes hash to `sha256`.
    fn manifest(&self, sha256: &str) -> Result<Value, AttributionError> {
        let mpath = self.dir.join("manifest.json");
        let mbytes =
            std::fs::read(&mpath).map_err(|e| self.missing(format!("{}: {e}", mpath.display())))?;
        let got = sha256_hex(&mbytes);
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(AttributionError::HashMismatch {
                job: self.job,
                file: "manifest.json".into(),
                want: sha256.into(),
                got,
            });
        }
        serde_json::from_slice(&mbytes).map_err(|e| self.missing(format!("manifest.json: {e}")))
    }
}

impl Artifacts {
    /// Opens `job`'s files (blocking: hashing and the index's validation read them whole), each checked
    /// against its hash in the manifest.
    fn open(
        job: i64,
        dir: &Path,
        manifest_sha256: &str,
        adapter_sha256: &str,
        sources: HashMap<usize, SourceRow>,
    ) -> Result<Artifacts, AttributionError> {
        let folder = Folder { job, dir };
        let missing = |reason: String| AttributionError::Missing { job, reason };
        let checked = |f: &FileRef| folder.checked(f);
        let manifest = folder.manifest(manifest_sha256)?;
        checked(&FileRef {
            file: "adapter_model.safetensors".into(),
            sha256: adapter_sha256.into(),
        })?;
        let layout = segments::layout(&manifest).map_err(missing)?;
        let mut parts = Vec::with_capacity(layout.segments.len());
        let mut span_sha256 = Vec::new();
        let mut grads: Option<GradArtifacts> = None;
        for seg in &layout.segments {
            let span = SpanIndex::open(&checked(&seg.span)?)?;
            if span.examples() != seg.examples {
                return Err(missing(format!(
                    "{} holds {} examples, its manifest says {}",
                    seg.span.file,
                    span.examples(),
                    seg.examples
                )));
            }
            parts.push((span, seg.sources.clone()));
            span_sha256.push(seg.span.sha256.to_lowercase());
            let (Some(spec), Some(g)) = (&layout.gradients, &seg.gradients) else {
                continue;
            };
            let store = GradStore::open(&checked(g)?)
                .map_err(|e| AttributionError::Gradient(e.to_string()))?;
            if store.len() != seg.examples {
                return Err(missing(format!(
                    "{} holds {} gradients for {} examples",
                    g.file,
                    store.len(),
                    seg.examples
                )));
            }
            let all = grads.get_or_insert_with(|| GradArtifacts {
                store: GradStore::new(store.dims, store.blocks.clone()),
                k: spec.k,
                seed: spec.seed,
                sha256: Vec::new(),
                lora: spec.lora.clone(),
                adapter_seed: spec.adapter_seed,
            });
            all.store
                .extend(store, &seg.sources)
                .map_err(|e| AttributionError::Gradient(format!("{}: {e}", g.file)))?;
            all.sha256.push(g.sha256.to_lowercase());
        }
        Ok(Artifacts {
            job_id: job,
            manifest_sha256: manifest_sha256.to_lowercase(),
            adapter_sha256: adapter_sha256.to_lowercase(),
            span: SpanSet::new(parts)?,
            span_sha256,
            grads,
            sources,
        })
    }
}

/// What to do with the gradient part of one attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gradient {
    /// Compute it now.
    Run,
    /// Leave it to the queued task: the record is `pending`, without weights.
    Defer,
    /// Span evidence only (gradient attribution is off).
    Skip,
}

/// Computes attributions: artifacts cached per model, spans inline, gradients on the worker.
#[derive(Debug)]
pub struct Attributor {
    pub cfg: AttributionConfig,
    breaks: WordBreaks,
    tokenizer: TextTokenizer,
    cache: Mutex<HashMap<(i64, String), Arc<Artifacts>>>,
    worker: GradientWorker,
    /// Wakes the queued task.
    queued: tokio::sync::Notify,
}

/// Models whose artifacts stay open.
const CACHED_MODELS: usize = 32;

/// The prompt and outputs of one inference of a trained model: one output per choice (OpenAI's `n`).
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub inference_id: &'a str,
    pub job_id: i64,
    pub prompt: &'a [u32],
    pub outputs: &'a [&'a [u32]],
}

/// One output's evidence: its spans and, when computed, its loss and gradient scores.
type Evidence = (Vec<Span>, Option<(f64, GradScores)>);

impl Attributor {
    /// `base`: the base model's folder and content hash (the gradient worker loads it in f32 when first
    /// needed).
    pub fn new(
        cfg: AttributionConfig,
        tokenizer: TextTokenizer,
        base: (PathBuf, String),
    ) -> std::io::Result<Self> {
        Ok(Attributor {
            cfg,
            breaks: tokenizer.word_breaks(),
            tokenizer,
            cache: Mutex::new(HashMap::new()),
            worker: GradientWorker::start(base.0, base.1)?,
            queued: tokio::sync::Notify::new(),
        })
    }

    /// Tells the queued task that a pending record is waiting.
    pub fn wake(&self) {
        self.queued.notify_one();
    }

    /// The queued task: completes pending records (oldest first) until the process stops. Woken by
    /// `wake`, and every few seconds regardless, so records left pending by an earlier process or a
    /// failed attempt are picked up too.
    pub async fn run_queue(self: Arc<Self>, pool: PgPool) {
        const TRIES: i32 = 5;
        loop {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.queued.notified())
                .await;
            let batch = match store::pending(&pool, 16).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pending attributions");
                    continue;
                }
            };
            for (st, outputs) in batch {
                let prompt: Vec<u32> = st.prompt_tokens.iter().map(|&t| t as u32).collect();
                let outputs = store::tokens(&outputs);
                let outputs: Vec<&[u32]> = outputs.iter().map(Vec::as_slice).collect();
                let subject = Subject {
                    inference_id: &st.inference_id,
                    job_id: st.job_id,
                    prompt: &prompt,
                    outputs: &outputs,
                };
                let mut outcome = self.attribute(&pool, &subject, Gradient::Run).await;
                if let Err(AttributionError::Gradient(m)) = &outcome
                    && st.attempts + 1 < TRIES
                {
                    tracing::warn!(inference = %st.inference_id, error = %m, "gradient attribution failed; will retry");
                    // counts the attempt, keeps the record pending
                    outcome = self.attribute(&pool, &subject, Gradient::Defer).await;
                }
                let r = async {
                    let mut tx = pool.begin().await?;
                    store::save(&mut tx, &st.inference_id, st.job_id, &prompt, &outcome).await?;
                    tx.commit().await
                }
                .await;
                if let Err(e) = r {
                    tracing::warn!(inference = %st.inference_id, error = %e, "saving an attribution");
                }
            }
        }
    }

    /// The model's artifacts, opened (and checked) on first use.
    pub async fn artifacts(
        &self,
        pool: &PgPool,
        job: i64,
    ) -> Result<Arc<Artifacts>, AttributionError> {
        let m = crate::models::trained_model(pool, job)
            .await?
            .ok_or(AttributionError::UnknownModel(job))?;
        let key = (job, m.manifest_hash.to_lowercase());
        if let Some(a) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(a);
        }
        let rows: Vec<(i32, String, String, String)> = sqlx::query_as(
            "SELECT source, datanet_id::text, contribution_id::text, contributor
             FROM training_sources WHERE job_id = $1",
        )
        .bind(job)
        .fetch_all(pool)
        .await?;
        let sources = rows
            .into_iter()
            .map(|(s, d, c, a)| {
                (
                    s as usize,
                    SourceRow {
                        datanet_id: d,
                        contribution_id: c,
                        contributor: a,
                    },
                )
            })
            .collect();
        let (dir, mh, ah) = (
            PathBuf::from(&m.dir),
            m.manifest_hash.clone(),
            m.adapter_hash.clone(),
        );
        let a = tokio::task::spawn_blocking(move || Artifacts::open(job, &dir, &mh, &ah, sources))
            .await
            .map_err(|e| AttributionError::Gradient(format!("artifact thread: {e}")))??;
        let a = Arc::new(a);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHED_MODELS {
                c.clear();
            }
            c.insert(key, a.clone());
        }
        Ok(a)
    }

    /// The attribution of `s`: spans, the gradient part (as `gradient` says), weights and commitment, for
    /// each output. A deferred gradient part on a model that has a gradient store makes the record partial
    /// (`"gradient": "pending"`, no weights).
    pub async fn attribute(
        &self,
        pool: &PgPool,
        s: &Subject<'_>,
        gradient: Gradient,
    ) -> Result<Record, AttributionError> {
        match s.outputs.iter().position(|o| o.is_empty()) {
            _ if s.outputs.is_empty() => return Err(AttributionError::EmptyOutput),
            Some(_) if s.outputs.len() == 1 => return Err(AttributionError::EmptyOutput),
            Some(i) => return Err(AttributionError::EmptyChoice(i)),
            None => {}
        }
        let art = self.artifacts(pool, s.job_id).await?;
        let mut evidence: Vec<Evidence> = Vec::with_capacity(s.outputs.len());
        for output in s.outputs {
            let spans = art
                .span
                .spans_for(output, s.prompt, &self.cfg.span, &|a, b| {
                    self.breaks.between(a, b)
                })?;
            let grad = match (&art.grads, gradient) {
                (Some(g), Gradient::Run) => {
                    let (loss, v) = self
                        .worker
                        .gradient(art.job_id, g, s.prompt, output)
                        .await
                        .map_err(AttributionError::Gradient)?;
                    let params = GradParams {
                        k: g.k,
                        seed: g.seed,
                        ..self.cfg.grad.clone()
                    };
                    let scores = g
                        .store
                        .score(&v, &params)
                        .map_err(|e| AttributionError::Gradient(e.to_string()))?;
                    Some((loss, scores))
                }
                _ => None,
            };
            evidence.push((spans, grad));
        }
        let pending = art.grads.is_some() && gradient == Gradient::Defer;
        Ok(self.record(&art, s, &evidence, pending))
    }

    fn source_json(art: &Artifacts, source: usize) -> Value {
        match art.sources.get(&source) {
            Some(r) => json!({
                "source": source, "datanet_id": r.datanet_id,
                "contribution_id": r.contribution_id, "contributor": r.contributor,
            }),
            None => json!({ "source": source }),
        }
    }

    /// The hashes of everything the record was computed from (the outputs' hashes a list when there are
    /// several choices).
    fn commitment(art: &Artifacts, s: &Subject<'_>) -> Value {
        let outputs = match s.outputs {
            [one] => json!(tokens_sha256(one)),
            all => json!(all.iter().map(|o| tokens_sha256(o)).collect::<Vec<_>>()),
        };
        json!({
            "output_tokens_sha256": outputs,
            "prompt_tokens_sha256": tokens_sha256(s.prompt),
            "adapter_sha256": art.adapter_sha256,
            "manifest_sha256": art.manifest_sha256,
            "span_index_sha256": art.span_sha256,
            "gradients_sha256": art.grads.as_ref().map(|g| g.sha256.clone()),
        })
    }

    /// The gradient part: the loss and the top examples, `"pending"`, or why it was skipped.
    fn gradient_json(art: &Artifacts, grad: Option<&(f64, GradScores)>, pending: bool) -> Value {
        match (grad, pending) {
            (Some((loss, g)), _) => json!({
                "loss": loss,
                "top": g.top.iter().map(|e| {
                    let mut v = Self::source_json(art, e.source);
                    v["example"] = json!(e.example);
                    v["score"] = json!(e.score);
                    v["tracin"] = json!(e.tracin);
                    v["cosine"] = json!(e.cosine);
                    v
                }).collect::<Vec<_>>(),
            }),
            (None, true) => json!("pending"),
            (None, false) if art.grads.is_none() => {
                json!({ "skipped": "the model was trained without a gradient store" })
            }
            (None, false) => json!({ "skipped": "gradient attribution is off" }),
        }
    }

    /// One output's spans as the record lists them (`ol-attr/2`: with the tokens the prompt supplied, and
    /// `from_prompt` for a span the prompt supplied, which is not paid).
    fn spans_json(&self, art: &Artifacts, output: &[u32], spans: &[Span]) -> Vec<Value> {
        let v2 = self.cfg.span.prompt_min_len.is_some();
        spans
            .iter()
            .map(|sp| {
                let text = self
                    .tokenizer
                    .decode(&output[sp.start..sp.start + sp.len], false)
                    .unwrap_or_default();
                let mut v = json!({
                    "start": sp.start, "len": sp.len, "text": text, "count": sp.count,
                    "log_prob": sp.log_prob,
                    "contributions": sp.sources.iter().map(|&(src, occ)| {
                        let mut v = Self::source_json(art, src);
                        v["occurrences"] = json!(occ);
                        v
                    }).collect::<Vec<_>>(),
                });
                if v2 {
                    v["prompt_tokens"] = json!(sp.prompt_tokens());
                    v["from_prompt"] = json!(sp.from_prompt);
                }
                v
            })
            .collect()
    }

    /// Weights as the record lists them: per source, then what no source gets.
    fn weights_json(art: &Artifacts, sources: &[(usize, u64)], protocol: u64) -> Value {
        json!({
            "scale": SCALE,
            "no_attribution": protocol,
            "contributions": sources.iter().map(|&(src, ppm)| {
                let mut v = Self::source_json(art, src);
                v["weight"] = json!(ppm);
                v
            }).collect::<Vec<_>>(),
        })
    }

    /// The record. One output: its spans, gradient and weights at the top. Several (`n` > 1): each
    /// choice's under `choices`, and at the top the weights settlement pays by, each choice weighing an
    /// equal part of the pool (`openledger_attribution::mean`).
    fn record(
        &self,
        art: &Artifacts,
        s: &Subject<'_>,
        evidence: &[Evidence],
        pending: bool,
    ) -> Record {
        let p = &self.cfg;
        let parts: Vec<(Value, Value, Option<openledger_attribution::Weights>)> = s
            .outputs
            .iter()
            .zip(evidence)
            .map(|(output, (spans, grad))| {
                let w = (!pending)
                    .then(|| combine(output.len(), spans, grad.as_ref().map(|g| &g.1), &p.combine));
                (
                    json!(self.spans_json(art, output, spans)),
                    Self::gradient_json(art, grad.as_ref(), pending),
                    w,
                )
            })
            .collect();
        let one = |w: &openledger_attribution::Weights| {
            let mut v = Self::weights_json(art, &w.sources, w.protocol);
            v["span_strength"] = json!(w.span_strength);
            v["gradient_strength"] = json!(w.grad_strength);
            v
        };
        let mut body = json!({
            "method": method_of(&self.cfg.span),
            "inference_id": s.inference_id,
            "model": crate::models::adapter_name(s.job_id),
            "params": params::RecordParams::of(&self.cfg, art.grads.as_ref()),
            "commitment": Self::commitment(art, s),
        });
        if let [(spans, gradient, w)] = parts.as_slice() {
            body["output_tokens"] = json!(s.outputs[0].len());
            body["spans"] = spans.clone();
            body["gradient"] = gradient.clone();
            body["weights"] = w.as_ref().map_or(Value::Null, one);
        } else {
            let all: Option<Vec<openledger_attribution::Weights>> =
                parts.iter().map(|(_, _, w)| w.clone()).collect();
            body["output_tokens"] = json!(s.outputs.iter().map(|o| o.len()).collect::<Vec<_>>());
            body["choices"] = json!(
                parts
                    .iter()
                    .map(|(spans, gradient, w)| json!({
                        "spans": spans, "gradient": gradient,
                        "weights": w.as_ref().map_or(Value::Null, one),
                    }))
                    .collect::<Vec<_>>()
            );
            body["weights"] = match all {
                Some(all) => {
                    let (sources, protocol) = mean(&all);
                    let mut v = Self::weights_json(art, &sources, protocol);
                    v["choices"] = json!(all.len());
                    v
                }
                None => Value::Null,
            };
        }
        Record::new(body, pending)
    }
}

/// One attribution record (`body`, the JSON that is stored, returned and hashed), with its canonical text
/// and hash computed once.
#[derive(Debug, Clone)]
pub struct Record {
    pub body: Value,
    /// The gradient part is still to run.
    pub pending: bool,
    /// `canonical_json(body)`, what is stored as `record_canonical`, and its SHA-256.
    pub canonical: String,
    pub hash: String,
}

impl Record {
    pub fn new(body: Value, pending: bool) -> Self {
        let canonical = canonical_json(&body);
        let hash = sha256_hex(canonical.as_bytes());
        Record {
            body,
            pending,
            canonical,
            hash,
        }
    }

    /// What responses show: the record with its status and hash.
    pub fn response(&self) -> Value {
        let status = if self.pending { "pending" } else { "complete" };
        shown(self.body.clone(), status, Some(&self.hash))
    }
}

/// A record as the API, the CLI and completions show it: its body with `status` and `record_hash`.
pub fn shown(record: Value, status: &str, record_hash: Option<&str>) -> Value {
    let mut v = if record.is_object() {
        record
    } else {
        json!({})
    };
    v["status"] = json!(status);
    v["record_hash"] = json!(record_hash);
    v
}
