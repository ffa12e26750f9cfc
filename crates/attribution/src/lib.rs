//! Proof of Attribution: which training contributions an output's tokens came from.
//!
//! `span`: exact matches (infini-gram / OLMoTrace style), a suffix array over the training token stream
//! with its example -> source boundaries, queried for the maximal spans of an output.

pub mod span;

pub use span::{Doc, Span, SpanError, SpanIndex, SpanParams};
