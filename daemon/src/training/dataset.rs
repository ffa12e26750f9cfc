//! The training set's provenance: the contributions it comes from (`SourceInfo`), their canonical JSONL
//! content as training records, and the tokenized dataset as training saw it (`dataset.tokens` +
//! `dataset.json`), with each example's source and split and each source's share.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use openledger_model::train::{Dataset, Record};
use serde_json::{Value, json};

use super::manifest::ManifestSource;

/// A contribution of a trained-on Datanet version.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub datanet_id: U256,
    pub contribution_id: U256,
    pub contributor: Address,
    pub content_hash: B256,
}

/// The records of canonical JSONL content (see `content.rs`).
pub fn records_of(body: &[u8]) -> Result<Vec<Record>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).map_err(|e| e.to_string())?;
            match (
                v.get("text"),
                v.get("prompt"),
                v.get("completion"),
                v.get("messages"),
            ) {
                (Some(Value::String(t)), None, None, None) => Ok(Record::Text(t.clone())),
                (None, Some(Value::String(p)), Some(Value::String(c)), None) => Ok(Record::Pair {
                    prompt: p.clone(),
                    completion: c.clone(),
                }),
                (None, None, None, Some(Value::Array(ms))) => ms
                    .iter()
                    .map(|m| match (m.get("role"), m.get("content")) {
                        (Some(Value::String(r)), Some(Value::String(c))) => {
                            Ok((r.clone(), c.clone()))
                        }
                        _ => Err(format!("unexpected turn in {l:?}")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Record::Chat),
                _ => Err(format!("unexpected record {l:?}")),
            }
        })
        .collect()
}

/// The tokenized dataset, train split then eval split, as one file of little-endian u32 token ids.
#[derive(Debug)]
pub struct DatasetFile {
    /// `dataset.tokens`.
    pub tokens: Vec<u8>,
    /// `dataset.json`'s examples: offset, length, source, split, first target position.
    pub examples: Vec<Value>,
    /// Examples and tokens per source index.
    pub per_source: BTreeMap<usize, (i32, i64)>,
    /// Token count.
    pub len: usize,
}

impl DatasetFile {
    pub fn of(ds: &Dataset) -> Self {
        let mut f = DatasetFile {
            tokens: Vec::new(),
            examples: Vec::new(),
            per_source: BTreeMap::new(),
            len: 0,
        };
        for (split, set) in [("train", &ds.train), ("eval", &ds.eval)] {
            for e in set.iter() {
                for id in &e.tokens.ids {
                    f.tokens.extend_from_slice(&id.to_le_bytes());
                }
                let first_target = e
                    .tokens
                    .targets
                    .iter()
                    .position(|t| *t)
                    .unwrap_or(e.tokens.ids.len());
                f.examples.push(json!({
                    "offset": f.len, "len": e.tokens.ids.len(), "source": e.source,
                    "split": split, "first_target": first_target,
                }));
                f.len += e.tokens.ids.len();
                let s = f.per_source.entry(e.source).or_default();
                s.0 += 1;
                s.1 += e.tokens.ids.len() as i64;
            }
        }
        f
    }

    /// `dataset.json`.
    pub fn index_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&json!({
            "tokens_file": "dataset.tokens", "dtype": "u32le", "examples": self.examples,
        }))
    }

    fn share(&self, i: usize) -> (i32, i64) {
        self.per_source.get(&i).copied().unwrap_or((0, 0))
    }

    /// The manifest's `sources`.
    pub fn manifest_sources(&self, sources: &[SourceInfo]) -> Vec<ManifestSource> {
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (examples, tokens) = self.share(i);
                ManifestSource {
                    content_hash: s.content_hash.to_string(),
                    contribution_id: s.contribution_id.to_string(),
                    contributor: format!("{:#x}", s.contributor),
                    datanet_id: s.datanet_id.to_string(),
                    examples,
                    source: i,
                    tokens,
                }
            })
            .collect()
    }
}
