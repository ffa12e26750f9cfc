//! `openledger migrate`: apply pending migrations (every other subcommand also does this at start-up).

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {}

pub async fn run(global: &GlobalArgs, _args: MigrateArgs) -> anyhow::Result<()> {
    let db = super::db::open(global).await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await?;
    if global.json {
        println!("{}", serde_json::json!({ "migrations_applied": applied }));
    } else {
        println!("database is at migration {applied}");
    }
    Ok(())
}
