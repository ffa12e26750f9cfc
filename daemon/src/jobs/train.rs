//! `train`: LoRA fine-tuning of an installed base model on published Datanet versions, then (optionally)
//! `registerModel` + `publishAdapter` on chain.
//!
//! Provenance is exact: the training set is the contributions a Datanet version froze (their Merkle root is
//! recomputed and must equal the on-chain root), every example remembers the contribution it came from, and
//! the manifest lists them with the base model hash and the config; its SHA-256 is the on-chain
//! `trainingConfigHash`. Steps are idempotent: training resumes from its checkpoint, finished artifacts are
//! reused, and a registration or publication an earlier attempt made is found in the index, not repeated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use futures::FutureExt;
use futures::future::BoxFuture;
use openledger_chain::bindings::Registry;
use openledger_chain::merkle::{StandardMerkleTree, leaf};
use openledger_indexer::query::{ChainIndex, Contribution};
use openledger_model::train::{Dataset, Event, Metrics, Record, TrainConfig, Trainer};
use openledger_model::{BaseModel, Llama, Lora, ModelError, Precision};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::relay::{send_confirmed, signing_chain};
use super::worker::{JobContext, JobError, JobHandler, Refusal};
use crate::attribution::build::{self as attribution, Prior, SourceId};
use crate::chain::Chain;
use crate::models::{self, NewTrainedModel, Source};

pub const KIND: &str = "train";

/// Where training keeps its files, and on what device it runs.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// `<data dir>`: base models under `models/`, adapters under `adapters/job-<id>-<created>/`, checkpoints
    /// under `training/job-<id>-<created>/`.
    pub data_dir: PathBuf,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Called on the training thread after each optimizer step; `None` in the daemon. Tests use it to hold
    /// a run at a known step (to stop a job there, whatever the machine's speed).
    pub step_hook: Option<StepHook>,
}

/// See [`TrainSettings::step_hook`]: receives the step just taken.
#[derive(Clone)]
pub struct StepHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

impl TrainSettings {
    pub fn new(data_dir: PathBuf, device: impl Into<String>) -> Self {
        TrainSettings {
            data_dir,
            device: device.into(),
            step_hook: None,
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    /// Job ids restart with every database; the creation time keeps two databases sharing a data
    /// directory from reusing each other's files.
    fn job_dir(job: &crate::jobs::Job) -> String {
        format!(
            "job-{}-{}",
            job.id,
            job.created_at.unix_timestamp_nanos() / 1000
        )
    }

    pub fn adapter_dir(&self, job: &crate::jobs::Job) -> PathBuf {
        self.data_dir.join("adapters").join(Self::job_dir(job))
    }

    fn work_dir(&self, job: &crate::jobs::Job) -> PathBuf {
        self.data_dir.join("training").join(Self::job_dir(job))
    }
}

#[derive(Debug, Clone)]
pub struct TrainJob {
    pub pool: PgPool,
    pub index: ChainIndex,
    pub chain: Option<Chain>,
    pub settings: TrainSettings,
    /// Receipt and indexer waits.
    pub tx_timeout: Duration,
    /// One training at a time per process: a run uses every core.
    gate: Arc<Semaphore>,
}

impl TrainJob {
    pub fn new(
        pool: PgPool,
        index: ChainIndex,
        chain: Option<Chain>,
        settings: TrainSettings,
        tx_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            index,
            chain,
            settings,
            tx_timeout,
            gate: Arc::new(Semaphore::new(1)),
        }
    }
}

/// A Datanet to train on; without `version`, its latest published version.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatanetRef {
    /// Decimal Datanet id.
    pub id: String,
    /// Decimal version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `params` of a `train` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Installed base model id (see `GET /v1/base-models`) or its hash.
    pub base_model: String,
    #[serde(default)]
    pub datanets: Vec<DatanetRef>,
    /// Instead of training: a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`) on
    /// the daemon's disk, trained elsewhere on this base model; it is checked, copied and published like a
    /// trained adapter (with no Datanets: nothing to attribute to). Admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<PathBuf>,
    /// Hyper-parameters; every field optional (defaults in `openledger train --help`).
    #[serde(default)]
    pub config: TrainConfig,
    /// Register the model and publish the adapter on chain when training succeeds.
    #[serde(default = "yes")]
    pub publish: bool,
}

fn yes() -> bool {
    true
}

/// Datanet ids with their pinned versions (`None`: the latest).
type Versions = Vec<(U256, Option<u64>)>;

