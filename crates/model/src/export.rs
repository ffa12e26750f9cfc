//! Exports of a trained adapter for the runtimes people already use:
//! - the adapter as a **GGUF LoRA** (`general.type = "adapter"`, `adapter.type = "lora"`,
//!   `adapter.lora.alpha`, tensors `blk.N.<stem>.weight.lora_a` / `.lora_b`): what llama.cpp's `--lora`
//!   and Ollama's `ADAPTER` load next to the base model's GGUF;
//! - the **merged model** `W + (alpha / r)·B·A`: a GGUF (the base GGUF's metadata and untouched tensors as
//!   they are, the adapted tensors re-encoded as f32, f16 or q8_0) and a Hugging Face folder;
//! - an Ollama **Modelfile** naming them, with the chat template in Ollama's Go template syntax where the
//!   model's Jinja template is one of the well-known conventions.
//!
//! Row order: this crate keeps q/k rows interleaved (llama.cpp's `llama` layout). GGUF files of the families
//! llama.cpp keeps in Hugging Face order (Qwen, Gemma) get their q/k LoRA B rows and merged q/k weights
//! back in that order, so each file is what llama.cpp's own converters write for that architecture.

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, Proj};
use crate::error::{ModelError, Result};
use crate::lora::Lora;
use crate::tokenizer::TextTokenizer;
use crate::weights::{BaseModel, Weight, permute_rows_gguf_to_hf};

/// The element type of the tensors an export re-encodes (merged weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportDType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

/// The merged GGUF's default: llama.cpp's converter writes f16 (quantize it further with `llama-quantize`).
pub const DEFAULT_GGUF_DTYPE: ExportDType = ExportDType::F16;
/// The merged Hugging Face folder's default: what the families' own checkpoints hold.
pub const DEFAULT_HF_DTYPE: ExportDType = ExportDType::Bf16;

impl ExportDType {
    pub const ALL: [ExportDType; 4] = [
        ExportDType::F32,
        ExportDType::F16,
        ExportDType::Bf16,
        ExportDType::Q8_0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExportDType::F32 => "f32",
            ExportDType::F16 => "f16",
            ExportDType::Bf16 => "bf16",
            ExportDType::Q8_0 => "q8_0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
    }

    /// As a GGUF tensor type (bf16 is not one candle writes).
    pub fn ggml(self) -> Result<GgmlDType> {
        match self {
            ExportDType::F32 => Ok(GgmlDType::F32),
            ExportDType::F16 => Ok(GgmlDType::F16),
            ExportDType::Q8_0 => Ok(GgmlDType::Q8_0),
            ExportDType::Bf16 => Err(ModelError::invalid(
                "dtype",
                "a merged GGUF is written as f32, f16 or q8_0",
            )),
        }
    }

    /// As a safetensors element type.
    pub fn dense(self) -> Result<DType> {
        match self {
            ExportDType::F32 => Ok(DType::F32),
            ExportDType::F16 => Ok(DType::F16),
            ExportDType::Bf16 => Ok(DType::BF16),
            ExportDType::Q8_0 => Err(ModelError::invalid(
                "dtype",
                "a Hugging Face folder is written as f32, f16 or bf16",
            )),
        }
    }
}

/// `blk.<layer>.<stem>.weight` → `(layer, projection)`.
fn adapted(name: &str) -> Option<(usize, Proj)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, stem) = rest.split_once('.')?;
    let p = Proj::ALL.into_iter().find(|p| p.gguf() == stem)?;
    Some((layer.parse().ok()?, p))
}

/// Heads whose q/k rows a GGUF of this adapter's family keeps in Hugging Face order (`None`: the file keeps
/// this crate's interleaved order, or the projection is not q/k).
fn hf_order_heads(lora: &Lora, p: Proj) -> Option<usize> {
    if !lora.model.family.gguf_rows_in_hf_order() {
        return None;
    }
    match p {
        Proj::Q => Some(lora.model.num_attention_heads),
        Proj::K => Some(lora.model.num_key_value_heads),
        _ => None,
    }
}

