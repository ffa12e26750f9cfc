//! LoRA fine-tuning: dataset building (with each example's source kept), batching, AdamW with gradient
//! clipping, warm-up + decay schedules, held-out evaluation, and checkpoints a restarted run resumes from.
//!
//! Everything random derives from the seed and the step number (data order from `(seed, epoch)`, dropout
//! from `(seed, step)`), so a run is deterministic on one machine and a resumed run continues exactly where
//! the interrupted one was; checkpoints hold only the adapter, the optimiser moments and the step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backprop;
use crate::error::{ModelError, Result};
use crate::llama::{Forward, Llama};
use crate::lora::{Lora, LoraConfig};
use crate::tokenizer::{TextTokenizer, Tokenized};

/// Learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    #[default]
    Cosine,
}

/// Training hyper-parameters. Defaults follow common LoRA recipes for small models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set; ignored when `steps` is set.
    pub epochs: f64,
    /// Optimiser steps (overrides `epochs`).
    pub steps: Option<usize>,
    /// Peak learning rate.
    pub learning_rate: f64,
    pub schedule: Schedule,
    /// Linear warm-up steps (default: 5% of the steps).
    pub warmup_steps: Option<usize>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Longer documents are cut into windows of this many tokens; longer pairs are truncated.
    pub max_seq_len: usize,
    pub lora: LoraConfig,
    pub seed: u64,
    /// Share of examples held out for evaluation (0 = none), drawn by a hash of each example's tokens and
    /// the seed: adding examples never moves an earlier one between the splits.
    pub eval_fraction: f64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
    /// Gradient clipping by global norm (0 = off).
    pub max_grad_norm: f64,
    /// Decoupled weight decay on the LoRA parameters.
    pub weight_decay: f64,
    /// Checkpoint every this many steps (0 = only on stop).
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1.0,
            steps: None,
            learning_rate: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: None,
            batch_size: 4,
            grad_accum: 1,
            max_seq_len: 256,
            lora: LoraConfig::default(),
            seed: 0,
            eval_fraction: 0.1,
            eval_every: 20,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            checkpoint_every: 25,
        }
    }
}

impl TrainConfig {
    /// Every parameter in range for a model with context `max_context`.
    pub fn validate(&self, max_context: usize) -> Result<()> {
        let inv = |n: &'static str, r: String| ModelError::invalid(n, r);
        if !self.learning_rate.is_finite() || self.learning_rate <= 0.0 || self.learning_rate > 1.0
        {
            return Err(inv(
                "learning_rate",
                format!("{} (must be in (0, 1])", self.learning_rate),
            ));
        }
        if self.steps.is_none()
            && (!self.epochs.is_finite() || self.epochs <= 0.0 || self.epochs > 1000.0)
        {
            return Err(inv(
                "epochs",
                format!("{} (must be in (0, 1000])", self.epochs),
            ));
        }
        if self.steps == Some(0) || self.steps.is_some_and(|s| s > 10_000_000) {
            return Err(inv("steps", "must be 1..=10000000".into()));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(inv(
                "batch_size",
                format!("{} (must be 1..=4096)", self.batch_size),
            ));
        }
        if self.grad_accum == 0 || self.grad_accum > 4096 {
            return Err(inv(
                "grad_accum",
                format!("{} (must be 1..=4096)", self.grad_accum),
            ));
        }
        if self.max_seq_len < 2 || self.max_seq_len > max_context {
            return Err(inv(
                "max_seq_len",
                format!(
                    "{} (must be 2..={max_context}, the model's context)",
                    self.max_seq_len
                ),
            ));
        }
        if !(0.0..0.9).contains(&self.eval_fraction) {
            return Err(inv(
                "eval_fraction",
                format!("{} (must be in [0, 0.9))", self.eval_fraction),
            ));
        }
        if self.eval_every == 0 {
            return Err(inv("eval_every", "must be at least 1".into()));
        }
        if !self.max_grad_norm.is_finite() || self.max_grad_norm < 0.0 {
            return Err(inv("max_grad_norm", "must be >= 0".into()));
        }
        if !self.weight_decay.is_finite() || !(0.0..1.0).contains(&self.weight_decay) {
            return Err(inv("weight_decay", "must be in [0, 1)".into()));
        }
        self.lora.validate()
    }
}

