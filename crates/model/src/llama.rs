//! The decoder forward pass of every supported family (see `config::Family`: the llama block with the
//! family's switches), with LoRA hooks on any of the seven projections.
//!
//! Two ways to run one set of weights:
//! - quantized weights (`QMatMul`) and candle's fused kernels (`rms_norm`, `softmax_last_dim`, `rope_i`):
//!   the inference path, the same ops as `candle_transformers::models::quantized_llama`, so the same logits;
//! - dequantized f32 weights and differentiable ops (`rms_norm_slow`, `softmax`, `rope_i_slow`): the training
//!   path. The fused kernels have no backward pass (gradients silently vanish through them), hence the split.
//!
//! The base weights are plain tensors (never `Var`s), so only LoRA parameters get gradients. The model holds
//! no LoRA state: adapters are passed per call, so one base serves many adapters.

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, Module, Tensor};
use rand::Rng;

use std::sync::Arc;

use crate::config::{Activation, ModelConfig, Proj};
use crate::error::{ModelError, Result};
use crate::lora::Lora;
use crate::q8::Q8Matrix;
use crate::weights::{BaseModel, Weight};

/// How the base weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// As stored (GGUF blocks stay quantized): least memory, fastest decoding, no gradients.
    Quantized,
    /// Dequantized to f32: what training differentiates through.
    F32,
    /// Repacked as int8 blocks (`q8`, any source format) for the serving engine's batched matmul, which
    /// beats candle's per-row quantized kernels once a step carries several rows. CPU only.
    Int8,
}

#[derive(Debug, Clone)]
enum Linear {
    Q(QMatMul),
    Q8(Arc<Q8Matrix>),
    Dense(Tensor),
}

impl Linear {
    fn new(w: &Weight, precision: Precision, device: &Device) -> Result<Self> {
        Ok(match (w, precision) {
            (Weight::Quantized(q), Precision::Quantized) => {
                Linear::Q(QMatMul::from_arc(q.clone())?)
            }
            (_, Precision::Int8) => {
                if !device.is_cpu() {
                    return Err(ModelError::invalid(
                        "precision",
                        "int8 weights run on the CPU only",
                    ));
                }
                let t = w.dense(&Device::Cpu)?;
                let (rows, cols) = t.dims2()?;
                if !cols.is_multiple_of(crate::q8::BLOCK) {
                    return Ok(Linear::Dense(t));
                }
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                Linear::Q8(Arc::new(Q8Matrix::quantize(&v, rows, cols)?))
            }
            _ => Linear::Dense(w.dense(device)?),
        })
    }

    /// `x [rows, in] @ w^T` on host rows, for the serving engine. Quantized weights multiply each row on its
    /// own (candle quantizes the row and takes block dot products), so a row's result does not depend on
    /// the other rows in the batch.
    fn forward_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        // int8 works on the host rows as they are; candle's paths take them as a tensor
        let t = || Tensor::from_slice(x, (rows, x.len() / rows.max(1)), &Device::Cpu);
        let y = match self {
            Linear::Q8(q) => return Ok(q.matmul(x, rows)),
            Linear::Q(q) => q.forward(&t()?)?,
            Linear::Dense(w) => t()?.matmul(&w.to_device(&Device::Cpu)?.t()?)?,
        };
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }

    fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        Ok(match self {
            Linear::Q(q) => q.forward(x)?,
            Linear::Q8(q) => {
                let dims = x.dims().to_vec();
                let rows = x.elem_count() / q.cols();
                let host = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = dims;
                let last = out.len() - 1;
                out[last] = q.rows();
                Tensor::from_vec(q.matmul(&host, rows), out, x.device())?
            }
            Linear::Dense(w) if grad && w.device().is_cpu() => crate::ops::frozen_linear(x, w)?,
            Linear::Dense(w) => {
                // one large GEMM over all tokens rather than a batched one
                let dims = x.dims().to_vec();
                let n_in = dims[dims.len() - 1];
                let rows = x.elem_count() / n_in;
                let y = x.reshape((rows, n_in))?.matmul(&w.t()?)?;
                let mut out = dims;
                let last = out.len() - 1;
                out[last] = w.dim(0)?;
                y.reshape(out)?
            }
        })
    }
}

/// Borrowed weights of a dense model (see `Llama::dense_parts`); projections in `Proj::ALL` order.
#[derive(Debug)]
pub(crate) struct DenseParts<'a> {
    pub embed: &'a Tensor,
    pub norm: &'a Tensor,
    pub lm_head: &'a Tensor,
    /// `[max_pos, head_dim / 2]` rotary tables of full-attention layers, as the forward pass uses them.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// The tables of sliding layers when they differ (Gemma 3's local base).
    pub local: Option<(&'a Tensor, &'a Tensor)>,
    pub layers: Vec<LayerParts<'a>>,
}