fn check_fits(base: &ModelConfig, lora: &Lora) -> Result<()> {
    let (a, b) = (base, &lora.model);
    if a.family != b.family
        || a.num_hidden_layers != b.num_hidden_layers
        || a.hidden_size != b.hidden_size
        || a.q_dim() != b.q_dim()
        || a.kv_dim() != b.kv_dim()
        || a.intermediate_size != b.intermediate_size
    {
        return Err(ModelError::invalid(
            "adapter",
            format!(
                "trained for a {} model of {} layers, hidden {}; the base is a {} model of {} layers, hidden {}",
                b.family.display_name(),
                b.num_hidden_layers,
                b.hidden_size,
                a.family.display_name(),
                a.num_hidden_layers,
                a.hidden_size
            ),
        ));
    }
    Ok(())
}

/// The adapter as GGUF tensors (`blk.N.<stem>.weight.lora_a` `[rank, in]`, `.lora_b` `[out, rank]`, f32)
/// and its metadata, in layer then projection order.
pub fn gguf_lora(lora: &Lora, name: &str) -> Result<GgufFile> {
    let mut tensors = Vec::new();
    for layer in 0..lora.model.num_hidden_layers {
        for &p in &lora.config.targets {
            let Some((a, b, _)) = lora.get(layer, p) else {
                continue;
            };
            let b = match hf_order_heads(lora, p) {
                Some(n) => permute_rows_gguf_to_hf(b, n)?,
                None => b.clone(),
            };
            let stem = format!("blk.{layer}.{}.weight", p.gguf());
            let cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
            tensors.push((
                format!("{stem}.lora_a"),
                QTensor::quantize(&cpu(a)?, GgmlDType::F32)?,
            ));
            tensors.push((
                format!("{stem}.lora_b"),
                QTensor::quantize(&cpu(&b)?, GgmlDType::F32)?,
            ));
        }
    }
    use gguf_file::Value;
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(lora.model.family.gguf_arch().into()),
        ),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(name.into())),
        ("adapter.type".into(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".into(),
            Value::F32(lora.config.alpha as f32),
        ),
    ];
    Ok(GgufFile { metadata, tensors })
}

/// A GGUF file's contents, ready to write.
#[derive(Debug)]
pub struct GgufFile {
    pub metadata: Vec<(String, gguf_file::Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

impl GgufFile {
    pub fn write_to<W: Write + Seek>(&self, w: &mut W) -> Result<()> {
        let md: Vec<(&str, &gguf_file::Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(w, &md, &ts)?;
        Ok(())
    }

    /// Written to `path` through a temporary file beside it, renamed into place once complete.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomically(path, |f| {
            let mut w = BufWriter::new(f);
            self.write_to(&mut w)?;
            w.flush().map_err(|e| ModelError::io(path, e))?;
            Ok(())
        })
    }
}

/// Runs `fill` on a temporary file next to `path`, then renames it to `path`: a reader never sees half a
/// file, and a failure leaves nothing behind.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ModelError::io(dir, e))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| ModelError::io(path, e))?;
    // temporary files are private (0600); an export is an ordinary file
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ModelError::io(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| ModelError::io(path, e.error))?;
    Ok(())
}

/// Runs `fill` on a temporary folder next to `path`, then puts it at `path` (replacing a folder there):
/// the folder form of [`write_atomically`].
pub fn write_dir_atomically(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".export")
        .tempdir_in(dir)
        .map_err(|e| ModelError::io(dir, e))?;
    fill(tmp.path())?;
    // temporary folders are private (0700); an export is an ordinary folder
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ModelError::io(path, e))?;
    }
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| ModelError::io(path, e))?;
    }
    std::fs::rename(tmp.path(), path).map_err(|e| ModelError::io(path, e))?;
    // the folder now lives under its own name: nothing left for the guard to delete
    let _ = tmp.keep();
    Ok(())
}

/// The base model's GGUF with the adapter merged in: every metadata key and every tensor the adapter does
/// not touch exactly as in the base file (quantized blocks copied), each adapted weight dequantized, summed
/// with `(alpha / r)·B·A` and written as `dtype`. Needs a GGUF base.
pub fn merged_gguf(
    base: &BaseModel,
    lora: &Lora,
    dtype: ExportDType,
    name: &str,
) -> Result<GgufFile> {
    merged_gguf_file(&base.path, &base.config, lora, dtype, name)
}