/// What a training example was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Text(String),
    Pair {
        prompt: String,
        completion: String,
    },
    /// A conversation, `(role, content)` turns (system, user, assistant); the loss on assistant turns only.
    Chat(Vec<(String, String)>),
}

/// One tokenized example: `source` indexes the caller's list of sources (contributions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub source: usize,
    pub tokens: Tokenized,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// Pairs cut to `max_seq_len` (documents are windowed instead).
    pub truncated: usize,
}

impl Dataset {
    /// Tokenize `(source, record)` pairs and split off the held-out set (by example, seeded).
    pub fn build(
        tok: &TextTokenizer,
        records: &[(usize, Record)],
        cfg: &TrainConfig,
    ) -> Result<Dataset> {
        let mut all = Vec::new();
        let mut truncated = 0;
        for (source, rec) in records {
            match rec {
                Record::Text(t) => {
                    let d = tok.document(t)?;
                    // windows overlap by one token so every token is predicted exactly once
                    let step = cfg.max_seq_len - 1;
                    let mut start = 0;
                    while start + 1 < d.ids.len() {
                        let end = (start + cfg.max_seq_len).min(d.ids.len());
                        all.push(Example {
                            source: *source,
                            tokens: Tokenized {
                                ids: d.ids[start..end].to_vec(),
                                targets: d.targets[start..end].to_vec(),
                            },
                        });
                        start += step;
                    }
                }
                Record::Pair { .. } | Record::Chat(_) => {
                    let mut t = match rec {
                        Record::Pair { prompt, completion } => tok.chat_pair(prompt, completion)?,
                        Record::Chat(turns) => {
                            let turns: Vec<(&str, &str)> = turns
                                .iter()
                                .map(|(r, c)| (r.as_str(), c.as_str()))
                                .collect();
                            tok.chat_conversation(&turns)?
                        }
                        Record::Text(_) => continue,
                    };
                    if t.ids.len() > cfg.max_seq_len {
                        t.ids.truncate(cfg.max_seq_len);
                        t.targets.truncate(cfg.max_seq_len);
                        truncated += 1;
                    }
                    if t.targets.iter().skip(1).any(|&x| x) {
                        all.push(Example {
                            source: *source,
                            tokens: t,
                        });
                    }
                }
            }
        }
        if all.is_empty() {
            return Err(ModelError::invalid(
                "dataset",
                "no training examples (no text to learn from)",
            ));
        }
        // held out by a hash of each example's content against the fraction, not by a shuffled count:
        // adding data never moves an earlier example between the splits, so a model trained on a later
        // Datanet version reuses the attribution segments of one trained on an earlier one
        let draws: Vec<u64> = all
            .iter()
            .map(|e| split_draw(cfg.seed, &e.tokens))
            .collect();
        let cut = (cfg.eval_fraction * 2f64.powi(64)) as u64;
        let mut eval: Vec<usize> = (0..all.len()).filter(|&i| draws[i] < cut).collect();
        if cfg.eval_fraction > 0.0 && all.len() >= 2 {
            // tiny datasets: at least one example on each side
            let by_draw = |a: &usize, b: &usize| draws[*a].cmp(&draws[*b]).then(a.cmp(b));
            if eval.is_empty() {
                eval.extend((0..all.len()).min_by(by_draw));
            } else if eval.len() == all.len() {
                let last = eval.iter().copied().max_by(by_draw);
                eval.retain(|i| Some(*i) != last);
            }
        }
        let mut held = vec![false; all.len()];
        eval.iter().for_each(|&i| held[i] = true);
        let train: Vec<usize> = (0..all.len()).filter(|&i| !held[i]).collect();
        Ok(Dataset {
            eval: eval.iter().map(|&i| all[i].clone()).collect(),
            train: train.iter().map(|&i| all[i].clone()).collect(),
            truncated,
        })
    }

    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|e| e.tokens.ids.len()).sum()
    }
}

/// An example's place in the split: the first 8 bytes (little-endian) of SHA-256 over the seed and its
/// tokens with their target flags; held out when below `eval_fraction · 2^64`.
fn split_draw(seed: u64, t: &Tokenized) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"openledger-split\0");
    h.update(seed.to_le_bytes());
    for (id, target) in t.ids.iter().zip(&t.targets) {
        h.update(id.to_le_bytes());
        h.update([u8::from(*target)]);
    }
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