#[derive(Debug)]
pub(crate) struct LayerParts<'a> {
    pub attn_norm: &'a Tensor,
    pub ffn_norm: &'a Tensor,
    pub proj: Vec<&'a Tensor>,
    /// The layer's small tensors (biases, q/k norms, post-norms), see [`Extras`].
    pub extras: Extras<&'a Tensor>,
}

/// A layer's optional small tensors: q/k/v/o biases (`Proj::ALL` order, attention only), per-head q and k
/// norms, and the norms after attention and after the MLP.
#[derive(Debug, Clone)]
pub(crate) struct Extras<T> {
    pub bias: [Option<T>; 4],
    pub q_norm: Option<T>,
    pub k_norm: Option<T>,
    pub post_attn_norm: Option<T>,
    pub post_ffn_norm: Option<T>,
}

impl<T> Extras<T> {
    pub fn as_ref(&self) -> Extras<&T> {
        Extras {
            bias: [0, 1, 2, 3].map(|i| self.bias[i].as_ref()),
            q_norm: self.q_norm.as_ref(),
            k_norm: self.k_norm.as_ref(),
            post_attn_norm: self.post_attn_norm.as_ref(),
            post_ffn_norm: self.post_ffn_norm.as_ref(),
        }
    }

    pub fn try_map<U>(&self, f: impl Fn(&T) -> Result<U>) -> Result<Extras<U>> {
        let opt = |t: &Option<T>| t.as_ref().map(&f).transpose();
        Ok(Extras {
            bias: [
                opt(&self.bias[0])?,
                opt(&self.bias[1])?,
                opt(&self.bias[2])?,
                opt(&self.bias[3])?,
            ],
            q_norm: opt(&self.q_norm)?,
            k_norm: opt(&self.k_norm)?,
            post_attn_norm: opt(&self.post_attn_norm)?,
            post_ffn_norm: opt(&self.post_ffn_norm)?,
        })
    }

    /// The bias of projection `p`, if it has one.
    pub fn bias(&self, p: Proj) -> Option<&T> {
        self.bias.get(p.index()).and_then(|b| b.as_ref())
    }
}

/// Host copies of a model's small per-token tables (see `Llama::host_tables`).
#[derive(Debug, Clone)]
pub(crate) struct HostTables {
    pub attn_norm: Vec<Vec<f32>>,
    pub ffn_norm: Vec<Vec<f32>>,
    pub extras: Vec<Extras<Vec<f32>>>,
    pub norm: Vec<f32>,
    /// `[max_pos, head_dim / 2]`, full-attention layers.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// The same for sliding layers when their base differs.
    pub local: Option<(Vec<f32>, Vec<f32>)>,
}

impl HostTables {
    /// The rotary tables `layer` uses.
    pub fn rope(&self, cfg: &ModelConfig, layer: usize) -> (&[f32], &[f32]) {
        match (&self.local, cfg.local_rope(layer)) {
            (Some((c, s)), true) => (c, s),
            _ => (&self.cos, &self.sin),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: Vec<Linear>,
    extras: Extras<Tensor>,
}

/// Per-call options.
#[derive(Debug)]
pub struct Forward<'a> {
    /// Differentiable ops (the training path). Required for gradients to reach LoRA parameters.
    pub grad: bool,
    /// LoRA dropout: when set, drops LoRA inputs with the adapter's dropout rate, from this generator.
    pub dropout_rng: Option<&'a mut rand_chacha::ChaCha8Rng>,
}

impl Forward<'_> {
    /// Inference: fused ops, no dropout.
    pub fn infer() -> Forward<'static> {
        Forward {
            grad: false,
            dropout_rng: None,
        }
    }

    /// The differentiable path without dropout (gradients, checks against it).
    pub fn differentiable() -> Forward<'static> {
        Forward {
            grad: true,
            dropout_rng: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: ModelConfig,
    pub precision: Precision,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    local: Option<(Tensor, Tensor)>,
    device: Device,
}

/// `[n_pos, head_dim / 2]` cos and sin tables for inverse frequencies `inv`.
fn rotary_tables(inv: &[f32], n_pos: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv.len();
    let theta = Tensor::new(inv, device)?;
    let idx = Tensor::arange(0, n_pos as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n_pos, 1))?
        .matmul(&theta.reshape((1, half))?)?;
    Ok((idx.cos()?, idx.sin()?))
}

