//! The serving step on any candle device: bf16 weights and a paged KV cache on an NVIDIA GPU (the `cuda`
//! feature), or f32 on the CPU, where the ordinary tests run it against the int8 engine and transformers.
//!
//! - **Base projections** are one GEMM per layer for q, k and v together and one for gate and up (the
//!   weights are concatenated at load), over every row of the step: prefill chunks and decode tokens alike.
//! - **LoRA** follows S-LoRA / Punica: every resident adapter owns a slot of one pool per layer and
//!   projection (`A [slots, R, in]`, `scale * B^T [slots, R, out]`, ranks padded to the pool's `R`). A step
//!   gathers the slots of its active adapters and adds `((x A_act^T) * mask) B_act`, where `mask` keeps each
//!   row's own adapter's `R` columns: two GEMMs per projection, whatever the number of adapters in the
//!   batch. Slots are uploaded when an adapter first appears in a batch and reused least recently used first.
//! - **KV cache**: one pool per layer of fixed-size blocks (`block_size` positions); a sequence holds a
//!   list of blocks reserved at admission, so thousands of sequences share device memory without
//!   fragmentation. New keys and values are scattered into their slots; attention gathers each sequence's
//!   positions, decode rows of all sequences in one batched product, each prefill chunk on its own.
//!
//! Activations between the GEMMs (residual stream, norms, rotary, softmax) stay f32, so the only rounding
//! bf16 adds is in the base weights and their GEMM inputs. The LoRA pools and products are f32 by default
//! (`DeviceConfig::lora_dtype`): in bf16 they added as much error again on large adapters (the mistral
//! fixture's worst logit RMS went from 4.9% to 6.8%), but a step reads each active adapter once, and at
//! hundreds of adapters per batch those bytes approach the base weights': bf16 halves them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::adapter::ServedAdapter;
use super::forward::{Backend, SeqStep};
use crate::config::{Activation, ModelConfig, Proj};
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::lora::proj_dims;

/// Positions per KV block, by default (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// Adapter slots on the device, by default (never fewer than the engine's `max_active_adapters`).
pub const DEFAULT_ADAPTER_SLOTS: usize = 256;

/// How the device backend holds the model.
#[derive(Debug, Clone, Copy)]
pub struct DeviceConfig {
    /// Weights, GEMM inputs and the KV cache: `BF16` on a GPU, `F32` on the CPU.
    pub dtype: DType,
    /// The adapter slot pools and LoRA products: `F32` by default (see the module documentation);
    /// `BF16` halves the bytes a step reads per active adapter.
    pub lora_dtype: DType,
    /// Positions per KV block.
    pub block_size: usize,
    /// Adapters resident on the device at once (a pool slot each).
    pub adapter_slots: usize,
}

impl DeviceConfig {
    /// bf16 on a GPU, f32 on the CPU (whose bf16 GEMMs are slow).
    pub fn for_device(device: &Device) -> Self {
        DeviceConfig {
            dtype: if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            },
            lora_dtype: DType::F32,
            block_size: DEFAULT_BLOCK_SIZE,
            adapter_slots: DEFAULT_ADAPTER_SLOTS,
        }
    }
}

/// A sequence's KV cache: blocks of the device pool.
#[derive(Debug, Default)]
pub struct PagedCache {
    blocks: Vec<u32>,
    len: usize,
}

impl PagedCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Layer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// `[q_dim + 2 kv_dim, hidden]`: q, k and v in one GEMM.
    qkv: Tensor,
    o: Tensor,
    /// `[2 intermediate, hidden]`: gate and up in one GEMM.
    gate_up: Tensor,
    down: Tensor,
    qkv_bias: Option<Tensor>,
    o_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// `[blocks * block_size, kv_dim]` key and value pools (`Backend::prepare` allocates them).
    kv: Option<(Tensor, Tensor)>,
}

/// A model served on a candle device (see the module documentation).
pub struct DeviceModel {
    config: ModelConfig,
    cfg: DeviceConfig,
    device: Device,
    embed: Tensor,
    lm_head: Tensor,
    norm: Tensor,
    cos: Tensor,
    sin: Tensor,
    local: Option<(Tensor, Tensor)>,
    layers: Vec<Layer>,
    free_blocks: Vec<u32>,
    lora: LoraPool,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("device", &self.device)
            .field("cfg", &self.cfg)
            .field("free_blocks", &self.free_blocks.len())
            .finish_non_exhaustive()
    }
}

