//! Postgres for OpenLedger: connecting, migrating (the schema in `migrations/`), and an embedded private
//! cluster for when no `DATABASE_URL` is given.

mod embedded;

use std::time::Duration;

pub use embedded::{EmbeddedError, EmbeddedPostgres};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The schema shared by the daemon and the indexer.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to Postgres at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
}

/// Connect to `url` (retrying for `wait` while the server comes up) and run pending migrations.
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    wait: Duration,
) -> Result<PgPool, DbError> {
    let pool = connect(url, max_connections, wait).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Connect to `url`, retrying with backoff for up to `wait` (a server that is still starting, or briefly down).
pub async fn connect(url: &str, max_connections: u32, wait: Duration) -> Result<PgPool, DbError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    loop {
        match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every idle connection before handing it out: a second round trip per query
            // (it halved the API's read throughput). A dead connection fails its query instead, the
            // pool drops it, and callers already treat connection errors as transient.
            .test_before_acquire(false)
            .connect(url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(DbError::Connect {
                    url: redact(url),
                    source,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Postgres not reachable yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `url` with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres:///db?host=/tmp"),
            "postgres:///db?host=/tmp"
        );
    }
}
