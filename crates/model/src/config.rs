//! The llama-family hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`, and the
//! names of the projections LoRA can attach to (`Proj`), shared by the forward pass and the adapters.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// What the forward pass needs to know about a llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    /// The longest sequence the model was trained for (GGUF `context_length`).
    pub max_position_embeddings: usize,
    /// The output projection is the token embedding (no separate `lm_head`).
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// A tiny llama (2 layers, hidden 64, 4 heads / 2 KV heads, byte-level vocabulary) for tests.
    pub fn tiny() -> Self {
        LlamaConfig {
            vocab_size: 259,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
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
        self.hidden_size / self.num_attention_heads
    }

    /// Rejects shapes the forward pass cannot run, so a bad file fails at load time with a reason.
    pub fn validate(&self) -> Result<()> {
        let bad = |r: String| Err(ModelError::Unsupported(r));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad(format!("empty dimensions in {self:?}"));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("odd head dimension {}", self.head_dim()));
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// From GGUF metadata (`llama.*` keys).
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize) -> Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!(
                "architecture {arch:?} (only llama-family GGUF files are supported)"
            )));
        }
        let get = |k: &str| {
            md.get(&format!("llama.{k}"))
                .ok_or_else(|| ModelError::Unsupported(format!("GGUF metadata lacks llama.{k}")))
        };
        let u = |k: &str| -> Result<usize> { Ok(get(k)?.to_u32()? as usize) };
        let heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: get("attention.head_count_kv")
                .and_then(|v| Ok(v.to_u32()? as usize))
                .unwrap_or(heads),
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: get("rope.freq_base")
                .and_then(|v| Ok(v.to_f32()?))
                .unwrap_or(10_000.0),
            max_position_embeddings: u("context_length").unwrap_or(2048),
            // decided by the loader from whether `output.weight` exists
            tie_word_embeddings: true,
        };
        if let Ok(rope_dim) = u("rope.dimension_count")
            && rope_dim != cfg.head_dim()
        {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings (rope dim {rope_dim}, head dim {})",
                cfg.head_dim()
            )));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a Hugging Face `config.json` (`LlamaForCausalLM`).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            #[serde(default = "default_eps")]
            rms_norm_eps: f64,
            #[serde(default = "default_theta")]
            rope_theta: f32,
            #[serde(default = "default_ctx")]
            max_position_embeddings: usize,
            #[serde(default)]
            tie_word_embeddings: bool,
            head_dim: Option<usize>,
        }
        fn default_eps() -> f64 {
            1e-6
        }
        fn default_theta() -> f32 {
            10_000.0
        }
        fn default_ctx() -> usize {
            2048
        }
        let hf: Hf = serde_json::from_str(json)
            .map_err(|e| ModelError::Unsupported(format!("config.json: {e}")))?;
        if let Some(t) = &hf.model_type
            && t != "llama"
        {
            return Err(ModelError::Unsupported(format!(
                "model_type {t:?} (only llama-family models are supported)"
            )));
        }
        if let Some(hd) = hf.head_dim
            && hd * hf.num_attention_heads != hf.hidden_size
        {
            return Err(ModelError::Unsupported(format!(
                "head_dim {hd} x {} heads != hidden size {}",
                hf.num_attention_heads, hf.hidden_size
            )));
        }
        let cfg = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` a Hugging Face loader (and our own) reads back.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
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
    pub(crate) fn gguf(self) -> &'static str {
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
