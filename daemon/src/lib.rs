//! The OpenLedger daemon as a library (the `openledger` binary's `main.rs` only runs `cli`):
//! - `common`: ground-floor helpers (hashes, canonical JSON, synced writes, address text);
//! - `notify`: Postgres NOTIFY forwarded in-process (job changes, index progress);
//! - `quotas`: per-address daily quotas and the concurrent-jobs limit, charged in the actions' transactions;
//! - `api`: the REST API (axum + utoipa), one file per area;
//! - `auth`: Sign-In-with-Ethereum sessions and API keys;
//! - `content` / `uploads`: contribution content and its path to the chain;
//! - `jobs`: the Postgres job queue, its workers and the job kinds;
//! - `chain`: the daemon's key and its view of the contracts;
//! - `inference`: OpenLoRA serving (engine, model resolution, payment, inference records);
//! - `training`: ModelFactory's training (parameters, dataset, the run, the manifest), under the `train` job;
//! - `settlement`: epochs of paid, attributed inferences proposed as reward roots, and their audit;
//! - `serve`: one process running the API, the indexer, the workers and the settlement schedule.

pub mod api;
pub mod attribution;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod common;
pub mod content;
pub mod exports;
pub mod inference;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod notify;
pub mod quotas;
pub mod serve;
pub mod settlement;
pub mod state;
pub mod training;
pub mod uploads;
