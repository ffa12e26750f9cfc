//! Base models on disk: a GGUF file or a Hugging Face safetensors folder, read into one set of tensors
//! named and laid out as llama.cpp writes a `llama` GGUF (`blk.N.attn_q.weight`...):
//! - q/k rows (and q/k biases and q/k norm weights) in interleaved-rope order: Hugging Face folders, and
//!   GGUF files of the families llama.cpp keeps in Hugging Face order (Qwen, Gemma), are permuted on load,
//!   so one forward pass (interleaved rotary embedding) serves every file;
//! - Gemma's norm weights as `1 + w` (as llama.cpp's converter stores them), so every pass multiplies by
//!   the stored weight.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Family, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// A base weight: kept quantized for inference, dequantized to f32 for training.
#[derive(Debug, Clone)]
pub enum Weight {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Weight {
    /// The weight as an f32 tensor (dequantizing when needed).
    pub fn dense(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Quantized(q) => q.dequantize(device)?,
            Weight::Dense(t) => t.to_device(device)?.to_dtype(DType::F32)?,
        })
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Quantized(q) => q.shape().dims().to_vec(),
            Weight::Dense(t) => t.dims().to_vec(),
        }
    }
}

/// Which kind of file a base model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

/// A loaded base model: configuration, tokenizer, weights, and the content hash that names it on chain.
#[derive(Debug, Clone)]
pub struct BaseModel {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub format: ModelFormat,
    pub path: PathBuf,
    /// `0x`-prefixed SHA-256; see [`content_hash`].
    pub hash: String,
    pub(crate) tensors: HashMap<String, Weight>,
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The tensors of a `.safetensors` file that `keep` names, read one at a time from the file (a header, then
/// each tensor's bytes straight into its own storage): peak memory is the tensors plus one tensor's bytes,
/// where reading the whole file first (`candle_core::safetensors::load`) holds it twice (5 GB more for a 1B
/// model in f32); tensors the model does not use (a vision tower) are never read.
fn read_safetensors(
    path: &Path,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>> {
    use std::io::{Seek, SeekFrom};
    let bad = |r: String| ModelError::corrupt(path, r);
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| ModelError::io(path, e))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > (100 << 20) || 8 + header_len > len {
        return Err(bad(format!(
            "a header of {header_len} bytes in a file of {len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| ModelError::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries: Vec<(String, DType, Vec<usize>, u64, u64)> = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" || !keep(name) {
            continue;
        }
        let dtype = match info["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?} (supported: F32, F16, BF16, F64)"
                )));
            }
        };
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor {name} has no shape")))?;
        let (start, end) = match info["data_offsets"].as_array().map(|a| a.as_slice()) {
            Some([s, e]) => (s.as_u64().unwrap_or(u64::MAX), e.as_u64().unwrap_or(0)),
            _ => return Err(bad(format!("tensor {name} has no data_offsets"))),
        };
        let want = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if start > end || end - start != want || data_start + end > len {
            return Err(bad(format!(
                "tensor {name}: bytes {start}..{end} do not hold {shape:?} {dtype:?} within the file"
            )));
        }
        entries.push((name.clone(), dtype, shape, start, end));
    }
    // in file order: one forward pass over the data
    entries.sort_by_key(|e| e.3);
    let mut out = Vec::with_capacity(entries.len());
    let mut buf = Vec::new();
    for (name, dtype, shape, start, end) in entries {
        f.seek(SeekFrom::Start(data_start + start))
            .map_err(|e| ModelError::io(path, e))?;
        buf.resize((end - start) as usize, 0);
        f.read_exact(&mut buf)
            .map_err(|e| ModelError::io(path, e))?;
        let t = Tensor::from_raw_buffer(&buf, dtype, &shape, device)?;
        out.push((name, t));
    }
    Ok(out)
}

/// A configuration error with the file it came from: `config.json: hidden_size: missing` becomes
/// `/models/x/config.json: hidden_size: missing`.
fn at_file(path: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::Unsupported(m) => {
            let rest = m.strip_prefix("config.json: ").unwrap_or(&m);
            ModelError::Unsupported(format!("{}: {rest}", path.display()))
        }
        other => other,
    }
}

