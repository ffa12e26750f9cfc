//! The settlement tables (migration 0009): builds, their leaves and proofs, payments and transactions.

use alloy::primitives::{Address, U256};
use sqlx::{PgPool, Row};

use super::epoch::{Build, Previous};
use super::{SettleError, u256};
use crate::common::hex_addr;

/// One stored build of an epoch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EpochRow {
    pub id: i64,
    pub epoch: i64,
    pub state: String,
    pub from_block: i64,
    pub to_block: i64,
    pub to_block_hash: String,
    pub previous_id: Option<i64>,
    pub root: String,
    pub total: String,
    pub pool_amount: String,
    pub protocol_amount: String,
    pub treasury: String,
    pub accounts: i32,
    pub included: i32,
    pub held: i32,
    pub report_hash: String,
    pub uri: String,
    pub error: Option<String>,
    pub proposed_tx: Option<String>,
    pub proposed_block: Option<i64>,
}

const COLUMNS: &str = "id, epoch, state, from_block, to_block, to_block_hash, previous_id, root, total::text,
    pool_amount::text, protocol_amount::text, treasury, accounts, included, held, report_hash, uri, error,
    proposed_tx, proposed_block";

impl EpochRow {
    pub fn as_previous(&self) -> Previous {
        Previous {
            id: self.id,
            epoch: self.epoch as u64,
            root: self.root.clone(),
            to_block: self.to_block as u64,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch, "state": self.state, "from_block": self.from_block,
            "to_block": self.to_block, "root": self.root, "total": self.total,
            "pool_amount": self.pool_amount, "protocol_amount": self.protocol_amount,
            "treasury": self.treasury, "accounts": self.accounts, "included": self.included,
            "held": self.held, "report_hash": self.report_hash, "uri": self.uri, "error": self.error,
            "proposed_tx": self.proposed_tx, "proposed_block": self.proposed_block,
        })
    }
}

/// The live builds (not failed) of a distributor, by epoch.
pub async fn epochs(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
) -> Result<Vec<EpochRow>, SettleError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM settlement_epochs
         WHERE chain_id = $1 AND distributor = $2 AND state <> 'failed' ORDER BY epoch"
    )))
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .fetch_all(pool)
    .await?)
}

/// The live build of `epoch`.
pub async fn epoch(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    epoch: u64,
) -> Result<Option<EpochRow>, SettleError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM settlement_epochs
         WHERE chain_id = $1 AND distributor = $2 AND epoch = $3 AND state <> 'failed'"
    )))
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .bind(epoch as i64)
    .fetch_optional(pool)
    .await?)
}

pub async fn by_id(pool: &PgPool, id: i64) -> Result<EpochRow, SettleError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM settlement_epochs WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await?)
}

/// Why build `id` can no longer be extended, if it cannot: (its epoch, `failed` or `revoked`) — revoked
/// also when the index has the revocation and `sync` has not marked it yet.
pub async fn dead_base(pool: &PgPool, id: i64) -> Result<Option<(i64, String)>, SettleError> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT e.epoch,
                CASE WHEN e.state IN ('failed', 'revoked') THEN e.state
                     WHEN EXISTS (SELECT 1 FROM reward_root_outcomes o
                                  WHERE o.chain_id = e.chain_id AND o.contract_address = e.distributor
                                    AND o.epoch = e.epoch AND o.root = e.root AND o.outcome = 'revoked')
                     THEN 'revoked' END
         FROM settlement_epochs e WHERE e.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(epoch, dead)| dead.map(|d| (epoch, d))))
}

/// An epoch's cumulative leaves, sorted by account (hex order is byte order).
pub async fn leaves(pool: &PgPool, epoch_id: i64) -> Result<Vec<(Address, U256)>, SettleError> {
    let rows = sqlx::query(
        "SELECT account, cumulative::text FROM settlement_leaves WHERE epoch_id = $1 ORDER BY account",
    )
    .bind(epoch_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let a: String = r.try_get(0)?;
            let c: String = r.try_get(1)?;
            let account = a
                .parse()
                .map_err(|_| SettleError::Stored(format!("account {a:?}")))?;
            Ok((account, u256(&c)?))
        })
        .collect()
}

