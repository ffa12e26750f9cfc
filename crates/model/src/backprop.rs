//! The llama forward and backward passes written out by hand for LoRA training on the CPU.
//!
//! candle's autograd records every op of the training path and replays it backwards: each op allocates its
//! output, q/k/v are transposed and copied per head, k/v are repeated for grouped-query attention, gradients
//! of residual branches are summed in extra passes, and its matmuls run on the `gemm` crate. Here the same
//! mathematics runs as a fixed sequence of large GEMMs (OpenBLAS, `crate::blas`) on row-major `[tokens,
//! features]` buffers — attention reads each head in place through leading dimensions, so nothing is
//! transposed or repeated — and only what the backward pass needs is kept: per layer the inputs of the
//! norms and projections, q/k/v after rope, one log-sum-exp per attention row (the probabilities are
//! rebuilt from it in the backward pass, so memory stays linear in the sequence length) and the MLP
//! pre-activations. Attention works in blocks of query rows that see only the keys up to their last row.
//! Frozen weights get no gradient, only LoRA's A and B do; the embedding gets none, so layer 0 skips the
//! input gradient of its attention projections.
//!
//! The passes compute what `Llama::hidden` + `Llama::loss_sum` + candle's `backward` compute (same dropout
//! masks from the same generator, same order), to float rounding: `tests/tiny.rs` checks loss and every
//! gradient against the autograd path, which is itself checked against finite differences.

use candle_core::{DType, Storage, StorageRef, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::blas::{T, par_gemm_rows, sgemm};
use crate::config::{Activation, ModelConfig, Proj};
use crate::error::{ModelError, Result};
use crate::llama::{DenseParts, Extras, Llama};
use crate::lora::{Lora, proj_dims};
use crate::ops;
use crate::ops::{GELU_C, GELU_K};

/// A micro-batch: `batch` rows of `seq` token ids (padding after the real tokens), the flat positions whose
/// next token is a training target, and those targets.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    pub ids: &'a [u32],
    pub batch: usize,
    pub seq: usize,
    pub positions: &'a [u32],
    pub labels: &'a [u32],
}

/// Summed cross-entropy over the targets and, for a backward pass, the gradient of `grad_scale * loss` for
/// each LoRA parameter in `Lora::vars` order (flat, row-major).
#[derive(Debug)]
pub struct LossGrads {
    pub loss_sum: f64,
    pub grads: Vec<Vec<f32>>,
}

/// Whether `model` can run the hand-written passes (dense f32 weights on the CPU, contiguous).
pub fn supported(model: &Llama) -> bool {
    model.dense_parts().is_some_and(|p| Held::all(&p).is_some())
}

/// Forward only: the summed loss over the batch's targets (evaluation).
pub fn loss(model: &Llama, lora: Option<&Lora>, batch: &BatchRef<'_>) -> Result<f64> {
    run(model, lora, batch, None, None).map(|o| o.loss_sum)
}

/// Forward and backward: loss and LoRA gradients of `grad_scale * loss`. `dropout_rng` draws LoRA dropout
/// masks (as `Forward::dropout_rng` does on the autograd path).
pub fn loss_and_grads(
    model: &Llama,
    lora: &Lora,
    batch: &BatchRef<'_>,
    dropout_rng: Option<&mut ChaCha8Rng>,
    grad_scale: f32,
) -> Result<LossGrads> {
    run(model, Some(lora), batch, dropout_rng, Some(grad_scale))
}

// ---------------------------------------------------------------------------------------------------------
// Weights

/// A read guard on a tensor's CPU storage and the range of its (contiguous) f32 elements.
struct Held<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> Held<'a> {
    fn new(t: &'a Tensor) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*guard, Storage::Cpu(_)).then_some(Held {
            guard,
            start,
            len: end - start,
        })
    }

    fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(c) => c
                .as_slice::<f32>()
                .map(|s| &s[self.start..self.start + self.len])
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Every tensor of the model, in the order `Weights::new` reads them: the held storages (each tensor
    /// once: tied embeddings are one tensor, and a second read lock on it from this thread could deadlock)
    /// and, per position in that order, which of them it is.
    fn all(p: &DenseParts<'a>) -> Option<(Vec<Held<'a>>, Vec<usize>)> {
        let mut ts = vec![p.embed, p.norm, p.lm_head, p.cos, p.sin];
        if let Some((c, s)) = p.local {
            ts.extend([c, s]);
        }
        for l in &p.layers {
            ts.push(l.attn_norm);
            ts.push(l.ffn_norm);
            ts.extend(l.proj.iter().copied());
            ts.extend(extras_list(&l.extras));
        }
        let mut unique: Vec<&'a Tensor> = Vec::new();
        let mut index = Vec::with_capacity(ts.len());
        for t in ts {
            match unique.iter().position(|u| u.id() == t.id()) {
                Some(i) => index.push(i),
                None => {
                    index.push(unique.len());
                    unique.push(t);
                }
            }
        }
        let held = unique
            .into_iter()
            .map(Held::new)
            .collect::<Option<Vec<_>>>()?;
        Some((held, index))
    }
}

/// A layer's optional tensors in the order `Held::all` and `Weights::new` take them.
fn extras_list<T: Copy>(e: &Extras<T>) -> Vec<T> {
    e.bias
        .iter()
        .chain([&e.q_norm, &e.k_norm, &e.post_attn_norm, &e.post_ffn_norm])
        .filter_map(|t| *t)
        .collect()
}

