//! Trained models exported for the runtimes people already use: the adapter as a GGUF LoRA (llama.cpp's
//! `--lora`, Ollama's `ADAPTER`), the merged model as a GGUF and as a Hugging Face folder, and an Ollama
//! `Modelfile` naming them. The domain behind `GET /api/models/{job_id}/export/{name}` and
//! `openledger models export`; the file formats are `openledger_model::export`'s.

use std::path::{Path, PathBuf};

use openledger_model::export::{self, DEFAULT_GGUF_DTYPE, DEFAULT_HF_DTYPE, ExportDType};
use openledger_model::weights::{ModelFormat, inspect};
use openledger_model::{BaseModel, Device, Lora, ModelError};
use sqlx::PgPool;

use crate::models::{self, TrainedModel};

/// One kind of export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ExportKind {
    /// The adapter as a GGUF LoRA: `adapter.gguf`.
    GgufLora,
    /// The merged model as a GGUF: `model.gguf` (GGUF base models).
    Gguf,
    /// The merged model as a Hugging Face folder: `model-hf/`.
    Hf,
    /// An Ollama Modelfile: `Modelfile`.
    Modelfile,
}

impl ExportKind {
    pub const ALL: [ExportKind; 4] = [
        ExportKind::GgufLora,
        ExportKind::Gguf,
        ExportKind::Hf,
        ExportKind::Modelfile,
    ];