impl DeviceModel {
    /// From a model loaded with f32 weights (`Precision::F32`) on the target device; the weights are
    /// converted to `cfg.dtype` and the projections concatenated.
    pub fn new(llama: &Llama, cfg: DeviceConfig) -> Result<Self> {
        let parts = llama.parts().ok_or_else(|| {
            ModelError::invalid(
                "precision",
                "the device engine starts from f32 weights (Precision::F32)",
            )
        })?;
        let c = llama.config.clone();
        let dt = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(cfg.dtype)?.contiguous()?) };
        let f32c = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
        let opt =
            |t: Option<&&Tensor>| -> Result<Option<Tensor>> { t.map(|t| f32c(t)).transpose() };
        let mut layers = Vec::with_capacity(parts.layers.len());
        for lp in &parts.layers {
            let p = |x: Proj| lp.proj[x.index()];
            let ex = &lp.extras;
            let qkv_bias = if ex.bias[..3].iter().any(Option::is_some) {
                let zeros = |n: usize| Tensor::zeros(n, DType::F32, llama.device());
                let q = match ex.bias[0] {
                    Some(b) => f32c(b)?,
                    None => zeros(c.q_dim())?,
                };
                let k = match ex.bias[1] {
                    Some(b) => f32c(b)?,
                    None => zeros(c.kv_dim())?,
                };
                let v = match ex.bias[2] {
                    Some(b) => f32c(b)?,
                    None => zeros(c.kv_dim())?,
                };
                Some(Tensor::cat(&[q, k, v], 0)?)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: f32c(lp.attn_norm)?,
                ffn_norm: f32c(lp.ffn_norm)?,
                qkv: dt(&Tensor::cat(&[p(Proj::Q), p(Proj::K), p(Proj::V)], 0)?)?,
                o: dt(p(Proj::O))?,
                gate_up: dt(&Tensor::cat(&[p(Proj::Gate), p(Proj::Up)], 0)?)?,
                down: dt(p(Proj::Down))?,
                qkv_bias,
                o_bias: opt(ex.bias[3].as_ref())?,
                q_norm: opt(ex.q_norm.as_ref())?,
                k_norm: opt(ex.k_norm.as_ref())?,
                post_attn_norm: opt(ex.post_attn_norm.as_ref())?,
                post_ffn_norm: opt(ex.post_ffn_norm.as_ref())?,
                kv: None,
            });
        }
        let embed = dt(parts.embed)?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            dt(parts.lm_head)?
        };
        Ok(DeviceModel {
            lora: LoraPool::new(c.num_hidden_layers, cfg.adapter_slots),
            embed,
            lm_head,
            norm: f32c(parts.norm)?,
            cos: f32c(parts.cos)?,
            sin: f32c(parts.sin)?,
            local: match parts.local {
                Some((c, s)) => Some((f32c(c)?, f32c(s)?)),
                None => None,
            },
            layers,
            free_blocks: Vec::new(),
            device: llama.device().clone(),
            config: c,
            cfg,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// KV blocks not reserved by a sequence.
    pub fn free_blocks(&self) -> usize {
        self.free_blocks.len()
    }

    /// Adapters resident in device slots.
    pub fn resident_adapters(&self) -> usize {
        self.lora.by_serial.len()
    }

    /// `x [n, in] (f32) @ w^T` in the weights' dtype, back to f32.
    fn gemm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(x.to_dtype(self.cfg.dtype)?
            .matmul(&w.t()?)?
            .to_dtype(DType::F32)?)
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            w,
            self.config.rms_norm_eps as f32,
        )?)
    }

    /// RMS norm over each `w.len()`-wide piece of the rows (q/k heads).
    fn rms_heads(&self, x: &Tensor, w: &Tensor, heads: usize) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        let y = self.rms(&x.reshape((n, heads, width / heads))?, w)?;
        Ok(y.reshape((n, width))?)
    }

    /// `y + ` each row's adapter delta of projection `p` (nothing when no active adapter targets it); `x`
    /// is the projection's f32 input.
    fn with_lora(&self, y: Tensor, l: usize, p: Proj, x: &Tensor, st: &StepLora) -> Result<Tensor> {
        if !st.targets[l][p.index()] {
            return Ok(y);
        }
        let (Some(a), Some(b)) = (&self.lora.a[l][p.index()], &self.lora.b[l][p.index()]) else {
            return Ok(y);
        };
        let (n_in, n_out) = proj_dims(&self.config, p);
        let cols = st.m * self.lora.rank;
        let a = a.index_select(&st.act, 0)?.reshape((cols, n_in))?;
        let b = b.index_select(&st.act, 0)?.reshape((cols, n_out))?;
        let t = (x.to_dtype(self.cfg.lora_dtype)?.matmul(&a.t()?)? * &st.mask)?;
        Ok((y + t.matmul(&b)?.to_dtype(DType::F32)?)?)
    }
}