/// `cap * tanh(x / cap)`.
fn softcap(x: &Tensor, cap: Option<f32>) -> Result<Tensor> {
    Ok(match cap {
        Some(c) => ((x / c as f64)?.tanh()? * c as f64)?,
        None => x.clone(),
    })
}

fn masked_fill(on_false: &Tensor, mask: &Tensor, on_true: f32) -> Result<Tensor> {
    let fill = Tensor::new(on_true, on_false.device())?.broadcast_as(mask.shape().dims())?;
    Ok(mask.where_cond(&fill, on_false)?)
}

fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, n_kv, s, hd) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, n_kv * n_rep, s, hd))?)
}

impl Llama {
    pub fn new(base: &BaseModel, precision: Precision, device: &Device) -> Result<Self> {
        let cfg = base.config.clone();
        let dense = |n: &str| base.weight(n)?.dense(device);
        let embed = dense("token_embd.weight")?;
        let lm_head = if cfg.tie_word_embeddings && precision == Precision::F32 {
            Linear::Dense(embed.clone())
        } else if cfg.tie_word_embeddings {
            Linear::new(base.weight("token_embd.weight")?, precision, device)?
        } else {
            Linear::new(base.weight("output.weight")?, precision, device)?
        };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let proj = Proj::ALL
                .iter()
                .map(|p| {
                    Linear::new(
                        base.weight(&format!("blk.{l}.{}.weight", p.gguf()))?,
                        precision,
                        device,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let opt = |s: &str| -> Result<Option<Tensor>> {
                match base.weight_opt(&format!("blk.{l}.{s}")) {
                    Some(w) => Ok(Some(w.dense(device)?)),
                    None => Ok(None),
                }
            };
            let extras = Extras {
                bias: [
                    opt("attn_q.bias")?,
                    opt("attn_k.bias")?,
                    opt("attn_v.bias")?,
                    opt("attn_output.bias")?,
                ],
                q_norm: opt("attn_q_norm.weight")?,
                k_norm: opt("attn_k_norm.weight")?,
                post_attn_norm: opt("post_attention_norm.weight")?,
                post_ffn_norm: opt("post_ffw_norm.weight")?,
            };
            blocks.push(Block {
                attn_norm: dense(&format!("blk.{l}.attn_norm.weight"))?,
                ffn_norm: dense(&format!("blk.{l}.ffn_norm.weight"))?,
                proj,
                extras,
            });
        }
        let n_pos = cfg.max_position_embeddings.max(1);
        let (cos, sin) = rotary_tables(&cfg.inv_freqs(false), n_pos, device)?;
        let local = match cfg.rope_local_theta {
            Some(_) => Some(rotary_tables(&cfg.inv_freqs(true), n_pos, device)?),
            None => None,
        };
        Ok(Llama {
            embed,
            blocks,
            norm: dense("output_norm.weight")?,
            lm_head,
            cos,
            sin,
            local,
            precision,
            device: device.clone(),
            config: cfg,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dense f32 weights on the CPU, for the hand-written training passes (`crate::backprop`); `None`
    /// for quantized weights or another device.
    pub(crate) fn dense_parts(&self) -> Option<DenseParts<'_>> {
        if !self.device.is_cpu() {
            return None;
        }
        self.parts()
    }

    /// The dense f32 weights on the model's device (the device serving engine converts them); `None` for
    /// quantized weights.
    pub(crate) fn parts(&self) -> Option<DenseParts<'_>> {
        if self.precision != Precision::F32 {
            return None;
        }
        fn dense(l: &Linear) -> Option<&Tensor> {
            match l {
                Linear::Dense(w) => Some(w),
                Linear::Q(_) | Linear::Q8(_) => None,
            }
        }
        let mut layers = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let mut proj = Vec::with_capacity(7);
            for l in &b.proj {
                proj.push(dense(l)?);
            }
            layers.push(LayerParts {
                attn_norm: &b.attn_norm,
                ffn_norm: &b.ffn_norm,
                proj,
                extras: b.extras.as_ref(),
            });
        }
        Some(DenseParts {
            embed: &self.embed,
            norm: &self.norm,
            lm_head: dense(&self.lm_head)?,
            cos: &self.cos,
            sin: &self.sin,
            local: self.local.as_ref().map(|(c, s)| (c, s)),
            layers,
        })
    }

    /// Several projections of one layer over the same host rows (q, k, v; gate, up): with int8 weights one
    /// quantization of the rows and one fork-join for all of them. Each result is what that projection alone
    /// gives (base weights only): the serving engine's GEMM.
    pub(crate) fn project_group_rows(
        &self,
        layer: usize,
        ps: &[Proj],
        x: &[f32],
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let lin: Vec<&Linear> = ps
            .iter()
            .map(|p| &self.blocks[layer].proj[p.index()])
            .collect();
        let q8: Option<Vec<&Q8Matrix>> = lin
            .iter()
            .map(|l| match l {
                Linear::Q8(q) => Some(&**q),
                _ => None,
            })
            .collect();
        match q8 {
            Some(mats) => Ok(Q8Matrix::matmul_group(&mats, x, rows)),
            None => lin.iter().map(|l| l.forward_rows(x, rows)).collect(),
        }
    }

    /// The output projection over host rows.
    pub(crate) fn lm_head_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.lm_head.forward_rows(x, rows)
    }

    /// Host copies of what the serving engine reads per token: the norms and the rotary tables.
    pub(crate) fn host_tables(&self) -> Result<HostTables> {
        let v = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(HostTables {
            attn_norm: self
                .blocks
                .iter()
                .map(|b| v(&b.attn_norm))
                .collect::<Result<_>>()?,
            ffn_norm: self
                .blocks
                .iter()
                .map(|b| v(&b.ffn_norm))
                .collect::<Result<_>>()?,
            extras: self
                .blocks
                .iter()
                .map(|b| b.extras.try_map(v))
                .collect::<Result<_>>()?,
            norm: v(&self.norm)?,
            cos: v(&self.cos)?,
            sin: v(&self.sin)?,
            local: match &self.local {
                Some((c, s)) => Some((v(c)?, v(s)?)),
                None => None,
            },
        })
    }

    /// Embedding rows of `ids` (`[ids.len(), hidden]`, row-major), scaled as the family scales them.
    pub(crate) fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let mut v = self
            .embed
            .index_select(&t, 0)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let scale = self.config.embed_scale();
        if scale != 1.0 {
            v.iter_mut().for_each(|x| *x *= scale);
        }
        Ok(v)
    }