/// The files of a Hugging Face folder that define the model (weights, config, tokenizer), sorted.
fn hf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let p = entry.map_err(|e| ModelError::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".safetensors")
            || matches!(
                name,
                "config.json" | "tokenizer.json" | "tokenizer_config.json"
            )
        {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// A model's content hash: the SHA-256 of a GGUF file (what `sha256sum` prints), or for a folder the SHA-256
/// of the lines `<sha256 hex>  <file name>\n` (the `sha256sum` output format) over its config, tokenizer and
/// safetensors files in name order.
pub fn content_hash(path: &Path) -> Result<String> {
    if path.is_dir() {
        let mut listing = String::new();
        for f in hf_files(path)? {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            listing.push_str(&format!("{}  {name}\n", hex::encode(file_sha256(&f)?)));
        }
        Ok(hex0x(&Sha256::digest(listing.as_bytes())))
    } else {
        Ok(hex0x(&file_sha256(path)?))
    }
}

/// A model file's format and configuration, from its metadata only (no tensors read): what registering a
/// base model needs.
pub fn inspect(path: &Path) -> Result<(ModelFormat, ModelConfig)> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        let cfg_path = path.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let cfg = ModelConfig::from_hf_json(&text).map_err(|e| at_file(&cfg_path, e))?;
        if hf_files(path)?
            .iter()
            .all(|p| p.extension().is_none_or(|e| e != "safetensors"))
        {
            return Err(ModelError::corrupt(path, "no *.safetensors files"));
        }
        if !path.join("tokenizer.json").exists() {
            return Err(ModelError::corrupt(path, "no tokenizer.json"));
        }
        let tok = TextTokenizer::from_hf_dir(path)?;
        tok.check_template(&path.join("tokenizer_config.json"), "chat_template")?;
        return Ok((ModelFormat::Safetensors, cfg));
    }
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f).map_err(|e| ModelError::corrupt(path, e))?;
    let vocab = ct
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.len())
        .unwrap_or(0);
    let mut cfg = ModelConfig::from_gguf(&ct.metadata, vocab).map_err(|e| at_file(path, e))?;
    cfg.tie_word_embeddings = !ct.tensor_infos.contains_key("output.weight");
    if cfg.family == Family::Llama && ct.tensor_infos.contains_key("blk.0.attn_q.bias") {
        cfg.attention_bias = true;
    }
    check_tensors(
        path,
        &cfg,
        |name| ct.tensor_infos.get(name).map(|i| i.shape.dims().to_vec()),
        ct.tensor_infos.keys().map(String::as_str),
    )?;
    TextTokenizer::from_gguf(&ct)
        .map_err(|e| at_file(path, e))?
        .check_template(path, "tokenizer.chat_template")?;
    // the tensors must lie within the file
    let len = meta.len();
    for (name, info) in &ct.tensor_infos {
        let n: usize = info.shape.elem_count();
        let bytes = n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        if ct.tensor_data_offset + info.offset + bytes as u64 > len {
            return Err(ModelError::corrupt(
                path,
                format!("tensor {name} runs past the end of the file"),
            ));
        }
    }
    Ok((ModelFormat::Gguf, cfg))
}