struct LayerW<'a> {
    attn_norm: &'a [f32],
    ffn_norm: &'a [f32],
    /// `[out, in]` per projection, `Proj::ALL` order.
    proj: Vec<&'a [f32]>,
    extras: Extras<&'a [f32]>,
    /// The rotary tables this layer uses.
    cos: &'a [f32],
    sin: &'a [f32],
    /// Its attention window, if it slides.
    window: Option<usize>,
}

struct Weights<'a> {
    embed: &'a [f32],
    norm: &'a [f32],
    lm_head: &'a [f32],
    layers: Vec<LayerW<'a>>,
}

impl<'a> Weights<'a> {
    fn new(
        held: &'a [Held<'a>],
        index: &[usize],
        cfg: &ModelConfig,
        parts: &DenseParts<'_>,
    ) -> Result<Self> {
        let mut it = index.iter().map(|&i| held[i].slice());
        let mut next = |want: usize, what: &str| -> Result<&'a [f32]> {
            match it.next() {
                Some(s) if s.len() == want => Ok(s),
                _ => Err(ModelError::Unsupported(format!(
                    "backprop: {what} is not a dense f32 tensor of {want} values"
                ))),
            }
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let (hd, half) = (cfg.head_dim(), cfg.head_dim() / 2);
        let n_pos = cfg.max_position_embeddings.max(1);
        let embed = next(v * h, "the embedding")?;
        let norm = next(h, "the output norm")?;
        let lm_head = next(v * h, "the output projection")?;
        let cos = next(n_pos * half, "the rotary table")?;
        let sin = next(n_pos * half, "the rotary table")?;
        let local = match parts.local {
            Some(_) => Some((
                next(n_pos * half, "the local rotary table")?,
                next(n_pos * half, "the local rotary table")?,
            )),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (l, lp) in parts.layers.iter().enumerate() {
            let attn_norm = next(h, "a norm")?;
            let ffn_norm = next(h, "a norm")?;
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (i, o) = proj_dims(cfg, p);
                proj.push(next(i * o, p.peft_name())?);
            }
            let e = &lp.extras;
            let mut opt = |present: bool, n: usize, what: &str| -> Result<Option<&'a [f32]>> {
                if present {
                    next(n, what).map(Some)
                } else {
                    Ok(None)
                }
            };
            let mut bias = [None, None, None, None];
            for (i, p) in [Proj::Q, Proj::K, Proj::V, Proj::O].into_iter().enumerate() {
                bias[i] = opt(e.bias[i].is_some(), proj_dims(cfg, p).1, "a bias")?;
            }
            let extras = Extras {
                bias,
                q_norm: opt(e.q_norm.is_some(), hd, "the q norm")?,
                k_norm: opt(e.k_norm.is_some(), hd, "the k norm")?,
                post_attn_norm: opt(e.post_attn_norm.is_some(), h, "a post-norm")?,
                post_ffn_norm: opt(e.post_ffn_norm.is_some(), h, "a post-norm")?,
            };
            let (cos, sin) = match (local, cfg.local_rope(l)) {
                (Some(t), true) => t,
                _ => (cos, sin),
            };
            layers.push(LayerW {
                attn_norm,
                ffn_norm,
                proj,
                extras,
                cos,
                sin,
                window: cfg.window(l),
            });
        }
        Ok(Weights {
            embed,
            norm,
            lm_head,
            layers,
        })
    }
}

/// One adapted projection: `A [r, in]`, `B [out, r]`, and where their gradients go in `Lora::vars`.
struct LoraW {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    n_in: usize,
    n_out: usize,
    var_a: usize,
}

struct Adapter {
    scale: f32,
    dropout: f32,
    /// Per layer, per projection (`Proj::ALL` order).
    layers: Vec<Vec<Option<LoraW>>>,
    n_vars: usize,
}