/// The adapter slot pools (see the module documentation).
struct LoraPool {
    slots: usize,
    /// Columns per slot: the largest rank seen, rounded up to 8 (0 until the first adapter).
    rank: usize,
    /// `[layer][proj]`: `[slots, rank, in]` and `[slots, rank, out]` (`lora_dtype`), allocated on first use.
    a: Vec<[Option<Tensor>; 7]>,
    b: Vec<[Option<Tensor>; 7]>,
    /// Per slot: the adapter's serial and when a step last used it.
    owner: Vec<Option<(u64, u64)>>,
    by_serial: HashMap<u64, usize>,
    clock: u64,
}

impl LoraPool {
    fn new(layers: usize, slots: usize) -> Self {
        LoraPool {
            slots,
            rank: 0,
            a: (0..layers).map(|_| Default::default()).collect(),
            b: (0..layers).map(|_| Default::default()).collect(),
            owner: vec![None; slots],
            by_serial: HashMap::new(),
            clock: 0,
        }
    }

    fn resize(&mut self, slots: usize) {
        if slots != self.slots {
            self.slots = slots;
            self.clear();
        }
    }

    fn clear(&mut self) {
        for l in 0..self.a.len() {
            self.a[l] = Default::default();
            self.b[l] = Default::default();
        }
        self.owner = vec![None; self.slots];
        self.by_serial.clear();
    }
}

/// A step's view of its adapters.
struct StepLora {
    /// Distinct adapters in the step.
    m: usize,
    /// `[m]` their slots.
    act: Tensor,
    /// `[rows, m * rank]`: 1 in each row's own adapter's columns.
    mask: Tensor,
    /// `[layer][proj]`: some active adapter changes it.
    targets: Vec<[bool; 7]>,
}

impl DeviceModel {
    /// Slots for the step's distinct adapters (uploading the missing ones), and the row mask.
    fn step_lora(&mut self, rows: &[Option<&ServedAdapter>]) -> Result<Option<StepLora>> {
        let mut distinct: Vec<&ServedAdapter> = Vec::new();
        let mut row_idx = Vec::with_capacity(rows.len());
        for a in rows {
            row_idx.push(a.map(
                |a| match distinct.iter().position(|d| d.serial() == a.serial()) {
                    Some(i) => i,
                    None => {
                        distinct.push(a);
                        distinct.len() - 1
                    }
                },
            ));
        }
        if distinct.is_empty() {
            return Ok(None);
        }
        if distinct.len() > self.lora.slots {
            return Err(ModelError::invalid(
                "adapters",
                format!(
                    "{} distinct adapters in one step; the device holds {}",
                    distinct.len(),
                    self.lora.slots
                ),
            ));
        }
        let need = distinct
            .iter()
            .map(|a| a.config.rank)
            .max()
            .unwrap_or(0)
            .next_multiple_of(8);
        if need > self.lora.rank {
            // wider slots: every pool is rebuilt, adapters are uploaded again as they are used
            self.lora.clear();
            self.lora.rank = need;
        }
        self.lora.clock += 1;
        let clock = self.lora.clock;
        let mut slots = Vec::with_capacity(distinct.len());
        for a in &distinct {
            let slot = match self.lora.by_serial.get(&a.serial()) {
                Some(&s) => s,
                None => {
                    let s = self.free_slot(&distinct)?;
                    self.upload(s, a)?;
                    s
                }
            };
            self.lora.owner[slot] = Some((a.serial(), clock));
            slots.push(slot as u32);
        }
        let m = distinct.len();
        let r = self.lora.rank;
        let mut mask = vec![0f32; rows.len() * m * r];
        for (i, j) in row_idx.iter().enumerate() {
            if let Some(j) = j {
                let rank = distinct[*j].config.rank;
                mask[i * m * r + j * r..i * m * r + j * r + rank].fill(1.0);
            }
        }
        let layers = self.config.num_hidden_layers;
        let targets = (0..layers)
            .map(|l| Proj::ALL.map(|p| distinct.iter().any(|a| a.targets(l, p))))
            .collect();
        Ok(Some(StepLora {
            m,
            act: Tensor::from_vec(slots, m, &self.device)?,
            mask: Tensor::from_vec(mask, (rows.len(), m * r), &self.device)?
                .to_dtype(self.cfg.lora_dtype)?,
            targets,
        }))
    }