fn parse_params(v: &Value) -> Result<(TrainParams, Versions), String> {
    // the error names the field at fault (`config.learning_rate: invalid type...`)
    let p: TrainParams = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    if p.base_model.trim().is_empty() {
        return Err("base_model is empty".into());
    }
    if p.import.is_some() {
        if !p.datanets.is_empty() {
            return Err("an import trains nothing: give datanets or import, not both".into());
        }
    } else if p.datanets.is_empty() || p.datanets.len() > 16 {
        return Err("datanets must name 1 to 16 Datanets".into());
    }
    let mut ids = Vec::new();
    for d in &p.datanets {
        let id = U256::from_str_radix(&d.id, 10)
            .map_err(|_| format!("datanet id must be a decimal integer, got {:?}", d.id))?;
        let version = d
            .version
            .as_deref()
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("version must be a positive integer, got {v:?}"))
            })
            .transpose()?;
        if ids.iter().any(|(i, _)| *i == id) {
            return Err(format!("Datanet {id} is listed twice"));
        }
        ids.push((id, version));
    }
    // the context limit is checked against the model in `authorize`
    p.config.validate(usize::MAX).map_err(|e| e.to_string())?;
    Ok((p, ids))
}

/// A Datanet version resolved against the index, with the contributions it froze.
#[derive(Debug, Clone)]
struct Resolved {
    id: U256,
    version: u64,
    root: B256,
    contributions: Vec<Contribution>,
}

impl TrainJob {
    async fn resolve_version(&self, id: U256, pinned: Option<u64>) -> Result<(u64, B256), Refusal> {
        let versions = self
            .index
            .versions(id)
            .await
            .map_err(|e| Refusal::Invalid(format!("index: {e}")))?;
        let v = match pinned {
            Some(n) => versions
                .iter()
                .find(|v| v.version == U256::from(n))
                .ok_or_else(|| Refusal::Invalid(format!("Datanet {id} has no version {n}")))?,
            None => versions.last().ok_or_else(|| {
                Refusal::Invalid(format!(
                    "Datanet {id} has no published version; freeze its accepted contributions with a \
                     datanet_snapshot job (publish: true) first"
                ))
            })?,
        };
        Ok((v.version.to::<u64>(), v.root))
    }

    async fn resolve(&self, refs: &[(U256, Option<u64>)]) -> Result<Vec<Resolved>, JobError> {
        let mut out = Vec::new();
        for &(id, pinned) in refs {
            let (version, root) = self
                .resolve_version(id, pinned)
                .await
                .map_err(|r| match r {
                    Refusal::Invalid(m) | Refusal::Forbidden(m) => JobError::fatal(m),
                })?;
            let contributions = self
                .index
                .contributions_in_version(id, U256::from(version))
                .await
                .map_err(JobError::retryable)?;
            let leaves: Vec<B256> = contributions
                .iter()
                .map(|c| leaf(&(c.id, c.contributor, c.content_hash)))
                .collect();
            let computed = StandardMerkleTree::new(leaves).map(|t| t.root());
            if computed != Some(root) {
                return Err(JobError::fatal(format!(
                    "Datanet {id} version {version}: the {} contributions accepted before it was published hash \
                     to {computed:?}, not its on-chain root {root}; this version was not published by \
                     datanet_snapshot and its contents cannot be reconstructed",
                    contributions.len()
                )));
            }
            out.push(Resolved {
                id,
                version,
                root,
                contributions,
            });
        }
        Ok(out)
    }
}

/// One contribution as a training source.
#[derive(Debug, Clone)]
struct SourceInfo {
    datanet_id: U256,
    contribution_id: U256,
    contributor: Address,
    content_hash: B256,
}

/// The records of canonical JSONL content (see `content.rs`).
fn records_of(body: &[u8]) -> Result<Vec<Record>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).map_err(|e| e.to_string())?;
            match (v.get("text"), v.get("prompt"), v.get("completion")) {
                (Some(Value::String(t)), None, None) => Ok(Record::Text(t.clone())),
                (None, Some(Value::String(p)), Some(Value::String(c))) => Ok(Record::Pair {
                    prompt: p.clone(),
                    completion: c.clone(),
                }),
                _ => Err(format!("unexpected record {l:?}")),
            }
        })
        .collect()
}

/// Sets the flag when dropped: a cancelled or shut-down job's future is dropped, and the training thread
/// then checkpoints and stops.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the training thread hands back.
#[derive(Debug)]
struct Trained {
    manifest: Value,
    adapter_hash: B256,
    manifest_hash: B256,
    sources: Vec<Source>,
    metrics: Value,
}

fn sha256_0x(bytes: &[u8]) -> B256 {
    B256::from_slice(&Sha256::digest(bytes))
}

