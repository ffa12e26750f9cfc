//! `openledger attribution`: show an inference's attribution record, or recompute it from the artifacts
//! and say whether it matches.

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::attribution::{self, store, verify};

#[derive(Debug, clap::Args)]
pub struct AttributionArgs {
    #[command(subcommand)]
    pub command: AttributionCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AttributionCommand {
    /// Print the stored record of an inference (JSON).
    Show { inference_id: String },
    /// Recompute the attribution of an inference from its tokens and the model's adapter, manifest, span
    /// index and gradient store, with the parameters the record names; exit non-zero unless it matches.
    Verify { inference_id: String },
}

pub async fn run(global: &GlobalArgs, args: AttributionArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    match args.command {
        AttributionCommand::Show { inference_id } => {
            let st = store::get(&db.pool, &inference_id)
                .await
                .context("reading the attribution")?
                .with_context(|| format!("inference {inference_id} has no attribution record"))?;
            let mut v = attribution::shown(
                st.record.unwrap_or_default(),
                &st.status,
                st.record_hash.as_deref(),
            );
            v["error"] = serde_json::json!(st.error);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AttributionCommand::Verify { inference_id } => {
            let v = verify::verify(&db.pool, &inference_id).await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&v.json())?);
            } else if v.matches {
                println!(
                    "{inference_id}: matches ({} record {})",
                    v.status,
                    v.stored_hash.as_deref().unwrap_or("-")
                );
            } else {
                println!("{inference_id}: DOES NOT MATCH");
                for d in &v.differences {
                    println!("  {d}");
                }
            }
            if !v.matches {
                bail!(
                    "the attribution of {inference_id} does not match its recomputation ({} differences)",
                    v.differences.len()
                );
            }
        }
    }
    Ok(())
}