/// The gradient of one sequence's mean next-token loss over its targets for every LoRA parameter (`Lora::vars`
/// order, flat, row-major), without dropout, and that loss: what gradient attribution projects, for a
/// training example and an inference's prompt + output alike. Runs the hand-written CPU passes (candle's
/// autograd on other devices: `sequence_gradient_autograd`).
pub fn sequence_gradient(
    model: &Llama,
    lora: &Lora,
    tokens: &Tokenized,
) -> Result<(f64, Vec<Vec<f32>>)> {
    if !backprop::supported(model) {
        return sequence_gradient_autograd(model, lora, tokens);
    }
    let (batch, n) = one_sequence(tokens)?;
    let lg = backprop::loss_and_grads(model, lora, &batch.host(), None, 1.0 / n as f32)?;
    Ok((lg.loss_sum / n as f64, lg.grads))
}

/// One sequence as a batch, and its number of targets (at least one).
fn one_sequence(tokens: &Tokenized) -> Result<(Batch, usize)> {
    let ex = Example {
        source: 0,
        tokens: tokens.clone(),
    };
    let batch = make_batch(&[&ex], 0);
    let n = batch.n_targets();
    if n == 0 {
        return Err(ModelError::invalid(
            "gradient",
            "the sequence has no target tokens",
        ));
    }
    Ok((batch, n))
}

/// Whether `sequence_gradient` can run on this model: dense f32 weights, on any device (the hand-written
/// passes on the CPU, candle's autograd elsewhere: a GPU).
pub fn gradients_supported(model: &Llama) -> bool {
    model.parts().is_some()
}

/// `sequence_gradient` through candle's autograd, on the model's device (a GPU); the same numbers as the
/// hand-written CPU passes to float rounding.
pub fn sequence_gradient_autograd(
    model: &Llama,
    lora: &Lora,
    tokens: &Tokenized,
) -> Result<(f64, Vec<Vec<f32>>)> {
    if !gradients_supported(model) {
        return Err(ModelError::invalid(
            "gradient",
            "per-sequence gradients need dense f32 weights (Precision::F32)",
        ));
    }
    let (batch, n) = one_sequence(tokens)?;
    let l = batch_loss_sum(model, lora, &batch, &mut Forward::differentiable())?;
    let loss = l.to_scalar::<f32>()? as f64;
    let grads = (l / n as f64)?.backward()?;
    let grads = lora
        .vars()
        .iter()
        .map(|v| match grads.get(v) {
            Some(g) => Ok(g
                .to_device(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?),
            None => Ok(vec![0f32; v.elem_count()]),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss / n as f64, grads))
}

/// A padded micro-batch: `rows` x `seq` ids, and the flat positions whose next token is a target with those
/// next tokens.
struct Batch {
    ids: Vec<u32>,
    rows: usize,
    seq: usize,
    positions: Vec<u32>,
    labels: Vec<u32>,
    n_tokens: usize,
}

fn make_batch(examples: &[&Example], pad: u32) -> Batch {
    let s = examples
        .iter()
        .map(|e| e.tokens.ids.len())
        .max()
        .unwrap_or(1);
    let mut ids = Vec::with_capacity(examples.len() * s);
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    let mut n_tokens = 0;
    for (row, e) in examples.iter().enumerate() {
        let t = &e.tokens;
        n_tokens += t.ids.len();
        ids.extend_from_slice(&t.ids);
        ids.extend(std::iter::repeat_n(pad, s - t.ids.len()));
        for i in 0..t.ids.len().saturating_sub(1) {
            if t.targets[i + 1] {
                positions.push((row * s + i) as u32);
                labels.push(t.ids[i + 1]);
            }
        }
    }
    Batch {
        ids,
        rows: examples.len(),
        seq: s,
        positions,
        labels,
        n_tokens,
    }
}

impl Batch {
    fn n_targets(&self) -> usize {
        self.labels.len()
    }

    fn host(&self) -> backprop::BatchRef<'_> {
        backprop::BatchRef {
            ids: &self.ids,
            batch: self.rows,
            seq: self.seq,
            positions: &self.positions,
            labels: &self.labels,
        }
    }
}

