//! OpenLoRA serving: one base model, many adapters, one batch.
//!
//! - `forward`: the batched step (per-sequence KV caches, per-row LoRA);
//! - `adapter`: adapters in serving form and the LRU cache under a memory budget;
//! - `constraint`: structured outputs (a grammar's allowed tokens per step, by llguidance);
//! - `sampling`: greedy / temperature / top-k / top-p / penalties, seeded;
//! - `text`: incremental detokenization and stop sequences;
//! - `device`: the same step on any candle device (bf16 and a paged KV cache on a GPU, f32 on the CPU);
//! - `engine`: the engine thread (continuous batching, adapter loads off the hot path).

pub mod adapter;
pub mod constraint;
pub mod device;
pub mod engine;
pub mod forward;
pub mod sampling;
pub mod text;

pub use adapter::{AdapterCache, AdapterRef, ServedAdapter};
pub use constraint::{Constraint, Grammars};
pub use device::{DeviceConfig, DeviceModel, PagedCache};
pub use engine::{
    Engine, EngineConfig, Event, FinishReason, Finished, GenerateRequest, Priority, Sink, Stats,
    SubmitError,
};
pub use forward::{Backend, KvCache, SeqStep, ServingModel, greedy, step};
pub use sampling::{MAX_TOP_LOGPROBS, Sampler, SamplingParams, TokenLogprobs};
pub use text::TextStream;
