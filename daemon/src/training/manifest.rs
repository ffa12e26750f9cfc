//! The training manifest (`manifest.json` next to the adapter): what a model was trained from and how.
//! Its SHA-256 is the model's on-chain `trainingConfigHash`, so this is the one place it is written and
//! read. It is written as a JSON value, so its keys stand in alphabetical order at every level whatever the
//! order of the fields: the bytes are those of the manifests written before it had a type.

use std::path::{Path, PathBuf};

use alloy::primitives::B256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attribution::segments::Attribution;
use crate::common::sha256;
use crate::models::Source;

/// The manifest format this daemon writes.
pub const FORMAT: u32 = 1;
/// The file names in an adapter folder.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub adapter: AdapterFile,
    /// The attribution artifacts (`attribution::build`); absent for imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    pub base_model: BaseModelRef,
    /// The hyper-parameters (`TrainConfig`; an import's LoRA shape only).
    pub config: Value,
    pub datanets: Vec<DatanetVersion>,
    /// The held-out split scored after training (`openledger_model::evaluate::EvalReport`: loss, perplexity,
    /// exact match and ROUGE-L of greedy answers); absent for imports and runs without an eval split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Value>,
    /// The tokenized dataset; absent for imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSummary>,
    /// Set for an adapter trained elsewhere and imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
    pub job_id: i64,
    pub metrics: Value,
    /// Contributions of the versions whose content this daemon did not hold (not trained on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_content: Option<Vec<MissingContent>>,
    pub openledger_training_manifest: u32,
    pub sources: Vec<ManifestSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterFile {
    pub file: String,
    /// 0x-prefixed SHA-256 of the adapter file.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModelRef {
    /// The base model's hyper-parameters (`ModelConfig`).
    pub config: Value,
    pub hash: String,
    pub id: String,
}

/// A Datanet version trained on; numbers in decimal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatanetVersion {
    pub datanet_id: String,
    pub root: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub eval_examples: usize,
    pub tokens: usize,
    pub tokens_sha256: String,
    pub train_examples: usize,
    pub truncated_pairs: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub adapter_config_sha256: String,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingContent {
    pub content_hash: String,
    pub contribution_id: String,
}

/// One contribution the model was trained on (`source` is its index in the dataset's examples).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSource {
    pub content_hash: String,
    pub contribution_id: String,
    pub contributor: String,
    pub datanet_id: String,
    pub examples: i32,
    pub source: usize,
    pub tokens: i64,
}

/// A finished adapter folder, as training or an import left it.
#[derive(Debug)]
pub struct Trained {
    pub manifest: Manifest,
    pub adapter_hash: B256,
    pub manifest_hash: B256,
    pub sources: Vec<Source>,
}

/// Why an adapter folder cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The disk failed: worth another attempt.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder's content is wrong: another attempt finds the same.
    #[error("{0}")]
    Invalid(String),
}

impl Manifest {
    /// The bytes written as `manifest.json` (and hashed into `trainingConfigHash`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        // keys sorted at every level (a `Value`'s maps keep insertion order in this build)
        serde_json::to_vec_pretty(&crate::common::sorted_keys(serde_json::to_value(self)?))
    }

    /// The sources as the database records them.
    pub fn db_sources(&self) -> Result<Vec<Source>, ArtifactError> {
        self.sources
            .iter()
            .map(|s| {
                let bad = |what: &str| {
                    ArtifactError::Invalid(format!("manifest source {}: {what}", s.source))
                };
                Ok(Source {
                    source: i32::try_from(s.source).map_err(|_| bad("source"))?,
                    datanet_id: s.datanet_id.parse().map_err(|_| bad("datanet_id"))?,
                    contribution_id: s
                        .contribution_id
                        .parse()
                        .map_err(|_| bad("contribution_id"))?,
                    contributor: s.contributor.parse().map_err(|_| bad("contributor"))?,
                    content_hash: s.content_hash.clone(),
                    examples: s.examples,
                    tokens: s.tokens,
                })
            })
            .collect()
    }

    /// `datanets` as the API and the database show them.
    pub fn datanets_json(&self) -> Value {
        serde_json::to_value(&self.datanets).unwrap_or(Value::Null)
    }
}