impl Adapter {
    fn new(lora: Option<&Lora>, cfg: &ModelConfig) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut var = 0;
        for l in 0..cfg.num_hidden_layers {
            let mut row = Vec::with_capacity(7);
            for p in Proj::ALL {
                // the order of `Lora::vars`: layer, projection (sorted), A then B
                let w = match lora.and_then(|lo| lo.get(l, p)) {
                    Some((a, b, _)) => {
                        let (n_in, n_out) = proj_dims(cfg, p);
                        let r = a.dim(0)?;
                        let w = LoraW {
                            a: a.flatten_all()?.to_vec1()?,
                            b: b.flatten_all()?.to_vec1()?,
                            r,
                            n_in,
                            n_out,
                            var_a: var,
                        };
                        if w.a.len() != r * n_in || w.b.len() != n_out * r {
                            return Err(ModelError::invalid(
                                "adapter",
                                format!("{} of layer {l} has the wrong shape", p.peft_name()),
                            ));
                        }
                        var += 2;
                        Some(w)
                    }
                    None => None,
                };
                row.push(w);
            }
            layers.push(row);
        }
        Ok(Adapter {
            scale: lora.map_or(0.0, |l| l.config.scale() as f32),
            dropout: lora.map_or(0.0, |l| l.config.dropout),
            layers,
            n_vars: var,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shapes and small kernels

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    /// Tokens in the batch (`b * s`): the rows of every activation.
    t: usize,
    h: usize,
    /// Width of q and of the attention output (`nh * hd`; not always `h`).
    qd: usize,
    kv: usize,
    inter: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    eps: f32,
    /// Attention score scale and soft-cap.
    scale: f32,
    softcap: Option<f32>,
    act: Activation,
    /// Soft-cap of the output logits.
    final_softcap: Option<f32>,
}

fn zeros(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// RMS norm per row (`ops::rms_row`); returns each row's `1 / rms`.
fn rms_fwd(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Vec<f32> {
    let n = w.len();
    let mut rstd = zeros(x.len() / n);
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(rstd.par_iter_mut())
        .for_each(|((o, x), r)| *r = ops::rms_row(x, w, eps, o));
    rstd
}

/// `dx += d(rms(x) * w)/dx · g`.
fn rms_bwd(x: &[f32], rstd: &[f32], w: &[f32], g: &[f32], dx: &mut [f32]) {
    let n = w.len();
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .zip(rstd.par_iter())
        .for_each(|((d, (x, g)), &r)| ops::rms_row_bwd(x, w, r, g, d));
}

/// Interleaved rotary embedding in place on `[t, heads * hd]` rows, position = row % s; `sign` -1 applies
/// the inverse rotation (the backward pass).
fn rope(x: &mut [f32], d: &Dims, heads: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let (hd, s) = (d.hd, d.s);
    let half = hd / 2;
    x.par_chunks_mut(heads * hd)
        .enumerate()
        .for_each(|(row, xr)| {
            let pos = row % s;
            let (c, sn) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for head in xr.chunks_mut(hd) {
                ops::rope_head(head, c, sn, sign);
            }
        });
}

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(4096)
        .zip(src.par_chunks(4096))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
}

// ---------------------------------------------------------------------------------------------------------
// LoRA branch

/// What the backward pass needs of one LoRA branch: the dropout mask (if any) and `x·Aᵀ`.
struct LoraSaved {
    mask: Option<Vec<f32>>,
    xa: Vec<f32>,
}

/// `x ⊙ mask`, when there is a dropout mask.
fn apply_mask(x: &[f32], mask: Option<&[f32]>) -> Option<Vec<f32>> {
    mask.map(|m| x.iter().zip(m).map(|(x, m)| x * m).collect())
}

/// `y += scale * (dropout(x)·Aᵀ)·Bᵀ`.
fn lora_fwd(
    w: &LoraW,
    ad: &Adapter,
    x: &[f32],
    t: usize,
    y: &mut [f32],
    rng: Option<&mut ChaCha8Rng>,
) -> LoraSaved {
    let mask = match rng {
        Some(rng) if ad.dropout > 0.0 => {
            let (p, keep) = (ad.dropout, 1.0 / (1.0 - ad.dropout));
            // the autograd path's draw order: one per input element, row-major
            Some(
                (0..x.len())
                    .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
                    .collect::<Vec<f32>>(),
            )
        }
        _ => None,
    };
    let masked = apply_mask(x, mask.as_deref());
    let src = masked.as_deref().unwrap_or(x);
    let mut xa = zeros(t * w.r);
    par_gemm_rows(T::T, t, w.r, w.n_in, 1.0, src, &w.a, w.n_in, 0.0, &mut xa);
    par_gemm_rows(T::T, t, w.n_out, w.r, ad.scale, &xa, &w.b, w.r, 1.0, y);
    LoraSaved { mask, xa }
}

/// Gradients of A and B from `dy`, and `dx += ∂/∂x` when `dx` is given.
#[allow(clippy::too_many_arguments)]
fn lora_bwd(
    w: &LoraW,
    ad: &Adapter,
    x: &[f32],
    saved: &LoraSaved,
    dy: &[f32],
    t: usize,
    dx: Option<&mut [f32]>,
    grads: &mut [Vec<f32>],
) {
    let (r, ni, no) = (w.r, w.n_in, w.n_out);
    let mut db = zeros(no * r);
    sgemm(
        T::T,
        T::N,
        no,
        r,
        t,
        ad.scale,
        dy,
        no,
        &saved.xa,
        r,
        0.0,
        &mut db,
        r,
    );
    let mut dxa = zeros(t * r);
    par_gemm_rows(T::N, t, r, no, ad.scale, dy, &w.b, r, 0.0, &mut dxa);
    // the masked input is rebuilt rather than kept: the mask is needed anyway, for dx
    let masked = apply_mask(x, saved.mask.as_deref());
    let src = masked.as_deref().unwrap_or(x);
    let mut da = zeros(r * ni);
    sgemm(
        T::T,
        T::N,
        r,
        ni,
        t,
        1.0,
        &dxa,
        r,
        src,
        ni,
        0.0,
        &mut da,
        ni,
    );
    if let Some(dx) = dx {
        match &saved.mask {
            None => par_gemm_rows(T::N, t, ni, r, 1.0, &dxa, &w.a, ni, 1.0, dx),
            Some(m) => {
                let mut tmp = zeros(t * ni);
                par_gemm_rows(T::N, t, ni, r, 1.0, &dxa, &w.a, ni, 0.0, &mut tmp);
                dx.par_iter_mut()
                    .zip(tmp.par_iter().zip(m.par_iter()))
                    .for_each(|(d, (g, m))| *d += g * m);
            }
        }
    }
    grads[w.var_a] = da;
    grads[w.var_a + 1] = db;
}

// ---------------------------------------------------------------------------------------------------------
// Layers

/// A layer's activations kept for its backward pass.
struct Saved {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    /// q and k before their per-head norms (q/k-norm families only).
    qk_pre: Option<(Normed, Normed)>,
    /// After rope.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Log-sum-exp of each attention row's scaled scores, `[b, nh, s]`.
    lse: Vec<f32>,
    /// Attention output (o_proj's input), `[t, nh * hd]`.
    o: Vec<f32>,
    /// o_proj's output when a post-norm follows it.
    o_post: Option<Normed>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// down_proj's output when a post-norm follows it.
    down_post: Option<Normed>,
    lora: Vec<Option<LoraSaved>>,
}

struct Ctx<'a> {
    cfg: &'a ModelConfig,
    d: Dims,
    w: &'a Weights<'a>,
    ad: &'a Adapter,
}

/// A norm's input and each row's `1 / rms`: what its backward pass needs.
struct Normed {
    pre: Vec<f32>,
    rstd: Vec<f32>,
}

impl Normed {
    /// `∂/∂pre` from the gradient `g` of the normed output.
    fn bwd(&self, w: &[f32], g: &[f32]) -> Vec<f32> {
        let mut d = zeros(self.pre.len());
        rms_bwd(&self.pre, &self.rstd, w, g, &mut d);
        d
    }
}

/// `rms(x) * w` per row of width `w.len()`, keeping `x` and the `1 / rms`: a post-norm's forward.
fn post_norm(x: Vec<f32>, w: &[f32], eps: f32) -> (Vec<f32>, Normed) {
    let mut y = zeros(x.len());
    let rstd = rms_fwd(&x, w, eps, &mut y);
    (y, Normed { pre: x, rstd })
}

impl Ctx<'_> {
    /// `y = x·Wᵀ (+ bias) (+ LoRA)` for projection `p` of `layer`.
    fn proj(
        &self,
        layer: usize,
        p: Proj,
        x: &[f32],
        rng: &mut Option<&mut ChaCha8Rng>,
        saved: &mut [Option<LoraSaved>],
    ) -> Vec<f32> {
        let (n_in, n_out) = proj_dims(self.cfg, p);
        let t = self.d.t;
        let mut y = zeros(t * n_out);
        let lw = &self.w.layers[layer];
        if let Some(b) = lw.extras.bias(p) {
            y.par_chunks_mut(n_out).for_each(|r| r.copy_from_slice(b));
        }
        let beta = if lw.extras.bias(p).is_some() {
            1.0
        } else {
            0.0
        };
        par_gemm_rows(
            T::T,
            t,
            n_out,
            n_in,
            1.0,
            x,
            lw.proj[p.index()],
            n_in,
            beta,
            &mut y,
        );
        if let Some(law) = &self.ad.layers[layer][p.index()] {
            saved[p.index()] = Some(lora_fwd(law, self.ad, x, t, &mut y, rng.as_deref_mut()));
        }
        y
    }

    /// `dx (+)= dy·W` through projection `p` (frozen) plus its LoRA branch, whose gradients go to `grads`.
    /// `dx` is overwritten when `accumulate` is false. With `dx` = `None` only the LoRA gradients are made.
    #[allow(clippy::too_many_arguments)]
    fn proj_bwd(
        &self,
        layer: usize,
        p: Proj,
        x: &[f32],
        dy: &[f32],
        saved: &[Option<LoraSaved>],
        dx: Option<&mut [f32]>,
        accumulate: bool,
        grads: &mut [Vec<f32>],
    ) {
        let (n_in, n_out) = proj_dims(self.cfg, p);
        let t = self.d.t;
        let mut dx = dx;
        if let Some(dx) = dx.as_deref_mut() {
            let w = self.w.layers[layer].proj[p.index()];
            let beta = if accumulate { 1.0 } else { 0.0 };
            par_gemm_rows(T::N, t, n_in, n_out, 1.0, dy, w, n_in, beta, dx);
        }
        if let (Some(lw), Some(s)) = (&self.ad.layers[layer][p.index()], &saved[p.index()]) {
            lora_bwd(lw, self.ad, x, s, dy, t, dx, grads);
        }
    }

    fn layer_fwd(
        &self,
        l: usize,
        x: Vec<f32>,
        rng: &mut Option<&mut ChaCha8Rng>,
    ) -> (Vec<f32>, Saved) {
        let d = self.d;
        let lw = &self.w.layers[l];
        let mut lora: Vec<Option<LoraSaved>> = (0..7).map(|_| None).collect();
        let mut h1 = zeros(d.t * d.h);
        let rstd1 = rms_fwd(&x, lw.attn_norm, d.eps, &mut h1);
        let mut q = self.proj(l, Proj::Q, &h1, rng, &mut lora);
        let mut k = self.proj(l, Proj::K, &h1, rng, &mut lora);
        let v = self.proj(l, Proj::V, &h1, rng, &mut lora);
        let qk_pre = match (lw.extras.q_norm, lw.extras.k_norm) {
            (Some(qn), Some(kn)) => {
                let (qn_out, q_pre) = post_norm(q, qn, d.eps);
                let (kn_out, k_pre) = post_norm(k, kn, d.eps);
                q = qn_out;
                k = kn_out;
                Some((q_pre, k_pre))
            }
            _ => None,
        };
        rope(&mut q, &d, d.nh, lw.cos, lw.sin, 1.0);
        rope(&mut k, &d, d.nkv, lw.cos, lw.sin, 1.0);
        let (lse, o) = attention_fwd(&d, lw.window, &q, &k, &v);
        let y = self.proj(l, Proj::O, &o, rng, &mut lora);
        let (mut x_mid, o_post) = match lw.extras.post_attn_norm {
            Some(w) => {
                let (y, saved) = post_norm(y, w, d.eps);
                (y, Some(saved))
            }
            None => (y, None),
        };
        add_into(&mut x_mid, &x);
        let mut h2 = zeros(d.t * d.h);
        let rstd2 = rms_fwd(&x_mid, lw.ffn_norm, d.eps, &mut h2);
        let gate = self.proj(l, Proj::Gate, &h2, rng, &mut lora);
        let up = self.proj(l, Proj::Up, &h2, rng, &mut lora);
        let act = act_mul(d.act, &gate, &up);
        let down = self.proj(l, Proj::Down, &act, rng, &mut lora);
        let (mut out, down_post) = match lw.extras.post_ffn_norm {
            Some(w) => {
                let (y, saved) = post_norm(down, w, d.eps);
                (y, Some(saved))
            }
            None => (down, None),
        };
        add_into(&mut out, &x_mid);
        (
            out,
            Saved {
                x,
                rstd1,
                h1,
                qk_pre,
                q,
                k,
                v,
                lse,
                o,
                o_post,
                x_mid,
                rstd2,
                h2,
                gate,
                up,
                down_post,
                lora,
            },
        )
    }

    /// Given `dx` = ∂loss/∂(layer output), returns ∂loss/∂(layer input) (`None` for layer 0, whose input is
    /// the frozen embedding) and fills the layer's LoRA gradients.
    fn layer_bwd(
        &self,
        l: usize,
        sv: Saved,
        dx: Vec<f32>,
        grads: &mut [Vec<f32>],
    ) -> Option<Vec<f32>> {
        let d = self.d;
        let lw = &self.w.layers[l];
        // MLP: out = x_mid + post(down(act(gate) * up))
        let d_down = match (&sv.down_post, lw.extras.post_ffn_norm) {
            (Some(n), Some(w)) => Some(n.bwd(w, &dx)),
            _ => None,
        };
        let act = self.ad.layers[l][Proj::Down.index()]
            .is_some()
            .then(|| act_mul(d.act, &sv.gate, &sv.up));
        let mut dact = zeros(d.t * d.inter);
        self.proj_bwd(
            l,
            Proj::Down,
            act.as_deref().unwrap_or(&[]),
            d_down.as_deref().unwrap_or(&dx),
            &sv.lora,
            Some(&mut dact),
            false,
            grads,
        );
        drop((act, d_down));
        let (dgate, dup) = act_mul_bwd(d.act, &sv.gate, &sv.up, &dact);
        drop(dact);
        let mut dh2 = zeros(d.t * d.h);
        self.proj_bwd(
            l,
            Proj::Gate,
            &sv.h2,
            &dgate,
            &sv.lora,
            Some(&mut dh2),
            false,
            grads,
        );
        self.proj_bwd(
            l,
            Proj::Up,
            &sv.h2,
            &dup,
            &sv.lora,
            Some(&mut dh2),
            true,
            grads,
        );
        drop((dgate, dup));
        let mut dx_mid = dx;
        rms_bwd(&sv.x_mid, &sv.rstd2, lw.ffn_norm, &dh2, &mut dx_mid);
        drop(dh2);
        // attention: x_mid = x + post(o_proj(attn(rope(norm(q)), rope(norm(k)), v)))
        let d_y = match (&sv.o_post, lw.extras.post_attn_norm) {
            (Some(n), Some(w)) => Some(n.bwd(w, &dx_mid)),
            _ => None,
        };
        let mut d_o = zeros(d.t * d.qd);
        self.proj_bwd(
            l,
            Proj::O,
            &sv.o,
            d_y.as_deref().unwrap_or(&dx_mid),
            &sv.lora,
            Some(&mut d_o),
            false,
            grads,
        );
        drop(d_y);
        let (mut dq, mut dk, dv) = attention_bwd(&d, lw.window, &sv.q, &sv.k, &sv.v, &sv.lse, &d_o);
        drop(d_o);
        rope(&mut dq, &d, d.nh, lw.cos, lw.sin, -1.0);
        rope(&mut dk, &d, d.nkv, lw.cos, lw.sin, -1.0);
        if let (Some((q_pre, k_pre)), Some(qn), Some(kn)) =
            (&sv.qk_pre, lw.extras.q_norm, lw.extras.k_norm)
        {
            dq = q_pre.bwd(qn, &dq);
            dk = k_pre.bwd(kn, &dk);
        }
        let first = l == 0;
        let mut dh1 = (!first).then(|| zeros(d.t * d.h));
        for (p, dy, acc) in [
            (Proj::Q, &dq, false),
            (Proj::K, &dk, true),
            (Proj::V, &dv, true),
        ] {
            self.proj_bwd(l, p, &sv.h1, dy, &sv.lora, dh1.as_deref_mut(), acc, grads);
        }
        let dh1 = dh1?;
        rms_bwd(&sv.x, &sv.rstd1, lw.attn_norm, &dh1, &mut dx_mid);
        Some(dx_mid)
    }
}

/// `act(g) * u` element-wise.
fn act_mul(act: Activation, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = zeros(gate.len());
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = match act {
                    Activation::Silu => silu(g),
                    Activation::GeluTanh => ops::gelu_tanh(g),
                } * u;
            }
        });
    out
}

