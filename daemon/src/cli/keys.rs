//! `openledger keys`: operator API keys (stored hashed; the secret is printed once, at creation).

use std::time::Duration;

use alloy::primitives::Address;

use super::GlobalArgs;
use crate::auth;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key acting as ADDRESS; prints the secret once.
    Create {
        /// The address the key acts as (owns the jobs and uploads it creates).
        #[arg(long)]
        address: Address,
        /// A note for `keys list`.
        #[arg(long, default_value = "")]
        label: String,
        /// Operator key: may see and manage every address's jobs.
        #[arg(long)]
        admin: bool,
        /// Expire after this many days (default: never).
        #[arg(long)]
        ttl_days: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id; it stops working at once.
    Revoke { id: i64 },
}

pub async fn run(global: &GlobalArgs, args: KeysArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    match args.command {
        KeysCommand::Create {
            address,
            label,
            admin,
            ttl_days,
        } => {
            let ttl = ttl_days.map(|d| Duration::from_secs(d * 86_400));
            let k = auth::create_api_key(&db.pool, address, &label, admin, ttl).await?;
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": k.id, "key": k.token, "address": format!("{address:#x}"), "admin": admin })
                );
            } else {
                eprintln!(
                    "created key {} for {address:#x}{}; it is shown only now:",
                    k.id,
                    if admin { " (operator)" } else { "" }
                );
                println!("{}", k.token);
            }
        }
        KeysCommand::List => {
            let keys = auth::list_api_keys(&db.pool).await?;
            if global.json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                println!(
                    "{:>5}  {:<42}  {:<5}  {:<8}  label",
                    "id", "address", "admin", "state"
                );
                for k in keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:>5}  {:<42}  {:<5}  {:<8}  {}",
                        k.id, k.address, k.admin, state, k.label
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if !auth::revoke(&db.pool, id).await? {
                anyhow::bail!("no live key with id {id}");
            }
            if global.json {
                println!("{}", serde_json::json!({ "revoked": id }));
            } else {
                println!("revoked key {id}");
            }
        }
    }
    Ok(())
}