/// Summed next-token cross-entropy over the batch's targets through candle's autograd path (a scalar
/// tensor) — summed so that gradient accumulation can weigh micro-batches by their target counts exactly.
fn batch_loss_sum(
    model: &Llama,
    lora: &Lora,
    batch: &Batch,
    opts: &mut Forward<'_>,
) -> Result<Tensor> {
    let dev = model.device();
    let ids = Tensor::from_slice(&batch.ids, (batch.rows, batch.seq), dev)?;
    let positions = Tensor::from_slice(&batch.positions, batch.n_targets(), dev)?;
    let labels = Tensor::from_slice(&batch.labels, batch.n_targets(), dev)?;
    let hidden = model.hidden(&ids, Some(lora), opts)?;
    let h = hidden.flatten_to(1)?.index_select(&positions, 0)?;
    model.loss_sum(&h, &labels)
}

/// AdamW with its moments exposed (candle's keeps them private, and a checkpoint needs them).
#[derive(Debug)]
struct AdamW {
    m: Vec<Var>,
    v: Vec<Var>,
    t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    fn new(vars: &[Var], weight_decay: f64) -> Result<Self> {
        let zeros = |v: &Var| Var::zeros(v.shape(), DType::F32, v.device());
        Ok(AdamW {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 / (1.0 - self.beta1.powi(self.t as i32));
        let bc2 = 1.0 / (1.0 - self.beta2.powi(self.t as i32));
        for ((var, g), (m, v)) in vars.iter().zip(grads).zip(self.m.iter().zip(&self.v)) {
            let next_m = ((m.as_tensor() * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let next_v = ((v.as_tensor() * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&next_m * bc1)? / ((&next_v * bc2)?.sqrt()? + self.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
        }
        Ok(())
    }
}

fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let warm = cfg
        .warmup_steps
        .unwrap_or(total / 20)
        .min(total.saturating_sub(1));
    if step < warm {
        return cfg.learning_rate * (step + 1) as f64 / (warm + 1) as f64;
    }
    let p = (step - warm) as f64 / (total - warm).max(1) as f64;
    cfg.learning_rate
        * match cfg.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - p,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        }
}

/// What a training run reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Step {
        step: usize,
        total_steps: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_s: f64,
    },
    Eval {
        step: usize,
        eval_loss: f64,
    },
    Checkpoint {
        step: usize,
    },
    Resumed {
        step: usize,
    },
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub steps: usize,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub train_tokens: usize,
    pub tokens_seen: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub initial_eval_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub resumed_from: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_t: usize,
    first_loss: Option<f64>,
    initial_eval_loss: Option<f64>,
    config: TrainConfig,
}

/// A training run over a dataset, resumable from `checkpoint_dir`.
#[derive(Debug)]
pub struct Trainer<'a> {
    pub model: &'a Llama,
    pub config: TrainConfig,
    pub dataset: &'a Dataset,
    pub pad: u32,
    /// Where checkpoints live; `None` disables them.
    pub checkpoint_dir: Option<PathBuf>,
}

impl Trainer<'_> {
    /// Optimiser steps this run will take.
    pub fn total_steps(&self) -> usize {
        let micro = self.dataset.train.len().div_ceil(self.config.batch_size);
        self.config.steps.unwrap_or_else(|| {
            ((micro as f64 * self.config.epochs) / self.config.grad_accum as f64)
                .ceil()
                .max(1.0) as usize
        })
    }

