//! One batched forward step over the new tokens of many sequences at once: prefill chunks and single decode
//! tokens side by side, each sequence with its own KV cache and its own adapter.
//!
//! The base projections run as one matmul over every row of the step (quantized weights stay quantized);
//! each row then adds its own adapter's `B (A x)`. Attention reads each sequence's cache. Everything a row
//! computes depends only on that row and its own sequence, so a sequence decodes to the same tokens alone
//! or in any batch.

use rayon::prelude::*;

use super::adapter::ServedAdapter;
use crate::config::{Activation, Proj};
use crate::error::Result;
use crate::llama::{HostTables, Llama};
use crate::ops::{dot, gelu_tanh, rms_row, rope_head};

/// Keys and values of one sequence, per layer `[pos][kv_head][head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize, reserve_tokens: usize, kv_dim: usize) -> Self {
        KvCache {
            k: (0..layers)
                .map(|_| Vec::with_capacity(reserve_tokens * kv_dim))
                .collect(),
            v: (0..layers)
                .map(|_| Vec::with_capacity(reserve_tokens * kv_dim))
                .collect(),
            len: 0,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A model prepared for serving: the weights plus host copies of its small tables.
#[derive(Debug)]
pub struct ServingModel {
    pub llama: Llama,
    pub(crate) tables: HostTables,
}

impl ServingModel {
    pub fn new(llama: Llama) -> Result<Self> {
        let tables = llama.host_tables()?;
        Ok(ServingModel { llama, tables })
    }

    pub fn config(&self) -> &crate::ModelConfig {
        &self.llama.config
    }

    pub fn kv_dim(&self) -> usize {
        self.llama.config.kv_dim()
    }

    /// Bytes one cached position takes across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * 4 * self.kv_dim() * self.llama.config.num_hidden_layers
    }
}