    /// An empty slot, or the least recently used one no adapter of this step holds.
    fn free_slot(&mut self, step: &[&ServedAdapter]) -> Result<usize> {
        if let Some(s) = self.lora.owner.iter().position(Option::is_none) {
            return Ok(s);
        }
        let s = self
            .lora
            .owner
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some_and(|(serial, _)| step.iter().all(|a| a.serial() != serial)))
            .min_by_key(|(_, o)| o.map(|(_, t)| t))
            .map(|(s, _)| s)
            .ok_or_else(|| ModelError::invalid("adapters", "no free adapter slot"))?;
        if let Some((serial, _)) = self.lora.owner[s].take() {
            self.lora.by_serial.remove(&serial);
        }
        Ok(s)
    }

    /// Writes an adapter into slot `s` of every pool (zeros where it does not apply).
    fn upload(&mut self, s: usize, a: &ServedAdapter) -> Result<()> {
        let r = self.lora.rank;
        let rank = a.config.rank;
        let scale = a.config.scale() as f32;
        let (dtype, dev) = (self.cfg.lora_dtype, self.device.clone());
        for l in 0..self.config.num_hidden_layers {
            for p in Proj::ALL {
                let (n_in, n_out) = proj_dims(&self.config, p);
                let mats = a.mats.get(l).and_then(|row| row[p.index()].as_ref());
                if mats.is_none() && self.lora.a[l][p.index()].is_none() {
                    continue;
                }
                let mut ah = vec![0f32; r * n_in];
                let mut bh = vec![0f32; r * n_out];
                if let Some(m) = mats {
                    ah[..rank * n_in].copy_from_slice(&m.a);
                    // B is [out, rank]; the pool holds scale * B^T, [rank, out]
                    for (o, row) in m.b.chunks_exact(rank).enumerate() {
                        for (k, &v) in row.iter().enumerate() {
                            bh[k * n_out + o] = v * scale;
                        }
                    }
                }
                let slots = self.lora.slots;
                let pa = match &self.lora.a[l][p.index()] {
                    Some(t) => t.clone(),
                    None => {
                        let t = Tensor::zeros((slots, r, n_in), dtype, &dev)?;
                        self.lora.a[l][p.index()] = Some(t.clone());
                        t
                    }
                };
                let pb = match &self.lora.b[l][p.index()] {
                    Some(t) => t.clone(),
                    None => {
                        let t = Tensor::zeros((slots, r, n_out), dtype, &dev)?;
                        self.lora.b[l][p.index()] = Some(t.clone());
                        t
                    }
                };
                pa.slice_set(
                    &Tensor::from_vec(ah, (1, r, n_in), &dev)?.to_dtype(dtype)?,
                    0,
                    s,
                )?;
                pb.slice_set(
                    &Tensor::from_vec(bh, (1, r, n_out), &dev)?.to_dtype(dtype)?,
                    0,
                    s,
                )?;
            }
        }
        self.lora.by_serial.insert(a.serial(), s);
        Ok(())
    }
}

