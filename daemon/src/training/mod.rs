//! ModelFactory's training, apart from the job that runs it: the parameters a training job takes
//! (`params`), the dataset file and its provenance (`dataset`), the run on the training thread (`run`), and
//! the manifest whose SHA-256 goes on chain as `trainingConfigHash` (`manifest`). The `train` job
//! (`jobs/train.rs`) resolves the Datanet versions, runs these, records the model and publishes it.
//!
//! Imports only the ground floor (models, common helpers, the model and attribution crates) and the
//! attribution build; never the job queue, the API or the chain.

pub mod dataset;
pub mod manifest;
pub mod params;
pub mod run;

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

/// What names a job's folders: its id and creation time.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub id: i64,
    pub created_at: OffsetDateTime,
}

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
    fn job_dir(job: &Job) -> String {
        format!(
            "job-{}-{}",
            job.id,
            job.created_at.unix_timestamp_nanos() / 1000
        )
    }

    pub fn adapter_dir(&self, job: &Job) -> PathBuf {
        self.data_dir.join("adapters").join(Self::job_dir(job))
    }

    pub fn work_dir(&self, job: &Job) -> PathBuf {
        self.data_dir.join("training").join(Self::job_dir(job))
    }
}
