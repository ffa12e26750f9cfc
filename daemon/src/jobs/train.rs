//! `train`: LoRA fine-tuning of an installed base model on published Datanet versions, then (optionally)
//! `registerModel` + `publishAdapter` on chain, then `transferModel` to the job's owner, who becomes the on-chain
//! developer paid the developer share.
//!
//! Provenance is exact: the training set is the contributions a Datanet version froze (their Merkle root is
//! recomputed and must equal the on-chain root), every example remembers the contribution it came from, and
//! the manifest lists them with the base model hash and the config; its SHA-256 is the on-chain
//! `trainingConfigHash`. Steps are idempotent: training resumes from its checkpoint, finished artifacts are
//! reused, and a registration or publication an earlier attempt made is found in the index, not repeated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use futures::FutureExt;
use futures::future::BoxFuture;
use openledger_chain::bindings::Registry;
use openledger_chain::merkle::{StandardMerkleTree, leaf};
use openledger_indexer::query::{ChainIndex, Contribution};
use openledger_model::ModelError;
use openledger_model::train::{Event, Record};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::publish::{send_logged, signing_chain};
use super::worker::{JobContext, JobError, JobHandler, Refusal};
use crate::attribution::build::Prior;
use crate::attribution::segments::Attribution;
use crate::chain::Chain;
use crate::common::{sha256, write_synced};
use crate::models::{self, NewTrainedModel};
use crate::quotas::{self, Quota, QuotaError, Quotas};
use crate::training::dataset::{SourceInfo, records_of};
use crate::training::manifest::{
    ADAPTER_CONFIG_FILE, ADAPTER_FILE, AdapterFile, ArtifactError, BaseModelRef, FORMAT, Imported,
    MANIFEST_FILE, Manifest, MissingContent, Trained, load_finished,
};
use crate::training::params::{TrainParams, parse_params};
use crate::training::run::{self, Run, StopOnDrop, train_blocking};
use crate::training::{self, TrainSettings};
use crate::uploads;

pub const KIND: &str = "train";

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
    /// The owners' training-step quota, charged when a run knows its steps (if the submission did not).
    quotas: Quotas,
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
            quotas: Quotas::UNLIMITED,
        }
    }

    /// Charges the owners' training steps to `quotas` (`serve`); by default nothing is charged.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Charges a run's steps once they are known: nothing if its submission charged them (or was an
    /// operator's); too many for the owner's day stops the run.
    async fn charge_steps(&self, ctx: &JobContext, steps: usize) -> Result<(), JobError> {
        let owner: Address = ctx.lease.job.owner.parse().map_err(JobError::fatal)?;
        let mut tx = self.pool.begin().await?;
        let r = self
            .quotas
            .charge(
                &mut tx,
                owner,
                Quota::TrainSteps,
                steps as u64,
                Some(&quotas::job_ref(ctx.id())),
            )
            .await;
        match r {
            Ok(()) => {
                tx.commit().await?;
                Ok(())
            }
            Err(QuotaError::Exceeded(e)) => Err(JobError::fatal(e.to_string())),
            Err(QuotaError::Db(e)) => Err(e.into()),
        }
    }
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
        let versions = self.index.versions(id).await.map_err(Refusal::from)?;
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
                    Refusal::Unavailable(m) => JobError::unavailable(m),
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