impl BaseModel {
    /// Load a GGUF file or a Hugging Face folder. `hash` may be passed when already known (the registry
    /// caches it) to skip re-reading the files.
    pub fn load(path: &Path, device: &Device, hash: Option<String>) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        let mut m = if meta.is_dir() {
            Self::load_hf_dir(path, device)?
        } else {
            Self::load_gguf(path, device)?
        };
        m.hash = match hash {
            Some(h) => h,
            None => content_hash(path)?,
        };
        Ok(m)
    }

    fn load_gguf(path: &Path, device: &Device) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let ct = gguf_file::Content::read(&mut f).map_err(|e| ModelError::corrupt(path, e))?;
        let tokenizer = TextTokenizer::from_gguf(&ct)?;
        let vocab = ct
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.len())
            .unwrap_or(0);
        let mut config =
            ModelConfig::from_gguf(&ct.metadata, vocab).map_err(|e| at_file(path, e))?;
        let mut tensors = HashMap::new();
        let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
        for name in names {
            let q = ct
                .tensor(&mut f, &name, device)
                .map_err(|e| ModelError::corrupt(path, format!("tensor {name}: {e}")))?;
            tensors.insert(name, Weight::Quantized(Arc::new(q)));
        }
        config.tie_word_embeddings = !tensors.contains_key("output.weight");
        if config.family == Family::Llama && tensors.contains_key("blk.0.attn_q.bias") {
            config.attention_bias = true;
        }
        if let Some(w) = tensors.get("rope_freqs.weight") {
            let factors = w.dense(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            config.rope_scaling = Some(RopeScaling::Factors { factors });
            config
                .validate()
                .map_err(|e| ModelError::corrupt(path, format!("rope_freqs.weight: {e}")))?;
        }
        if config.family.gguf_rows_in_hf_order() {
            // rows in Hugging Face order (llama.cpp's NEOX rope): interleave them like every other file
            for (name, w) in tensors.iter_mut() {
                if let Some(n) = rope_heads(&config, name) {
                    let t = w.dense(device)?;
                    if t.dim(0)? % (2 * n) != 0 {
                        return Err(ModelError::corrupt(
                            path,
                            format!("tensor {name} has {} rows for {n} heads", t.dim(0)?),
                        ));
                    }
                    *w = Weight::Dense(permute_rows_hf_to_gguf(&t, n)?);
                }
            }
        }
        let m = BaseModel {
            config,
            tokenizer,
            format: ModelFormat::Gguf,
            path: path.to_path_buf(),
            hash: String::new(),
            tensors,
        };
        m.check_shapes()?;
        Ok(m)
    }

    fn load_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg_text =
            std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config = ModelConfig::from_hf_json(&cfg_text).map_err(|e| at_file(&cfg_path, e))?;
        let tokenizer = TextTokenizer::from_hf_dir(dir)?;
        let files: Vec<PathBuf> = hf_files(dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        if files.is_empty() {
            return Err(ModelError::corrupt(dir, "no *.safetensors files"));
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let loaded = read_safetensors(f, device, |name| {
                hf_to_gguf_name(config.family, name).is_some()
            })?;
            for (name, t) in loaded {
                let Some(gguf) = hf_to_gguf_name(config.family, &name) else {
                    continue;
                };
                let t = to_internal(&config, &gguf, t.to_dtype(DType::F32)?)?;
                tensors.insert(gguf, Weight::Dense(t));
            }
        }
        let mut config = config;
        config.tie_word_embeddings = !tensors.contains_key("output.weight");
        let m = BaseModel {
            config,
            tokenizer,
            format: ModelFormat::Safetensors,
            path: dir.to_path_buf(),
            hash: String::new(),
            tensors,
        };
        m.check_shapes()?;
        Ok(m)
    }

    /// A tensor that only some families have (biases, q/k norms, post-norms).
    pub fn weight_opt(&self, name: &str) -> Option<&Weight> {
        self.tensors.get(name)
    }

    pub fn weight(&self, name: &str) -> Result<&Weight> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::corrupt(&self.path, format!("missing tensor {name}")))
    }

    /// Every tensor the forward pass reads exists with the shape the configuration implies.
    fn check_shapes(&self) -> Result<()> {
        check_tensors(
            &self.path,
            &self.config,
            |name| self.tensors.get(name).map(|w| w.dims()),
            self.tensors.keys().map(String::as_str),
        )
    }

    /// Write this model as a Hugging Face folder (f32 safetensors, HF row order): used by tests to build tiny
    /// models and by users to hand a model to other tools.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        self.save_hf_dir_as(dir, DType::F32)
    }

    /// [`save_hf_dir`](Self::save_hf_dir) with the weights as `dtype` (f32, f16 or bf16), `torch_dtype`
    /// saying so in `config.json`, and a `generation_config.json` naming the special tokens.
    pub fn save_hf_dir_as(&self, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let cpu = Device::Cpu;
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (name, w) in &self.tensors {
            let Some(hf) = gguf_to_hf_name(self.config.family, name) else {
                continue;
            };
            out.insert(
                hf,
                to_hf(&self.config, name, w.dense(&cpu)?)?.to_dtype(dtype)?,
            );
        }
        let st = dir.join("model.safetensors");
        candle_core::safetensors::save(&out, &st).map_err(|e| ModelError::corrupt(&st, e))?;
        let mut config = self.config.to_hf_json();
        config["torch_dtype"] = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        }
        .into();
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, config.to_string()).map_err(|e| ModelError::io(&cfg, e))?;
        let stops = self.tokenizer.stop_ids();
        let gen_cfg = dir.join("generation_config.json");
        std::fs::write(
            &gen_cfg,
            serde_json::json!({
                "bos_token_id": self.tokenizer.bos,
                "eos_token_id": if stops.len() == 1 { serde_json::json!(stops[0]) } else { serde_json::json!(stops) },
            })
            .to_string(),
        )
        .map_err(|e| ModelError::io(&gen_cfg, e))?;
        let tj = dir.join("tokenizer.json");
        std::fs::write(&tj, self.tokenizer.to_json()?).map_err(|e| ModelError::io(&tj, e))?;
        let tc = dir.join("tokenizer_config.json");
        std::fs::write(&tc, self.tokenizer.hf_config().to_string())
            .map_err(|e| ModelError::io(&tc, e))?;
        Ok(())
    }

    /// A randomly initialised model (normal, std 0.1; norms 1) with the byte-level tokenizer: what tests and
    /// benchmarks of the machinery use when the real weights do not matter.
    pub fn random(config: ModelConfig, seed: u64) -> Result<Self> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        config.validate()?;
        let tokenizer = TextTokenizer::byte_level()?;
        if config.vocab_size < tokenizer.vocab_size() {
            return Err(ModelError::invalid(
                "vocab_size",
                format!(
                    "{} < the byte-level tokenizer's {}",
                    config.vocab_size,
                    tokenizer.vocab_size()
                ),
            ));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal =
            rand_distr::Normal::new(0f32, 0.1).map_err(|e| ModelError::invalid("std", e))?;
        let dev = Device::Cpu;
        let mut rand_t = |dims: &[usize]| -> Result<Tensor> {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Ok(Tensor::from_vec(v, dims, &dev)?)
        };
        let c = &config;
        let (h, kv, f, qd, hd) = (
            c.hidden_size,
            c.kv_dim(),
            c.intermediate_size,
            c.q_dim(),
            c.head_dim(),
        );
        let mut t = HashMap::new();
        t.insert("token_embd.weight".to_string(), rand_t(&[c.vocab_size, h])?);
        t.insert(
            "output_norm.weight".to_string(),
            Tensor::ones(h, DType::F32, &dev)?,
        );
        if !c.tie_word_embeddings {
            t.insert("output.weight".to_string(), rand_t(&[c.vocab_size, h])?);
        }
        for l in 0..c.num_hidden_layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            t.insert(p("attn_norm"), Tensor::ones(h, DType::F32, &dev)?);
            t.insert(p("ffn_norm"), Tensor::ones(h, DType::F32, &dev)?);
            for (name, dims) in [
                ("attn_q", [qd, h]),
                ("attn_k", [kv, h]),
                ("attn_v", [kv, h]),
                ("attn_output", [h, qd]),
                ("ffn_gate", [f, h]),
                ("ffn_up", [f, h]),
                ("ffn_down", [h, f]),
            ] {
                t.insert(p(name), rand_t(&dims)?);
            }
            // the families' extras: random biases, norms near 1 (so a swapped or missing one shows)
            let mut near_one = |n: usize| -> Result<Tensor> { Ok((rand_t(&[n])? + 1.0)?) };
            if c.attention_bias {
                let mut biases = vec![("attn_q", qd), ("attn_k", kv), ("attn_v", kv)];
                if c.family != Family::Qwen2 {
                    biases.push(("attn_output", h));
                }
                for (name, n) in biases {
                    t.insert(format!("blk.{l}.{name}.bias"), (near_one(n)? - 1.0)?);
                }
            }
            if c.qk_norm {
                t.insert(p("attn_q_norm"), near_one(hd)?);
                t.insert(p("attn_k_norm"), near_one(hd)?);
            }
            if c.post_norms {
                t.insert(p("post_attention_norm"), near_one(h)?);
                t.insert(p("post_ffw_norm"), near_one(h)?);
            }
        }
        let mut m = Self::from_tensors(config, tokenizer, t)?;
        m.hash = hex0x(&Sha256::digest(
            format!("random:{seed}:{:?}", m.config).as_bytes(),
        ));
        Ok(m)
    }

    /// The same model with its projection and output matrices quantized to `dtype` (tests and benchmarks of
    /// the quantized inference path on random models). Matrices whose rows are not whole blocks stay f32.
    pub fn quantized(mut self, dtype: candle_core::quantized::GgmlDType) -> Result<Self> {
        for (name, w) in self.tensors.iter_mut() {
            let matrix = name.starts_with("blk.") && !name.contains("_norm")
                || name == "token_embd.weight"
                || name == "output.weight";
            if let (true, Weight::Dense(t)) = (matrix, &*w)
                && t.dims().len() == 2
                && t.dim(1)? % dtype.block_size() == 0
            {
                *w = Weight::Quantized(Arc::new(QTensor::quantize(t, dtype)?));
            }
        }
        Ok(self)
    }

    /// Re-encodes quantized matrices whose block format has no SIMD kernel in candle 0.11 on x86 (Q4_1,
    /// Q5_0, Q5_1 run through scalar code: about 80% of a serving step on SmolLM2's Q4_1) as Q8_0, which
    /// has one. Each value moves by at most half a Q8_0 step (1/254 of its block's largest magnitude).
    /// Serving uses it; training keeps the file's blocks, so the two see very slightly different weights.
    pub fn with_fast_kernels(mut self) -> Result<Self> {
        use candle_core::quantized::GgmlDType;
        for w in self.tensors.values_mut() {
            if let Weight::Quantized(q) = &*w
                && matches!(
                    q.dtype(),
                    GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
                )
                && q.shape()
                    .dims()
                    .last()
                    .is_some_and(|d| d % GgmlDType::Q8_0.block_size() == 0)
            {
                let t = q.dequantize(&Device::Cpu)?;
                *w = Weight::Quantized(Arc::new(QTensor::quantize(&t, GgmlDType::Q8_0)?));
            }
        }
        Ok(self)
    }

    /// Build a model from tensors already named as in GGUF (tests, converters).
    pub fn from_tensors(
        config: ModelConfig,
        tokenizer: TextTokenizer,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let m = BaseModel {
            tokenizer,
            format: ModelFormat::Safetensors,
            path: PathBuf::from("<memory>"),
            hash: String::new(),
            tensors: tensors
                .into_iter()
                .map(|(k, v)| (k, Weight::Dense(v)))
                .collect(),
            config,
        };
        m.check_shapes()?;
        Ok(m)
    }
}