/// What the engine thread needs of a model: its configuration, per-sequence KV caches, and the batched
/// step. Two backends: the int8 CPU one here (`ServingModel`), and the device-generic one
/// (`super::device::DeviceModel`: bf16 weights and a paged KV cache on a GPU, or f32 on the CPU).
pub trait Backend: Send + 'static {
    /// One sequence's KV cache.
    type Cache: Send;
    fn config(&self) -> &crate::ModelConfig;
    /// Bytes one cached position takes across all layers.
    fn kv_bytes_per_token(&self) -> usize;
    /// Sizes what the engine's limits call for (a device backend allocates its KV pool and adapter slots
    /// here); called once, by `Engine::start`, before the first step.
    fn prepare(&mut self, _cfg: &super::EngineConfig) -> Result<()> {
        Ok(())
    }
    /// Positions a sequence must reserve to hold `tokens` (a paged cache rounds up to whole blocks).
    fn reserve_tokens(&self, tokens: usize) -> usize {
        tokens
    }
    /// A cache for a sequence that reserved `reserve` positions (`reserve_tokens`); the engine keeps the
    /// sum of reservations within its KV budget.
    fn new_cache(&mut self, reserve: usize) -> Result<Self::Cache>;
    /// Gives a finished sequence's cache back.
    fn free_cache(&mut self, _cache: Self::Cache) {}
    /// Positions cached.
    fn cache_len(cache: &Self::Cache) -> usize;
    /// One batched step (see [`step`]); returns, in `seqs` order, the last-token logits of every sequence
    /// that wanted them.
    fn step(&mut self, seqs: &mut [SeqStep<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;
}

impl Backend for ServingModel {
    type Cache = KvCache;

    fn config(&self) -> &crate::ModelConfig {
        &self.llama.config
    }

    fn kv_bytes_per_token(&self) -> usize {
        ServingModel::kv_bytes_per_token(self)
    }

    fn new_cache(&mut self, reserve: usize) -> Result<KvCache> {
        Ok(KvCache::new(
            self.llama.config.num_hidden_layers,
            reserve,
            self.kv_dim(),
        ))
    }

    fn cache_len(cache: &KvCache) -> usize {
        cache.len
    }

    fn step(&mut self, seqs: &mut [SeqStep<'_, KvCache>]) -> Result<Vec<Vec<f32>>> {
        step(self, seqs)
    }
}

/// One sequence's share of a step: its new tokens (positions continue its cache) and whether the logits
/// of its last new token are wanted. `C` is the backend's cache (host rows here, blocks of a device pool
/// in `super::device`).
#[derive(Debug)]
pub struct SeqStep<'a, C = KvCache> {
    pub tokens: &'a [u32],
    pub cache: &'a mut C,
    pub adapter: Option<&'a ServedAdapter>,
    pub want_logits: bool,
}

struct Row {
    seq: usize,
    pos: usize,
}

/// Greedy decoding of one sequence through [`step`] (the prompt in one step, then one token per step over
/// the KV cache): `n` tokens, end tokens included. What checks against other runtimes compare.
pub fn greedy(
    m: &ServingModel,
    adapter: Option<&ServedAdapter>,
    prompt: &[u32],
    n: usize,
) -> Result<Vec<u32>> {
    let c = m.config();
    let mut cache = KvCache::new(c.num_hidden_layers, prompt.len() + n, m.kv_dim());
    let (mut out, mut next) = (Vec::with_capacity(n), prompt.to_vec());
    for _ in 0..n {
        let logits = step(
            m,
            &mut [SeqStep {
                tokens: &next,
                cache: &mut cache,
                adapter,
                want_logits: true,
            }],
        )?;
        let t = crate::serve::sampling::argmax(&logits[0]);
        out.push(t);
        next = vec![t];
    }
    Ok(out)
}

/// Runs the step; returns, in `seqs` order, the last-token logits of every sequence that wanted them.
pub fn step(m: &ServingModel, seqs: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
    let c = &m.llama.config;
    let (h, nh, nkv, hd) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim(),
    );
    let eps = c.rms_norm_eps as f32;
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        c.check_seq_len(s.cache.len + s.tokens.len())?;
        for (j, &t) in s.tokens.iter().enumerate() {
            ids.push(t);
            rows.push(Row {
                seq: i,
                pos: s.cache.len + j,
            });
        }
    }
    let n = rows.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let adapters: Vec<Option<&ServedAdapter>> = rows.iter().map(|r| seqs[r.seq].adapter).collect();
    let half = hd / 2;
    let qd = nh * hd;
    let t = &m.tables;
    let mut x = m.llama.embed_rows(&ids)?;
    let mut hbuf = vec![0f32; n * h];
    let layers = c.num_hidden_layers;
    for l in 0..layers {
        let ex = &t.extras[l];
        norm_rows(&x, &t.attn_norm[l], eps, h, &mut hbuf);
        let [mut q, mut k, v] =
            project_group(m, l, [Proj::Q, Proj::K, Proj::V], &hbuf, n, &adapters)?;
        if let (Some(qn), Some(kn)) = (&ex.q_norm, &ex.k_norm) {
            norm_in_place(&mut q, qn, eps);
            norm_in_place(&mut k, kn, eps);
        }
        let (cos, sin) = t.rope(c, l);
        // element-wise work over a step's rows is microseconds: a fork-join would cost more
        let rope = |buf: &mut [f32], heads: usize| {
            for (row, r) in buf.chunks_mut(heads * hd).zip(&rows) {
                let (co, si) = (
                    &cos[r.pos * half..(r.pos + 1) * half],
                    &sin[r.pos * half..(r.pos + 1) * half],
                );
                for head in row.chunks_exact_mut(hd) {
                    rope_head(head, co, si, 1.0);
                }
            }
        };
        rope(&mut q, nh);
        rope(&mut k, nkv);
        let kvd = nkv * hd;
        for (i, r) in rows.iter().enumerate() {
            let cache = &mut *seqs[r.seq].cache;
            cache.k[l].extend_from_slice(&k[i * kvd..(i + 1) * kvd]);
            cache.v[l].extend_from_slice(&v[i * kvd..(i + 1) * kvd]);
        }
        let caches: Vec<(&[f32], &[f32])> = seqs
            .iter()
            .map(|s| (s.cache.k[l].as_slice(), s.cache.v[l].as_slice()))
            .collect();
        let mut att = vec![0f32; n * qd];
        let scale = c.attn_scale();
        let softcap = c.attn_logit_softcapping;
        let window = c.window(l);
        let group = nh / nkv;
        att.par_chunks_mut(qd)
            .zip(q.par_chunks(qd))
            .zip(rows.par_iter())
            .for_each(|((out, q), r)| {
                let (kc, vc) = caches[r.seq];
                // the keys this row sees: all earlier positions, or the last `window` of them
                let lo = window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
                let len = r.pos + 1 - lo;
                let mut w = vec![0f32; len];
                for head in 0..nh {
                    let g = head / group;
                    let qh = &q[head * hd..(head + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, wj) in w.iter_mut().enumerate() {
                        let j = lo + j;
                        let kj = &kc[j * kvd + g * hd..j * kvd + (g + 1) * hd];
                        let s = dot(qh, kj) * scale;
                        let s = match softcap {
                            Some(cap) => cap * (s / cap).tanh(),
                            None => s,
                        };
                        *wj = s;
                        max = max.max(s);
                    }
                    let mut sum = 0.0;
                    for wj in w.iter_mut() {
                        *wj = (*wj - max).exp();
                        sum += *wj;
                    }
                    let o = &mut out[head * hd..(head + 1) * hd];
                    for (j, &wj) in w.iter().enumerate() {
                        let j = lo + j;
                        let vj = &vc[j * kvd + g * hd..j * kvd + (g + 1) * hd];
                        let wj = wj / sum;
                        for (o, &v) in o.iter_mut().zip(vj) {
                            *o += wj * v;
                        }
                    }
                }
            });
        let mut o = project(m, l, Proj::O, &att, n, &adapters)?;
        if let Some(w) = &ex.post_attn_norm {
            norm_in_place(&mut o, w, eps);
        }
        add(&mut x, &o);
        norm_rows(&x, &t.ffn_norm[l], eps, h, &mut hbuf);
        let [mut gate, up] = project_group(m, l, [Proj::Gate, Proj::Up], &hbuf, n, &adapters)?;
        match c.hidden_act {
            Activation::Silu => {
                for (g, &u) in gate.iter_mut().zip(&up) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            }
            Activation::GeluTanh => {
                for (g, &u) in gate.iter_mut().zip(&up) {
                    *g = gelu_tanh(*g) * u;
                }
            }
        }
        let mut d = project(m, l, Proj::Down, &gate, n, &adapters)?;
        if let Some(w) = &ex.post_ffn_norm {
            norm_in_place(&mut d, w, eps);
        }
        add(&mut x, &d);
    }
    for s in seqs.iter_mut() {
        s.cache.len += s.tokens.len();
    }
    // final norm and logits only for each wanting sequence's last row
    let mut last = Vec::new();
    let mut row = 0;
    for s in seqs.iter() {
        row += s.tokens.len();
        if s.want_logits && !s.tokens.is_empty() {
            last.push(row - 1);
        }
    }
    if last.is_empty() {
        return Ok(Vec::new());
    }
    let mut hl = vec![0f32; last.len() * h];
    for (o, &r) in hl.chunks_exact_mut(h).zip(&last) {
        rms_row(&x[r * h..(r + 1) * h], &t.norm, eps, o);
    }
    let mut logits = m.llama.lm_head_rows(&hl, last.len())?;
    if let Some(cap) = c.final_logit_softcapping {
        logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
    }
    let vocab = logits.len() / last.len();
    Ok(logits.chunks_exact(vocab).map(|r| r.to_vec()).collect())
}

