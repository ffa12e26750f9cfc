//! The database every subcommand opens: `--database-url`, or the private cluster under `--data-dir`.

use std::time::Duration;

use anyhow::Context;
use openledger_db::EmbeddedPostgres;
use sqlx::PgPool;

use super::GlobalArgs;

/// An open, migrated database; keeps the private cluster (if any) running while alive.
#[derive(Debug)]
pub struct Database {
    pub pool: PgPool,
    _embedded: Option<EmbeddedPostgres>,
}

pub async fn open(global: &GlobalArgs) -> anyhow::Result<Database> {
    let (url, embedded) = match global.database_url() {
        Some(url) => (url, None),
        None => {
            let dir = global.data_dir().join("postgres");
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
                .await
                .context("starting the private Postgres cluster")??;
            tracing::info!(url = %pg.url(), "using the private Postgres cluster (no DATABASE_URL given)");
            (pg.url(), Some(pg))
        }
    };
    let wait = Duration::from_secs(global.db_connect_timeout_secs);
    let pool = openledger_db::connect_and_migrate(&url, 8, wait).await?;
    Ok(Database {
        pool,
        _embedded: embedded,
    })
}