/// Reads back a finished adapter folder (an earlier attempt got past training); `None` when it has no
/// manifest yet. The adapter file must hash to what the manifest says.
pub fn load_finished(out_dir: &Path) -> Result<Option<Trained>, ArtifactError> {
    let mpath = out_dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ArtifactError::Io {
                path: mpath,
                source,
            });
        }
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ArtifactError::Invalid(format!("{}: {e}", mpath.display())))?;
    let adapter = std::fs::read(out_dir.join(ADAPTER_FILE))
        .map_err(|e| ArtifactError::Invalid(format!("adapter of {}: {e}", out_dir.display())))?;
    let adapter_hash = sha256(&adapter);
    if manifest.adapter.sha256 != adapter_hash.to_string() {
        return Err(ArtifactError::Invalid(format!(
            "{}: the adapter file does not match its manifest",
            out_dir.display()
        )));
    }
    Ok(Some(Trained {
        sources: manifest.db_sources()?,
        manifest_hash: sha256(&bytes),
        adapter_hash,
        manifest,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::attribution::segments::{
        Absent, FileRef, Gradients, LAYOUT, Section, Segment, SpanIndexSummary,
    };
    use serde_json::json;

    fn sample() -> Manifest {
        Manifest {
            adapter: AdapterFile {
                file: ADAPTER_FILE.into(),
                sha256: format!("0x{}", "ab".repeat(32)),
            },
            attribution: Some(Attribution::Segments(Box::new(section()))),
            base_model: BaseModelRef {
                config: json!({ "vocab_size": 256, "hidden_size": 64 }),
                hash: format!("0x{}", "cd".repeat(32)),
                id: "tiny".into(),
            },
            config: json!({ "steps": 3, "lora": { "rank": 4 } }),
            datanets: vec![DatanetVersion {
                datanet_id: "1".into(),
                root: format!("0x{}", "ef".repeat(32)),
                version: "2".into(),
            }],
            evaluation: None,
            dataset: Some(DatasetSummary {
                eval_examples: 1,
                tokens: 40,
                tokens_sha256: format!("0x{}", "01".repeat(32)),
                train_examples: 4,
                truncated_pairs: 0,
            }),
            imported: None,
            job_id: 7,
            metrics: json!({ "final_loss": 1.5 }),
            missing_content: Some(vec![]),
            openledger_training_manifest: FORMAT,
            sources: vec![ManifestSource {
                content_hash: format!("0x{}", "02".repeat(32)),
                contribution_id: "5".into(),
                contributor: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
                datanet_id: "1".into(),
                examples: 4,
                source: 0,
                tokens: 40,
            }],
        }
    }

    fn section() -> Section {
        Section {
            layout: LAYOUT.into(),
            span_index: SpanIndexSummary::Built {
                format: 2,
                examples: 4,
                tokens: 40,
                split: "train".into(),
            },
            gradients: Gradients::Absent(Absent::because("no gradients on this device")),
            segments: vec![Segment {
                examples: 4,
                tokens: 40,
                span: FileRef {
                    file: "attribution-0.span".into(),
                    sha256: format!("0x{}", "aa".repeat(32)),
                },
                gradients: None,
                keys: Some(FileRef {
                    file: "attribution-0.keys".into(),
                    sha256: format!("0x{}", "bb".repeat(32)),
                }),
                sources: vec![0],
                reused_from: None,
            }],
            reused_examples: Some(0),
            example_order: Some("the segments in order, each segment's rows in order".into()),
        }
    }

    #[test]
    fn the_bytes_are_those_of_the_untyped_manifest() {
        // the attribution section as `build` wrote it with `json!` before it had a type
        let m = sample();
        let untyped = json!({
            "layout": LAYOUT,
            "span_index": { "format": 2, "examples": 4, "tokens": 40, "split": "train" },
            "gradients": { "file": null, "reason": "no gradients on this device" },
            "segments": [{
                "examples": 4, "tokens": 40,
                "span": { "file": "attribution-0.span", "sha256": format!("0x{}", "aa".repeat(32)) },
                "gradients": null,
                "keys": { "file": "attribution-0.keys", "sha256": format!("0x{}", "bb".repeat(32)) },
                "sources": [0],
            }],
            "reused_examples": 0,
            "example_order": "the segments in order, each segment's rows in order",
        });
        let bytes = m.to_bytes().unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["attribution"], untyped);
        // keys sorted at every level, as a `json!` map writes them: a segment's `tokens` field comes before
        // its `span` field in the type, after it in the file
        let text = String::from_utf8(bytes.clone()).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        assert!(at("span") < at("tokens"), "{text}");
        assert_eq!(bytes, serde_json::to_vec_pretty(&v).unwrap());
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn a_finished_folder_reads_back_and_a_changed_adapter_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_finished(dir.path()).unwrap().is_none());
        let adapter = b"adapter bytes".to_vec();
        let mut m = sample();
        m.adapter.sha256 = sha256(&adapter).to_string();
        std::fs::write(dir.path().join(ADAPTER_FILE), &adapter).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), m.to_bytes().unwrap()).unwrap();
        let t = load_finished(dir.path()).unwrap().unwrap();
        assert_eq!(t.manifest_hash, sha256(&m.to_bytes().unwrap()));
        assert_eq!(t.sources.len(), 1);
        assert_eq!(
            t.sources[0].contribution_id,
            alloy::primitives::U256::from(5)
        );
        std::fs::write(dir.path().join(ADAPTER_FILE), b"other").unwrap();
        assert!(matches!(
            load_finished(dir.path()),
            Err(ArtifactError::Invalid(m)) if m.contains("does not match")
        ));
    }
}
