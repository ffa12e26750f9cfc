//! Training's side of attribution: the segments of a freshly trained model (see `segments.rs`), reusing
//! those of earlier models on the same base wherever their examples are among this model's, so a Datanet
//! version that adds data costs an index and gradients for the added examples only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use openledger_attribution::lora as attribution_lora;
use openledger_attribution::{Doc, GradParams, GradStore, Projector, SpanIndex};
use openledger_model::train::Example;
use openledger_model::{Llama, Lora, ModelError};
use serde_json::Value;

use super::segments::{
    Absent, FileRef, GradientSpec, Gradients, Key, LAYOUT, MAX_SEGMENTS, ReusedFrom, Section,
    Segment, SpanIndexSummary, StoredGradients, example_key, file_sha256, grads_file, keys_file,
    layout, read_keys, span_file,
};

/// Why a model's attribution data could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The job was asked to stop (it resumes later).
    #[error("stopped while storing training gradients")]
    Stopped,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("span index: {0}")]
    SpanIndex(String),
    #[error("gradient store: {0}")]
    Gradients(String),
    /// The model's forward and backward passes, and hashing its files.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// An earlier trained model whose segments may be reused.
#[derive(Debug, Clone)]
pub struct Prior {
    pub job_id: i64,
    pub dir: PathBuf,
    pub manifest_sha256: String,
}

/// One training source's contribution, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub datanet_id: String,
    pub contribution_id: String,
}

/// What a model's attribution data is built from.
#[derive(Debug)]
pub struct Input<'a> {
    /// The base model in f32, and the adapter gradients are taken under (`Lora::init(lora, adapter_seed)`).
    pub model: &'a Llama,
    pub initial: &'a Lora,
    pub adapter_seed: u64,
    pub base_hash: &'a str,
    /// The examples the adapter was trained on, and each model source's contribution.
    pub train: &'a [Example],
    pub sources: &'a [SourceId],
    /// Newest first.
    pub priors: &'a [Prior],
    /// The model's (temporary) folder.
    pub dir: &'a Path,
    pub stop: &'a AtomicBool,
}

/// Builds (or links) the segments into `dir` and returns the manifest's `attribution` section.
pub fn build(inp: &Input<'_>) -> Result<Section, BuildError> {
    if let Some(t) = inp
        .train
        .iter()
        .flat_map(|e| &e.tokens.ids)
        .find(|&&t| t >= u32::from(u16::MAX))
    {
        return Ok(Section::without_index(format!(
            "token id {t} does not fit the span index's 16-bit tokens"
        )));
    }
    let lay = attribution_lora::layout(inp.initial);
    let k = GradParams::k_for(&lay, openledger_attribution::grad::TARGET_DIMS);
    let projector = Projector::new(&lay, k, GradParams::default().seed);
    let spec = openledger_model::train::gradients_supported(inp.model).then(|| GradientSpec {
        dims: projector.dims(),
        k,
        seed: GradParams::default().seed,
        adapter: "initial".into(),
        adapter_seed: inp.adapter_seed,
        lora: inp.initial.config.clone(),
    });
    let keys: Vec<Key> = inp
        .train
        .iter()
        .map(|e| {
            let s = &inp.sources[e.source];
            example_key(&s.datanet_id, &s.contribution_id, &e.tokens)
        })
        .collect();
    let (reused, rest) = plan(inp, &keys, spec.as_ref());
    let mut segments = Vec::new();
    for r in reused {
        segments.push(r.link(inp.dir, segments.len(), spec.is_some())?);
    }
    let reused_examples: usize = segments.iter().map(|s| s.examples).sum();
    let started = std::time::Instant::now();
    if !rest.is_empty() {
        let i = segments.len();
        let examples: Vec<&Example> = rest.iter().map(|&j| &inp.train[j]).collect();
        let rest_keys: Vec<Key> = rest.iter().map(|&j| keys[j]).collect();
        let grads = spec.as_ref().map(|_| (&projector, inp));
        segments.push(new_segment(inp.dir, i, &examples, &rest_keys, grads)?);
    }
    tracing::info!(
        segments = segments.len(),
        reused_examples,
        new_examples = rest.len(),
        seconds = started.elapsed().as_secs_f64(),
        "attribution segments written"
    );
    let tokens: u64 = segments.iter().map(|s| s.tokens).sum();
    let gradients = match spec {
        Some(spec) => Gradients::Stored(StoredGradients::of(spec, inp.train.len())),
        None => Gradients::Absent(Absent::because(
            "per-example gradients need dense f32 weights (the model was loaded quantized)",
        )),
    };
    Ok(Section {
        layout: LAYOUT.into(),
        span_index: SpanIndexSummary::Built {
            format: 2,
            examples: inp.train.len(),
            tokens,
            split: "train".into(),
        },
        gradients,
        segments,
        reused_examples: Some(reused_examples),
        example_order: Some("the segments in order, each segment's rows in order".into()),
    })
}

