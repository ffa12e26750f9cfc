//! Adapters in serving form, and the cache that keeps the hot ones in memory.
//!
//! An adapter is flattened to host `A [rank, in]` and `B [out, rank]` per layer and projection, so a batch
//! row can pick its own adapter's matrices (the BGMV idea: gather per row, multiply per row). The cache
//! holds adapters up to a byte budget, evicts the least recently used unpinned one, and never evicts an
//! adapter a running sequence uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::config::ModelConfig;
use crate::config::Proj;
use crate::error::{ModelError, Result};
use crate::lora::{Lora, LoraConfig, proj_dims};
use crate::weights::{file_sha256, hex0x};

/// Where an adapter lives and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterRef {
    /// The id requests name it by (the `model` field of the API).
    pub id: String,
    /// A PEFT folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub dir: PathBuf,
    /// `0x`-prefixed SHA-256 of `adapter_model.safetensors`; a file that hashes otherwise is refused.
    pub sha256: Option<String>,
}

/// One projection's LoRA matrices.
#[derive(Debug, Clone)]
pub(crate) struct LoraMats {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// An adapter ready for the engine.
#[derive(Debug, Clone)]
pub struct ServedAdapter {
    pub id: String,
    pub config: LoraConfig,
    /// `[layer][proj]`.
    pub(crate) mats: Vec<[Option<LoraMats>; 7]>,
    bytes: usize,
    /// Unique per adapter made in this process (clones share it): what device slots are keyed by.
    serial: u64,
}

/// The next `ServedAdapter::serial`.
fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ServedAdapter {
    /// From a loaded adapter (any device).
    pub fn from_lora(id: impl Into<String>, lora: &Lora) -> Result<Self> {
        let m = &lora.model;
        let mut mats = Vec::with_capacity(m.num_hidden_layers);
        let mut bytes = 0;
        for l in 0..m.num_hidden_layers {
            let mut row: [Option<LoraMats>; 7] = Default::default();
            for p in Proj::ALL {
                if let Some((a, b, _)) = lora.get(l, p) {
                    let a = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    let b = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    bytes += 4 * (a.len() + b.len());
                    row[p.index()] = Some(LoraMats { a, b });
                }
            }
            mats.push(row);
        }
        Ok(ServedAdapter {
            id: id.into(),
            config: lora.config.clone(),
            mats,
            bytes,
            serial: next_serial(),
        })
    }

    /// Reads a PEFT folder, checking the weights' hash first when one is expected.
    pub fn load(r: &AdapterRef, model: &ModelConfig) -> Result<Self> {
        let st = r.dir.join("adapter_model.safetensors");
        if let Some(want) = &r.sha256 {
            let got = hex0x(&file_sha256(&st)?);
            if !got.eq_ignore_ascii_case(want) {
                return Err(ModelError::corrupt(
                    &st,
                    format!("SHA-256 is {got}, the adapter was published as {want}"),
                ));
            }
        }
        let lora = Lora::load_peft(&r.dir, model, &Device::Cpu)?;
        Self::from_lora(r.id.clone(), &lora)
    }

    /// Random weights (both A and B non-zero): benchmarks and tests.
    pub fn random(
        id: impl Into<String>,
        model: &ModelConfig,
        config: &LoraConfig,
        seed: u64,
    ) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut mats = Vec::with_capacity(model.num_hidden_layers);
        let mut bytes = 0;
        for _ in 0..model.num_hidden_layers {
            let mut row: [Option<LoraMats>; 7] = Default::default();
            for &p in &config.targets {
                let (n_in, n_out) = proj_dims(model, p);
                let ba = 1.0 / (n_in as f32).sqrt();
                let bb = 1.0 / (config.rank as f32).sqrt();
                let a = (0..config.rank * n_in)
                    .map(|_| rng.random_range(-ba..ba))
                    .collect::<Vec<f32>>();
                let b = (0..n_out * config.rank)
                    .map(|_| rng.random_range(-bb..bb) * 0.05)
                    .collect::<Vec<f32>>();
                bytes += 4 * (a.len() + b.len());
                row[p.index()] = Some(LoraMats { a, b });
            }
            mats.push(row);
        }
        ServedAdapter {
            id: id.into(),
            config: config.clone(),
            mats,
            bytes,
            serial: next_serial(),
        }
    }

