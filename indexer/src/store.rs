//! The indexer's writes: each indexed range (or reorg repair) is one transaction holding its events, its
//! block hashes and the checkpoint, so the database always holds a canonical prefix of the chain.

use alloy::primitives::B256;
use sqlx::{PgPool, Postgres, Transaction};

use crate::IndexerError;
use crate::decode::DecodedEvent;

/// Rows per INSERT statement (a range may hold far more; they share one transaction).
const CHUNK: usize = 10_000;

/// The Postgres side of one indexer: one chain, one contract set.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    chain_id: i64,
    key: String,
    addresses: Vec<String>,
}

/// What one transaction commits.
#[derive(Debug, Default)]
pub struct RangeWrite<'a> {
    /// Undo everything above this block first (reorg repair).
    pub rollback_above: Option<u64>,
    pub events: &'a [DecodedEvent],
    /// (number, hash) of indexed blocks to remember for reorg detection.
    pub blocks: &'a [(u64, B256)],
    /// The checkpoint the writer believes is current; the write fails if another indexer moved it.
    pub expected_through: u64,
    pub new_through: u64,
    /// Forget remembered block hashes below this (outside the reorg window).
    pub forget_below: u64,
}

impl Store {
    pub fn new(pool: PgPool, chain_id: u64, key: String, addresses: Vec<String>) -> Self {
        Self {
            pool,
            chain_id: chain_id as i64,
            key,
            addresses,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The checkpoint (every block <= it is indexed), created at `start_block - 1` on first use.
    pub async fn checkpoint(&self, start_block: u64) -> Result<u64, IndexerError> {
        let initial = start_block.saturating_sub(1) as i64;
        sqlx::query(
            "INSERT INTO indexer_checkpoints (chain_id, deployment_key, indexed_through) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(self.chain_id)
        .bind(&self.key)
        .bind(initial)
        .execute(&self.pool)
        .await?;
        let through: i64 = sqlx::query_scalar(
            "SELECT indexed_through FROM indexer_checkpoints WHERE chain_id = $1 AND deployment_key = $2",
        )
        .bind(self.chain_id)
        .bind(&self.key)
        .fetch_one(&self.pool)
        .await?;
        Ok(through as u64)
    }

    /// Remembered block hashes, newest first.
    pub async fn recent_blocks(&self) -> Result<Vec<(u64, B256)>, IndexerError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT block_number, block_hash FROM indexer_blocks
             WHERE chain_id = $1 AND deployment_key = $2 ORDER BY block_number DESC",
        )
        .bind(self.chain_id)
        .bind(&self.key)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(n, h)| {
                let hash = h
                    .parse::<B256>()
                    .map_err(|e| IndexerError::Corrupt(format!("block hash {h}: {e}")))?;
                Ok((n as u64, hash))
            })
            .collect()
    }

    /// Commit one range (and, for a reorg, the removal of the orphaned rows) atomically.
    pub async fn write(&self, w: RangeWrite<'_>) -> Result<(), IndexerError> {
        let mut tx = self.pool.begin().await?;
        // Serialise writers of this chain + contract set, then check nobody moved the checkpoint meanwhile.
        let through: i64 = sqlx::query_scalar(
            "SELECT indexed_through FROM indexer_checkpoints WHERE chain_id = $1 AND deployment_key = $2 FOR UPDATE",
        )
        .bind(self.chain_id)
        .bind(&self.key)
        .fetch_one(&mut *tx)
        .await?;
        if through as u64 != w.expected_through {
            return Err(IndexerError::Conflict {
                expected: w.expected_through,
                found: through as u64,
            });
        }
        if let Some(above) = w.rollback_above {
            let deleted: i64 = sqlx::query_scalar("SELECT rollback_chain_index($1, $2, $3)")
                .bind(self.chain_id)
                .bind(above as i64)
                .bind(&self.addresses)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM indexer_blocks WHERE chain_id = $1 AND deployment_key = $2 AND block_number > $3")
                .bind(self.chain_id)
                .bind(&self.key)
                .bind(above as i64)
                .execute(&mut *tx)
                .await?;
            tracing::warn!(above, deleted, "removed events of orphaned blocks");
        }
        for chunk in w.events.chunks(CHUNK) {
            insert_events(&mut tx, self.chain_id, chunk).await?;
        }
        if !w.blocks.is_empty() {
            let numbers: Vec<i64> = w.blocks.iter().map(|(n, _)| *n as i64).collect();
            let hashes: Vec<String> = w.blocks.iter().map(|(_, h)| format!("{h:#x}")).collect();
            sqlx::query(
                "INSERT INTO indexer_blocks (chain_id, deployment_key, block_number, block_hash)
                 SELECT $1, $2, n, h FROM UNNEST($3::int8[], $4::text[]) AS t(n, h)
                 ON CONFLICT (chain_id, deployment_key, block_number) DO UPDATE SET block_hash = EXCLUDED.block_hash",
            )
            .bind(self.chain_id)
            .bind(&self.key)
            .bind(&numbers)
            .bind(&hashes)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM indexer_blocks WHERE chain_id = $1 AND deployment_key = $2 AND block_number < $3")
            .bind(self.chain_id)
            .bind(&self.key)
            .bind(w.forget_below as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE indexer_checkpoints SET indexed_through = $3, updated_at = now()
             WHERE chain_id = $1 AND deployment_key = $2",
        )
        .bind(self.chain_id)
        .bind(&self.key)
        .bind(w.new_through as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// One INSERT ... UNNEST per chunk; the statement-level trigger fans the rows out to the typed tables.
/// (COPY parses no faster here, and a COPY cut short by cancellation leaves the pooled connection unusable.)
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    chain_id: i64,
    events: &[DecodedEvent],
) -> Result<(), IndexerError> {
    let n = events.len();
    let mut tx_hashes = Vec::with_capacity(n);
    let mut log_indexes = Vec::with_capacity(n);
    let mut block_numbers = Vec::with_capacity(n);
    let mut block_hashes = Vec::with_capacity(n);
    let mut tx_indexes = Vec::with_capacity(n);
    let mut addresses = Vec::with_capacity(n);
    let mut contracts = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    for e in events {
        tx_hashes.push(format!("{:#x}", e.tx_hash));
        log_indexes.push(e.log_index as i64);
        block_numbers.push(e.block_number as i64);
        block_hashes.push(format!("{:#x}", e.block_hash));
        tx_indexes.push(e.tx_index as i64);
        addresses.push(format!("{:#x}", e.address));
        contracts.push(e.contract);
        names.push(e.event.as_ref());
        args.push(e.args.to_string());
    }
    // One statement per chunk; the trigger fans the rows out to the typed tables.
    sqlx::query(
        "INSERT INTO chain_events
             (chain_id, tx_hash, log_index, block_number, block_hash, tx_index, address, contract, event, args)
         SELECT $1, t.tx_hash, t.log_index, t.block_number, t.block_hash, t.tx_index, t.address, t.contract,
                t.event, t.args::jsonb
         FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::text[], $8::text[],
                     $9::text[], $10::text[])
              AS t(tx_hash, log_index, block_number, block_hash, tx_index, address, contract, event, args)
         ON CONFLICT DO NOTHING",
    )
    .bind(chain_id)
    .bind(&tx_hashes)
    .bind(&log_indexes)
    .bind(&block_numbers)
    .bind(&block_hashes)
    .bind(&tx_indexes)
    .bind(&addresses)
    .bind(&contracts)
    .bind(&names)
    .bind(&args)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
