//! What an account has earned under this daemon's settlements: its leaf in the latest accepted root (with
//! the proof `RewardDistributor.claim` takes), what it claimed (the chain's `Claimed` events, as indexed),
//! a leaf in a proposed root still in its challenge period, and one line per epoch that paid it. Read by
//! `GET /api/rewards/{address}`; every number is on chain or recomputable from it.

use alloy::primitives::{Address, B256, U256};
use sqlx::PgPool;

use super::{SettleError, store, u256};
use crate::common::hex_addr;

/// An account's rewards as this daemon knows them.
#[derive(Debug, Clone)]
pub struct Rewards {
    pub account: Address,
    /// The latest accepted root (indexed), which this daemon built; `None` before any root is accepted.
    pub accepted: Option<Root>,
    /// All the account was ever owed as of `accepted` (zero without a leaf there).
    pub cumulative: U256,
    /// Claimed so far, from the indexed `Claimed` events.
    pub claimed: U256,
    /// The leaf's proof under `accepted` (empty without a leaf).
    pub proof: Vec<B256>,
    /// The account's leaf in the latest proposed root that is still in its challenge period.
    pub pending: Option<Pending>,
    /// One line per live epoch that paid the account, oldest first.
    pub history: Vec<Paid>,
}

/// An epoch's root.
#[derive(Debug, Clone)]
pub struct Root {
    pub epoch: i64,
    pub root: String,
}

/// A leaf in a proposed root: claimable from `valid_at` (RFC 3339, UTC) once accepted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub epoch: i64,
    pub cumulative: String,
    pub root: String,
    pub valid_at: String,
}

/// What one epoch paid the account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Paid {
    pub epoch: i64,
    pub state: String,
    pub amount: String,
    pub cumulative: String,
    pub root: String,
}

impl Rewards {
    /// What `claim` would pay now.
    pub fn claimable(&self) -> U256 {
        self.cumulative.saturating_sub(self.claimed)
    }
}

/// `account`'s rewards from `distributor` on chain `chain_id`. [`SettleError::ForeignRoot`] when the
/// accepted root is not one this daemon built (it has no proofs for it).
pub async fn of(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    account: Address,
) -> Result<Rewards, SettleError> {
    let accepted = accepted_root(pool, chain_id, distributor).await?;
    let (cumulative, proof) = match &accepted {
        Some(r) => accepted_leaf(pool, chain_id, distributor, r, account).await?,
        None => (U256::ZERO, Vec::new()),
    };
    Ok(Rewards {
        account,
        cumulative,
        proof,
        claimed: claimed(pool, chain_id, distributor, account).await?,
        pending: pending(pool, chain_id, distributor, account).await?,
        history: history(pool, chain_id, distributor, account).await?,
        accepted,
    })
}

/// The latest accepted root, as indexed.
async fn accepted_root(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
) -> Result<Option<Root>, SettleError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT epoch::bigint, root FROM reward_root_outcomes
         WHERE chain_id = $1 AND contract_address = $2 AND outcome = 'accepted'
         ORDER BY epoch DESC LIMIT 1",
    )
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(epoch, root)| Root { epoch, root }))
}

/// The account's (cumulative, proof) in this daemon's build of the accepted root `r`.
async fn accepted_leaf(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    r: &Root,
    account: Address,
) -> Result<(U256, Vec<B256>), SettleError> {
    let build = store::epoch(pool, chain_id, distributor, r.epoch as u64).await?;
    let Some(b) = build.filter(|b| b.root == r.root) else {
        return Err(SettleError::ForeignRoot {
            epoch: r.epoch as u64,
            root: r.root.clone(),
        });
    };
    Ok(match store::leaf(pool, b.id, account).await? {
        Some((c, _, p)) => (
            u256(&c)?,
            p.chunks_exact(32).map(B256::from_slice).collect(),
        ),
        None => (U256::ZERO, Vec::new()),
    })
}

async fn claimed(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    account: Address,
) -> Result<U256, SettleError> {
    let claimed: String = sqlx::query_scalar(
        "SELECT COALESCE(max(cumulative_amount), 0)::text FROM reward_claims
         WHERE chain_id = $1 AND contract_address = $2 AND account = $3",
    )
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .bind(hex_addr(account))
    .fetch_one(pool)
    .await?;
    u256(&claimed)
}

async fn pending(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    account: Address,
) -> Result<Option<Pending>, SettleError> {
    Ok(sqlx::query_as(
        "SELECT e.epoch, l.cumulative::text AS cumulative, e.root,
                to_char(rr.valid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS valid_at
         FROM settlement_epochs e
         JOIN reward_roots rr ON rr.chain_id = e.chain_id AND rr.contract_address = e.distributor
                             AND rr.epoch = e.epoch AND rr.root = e.root
         JOIN settlement_leaves l ON l.epoch_id = e.id AND l.account = $3
         WHERE e.chain_id = $1 AND e.distributor = $2 AND e.state = 'final'
         ORDER BY e.epoch DESC LIMIT 1",
    )
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .bind(hex_addr(account))
    .fetch_optional(pool)
    .await?)
}

async fn history(
    pool: &PgPool,
    chain_id: u64,
    distributor: Address,
    account: Address,
) -> Result<Vec<Paid>, SettleError> {
    Ok(sqlx::query_as(
        "SELECT e.epoch, e.state, l.amount::text AS amount, l.cumulative::text AS cumulative, e.root
         FROM settlement_leaves l JOIN settlement_epochs e ON e.id = l.epoch_id
         WHERE e.chain_id = $1 AND e.distributor = $2 AND l.account = $3 AND l.amount > 0
           AND e.state <> 'failed'
         ORDER BY e.epoch",
    )
    .bind(chain_id as i64)
    .bind(hex_addr(distributor))
    .bind(hex_addr(account))
    .fetch_all(pool)
    .await?)
}