/// One account's leaf in an epoch: (cumulative, this epoch's amount, proof bytes).
pub async fn leaf(
    pool: &PgPool,
    epoch_id: i64,
    account: Address,
) -> Result<Option<(String, String, Vec<u8>)>, SettleError> {
    Ok(sqlx::query_as(
        "SELECT cumulative::text, amount::text, proof FROM settlement_leaves
         WHERE epoch_id = $1 AND account = $2",
    )
    .bind(epoch_id)
    .bind(hex_addr(account))
    .fetch_optional(pool)
    .await?)
}

/// The stored report (canonical JSON) of a build.
pub async fn report(pool: &PgPool, epoch_id: i64) -> Result<String, SettleError> {
    Ok(
        sqlx::query_scalar("SELECT report FROM settlement_epochs WHERE id = $1")
            .bind(epoch_id)
            .fetch_one(pool)
            .await?,
    )
}

struct PaymentRow<'a> {
    tx_hash: &'a str,
    log_index: i64,
    block_number: i64,
    pool_amount: U256,
    inference_id: Option<&'a str>,
    record_hash: Option<&'a str>,
    reason: Option<&'a str>,
}

/// Rows written per statement when storing a build.
const CHUNK: usize = 10_000;

/// Stores a build, its leaves with their proofs and its payments in one transaction: all of it or none.
pub async fn save(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    b: &Build,
    proofs: &[Vec<u8>],
    progress: &indicatif::ProgressBar,
) -> Result<i64, SettleError> {
    let mut tx = pool.begin().await?;
    let id = insert_epoch(&mut tx, chain_id, distributor, b).await?;
    progress.set_length(b.tree.entries.len() as u64);
    progress.set_position(0);
    progress.set_message("storing leaves and proofs");
    for (entries, proofs) in b.tree.entries.chunks(CHUNK).zip(proofs.chunks(CHUNK)) {
        let accounts: Vec<String> = entries.iter().map(|e| hex_addr(e.account)).collect();
        let cumulative: Vec<String> = entries.iter().map(|e| e.cumulative.to_string()).collect();
        let amounts: Vec<String> = entries.iter().map(|e| e.amount.to_string()).collect();
        sqlx::query(
            "INSERT INTO settlement_leaves (epoch_id, account, cumulative, amount, proof)
             SELECT $1, a, c::numeric, m::numeric, p
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[]) AS t(a, c, m, p)",
        )
        .bind(id)
        .bind(&accounts)
        .bind(&cumulative)
        .bind(&amounts)
        .bind(proofs)
        .execute(&mut *tx)
        .await?;
        progress.inc(entries.len() as u64);
    }
    insert_payments(&mut tx, id, chain_id, b).await?;
    tx.commit().await?;
    Ok(id)
}

/// The build's `settlement_epochs` row, state `built`: its id.
async fn insert_epoch(
    tx: &mut sqlx::PgConnection,
    chain_id: u64,
    distributor: Address,
    b: &Build,
) -> Result<i64, SettleError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO settlement_epochs (chain_id, distributor, epoch, state, from_block, to_block,
             to_block_hash, previous_id, root, total, pool_amount, protocol_amount, treasury, accounts,
             included, held, report, report_hash, uri)
         VALUES ($1, $2, $3, 'built', $4, $5, $6, $7, $8, $9::numeric, $10::numeric, $11::numeric, $12,
                 $13, $14, $15, $16, $17, $18)
         RETURNING id",
    )
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .bind(b.epoch as i64)
    .bind(b.from_block as i64)
    .bind(b.to_block as i64)
    .bind(b.to_block_hash.to_string())
    .bind(b.previous.as_ref().map(|p| p.id))
    .bind(b.root().to_string())
    .bind(b.total().to_string())
    .bind(b.split.pool.to_string())
    .bind(b.split.protocol.to_string())
    .bind(hex_addr(b.treasury))
    .bind(b.tree.entries.len() as i32)
    .bind(b.included.len() as i32)
    .bind(b.held.len() as i32)
    .bind(&b.report)
    .bind(&b.report_hash)
    .bind(&b.uri)
    .fetch_one(tx)
    .await?)
}

