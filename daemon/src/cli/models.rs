//! `openledger models`: the base models training can use (installed under `<data dir>/models`).

use std::path::PathBuf;

use anyhow::Context;
use openledger_model::export::{DEFAULT_GGUF_DTYPE, DEFAULT_HF_DTYPE};

use super::GlobalArgs;
use crate::exports::{self, ExportKind};

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Scan `<data dir>/models` and list the registered base models with their hashes.
    List,
    /// Register a GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json) in place:
    /// Llama 2/3, SmolLM, Mistral, Qwen 2/2.5/3 and Gemma 2/3 (and DeepSeek's Llama and Qwen distills).
    Add { path: PathBuf },
    /// Export a trained model for other runtimes, into `--out`: `adapter.gguf` (a GGUF LoRA for llama.cpp's
    /// `--lora` and Ollama's `ADAPTER`), `model.gguf` (merged; GGUF base models), `model-hf/` (merged, a
    /// Hugging Face folder) and an Ollama `Modelfile`.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The training job that made the model (`ft-<id>` on the API).
    pub job_id: i64,
    /// The folder to write into (created if absent; files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// What to export (repeat for several); every export the model offers when absent.
    #[arg(long = "format", value_enum)]
    pub formats: Vec<ExportKind>,
    /// The merged GGUF's weights: f16, f32 or q8_0.
    #[arg(long, default_value = DEFAULT_GGUF_DTYPE.name())]
    pub gguf_dtype: String,
    /// The merged Hugging Face folder's weights: bf16, f16 or f32.
    #[arg(long, default_value = DEFAULT_HF_DTYPE.name())]
    pub hf_dtype: String,
}

pub async fn run(global: &GlobalArgs, args: ModelsArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    let models = match args.command {
        ModelsCommand::List => {
            crate::models::scan_models_dir(&db.pool, &global.data_dir().join("models")).await?;
            crate::models::base_models(&db.pool).await?
        }
        ModelsCommand::Add { path } => {
            vec![crate::models::register_base_model(&db.pool, &path).await?]
        }
        ModelsCommand::Export(a) => return export(global, &db.pool, a).await,
    };
    if global.json {
        println!("{}", serde_json::to_string(&models)?);
    } else {
        for m in models {
            println!(
                "{:<40} {:<8} {:>6} {:<11} {:>6} MB  layers {:>3}  ctx {:>6}  {}",
                m.id,
                m.family,
                openledger_model::config::human_count(m.parameters.max(0) as u64),
                m.format,
                m.size_bytes / 1_000_000,
                m.config["num_hidden_layers"],
                m.context_length,
                m.hash
            );
        }
    }
    Ok(())
}

async fn export(global: &GlobalArgs, pool: &sqlx::PgPool, a: ExportArgs) -> anyhow::Result<()> {
    let model = crate::models::trained_model(pool, a.job_id)
        .await?
        .with_context(|| format!("no trained model from job {}", a.job_id))?;
    let src = exports::source(pool, &model).await?;
    let kinds: Vec<ExportKind> = if a.formats.is_empty() {
        ExportKind::ALL
            .into_iter()
            .filter(|k| src.offers(*k))
            .collect()
    } else {
        a.formats.clone()
    };
    let mut written = Vec::new();
    for kind in kinds {
        let dtype = match kind {
            ExportKind::Gguf => kind.dtype(Some(&a.gguf_dtype))?,
            ExportKind::Hf => kind.dtype(Some(&a.hf_dtype))?,
            _ => None,
        };
        let (src, out) = (src.clone(), a.out.clone());
        tracing::info!(model = %src.name, export = kind.file_name(), "exporting");
        let path =
            tokio::task::spawn_blocking(move || exports::write(&src, kind, dtype, &out)).await??;
        written.push(serde_json::json!({
            "format": kind.file_name(),
            "dtype": dtype.map(|d| d.name()),
            "path": path.display().to_string(),
        }));
        if !global.json {
            println!("{}", path.display());
        }
    }
    if global.json {
        println!("{}", serde_json::Value::Array(written));
    }
    Ok(())
}
