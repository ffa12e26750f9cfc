//! The job queue: `queue` (Postgres state machine), `worker` (claiming, heartbeats, cancellation) and one
//! file per job kind. Training, inference and settlement kinds plug in as further `JobHandler`s.
//!
//! May import the domains it runs (`training`, `inference`, `attribution`, `uploads`, `models`) and the
//! ground floor (`chain`, `common`); never `api`, `state` or `settlement`.

pub mod batch;
pub mod publish;
pub mod queue;
pub mod relay;
pub mod snapshot;
pub mod train;
pub mod worker;

pub use queue::{Job, JobState, Queue};
pub use worker::{JobContext, JobError, JobHandler, Refusal, Registry, WorkerConfig};
