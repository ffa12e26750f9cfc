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
    /// Register a GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json) in place.
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
                "{:<40} {:<11} {:>6} MB  layers {:>3}  ctx {:>6}  {}",
                m.id,
                m.format,
                m.size_bytes / 1_000_000,
                m.config["num_hidden_layers"],
                m.config["max_position_embeddings"],
                m.hash
            );
        }
    }
    Ok(())
}
