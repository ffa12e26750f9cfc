//! OpenLedger's model layer (candle): base models from GGUF or Hugging Face folders (`weights`), their
//! tokenizers and chat templates (`tokenizer`), the llama forward pass with LoRA hooks (`llama`), LoRA
//! adapters in the PEFT layout (`lora`), LoRA training (`train`) and multi-adapter serving (`serve`).

pub mod backprop;
mod blas;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod llama;
pub mod lora;
mod ops;
pub mod q8;
pub mod serve;
pub mod template;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use candle_core::{DType, Device};
pub use config::{ModelConfig, Proj};
pub use error::{ModelError, Result};
pub use llama::{Forward, Llama, Precision};
pub use lora::{Lora, LoraConfig};
pub use ops::dot;
pub use tokenizer::{TextTokenizer, WordBreaks};
pub use train::{
    Dataset, Event, Metrics, Record, Schedule, TrainConfig, Trainer, sequence_gradient,
};
pub use weights::{BaseModel, ModelFormat, content_hash};

/// The device for `spec`: `cpu` or `cuda:N` (the latter only in builds with the `cuda` feature).
pub fn device(spec: &str) -> Result<Device> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = spec
        .strip_prefix("cuda:")
        .or(if spec == "cuda" { Some("0") } else { None })
    {
        let n: usize = n.parse().map_err(|_| {
            ModelError::invalid("device", format!("{spec:?} (expected cpu or cuda:N)"))
        })?;
        if !candle_core::utils::cuda_is_available() {
            return Err(ModelError::invalid(
                "device",
                format!("{spec}: this build has no CUDA support (rebuild with --features cuda)"),
            ));
        }
        return Ok(Device::new_cuda(n)?);
    }
    Err(ModelError::invalid(
        "device",
        format!("{spec:?} (expected cpu or cuda:N)"),
    ))
}