/// Writes `bytes` to `path` and flushes them to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    f.write_all(bytes).map_err(|e| ModelError::io(path, e))?;
    f.sync_all().map_err(|e| ModelError::io(path, e))
}

/// What the training thread works from.
struct Run {
    base_path: PathBuf,
    base_id: String,
    base_hash: String,
    device: String,
    params: TrainParams,
    resolved: Vec<(U256, u64, B256)>,
    sources: Vec<SourceInfo>,
    records: Vec<(usize, Record)>,
    missing: Vec<Value>,
    job_id: i64,
    out_dir: PathBuf,
    work_dir: PathBuf,
    /// Earlier models on this base whose attribution segments may be reused, newest first.
    priors: Vec<Prior>,
    step_hook: Option<StepHook>,
}

fn train_blocking(
    run: Run,
    stop: Arc<AtomicBool>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<Trained, ModelError> {
    let Run {
        base_path,
        base_id,
        base_hash,
        device,
        params,
        resolved,
        sources,
        records,
        missing,
        job_id,
        out_dir,
        work_dir,
        priors,
        step_hook,
    } = run;
    let dev = openledger_model::device(&device)?;
    let base = BaseModel::load(&base_path, &dev, Some(base_hash.clone()))?;
    let cfg = params.config.clone();
    cfg.validate(base.config.max_position_embeddings)?;
    let ds = Dataset::build(&base.tokenizer, &records, &cfg)?;
    let model = Llama::new(&base, Precision::F32, &dev)?;
    let lora = Lora::init(&base.config, cfg.lora.clone(), cfg.seed, &dev)?;
    let trainer = Trainer {
        model: &model,
        config: cfg.clone(),
        dataset: &ds,
        pad: base.tokenizer.eos,
        checkpoint_dir: Some(work_dir.join("checkpoint")),
    };
    let metrics: Metrics = trainer.run(&lora, &stop, &mut |e| {
        if let (Some(hook), Event::Step { step, .. }) = (&step_hook, &e) {
            (hook.0)(*step);
        }
        let _ = events.send(e);
        Ok(())
    })?;

    // the tokenized dataset as training saw it, with each example's source and split
    let mut tokens: Vec<u8> = Vec::new();
    let mut examples = Vec::new();
    let mut per_source: BTreeMap<usize, (i32, i64)> = BTreeMap::new();
    let mut offset = 0usize;
    for (split, set) in [("train", &ds.train), ("eval", &ds.eval)] {
        for e in set.iter() {
            for id in &e.tokens.ids {
                tokens.extend_from_slice(&id.to_le_bytes());
            }
            let first_target = e
                .tokens
                .targets
                .iter()
                .position(|t| *t)
                .unwrap_or(e.tokens.ids.len());
            examples.push(json!({
                "offset": offset, "len": e.tokens.ids.len(), "source": e.source,
                "split": split, "first_target": first_target,
            }));
            offset += e.tokens.ids.len();
            let s = per_source.entry(e.source).or_default();
            s.0 += 1;
            s.1 += e.tokens.ids.len() as i64;
        }
    }
    let dataset_index = serde_json::to_vec(&json!({
        "tokens_file": "dataset.tokens", "dtype": "u32le", "examples": examples,
    }))
    .map_err(|e| ModelError::invalid("dataset index", e))?;
    // written aside and renamed into place: a crash or a full disk never leaves a partial adapter visible
    let tmp = out_dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let initial = Lora::init(&base.config, cfg.lora.clone(), cfg.seed, &dev)?;
    let source_ids: Vec<SourceId> = sources
        .iter()
        .map(|s| SourceId {
            datanet_id: s.datanet_id.to_string(),
            contribution_id: s.contribution_id.to_string(),
        })
        .collect();
    let attribution = attribution::build(&attribution::Input {
        model: &model,
        initial: &initial,
        adapter_seed: cfg.seed,
        base_hash: &base_hash,
        train: &ds.train,
        sources: &source_ids,
        priors: &priors,
        dir: &tmp,
        stop: &stop,
    })?;
    let adapter = lora.safetensors_bytes()?;
    let adapter_config = serde_json::to_vec_pretty(&lora.peft_config(&base_id))
        .map_err(|e| ModelError::invalid("adapter config", e))?;
    let adapter_hash = sha256_0x(&adapter);
    let src_json: Vec<Value> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (ex, tok) = per_source.get(&i).copied().unwrap_or((0, 0));
            json!({
                "source": i, "datanet_id": s.datanet_id.to_string(),
                "contribution_id": s.contribution_id.to_string(),
                "contributor": format!("{:#x}", s.contributor),
                "content_hash": s.content_hash.to_string(), "examples": ex, "tokens": tok,
            })
        })
        .collect();
    let metrics_json =
        serde_json::to_value(&metrics).map_err(|e| ModelError::invalid("metrics", e))?;
    let manifest = json!({
        "openledger_training_manifest": 1,
        "job_id": job_id,
        "base_model": { "id": base_id, "hash": base_hash, "config": base.config },
        "datanets": resolved.iter().map(|(id, v, root)| json!({
            "datanet_id": id.to_string(), "version": v.to_string(), "root": root.to_string(),
        })).collect::<Vec<_>>(),
        "sources": src_json,
        "missing_content": missing,
        "config": cfg,
        "dataset": {
            "train_examples": ds.train.len(), "eval_examples": ds.eval.len(),
            "truncated_pairs": ds.truncated, "tokens": offset,
            "tokens_sha256": sha256_0x(&tokens).to_string(),
        },
        "metrics": metrics_json,
        "adapter": { "file": "adapter_model.safetensors", "sha256": adapter_hash.to_string() },
        "attribution": attribution,
    });
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ModelError::invalid("manifest", e))?;
    let manifest_hash = sha256_0x(&manifest_bytes);

    write_synced(&tmp.join("adapter_model.safetensors"), &adapter)?;
    write_synced(&tmp.join("adapter_config.json"), &adapter_config)?;
    write_synced(&tmp.join("dataset.tokens"), &tokens)?;
    write_synced(&tmp.join("dataset.json"), &dataset_index)?;
    write_synced(&tmp.join("manifest.json"), &manifest_bytes)?;
    std::fs::rename(&tmp, &out_dir).map_err(|e| ModelError::io(&out_dir, e))?;
    let _ = std::fs::remove_dir_all(&work_dir);

    let sources = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (examples, tokens) = per_source.get(&i).copied().unwrap_or((0, 0));
            Source {
                source: i as i32,
                datanet_id: s.datanet_id,
                contribution_id: s.contribution_id,
                contributor: s.contributor,
                content_hash: s.content_hash.to_string(),
                examples,
                tokens,
            }
        })
        .collect();
    Ok(Trained {
        manifest,
        adapter_hash,
        manifest_hash,
        sources,
        metrics: metrics_json,
    })
}

