//! One training run on its own thread: LoRA fine-tuning from the records, then the folder it leaves (the
//! adapter in PEFT's layout, the tokenized dataset, the attribution artifacts and the manifest), written
//! aside and renamed into place so that a crash never leaves a partial adapter visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alloy::primitives::{B256, U256};
use openledger_model::evaluate::{EvalReport, evaluate};
use openledger_model::serve::{ServedAdapter, ServingModel};
use openledger_model::tokenizer::Tokenized;
use openledger_model::train::{Dataset, Event, Metrics, Record, Trainer};
use openledger_model::{BaseModel, Device, Llama, Lora, ModelError, Precision};

use super::StepHook;
use super::dataset::{DatasetFile, SourceInfo};
use super::manifest::{
    ADAPTER_CONFIG_FILE, ADAPTER_FILE, AdapterFile, BaseModelRef, DatanetVersion, DatasetSummary,
    FORMAT, MANIFEST_FILE, Manifest, MissingContent, Trained,
};
use super::params::TrainParams;
use crate::attribution::build::{self as attribution, BuildError, Prior, SourceId};
use crate::attribution::segments::Attribution;
use crate::common::{sha256, write_synced};

/// What the training thread works from.
#[derive(Debug)]
pub struct Run {
    pub base_path: PathBuf,
    pub base_id: String,
    pub base_hash: String,
    pub device: String,
    pub params: TrainParams,
    /// `(Datanet id, version, root)` of each version trained on.
    pub resolved: Vec<(U256, u64, B256)>,
    pub sources: Vec<SourceInfo>,
    /// Each record with the index of its source.
    pub records: Vec<(usize, Record)>,
    pub missing: Vec<MissingContent>,
    pub job_id: i64,
    pub out_dir: PathBuf,
    /// Checkpoints; removed once the folder is in place.
    pub work_dir: PathBuf,
    /// Earlier models on this base whose attribution segments may be reused, newest first.
    pub priors: Vec<Prior>,
    pub step_hook: Option<StepHook>,
}