/// RMS norm of every `w.len()`-wide chunk of `x`, in place (q/k heads, post-norms).
fn norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let mut tmp = vec![0f32; w.len()];
    for chunk in x.chunks_exact_mut(w.len()) {
        rms_row(chunk, w, eps, &mut tmp);
        chunk.copy_from_slice(&tmp);
    }
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, h: usize, out: &mut [f32]) {
    for (o, x) in out.chunks_mut(h).zip(x.chunks(h)) {
        rms_row(x, w, eps, o);
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Several projections of the same rows (one base matmul for all), then each row's own LoRA deltas.
fn project_group<const K: usize>(
    m: &ServingModel,
    l: usize,
    ps: [Proj; K],
    x: &[f32],
    n: usize,
    adapters: &[Option<&ServedAdapter>],
) -> Result<[Vec<f32>; K]> {
    let mut ys: [Vec<f32>; K] = m
        .llama
        .project_group_rows(l, &ps, x, n)?
        .try_into()
        .map_err(|_| crate::error::ModelError::invalid("projection", "group size"))?;
    let n_in = x.len() / n;
    // biases from the host tables (Qwen 2's q/k/v), then each row's adapter
    for (y, p) in ys.iter_mut().zip(ps) {
        if let Some(b) = m.tables.extras[l].bias(p) {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
    }
    for (y, p) in ys.iter_mut().zip(ps) {
        if adapters.iter().flatten().any(|a| a.targets(l, p)) {
            let n_out = y.len() / n;
            y.par_chunks_mut(n_out)
                .zip(x.par_chunks(n_in))
                .zip(adapters.par_iter())
                .for_each(|((y, x), a)| {
                    if let Some(a) = a {
                        a.apply_row(l, p, x, y);
                    }
                });
        }
    }
    Ok(ys)
}

/// Base projection over all rows, then each row's own LoRA delta.
fn project(
    m: &ServingModel,
    l: usize,
    p: Proj,
    x: &[f32],
    n: usize,
    adapters: &[Option<&ServedAdapter>],
) -> Result<Vec<f32>> {
    let [y] = project_group(m, l, [p], x, n, adapters)?;
    Ok(y)
}
