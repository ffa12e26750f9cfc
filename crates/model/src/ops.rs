//! Fused CPU kernels with backward passes for training.
//!
//! candle's fused kernels (`rms_norm`, `softmax_last_dim`, `rope_i`) have no backward, and its composite
//! fallbacks allocate several full-size temporaries per op; its `matmul` backward also computes the gradient
//! of the frozen weight (a wasted GEMM and a weight-sized buffer per projection). These ops keep one output
//! per step, differentiate only what LoRA training needs, and run row-parallel. CPU only: other devices take
//! the composite path in `llama.rs`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("fused op: input must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn tensor_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice(c, l)?),
        _ => bail!("fused op: CPU only"),
    }
}

/// `x @ w^T` for a frozen `w [out, in]`: the backward gives `x` its gradient and nothing to `w`.
#[derive(Debug)]
struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, k) = self.w.dims2()?;
        let dims = l.dims();
        let m = l.shape().elem_count() / k;
        if !l.is_contiguous() {
            bail!("frozen-linear: input must be contiguous")
        }
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            bail!("frozen-linear: CPU only")
        };
        let lhs = Layout::contiguous_with_offset((1, m, k), l.start_offset());
        let rhs = wl.transpose(0, 1)?;
        let rhs = Layout::new(
            Shape::from((1, k, out)),
            vec![k * out, rhs.stride()[0], rhs.stride()[1]],
            rhs.start_offset(),
        );
        let y = s.matmul(ws, (1, m, out, k), &lhs, &rhs)?;
        let mut od = dims.to_vec();
        let last = od.len() - 1;
        od[last] = out;
        Ok((y, Shape::from(od)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (out, k) = self.w.dims2()?;
        let m = g.elem_count() / out;
        let mut dims = g.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = k;
        Ok(Some(
            g.contiguous()?
                .reshape((m, out))?
                .matmul(&self.w)?
                .reshape(dims)?,
        ))
    }
}

pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })
}

