//! A trained model's attribution data in segments: each segment is a span index, the projected gradients
//! of the same examples, and each example's key, over part of the model's trained examples. A model
//! trained on a Datanet version that added data reuses the segments of an earlier model (their files are
//! hard-linked into its folder) and indexes only the examples they lack in one new segment
//! (`build.rs`); a query runs over all of a model's segments as one index (`SpanSet`, `GradStore::extend`).
//!
//! The manifest lists the segments in order; "example" numbers in attribution records count the
//! segments' rows in that order. Each segment names its files with their SHA-256 and maps its own
//! source ids to the model's sources.

use std::path::Path;

use openledger_model::LoraConfig;
use openledger_model::tokenizer::Tokenized;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `attribution.layout` of manifests whose attribution data is in segments.
pub const LAYOUT: &str = "segments/1";

/// Segments of one model at most: a training job reuses at most this many less one (the largest first)
/// and indexes the rest anew, so queries never fan out over many small indexes.
pub const MAX_SEGMENTS: usize = 8;

/// File names of segment `i` in a model's folder.
pub fn span_file(i: usize) -> String {
    format!("attribution-{i}.span")
}
pub fn grads_file(i: usize) -> String {
    format!("attribution-{i}.grads")
}
pub fn keys_file(i: usize) -> String {
    format!("attribution-{i}.keys")
}

/// Whether `name` is one of a model folder's segment files (what may be downloaded).
pub fn is_segment_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("attribution-") else {
        return false;
    };
    let Some((n, ext)) = rest.split_once('.') else {
        return false;
    };
    !n.is_empty()
        && n.len() <= 3
        && n.bytes().all(|b| b.is_ascii_digit())
        && matches!(ext, "span" | "grads" | "keys")
}

/// A file of a model's folder and its SHA-256 (`0x` hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub sha256: String,
}

/// Where a reused segment was first built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReusedFrom {
    /// The training job whose folder it was linked from.
    pub job_id: i64,
    pub manifest_sha256: String,
}

/// One segment as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Examples (rows) and their tokens.
    pub examples: usize,
    pub tokens: u64,
    /// The span index (`SpanIndex` format 2).
    pub span: FileRef,
    /// The examples' projected gradients, rows in the span index's example order (`null` when the model
    /// has no gradient store).
    pub gradients: Option<FileRef>,
    /// 32 bytes per example: its key (`example_key`), what a later training job matches to reuse it
    /// (`null` only in the single segment read from a manifest written before segments).
    pub keys: Option<FileRef>,
    /// The model source of each of the segment's own source ids.
    pub sources: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<ReusedFrom>,
}

/// Everything a stored gradient row depends on besides its example: rows are reused only between models
/// whose specs (and base model) are equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientSpec {
    /// Projected dimensions in all, and per LoRA matrix.
    pub dims: usize,
    pub k: usize,
    /// The projection's seed (a string: JSON numbers lose u64 precision).
    #[serde(with = "u64_string")]
    pub seed: u64,
    /// Gradients are taken under `Lora::init(lora, adapter_seed)` ("initial").
    pub adapter: String,
    #[serde(with = "u64_string")]
    pub adapter_seed: u64,
    pub lora: LoraConfig,
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// The training manifest's `attribution` section, as `build` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// `LAYOUT`.
    pub layout: String,
    pub span_index: SpanIndexSummary,
    pub gradients: Gradients,
    pub segments: Vec<Segment>,
    /// Examples in segments linked from earlier models (absent when no index was built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_examples: Option<usize>,
    /// How attribution records number examples (absent when no index was built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_order: Option<String>,
}

/// The span index over all of a model's segments, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SpanIndexSummary {
    Built {
        /// `SpanIndex`'s file format.
        format: u32,
        examples: usize,
        tokens: u64,
        /// Which examples: `"train"` (never the held-out ones).
        split: String,
    },
    Absent(Absent),
}

/// The gradient store's spec and description, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gradients {
    Stored(StoredGradients),
    Absent(Absent),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredGradients {
    #[serde(flatten)]
    pub spec: GradientSpec,
    /// `GradStore`'s file format.
    pub format: u32,
    pub examples: usize,
    /// In words, for a reader of the manifest: how gradients are projected and what they are of.
    pub projection: String,
    pub gradient: String,
}