fn act_mul_bwd(act: Activation, gate: &[f32], up: &[f32], dact: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = zeros(gate.len());
    let mut du = zeros(gate.len());
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .zip(dact.par_chunks(4096))
        .for_each(|(((dg, du), (g, u)), da)| {
            for i in 0..g.len() {
                let (f, df) = match act {
                    Activation::Silu => {
                        let sig = 1.0 / (1.0 + (-g[i]).exp());
                        (g[i] * sig, sig * (1.0 + g[i] * (1.0 - sig)))
                    }
                    Activation::GeluTanh => {
                        let x = g[i];
                        let t = (GELU_K * (x + GELU_C * x * x * x)).tanh();
                        (
                            0.5 * x * (1.0 + t),
                            0.5 * (1.0 + t)
                                + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * x * x),
                        )
                    }
                };
                du[i] = da[i] * f;
                dg[i] = da[i] * u[i] * df;
            }
        });
    (dg, du)
}

/// Query rows per attention block: a block of rows attends to the keys up to its last row only, so the
/// masked upper triangle is (mostly) never computed.
const ATT_ROWS: usize = 64;

/// The row blocks of one `[s, s]` causal score matrix: `(first row, rows, keys seen)`.
fn att_blocks(s: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..s)
        .step_by(ATT_ROWS)
        .map(move |r0| (r0, ATT_ROWS.min(s - r0), (r0 + ATT_ROWS).min(s)))
}