    /// Back to a `Lora` (for writing it as a PEFT folder, or merging).
    pub fn to_lora(&self, model: &ModelConfig) -> Result<Lora> {
        let mut layers = Vec::with_capacity(self.mats.len());
        for row in &self.mats {
            let mut m = HashMap::new();
            for p in Proj::ALL {
                if let Some(x) = &row[p.index()] {
                    let (n_in, n_out) = proj_dims(model, p);
                    let a = Tensor::from_slice(&x.a, (self.config.rank, n_in), &Device::Cpu)?;
                    let b = Tensor::from_slice(&x.b, (n_out, self.config.rank), &Device::Cpu)?;
                    m.insert(p, (a, b));
                }
            }
            layers.push(m);
        }
        Lora::from_layers(model, self.config.clone(), layers)
    }

    /// The dense update `scale * B A` (`[out, in]`, GGUF row order) of one projection: what merging adds.
    pub fn delta(&self, model: &ModelConfig, layer: usize, p: Proj) -> Result<Option<Tensor>> {
        let Some(x) = self.mats.get(layer).and_then(|r| r[p.index()].as_ref()) else {
            return Ok(None);
        };
        let (n_in, n_out) = proj_dims(model, p);
        let a = Tensor::from_slice(&x.a, (self.config.rank, n_in), &Device::Cpu)?;
        let b = Tensor::from_slice(&x.b, (n_out, self.config.rank), &Device::Cpu)?;
        Ok(Some((b.matmul(&a)? * self.config.scale())?))
    }

    /// Host memory the weights take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// This adapter's process-unique serial number.
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }

    /// Whether the adapter changes projection `p` of `layer`.
    pub(crate) fn targets(&self, layer: usize, p: Proj) -> bool {
        self.mats.get(layer).is_some_and(|r| r[p.index()].is_some())
    }

    /// `out [n_out] += scale * B (A x)` for one row, in a fixed order (the same result in any batch).
    pub(crate) fn apply_row(&self, layer: usize, p: Proj, x: &[f32], out: &mut [f32]) {
        let Some(m) = self.mats.get(layer).and_then(|r| r[p.index()].as_ref()) else {
            return;
        };
        let r = self.config.rank;
        let scale = self.config.scale() as f32;
        let n_in = x.len();
        let mut t = [0f32; 64];
        let mut heap;
        let t: &mut [f32] = if r <= 64 {
            &mut t[..r]
        } else {
            heap = vec![0f32; r];
            &mut heap
        };
        for (ti, a) in t.iter_mut().zip(m.a.chunks_exact(n_in)) {
            *ti = crate::ops::dot(a, x) * scale;
        }
        for (o, b) in out.iter_mut().zip(m.b.chunks_exact(r)) {
            *o += crate::ops::dot(b, t);
        }
    }
}

struct Entry {
    adapter: Arc<ServedAdapter>,
    last_used: u64,
    pins: usize,
}

/// Resident adapters under a byte budget: LRU among the unpinned.
pub struct AdapterCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<String, Entry>,
    /// Lookups that found the adapter resident / that did not.
    pub hits: u64,
    pub misses: u64,
}

impl std::fmt::Debug for AdapterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterCache")
            .field("budget", &self.budget)
            .field("used", &self.used)
            .field("resident", &self.entries.len())
            .finish()
    }
}

/// Why an adapter could not be made resident.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// Bigger than the whole budget: it can never be served.
    TooLarge { bytes: usize, budget: usize },
    /// Pinned adapters fill the budget: retry when sequences finish.
    Full,
}

impl AdapterCache {
    pub fn new(budget_bytes: usize) -> Self {
        AdapterCache {
            budget: budget_bytes,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Resident adapters and the bytes they hold.
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.used)
    }

