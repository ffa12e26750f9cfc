//! Proof of Attribution: which training contributions shaped an output, and how much each is paid.
//!
//! - `span`: exact matches (infini-gram / OLMoTrace style), a suffix array over the training token stream
//!   with its example -> source boundaries, queried for the maximal spans of an output.
//! - `grad`: paraphrase-aware gradient attribution for LoRA models (LoGra-style projected per-example
//!   gradients, TracIn / DataInf scores).
//! - `lora`: the two meet the model: an adapter's parameter layout and a sequence's projected gradient.
//! - `weights`: the deterministic rule from both kinds of evidence to integer payout weights.

pub mod grad;
pub mod lora;
pub mod span;
pub mod weights;

pub use grad::{GradError, GradParams, GradScores, GradStore, Projector};
pub use span::{Doc, Span, SpanError, SpanIndex, SpanParams, SpanSet};
pub use weights::{
    CombineParams, METHOD, METHOD_V1, METHODS, SCALE, Weights, combine, mean, method_of,
};
