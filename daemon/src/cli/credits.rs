//! `openledger credits`: inference credit (OPEN wei) that sponsored inferences of an address draw on
//! when `serve` does not sponsor every caller.

use alloy::primitives::{Address, U256};
use anyhow::Context;

use super::GlobalArgs;
use crate::inference::credits;

#[derive(Debug, clap::Args)]
pub struct CreditsArgs {
    #[command(subcommand)]
    pub command: CreditsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CreditsCommand {
    /// Add AMOUNT wei of credit to ADDRESS.
    Grant {
        address: Address,
        /// OPEN wei (a whole number; e.g. 1000000000000000000 is one OPEN).
        amount: U256,
        /// Kept in the ledger.
        #[arg(long)]
        note: Option<String>,
    },
    /// Take AMOUNT wei of credit back (refused beyond the balance).
    Revoke {
        address: Address,
        amount: U256,
        #[arg(long)]
        note: Option<String>,
    },
    /// The balance and latest ledger entries of ADDRESS.
    Show {
        address: Address,
        /// Ledger entries to print, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

pub async fn run(global: &GlobalArgs, args: CreditsArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    let address = match args.command {
        CreditsCommand::Grant {
            address,
            amount,
            note,
        } => {
            let b = credits::grant(&db.pool, address, amount, note.as_deref())
                .await
                .context("granting credit")?;
            eprintln!("granted {amount} wei to {address:#x}: balance {b} wei");
            address
        }
        CreditsCommand::Revoke {
            address,
            amount,
            note,
        } => {
            let b = credits::revoke(&db.pool, address, amount, note.as_deref())
                .await
                .context("revoking credit")?;
            eprintln!("revoked {amount} wei from {address:#x}: balance {b} wei");
            address
        }
        CreditsCommand::Show { address, limit } => {
            let c = credits::show(&db.pool, address, limit.clamp(1, 10_000)).await?;
            if global.json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!("{}  balance {} wei", c.address, c.balance);
                for e in c.ledger {
                    println!(
                        "{:>8}  {:<9}  {:>28}  {}  {}",
                        e.id,
                        e.reason,
                        e.delta,
                        e.inference_id
                            .as_deref()
                            .or(e.note.as_deref())
                            .unwrap_or(""),
                        e.created_at
                    );
                }
            }
            return Ok(());
        }
    };
    if global.json {
        println!(
            "{}",
            serde_json::to_string(&credits::show(&db.pool, address, 1).await?)?
        );
    }
    Ok(())
}