impl StoredGradients {
    /// The gradients of `examples` examples, taken as `spec` says (`GradStore` format 1).
    pub fn of(spec: GradientSpec, examples: usize) -> Self {
        StoredGradients {
            spec,
            format: 1,
            examples,
            projection: "per LoRA matrix: A's columns / B's rows times Rademacher(±1/sqrt k) from ChaCha8(seed ^ index·φ)".into(),
            gradient: "mean next-token cross-entropy over the example's targets, no dropout, under Lora::init(lora, adapter_seed)".into(),
        }
    }
}

/// An artifact a model has not: `{"file": null, "reason": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absent {
    pub file: (),
    pub reason: String,
}

impl Absent {
    pub fn because(reason: impl Into<String>) -> Self {
        Absent {
            file: (),
            reason: reason.into(),
        }
    }
}

/// A manifest's `attribution` section: this daemon's (`Section`), or one written before segments (read
/// by `layout` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Attribution {
    Segments(Box<Section>),
    BeforeSegments(Value),
}

/// What a manifest says of a model's attribution data.
#[derive(Debug, Clone)]
pub struct Layout {
    pub segments: Vec<Segment>,
    /// `None`: the model has no gradient store.
    pub gradients: Option<GradientSpec>,
}

/// The segments and gradient spec of `manifest`; `Err` with the reason a model has no attribution data.
/// A manifest written before segments (one `span_index` file and one `gradients` file) reads as one
/// segment without keys.
pub fn layout(manifest: &Value) -> Result<Layout, String> {
    let att = &manifest["attribution"];
    if att["layout"] == LAYOUT {
        let section: Section = serde_json::from_value(att.clone())
            .map_err(|e| format!("its manifest's attribution section: {e}"))?;
        return section.layout();
    }
    let si = &att["span_index"];
    let g = &att["gradients"];
    let spec = |g: &Value| -> Result<Option<GradientSpec>, String> {
        if g.is_null() || g["file"].is_null() && g.get("reason").is_some() {
            return Ok(None);
        }
        serde_json::from_value(g.clone()).map(Some).map_err(|e| {
            format!("its manifest's gradient store lacks its projection or adapter: {e}")
        })
    };
    let Some(file) = si["file"].as_str() else {
        return Err(match si["reason"].as_str() {
            Some(r) => format!("it has no span index: {r}"),
            None if manifest.get("imported").is_some() => {
                "it has no span index: an imported adapter's training data is unknown".into()
            }
            None => "its manifest names no span index".into(),
        });
    };
    let file_ref = |v: &Value, file: &str| FileRef {
        file: file.to_string(),
        sha256: v["sha256"].as_str().unwrap_or_default().to_string(),
    };
    let gradients = spec(g)?;
    let sources = manifest["sources"].as_array().map_or(0, Vec::len);
    Ok(Layout {
        segments: vec![Segment {
            examples: si["examples"].as_u64().unwrap_or_default() as usize,
            tokens: si["tokens"].as_u64().unwrap_or_default(),
            span: file_ref(si, file),
            gradients: match (&gradients, g["file"].as_str()) {
                (Some(_), Some(f)) => Some(file_ref(g, f)),
                _ => None,
            },
            keys: None,
            sources: (0..sources).collect(),
            reused_from: None,
        }],
        gradients,
    })
}

impl Section {
    /// The section of a model without a span index (and so without gradients), for `reason`.
    pub fn without_index(reason: String) -> Self {
        Section {
            layout: LAYOUT.into(),
            span_index: SpanIndexSummary::Absent(Absent::because(reason)),
            gradients: Gradients::Absent(Absent::because("no span index")),
            segments: Vec::new(),
            reused_examples: None,
            example_order: None,
        }
    }

    /// The segments and gradient spec; `Err` with the reason the model has no attribution data.
    pub fn layout(self) -> Result<Layout, String> {
        if self.segments.is_empty() {
            return Err(match self.span_index {
                SpanIndexSummary::Absent(a) => format!("it has no span index: {}", a.reason),
                SpanIndexSummary::Built { .. } => {
                    "its manifest lists no attribution segments".into()
                }
            });
        }
        let gradients = match self.gradients {
            Gradients::Stored(g) => Some(g.spec),
            Gradients::Absent(_) => None,
        };
        if gradients.is_some() && self.segments.iter().any(|s| s.gradients.is_none()) {
            return Err("a segment lacks the gradients its manifest promises".into());
        }
        Ok(Layout {
            segments: self.segments,
            gradients,
        })
    }

    /// Examples in segments of their own (indexed by this model's job).
    pub fn new_examples(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.reused_from.is_none())
            .map(|s| s.examples)
            .sum()
    }
}