/// An earlier model's segment chosen for reuse.
struct Reuse {
    dir: PathBuf,
    from: ReusedFrom,
    segment: Segment,
    /// Its source ids mapped to this model's sources.
    sources: Vec<usize>,
}

impl Reuse {
    /// Links (or copies) the segment's files into `dir` as segment `i` (its gradients only if this
    /// model stores gradients): the segment as this model's manifest lists it.
    fn link(self, dir: &Path, i: usize, with_gradients: bool) -> Result<Segment, BuildError> {
        let link = |from: &FileRef, to: String| -> Result<FileRef, BuildError> {
            link_or_copy(&self.dir.join(&from.file), &dir.join(&to))?;
            Ok(FileRef {
                file: to,
                sha256: from.sha256.clone(),
            })
        };
        let s = &self.segment;
        Ok(Segment {
            examples: s.examples,
            tokens: s.tokens,
            span: link(&s.span, span_file(i))?,
            gradients: match &s.gradients {
                Some(g) if with_gradients => Some(link(g, grads_file(i))?),
                _ => None,
            },
            keys: s.keys.as_ref().map(|k| link(k, keys_file(i))).transpose()?,
            sources: self.sources,
            reused_from: Some(self.from),
        })
    }
}

/// The earlier segments to reuse (the largest first, at most `MAX_SEGMENTS - 1`, each only if every one
/// of its examples is among this model's not yet covered, and its files still hash as listed) and the
/// examples left for a new segment (ascending).
fn plan(inp: &Input<'_>, keys: &[Key], spec: Option<&GradientSpec>) -> (Vec<Reuse>, Vec<usize>) {
    let mut free: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate().rev() {
        free.entry(*k).or_default().push(i);
    }
    let mut taken = Vec::new();
    for (p, segment, sources) in candidates(inp, spec) {
        if taken.len() + 1 >= MAX_SEGMENTS {
            break;
        }
        let Some(seg_keys) = fits(p, &segment, spec.is_some(), &free) else {
            continue;
        };
        for k in &seg_keys {
            free.get_mut(k).and_then(Vec::pop);
        }
        taken.push(Reuse {
            dir: p.dir.clone(),
            from: ReusedFrom {
                job_id: p.job_id,
                manifest_sha256: p.manifest_sha256.clone(),
            },
            segment,
            sources,
        });
    }
    let mut rest: Vec<usize> = free.into_values().flatten().collect();
    rest.sort_unstable();
    (taken, rest)
}

/// Every earlier model's segments that fit this one, each once, the largest first.
fn candidates<'a>(
    inp: &'a Input<'_>,
    spec: Option<&GradientSpec>,
) -> Vec<(&'a Prior, Segment, Vec<usize>)> {
    let ours: HashMap<&SourceId, usize> = inp
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s, i))
        .collect();
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for p in inp.priors {
        match prior_segments(p, inp.base_hash, spec, &ours) {
            Ok(segs) => {
                for (segment, sources) in segs {
                    // linked copies of one segment appear in every model that reused it
                    if seen.insert(segment.span.sha256.clone()) {
                        candidates.push((p, segment, sources));
                    }
                }
            }
            Err(why) => {
                tracing::debug!(job = p.job_id, why, "earlier model's segments not reusable")
            }
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.1.examples));
    candidates
}

/// The keys of `segment` (of the earlier model `p`) if every one of its examples is still `free` among
/// this model's and its files still hash as its manifest lists them.
fn fits(
    p: &Prior,
    segment: &Segment,
    with_gradients: bool,
    free: &HashMap<Key, Vec<usize>>,
) -> Option<Vec<Key>> {
    let kref = segment.keys.as_ref()?;
    let seg_keys = match read_keys(&p.dir.join(&kref.file)) {
        Ok((k, sha)) if k.len() == segment.examples && sha.eq_ignore_ascii_case(&kref.sha256) => k,
        _ => return None,
    };
    let mut need: HashMap<&Key, usize> = HashMap::new();
    for k in &seg_keys {
        *need.entry(k).or_default() += 1;
    }
    if !need
        .iter()
        .all(|(k, n)| free.get(*k).is_some_and(|v| v.len() >= *n))
    {
        return None;
    }
    let mut files = vec![&segment.span];
    if with_gradients {
        files.extend(segment.gradients.as_ref());
    }
    let intact = files.iter().all(|f| {
        file_sha256(&p.dir.join(&f.file)).is_ok_and(|h| h.eq_ignore_ascii_case(&f.sha256))
    });
    if !intact {
        tracing::warn!(
            job = p.job_id,
            "an earlier model's segment files do not match its manifest; not reused"
        );
        return None;
    }
    Some(seg_keys)
}