/// The build's payments, included and held (with the reason).
async fn insert_payments(
    tx: &mut sqlx::PgConnection,
    id: i64,
    chain_id: u64,
    b: &Build,
) -> Result<(), SettleError> {
    let rows: Vec<PaymentRow<'_>> = b
        .included
        .iter()
        .map(|p| PaymentRow {
            tx_hash: &p.tx_hash,
            log_index: p.log_index,
            block_number: p.block_number,
            pool_amount: p.pool_amount,
            inference_id: Some(&p.inference_id),
            record_hash: Some(&p.record_hash),
            reason: None,
        })
        .chain(b.held.iter().map(|p| PaymentRow {
            tx_hash: &p.tx_hash,
            log_index: p.log_index,
            block_number: p.block_number,
            pool_amount: p.pool_amount,
            inference_id: p.inference_id.as_deref(),
            record_hash: None,
            reason: Some(&p.reason),
        }))
        .collect();
    for chunk in rows.chunks(CHUNK) {
        let tx_hashes: Vec<&str> = chunk.iter().map(|r| r.tx_hash).collect();
        let logs: Vec<i64> = chunk.iter().map(|r| r.log_index).collect();
        let blocks: Vec<i64> = chunk.iter().map(|r| r.block_number).collect();
        let amounts: Vec<String> = chunk.iter().map(|r| r.pool_amount.to_string()).collect();
        let inferences: Vec<Option<&str>> = chunk.iter().map(|r| r.inference_id).collect();
        let records: Vec<Option<&str>> = chunk.iter().map(|r| r.record_hash).collect();
        let reasons: Vec<Option<&str>> = chunk.iter().map(|r| r.reason).collect();
        sqlx::query(
            "INSERT INTO settlement_payments (epoch_id, chain_id, tx_hash, log_index, block_number,
                 pool_amount, inference_id, record_hash, included, reason)
             SELECT $1, $2, h, l, b, a::numeric, i, r, reason IS NULL, reason
             FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[],
                         $9::text[]) AS t(h, l, b, a, i, r, reason)",
        )
        .bind(id)
        .bind(chain_id as i64)
        .bind(&tx_hashes)
        .bind(&logs)
        .bind(&blocks)
        .bind(&amounts)
        .bind(&inferences)
        .bind(&records)
        .bind(&reasons)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

