//! Postgres `NOTIFY`, forwarded to in-process subscribers (ground floor): `openledger_jobs` (a job's row or
//! log changed, payload: its id) wakes SSE streams and idle workers; `openledger_index` (the indexer
//! committed progress) wakes pay-first requests waiting for their payment. Notifications come from every
//! process sharing the database.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

/// The job channel.
pub const JOBS_CHANNEL: &str = "openledger_jobs";
/// The index-progress channel.
pub const INDEX_CHANNEL: &str = "openledger_index";
/// Pause before reconnecting a lost listener.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens on both channels and forwards them: job ids to `jobs`, and a bump of the counter in `index` per
/// index notification. Reconnects on its own; after a reconnection `index` is bumped and waiters look
/// again, since notifications sent while no connection listened are lost. Runs until the process ends.
pub fn spawn_listener(
    pool: PgPool,
    jobs: broadcast::Sender<i64>,
    index: watch::Sender<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "notifications: cannot connect; retrying");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen_all([JOBS_CHANNEL, INDEX_CHANNEL]).await {
                tracing::warn!(error = %e, "notifications: LISTEN failed; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            index.send_modify(|n| *n = n.wrapping_add(1));
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) if n.channel() == INDEX_CHANNEL => {
                        index.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Ok(Some(n)) => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            let _ = jobs.send(id);
                        }
                    }
                    Ok(None) => {
                        // the listener reconnected (notifications of the gap are lost): look again
                        tracing::warn!("notifications: connection lost and re-established");
                        index.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notifications: connection lost; reconnecting");
                        break;
                    }
                }
            }
        }
    })
}

/// Waits until `progress` moves or `at_most` passes, whichever is first (a closed channel waits `at_most`).
pub async fn progress_or(progress: &mut watch::Receiver<u64>, at_most: Duration) {
    if let Ok(Err(_)) = tokio::time::timeout(at_most, progress.changed()).await {
        tokio::time::sleep(at_most).await;
    }
}