/// [`merged_gguf`] from the base's file and configuration (what `weights::inspect` reads), without loading
/// the base model first: the file is read once, tensor by tensor.
pub fn merged_gguf_file(
    path: &Path,
    config: &ModelConfig,
    lora: &Lora,
    dtype: ExportDType,
    name: &str,
) -> Result<GgufFile> {
    check_fits(config, lora)?;
    if path.is_dir() {
        return Err(ModelError::invalid(
            "export",
            "a merged GGUF is written from a GGUF base model; this base is a Hugging Face folder (export \
             the merged Hugging Face folder and convert it with llama.cpp's convert_hf_to_gguf.py)",
        ));
    }
    let ggml = dtype.ggml()?;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f).map_err(|e| ModelError::corrupt(path, e))?;
    let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = ct.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    let mut tensors = Vec::with_capacity(infos.len());
    for (tname, _) in infos {
        let q = ct
            .tensor(&mut f, tname, &Device::Cpu)
            .map_err(|e| ModelError::corrupt(path, format!("tensor {tname}: {e}")))?;
        let q = match adapted(tname).and_then(|(l, p)| lora.delta(l, p).map(|d| (d, p))) {
            None => q,
            Some((delta, p)) => {
                let delta = delta?.to_device(&Device::Cpu)?;
                let delta = match hf_order_heads(lora, p) {
                    Some(n) => permute_rows_gguf_to_hf(&delta, n)?,
                    None => delta,
                };
                let w = q.dequantize(&Device::Cpu)?;
                if w.dims() != delta.dims() {
                    return Err(ModelError::corrupt(
                        path,
                        format!(
                            "tensor {tname} has shape {:?}, the adapter's update {:?}",
                            w.dims(),
                            delta.dims()
                        ),
                    ));
                }
                QTensor::quantize(&(w + delta)?, ggml).map_err(|e| {
                    ModelError::invalid(
                        "dtype",
                        format!("{tname} cannot be written as {}: {e}", dtype.name()),
                    )
                })?
            }
        };
        tensors.push((tname.clone(), q));
    }
    let mut keys: Vec<&String> = ct.metadata.keys().collect();
    keys.sort();
    let mut metadata = Vec::with_capacity(keys.len() + 1);
    for k in keys {
        // candle writes 32-byte alignment (GGUF's default); the base's own alignment key would contradict it
        if k == "general.alignment" || k == "general.name" {
            continue;
        }
        metadata.push((k.clone(), ct.metadata[k].clone()));
    }
    metadata.push((
        "general.name".to_string(),
        gguf_file::Value::String(name.into()),
    ));
    Ok(GgufFile { metadata, tensors })
}

impl Lora {
    /// The update `(alpha / r)·B·A` `[out, in]` of one projection, in this crate's row order (`None`: the
    /// adapter does not touch it).
    pub fn delta(&self, layer: usize, p: Proj) -> Option<Result<Tensor>> {
        let (a, b, scale) = self.get(layer, p)?;
        Some((|| Ok((b.matmul(a)? * scale)?))())
    }
}

impl BaseModel {
    /// This model with the adapter merged into its weights (the adapted ones become f32).
    pub fn merged(&self, lora: &Lora) -> Result<BaseModel> {
        check_fits(&self.config, lora)?;
        let mut out = self.clone();
        for (name, w) in out.tensors.iter_mut() {
            let Some((l, p)) = adapted(name) else {
                continue;
            };
            let Some(delta) = lora.delta(l, p) else {
                continue;
            };
            let dense = w.dense(&Device::Cpu)?;
            *w = Weight::Dense((dense + delta?.to_device(&Device::Cpu)?)?);
        }
        Ok(out)
    }
}

/// The tokenizer of a base model file (GGUF) or folder, without its weights.
pub fn base_tokenizer(path: &Path) -> Result<TextTokenizer> {
    if path.is_dir() {
        return TextTokenizer::from_hf_dir(path);
    }
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = gguf_file::Content::read(&mut f).map_err(|e| ModelError::corrupt(path, e))?;
    TextTokenizer::from_gguf(&ct)
}