pub async fn set_state(pool: &PgPool, id: i64, state: &str) -> Result<(), SettleError> {
    sqlx::query("UPDATE settlement_epochs SET state = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(pool)
        .await?;
    Ok(())
}

/// The proposal is mined: the epoch is confirmed, `tx` is the mined attempt, the other attempts of its
/// nonce replaced. One transaction.
pub async fn confirmed(
    pool: &PgPool,
    id: i64,
    tx_hash: &str,
    block: u64,
) -> Result<(), SettleError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE settlement_epochs SET state = 'confirmed', proposed_tx = $2, proposed_block = $3,
             updated_at = now() WHERE id = $1 AND state IN ('built', 'submitted', 'confirmed')",
    )
    .bind(id)
    .bind(tx_hash)
    .bind(block as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE settlement_txs SET state = CASE WHEN tx_hash = $2 THEN 'mined' ELSE 'replaced' END,
             block_number = CASE WHEN tx_hash = $2 THEN $3 ELSE block_number END
         WHERE epoch_id = $1 AND kind = 'propose' AND state <> 'reverted'",
    )
    .bind(id)
    .bind(tx_hash)
    .bind(block as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The build cannot be proposed (refused, or its range was reorganised): kept for the record as failed,
/// its leaves and payments removed so the epoch can be built again. One transaction.
pub async fn fail(pool: &PgPool, id: i64, error: &str) -> Result<(), SettleError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE settlement_epochs SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM settlement_payments WHERE epoch_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM settlement_leaves WHERE epoch_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE settlement_txs SET state = 'dropped' WHERE epoch_id = $1 AND state = 'sent'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // a revoked base whose payments this build was carrying: free them now
    let base: Option<i64> =
        sqlx::query_scalar("SELECT previous_id FROM settlement_epochs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(base) = base {
        free_if_unused(&mut tx, base).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The root was revoked on chain: its payments are free for the next epoch, whose leaves extend the
/// build before it — unless a build on top of it is live, whose leaves carry its amounts (then they stay
/// included, and are freed if that build fails). One transaction.
pub async fn revoked(pool: &PgPool, id: i64) -> Result<(), SettleError> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE settlement_epochs SET state = 'revoked', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    free_if_unused(&mut tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Frees the payments of revoked build `id` when no live build extends it.
async fn free_if_unused(tx: &mut sqlx::PgConnection, id: i64) -> Result<(), SettleError> {
    sqlx::query(
        "UPDATE settlement_payments SET included = false, reason = 'the epoch''s root was revoked'
         WHERE epoch_id = $1 AND included
           AND EXISTS (SELECT 1 FROM settlement_epochs WHERE id = $1 AND state = 'revoked')
           AND NOT EXISTS (SELECT 1 FROM settlement_epochs WHERE previous_id = $1 AND state <> 'failed')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One signed transaction of a build.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TxRow {
    pub tx_hash: String,
    pub nonce: i64,
    pub raw: Vec<u8>,
    pub max_fee: String,
    pub priority_fee: String,
    pub state: String,
    pub sent_age_secs: f64,
}

pub async fn txs(pool: &PgPool, epoch_id: i64, kind: &str) -> Result<Vec<TxRow>, SettleError> {
    Ok(sqlx::query_as(
        "SELECT tx_hash, nonce, raw, max_fee::text, priority_fee::text, state,
                extract(epoch FROM now() - sent_at)::float8 AS sent_age_secs
         FROM settlement_txs WHERE epoch_id = $1 AND kind = $2 ORDER BY sent_at, tx_hash",
    )
    .bind(epoch_id)
    .bind(kind)
    .fetch_all(pool)
    .await?)
}

/// A signed transaction about to be broadcast.
#[derive(Debug)]
pub struct NewTx<'a> {
    /// `propose` or `cancel`.
    pub kind: &'a str,
    pub tx_hash: &'a str,
    pub nonce: u64,
    pub raw: &'a [u8],
    pub max_fee: u128,
    pub priority_fee: u128,
}

/// Records a signed transaction before it is broadcast (and the build as submitted), in one transaction.
pub async fn insert_tx(pool: &PgPool, epoch_id: i64, t: &NewTx<'_>) -> Result<(), SettleError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO settlement_txs (tx_hash, epoch_id, kind, nonce, raw, max_fee, priority_fee, state)
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, 'sent')
         ON CONFLICT (tx_hash) DO NOTHING",
    )
    .bind(t.tx_hash)
    .bind(epoch_id)
    .bind(t.kind)
    .bind(t.nonce as i64)
    .bind(t.raw)
    .bind(t.max_fee.to_string())
    .bind(t.priority_fee.to_string())
    .execute(&mut *tx)
    .await?;
    if t.kind == "propose" {
        sqlx::query(
            "UPDATE settlement_epochs SET state = 'submitted', updated_at = now()
             WHERE id = $1 AND state = 'built'",
        )
        .bind(epoch_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A mined proposal that a reorg took out: the build is submitted again and the same transaction live, so
/// its bytes are re-sent (same nonce) rather than a second proposal signed. One transaction.
pub async fn reopen(pool: &PgPool, id: i64, tx_hash: &str) -> Result<(), SettleError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE settlement_epochs SET state = 'submitted', proposed_tx = NULL, proposed_block = NULL,
             updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE settlement_txs SET state = 'sent', block_number = NULL WHERE tx_hash = $1")
        .bind(tx_hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn set_tx_state(pool: &PgPool, tx_hash: &str, state: &str) -> Result<(), SettleError> {
    sqlx::query("UPDATE settlement_txs SET state = $2 WHERE tx_hash = $1")
        .bind(tx_hash)
        .bind(state)
        .execute(pool)
        .await?;
    Ok(())
}
