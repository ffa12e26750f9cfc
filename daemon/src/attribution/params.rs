//! The method parameters an attribution record names (its `params`): written with every record from the
//! settings it was computed with, and read back by `verify` to recompute it with the same settings.

use openledger_attribution::{CombineParams, GradParams, SpanParams};
use serde::{Deserialize, Serialize};

use super::{AttributionConfig, GradArtifacts, GradientMode};

/// A record's `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordParams {
    pub span: SpanPart,
    /// `null` when the model has no gradient store.
    pub gradient: Option<GradPart>,
    pub combine: CombinePart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanPart {
    pub min_len: usize,
    pub max_count: usize,
    pub density: f64,
    /// `ol-attr/2`: the shortest run of output tokens found in the prompt that is the prompt's (absent in
    /// `ol-attr/1` records, where nothing is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_min_len: Option<usize>,
}

/// The gradient pass's parameters; the projection's (`k`, `seed`) and the adapter's seed are the model's,
/// written as decimal strings (u64 does not survive JSON readers that use doubles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradPart {
    pub k: usize,
    pub seed: String,
    /// Read as today's default when absent.
    #[serde(default)]
    pub damping: Option<f64>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub adapter: Option<String>,
    #[serde(default)]
    pub adapter_seed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinePart {
    pub cos_lo: f64,
    pub cos_hi: f64,
    pub floor_ppm: u64,
}

impl RecordParams {
    /// The parameters of a record computed with `cfg` over a model whose gradient store is `grads`.
    pub fn of(cfg: &AttributionConfig, grads: Option<&GradArtifacts>) -> Self {
        RecordParams {
            span: SpanPart {
                min_len: cfg.span.min_len,
                max_count: cfg.span.max_count,
                density: cfg.span.density,
                prompt_min_len: cfg.span.prompt_min_len,
            },
            gradient: grads.map(|g| GradPart {
                k: g.k,
                seed: g.seed.to_string(),
                damping: Some(cfg.grad.damping),
                top_k: Some(cfg.grad.top_k),
                adapter: Some("initial".into()),
                adapter_seed: Some(g.adapter_seed.to_string()),
            }),
            combine: CombinePart {
                cos_lo: cfg.combine.cos_lo,
                cos_hi: cfg.combine.cos_hi,
                floor_ppm: cfg.combine.floor_ppm,
            },
        }
    }

    /// The settings to recompute the record with (the gradient part synchronously).
    pub fn config(&self) -> AttributionConfig {
        let d = GradParams::default();
        let g = self.gradient.as_ref();
        AttributionConfig {
            gradient: GradientMode::Sync,
            span: SpanParams {
                min_len: self.span.min_len,
                max_count: self.span.max_count,
                density: self.span.density,
                prompt_min_len: self.span.prompt_min_len,
            },
            grad: GradParams {
                damping: g.and_then(|g| g.damping).unwrap_or(d.damping),
                top_k: g.and_then(|g| g.top_k).unwrap_or(d.top_k),
                ..d
            },
            combine: CombineParams {
                cos_lo: self.combine.cos_lo,
                cos_hi: self.combine.cos_hi,
                floor_ppm: self.combine.floor_ppm,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_params_read_back_as_the_settings() {
        let mut cfg = AttributionConfig::default();
        cfg.span.min_len = 7;
        cfg.grad.top_k = 5;
        cfg.combine.floor_ppm = 11;
        let p = RecordParams::of(&cfg, None);
        let v = serde_json::to_value(&p).unwrap();
        assert!(v["gradient"].is_null(), "{v}");
        let back: RecordParams = serde_json::from_value(v).unwrap();
        let c = back.config();
        assert_eq!(
            (c.span.min_len, c.combine.floor_ppm, c.grad.top_k),
            (7, 11, GradParams::default().top_k),
            "without a gradient store the record names no gradient settings"
        );
        assert_eq!(c.span, cfg.span);
        assert_eq!(c.combine, cfg.combine);
    }

    #[test]
    fn a_first_method_record_reads_back_without_the_prompts_part() {
        let v1: RecordParams = serde_json::from_value(serde_json::json!({
            "span": {"min_len": 4, "max_count": 10, "density": 0.05},
            "gradient": null,
            "combine": {"cos_lo": 0.35, "cos_hi": 0.7, "floor_ppm": 20000},
        }))
        .unwrap();
        assert_eq!(v1.config().span.prompt_min_len, None);
        assert_eq!(
            openledger_attribution::method_of(&v1.config().span),
            openledger_attribution::METHOD_V1
        );
        // and writes back as it was (its hash is over this text)
        let text = serde_json::to_value(&v1).unwrap();
        assert!(text["span"].get("prompt_min_len").is_none(), "{text}");
        let now = RecordParams::of(&AttributionConfig::default(), None);
        assert_eq!(
            serde_json::to_value(&now).unwrap()["span"]["prompt_min_len"],
            openledger_attribution::span::DEFAULT_PROMPT_MIN_LEN
        );
    }
}