/// Attention over the cache for a run of rows: `seqs` sequences of `r` new rows each.
struct Group {
    /// First row (in the step's internal order) and rows per sequence.
    start: usize,
    seqs: usize,
    r: usize,
    len: usize,
    /// `[seqs * len]` pool slots of each sequence's positions (padding points at slot 0, masked).
    gather: Tensor,
    /// `[seqs, 1, 1, r, len]` 0 / -inf: full attention, and the sliding window when the model has one.
    mask: Tensor,
    mask_window: Option<Tensor>,
}

impl Backend for DeviceModel {
    type Cache = PagedCache;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_bytes_per_token(&self) -> usize {
        2 * self.cfg.dtype.size_in_bytes() * self.config.kv_dim() * self.config.num_hidden_layers
    }

    fn prepare(&mut self, cfg: &super::EngineConfig) -> Result<()> {
        let bs = self.cfg.block_size.max(1);
        let tokens = self.reserve_tokens(cfg.kv_cache_bytes / self.kv_bytes_per_token().max(1));
        let blocks = tokens / bs;
        if blocks > u32::MAX as usize / bs {
            return Err(ModelError::invalid("kv_cache_bytes", "too many KV blocks"));
        }
        let kvd = self.config.kv_dim();
        for layer in &mut self.layers {
            let z = || Tensor::zeros((blocks * bs, kvd), self.cfg.dtype, &self.device);
            layer.kv = Some((z()?, z()?));
        }
        self.free_blocks = (0..blocks as u32).rev().collect();
        self.lora
            .resize(self.cfg.adapter_slots.max(cfg.max_active_adapters));
        Ok(())
    }

    fn reserve_tokens(&self, tokens: usize) -> usize {
        tokens.next_multiple_of(self.cfg.block_size.max(1))
    }

    fn new_cache(&mut self, reserve: usize) -> Result<PagedCache> {
        let need = reserve.div_ceil(self.cfg.block_size.max(1));
        if need > self.free_blocks.len() {
            return Err(ModelError::invalid(
                "kv cache",
                format!("{need} blocks wanted, {} free", self.free_blocks.len()),
            ));
        }
        let at = self.free_blocks.len() - need;
        Ok(PagedCache {
            blocks: self.free_blocks.split_off(at),
            len: 0,
        })
    }

    fn free_cache(&mut self, cache: PagedCache) {
        self.free_blocks.extend(cache.blocks);
    }

    fn cache_len(cache: &PagedCache) -> usize {
        cache.len
    }