/// The chat conventions whose Ollama template is written out (others are left to Ollama, which reads the
/// GGUF's own template). Each renders what the family's Jinja template renders (`scripts/export-check.sh`
/// compares them in Go's text/template): Gemma and Mistral have no system turn, and fold a system message
/// into the first (Gemma) or last (Mistral) user turn. Llama 3.1-style templates, which write today's date
/// into a system block, are left to Ollama's own Llama 3.1 template.
fn ollama_template(jinja: &str) -> Option<&'static str> {
    if jinja.contains("<|im_start|>") {
        Some(
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        )
    } else if jinja.contains("<|start_header_id|>") && !jinja.contains("Cutting Knowledge Date") {
        Some(
            "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        )
    } else if jinja.contains("<start_of_turn>") {
        Some(concat!(
            "{{- $sys := \"\" }}{{- range .Messages }}{{ if eq .Role \"system\" }}{{ $sys = .Content }}{{ else }}",
            "<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n",
            "{{ if $sys }}{{ $sys }}\n\n{{ $sys = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}",
            "<start_of_turn>model\n",
        ))
    } else if jinja.contains("[INST]") {
        Some(concat!(
            "{{- $sys := \"\" }}{{- $last := 0 }}{{- range $i, $m := .Messages }}",
            "{{ if eq $m.Role \"system\" }}{{ $sys = $m.Content }}{{ end }}",
            "{{ if eq $m.Role \"user\" }}{{ $last = $i }}{{ end }}{{ end }}",
            "{{- range $i, $m := .Messages }}{{ if eq $m.Role \"user\" }}[INST] ",
            "{{ if and $sys (eq $i $last) }}{{ $sys }}\n\n{{ end }}{{ $m.Content }}[/INST]",
            "{{ else if eq $m.Role \"assistant\" }} {{ $m.Content }}</s>{{ end }}{{ end }}",
        ))
    } else {
        None
    }
}

/// The system prompt a ChatML template writes when a conversation brings none (SmolLM2's "You are a
/// helpful AI assistant named SmolLM...", Qwen's "You are Qwen..."), found by rendering a conversation of one
/// user message: the Modelfile's `SYSTEM`, which Ollama puts first when a request has no system message,
/// so Ollama's prompt is the one the adapter was trained and is served with.
fn default_system(tokenizer: &TextTokenizer) -> Option<String> {
    const PROBE: &str = "\u{1}probe\u{1}";
    let text = tokenizer.render_chat(&[("user", PROBE)], false).ok()?;
    let head = text.split(PROBE).next()?;
    let system = head
        .split_once("<|im_start|>system\n")?
        .1
        .split_once("<|im_end|>")?
        .0;
    (!system.is_empty() && !system.contains("\"\"\"")).then(|| system.to_string())
}

/// What an Ollama Modelfile names: the model (`FROM`), optionally an adapter, and where they came from.
#[derive(Debug, Clone)]
pub struct ModelfileSpec<'a> {
    /// `FROM`: a GGUF file or a Hugging Face folder, relative to the Modelfile.
    pub from: &'a str,
    /// `ADAPTER`: a GGUF LoRA, relative to the Modelfile (`None` when `from` is merged already).
    pub adapter: Option<&'a str>,
    /// Comment lines at the top (provenance, the other way to build it).
    pub comments: Vec<String>,
}

/// An Ollama `Modelfile`: `FROM`, `ADAPTER`, the chat template (Go template syntax) for ChatML, Llama 3,
/// Gemma and Mistral templates (with ChatML's default system prompt as `SYSTEM`), and a `PARAMETER stop`
/// per token that ends a generation.
pub fn modelfile(tokenizer: &TextTokenizer, spec: &ModelfileSpec<'_>) -> String {
    let mut out = String::new();
    for c in &spec.comments {
        for line in c.lines() {
            out.push_str(&format!("# {line}\n"));
        }
    }
    out.push_str(&format!("FROM {}\n", spec.from));
    if let Some(a) = spec.adapter {
        out.push_str(&format!("ADAPTER {a}\n"));
    }
    match ollama_template(tokenizer.chat_template()) {
        Some(t) => {
            out.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
            if t.contains("<|im_start|>")
                && let Some(system) = default_system(tokenizer)
            {
                out.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
            }
        }
        None => out.push_str(
            "# no TEMPLATE: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template)\n",
        ),
    }
    for id in tokenizer.stop_ids() {
        if let Ok(text) = tokenizer.decode(&[id], false)
            && !text.is_empty()
            && !text.contains('"')
        {
            out.push_str(&format!("PARAMETER stop \"{text}\"\n"));
        }
    }
    out
}