/// Loads a PEFT folder against the base model's shapes: what an import needs to be servable.
fn check_import(
    base: &models::BaseModelRow,
    dir: &Path,
) -> Result<openledger_model::LoraConfig, String> {
    let cfg: openledger_model::LlamaConfig = serde_json::from_value(base.config.clone())
        .map_err(|e| format!("base model {}: its config: {e}", base.id))?;
    let lora = openledger_model::Lora::load_peft(dir, &cfg, &openledger_model::Device::Cpu)
        .map_err(|e| {
            format!(
                "{} is not a LoRA adapter of {}: {e}",
                dir.display(),
                base.id
            )
        })?;
    Ok(lora.config)
}

/// An adapter trained elsewhere: checked against the base, copied in with a manifest that says so.
async fn import(
    ctx: &JobContext,
    base: &models::BaseModelRow,
    src: &Path,
    out_dir: &Path,
) -> Result<Trained, JobError> {
    let from = src.display().to_string();
    let (base, src, out) = (base.clone(), src.to_path_buf(), out_dir.to_path_buf());
    let job_id = ctx.id();
    let trained = tokio::task::spawn_blocking(move || {
        let lora = check_import(&base, &src).map_err(JobError::fatal)?;
        let read = |name: &str| {
            let p = src.join(name);
            std::fs::read(&p).map_err(|e| JobError::retryable(format!("{}: {e}", p.display())))
        };
        let (adapter, adapter_config) = (read("adapter_model.safetensors")?, read("adapter_config.json")?);
        let adapter_hash = sha256_0x(&adapter);
        let manifest = json!({
            "openledger_training_manifest": 1,
            "job_id": job_id,
            "imported": { "from": src.display().to_string(),
                          "adapter_config_sha256": sha256_0x(&adapter_config).to_string() },
            "base_model": { "id": base.id, "hash": base.hash, "config": base.config },
            "datanets": [],
            "sources": [],
            "config": { "lora": { "rank": lora.rank, "alpha": lora.alpha, "targets": lora.targets } },
            "metrics": {},
            "adapter": { "file": "adapter_model.safetensors", "sha256": adapter_hash.to_string() },
        });
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(JobError::fatal)?;
        let tmp = out.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let io = |p: &Path, e: std::io::Error| JobError::retryable(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        write_synced(&tmp.join("adapter_model.safetensors"), &adapter).map_err(model_error)?;
        write_synced(&tmp.join("adapter_config.json"), &adapter_config).map_err(model_error)?;
        write_synced(&tmp.join("manifest.json"), &bytes).map_err(model_error)?;
        std::fs::rename(&tmp, &out).map_err(|e| io(&out, e))?;
        load_finished(&out)?.ok_or_else(|| JobError::fatal("the imported manifest vanished"))
    })
    .await
    .map_err(|e| JobError::fatal(format!("import thread: {e}")))??;
    ctx.log(format!(
        "imported adapter {} from {}",
        trained.adapter_hash, from
    ))
    .await;
    Ok(trained)
}

/// Reads back finished artifacts (an earlier attempt got past training).
fn load_finished(out_dir: &Path) -> Result<Option<Trained>, JobError> {
    let mpath = out_dir.join("manifest.json");
    let bytes = match std::fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JobError::retryable(format!("{}: {e}", mpath.display()))),
    };
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| JobError::fatal(format!("{}: {e}", mpath.display())))?;
    let adapter = std::fs::read(out_dir.join("adapter_model.safetensors"))
        .map_err(|e| JobError::fatal(format!("adapter of {}: {e}", out_dir.display())))?;
    let adapter_hash = sha256_0x(&adapter);
    if manifest["adapter"]["sha256"].as_str() != Some(adapter_hash.to_string().as_str()) {
        return Err(JobError::fatal(format!(
            "{}: the adapter file does not match its manifest",
            out_dir.display()
        )));
    }
    let sources = manifest["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(Source {
                        source: s["source"].as_i64()? as i32,
                        datanet_id: s["datanet_id"].as_str()?.parse().ok()?,
                        contribution_id: s["contribution_id"].as_str()?.parse().ok()?,
                        contributor: s["contributor"].as_str()?.parse().ok()?,
                        content_hash: s["content_hash"].as_str()?.to_string(),
                        examples: s["examples"].as_i64()? as i32,
                        tokens: s["tokens"].as_i64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Trained {
        metrics: manifest["metrics"].clone(),
        manifest_hash: sha256_0x(&bytes),
        adapter_hash,
        sources,
        manifest,
    }))
}