    fn step(&mut self, seqs: &mut [SeqStep<'_, PagedCache>]) -> Result<Vec<Vec<f32>>> {
        let c = self.config.clone();
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let (qd, kvd, half, group) = (nh * hd, nkv * hd, hd / 2, nh / nkv.max(1));
        let bs = self.cfg.block_size.max(1);
        let dev = self.device.clone();
        // rows in internal order: single-token (decode) sequences first, then each longer chunk
        let mut order: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].tokens.len() == 1)
            .collect();
        order.extend((0..seqs.len()).filter(|&i| seqs[i].tokens.len() > 1));
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut write = Vec::new();
        let mut adapters = Vec::new();
        let mut first_row = vec![0usize; seqs.len()];
        for &i in &order {
            let s = &seqs[i];
            let end = s.cache.len + s.tokens.len();
            c.check_seq_len(end)?;
            if end > s.cache.blocks.len() * bs {
                return Err(ModelError::invalid(
                    "kv cache",
                    format!(
                        "a sequence reached {end} positions; it reserved {}",
                        s.cache.blocks.len() * bs
                    ),
                ));
            }
            first_row[i] = ids.len();
            for (j, &t) in s.tokens.iter().enumerate() {
                let p = s.cache.len + j;
                ids.push(t);
                pos.push(p as u32);
                write.push(s.cache.blocks[p / bs] * bs as u32 + (p % bs) as u32);
                adapters.push(s.adapter);
            }
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let windows: Vec<Option<usize>> = (0..c.num_hidden_layers).map(|l| c.window(l)).collect();
        let window = windows.iter().flatten().copied().next();
        // attention groups: all decode rows together, then each chunk alone
        let decode = order
            .iter()
            .take_while(|&&i| seqs[i].tokens.len() == 1)
            .count();
        let mut groups = Vec::new();
        let mut plan: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        if decode > 0 {
            plan.push((0, order[..decode].to_vec(), 1));
        }
        for &i in &order[decode..] {
            plan.push((first_row[i], vec![i], seqs[i].tokens.len()));
        }
        for (start, members, r) in plan {
            let len = members
                .iter()
                .map(|&i| seqs[i].cache.len + seqs[i].tokens.len())
                .max()
                .unwrap_or(0);
            let b = members.len();
            let mut gather = vec![0u32; b * len];
            let mut mask = vec![f32::NEG_INFINITY; b * r * len];
            let mut mask_w = window.map(|_| vec![f32::NEG_INFINITY; b * r * len]);
            for (bi, &i) in members.iter().enumerate() {
                let s = &seqs[i];
                let total = s.cache.len + s.tokens.len();
                for t in 0..total {
                    gather[bi * len + t] = s.cache.blocks[t / bs] * bs as u32 + (t % bs) as u32;
                }
                for j in 0..r {
                    let p = s.cache.len + j;
                    let row = &mut mask[(bi * r + j) * len..(bi * r + j + 1) * len];
                    row[..=p].fill(0.0);
                    if let (Some(w), Some(mw)) = (window, mask_w.as_mut()) {
                        let lo = (p + 1).saturating_sub(w);
                        mw[(bi * r + j) * len + lo..(bi * r + j) * len + p + 1].fill(0.0);
                    }
                }
            }
            let shape = (b, 1, 1, r, len);
            groups.push(Group {
                start,
                seqs: b,
                r,
                len,
                gather: Tensor::from_vec(gather, b * len, &dev)?,
                mask: Tensor::from_vec(mask, shape, &dev)?,
                mask_window: mask_w
                    .map(|m| Tensor::from_vec(m, shape, &dev))
                    .transpose()?,
            });
        }
        let lora = self.step_lora(&adapters)?;
        let ids_t = Tensor::from_vec(ids, n, &dev)?;
        let pos_t = Tensor::from_vec(pos, n, &dev)?;
        let write_t = Tensor::from_vec(write, (n, 1), &dev)?
            .broadcast_as((n, kvd))?
            .contiguous()?;
        let rope_rows = |cos: &Tensor, sin: &Tensor| -> Result<(Tensor, Tensor)> {
            Ok((
                cos.index_select(&pos_t, 0)?.reshape((n, 1, half))?,
                sin.index_select(&pos_t, 0)?.reshape((n, 1, half))?,
            ))
        };
        let rope_full = rope_rows(&self.cos, &self.sin)?;
        let rope_local = match &self.local {
            Some((co, si)) => Some(rope_rows(co, si)?),
            None => None,
        };
        let mut x = self.embed.index_select(&ids_t, 0)?.to_dtype(DType::F32)?;
        let es = c.embed_scale();
        if es != 1.0 {
            x = x.affine(es as f64, 0.0)?;
        }
        let scale = c.attn_scale() as f64;
        for (l, layer) in self.layers.iter().enumerate() {
            let (kp, vp) = layer
                .kv
                .as_ref()
                .ok_or_else(|| ModelError::invalid("engine", "the KV pool is not allocated"))?;
            let h = self.rms(&x, &layer.attn_norm)?;
            let mut qkv = self.gemm(&h, &layer.qkv)?;
            if let Some(b) = &layer.qkv_bias {
                qkv = qkv.broadcast_add(b)?;
            }
            let mut q = qkv.narrow(1, 0, qd)?;
            let mut k = qkv.narrow(1, qd, kvd)?;
            let mut v = qkv.narrow(1, qd + kvd, kvd)?.contiguous()?;
            if let Some(st) = &lora {
                q = self.with_lora(q, l, Proj::Q, &h, st)?;
                k = self.with_lora(k, l, Proj::K, &h, st)?;
                v = self.with_lora(v, l, Proj::V, &h, st)?;
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = self.rms_heads(&q, qn, nh)?;
                k = self.rms_heads(&k, kn, nkv)?;
            }
            let (co, si) = match (&rope_local, c.local_rope(l)) {
                (Some(t), true) => t,
                _ => &rope_full,
            };
            let q =
                candle_nn::rotary_emb::rope_i(&q.contiguous()?.reshape((n, nh, 1, hd))?, co, si)?
                    .reshape((n, qd))?;
            let k =
                candle_nn::rotary_emb::rope_i(&k.contiguous()?.reshape((n, nkv, 1, hd))?, co, si)?
                    .reshape((n, kvd))?;
            kp.scatter_set(&write_t, &k.to_dtype(self.cfg.dtype)?, 0)?;
            vp.scatter_set(&write_t, &v.to_dtype(self.cfg.dtype)?, 0)?;
            let mut outs = Vec::with_capacity(groups.len());
            for g in &groups {
                let (b, r, len) = (g.seqs, g.r, g.len);
                let qg = q
                    .narrow(0, g.start, b * r)?
                    .reshape((b, r, nkv, group, hd))?
                    .permute((0, 2, 3, 1, 4))?
                    .reshape((b, nkv, group * r, hd))?;
                let kv_of = |pool: &Tensor| -> Result<Tensor> {
                    Ok(pool
                        .index_select(&g.gather, 0)?
                        .to_dtype(DType::F32)?
                        .reshape((b, len, nkv, hd))?
                        .transpose(1, 2)?
                        .contiguous()?)
                };
                let (kg, vg) = (kv_of(kp)?, kv_of(vp)?);
                let mut s = (qg.matmul(&kg.t()?)? * scale)?;
                if let Some(cap) = c.attn_logit_softcapping {
                    s = ((s / cap as f64)?.tanh()? * cap as f64)?;
                }
                let mask = match (&g.mask_window, windows[l]) {
                    (Some(m), Some(_)) => m,
                    _ => &g.mask,
                };
                let s = s.reshape((b, nkv, group, r, len))?.broadcast_add(mask)?;
                let w = candle_nn::ops::softmax_last_dim(&s)?.reshape((b, nkv, group * r, len))?;
                let o = w
                    .matmul(&vg)?
                    .reshape((b, nkv, group, r, hd))?
                    .permute((0, 3, 1, 2, 4))?
                    .reshape((b * r, qd))?;
                outs.push(o);
            }
            let att = Tensor::cat(&outs, 0)?;
            let mut o = self.gemm(&att, &layer.o)?;
            if let Some(b) = &layer.o_bias {
                o = o.broadcast_add(b)?;
            }
            if let Some(st) = &lora {
                o = self.with_lora(o, l, Proj::O, &att, st)?;
            }
            if let Some(w) = &layer.post_attn_norm {
                o = self.rms(&o, w)?;
            }
            x = (x + o)?;
            let h = self.rms(&x, &layer.ffn_norm)?;
            let gu = self.gemm(&h, &layer.gate_up)?;
            let ff = c.intermediate_size;
            let mut gate = gu.narrow(1, 0, ff)?;
            let mut up = gu.narrow(1, ff, ff)?;
            if let Some(st) = &lora {
                gate = self.with_lora(gate, l, Proj::Gate, &h, st)?;
                up = self.with_lora(up, l, Proj::Up, &h, st)?;
            }
            let act = match c.hidden_act {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let act = (act * up)?;
            let mut d = self.gemm(&act, &layer.down)?;
            if let Some(st) = &lora {
                d = self.with_lora(d, l, Proj::Down, &act, st)?;
            }
            if let Some(w) = &layer.post_ffn_norm {
                d = self.rms(&d, w)?;
            }
            x = (x + d)?;
        }
        let mut last = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.want_logits && !s.tokens.is_empty() {
                last.push((first_row[i] + s.tokens.len() - 1) as u32);
            }
            s.cache.len += s.tokens.len();
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let m = last.len();
        let xl = x.index_select(&Tensor::from_vec(last, m, &dev)?, 0)?;
        let hl = self.rms(&xl, &self.norm)?;
        let mut logits = self.gemm(&hl, &self.lm_head)?;
        if let Some(cap) = c.final_logit_softcapping {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