/// Sets the flag when dropped: a cancelled or shut-down job's future is dropped, and the training thread
/// then checkpoints and stops.
#[derive(Debug)]
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Trains, then writes the adapter folder; events (steps, evals, checkpoints) go to `events` as they come.
pub fn train_blocking(
    run: Run,
    stop: Arc<AtomicBool>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<Trained, ModelError> {
    let dev = openledger_model::device(&run.device)?;
    let base = BaseModel::load(&run.base_path, &dev, Some(run.base_hash.clone()))?;
    let cfg = run.params.config.clone();
    cfg.validate(base.config.max_position_embeddings)?;
    let ds = Dataset::build(&base.tokenizer, &run.records, &cfg)?;
    let model = Llama::new(&base, Precision::F32, &dev)?;
    let lora = Lora::init(&base.config, cfg.lora.clone(), cfg.seed, &dev)?;
    let trainer = Trainer {
        model: &model,
        config: cfg.clone(),
        dataset: &ds,
        pad: base.tokenizer.eos,
        checkpoint_dir: Some(run.work_dir.join("checkpoint")),
    };
    let metrics: Metrics = trainer.run(&lora, &stop, &mut |e| {
        if let (Some(hook), Event::Step { step, .. }) = (&run.step_hook, &e) {
            (hook.0)(*step);
        }
        let _ = events.send(e);
        Ok(())
    })?;

    let file = DatasetFile::of(&ds);
    let tmp = run.out_dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let attribution = attribute(&run, &base, &model, &ds, &tmp, &stop, &dev)?;
    let evaluation = evaluation(&base, model, &lora, &ds, metrics.final_eval_loss)?;
    let adapter = lora.safetensors_bytes()?;
    let adapter_config = serde_json::to_vec_pretty(&lora.peft_config(&run.base_id))
        .map_err(|e| ModelError::invalid("adapter config", e))?;
    let adapter_hash = sha256(&adapter);
    let mut manifest = manifest_of(&run, &base, &ds, &file, attribution, adapter_hash, &metrics)?;
    manifest.evaluation = evaluation
        .map(|e| serde_json::to_value(e).map_err(|e| ModelError::invalid("evaluation", e)))
        .transpose()?;
    let manifest_bytes = manifest
        .to_bytes()
        .map_err(|e| ModelError::invalid("manifest", e))?;
    let dataset_index = file
        .index_bytes()
        .map_err(|e| ModelError::invalid("dataset index", e))?;
    write_synced(&tmp.join(ADAPTER_FILE), &adapter)?;
    write_synced(&tmp.join(ADAPTER_CONFIG_FILE), &adapter_config)?;
    write_synced(&tmp.join("dataset.tokens"), &file.tokens)?;
    write_synced(&tmp.join("dataset.json"), &dataset_index)?;
    write_synced(&tmp.join(MANIFEST_FILE), &manifest_bytes)?;
    place(&tmp, &run.out_dir)?;
    let _ = std::fs::remove_dir_all(&run.work_dir);
    Ok(Trained {
        adapter_hash,
        manifest_hash: sha256(&manifest_bytes),
        // what the manifest says, read back the way a restarted job reads it (`load_finished`)
        sources: manifest
            .db_sources()
            .map_err(|e| ModelError::invalid("manifest sources", e))?,
        manifest,
    })
}

/// The held-out split scored (`openledger_model::evaluate`): its loss and perplexity, and on the CPU the
/// adapter's greedy answers to its conversations against their references. `None` without an eval split.
fn evaluation(
    base: &BaseModel,
    model: Llama,
    lora: &Lora,
    ds: &Dataset,
    loss: Option<f64>,
) -> Result<Option<EvalReport>, ModelError> {
    if ds.eval.is_empty() {
        return Ok(None);
    }
    let examples: Vec<&Tokenized> = ds.eval.iter().map(|e| &e.tokens).collect();
    if !model.device().is_cpu() {
        // the answers need the CPU engine; a GPU run reports the loss
        return Ok(Some(EvalReport {
            eval_examples: examples.len(),
            loss,
            perplexity: loss.map(f64::exp),
            answered: 0,
            exact_match: None,
            rouge_l: None,
            samples: Vec::new(),
        }));
    }
    let serving = ServingModel::new(model)?;
    let adapter = ServedAdapter::from_lora("evaluation", lora)?;
    evaluate(&serving, &adapter, &base.tokenizer, &examples, loss).map(Some)
}

/// The trained model's manifest (its hash goes on chain as `trainingConfigHash`).
fn manifest_of(
    run: &Run,
    base: &BaseModel,
    ds: &Dataset,
    file: &DatasetFile,
    attribution: Attribution,
    adapter_hash: B256,
    metrics: &Metrics,
) -> Result<Manifest, ModelError> {
    let metrics = serde_json::to_value(metrics).map_err(|e| ModelError::invalid("metrics", e))?;
    Ok(Manifest {
        adapter: AdapterFile {
            file: ADAPTER_FILE.into(),
            sha256: adapter_hash.to_string(),
        },
        attribution: Some(attribution),
        base_model: BaseModelRef {
            config: serde_json::to_value(&base.config)
                .map_err(|e| ModelError::invalid("base config", e))?,
            hash: run.base_hash.clone(),
            id: run.base_id.clone(),
        },
        config: serde_json::to_value(&run.params.config)
            .map_err(|e| ModelError::invalid("config", e))?,
        datanets: run
            .resolved
            .iter()
            .map(|(id, v, root)| DatanetVersion {
                datanet_id: id.to_string(),
                root: root.to_string(),
                version: v.to_string(),
            })
            .collect(),
        dataset: Some(DatasetSummary {
            eval_examples: ds.eval.len(),
            tokens: file.len,
            tokens_sha256: sha256(&file.tokens).to_string(),
            train_examples: ds.train.len(),
            truncated_pairs: ds.truncated,
        }),
        imported: None,
        job_id: run.job_id,
        metrics,
        missing_content: Some(run.missing.clone()),
        openledger_training_manifest: FORMAT,
        sources: file.manifest_sources(&run.sources),
        evaluation: None,
    })
}

/// The attribution artifacts of the trained model, written into `dir` (see `attribution::build`).
fn attribute(
    run: &Run,
    base: &BaseModel,
    model: &Llama,
    ds: &Dataset,
    dir: &Path,
    stop: &AtomicBool,
    dev: &Device,
) -> Result<Attribution, ModelError> {
    let cfg = &run.params.config;
    let initial = Lora::init(&base.config, cfg.lora.clone(), cfg.seed, dev)?;
    let source_ids: Vec<SourceId> = run
        .sources
        .iter()
        .map(|s| SourceId {
            datanet_id: s.datanet_id.to_string(),
            contribution_id: s.contribution_id.to_string(),
        })
        .collect();
    attribution::build(&attribution::Input {
        model,
        initial: &initial,
        adapter_seed: cfg.seed,
        base_hash: &run.base_hash,
        train: &ds.train,
        sources: &source_ids,
        priors: &run.priors,
        dir,
        stop,
    })
    .map(|s| Attribution::Segments(Box::new(s)))
    .map_err(|e| match e {
        BuildError::Stopped => ModelError::Stopped("while storing training gradients".into()),
        BuildError::Model(e) => e,
        BuildError::Io { path, source } => ModelError::io(&path, source),
        e => ModelError::invalid("attribution data", e),
    })
}

/// Renames a finished folder into place.
pub fn place(tmp: &Path, out_dir: &Path) -> Result<(), ModelError> {
    std::fs::rename(tmp, out_dir).map_err(|e| ModelError::io(out_dir, e))
}
