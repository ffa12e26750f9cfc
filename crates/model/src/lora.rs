//! LoRA adapters: configuration, initialisation, and the PEFT file layout (`adapter_config.json` +
//! `adapter_model.safetensors`) that Python tools load as is.
//!
//! Inside the process, q/k LoRA B rows are in GGUF row order (the order the forward pass uses); files hold
//! Hugging Face order, so an adapter trained here applies to the HF checkpoint in PEFT, and back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::config::Proj;
use crate::error::{ModelError, Result};
use crate::weights::{permute_rows_gguf_to_hf, permute_rows_hf_to_gguf};

/// LoRA hyper-parameters (PEFT's names and defaults where PEFT has them). Every field is optional when
/// parsed: `{"rank": 16}` keeps the other defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank `r` of the update `B·A`.
    pub rank: usize,
    /// Scaling numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the LoRA branch's input during training.
    pub dropout: f32,
    /// Projections that get an adapter.
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: vec![Proj::Q, Proj::V],
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || self.rank > 1024 {
            return Err(ModelError::invalid(
                "lora rank",
                format!("{} (must be 1..=1024)", self.rank),
            ));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(ModelError::invalid(
                "lora alpha",
                format!("{} (must be > 0)", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::invalid(
                "lora dropout",
                format!("{} (must be in [0, 1))", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(ModelError::invalid(
                "lora targets",
                "at least one projection is needed",
            ));
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// `(in, out)` features of a projection.
pub fn proj_dims(c: &ModelConfig, p: Proj) -> (usize, usize) {
    let kv = c.kv_dim();
    match p {
        Proj::Q => (c.hidden_size, c.q_dim()),
        Proj::O => (c.q_dim(), c.hidden_size),
        Proj::K | Proj::V => (c.hidden_size, kv),
        Proj::Gate | Proj::Up => (c.hidden_size, c.intermediate_size),
        Proj::Down => (c.intermediate_size, c.hidden_size),
    }
}

/// An adapter's weights: per layer and projection, `A [rank, in]` and `B [out, rank]`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub config: LoraConfig,
    pub model: ModelConfig,
    layers: Vec<HashMap<Proj, (Var, Var)>>,
}

impl Lora {
    /// PEFT's initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt 5), B = 0, so a
    /// fresh adapter leaves the model unchanged. Seeded: the same seed gives the same adapter.
    pub fn init(
        model: &ModelConfig,
        mut config: LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.targets.sort();
        config.targets.dedup();
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut m = HashMap::new();
            for &p in &config.targets {
                let (n_in, n_out) = proj_dims(model, p);
                let bound = 1.0 / (n_in as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * n_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, n_in), device)?)?;
                let b = Var::zeros((n_out, config.rank), DType::F32, device)?;
                m.insert(p, (a, b));
            }
            layers.push(m);
        }
        Ok(Lora {
            config,
            model: model.clone(),
            layers,
        })
    }

    pub fn get(&self, layer: usize, p: Proj) -> Option<(&Tensor, &Tensor, f64)> {
        let (a, b) = self.layers.get(layer)?.get(&p)?;
        Some((a.as_tensor(), b.as_tensor(), self.config.scale()))
    }

    /// The trainable parameters in a fixed order (layer, projection, A then B).
    pub fn vars(&self) -> Vec<Var> {
        let mut out = Vec::new();
        for m in &self.layers {
            let mut ps: Vec<_> = m.keys().copied().collect();
            ps.sort();
            for p in ps {
                let (a, b) = &m[&p];
                out.push(a.clone());
                out.push(b.clone());
            }
        }
        out
    }

    /// `(rows, cols)` of each parameter in `vars` order.
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        self.vars()
            .iter()
            .map(|v| {
                let d = v.dims();
                (
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(1),
                )
            })
            .collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Tensors under their PEFT names, B of q/k in Hugging Face row order.
    pub fn peft_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (l, m) in self.layers.iter().enumerate() {
            for (&p, (a, b)) in m {
                let prefix = format!(
                    "base_model.model.model.layers.{l}.{}.{}",
                    p.module(),
                    p.peft_name()
                );
                let b = match p {
                    Proj::Q => {
                        permute_rows_gguf_to_hf(b.as_tensor(), self.model.num_attention_heads)?
                    }
                    Proj::K => {
                        permute_rows_gguf_to_hf(b.as_tensor(), self.model.num_key_value_heads)?
                    }
                    _ => b.as_tensor().clone(),
                };
                out.insert(
                    format!("{prefix}.lora_A.weight"),
                    a.as_tensor().to_device(&Device::Cpu)?,
                );
                out.insert(
                    format!("{prefix}.lora_B.weight"),
                    b.to_device(&Device::Cpu)?,
                );
            }
        }
        Ok(out)
    }

    /// `adapter_model.safetensors` bytes: PEFT names, f32, `{"format": "pt"}` metadata.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let tensors = self.peft_tensors()?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.clone(), v.clone())),
            Some(meta),
        )
        .map_err(|e| ModelError::invalid("adapter", format!("safetensors: {e}")))
    }

    /// `adapter_config.json`, as PEFT writes it.
    pub fn peft_config(&self, base_model: &str) -> serde_json::Value {
        let mut targets: Vec<&str> = self.config.targets.iter().map(|p| p.peft_name()).collect();
        targets.sort();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
            "layers_to_transform": null,
            "revision": null,
        })
    }

    /// Load a PEFT adapter folder for a model with configuration `model`. Checks every tensor's shape and that
    /// the adapter covers exactly the layers and projections its config names.
    pub fn load_peft(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&cfg_path, e))?;
        let bad = |r: &str| ModelError::corrupt(&cfg_path, r);
        if v["peft_type"].as_str() != Some("LORA") {
            return Err(bad("peft_type is not LORA"));
        }
        if v["use_dora"].as_bool() == Some(true) || v["use_rslora"].as_bool() == Some(true) {
            return Err(bad("DoRA and rsLoRA adapters are not supported"));
        }
        let targets = v["target_modules"]
            .as_array()
            .ok_or_else(|| bad("target_modules must be a list"))?
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(Proj::parse)
                    .ok_or_else(|| bad("unknown target module"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut config = LoraConfig {
            rank: v["r"].as_u64().ok_or_else(|| bad("r missing"))? as usize,
            alpha: v["lora_alpha"]
                .as_f64()
                .ok_or_else(|| bad("lora_alpha missing"))?,
            dropout: v["lora_dropout"].as_f64().unwrap_or(0.0) as f32,
            targets,
        };
        config.targets.sort();
        config.targets.dedup();
        config.validate()?;
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| ModelError::io(&st_path, e))?;
        Self::from_peft_bytes(&bytes, config, model, device)
            .map_err(|e| ModelError::corrupt(&st_path, e))
    }

    /// From `adapter_model.safetensors` bytes and the adapter's configuration.
    pub fn from_peft_bytes(
        bytes: &[u8],
        config: LoraConfig,
        model: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::invalid("adapter", e))?;
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for l in 0..model.num_hidden_layers {
            let mut m = HashMap::new();
            for &p in &config.targets {
                let (n_in, n_out) = proj_dims(model, p);
                let prefix = format!(
                    "base_model.model.model.layers.{l}.{}.{}",
                    p.module(),
                    p.peft_name()
                );
                let load = |suffix: &str, dims: (usize, usize)| -> Result<Tensor> {
                    let name = format!("{prefix}.{suffix}");
                    let view = st.tensor(&name).map_err(|_| {
                        ModelError::invalid("adapter", format!("missing tensor {name}"))
                    })?;
                    let t = candle_core::safetensors::Load::load(&view, device)?
                        .to_dtype(DType::F32)?;
                    if t.dims() != [dims.0, dims.1] {
                        return Err(ModelError::invalid(
                            "adapter",
                            format!("{name} has shape {:?}, expected {dims:?}", t.dims()),
                        ));
                    }
                    Ok(t)
                };
                let a = load("lora_A.weight", (config.rank, n_in))?;
                let b = load("lora_B.weight", (n_out, config.rank))?;
                let b = match p {
                    Proj::Q => permute_rows_hf_to_gguf(&b, model.num_attention_heads)?,
                    Proj::K => permute_rows_hf_to_gguf(&b, model.num_key_value_heads)?,
                    _ => b,
                };
                m.insert(p, (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
            }
            layers.push(m);
        }
        let expected = model.num_hidden_layers * config.targets.len() * 2;
        if st.len() != expected {
            return Err(ModelError::invalid(
                "adapter",
                format!(
                    "{} tensors, expected {expected} for its target modules",
                    st.len()
                ),
            ));
        }
        Ok(Lora {
            config,
            model: model.clone(),
            layers,
        })
    }

    /// From per-layer `(A [rank, in], B [out, rank])` in this crate's (GGUF) row order; shapes are checked.
    pub fn from_layers(
        model: &ModelConfig,
        config: LoraConfig,
        layers: Vec<HashMap<Proj, (Tensor, Tensor)>>,
    ) -> Result<Self> {
        config.validate()?;
        if layers.len() != model.num_hidden_layers {
            return Err(ModelError::invalid(
                "adapter",
                format!(
                    "{} layers, the model has {}",
                    layers.len(),
                    model.num_hidden_layers
                ),
            ));
        }
        let mut out = Vec::with_capacity(layers.len());
        for m in layers {
            let mut vars = HashMap::new();
            for (p, (a, b)) in m {
                let (n_in, n_out) = proj_dims(model, p);
                if a.dims() != [config.rank, n_in] || b.dims() != [n_out, config.rank] {
                    return Err(ModelError::invalid(
                        "adapter",
                        format!(
                            "{} has shapes {:?} / {:?}",
                            p.peft_name(),
                            a.dims(),
                            b.dims()
                        ),
                    ));
                }
                vars.insert(p, (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
            }
            out.push(vars);
        }
        Ok(Lora {
            config,
            model: model.clone(),
            layers: out,
        })
    }

    /// Replace the weights with those of `other` (same shapes): restoring a checkpoint.
    pub fn assign(&self, other: &Lora) -> Result<()> {
        for (x, y) in self.vars().iter().zip(other.vars()) {
            x.set(y.as_tensor())?;
        }
        Ok(())
    }
}