/// The first key row `i` sees (0, or the start of its window).
fn first_key(i: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (i + 1).saturating_sub(w))
}

/// Scores of rows `r0..r0+m` of one head against keys `0..n`: `out[m, n] = q·kᵀ`.
#[allow(clippy::too_many_arguments)]
fn att_scores(d: &Dims, qh: &[f32], kh: &[f32], r0: usize, m: usize, n: usize, out: &mut [f32]) {
    sgemm(
        T::N,
        T::T,
        m,
        n,
        d.hd,
        1.0,
        &qh[r0 * d.qd..],
        d.qd,
        kh,
        d.kv,
        0.0,
        out,
        n,
    );
}

/// The score as softmax sees it: scaled, then soft-capped where the family caps it.
#[inline]
fn score(d: &Dims, x: f32) -> f32 {
    match d.softcap {
        Some(c) => c * (x * d.scale / c).tanh(),
        None => x * d.scale,
    }
}

/// Causal attention per batch row (within `window` when the layer slides): returns the log-sum-exp of each
/// row's scores `[b, nh, s]` (all the backward pass needs to rebuild the probabilities) and the output
/// `[t, nh * hd]`. Query head `i` reads key/value head `i / (nh / nkv)` in place.
fn attention_fwd(
    d: &Dims,
    window: Option<usize>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (s, hd, qd, kv) = (d.s, d.hd, d.qd, d.kv);
    let rep = d.nh / d.nkv;
    let mut lse = zeros(d.b * d.nh * s);
    let mut o = zeros(d.t * qd);
    o.par_chunks_mut(s * qd)
        .zip(lse.par_chunks_mut(d.nh * s))
        .enumerate()
        .for_each(|(bi, (o_b, lse_b))| {
            let q_b = &q[bi * s * qd..(bi + 1) * s * qd];
            let k_b = &k[bi * s * kv..(bi + 1) * s * kv];
            let v_b = &v[bi * s * kv..(bi + 1) * s * kv];
            let mut p = zeros(ATT_ROWS * s);
            for (head, lse_h) in lse_b.chunks_mut(s).enumerate() {
                let g = head / rep;
                let (qh, kh, vh) = (&q_b[head * hd..], &k_b[g * hd..], &v_b[g * hd..]);
                for (r0, m, n) in att_blocks(s) {
                    let p = &mut p[..m * n];
                    att_scores(d, qh, kh, r0, m, n, p);
                    for (i, row) in p.chunks_mut(n).enumerate() {
                        let lo = first_key(r0 + i, window);
                        let (before, rest) = row.split_at_mut(lo);
                        let (live, masked) = rest.split_at_mut(r0 + i + 1 - lo);
                        let mut max = f32::NEG_INFINITY;
                        for x in live.iter_mut() {
                            *x = score(d, *x);
                            max = max.max(*x);
                        }
                        let mut sum = 0f32;
                        for x in live.iter_mut() {
                            *x = (*x - max).exp();
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        live.iter_mut().for_each(|x| *x *= inv);
                        before.fill(0.0);
                        masked.fill(0.0);
                        lse_h[r0 + i] = max + sum.ln();
                    }
                    sgemm(
                        T::N,
                        T::N,
                        m,
                        hd,
                        n,
                        1.0,
                        p,
                        n,
                        vh,
                        kv,
                        0.0,
                        &mut o_b[r0 * qd + head * hd..],
                        qd,
                    );
                }
            }
        });
    (lse, o)
}

/// Gradients of q, k, v (after rope) from the output gradient `d_o`; the probabilities are rebuilt from the
/// scores and the forward pass's log-sum-exp, block by block.
fn attention_bwd(
    d: &Dims,
    window: Option<usize>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    d_o: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (s, hd, qd, kv) = (d.s, d.hd, d.qd, d.kv);
    let rep = d.nh / d.nkv;
    let mut dq = zeros(d.t * qd);
    let mut dk = zeros(d.t * kv);
    let mut dv = zeros(d.t * kv);
    dq.par_chunks_mut(s * qd)
        .zip(dk.par_chunks_mut(s * kv).zip(dv.par_chunks_mut(s * kv)))
        .enumerate()
        .for_each(|(bi, (dq_b, (dk_b, dv_b)))| {
            let q_b = &q[bi * s * qd..(bi + 1) * s * qd];
            let k_b = &k[bi * s * kv..(bi + 1) * s * kv];
            let v_b = &v[bi * s * kv..(bi + 1) * s * kv];
            let do_b = &d_o[bi * s * qd..(bi + 1) * s * qd];
            let (mut p, mut ds) = (zeros(ATT_ROWS * s), zeros(ATT_ROWS * s));
            // ∂score/∂(raw score) per entry, when soft-capping makes it vary
            let mut dcap = d.softcap.map(|_| zeros(ATT_ROWS * s));
            for head in 0..d.nh {
                let g = head / rep;
                let lse_h = &lse[(bi * d.nh + head) * s..][..s];
                let (qh, kh, vh, doh) = (
                    &q_b[head * hd..],
                    &k_b[g * hd..],
                    &v_b[g * hd..],
                    &do_b[head * hd..],
                );
                for (r0, m, n) in att_blocks(s) {
                    let (p, ds) = (&mut p[..m * n], &mut ds[..m * n]);
                    att_scores(d, qh, kh, r0, m, n, p);
                    for (i, row) in p.chunks_mut(n).enumerate() {
                        let lo = first_key(r0 + i, window);
                        let l = lse_h[r0 + i];
                        if let (Some(dc), Some(c)) = (dcap.as_mut(), d.softcap) {
                            for (x, dc) in row[lo..=r0 + i].iter().zip(&mut dc[i * n + lo..]) {
                                let t = (x * d.scale / c).tanh();
                                *dc = 1.0 - t * t;
                            }
                        }
                        let (before, rest) = row.split_at_mut(lo);
                        let (live, masked) = rest.split_at_mut(r0 + i + 1 - lo);
                        live.iter_mut().for_each(|x| *x = (score(d, *x) - l).exp());
                        before.fill(0.0);
                        masked.fill(0.0);
                    }
                    let dor = &doh[r0 * qd..];
                    // dP = dO·Vᵀ ; dV += Pᵀ·dO
                    sgemm(T::N, T::T, m, n, hd, 1.0, dor, qd, vh, kv, 0.0, ds, n);
                    sgemm(
                        T::T,
                        T::N,
                        n,
                        hd,
                        m,
                        1.0,
                        p,
                        n,
                        dor,
                        qd,
                        1.0,
                        &mut dv_b[g * hd..],
                        kv,
                    );
                    // dS = scale · cap' · P ⊙ (dP − rowsum(P ⊙ dP)); zero where P is (outside the mask)
                    for (i, (dsr, pr)) in ds.chunks_mut(n).zip(p.chunks(n)).enumerate() {
                        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (j, (x, &pv)) in dsr.iter_mut().zip(pr).enumerate() {
                            let cap = dcap.as_ref().map_or(1.0, |dc| dc[i * n + j]);
                            *x = d.scale * cap * pv * (*x - dot);
                        }
                    }
                    // dQ = dS·K ; dK += dSᵀ·Q
                    sgemm(
                        T::N,
                        T::N,
                        m,
                        hd,
                        n,
                        1.0,
                        ds,
                        n,
                        kh,
                        kv,
                        0.0,
                        &mut dq_b[r0 * qd + head * hd..],
                        qd,
                    );
                    sgemm(
                        T::T,
                        T::N,
                        n,
                        hd,
                        m,
                        1.0,
                        ds,
                        n,
                        &qh[r0 * qd..],
                        qd,
                        1.0,
                        &mut dk_b[g * hd..],
                        kv,
                    );
                }
            }
        });
    (dq, dk, dv)
}

/// Rows of the final hidden states handled per GEMM in the loss: bounds the logits buffer (rows x vocab).
const LOSS_ROWS: usize = 128;

/// Summed cross-entropy of `hf [t, h]` rows at `positions` against `labels`; with `grad_scale`, also
/// ∂(grad_scale · loss)/∂hf. Logits are made and consumed in blocks of `LOSS_ROWS` rows, never all at once.
fn lm_loss(
    d: &Dims,
    w: &Weights<'_>,
    hf: &[f32],
    positions: &[u32],
    labels: &[u32],
    grad_scale: Option<f32>,
) -> (f64, Option<Vec<f32>>) {
    let (h, v) = (d.h, w.lm_head.len() / d.h);
    let n = positions.len();
    let mut sel = zeros(n * h);
    sel.par_chunks_mut(h)
        .zip(positions.par_iter())
        .for_each(|(row, &p)| row.copy_from_slice(&hf[p as usize * h..][..h]));
    let mut dsel = grad_scale.map(|_| zeros(n * h));
    type Block<'b> = (&'b [f32], (&'b [u32], Option<&'b mut [f32]>));
    let block = |(rows, (lab, dst)): Block<'_>| -> f64 {
        let m = lab.len();
        let mut z = zeros(m * v);
        sgemm(
            T::N,
            T::T,
            m,
            v,
            h,
            1.0,
            rows,
            h,
            w.lm_head,
            h,
            0.0,
            &mut z,
            v,
        );
        // soft-capped logits: keep 1 - tanh² for the backward pass
        let dcap = d.final_softcap.map(|c| {
            z.iter_mut()
                .map(|x| {
                    let t = (*x / c).tanh();
                    *x = c * t;
                    1.0 - t * t
                })
                .collect::<Vec<f32>>()
        });
        let mut total = 0f64;
        for (zr, &y) in z.chunks_mut(v).zip(lab) {
            let max = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let zy = zr[y as usize];
            let mut sum = 0f32;
            for x in zr.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            total += (max + sum.ln() - zy) as f64;
            if let Some(gs) = grad_scale {
                let inv = gs / sum;
                zr.iter_mut().for_each(|x| *x *= inv);
                zr[y as usize] -= gs;
            }
        }
        if let Some(dc) = dcap.filter(|_| grad_scale.is_some()) {
            z.iter_mut().zip(dc).for_each(|(g, c)| *g *= c);
        }
        if let Some(dst) = dst {
            sgemm(T::N, T::N, m, h, v, 1.0, &z, v, w.lm_head, h, 0.0, dst, h);
        }
        total
    };
    // per-block sums added in block order: the same total whatever the thread count
    let parts: Vec<f64> = match dsel.as_mut() {
        Some(ds) => sel
            .par_chunks(LOSS_ROWS * h)
            .zip(
                labels
                    .par_chunks(LOSS_ROWS)
                    .zip(ds.par_chunks_mut(LOSS_ROWS * h).map(Some)),
            )
            .map(block)
            .collect(),
        None => sel
            .par_chunks(LOSS_ROWS * h)
            .zip(labels.par_chunks(LOSS_ROWS).map(|l| (l, None)))
            .map(block)
            .collect(),
    };
    let total = parts.iter().sum();
    let dhf = dsel.map(|ds| {
        let mut dhf = zeros(d.t * h);
        for (row, &p) in ds.chunks(h).zip(positions) {
            dhf[p as usize * h..][..h].copy_from_slice(row);
        }
        dhf
    });
    (total, dhf)
}