fn model_error(e: ModelError) -> JobError {
    match e {
        // a disk or file problem may clear up; the rest (bad data, bad model file, divergence) will not
        ModelError::Io { .. } => JobError::retryable(e),
        _ => JobError::fatal(e),
    }
}

impl JobHandler for TrainJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate(&self, params: &Value) -> Result<Value, String> {
        let (p, _) = parse_params(params)?;
        serde_json::to_value(&p).map_err(|e| e.to_string())
    }

    fn authorize(
        &self,
        _caller: Address,
        admin: bool,
        params: &Value,
    ) -> BoxFuture<'_, Result<(), Refusal>> {
        let parsed = parse_params(params);
        async move {
            let (p, refs) = parsed.map_err(Refusal::Invalid)?;
            let db = |e: sqlx::Error| Refusal::Invalid(format!("database: {e}"));
            let Some(base) = models::base_model(&self.pool, &p.base_model)
                .await
                .map_err(db)?
            else {
                // the installed list only when it helps: an unknown name
                let installed = models::base_models(&self.pool).await.map_err(db)?;
                return Err(Refusal::Invalid(format!(
                    "unknown base model {:?}; installed: {}",
                    p.base_model,
                    installed
                        .iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if let Some(dir) = &p.import {
                if !admin {
                    return Err(Refusal::Forbidden(
                        "importing an adapter from the daemon's disk is for admins (API keys)"
                            .into(),
                    ));
                }
                check_import(&base, dir).map_err(Refusal::Invalid)?;
            }
            let ctx = base.config["max_position_embeddings"].as_u64().unwrap_or(0) as usize;
            p.config
                .validate(ctx)
                .map_err(|e| Refusal::Invalid(e.to_string()))?;
            for &(id, pinned) in &refs {
                let exists = self
                    .index
                    .datanet_exists(id)
                    .await
                    .map_err(|e| Refusal::Invalid(format!("index: {e}")))?;
                if !exists {
                    return Err(Refusal::Invalid(format!("no Datanet {id} (indexed)")));
                }
                self.resolve_version(id, pinned).await?;
            }
            if p.publish && self.chain.as_ref().and_then(|c| c.signer()).is_none() {
                return Err(Refusal::Invalid(
                    "this daemon has no key to publish with; submit with \"publish\": false".into(),
                ));
            }
            Ok(())
        }
        .boxed()
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        async move {
            let (p, refs) = parse_params(ctx.params()).map_err(JobError::fatal)?;
            let job_id = ctx.id();
            let base = models::base_model(&self.pool, &p.base_model)
                .await?
                .ok_or_else(|| JobError::fatal(format!("unknown base model {:?}", p.base_model)))?;
            let resolved = self.resolve(&refs).await?;
            let out_dir = self.settings.adapter_dir(&ctx.lease.job);
            let trained = match load_finished(&out_dir)? {
                Some(t) => {
                    ctx.log("training finished in an earlier attempt; reusing its artifacts")
                        .await;
                    t
                }
                None => match &p.import {
                    Some(dir) => import(&ctx, &base, dir, &out_dir).await?,
                    None => self.train(&ctx, &p, &base, &resolved, &out_dir).await?,
                },
            };
            ctx.progress(0.9).await;
            models::insert_trained_model(
                &self.pool,
                &NewTrainedModel {
                    job_id,
                    owner: ctx.lease.job.owner.parse().map_err(JobError::fatal)?,
                    base_model: &base.id,
                    base_model_hash: &base.hash,
                    datanets: trained.manifest["datanets"].clone(),
                    adapter_hash: &trained.adapter_hash.to_string(),
                    manifest_hash: &trained.manifest_hash.to_string(),
                    dir: &out_dir,
                    metrics: trained.metrics.clone(),
                    sources: &trained.sources,
                },
            )
            .await?;
            let mut result = json!({
                "base_model": base.id,
                "base_model_hash": base.hash,
                "datanets": trained.manifest["datanets"],
                "adapter_hash": trained.adapter_hash.to_string(),
                "manifest_hash": trained.manifest_hash.to_string(),
                "metrics": trained.metrics,
                "files": format!("/v1/models/{job_id}/files"),
            });
            if p.publish {
                let published = self.publish(&ctx, &base, &resolved, &trained).await?;
                result["published"] = published;
            }
            Ok(result)
        }
        .boxed()
    }
}

impl TrainJob {
    async fn train(
        &self,
        ctx: &JobContext,
        p: &TrainParams,
        base: &models::BaseModelRow,
        resolved: &[Resolved],
        out_dir: &Path,
    ) -> Result<Trained, JobError> {
        // the training set: every contribution of every version, in (Datanet, id) order
        let mut sources = Vec::new();
        for r in resolved {
            for c in &r.contributions {
                sources.push(SourceInfo {
                    datanet_id: r.id,
                    contribution_id: c.id,
                    contributor: c.contributor,
                    content_hash: c.content_hash,
                });
            }
        }
        let hashes: Vec<String> = sources
            .iter()
            .map(|s| format!("{:#x}", s.content_hash))
            .collect();
        let bodies: HashMap<String, Vec<u8>> =
            sqlx::query_as("SELECT content_hash, body FROM contents WHERE content_hash = ANY($1)")
                .bind(&hashes)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let mut records = Vec::new();
        let mut missing = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            match bodies.get(&format!("{:#x}", s.content_hash)) {
                Some(body) => {
                    let recs = records_of(body)
                        .map_err(|e| JobError::fatal(format!("content {}: {e}", s.content_hash)))?;
                    records.extend(recs.into_iter().map(|r| (i, r)));
                }
                None => missing.push(json!({
                    "contribution_id": s.contribution_id.to_string(),
                    "content_hash": s.content_hash.to_string(),
                })),
            }
        }
        if !missing.is_empty() {
            ctx.log(format!(
                "{} of {} contributions have no content in this daemon (contributed on chain without an \
                 upload); they are listed in the manifest and not trained on",
                missing.len(),
                sources.len()
            ))
            .await;
        }
        if records.is_empty() {
            return Err(JobError::fatal(
                "none of the versions' accepted contributions has content this daemon holds",
            ));
        }
        ctx.log(format!(
            "training {} on {} records from {} contributions ({})",
            base.id,
            records.len(),
            sources.len() - missing.len(),
            resolved
                .iter()
                .map(|r| format!("Datanet {} v{}", r.id, r.version))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;

        let permit = self
            .gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| JobError::retryable("the training gate is closed"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let priors: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT job_id, dir, manifest_hash FROM trained_models
             WHERE base_model_hash = $1 ORDER BY job_id DESC LIMIT 16",
        )
        .bind(&base.hash)
        .fetch_all(&self.pool)
        .await?;
        let run = Run {
            base_path: PathBuf::from(&base.path),
            base_id: base.id.clone(),
            base_hash: base.hash.clone(),
            device: self.settings.device.clone(),
            params: p.clone(),
            resolved: resolved.iter().map(|r| (r.id, r.version, r.root)).collect(),
            sources,
            records,
            missing,
            job_id: ctx.id(),
            out_dir: out_dir.to_path_buf(),
            work_dir: self.settings.work_dir(&ctx.lease.job),
            priors: priors
                .into_iter()
                .map(|(job_id, dir, manifest_sha256)| Prior {
                    job_id,
                    dir: PathBuf::from(dir),
                    manifest_sha256,
                })
                .collect(),
            step_hook: self.settings.step_hook.clone(),
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            train_blocking(run, stop, tx)
        });
        // metrics are stored at most every 200 ms (plus the last step): a tiny model takes thousands of
        // steps a second, and a row per step would make the database the bottleneck
        let mut last_stored: Option<std::time::Instant> = None;
        while let Some(e) = rx.recv().await {
            if let Event::Step {
                step, total_steps, ..
            } = &e
            {
                let due = last_stored.is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
                if !due && step != total_steps {
                    continue;
                }
                last_stored = Some(std::time::Instant::now());
            }
            self.report(ctx, e).await;
        }
        let trained = handle
            .await
            .map_err(|e| JobError::fatal(format!("the training thread panicked: {e}")))?
            .map_err(model_error)?;
        let att = &trained.manifest["attribution"];
        let reused: Vec<String> = att["segments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let from = s["reused_from"]["job_id"].as_i64()?;
                Some(format!("{} examples from ft-{from}", s["examples"]))
            })
            .collect();
        if !reused.is_empty() {
            ctx.log(format!(
                "attribution: reused the indexed segments of earlier models ({}); indexed {} new examples",
                reused.join(", "),
                att["span_index"]["examples"].as_u64().unwrap_or_default()
                    - att["reused_examples"].as_u64().unwrap_or_default()
            ))
            .await;
        }
        Ok(trained)
    }

    async fn report(&self, ctx: &JobContext, e: Event) {
        match e {
            Event::Step {
                step,
                total_steps,
                loss,
                lr,
                grad_norm,
                tokens_per_s,
                eta_s,
            } => {
                let s = step as i64;
                ctx.metric(s, "loss", loss).await;
                ctx.metric(s, "lr", lr).await;
                ctx.metric(s, "grad_norm", grad_norm).await;
                ctx.metric(s, "tokens_per_s", tokens_per_s).await;
                ctx.metric(s, "eta_s", eta_s).await;
                ctx.progress(0.85 * step as f32 / total_steps.max(1) as f32)
                    .await;
                if step == 1 || step % 10 == 0 || step == total_steps || eta_s > 60.0 {
                    ctx.log(format!(
                        "step {step}/{total_steps}: loss {loss:.4}, lr {lr:.2e}, {tokens_per_s:.0} tokens/s, \
                         ETA {eta_s:.0} s"
                    ))
                    .await;
                }
            }
            Event::Eval { step, eval_loss } => {
                ctx.metric(step as i64, "eval_loss", eval_loss).await;
                ctx.log(format!("step {step}: held-out loss {eval_loss:.4}"))
                    .await;
            }
            Event::Checkpoint { step } => ctx.log(format!("checkpoint at step {step}")).await,
            Event::Resumed { step } => {
                ctx.log(format!("resumed from the checkpoint at step {step}"))
                    .await
            }
        }
    }

    /// Polls `f` until it yields, within the receipt timeout: the index trails the chain by a poll interval.
    async fn wait_index<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, JobError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, JobError>>,
    {
        let deadline = tokio::time::Instant::now() + self.tx_timeout;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(JobError::retryable(format!(
                    "{what} is on chain but the indexer has not seen it yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index has every block up to the chain's head: what it lacks was not mined.
    async fn index_caught_up(&self, chain: &Chain) -> Result<(), JobError> {
        let head = chain
            .provider()
            .get_block_number()
            .await
            .map_err(JobError::retryable)?;
        self.wait_index("the chain head", || async {
            let through = self
                .index
                .indexed_through()
                .await
                .map_err(JobError::retryable)?;
            Ok(through.filter(|t| *t >= head).map(|_| ()))
        })
        .await
    }

    async fn publish(
        &self,
        ctx: &JobContext,
        base: &models::BaseModelRow,
        resolved: &[Resolved],
        trained: &Trained,
    ) -> Result<Value, JobError> {
        let (chain, me) = signing_chain(self.chain.as_ref())?;
        let registry = chain.registry();
        let manifest_uri = format!("openledger://manifests/{}", trained.manifest_hash);
        self.index_caught_up(chain).await?;
        let existing = self
            .index
            .models_by_config_hash(me, trained.manifest_hash)
            .await
            .map_err(JobError::retryable)?;
        let (model_id, register_tx) = match existing.first() {
            Some(m) => {
                ctx.log(format!(
                    "model {} was registered by an earlier attempt",
                    m.id
                ))
                .await;
                (m.id, None)
            }
            None => {
                let base_hash: B256 = base
                    .hash
                    .parse()
                    .map_err(|_| JobError::fatal(format!("base model hash {:?}", base.hash)))?;
                let spec = Registry::ModelSpec {
                    baseModel: base.id.clone(),
                    baseModelHash: base_hash,
                    datanetIds: resolved.iter().map(|r| r.id).collect(),
                    datanetVersions: resolved.iter().map(|r| r.version).collect(),
                    trainingConfigHash: trained.manifest_hash,
                    metadataURI: manifest_uri.clone(),
                };
                let receipt = send_confirmed(
                    ctx,
                    "registerModel",
                    registry.registerModel(spec),
                    self.tx_timeout,
                )
                .await?;
                let tx = receipt.transaction_hash;
                let id = receipt
                    .decoded_log::<Registry::ModelRegistered>()
                    .map(|l| l.data.modelId)
                    .ok_or_else(|| JobError::fatal("no ModelRegistered event in the receipt"))?;
                (id, Some(tx))
            }
        };
        self.wait_index("the ModelRegistered event", || async {
            self.index
                .model(model_id)
                .await
                .map_err(JobError::retryable)
        })
        .await?;
        models::set_onchain_ids(&self.pool, ctx.id(), chain.chain_id(), model_id, None).await?;
        ctx.log(format!("model {model_id} registered and indexed"))
            .await;
        ctx.progress(0.95).await;

        let find_adapter = || async {
            let all = self
                .index
                .adapters_by_model(model_id)
                .await
                .map_err(JobError::retryable)?;
            Ok(all
                .into_iter()
                .find(|a| a.content_hash == trained.adapter_hash))
        };
        let (adapter, publish_tx) = match find_adapter().await? {
            Some(a) => (a, None),
            None => {
                let uri = format!("openledger://adapters/{}", trained.adapter_hash);
                let receipt = send_confirmed(
                    ctx,
                    "publishAdapter",
                    registry.publishAdapter(model_id, trained.adapter_hash, uri),
                    self.tx_timeout,
                )
                .await?;
                let tx = receipt.transaction_hash;
                (
                    self.wait_index("the AdapterPublished event", find_adapter)
                        .await?,
                    Some(tx),
                )
            }
        };
        models::set_onchain_ids(
            &self.pool,
            ctx.id(),
            chain.chain_id(),
            model_id,
            Some(adapter.id),
        )
        .await?;
        ctx.log(format!(
            "adapter {} (version {} of model {model_id}) published and indexed",
            adapter.id, adapter.version
        ))
        .await;
        Ok(json!({
            "chain_id": chain.chain_id(),
            "model_id": model_id.to_string(),
            "adapter_id": adapter.id.to_string(),
            "adapter_version": adapter.version.to_string(),
            "developer": format!("{me:#x}"),
            "register_tx": register_tx.map(|t| t.to_string()),
            "publish_tx": publish_tx.map(|t| t.to_string()),
            "metadata_uri": manifest_uri,
            "adapter_uri": adapter.uri,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partial_configs_keep_the_other_defaults() {
        // what the web UI's wizard sends: a few settings, a LoRA rank and alpha only
        let (p, _) = parse_params(&serde_json::json!({
            "base_model": "SmolLM2", "datanets": [{"id": "3", "version": "1"}],
            "config": {"steps": 12, "lora": {"rank": 16, "alpha": 32}},
        }))
        .unwrap();
        let d = openledger_model::LoraConfig::default();
        assert_eq!((p.config.lora.rank, p.config.lora.alpha), (16, 32.0));
        assert_eq!(
            (p.config.lora.dropout, &p.config.lora.targets),
            (d.dropout, &d.targets)
        );
        assert_eq!(p.config.steps, Some(12));
        assert_eq!(p.config.batch_size, TrainConfig::default().batch_size);
        let e = parse_params(&serde_json::json!({
            "base_model": "SmolLM2", "datanets": [{"id": "3"}], "config": {"lora": {"rank": "big"}},
        }))
        .unwrap_err();
        assert!(e.starts_with("config.lora.rank:"), "{e}");
    }
}