    /// The `i`-th micro-batch of the run (any epoch), from the seeded order of that epoch.
    fn micro_batch(&self, i: usize) -> Vec<&Example> {
        let n = self.dataset.train.len();
        let bs = self.config.batch_size;
        let per_epoch = n.div_ceil(bs);
        let (epoch, k) = (i / per_epoch, i % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            self.config.seed.wrapping_add(epoch as u64),
        ));
        order[k * bs..((k + 1) * bs).min(n)]
            .iter()
            .map(|&j| &self.dataset.train[j])
            .collect()
    }

    /// Mean held-out loss per target token.
    pub fn evaluate(&self, lora: &Lora) -> Result<Option<f64>> {
        if self.dataset.eval.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut n) = (0.0, 0usize);
        let fast = backprop::supported(self.model);
        for chunk in self.dataset.eval.chunks(self.config.batch_size) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = make_batch(&refs, self.pad);
            if b.n_targets() == 0 {
                continue;
            }
            sum += if fast {
                backprop::loss(self.model, Some(lora), &b.host())?
            } else {
                let l = batch_loss_sum(self.model, lora, &b, &mut Forward::infer())?;
                l.to_scalar::<f32>()? as f64
            };
            n += b.n_targets();
        }
        Ok((n > 0).then(|| sum / n as f64))
    }

    /// Train `lora` in place. `on_event` may return an error to stop (the run checkpoints first); `stop` is
    /// polled between steps for the same purpose.
    pub fn run(
        &self,
        lora: &Lora,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(Event) -> Result<()>,
    ) -> Result<Metrics> {
        let cfg = &self.config;
        let total = self.total_steps();
        let vars = lora.vars();
        let mut opt = AdamW::new(&vars, cfg.weight_decay)?;
        let mut start_step = 0;
        let mut first_loss = None;
        let mut initial_eval = None;
        let mut resumed_from = None;
        if let Some(dir) = &self.checkpoint_dir
            && let Some(state) = load_checkpoint(dir, lora, &mut opt)?
        {
            if state.config != *cfg {
                return Err(ModelError::invalid(
                    "checkpoint",
                    "it was written with a different training configuration",
                ));
            }
            start_step = state.step;
            first_loss = state.first_loss;
            initial_eval = state.initial_eval_loss;
            resumed_from = Some(state.step);
            on_event(Event::Resumed { step: state.step })?;
        }
        if start_step == 0 {
            initial_eval = self.evaluate(lora)?;
            if let Some(e) = initial_eval {
                on_event(Event::Eval {
                    step: 0,
                    eval_loss: e,
                })?;
            }
        }
        // the hand-written passes wherever they run (dense f32 weights on the CPU), else candle's autograd
        let fast = backprop::supported(self.model);
        let t0 = Instant::now();
        let mut tokens_seen = 0usize;
        let mut last_loss = first_loss.unwrap_or(f64::NAN);
        let mut last_eval = initial_eval;
        let mut step = start_step;
        while step < total {
            if stop.load(Ordering::Relaxed) {
                self.checkpoint(lora, &opt, step, first_loss, initial_eval)?;
                return Err(ModelError::Stopped(format!(
                    "stopped at step {step}; checkpoint saved"
                )));
            }
            let batches: Vec<Batch> = (0..cfg.grad_accum)
                .map(|k| make_batch(&self.micro_batch(step * cfg.grad_accum + k), self.pad))
                .collect();
            let n_targets: usize = batches.iter().map(Batch::n_targets).sum();
            let mut rng = ChaCha8Rng::seed_from_u64(
                cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut loss_sum = 0.0;
            let add = |slot: &mut Option<Tensor>, g: Tensor| -> Result<()> {
                *slot = Some(match slot.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
                Ok(())
            };
            for b in batches.iter().filter(|b| b.n_targets() > 0) {
                if fast {
                    let out = backprop::loss_and_grads(
                        self.model,
                        lora,
                        &b.host(),
                        Some(&mut rng),
                        1.0 / n_targets as f32,
                    )?;
                    loss_sum += out.loss_sum;
                    for ((slot, v), g) in acc.iter_mut().zip(&vars).zip(out.grads) {
                        add(slot, Tensor::from_vec(g, v.shape(), v.device())?)?;
                    }
                } else {
                    let mut opts = Forward {
                        grad: true,
                        dropout_rng: Some(&mut rng),
                    };
                    let l = batch_loss_sum(self.model, lora, b, &mut opts)?;
                    loss_sum += l.to_scalar::<f32>()? as f64;
                    let grads = (l / n_targets as f64)?.backward()?;
                    for (slot, v) in acc.iter_mut().zip(&vars) {
                        if let Some(g) = grads.get(v) {
                            add(slot, g.clone())?;
                        }
                    }
                }
                tokens_seen += b.n_tokens;
            }
            let grads: Vec<Tensor> = acc
                .into_iter()
                .zip(&vars)
                .map(|(g, v)| g.map_or_else(|| v.zeros_like(), Ok))
                .collect::<candle_core::Result<_>>()?;
            let mut norm_sq = 0.0f64;
            for g in &grads {
                norm_sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
            let norm = norm_sq.sqrt();
            if !norm.is_finite() {
                return Err(ModelError::Stopped(format!(
                    "the gradient is not finite at step {step} (learning rate too high?)"
                )));
            }
            let grads = if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
                let s = cfg.max_grad_norm / (norm + 1e-6);
                grads
                    .iter()
                    .map(|g| g * s)
                    .collect::<candle_core::Result<Vec<_>>>()?
            } else {
                grads
            };
            let lr = lr_at(cfg, step, total);
            opt.step(&vars, &grads, lr)?;
            let loss = if n_targets > 0 {
                loss_sum / n_targets as f64
            } else {
                f64::NAN
            };
            first_loss.get_or_insert(loss);
            last_loss = loss;
            step += 1;
            let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
            let tps = tokens_seen as f64 / elapsed;
            let eta = elapsed / (step - start_step) as f64 * (total - step) as f64;
            on_event(Event::Step {
                step,
                total_steps: total,
                loss,
                lr,
                grad_norm: norm,
                tokens_per_s: tps,
                eta_s: eta,
            })?;
            if step % cfg.eval_every == 0 || step == total {
                last_eval = self.evaluate(lora)?;
                if let Some(e) = last_eval {
                    on_event(Event::Eval { step, eval_loss: e })?;
                }
            }
            if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < total {
                self.checkpoint(lora, &opt, step, first_loss, initial_eval)?;
                on_event(Event::Checkpoint { step })?;
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(Metrics {
            steps: total,
            train_examples: self.dataset.train.len(),
            eval_examples: self.dataset.eval.len(),
            train_tokens: self.dataset.train_tokens(),
            tokens_seen,
            first_loss: first_loss.unwrap_or(f64::NAN),
            final_loss: last_loss,
            initial_eval_loss: initial_eval,
            final_eval_loss: last_eval,
            seconds,
            tokens_per_s: tokens_seen as f64 / seconds.max(1e-9),
            resumed_from,
        })
    }

    fn checkpoint(
        &self,
        lora: &Lora,
        opt: &AdamW,
        step: usize,
        first_loss: Option<f64>,
        initial_eval_loss: Option<f64>,
    ) -> Result<()> {
        let Some(dir) = &self.checkpoint_dir else {
            return Ok(());
        };
        let state = CheckpointState {
            step,
            adam_t: opt.t,
            first_loss,
            initial_eval_loss,
            config: self.config.clone(),
        };
        save_checkpoint(dir, lora, opt, &state)
    }
}

fn named(prefix: &str, vars: &[Var]) -> HashMap<String, Tensor> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| (format!("{prefix}.{i}"), v.as_tensor().clone()))
        .collect()
}

/// Written to `<dir>.tmp` then renamed over `<dir>`, so a crash or a full disk mid-write leaves the previous
/// checkpoint intact.
fn save_checkpoint(dir: &Path, lora: &Lora, opt: &AdamW, state: &CheckpointState) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let mut tensors = named("lora", &lora.vars());
    tensors.extend(named("m", &opt.m));
    tensors.extend(named("v", &opt.v));
    let st = tmp.join("state.safetensors");
    candle_core::safetensors::save(&tensors, &st)
        .map_err(|e| ModelError::Stopped(format!("checkpoint {}: {e}", st.display())))?;
    let js = tmp.join("state.json");
    let body =
        serde_json::to_vec_pretty(state).map_err(|e| ModelError::invalid("checkpoint", e))?;
    std::fs::write(&js, body).map_err(|e| ModelError::io(&js, e))?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn load_checkpoint(dir: &Path, lora: &Lora, opt: &mut AdamW) -> Result<Option<CheckpointState>> {
    let js = dir.join("state.json");
    let text = match std::fs::read_to_string(&js) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(&js, e)),
    };
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&js, e))?;
    let st = dir.join("state.safetensors");
    let tensors = candle_core::safetensors::load(&st, lora.vars()[0].device())
        .map_err(|e| ModelError::corrupt(&st, e))?;
    let restore = |prefix: &str, vars: &[Var]| -> Result<()> {
        for (i, v) in vars.iter().enumerate() {
            let t = tensors
                .get(&format!("{prefix}.{i}"))
                .ok_or_else(|| ModelError::corrupt(&st, format!("missing {prefix}.{i}")))?;
            if t.dims() != v.dims() {
                return Err(ModelError::corrupt(
                    &st,
                    format!("{prefix}.{i} has the wrong shape"),
                ));
            }
            v.set(t)?;
        }
        Ok(())
    };
    restore("lora", &lora.vars())?;
    restore("m", &opt.m)?;
    restore("v", &opt.v)?;
    opt.t = state.adam_t;
    Ok(Some(state))
}