/// Loads a PEFT folder against the base model's shapes: what an import needs to be servable.
fn check_import(
    base: &models::BaseModelRow,
    dir: &Path,
) -> Result<openledger_model::LoraConfig, String> {
    let cfg: openledger_model::ModelConfig = serde_json::from_value(base.config.clone())
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
        let (adapter, adapter_config) = (read(ADAPTER_FILE)?, read(ADAPTER_CONFIG_FILE)?);
        let manifest = Manifest {
            adapter: AdapterFile {
                file: ADAPTER_FILE.into(),
                sha256: sha256(&adapter).to_string(),
            },
            attribution: None,
            base_model: BaseModelRef {
                config: base.config.clone(),
                hash: base.hash.clone(),
                id: base.id.clone(),
            },
            config: json!({ "lora": { "rank": lora.rank, "alpha": lora.alpha, "targets": lora.targets } }),
            datanets: vec![],
            evaluation: None,
            dataset: None,
            imported: Some(Imported {
                adapter_config_sha256: sha256(&adapter_config).to_string(),
                from: src.display().to_string(),
            }),
            job_id,
            metrics: json!({}),
            missing_content: None,
            openledger_training_manifest: FORMAT,
            sources: vec![],
        };
        let bytes = manifest.to_bytes().map_err(JobError::fatal)?;
        let tmp = out.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let io = |p: &Path, e: std::io::Error| JobError::retryable(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        write_synced(&tmp.join(ADAPTER_FILE), &adapter).map_err(model_error)?;
        write_synced(&tmp.join(ADAPTER_CONFIG_FILE), &adapter_config).map_err(model_error)?;
        write_synced(&tmp.join(MANIFEST_FILE), &bytes).map_err(model_error)?;
        run::place(&tmp, &out).map_err(model_error)?;
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

/// Says which earlier models' attribution segments the run reused.
async fn log_reuse(ctx: &JobContext, trained: &Trained) {
    let Some(Attribution::Segments(att)) = &trained.manifest.attribution else {
        return;
    };
    let reused: Vec<String> = att
        .segments
        .iter()
        .filter_map(|s| {
            let from = s.reused_from.as_ref()?.job_id;
            Some(format!("{} examples from ft-{from}", s.examples))
        })
        .collect();
    if !reused.is_empty() {
        ctx.log(format!(
            "attribution: reused the indexed segments of earlier models ({}); indexed {} new examples",
            reused.join(", "),
            att.new_examples()
        ))
        .await;
    }
}

impl From<ArtifactError> for JobError {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::Io { .. } => JobError::retryable(e),
            ArtifactError::Invalid(_) => JobError::fatal(e),
        }
    }
}