/// The tensors a model of `config` reads, with their shapes; `dims` gives a tensor's shape in the file and
/// `names` lists every tensor there (a layer tensor the configuration does not use is refused: it would be
/// silently ignored otherwise).
fn check_tensors<'a>(
    path: &Path,
    config: &ModelConfig,
    dims: impl Fn(&str) -> Option<Vec<usize>>,
    names: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let c = config;
    let (h, kv, qd, hd) = (c.hidden_size, c.kv_dim(), c.q_dim(), c.head_dim());
    let mut want = vec![
        ("token_embd.weight".to_string(), vec![c.vocab_size, h]),
        ("output_norm.weight".to_string(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        want.push(("output.weight".into(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        want.extend([
            (p("attn_norm"), vec![h]),
            (p("ffn_norm"), vec![h]),
            (p("attn_q"), vec![qd, h]),
            (p("attn_k"), vec![kv, h]),
            (p("attn_v"), vec![kv, h]),
            (p("attn_output"), vec![h, qd]),
            (p("ffn_gate"), vec![c.intermediate_size, h]),
            (p("ffn_up"), vec![c.intermediate_size, h]),
            (p("ffn_down"), vec![h, c.intermediate_size]),
        ]);
        let b = |s: &str| format!("blk.{l}.{s}.bias");
        if c.attention_bias {
            want.extend([
                (b("attn_q"), vec![qd]),
                (b("attn_k"), vec![kv]),
                (b("attn_v"), vec![kv]),
            ]);
            if c.family != Family::Qwen2 {
                want.push((b("attn_output"), vec![h]));
            }
        }
        if c.qk_norm {
            want.extend([(p("attn_q_norm"), vec![hd]), (p("attn_k_norm"), vec![hd])]);
        }
        if c.post_norms {
            want.extend([
                (p("post_attention_norm"), vec![h]),
                (p("post_ffw_norm"), vec![h]),
            ]);
        }
    }
    // a tensor the configuration does not use would be silently ignored: refuse it instead
    for name in names {
        let used = want.iter().any(|(n, _)| n == name)
            || (name == "output.weight" && c.tie_word_embeddings)
            || name == "rope_freqs.weight";
        if !used && name.starts_with("blk.") {
            return Err(ModelError::corrupt(
                path,
                format!(
                    "tensor {name} is not part of a {} model with this configuration",
                    c.family.display_name()
                ),
            ));
        }
    }
    for (name, implied) in want {
        let got = dims(&name)
            .ok_or_else(|| ModelError::corrupt(path, format!("missing tensor {name}")))?;
        if got != implied {
            return Err(ModelError::corrupt(
                path,
                format!("tensor {name} has shape {got:?}, the config implies {implied:?}"),
            ));
        }
    }
    Ok(())
}

/// Hugging Face name <-> GGUF name, for the tensors outside the layers and within each layer.
const TOP_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const LAYER_NAMES: [(&str, &str); 14] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];
/// The norms around the MLP: llama's `post_attention_layernorm` is the MLP's input norm; Gemma has four.
const LLAMA_NORMS: [(&str, &str); 1] = [("post_attention_layernorm.weight", "ffn_norm.weight")];
const GEMMA_NORMS: [(&str, &str); 3] = [
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
    ),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];

/// Renames between the two conventions; `to_gguf` picks the direction.
fn rename(family: Family, name: &str, to_gguf: bool) -> Option<String> {
    let pick = |(hf, gguf): &(&'static str, &'static str)| {
        if to_gguf { (*hf, *gguf) } else { (*gguf, *hf) }
    };
    // Gemma 3's multimodal checkpoints nest the text model: `language_model.model.*` (transformers 4) or
    // `model.language_model.*` (5)
    let nested = if to_gguf {
        name.strip_prefix("language_model.")
            .map(str::to_string)
            .or_else(|| {
                name.strip_prefix("model.language_model.")
                    .map(|rest| format!("model.{rest}"))
            })
    } else {
        None
    };
    let name = nested.as_deref().unwrap_or(name);
    if let Some((_, to)) = TOP_NAMES.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (prefix_from, prefix_to) = if to_gguf {
        ("model.layers.", "blk.")
    } else {
        ("blk.", "model.layers.")
    };
    let (layer, rest) = name.strip_prefix(prefix_from)?.split_once('.')?;
    let norms: &[(&str, &str)] = if family.norm_plus_one() {
        &GEMMA_NORMS
    } else {
        &LLAMA_NORMS
    };
    let (_, to) = LAYER_NAMES
        .iter()
        .chain(norms)
        .map(pick)
        .find(|(from, _)| *from == rest)?;
    Some(format!("{prefix_to}{layer}.{to}"))
}

fn hf_to_gguf_name(family: Family, name: &str) -> Option<String> {
    rename(family, name, true)
}

fn gguf_to_hf_name(family: Family, name: &str) -> Option<String> {
    rename(family, name, false)
}

/// How many heads' worth of rows a tensor holds if rope touches it (q/k weights, biases and norms), so
/// their rows are permuted between Hugging Face and interleaved order; `None` for every other tensor.
fn rope_heads(c: &ModelConfig, gguf_name: &str) -> Option<usize> {
    let stem = gguf_name.rsplit_once('.').map(|(a, _)| a)?;
    let stem = stem.split_once('.').map(|(_, s)| s)?.split_once('.')?.1;
    match stem {
        "attn_q" => Some(c.num_attention_heads),
        "attn_k" => Some(c.num_key_value_heads),
        "attn_q_norm" | "attn_k_norm" => Some(1),
        _ => None,
    }
}

/// A Hugging Face tensor in this crate's layout: rope rows interleaved, Gemma norms as `1 + w`.
fn to_internal(c: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    let t = match rope_heads(c, gguf_name) {
        Some(n) => permute_rows_hf_to_gguf(&t, n)?,
        None => t,
    };
    Ok(
        if c.family.norm_plus_one() && gguf_name.ends_with("norm.weight") {
            (t + 1.0)?
        } else {
            t
        },
    )
}

/// The inverse of [`to_internal`].
fn to_hf(c: &ModelConfig, gguf_name: &str, t: Tensor) -> Result<Tensor> {
    let t = if c.family.norm_plus_one() && gguf_name.ends_with("norm.weight") {
        (t - 1.0)?
    } else {
        t
    };
    Ok(match rope_heads(c, gguf_name) {
        Some(n) => permute_rows_gguf_to_hf(&t, n)?,
        None => t,
    })
}

/// llama.cpp's converter reorders each head's q/k rows from halves `[x0..x(d/2), y0..]` to interleaved pairs
/// `[x0, y0, x1, y1...]` (matching its interleaved rotary embedding). Rows are the first dimension, so this
/// also applies to LoRA B matrices of q/k.
pub fn permute_rows_hf_to_gguf(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(t.reshape((n_head, 2, rows / n_head / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse of [`permute_rows_hf_to_gguf`].
pub fn permute_rows_gguf_to_hf(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(t.reshape((n_head, rows / n_head / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}