    /// The file (or folder) it is written as; the Modelfile refers to the others by these names.
    pub fn file_name(self) -> &'static str {
        match self {
            ExportKind::GgufLora => "adapter.gguf",
            ExportKind::Gguf => "model.gguf",
            ExportKind::Hf => "model-hf",
            ExportKind::Modelfile => "Modelfile",
        }
    }

    /// The name it is downloaded under (the folder as a zip archive).
    pub fn download_name(self) -> &'static str {
        match self {
            ExportKind::Hf => "model-hf.zip",
            other => other.file_name(),
        }
    }

    pub fn from_download_name(name: &str) -> Option<ExportKind> {
        Self::ALL.into_iter().find(|k| k.download_name() == name)
    }

    /// The element types it can be written as, the default first (empty: it has no dtype).
    pub fn dtypes(self) -> &'static [ExportDType] {
        match self {
            ExportKind::Gguf => &[DEFAULT_GGUF_DTYPE, ExportDType::F32, ExportDType::Q8_0],
            ExportKind::Hf => &[DEFAULT_HF_DTYPE, ExportDType::F16, ExportDType::F32],
            ExportKind::GgufLora | ExportKind::Modelfile => &[],
        }
    }

    /// `requested` checked against what this kind can be written as (`None` for kinds without one).
    pub fn dtype(self, requested: Option<&str>) -> Result<Option<ExportDType>, ExportError> {
        let allowed = self.dtypes();
        let Some(req) = requested else {
            return Ok(allowed.first().copied());
        };
        let names = || {
            allowed
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if allowed.is_empty() {
            return Err(ExportError::Invalid(format!(
                "{} has no dtype (it is written as it is)",
                self.download_name()
            )));
        }
        match ExportDType::parse(req).filter(|d| allowed.contains(d)) {
            Some(d) => Ok(Some(d)),
            None => Err(ExportError::Invalid(format!(
                "dtype {req:?}: {} is written as one of {}",
                self.download_name(),
                names()
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request asks for something no export is (an unknown dtype).
    #[error("{0}")]
    Invalid(String),
    /// The export cannot be made on this daemon (its base model is not installed, a merged GGUF of a
    /// Hugging Face base).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::Io(path.display().to_string(), e)
}

/// What an export is made from: the trained adapter's folder and its base model's file.
#[derive(Debug, Clone)]
pub struct Source {
    /// `ft-<job id>`: the model's name on this daemon, and in the exports' metadata.
    pub name: String,
    pub adapter_dir: PathBuf,
    pub base_path: PathBuf,
    pub base_hash: String,
    pub base_format: ModelFormat,
    /// The base model's family, as `/api/base-models` names it.
    pub base_family: String,
}

/// The export source of a trained model, its base model looked up by hash.
pub async fn source(pool: &PgPool, model: &TrainedModel) -> Result<Source, ExportError> {
    let base = models::base_model(pool, &model.base_model_hash)
        .await?
        .filter(|b| b.hash == model.base_model_hash)
        .ok_or_else(|| {
            ExportError::Unavailable(format!(
                "the base model of {} ({}, {}) is not installed on this daemon",
                models::adapter_name(model.job_id),
                model.base_model,
                model.base_model_hash
            ))
        })?;
    Ok(Source {
        name: models::adapter_name(model.job_id),
        adapter_dir: PathBuf::from(&model.dir),
        base_format: if base.format == "gguf" {
            ModelFormat::Gguf
        } else {
            ModelFormat::Safetensors
        },
        base_path: PathBuf::from(base.path),
        base_hash: base.hash,
        base_family: base.family,
    })
}

impl Source {
    fn adapter(&self, base: &openledger_model::ModelConfig) -> Result<Lora, ExportError> {
        Ok(Lora::load_peft(&self.adapter_dir, base, &Device::Cpu)?)
    }

    fn base(&self) -> Result<BaseModel, ExportError> {
        Ok(BaseModel::load(
            &self.base_path,
            &Device::Cpu,
            Some(self.base_hash.clone()),
        )?)
    }

    /// Whether this kind can be made from this source (a merged GGUF needs a GGUF base).
    pub fn offers(&self, kind: ExportKind) -> bool {
        kind != ExportKind::Gguf || self.base_format == ModelFormat::Gguf
    }

    fn base_file_name(&self) -> String {
        self.base_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("base.gguf")
            .to_string()
    }
}

/// Writes one export into `out_dir` under [`ExportKind::file_name`], replacing what was there only once the
/// new file is complete. Blocking (merging reads and writes the whole model): run it on a blocking thread.
pub fn write(
    src: &Source,
    kind: ExportKind,
    dtype: Option<ExportDType>,
    out_dir: &Path,
) -> Result<PathBuf, ExportError> {
    if !src.offers(kind) {
        return Err(ExportError::Unavailable(format!(
            "model.gguf is merged from a GGUF base model; the base of {} is a Hugging Face folder: export \
             model-hf and convert it with llama.cpp's convert_hf_to_gguf.py",
            src.name
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let out = out_dir.join(kind.file_name());
    match kind {
        ExportKind::GgufLora => {
            let (_, cfg) = inspect(&src.base_path)?;
            let lora = src.adapter(&cfg)?;
            export::gguf_lora(&lora, &src.name)?.write(&out)?;
        }
        ExportKind::Gguf => {
            let (_, cfg) = inspect(&src.base_path)?;
            let lora = src.adapter(&cfg)?;
            let dtype = dtype.unwrap_or(DEFAULT_GGUF_DTYPE);
            export::merged_gguf_file(&src.base_path, &cfg, &lora, dtype, &src.name)?.write(&out)?;
        }
        ExportKind::Hf => {
            let base = src.base()?;
            let lora = src.adapter(&base.config)?;
            let merged = base.merged(&lora)?;
            drop(base);
            let dtype = dtype.unwrap_or(DEFAULT_HF_DTYPE).dense()?;
            export::write_dir_atomically(&out, |dir| merged.save_hf_dir_as(dir, dtype))?;
        }
        ExportKind::Modelfile => {
            let tokenizer = export::base_tokenizer(&src.base_path)?;
            let text = export::modelfile(&tokenizer, &modelfile_spec(src));
            export::write_atomically(&out, |f| {
                use std::io::Write;
                f.write_all(text.as_bytes())
                    .map_err(|e| ModelError::io(&out, e))
            })?;
        }
    }
    Ok(out)
}

fn modelfile_spec(src: &Source) -> export::ModelfileSpec<'_> {
    let mut comments = vec![
        format!(
            "{}: a LoRA adapter of {} ({} base model {}), exported by OpenLedger.",
            src.name,
            src.base_file_name(),
            src.base_family,
            src.base_hash
        ),
        format!("Build it with: ollama create {} -f Modelfile", src.name),
    ];
    if src.base_format == ModelFormat::Gguf {
        comments.push(format!(
            "FROM is the merged model (model.gguf). Or keep the base and the adapter apart:\n  FROM ./{}\n  ADAPTER ./adapter.gguf",
            src.base_file_name()
        ));
        export::ModelfileSpec {
            from: "./model.gguf",
            adapter: None,
            comments,
        }
    } else {
        comments.push(
            "FROM is the merged model as a Hugging Face folder (model-hf, unzipped next to this file)."
                .into(),
        );
        export::ModelfileSpec {
            from: "./model-hf",
            adapter: None,
            comments,
        }
    }
}

/// Zips a folder (stored, not compressed: weights do not compress) into `zip_path`, the folder's name as
/// the archive's top directory; written beside `zip_path` and renamed into place once complete.
pub fn zip_dir(dir: &Path, zip_path: &Path) -> Result<(), ExportError> {
    let top = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    export::write_atomically(zip_path, |f| {
        let mut z = zip::ZipWriter::new(std::io::BufWriter::new(f));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for p in &entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            z.start_file(format!("{top}/{name}"), opts)
                .map_err(|e| ModelError::corrupt(zip_path, e))?;
            let mut src = std::fs::File::open(p).map_err(|e| ModelError::io(p, e))?;
            std::io::copy(&mut src, &mut z).map_err(|e| ModelError::io(zip_path, e))?;
        }
        let mut w = z.finish().map_err(|e| ModelError::corrupt(zip_path, e))?;
        std::io::Write::flush(&mut w).map_err(|e| ModelError::io(zip_path, e))?;
        Ok(())
    })?;
    Ok(())
}

/// One export at a time per process: merging holds a whole model in memory.
static EXPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The export as the API serves it, made once and kept in `<model folder>/exports/<dtype>/`: the file to
/// stream. The work runs on its own task, so a client that gives up does not waste it (the next request
/// finds the file).
pub async fn cached(
    src: Source,
    kind: ExportKind,
    dtype: Option<ExportDType>,
) -> Result<PathBuf, ExportError> {
    let dir = src
        .adapter_dir
        .join("exports")
        .join(dtype.map_or("default", |d| d.name()));
    let file = dir.join(kind.download_name());
    let task = tokio::spawn(async move {
        let _one = EXPORTING.lock().await;
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Ok(file);
        }
        tokio::task::spawn_blocking(move || {
            let written = write(&src, kind, dtype, &dir)?;
            if kind == ExportKind::Hf {
                zip_dir(&written, &file)?;
                std::fs::remove_dir_all(&written).map_err(io(&written))?;
            }
            Ok(file)
        })
        .await
        .map_err(|e| ExportError::Io("export task".into(), std::io::Error::other(e)))?
    });
    task.await
        .map_err(|e| ExportError::Io("export task".into(), std::io::Error::other(e)))?
}