fn run(
    model: &Llama,
    lora: Option<&Lora>,
    batch: &BatchRef<'_>,
    mut rng: Option<&mut ChaCha8Rng>,
    grad_scale: Option<f32>,
) -> Result<LossGrads> {
    let cfg = &model.config;
    let parts = model.dense_parts().ok_or_else(|| {
        ModelError::Unsupported("backprop needs dense f32 weights on the CPU".into())
    })?;
    let (held, index) = Held::all(&parts).ok_or_else(|| {
        ModelError::Unsupported("backprop needs contiguous f32 weights on the CPU".into())
    })?;
    let w = Weights::new(&held, &index, cfg, &parts)?;
    let ad = Adapter::new(lora, cfg)?;
    let (b, s) = (batch.batch, batch.seq);
    if batch.ids.len() != b * s || s == 0 {
        return Err(ModelError::invalid(
            "batch",
            format!("{} ids for {b} rows of {s}", batch.ids.len()),
        ));
    }
    cfg.check_seq_len(s)?;
    if batch.positions.len() != batch.labels.len()
        || batch.positions.iter().any(|&p| p as usize >= b * s)
        || batch.labels.iter().any(|&y| y as usize >= cfg.vocab_size)
        || batch.ids.iter().any(|&i| i as usize >= cfg.vocab_size)
    {
        return Err(ModelError::invalid(
            "batch",
            "token ids, positions or labels out of range",
        ));
    }
    let d = Dims {
        b,
        s,
        t: b * s,
        h: cfg.hidden_size,
        qd: cfg.q_dim(),
        kv: cfg.kv_dim(),
        inter: cfg.intermediate_size,
        nh: cfg.num_attention_heads,
        nkv: cfg.num_key_value_heads,
        hd: cfg.head_dim(),
        eps: cfg.rms_norm_eps as f32,
        scale: cfg.attn_scale(),
        softcap: cfg.attn_logit_softcapping,
        act: cfg.hidden_act,
        final_softcap: cfg.final_logit_softcapping,
    };
    let ctx = Ctx {
        cfg,
        d,
        w: &w,
        ad: &ad,
    };
    let mut x = zeros(d.t * d.h);
    let scale = cfg.embed_scale();
    x.par_chunks_mut(d.h)
        .zip(batch.ids.par_iter())
        .for_each(|(row, &id)| {
            row.copy_from_slice(&w.embed[id as usize * d.h..][..d.h]);
            if scale != 1.0 {
                row.iter_mut().for_each(|x| *x *= scale);
            }
        });
    let backward = grad_scale.is_some();
    let mut saved = Vec::with_capacity(if backward { cfg.num_hidden_layers } else { 0 });
    for l in 0..cfg.num_hidden_layers {
        let (next, sv) = ctx.layer_fwd(l, x, &mut rng);
        if backward {
            saved.push(sv);
        }
        x = next;
    }
    let mut hf = zeros(d.t * d.h);
    let rstd = rms_fwd(&x, w.norm, d.eps, &mut hf);
    let (loss_sum, dhf) = lm_loss(&d, &w, &hf, batch.positions, batch.labels, grad_scale);
    drop(hf);
    let mut grads: Vec<Vec<f32>> = vec![Vec::new(); ad.n_vars];
    if let Some(dhf) = dhf {
        let mut dx = zeros(d.t * d.h);
        rms_bwd(&x, &rstd, w.norm, &dhf, &mut dx);
        drop((dhf, x));
        let mut dx = Some(dx);
        for l in (0..cfg.num_hidden_layers).rev() {
            let Some(sv) = saved.pop() else { break };
            let Some(g) = dx.take() else { break };
            dx = ctx.layer_bwd(l, sv, g, &mut grads);
        }
    }
    Ok(LossGrads { loss_sum, grads })
}