/// A trained example's identity across models: SHA-256 over its contribution (Datanet id, contribution
/// id, in decimal) and its tokens with their target flags. Equal keys: the same example, with the same
/// span index entry and gradient row.
pub type Key = [u8; 32];

pub fn example_key(datanet_id: &str, contribution_id: &str, t: &Tokenized) -> Key {
    let mut h = Sha256::new();
    h.update(b"openledger-example\0");
    h.update(datanet_id.as_bytes());
    h.update([0]);
    h.update(contribution_id.as_bytes());
    h.update([0]);
    for (id, target) in t.ids.iter().zip(&t.targets) {
        h.update(id.to_le_bytes());
        h.update([u8::from(*target)]);
    }
    h.finalize().into()
}

/// A keys file's rows and the file's SHA-256 (one read).
pub fn read_keys(path: &Path) -> std::io::Result<(Vec<Key>, String)> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % 32 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a whole number of 32-byte keys", path.display()),
        ));
    }
    let keys = bytes
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap_or_default())
        .collect();
    Ok((keys, crate::common::sha256_hex(&bytes)))
}

/// A file's SHA-256 as lowercase `0x` hex, streamed.
pub fn file_sha256(path: &Path) -> Result<String, openledger_model::ModelError> {
    openledger_model::weights::file_sha256(path).map(|h| openledger_model::weights::hex0x(&h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn segment_file_names_are_recognised_and_nothing_else() {
        for i in [0, 7, 12] {
            assert!(is_segment_file(&span_file(i)));
            assert!(is_segment_file(&grads_file(i)));
            assert!(is_segment_file(&keys_file(i)));
        }
        for bad in [
            "attribution-.span",
            "attribution-1.txt",
            "attribution-1",
            "attribution-../x.span",
            "attribution-1234.span",
            "manifest.json",
        ] {
            assert!(!is_segment_file(bad), "{bad}");
        }
    }

    #[test]
    fn a_manifest_from_before_segments_reads_as_one_segment() {
        let lora = json!({"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj"]});
        let m = json!({
            "sources": [{}, {}, {}],
            "attribution": {
                "span_index": {"file": "attribution.span", "sha256": "0xaa", "format": 2, "examples": 5, "tokens": 90},
                "gradients": {"file": "attribution.grads", "sha256": "0xbb", "dims": 64, "k": 8,
                              "seed": "18446744073709551615", "adapter": "initial", "adapter_seed": "1", "lora": lora},
            }
        });
        let l = layout(&m).unwrap();
        assert_eq!(l.segments.len(), 1);
        let s = &l.segments[0];
        assert_eq!(
            (s.examples, s.tokens, s.sources.clone()),
            (5, 90, vec![0, 1, 2])
        );
        assert_eq!(s.gradients.as_ref().unwrap().file, "attribution.grads");
        let g = l.gradients.unwrap();
        assert_eq!((g.seed, g.adapter_seed, g.k), (u64::MAX, 1, 8));
        // the reasons a model has nothing to attribute with
        let none =
            json!({"attribution": {"span_index": {"file": null, "reason": "token id 70000"}}});
        assert!(layout(&none).unwrap_err().contains("token id 70000"));
        let imported = json!({"imported": {}});
        assert!(layout(&imported).unwrap_err().contains("imported"));
        let seg = json!({"attribution": {"layout": LAYOUT, "segments": [],
                                         "span_index": {"file": null, "reason": "tokens too wide"},
                                         "gradients": {"file": null, "reason": "no span index"}}});
        assert_eq!(
            layout(&seg).unwrap_err(),
            "it has no span index: tokens too wide"
        );
        let broken = json!({"attribution": {"layout": LAYOUT, "segments": []}});
        assert!(layout(&broken).unwrap_err().contains("attribution section"));
    }

    #[test]
    fn keys_tell_examples_apart_by_contribution_tokens_and_targets() {
        let t = Tokenized {
            ids: vec![1, 2, 3],
            targets: vec![false, true, true],
        };
        let k = example_key("1", "2", &t);
        assert_eq!(k, example_key("1", "2", &t.clone()));
        assert_ne!(k, example_key("1", "3", &t));
        assert_ne!(k, example_key("12", "", &t));
        let mut u = t.clone();
        u.targets[1] = false;
        assert_ne!(k, example_key("1", "2", &u));
        u = t.clone();
        u.ids[2] = 4;
        assert_ne!(k, example_key("1", "2", &u));
    }
}