/// Softmax over the last dimension of `scale * att` with causal masking: row `i` of each `[.., s, s]` block
/// sees columns `0..=i`.
#[derive(Debug)]
struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .for_each(|(r, (yr, xr))| {
                let i = r % n; // the query position within its [s, s] block
                let mut max = f32::NEG_INFINITY;
                for &v in &xr[..=i] {
                    max = max.max(v * self.scale);
                }
                let mut sum = 0f32;
                for (o, &v) in yr[..=i].iter_mut().zip(&xr[..=i]) {
                    *o = (v * self.scale - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in &mut yr[..=i] {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let n = *res.dims().last().unwrap_or(&1);
        let scale = self.scale;
        let dx = tensor_slice(res, |y| {
            tensor_slice(g, |g| {
                let mut dx = vec![0f32; y.len()];
                dx.par_chunks_mut(n)
                    .zip(y.par_chunks(n).zip(g.par_chunks(n)))
                    .for_each(|(d, (y, g))| {
                        let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                            *d = scale * y * (g - dot);
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

pub fn causal_softmax(att: &Tensor, scale: f32) -> Result<Tensor> {
    att.contiguous()?.apply_op1(CausalSoftmax { scale })
}

/// One row of RMS norm: `out = x * r * w`; returns `r = 1 / sqrt(mean(x²) + eps)`. Shared with `backprop`.
/// `a . b` over eight partial sums, which the compiler vectorizes (an iterator `sum` stays sequential,
/// since float addition does not reassociate). The order depends only on the length, never on a batch.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `sqrt(2 / pi)` and the cubic coefficient of GELU's tanh approximation.
pub(crate) const GELU_K: f32 = 0.797_884_6;
pub(crate) const GELU_C: f32 = 0.044_715;

/// GELU with the tanh approximation (PyTorch's `gelu(x, approximate="tanh")`, candle's `gelu`).
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_K * (x + GELU_C * x * x * x)).tanh())
}

pub(crate) fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let ms: f32 = x.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * w;
    }
    r
}

/// One row of RMS norm's backward: `d += ∂(x * r * w)/∂x · g`, with `r` from `rms_row`.
pub(crate) fn rms_row_bwd(x: &[f32], w: &[f32], r: f32, g: &[f32], d: &mut [f32]) {
    let dot: f32 = x.iter().zip(g).zip(w).map(|((x, g), w)| x * g * w).sum();
    let c = r * r * r * dot / w.len() as f32;
    for (((d, &x), &g), &w) in d.iter_mut().zip(x).zip(g).zip(w) {
        *d += r * g * w - x * c;
    }
}

/// Interleaved rotary embedding (pairs `2i, 2i+1`) of one head in place, by the angles whose cosines and
/// sines are `c`/`sn`; `sign` -1 rotates back (a rotation's adjoint). Shared with `backprop`.
pub(crate) fn rope_head(head: &mut [f32], c: &[f32], sn: &[f32], sign: f32) {
    for (pair, (&co, &si)) in head.chunks_exact_mut(2).zip(c.iter().zip(sn)) {
        let (a, b) = (pair[0], pair[1]);
        let si = sign * si;
        pair[0] = a * co - b * si;
        pair[1] = a * si + b * co;
    }
}

/// RMS norm with a frozen weight.
#[derive(Debug)]
struct RmsNorm {
    w: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let n = self.w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
            rms_row(x, &self.w, self.eps, y);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let n = self.w.len();
        let dx = tensor_slice(arg, |x| {
            tensor_slice(g, |g| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(n)
                    .zip(x.par_chunks(n).zip(g.par_chunks(n)))
                    .for_each(|(d, (x, g))| {
                        let ms: f32 = x.iter().map(|v| v * v).sum::<f32>() / n as f32;
                        let r = 1.0 / (ms + self.eps).sqrt();
                        rms_row_bwd(x, &self.w, r, g, d);
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let w: Vec<f32> = w.to_vec1()?;
    x.contiguous()?.apply_op1(RmsNorm { w, eps })
}

/// Interleaved rotary embedding (pairs `2i, 2i+1`) of `[b, h, s, d]`, positions from 0.
#[derive(Debug)]
struct RopeI {
    cos: Vec<f32>,
    sin: Vec<f32>,
    d: usize,
    s: usize,
}

impl RopeI {
    fn rotate(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let (d, s) = (self.d, self.s);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(r, (y, x))| {
                let pos = r % s;
                y.copy_from_slice(x);
                rope_head(
                    y,
                    &self.cos[pos * d / 2..(pos + 1) * d / 2],
                    &self.sin[pos * d / 2..(pos + 1) * d / 2],
                    sign,
                );
            });
        y
    }
}

impl CustomOp1 for RopeI {
    fn name(&self) -> &'static str {
        "rope-i-train"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(st, l)?;
        Ok((CpuStorage::F32(self.rotate(x, 1.0)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // a rotation's adjoint is the rotation by the opposite angle
        let dx = tensor_slice(g, |g| Ok(self.rotate(g, -1.0)))?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// `cos`/`sin` are `[max_pos, d/2]`; `x` is `[b, h, s, d]`.
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, s, d) = x.dims4()?;
    let cos: Vec<f32> = cos.narrow(0, 0, s)?.flatten_all()?.to_vec1()?;
    let sin: Vec<f32> = sin.narrow(0, 0, s)?.flatten_all()?.to_vec1()?;
    x.contiguous()?.apply_op1(RopeI { cos, sin, d, s })
}

/// Summed cross-entropy of `logits [n, v]` against `labels`: a scalar. The backward is
/// `softmax - onehot`, computed row by row without materialising log-probabilities.
#[derive(Debug)]
struct CrossEntropySum {
    labels: Vec<u32>,
}

impl CustomOp1 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "cross-entropy-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let v = l.dims()[1];
        let total: f64 = x
            .par_chunks(v)
            .zip(self.labels.par_iter())
            .map(|(row, &y)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max + row.iter().map(|&z| (z - max).exp()).sum::<f32>().ln();
                (lse - row[y as usize]) as f64
            })
            .sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let scale = g.flatten_all()?.to_vec1::<f32>()?[0];
        let v = arg.dims()[1];
        let dx = tensor_slice(arg, |x| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v).zip(self.labels.par_iter()))
                .for_each(|(d, (row, &y))| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &z) in d.iter_mut().zip(row) {
                        *o = (z - max).exp();
                        sum += *o;
                    }
                    let inv = scale / sum;
                    for o in d.iter_mut() {
                        *o *= inv;
                    }
                    d[y as usize] -= scale;
                });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels: Vec<u32> = labels.to_vec1()?;
    let (n, v) = logits.dims2()?;
    if labels.len() != n || labels.iter().any(|&y| y as usize >= v) {
        bail!(
            "cross-entropy: {} labels for {n} rows of {v} classes",
            labels.len()
        )
    }
    logits.contiguous()?.apply_op1(CrossEntropySum { labels })
}
