//! OpenLoRA serving: one base model, many adapters, one batch.
//!
//! - `forward`: the batched step (per-sequence KV caches, per-row LoRA);
//! - `adapter`: adapters in serving form and the LRU cache under a memory budget;
//! - `sampling`: greedy / temperature / top-k / top-p / penalties, seeded;
//! - `text`: incremental detokenization and stop sequences;
//! - `engine`: the engine thread (continuous batching, adapter loads off the hot path).

pub mod adapter;
pub mod engine;
pub mod forward;
pub mod sampling;
pub mod text;

pub use adapter::{AdapterCache, AdapterRef, ServedAdapter};
pub use engine::{
    Engine, EngineConfig, Event, FinishReason, Finished, GenerateRequest, Priority, Sink, Stats,
    SubmitError,
};
pub use forward::{KvCache, SeqStep, ServingModel, step};
pub use sampling::{Sampler, SamplingParams};
pub use text::TextStream;
