//! The OpenLedger daemon as a library (the `openledger` binary's `main.rs` only runs `cli`):
//! - `api`: the REST API (axum + utoipa), one file per area;
//! - `auth`: Sign-In-with-Ethereum sessions and API keys;
//! - `content` / `uploads`: contribution content and its path to the chain;
//! - `jobs`: the Postgres job queue, its workers and the job kinds;
//! - `chain`: the daemon's key and its view of the contracts;
//! - `inference`: OpenLoRA serving (engine, model resolution, payment, inference records);
//! - `settlement`: epochs of paid, attributed inferences proposed as reward roots, and their audit;
//! - `serve`: one process running the API, the indexer, the workers and the settlement schedule.

pub mod api;
pub mod attribution;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod content;
pub mod inference;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod serve;
pub mod settlement;
pub mod state;
pub mod uploads;
pub mod web;
