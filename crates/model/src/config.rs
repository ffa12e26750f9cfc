//! The hyper-parameters of the decoder families this crate runs (Llama 2/3, SmolLM, Mistral, Qwen 2/2.5,
//! Qwen 3, Gemma 2, Gemma 3), read from GGUF metadata or a Hugging Face `config.json`, and the names of the
//! projections LoRA can attach to (`Proj`), shared by the forward passes and the adapters.
//!
//! Every family is the llama block with switches: one `ModelConfig` says which are on (biases, q/k norms,
//! sliding windows, soft-caps, post-norms, GeGLU...), so each pass has one code path with branches rather
//! than one copy per family. DeepSeek's distilled models are Qwen 2 and Llama checkpoints and load as those.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The model families this crate runs, by Hugging Face `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 1/2/3.x, SmolLM, TinyLlama, DeepSeek-R1-Distill-Llama.
    #[default]
    Llama,
    /// Mistral 7B (sliding-window attention when `sliding_window` is set).
    Mistral,
    /// Qwen 2 / 2.5, DeepSeek-R1-Distill-Qwen: q, k, v biases.
    Qwen2,
    /// Qwen 3 (dense): per-head RMS norms on q and k, no biases.
    Qwen3,
    /// Gemma 2: GeGLU, `(1 + w)` norms, post-norms, soft-capping, alternating local/global attention.
    Gemma2,
    /// Gemma 3 (text): as Gemma 2 without soft-caps, with q/k norms and a separate local rope base.
    Gemma3,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma2,
        Family::Gemma3,
    ];

    /// The Hugging Face `model_type` (Gemma 3's text model is `gemma3_text`; `gemma3` folders with a
    /// `text_config` are read too).
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
        }
    }

    /// The class name in `config.json`'s `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// `general.architecture` in GGUF files (llama.cpp writes Mistral 7B as `llama`).
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Family::Llama | Family::Mistral => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
        }
    }

    /// A short human name (`/api/base-models`, the web wizard).
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Llama => "Llama",
            Family::Mistral => "Mistral",
            Family::Qwen2 => "Qwen 2",
            Family::Qwen3 => "Qwen 3",
            Family::Gemma2 => "Gemma 2",
            Family::Gemma3 => "Gemma 3",
        }
    }

    pub fn from_model_type(t: &str) -> Option<Family> {
        Some(match t {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            _ => return None,
        })
    }

    fn from_gguf_arch(a: &str) -> Option<Family> {
        Some(match a {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            _ => return None,
        })
    }

    /// The supported `model_type`s, for messages that refuse another.
    pub fn supported_list() -> String {
        Family::ALL
            .iter()
            .map(|f| f.model_type())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Gemma's norms scale by `1 + w`; GGUF files store `1 + w` already (llama.cpp's converter adds it).
    pub fn norm_plus_one(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// Whether GGUF files of this family keep Hugging Face's q/k row order (llama.cpp's "NEOX" rope):
    /// only the `llama` architecture is written with the rows permuted for interleaved rope.
    pub fn gguf_rows_in_hf_order(self) -> bool {
        !matches!(self, Family::Llama | Family::Mistral)
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    #[default]
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`): `gelu(gate) * up`.
    GeluTanh,
}

/// Rotary frequency scaling for long contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1+: low frequencies divided by `factor`, high ones kept, a smooth band between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor` (every frequency divided by it).
    Linear { factor: f32 },
    /// Per-frequency divisors as GGUF stores them (`rope_freqs.weight`, llama.cpp's form of `llama3`).
    Factors { factors: Vec<f32> },
}

/// Which attention a layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Every earlier position (causal).
    FullAttention,
    /// The last `sliding_window` positions only (the query's own included).
    SlidingAttention,
}

