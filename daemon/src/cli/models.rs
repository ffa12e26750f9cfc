//! `openledger models`: the base models training can use (installed under `<data dir>/models`).

use std::path::PathBuf;

use super::GlobalArgs;

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