/// An earlier model's segments that fit this one (same base model, same gradient spec, sources all
/// among ours), each with its source ids mapped to ours.
fn prior_segments(
    p: &Prior,
    base_hash: &str,
    spec: Option<&GradientSpec>,
    ours: &HashMap<&SourceId, usize>,
) -> Result<Vec<(Segment, Vec<usize>)>, String> {
    let path = p.dir.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !crate::common::sha256_hex(&bytes).eq_ignore_ascii_case(&p.manifest_sha256) {
        return Err("its manifest does not match its hash".into());
    }
    let m: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if !m["base_model"]["hash"]
        .as_str()
        .is_some_and(|h| h.eq_ignore_ascii_case(base_hash))
    {
        return Err("another base model".into());
    }
    let l = layout(&m)?;
    if spec.is_some() && l.gradients.as_ref() != spec {
        return Err("its gradients were taken under another projection or adapter".into());
    }
    let theirs: Vec<Option<usize>> = m["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let id = SourceId {
                        datanet_id: s["datanet_id"].as_str()?.to_string(),
                        contribution_id: s["contribution_id"].as_str()?.to_string(),
                    };
                    ours.get(&id).copied()
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(l.segments
        .into_iter()
        .filter_map(|s| {
            let mapped: Option<Vec<usize>> = s
                .sources
                .iter()
                .map(|&t| theirs.get(t).copied().flatten())
                .collect();
            mapped.map(|m| (s, m))
        })
        .collect())
}

/// Indexes `examples` as segment `i`: their span index (with the segment's own dense source ids), their
/// projected gradients when `grads` is given, their keys.
fn new_segment(
    dir: &Path,
    i: usize,
    examples: &[&Example],
    keys: &[Key],
    grads: Option<(&Projector, &Input<'_>)>,
) -> Result<Segment, BuildError> {
    let ours: Vec<usize> = examples
        .iter()
        .map(|e| e.source)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let local: BTreeMap<usize, usize> = ours.iter().enumerate().map(|(l, &s)| (s, l)).collect();
    let mut ids = Vec::new();
    let mut docs = Vec::with_capacity(examples.len());
    for e in examples {
        docs.push(Doc {
            offset: ids.len(),
            len: e.tokens.ids.len(),
            source: local[&e.source],
        });
        ids.extend_from_slice(&e.tokens.ids);
    }
    let idx = SpanIndex::build(&ids, &docs).map_err(|e| BuildError::SpanIndex(e.to_string()))?;
    let span_path = dir.join(span_file(i));
    idx.save(&span_path)
        .map_err(|e| BuildError::SpanIndex(e.to_string()))?;
    let gradients = match grads {
        Some((projector, inp)) => {
            let path = dir.join(grads_file(i));
            gradient_rows(projector, inp, examples, &local, &path)?;
            Some(FileRef {
                file: grads_file(i),
                sha256: file_sha256(&path)?,
            })
        }
        None => None,
    };
    let keys_path = dir.join(keys_file(i));
    let bytes: Vec<u8> = keys.iter().flatten().copied().collect();
    crate::common::write_synced(&keys_path, &bytes)?;
    Ok(Segment {
        examples: examples.len(),
        tokens: idx.tokens(),
        span: FileRef {
            file: span_file(i),
            sha256: file_sha256(&span_path)?,
        },
        gradients,
        keys: Some(FileRef {
            file: keys_file(i),
            sha256: file_sha256(&keys_path)?,
        }),
        sources: ours,
        reused_from: None,
    })
}

/// Projects and saves each example's LoRA gradient under the initial adapter (TracIn's first checkpoint:
/// at the end of training the examples are memorised and their gradients vanish into noise; the
/// evaluation's gradient top-1 on paraphrased facts fell from 0.5 to 0.1 with the final adapter, which
/// is why LESS-style methods use early checkpoints).
fn gradient_rows(
    projector: &Projector,
    inp: &Input<'_>,
    examples: &[&Example],
    local: &BTreeMap<usize, usize>,
    path: &Path,
) -> Result<(), BuildError> {
    let mut store = GradStore::new(projector.dims(), projector.blocks());
    let started = std::time::Instant::now();
    for e in examples {
        if inp.stop.load(Ordering::Relaxed) {
            return Err(BuildError::Stopped);
        }
        let (_, v) =
            attribution_lora::projected_gradient(inp.model, inp.initial, projector, &e.tokens)
                .map_err(|err| BuildError::Gradients(err.to_string()))?;
        store
            .push(local[&e.source], &v)
            .map_err(|err| BuildError::Gradients(err.to_string()))?;
    }
    store
        .save(path)
        .map_err(|e| BuildError::Gradients(e.to_string()))?;
    tracing::info!(
        examples = examples.len(),
        dims = projector.dims(),
        seconds = started.elapsed().as_secs_f64(),
        "gradient rows written"
    );
    Ok(())
}

/// A hard link (the files are never modified in place), or a copy across file systems.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| BuildError::Io {
            path: from.to_path_buf(),
            source,
        })
}