/// The folder name parts of a queued job.
fn folder_of(job: &crate::jobs::Job) -> training::Job {
    training::Job {
        id: job.id,
        created_at: job.created_at,
    }
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

    /// Steps given in the config are charged at submission; steps from `epochs` depend on the data and
    /// are charged when the run has counted them.
    fn usage(&self, params: &Value) -> BoxFuture<'_, Result<Vec<(Quota, u64)>, Refusal>> {
        let steps = parse_params(params).map(|(p, _)| p.config.steps);
        Box::pin(async move {
            match steps.map_err(Refusal::Invalid)? {
                Some(n) => Ok(vec![(Quota::TrainSteps, n as u64)]),
                None => Ok(Vec::new()),
            }
        })
    }

    fn authorize(
        &self,
        caller: Address,
        admin: bool,
        params: &Value,
    ) -> BoxFuture<'_, Result<(), Refusal>> {
        let parsed = parse_params(params);
        async move {
            let (p, refs) = parsed.map_err(Refusal::Invalid)?;
            let Some(base) = models::base_model(&self.pool, &p.base_model)
                .await
                ?
            else {
                // the installed list only when it helps: an unknown name
                let installed = models::base_models(&self.pool).await?;
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
                    .map_err(Refusal::from)?;
                if !exists {
                    return Err(Refusal::Invalid(format!("no Datanet {id} (indexed)")));
                }
                // a permissioned Datanet's data is for its owner, curators and allowed contributors: training
                // on it would hand its content to anyone through the model's files and answers
                let may_read = self
                    .index
                    .may_read_datanet(id, Some(caller))
                    .await
                    .map_err(Refusal::from)?;
                if !admin && may_read != Some(true) {
                    return Err(Refusal::Forbidden(format!(
                        "Datanet {id} is permissioned: only its owner, curators and allowed contributors may \
                         train on it, and {caller:#x} is none of them"
                    )));
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
            let out_dir = self.settings.adapter_dir(&folder_of(&ctx.lease.job));
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
                    datanets: trained.manifest.datanets_json(),
                    adapter_hash: &trained.adapter_hash.to_string(),
                    manifest_hash: &trained.manifest_hash.to_string(),
                    dir: &out_dir,
                    metrics: trained.manifest.metrics.clone(),
                    sources: &trained.sources,
                },
            )
            .await?;
            let mut result = json!({
                "base_model": base.id,
                "base_model_hash": base.hash,
                "datanets": trained.manifest.datanets_json(),
                "adapter_hash": trained.adapter_hash.to_string(),
                "manifest_hash": trained.manifest_hash.to_string(),
                "metrics": trained.manifest.metrics,
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
        let (sources, records, missing) = self.gather(ctx, base, resolved).await?;
        let permit = self
            .gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| JobError::retryable("the training gate is closed"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(stop.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let priors = self.priors(&base.hash).await?;
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
            work_dir: self.settings.work_dir(&folder_of(&ctx.lease.job)),
            priors,
            step_hook: self.settings.step_hook.clone(),
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            train_blocking(run, stop, tx)
        });
        // metrics are stored at most every 200 ms (plus the last step): a tiny model takes thousands of
        // steps a second, and a row per step would make the database the bottleneck
        let mut last_stored: Option<std::time::Instant> = None;
        let mut charged = false;
        while let Some(e) = rx.recv().await {
            if let Event::Step {
                step, total_steps, ..
            } = &e
            {
                if !charged {
                    charged = true;
                    // an error drops the run's stop guard: the training thread stops at its next step
                    self.charge_steps(ctx, *total_steps).await?;
                }
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
        log_reuse(ctx, &trained).await;
        Ok(trained)
    }

    /// The training set: every contribution of every version, in (Datanet, id) order, with the records
    /// of the content this daemon holds and the list of those it does not.
    async fn gather(
        &self,
        ctx: &JobContext,
        base: &models::BaseModelRow,
        resolved: &[Resolved],
    ) -> Result<(Vec<SourceInfo>, Vec<(usize, Record)>, Vec<MissingContent>), JobError> {
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
        let pairs: Vec<(Address, B256)> = sources
            .iter()
            .map(|s| (s.contributor, s.content_hash))
            .collect();
        let bodies = uploads::bodies_uploaded_by(&self.pool, self.index.chain_id(), &pairs).await?;
        let mut records = Vec::new();
        let mut missing = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            match bodies.get(&(s.contributor, s.content_hash)) {
                Some(body) => {
                    let recs = records_of(body)
                        .map_err(|e| JobError::fatal(format!("content {}: {e}", s.content_hash)))?;
                    records.extend(recs.into_iter().map(|r| (i, r)));
                }
                None => missing.push(MissingContent {
                    content_hash: s.content_hash.to_string(),
                    contribution_id: s.contribution_id.to_string(),
                }),
            }
        }
        if !missing.is_empty() {
            ctx.log(format!(
                "{} of {} contributions have no content in this daemon uploaded by their contributor \
                 (contributed on chain without an upload, or a copy of someone else's hash); they are listed \
                 in the manifest and not trained on",
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

        Ok((sources, records, missing))
    }

    /// Earlier models on this base whose attribution segments may be reused, newest first.
    async fn priors(&self, base_hash: &str) -> Result<Vec<Prior>, JobError> {
        let priors: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT job_id, dir, manifest_hash FROM trained_models
             WHERE base_model_hash = $1 ORDER BY job_id DESC LIMIT 16",
        )
        .bind(base_hash)
        .fetch_all(&self.pool)
        .await?;
        Ok(priors
            .into_iter()
            .map(|(job_id, dir, manifest_sha256)| Prior {
                job_id,
                dir: PathBuf::from(dir),
                manifest_sha256,
            })
            .collect())
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
            .map_err(JobError::unavailable)?;
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
        let manifest_uri = format!("openledger://manifests/{}", trained.manifest_hash);
        self.index_caught_up(chain).await?;
        let (model_id, register_tx) = self
            .register_model(ctx, me, base, resolved, trained, &manifest_uri)
            .await?;
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

        let (adapter, publish_tx) = self.publish_adapter(ctx, model_id, trained).await?;
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
        let developer: Address = ctx.lease.job.owner.parse().map_err(JobError::fatal)?;
        let transfer_tx = self.hand_over(ctx, model_id, me, developer).await?;
        Ok(json!({
            "chain_id": chain.chain_id(),
            "model_id": model_id.to_string(),
            "adapter_id": adapter.id.to_string(),
            "adapter_version": adapter.version.to_string(),
            "developer": format!("{developer:#x}"),
            "register_tx": register_tx.map(|t| t.to_string()),
            "publish_tx": publish_tx.map(|t| t.to_string()),
            "transfer_tx": transfer_tx.map(|t| t.to_string()),
            "metadata_uri": manifest_uri,
            "adapter_uri": adapter.uri,
        }))
    }

    /// The model's id on chain: registered by an earlier attempt (found in the index by its manifest hash),
    /// or registered now; with the registering transaction when it is this attempt's.
    async fn register_model(
        &self,
        ctx: &JobContext,
        me: Address,
        base: &models::BaseModelRow,
        resolved: &[Resolved],
        trained: &Trained,
        manifest_uri: &str,
    ) -> Result<(U256, Option<B256>), JobError> {
        let (chain, _) = signing_chain(self.chain.as_ref())?;
        let registry = chain.registry();
        let existing = self
            .index
            .models_by_config_hash(me, trained.manifest_hash)
            .await
            .map_err(JobError::retryable)?;
        Ok(match existing.first() {
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
                    metadataURI: manifest_uri.to_owned(),
                };
                let receipt = send_logged(
                    ctx,
                    chain,
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
        })
    }

    /// The trained adapter as a version of model `model_id` in the index: published by an earlier attempt,
    /// or published now; with the publishing transaction when it is this attempt's.
    /// Makes the job's owner the model's on-chain developer (who is paid the developer share of every fee),
    /// once the daemon's key has registered the model and published its adapter. Idempotent: a model already
    /// the owner's (a retried attempt, or an owner who is the daemon itself) is left as it is; one already
    /// handed to a third account is an error, not something to undo.
    async fn hand_over(
        &self,
        ctx: &JobContext,
        model_id: U256,
        me: Address,
        developer: Address,
    ) -> Result<Option<B256>, JobError> {
        let (chain, _) = signing_chain(self.chain.as_ref())?;
        let registry = chain.registry();
        let current = registry
            .modelDeveloper(model_id)
            .call()
            .await
            .map_err(super::publish::classify)?;
        if current == developer {
            return Ok(None);
        }
        if current != me {
            return Err(JobError::fatal(format!(
                "model {model_id}'s developer is {current:#x}, neither this daemon nor the job's owner {developer:#x}"
            )));
        }
        let receipt = send_logged(
            ctx,
            chain,
            "transferModel",
            registry.transferModel(model_id, developer),
            self.tx_timeout,
        )
        .await?;
        self.wait_index("the ModelDeveloperTransferred event", || async {
            let m = self
                .index
                .model(model_id)
                .await
                .map_err(JobError::retryable)?;
            Ok(m.filter(|m| m.developer == developer).map(|_| ()))
        })
        .await?;
        ctx.log(format!(
            "model {model_id} handed to its developer {developer:#x}: the developer share of its fees is theirs"
        ))
        .await;
        Ok(Some(receipt.transaction_hash))
    }

    async fn publish_adapter(
        &self,
        ctx: &JobContext,
        model_id: U256,
        trained: &Trained,
    ) -> Result<(openledger_indexer::query::Adapter, Option<B256>), JobError> {
        let (chain, _) = signing_chain(self.chain.as_ref())?;
        let registry = chain.registry();
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
        Ok(match find_adapter().await? {
            Some(a) => (a, None),
            None => {
                let uri = format!("openledger://adapters/{}", trained.adapter_hash);
                let receipt = send_logged(
                    ctx,
                    chain,
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
        })
    }
}