/// What the forward passes need to know about a model. Fields added after the first release carry serde
/// defaults, so configurations stored by older versions (llama only) read back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Width of one attention head; 0 means `hidden_size / num_attention_heads` (read with `head_dim()`).
    /// Qwen 3 and Gemma have heads wider than that, so q is not square.
    #[serde(default)]
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Rotary base of full-attention layers (and of every layer unless `rope_local_theta` is set).
    pub rope_theta: f32,
    /// Rotary scaling of full-attention layers.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Rotary base of sliding-window layers, when it differs (Gemma 3: 10,000 against 1,000,000).
    #[serde(default)]
    pub rope_local_theta: Option<f32>,
    /// The longest sequence the model was trained for (GGUF `context_length`).
    pub max_position_embeddings: usize,
    /// The output projection is the token embedding (no separate `lm_head`).
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen 2).
    #[serde(default)]
    pub attention_bias: bool,
    /// Per-head RMS norms on q and k before rope (Qwen 3, Gemma 3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Window of the sliding-attention layers.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Per layer, which attention it runs; empty means every layer is full attention.
    #[serde(default)]
    pub layer_types: Vec<LayerKind>,
    #[serde(default)]
    pub hidden_act: Activation,
    /// Extra RMS norms on the attention and MLP outputs before the residual add (Gemma).
    #[serde(default)]
    pub post_norms: bool,
    /// Embeddings multiplied by `sqrt(hidden_size)` (Gemma).
    #[serde(default)]
    pub scale_embeddings: bool,
    /// `cap * tanh(score / cap)` on attention scores (Gemma 2).
    #[serde(default)]
    pub attn_logit_softcapping: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    #[serde(default)]
    pub final_logit_softcapping: Option<f32>,
    /// Attention scores are scaled by `1 / sqrt(query_pre_attn_scalar)` (Gemma) instead of
    /// `1 / sqrt(head_dim)`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f32>,
}

impl ModelConfig {
    /// A tiny llama (2 layers, hidden 64, 4 heads / 2 KV heads, byte-level vocabulary) for tests.
    pub fn tiny() -> Self {
        ModelConfig {
            family: Family::Llama,
            vocab_size: 259,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 0,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_local_theta: None,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            sliding_window: None,
            layer_types: Vec::new(),
            hidden_act: Activation::Silu,
            post_norms: false,
            scale_embeddings: false,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            query_pre_attn_scalar: None,
        }
    }