    fn rms(&self, x: &Tensor, w: &Tensor, grad: bool) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        Ok(if grad && x.device().is_cpu() {
            crate::ops::rms_norm(x, w, eps)?
        } else if grad {
            candle_nn::ops::rms_norm_slow(x, w, eps)?
        } else {
            candle_nn::ops::rms_norm(x, w, eps)?
        })
    }

    fn linear(
        &self,
        layer: usize,
        p: Proj,
        x: &Tensor,
        lora: Option<&Lora>,
        opts: &mut Forward<'_>,
    ) -> Result<Tensor> {
        let y = self.blocks[layer].proj[p.index()].forward(x, opts.grad)?;
        let y = match self.blocks[layer].extras.bias(p) {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let Some((a, b, scale)) = lora.and_then(|l| l.get(layer, p)) else {
            return Ok(y);
        };
        let x = match (
            opts.dropout_rng.as_deref_mut(),
            lora.map(|l| l.config.dropout),
        ) {
            (Some(rng), Some(p)) if p > 0.0 => {
                let keep = 1.0 - p;
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f32>() < p {
                            0.0
                        } else {
                            1.0 / keep
                        }
                    })
                    .collect();
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            _ => x.clone(),
        };
        let dims = x.dims().to_vec();
        let n_in = dims[dims.len() - 1];
        let rows = x.elem_count() / n_in;
        let delta = x
            .reshape((rows, n_in))?
            .matmul(&a.t()?)?
            .matmul(&b.t()?)?
            .affine(scale, 0.0)?;
        let delta = delta.reshape(y.shape())?;
        Ok((y + delta)?)
    }

    /// Hidden states after the final norm, `[batch, seq, hidden]`, for every position. Sequences start at
    /// position 0; padding must come after the real tokens (the causal mask then keeps it out).
    pub fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        opts: &mut Forward<'_>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let c = &self.config;
        c.check_seq_len(s)?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let grad = opts.grad;
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, s, c.hidden_size))?;
        if c.scale_embeddings {
            x = (x * c.embed_scale() as f64)?;
        }
        let cpu = self.device.is_cpu();
        // masks: 1 where a query must not see a key (the future; beyond the window)
        let mask_for = |window: Option<usize>| -> Result<Option<Tensor>> {
            if s == 1 {
                return Ok(None);
            }
            let m: Vec<u8> = (0..s)
                .flat_map(|i| {
                    (0..s).map(move |j| u8::from(j > i || window.is_some_and(|w| i - j >= w)))
                })
                .collect();
            Ok(Some(Tensor::from_slice(&m, (s, s), &self.device)?))
        };
        let full_mask = mask_for(None)?;
        let window_mask = match c.sliding_window {
            Some(w) if w < s => mask_for(Some(w))?,
            _ => None,
        };
        let scale = c.attn_scale();
        for l in 0..self.blocks.len() {
            let blk = &self.blocks[l];
            let (cos, sin) = match (&self.local, c.local_rope(l)) {
                (Some((lc, ls)), true) => (lc.narrow(0, 0, s)?, ls.narrow(0, 0, s)?),
                _ => (self.cos.narrow(0, 0, s)?, self.sin.narrow(0, 0, s)?),
            };
            let rope = |t: Tensor| -> Result<Tensor> {
                let t = t.contiguous()?;
                Ok(if grad && cpu {
                    crate::ops::rope_i(&t, &cos, &sin)?
                } else if grad {
                    candle_nn::rotary_emb::rope_i_slow(&t, &cos, &sin)?
                } else {
                    candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?
                })
            };
            let windowed = c.window(l).is_some_and(|w| w < s);
            let residual = x.clone();
            let h = self.rms(&x, &blk.attn_norm, grad)?;
            let q = self.linear(l, Proj::Q, &h, lora, opts)?;
            let k = self.linear(l, Proj::K, &h, lora, opts)?;
            let v = self.linear(l, Proj::V, &h, lora, opts)?;
            let mut q = q.reshape((b, s, nh, hd))?;
            let mut k = k.reshape((b, s, nkv, hd))?;
            if let Some(w) = &blk.extras.q_norm {
                q = self.rms(&q.contiguous()?, w, grad)?;
            }
            if let Some(w) = &blk.extras.k_norm {
                k = self.rms(&k.contiguous()?, w, grad)?;
            }
            let q = rope(q.transpose(1, 2)?)?;
            let k = rope(k.transpose(1, 2)?)?;
            let v = v.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let k = repeat_kv(k, nh / nkv)?;
            let v = repeat_kv(v, nh / nkv)?;
            let att = q.matmul(&k.t()?)?;
            let att = if grad && cpu && !windowed && c.attn_logit_softcapping.is_none() {
                crate::ops::causal_softmax(&att, scale)?
            } else {
                let att = softcap(&(att * scale as f64)?, c.attn_logit_softcapping)?;
                let mask = if windowed {
                    window_mask.as_ref()
                } else {
                    full_mask.as_ref()
                };
                self.softmax_masked(att, mask, grad)?
            };
            let y = att.matmul(&v.contiguous()?)?;
            let y = y.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            let mut y = self.linear(l, Proj::O, &y, lora, opts)?;
            if let Some(w) = &blk.extras.post_attn_norm {
                y = self.rms(&y, w, grad)?;
            }
            x = (y + residual)?;

            let residual = x.clone();
            let h = self.rms(&x, &blk.ffn_norm, grad)?;
            let gate = self.linear(l, Proj::Gate, &h, lora, opts)?;
            let up = self.linear(l, Proj::Up, &h, lora, opts)?;
            let act = match c.hidden_act {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let h = (act * up)?;
            let mut h = self.linear(l, Proj::Down, &h, lora, opts)?;
            if let Some(w) = &blk.extras.post_ffn_norm {
                h = self.rms(&h, w, grad)?;
            }
            x = (h + residual)?;
        }
        self.rms(&x, &self.norm, grad)
    }

    fn softmax_masked(&self, att: Tensor, mask: Option<&Tensor>, grad: bool) -> Result<Tensor> {
        let att = match mask {
            Some(m) => masked_fill(&att, &m.broadcast_as(att.shape())?, f32::NEG_INFINITY)?,
            None => att,
        };
        Ok(if grad {
            candle_nn::ops::softmax(&att, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        })
    }

    /// Logits for hidden states of any leading shape (soft-capped where the family caps them).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        softcap(
            &self.lm_head.forward(hidden, false)?,
            self.config.final_logit_softcapping,
        )
    }

    /// Summed next-token cross-entropy of `hidden [n, h]` against `labels [n]` (a scalar), differentiable.
    pub fn loss_sum(&self, hidden: &Tensor, labels: &Tensor) -> Result<Tensor> {
        if self.device.is_cpu() {
            let logits = softcap(
                &self.lm_head.forward(hidden, true)?,
                self.config.final_logit_softcapping,
            )?;
            return Ok(crate::ops::cross_entropy_sum(&logits, labels)?);
        }
        let logp = candle_nn::ops::log_softmax(&self.logits(hidden)?, 1)?;
        Ok(logp.gather(&labels.unsqueeze(1)?, 1)?.sum_all()?.neg()?)
    }

    /// Logits for every position, `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        opts: &mut Forward<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, lora, opts)?;
        self.logits(&h)
    }
}