    /// Counts a hit or a miss; on a hit, pins the adapter and returns it.
    pub fn acquire(&mut self, id: &str) -> Option<Arc<ServedAdapter>> {
        self.clock += 1;
        match self.entries.get_mut(id) {
            Some(e) => {
                self.hits += 1;
                e.last_used = self.clock;
                e.pins += 1;
                Some(e.adapter.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Pins a resident adapter without counting a lookup (a sequence admitted after its load).
    pub fn pin(&mut self, id: &str) -> Option<Arc<ServedAdapter>> {
        self.clock += 1;
        let e = self.entries.get_mut(id)?;
        e.last_used = self.clock;
        e.pins += 1;
        Some(e.adapter.clone())
    }

    pub fn release(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Makes `a` resident, evicting least recently used unpinned adapters to fit it.
    pub fn insert(&mut self, a: Arc<ServedAdapter>) -> std::result::Result<(), InsertError> {
        let bytes = a.bytes();
        if bytes > self.budget {
            return Err(InsertError::TooLarge {
                bytes,
                budget: self.budget,
            });
        }
        if let Some(old) = self.entries.remove(&a.id) {
            self.used -= old.adapter.bytes();
        }
        while self.used + bytes > self.budget {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(v) = victim else {
                return Err(InsertError::Full);
            };
            if let Some(e) = self.entries.remove(&v) {
                self.used -= e.adapter.bytes();
                tracing::debug!(adapter = %v, "adapter evicted");
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(
            a.id.clone(),
            Entry {
                adapter: a,
                last_used: self.clock,
                pins: 0,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(id: &str, rank: usize) -> Arc<ServedAdapter> {
        let cfg = LoraConfig {
            rank,
            ..LoraConfig::default()
        };
        Arc::new(ServedAdapter::random(id, &ModelConfig::tiny(), &cfg, 1))
    }

    #[test]
    fn lru_evicts_the_least_recently_used_unpinned_adapter() {
        let one = adapter("a", 4).bytes();
        let mut c = AdapterCache::new(3 * one);
        for id in ["a", "b", "c"] {
            c.insert(adapter(id, 4)).unwrap();
        }
        // "a" used recently, "b" pinned: "c" is the one to go
        assert!(c.acquire("a").is_some());
        c.release("a");
        assert!(c.acquire("b").is_some());
        c.insert(adapter("d", 4)).unwrap();
        assert!(c.contains("a") && c.contains("b") && c.contains("d") && !c.contains("c"));
        assert_eq!(c.usage(), (3, 3 * one));
        assert_eq!((c.hits, c.misses), (2, 0));
        assert!(c.acquire("c").is_none());
        assert_eq!(c.misses, 1);
    }

    #[test]
    fn the_lora_round_trip_and_the_merge_delta_agree_with_the_per_row_product() {
        let c = ModelConfig::tiny();
        let a = adapter("x", 4);
        let back = ServedAdapter::from_lora("x", &a.to_lora(&c).unwrap()).unwrap();
        assert_eq!(back.config, a.config);
        for l in 0..c.num_hidden_layers {
            for p in a.config.targets.clone() {
                let (m, n) = (&a.mats[l][p.index()], &back.mats[l][p.index()]);
                let (m, n) = (m.as_ref().unwrap(), n.as_ref().unwrap());
                assert_eq!((&m.a, &m.b), (&n.a, &n.b));
                // x (scale B A)^T == the per-row path
                let (n_in, n_out) = proj_dims(&c, p);
                let x: Vec<f32> = (0..n_in).map(|i| (i as f32 * 0.3).sin()).collect();
                let mut y = vec![0f32; n_out];
                a.apply_row(l, p, &x, &mut y);
                let d = a.delta(&c, l, p).unwrap().unwrap();
                let want = Tensor::from_slice(&x, (1, n_in), &Device::Cpu)
                    .unwrap()
                    .matmul(&d.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let err = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "{p:?}: {err}");
            }
        }
        assert!(a.delta(&c, 0, Proj::Down).unwrap().is_none());
    }

    #[test]
    fn pinned_adapters_are_never_evicted_and_oversized_ones_are_refused() {
        let one = adapter("a", 4).bytes();
        let mut c = AdapterCache::new(2 * one);
        c.insert(adapter("a", 4)).unwrap();
        c.insert(adapter("b", 4)).unwrap();
        c.acquire("a").unwrap();
        c.acquire("b").unwrap();
        assert_eq!(c.insert(adapter("c", 4)), Err(InsertError::Full));
        c.release("b");
        c.insert(adapter("c", 4)).unwrap();
        assert!(c.contains("a") && !c.contains("b"));
        assert!(matches!(
            c.insert(adapter("big", 16)),
            Err(InsertError::TooLarge { .. })
        ));
    }
}