    /// A tiny model of `family` with every feature of the family switched on and windows shorter than a
    /// test sequence (tests of each pass against the others).
    pub fn tiny_of(family: Family) -> Self {
        let mut c = ModelConfig {
            family,
            ..ModelConfig::tiny()
        };
        c.apply_family_defaults();
        match family {
            Family::Llama => {
                c.rope_scaling = Some(RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 64,
                });
            }
            Family::Mistral => c.sliding_window = Some(5),
            Family::Qwen2 => c.tie_word_embeddings = false,
            Family::Qwen3 => c.head_dim = 24,
            Family::Gemma2 => {
                c.head_dim = 24;
                c.sliding_window = Some(5);
                c.query_pre_attn_scalar = Some(20.0);
                c.attn_logit_softcapping = Some(3.0);
                c.final_logit_softcapping = Some(4.0);
            }
            Family::Gemma3 => {
                c.num_hidden_layers = 3;
                c.head_dim = 24;
                c.sliding_window = Some(5);
                c.query_pre_attn_scalar = Some(20.0);
                c.rope_scaling = Some(RopeScaling::Linear { factor: 2.0 });
            }
        }
        c.layer_types = c.default_layer_types();
        if family == Family::Gemma3 {
            // one global layer among local ones (the 5:1 pattern needs six layers)
            use LayerKind::{FullAttention as F, SlidingAttention as S};
            c.layer_types = vec![S, S, F];
        }
        c
    }

    /// The switches every model of the family has (those `config.json` does not spell out).
    fn apply_family_defaults(&mut self) {
        let gemma = matches!(self.family, Family::Gemma2 | Family::Gemma3);
        self.attention_bias = self.family == Family::Qwen2;
        self.qk_norm = matches!(self.family, Family::Qwen3 | Family::Gemma3);
        self.hidden_act = if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        };
        self.post_norms = gemma;
        self.scale_embeddings = gemma;
        if self.family == Family::Gemma3 {
            self.rope_local_theta = Some(10_000.0);
        }
    }

    /// Which layers slide when the file does not list them: Gemma 2 alternates (even layers local), Gemma 3
    /// has five local layers to one global, Mistral slides everywhere when it has a window.
    fn default_layer_types(&self) -> Vec<LayerKind> {
        use LayerKind::{FullAttention as F, SlidingAttention as S};
        let n = self.num_hidden_layers;
        if self.sliding_window.is_none() {
            return Vec::new();
        }
        match self.family {
            Family::Gemma2 => (0..n).map(|i| if i % 2 == 0 { S } else { F }).collect(),
            Family::Gemma3 => (0..n)
                .map(|i| if (i + 1) % 6 == 0 { F } else { S })
                .collect(),
            Family::Mistral => vec![S; n],
            _ => Vec::new(),
        }
    }

    /// Refuses sequences longer than the model's context (the rotary tables end there).
    pub fn check_seq_len(&self, s: usize) -> Result<()> {
        if s > self.max_position_embeddings {
            return Err(ModelError::invalid(
                "sequence length",
                format!(
                    "{s} tokens exceed the model's context of {}",
                    self.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        if self.head_dim > 0 {
            self.head_dim
        } else {
            self.hidden_size / self.num_attention_heads.max(1)
        }
    }

    /// Width of q (and of o_proj's input): heads x head width.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Width of k and v.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    /// The attention window of `layer`: `Some(w)` when it sees only the last `w` positions.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_types.get(layer) {
            Some(LayerKind::SlidingAttention) => self.sliding_window,
            _ => None,
        }
    }

    /// Whether `layer` uses the local rotary tables (`rope_local_theta`, no scaling).
    pub fn local_rope(&self, layer: usize) -> bool {
        self.rope_local_theta.is_some() && self.window(layer).is_some()
    }

    /// How many weights the model has (embeddings once when tied): what "135M" or "1.5B" counts.
    pub fn num_parameters(&self) -> u64 {
        let (v, h, f) = (
            self.vocab_size as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
        );
        let (qd, kv, hd) = (
            self.q_dim() as u64,
            self.kv_dim() as u64,
            self.head_dim() as u64,
        );
        let mut layer = 2 * h + h * qd + 2 * h * kv + qd * h + 3 * h * f;
        if self.attention_bias {
            layer += qd + 2 * kv;
        }
        if self.qk_norm {
            layer += 2 * hd;
        }
        if self.post_norms {
            layer += 2 * h;
        }
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        heads * v * h + h + self.num_hidden_layers as u64 * layer
    }

    /// The factor attention scores are multiplied by.
    pub fn attn_scale(&self) -> f32 {
        match self.query_pre_attn_scalar {
            Some(s) => 1.0 / s.sqrt(),
            None => 1.0 / (self.head_dim() as f32).sqrt(),
        }
    }

    /// The factor embeddings are multiplied by (1 outside Gemma).
    pub fn embed_scale(&self) -> f32 {
        if self.scale_embeddings {
            (self.hidden_size as f32).sqrt()
        } else {
            1.0
        }
    }

    /// Rotary inverse frequencies (`head_dim / 2` of them) of full-attention layers, or with `local` of
    /// sliding ones, scaling included.
    pub fn inv_freqs(&self, local: bool) -> Vec<f32> {
        let hd = self.head_dim();
        let theta = match (local, self.rope_local_theta) {
            (true, Some(t)) => t,
            _ => self.rope_theta,
        };
        let base: Vec<f32> = (0..hd)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / hd as f32))
            .collect();
        if local && self.rope_local_theta.is_some() {
            return base;
        }
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Factors { factors }) => {
                base.iter().zip(factors).map(|(f, d)| f / d).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// One spelling per configuration: a `head_dim` equal to `hidden_size / num_attention_heads` is
    /// stored as 0 (the default), so a model read from either kind of file compares equal.
    fn normalize(&mut self) {
        if self.head_dim > 0
            && self.num_attention_heads > 0
            && self.head_dim * self.num_attention_heads == self.hidden_size
        {
            self.head_dim = 0;
        }
    }

    /// Rejects shapes the forward pass cannot run, so a bad file fails at load time with a reason.
    pub fn validate(&self) -> Result<()> {
        let bad = |r: String| Err(ModelError::Unsupported(r));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad(format!(
                "empty dimensions (vocab_size {}, hidden_size {}, num_hidden_layers {})",
                self.vocab_size, self.hidden_size, self.num_hidden_layers
            ));
        }
        if self.intermediate_size == 0 {
            return bad("intermediate_size is 0".into());
        }
        if self.num_attention_heads == 0 {
            return bad("num_attention_heads is 0".into());
        }
        if self.head_dim == 0 && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of {} heads (and no head_dim is given)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("odd head_dim {}", self.head_dim()));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rms_norm_eps)
            || !positive(self.rope_theta as f64)
            || self.rope_local_theta.is_some_and(|t| !positive(t as f64))
        {
            return bad("rms_norm_eps and the rope bases must be positive".into());
        }
        for (name, v) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ] {
            if v.is_some_and(|v| !positive(v as f64)) {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window is 0".into());
        }
        if !self.layer_types.is_empty() {
            if self.layer_types.len() != self.num_hidden_layers {
                return bad(format!(
                    "layer_types lists {} layers, num_hidden_layers is {}",
                    self.layer_types.len(),
                    self.num_hidden_layers
                ));
            }
            if self.sliding_window.is_none()
                && self.layer_types.contains(&LayerKind::SlidingAttention)
            {
                return bad("sliding_attention layers without a sliding_window".into());
            }
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) if !positive(*factor as f64) => {
                return bad("rope_scaling factor must be positive".into());
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) if !positive(*factor as f64)
                || !positive(*low_freq_factor as f64)
                || high_freq_factor <= low_freq_factor
                || *original_max_position_embeddings == 0 =>
            {
                return bad("llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0".into());
            }
            Some(RopeScaling::Factors { factors })
                if factors.len() != self.head_dim() / 2
                    || factors.iter().any(|f| !positive(*f as f64)) =>
            {
                return bad(format!(
                    "rope_freqs has {} positive factors, head_dim / 2 is {}",
                    factors.len(),
                    self.head_dim() / 2
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// From GGUF metadata (`<arch>.*` keys), for the architectures llama.cpp writes these families as.
    /// What a file does not record is what llama.cpp assumes: Gemma 2 alternates local and global layers,
    /// Gemma 3 has one global layer in six and a local rope base of 10,000 (unless
    /// `attention.sliding_window_pattern` and `rope.freq_base_swa` say otherwise), and Gemma scales queries
    /// by `1 / sqrt(head_dim)` (by `1 / sqrt(hidden / heads)` in the 27B shapes) unless `attention.scale`
    /// is given. Llama 3's rope scaling comes as the `rope_freqs.weight` tensor, which the loader reads into
    /// `rope_scaling`. A `llama` file with `attention.sliding_window` is Mistral.
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize) -> Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let family = Family::from_gguf_arch(&arch).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "GGUF general.architecture {arch:?} (supported: llama, qwen2, qwen3, gemma2, gemma3)"
            ))
        })?;
        let get = |k: &str| {
            md.get(&format!("{arch}.{k}"))
                .ok_or_else(|| ModelError::Unsupported(format!("GGUF metadata lacks {arch}.{k}")))
        };
        let u = |k: &str| -> Result<usize> { Ok(get(k)?.to_u32()? as usize) };
        let f = |k: &str| -> Result<f32> { Ok(get(k)?.to_f32()?) };
        let heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        let mut cfg = ModelConfig {
            family,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: u("attention.head_count_kv").unwrap_or(heads),
            head_dim: u("attention.key_length").unwrap_or(0),
            // GGUF stores f32: read back the decimal it was written from (1e-6, not 9.99999997e-7)
            rms_norm_eps: f("attention.layer_norm_rms_epsilon")?
                .to_string()
                .parse()
                .unwrap_or_default(),
            rope_theta: f("rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: u("context_length").unwrap_or(2048),
            // decided by the loader from whether `output.weight` exists
            tie_word_embeddings: true,
            ..ModelConfig::tiny()
        };
        cfg.apply_family_defaults();
        if let Ok(v) = u("attention.value_length")
            && v != cfg.head_dim()
        {
            return Err(ModelError::Unsupported(format!(
                "{arch}.attention.value_length {v} differs from key_length {}",
                cfg.head_dim()
            )));
        }
        if let Ok(rope_dim) = u("rope.dimension_count")
            && rope_dim != cfg.head_dim()
        {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({arch}.rope.dimension_count {rope_dim}, head dim {})",
                cfg.head_dim()
            )));
        }
        let scaling = get("rope.scaling.type")
            .ok()
            .and_then(|v| v.to_string().ok().cloned());
        match scaling.as_deref() {
            None | Some("none") => {}
            Some("linear") => {
                cfg.rope_scaling = Some(RopeScaling::Linear {
                    factor: f("rope.scaling.factor")?,
                })
            }
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "{arch}.rope.scaling.type {other:?} (supported: linear, and llama3 as rope_freqs)"
                )));
            }
        }
        // a llama-architecture file with a window is Mistral 7B v0.1 (llama.cpp itself ignores the key)
        if family == Family::Llama
            && let Ok(w) = u("attention.sliding_window")
        {
            cfg.family = Family::Mistral;
            cfg.sliding_window = Some(w);
        }
        if let Ok(t) = f("rope.freq_base_swa") {
            cfg.rope_local_theta = Some(t);
        }
        if matches!(family, Family::Gemma2 | Family::Gemma3) {
            cfg.sliding_window = Some(u("attention.sliding_window")?);
            let big = (family == Family::Gemma2 && cfg.num_hidden_layers == 46)
                || (family == Family::Gemma3 && cfg.num_hidden_layers == 62);
            cfg.query_pre_attn_scalar = Some(match f("attention.scale") {
                // the multiplier itself, when the file has it: back to the (whole) scalar it came from
                Ok(scale) if scale > 0.0 => {
                    let s = 1.0 / (scale * scale);
                    if (s - s.round()).abs() < 1e-3 * s {
                        s.round()
                    } else {
                        s
                    }
                }
                _ if big => (hidden / heads) as f32,
                _ => cfg.head_dim() as f32,
            });
        }
        if family == Family::Gemma2 {
            cfg.attn_logit_softcapping = f("attn_logit_softcapping").ok();
            cfg.final_logit_softcapping = f("final_logit_softcapping").ok();
        }
        cfg.layer_types = cfg.default_layer_types();
        // newer files list which layers slide (`true` = sliding)
        if let Ok(Value::Array(p)) = get("attention.sliding_window_pattern") {
            cfg.layer_types = p
                .iter()
                .map(|v| match v.to_bool() {
                    Ok(true) => Ok(LayerKind::SlidingAttention),
                    Ok(false) => Ok(LayerKind::FullAttention),
                    Err(_) => Err(ModelError::Unsupported(format!(
                        "{arch}.attention.sliding_window_pattern holds a non-boolean"
                    ))),
                })
                .collect::<Result<_>>()?;
        }
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a Hugging Face `config.json`: the `model_type`s in [`Family`], with the rope settings in
    /// either transformers 4's (`rope_theta`, `rope_scaling`) or 5's (`rope_parameters`) form.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        use serde_json::Value as J;
        let bad = |field: &str, why: String| {
            ModelError::Unsupported(format!("config.json: {field}: {why}"))
        };
        let mut root: J = serde_json::from_str(json).map_err(|e| bad("(file)", e.to_string()))?;
        let model_type = root
            .get("model_type")
            .and_then(J::as_str)
            .unwrap_or("llama")
            .to_string();
        let family = Family::from_model_type(&model_type).ok_or_else(|| {
            bad(
                "model_type",
                format!(
                    "{model_type:?} is not supported (supported: {})",
                    Family::supported_list()
                ),
            )
        })?;
        // Gemma 3's multimodal folders keep the text model's settings in `text_config`
        if model_type == "gemma3" {
            root = root
                .get("text_config")
                .cloned()
                .ok_or_else(|| bad("text_config", "missing (a gemma3 folder needs it)".into()))?;
        }
        let j = &root;
        let need_usize = |k: &str| -> Result<usize> {
            match j.get(k) {
                Some(v) => v
                    .as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| bad(k, format!("{v} is not a non-negative integer"))),
                None => Err(bad(k, "missing".into())),
            }
        };
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            match j.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as usize))
                    .ok_or_else(|| bad(k, format!("{v} is not a non-negative integer"))),
            }
        };
        let opt_f64 = |o: &J, k: &str| -> Result<Option<f64>> {
            match o.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(k, format!("{v} is not a number"))),
            }
        };
        let heads = need_usize("num_attention_heads")?;
        let mut cfg = ModelConfig {
            family,
            vocab_size: need_usize("vocab_size")?,
            hidden_size: need_usize("hidden_size")?,
            intermediate_size: need_usize("intermediate_size")?,
            num_hidden_layers: need_usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: opt_usize("num_key_value_heads")?.unwrap_or(heads),
            head_dim: opt_usize("head_dim")?.unwrap_or(0),
            rms_norm_eps: opt_f64(j, "rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: j
                .get("tie_word_embeddings")
                .and_then(J::as_bool)
                .unwrap_or(matches!(family, Family::Gemma2 | Family::Gemma3)),
            ..ModelConfig::tiny()
        };
        cfg.apply_family_defaults();
        if j.get("mlp_bias").and_then(J::as_bool) == Some(true) {
            return Err(bad(
                "mlp_bias",
                "biases on the MLP projections are not supported".into(),
            ));
        }
        if j.get("attention_bias").and_then(J::as_bool) == Some(true) {
            cfg.attention_bias = true;
        }
        let act = j
            .get("hidden_activation")
            .or_else(|| j.get("hidden_act"))
            .and_then(J::as_str);
        cfg.hidden_act = match act {
            None => cfg.hidden_act,
            Some("silu" | "swish") => Activation::Silu,
            Some("gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new") => Activation::GeluTanh,
            Some(other) => {
                return Err(bad(
                    "hidden_act",
                    format!("{other:?} (supported: silu, gelu_pytorch_tanh)"),
                ));
            }
        };
        // rope: transformers 5 nests it per layer kind in `rope_parameters`
        let rope_of = |o: &J| -> Result<(Option<f32>, Option<RopeScaling>)> {
            let theta = opt_f64(o, "rope_theta")?.map(|t| t as f32);
            let kind = o
                .get("rope_type")
                .or_else(|| o.get("type"))
                .and_then(J::as_str)
                .unwrap_or("default");
            let factor = || -> Result<f32> {
                opt_f64(o, "factor")?
                    .map(|f| f as f32)
                    .ok_or_else(|| bad("rope factor", "missing".into()))
            };
            let scaling = match kind {
                "default" => None,
                "linear" => Some(RopeScaling::Linear { factor: factor()? }),
                "llama3" => Some(RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: opt_f64(o, "low_freq_factor")?.unwrap_or(1.0) as f32,
                    high_freq_factor: opt_f64(o, "high_freq_factor")?.unwrap_or(4.0) as f32,
                    original_max_position_embeddings: o
                        .get("original_max_position_embeddings")
                        .and_then(J::as_u64)
                        .ok_or_else(|| {
                            bad("rope original_max_position_embeddings", "missing".into())
                        })? as usize,
                }),
                other => {
                    return Err(bad(
                        "rope_type",
                        format!("{other:?} (supported: default, linear, llama3)"),
                    ));
                }
            };
            Ok((theta, scaling))
        };
        let mut theta = opt_f64(j, "rope_theta")?.map(|t| t as f32);
        if let Some(rs) = j.get("rope_scaling").filter(|v| !v.is_null()) {
            cfg.rope_scaling = rope_of(rs)?.1;
        }
        if let Some(rp) = j.get("rope_parameters").filter(|v| !v.is_null()) {
            let (global, local) = match (rp.get("full_attention"), rp.get("sliding_attention")) {
                (Some(g), l) => (g, l),
                (None, _) => (rp, None),
            };
            let (t, s) = rope_of(global)?;
            theta = t.or(theta);
            cfg.rope_scaling = s;
            if let Some(l) = local {
                let (lt, ls) = rope_of(l)?;
                if ls.is_some() {
                    return Err(bad(
                        "rope_parameters.sliding_attention",
                        "scaled local rope is not supported".into(),
                    ));
                }
                cfg.rope_local_theta = lt.or(cfg.rope_local_theta);
            }
        }
        if let Some(t) = opt_f64(j, "rope_local_base_freq")? {
            cfg.rope_local_theta = Some(t as f32);
        }
        cfg.rope_theta = theta.unwrap_or(10_000.0);
        if family == Family::Gemma3 && cfg.rope_local_theta.is_none() {
            cfg.rope_local_theta = Some(10_000.0);
        }
        if let Some(pr) = j.get("partial_rotary_factor").and_then(J::as_f64)
            && pr != 1.0
        {
            return Err(bad(
                "partial_rotary_factor",
                format!("{pr} (only 1.0 is supported)"),
            ));
        }
        // sliding windows: Qwen 2 only with use_sliding_window; layer_types (transformers 5) say which
        let window = opt_usize("sliding_window")?;
        let qwen_off = matches!(family, Family::Qwen2 | Family::Qwen3)
            && j.get("use_sliding_window").and_then(J::as_bool) != Some(true);
        cfg.sliding_window = if qwen_off || family == Family::Llama {
            None
        } else {
            window
        };
        cfg.layer_types = match j.get("layer_types").and_then(J::as_array) {
            Some(list) if cfg.sliding_window.is_some() => list
                .iter()
                .map(|v| match v.as_str() {
                    Some("full_attention") => Ok(LayerKind::FullAttention),
                    Some("sliding_attention") => Ok(LayerKind::SlidingAttention),
                    _ => Err(bad(
                        "layer_types",
                        format!("{v} (expected full_attention or sliding_attention)"),
                    )),
                })
                .collect::<Result<_>>()?,
            _ => cfg.default_layer_types(),
        };
        if cfg.family == Family::Qwen2 && cfg.sliding_window.is_some() && cfg.layer_types.is_empty()
        {
            let from = opt_usize("max_window_layers")?.unwrap_or(0);
            cfg.layer_types = (0..cfg.num_hidden_layers)
                .map(|i| {
                    if i >= from {
                        LayerKind::SlidingAttention
                    } else {
                        LayerKind::FullAttention
                    }
                })
                .collect();
        }
        if matches!(family, Family::Gemma2 | Family::Gemma3) {
            cfg.query_pre_attn_scalar = Some(
                opt_f64(j, "query_pre_attn_scalar")?
                    .map(|v| v as f32)
                    .unwrap_or(cfg.head_dim() as f32),
            );
        }
        if family == Family::Gemma2 {
            cfg.attn_logit_softcapping = opt_f64(j, "attn_logit_softcapping")?.map(|v| v as f32);
            cfg.final_logit_softcapping = opt_f64(j, "final_logit_softcapping")?.map(|v| v as f32);
        }
        if family == Family::Gemma3 {
            for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
                cfg_softcap_refuse(j, k)?;
            }
        }
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` transformers (and our own loader) reads back.
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut rope = match &self.rope_scaling {
            None => json!({"rope_type": "default"}),
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
            // GGUF's divisors have no transformers form: written as the unscaled rope plus a note
            Some(RopeScaling::Factors { .. }) => json!({"rope_type": "default"}),
        };
        rope["rope_theta"] = json!(self.rope_theta);
        let mut c = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": match self.hidden_act {
                Activation::Silu => "silu",
                Activation::GeluTanh => "gelu_pytorch_tanh",
            },
            "torch_dtype": "float32",
        });
        if let Some(s) = &self.rope_scaling
            && !matches!(s, RopeScaling::Factors { .. })
        {
            c["rope_scaling"] = rope.clone();
        }
        if let Some(lt) = self.rope_local_theta {
            c["rope_local_base_freq"] = json!(lt);
            rope = json!({
                "full_attention": rope,
                "sliding_attention": {"rope_type": "default", "rope_theta": lt},
            });
        }
        c["rope_parameters"] = rope;
        if self.family == Family::Llama || self.family == Family::Qwen3 {
            c["attention_bias"] = json!(self.attention_bias);
        }
        if let Some(w) = self.sliding_window {
            c["sliding_window"] = json!(w);
            if matches!(self.family, Family::Qwen2 | Family::Qwen3) {
                c["use_sliding_window"] = json!(true);
            }
        } else if self.family == Family::Mistral {
            c["sliding_window"] = serde_json::Value::Null;
        }
        if !self.layer_types.is_empty() {
            c["layer_types"] = json!(self.layer_types);
        }
        if let Some(s) = self.query_pre_attn_scalar {
            c["query_pre_attn_scalar"] = json!(s);
        }
        if matches!(self.family, Family::Gemma2 | Family::Gemma3) {
            c["hidden_activation"] = c["hidden_act"].clone();
            c["attn_logit_softcapping"] = json!(self.attn_logit_softcapping);
            c["final_logit_softcapping"] = json!(self.final_logit_softcapping);
        }
        c
    }
}

/// A parameter count as people write it: `135M`, `1.2B`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", (n as f64 / 1e6).round()),
        n if n >= 1_000 => format!("{}K", (n as f64 / 1e3).round()),
        n => n.to_string(),
    }
}

/// Gemma 3 has no soft-capping; a file that sets it is not the model we run.
fn cfg_softcap_refuse(j: &serde_json::Value, k: &str) -> Result<()> {
    match j.get(k) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) => Err(ModelError::Unsupported(format!(
            "config.json: {k}: {v} (Gemma 3 has no soft-capping)"
        ))),
    }
}

/// The projections LoRA can attach to, named as in PEFT's `target_modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proj {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    pub fn peft_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Accepts PEFT names and the short forms `q k v o gate up down`.
    pub fn parse(s: &str) -> Option<Proj> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_suffix("_proj").unwrap_or(&s);
        Some(match s {
            "q" => Proj::Q,
            "k" => Proj::K,
            "v" => Proj::V,
            "o" => Proj::O,
            "gate" => Proj::Gate,
            "up" => Proj::Up,
            "down" => Proj::Down,
            _ => return None,
        })
    }

    /// `self_attn` or `mlp`, for PEFT tensor names.
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        }
    }

    /// The tensor-name stem in GGUF files (`blk.N.<stem>.weight`).
    pub fn gguf(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
