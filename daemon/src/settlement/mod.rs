//! Settlement: paid, attributed inferences become cumulative reward roots on the RewardDistributor.
//!
//! An epoch takes every `InferencePaid` of the deployment's FeeRouter up to a final block (the indexer
//! has it, and it is `finality_depth` below the head) that no live epoch included yet: the payments of
//! its own block range and the ones earlier epochs held. A payment is included when the inference it paid
//! for succeeded and its attribution record is complete; otherwise it is held, with the reason, for the
//! next epoch. The included pools are split by `openledger_settlement`'s rule (`ol-settle/1`), added to
//! the previous epoch's cumulative leaves, and the tree's root is proposed from the settler key.
//!
//! Exactly once, crash-safe: a build (leaves, proofs, payments, report) is stored in one transaction before
//! anything is sent; each proposal transaction is signed, stored, and only then broadcast, so a restarted
//! settler re-sends the same bytes or finds them mined, and the chain's strictly increasing epoch makes a
//! second proposal of the same epoch impossible. State (`settlement_epochs.state`):
//! built -> submitted -> confirmed (receipt) -> final (the indexer has `RootProposed`) -> accepted
//! (`acceptRoot` after the challenge delay), or superseded / revoked / failed.
//!
//! Inside: `context` (what every step works with) and `epoch` (the types) at the bottom, `store` (SQL) on
//! them, `build` on `store`, `submit` on `build` and `store`, `verify` on `context` and `store`, `rewards`
//! (an account's leaves, claims and proofs) on `store`, `watch` (dispute a wrong pending root) on `verify`. May import
//! the ground floor (`chain`, `common`) and the indexer's queries; never `api`, `jobs` or `inference`.

pub mod build;
pub mod context;
pub mod epoch;
pub mod rewards;
pub mod store;
pub mod submit;
pub mod verify;
pub mod watch;

use std::time::Duration;

use alloy::primitives::{Address, U256};

pub use context::Context;
pub use epoch::{Build, HeldPayment, IncludedPayment};
pub use submit::{Outcome, Settler};

/// How epochs are cut and proposals followed.
#[derive(Debug, Clone)]
pub struct SettleConfig {
    /// A block is settled only once it is this many blocks below the head (and indexed). Default 64 (the
    /// depth of anvil's and many L2 nodes' `finalized` tag); the dev stack uses 0.
    pub finality_depth: u64,
    /// Blocks per epoch; 0: an epoch takes everything final when it is built. Default 0.
    pub epoch_blocks: u64,
    /// A proposal without a receipt for this long is re-sent with higher fees. Default 60 s.
    pub bump_after: Duration,
    /// Fee increase of each re-send, percent (nodes replace a pending transaction for 10% or more).
    /// Default 25.
    pub bump_percent: u64,
    /// How long one `settle` waits for the receipt and then for the indexer before it stops (the state is
    /// kept; the next run resumes). Default 300 s.
    pub confirm_timeout: Duration,
    /// How often receipts and the index are polled. Default 500 ms.
    pub poll_interval: Duration,
}

impl Default for SettleConfig {
    fn default() -> Self {
        Self {
            finality_depth: 64,
            epoch_blocks: 0,
            bump_after: Duration::from_secs(crate::chain::DEFAULT_BUMP_AFTER_SECS),
            bump_percent: crate::chain::DEFAULT_BUMP_PERCENT,
            confirm_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(
        "epoch {epoch} is not final yet: it ends at block {to_block}, and block {final_block} is the last final one (indexed, and {depth} blocks below the head)"
    )]
    NotFinal {
        epoch: u64,
        to_block: u64,
        final_block: u64,
        depth: u64,
    },
    #[error(
        "nothing to settle through block {through}: no payment is payable yet ({held} held: {reasons})"
    )]
    NothingToSettle {
        through: u64,
        held: usize,
        reasons: String,
    },
    #[error("epoch {asked} cannot be settled now: the next epoch is {next}")]
    OutOfOrder { asked: u64, next: u64 },
    #[error("another settler process holds the settlement lock of this distributor; wait for it")]
    Locked,
    #[error("epoch {epoch} is in flight (state {state}); settle it first")]
    InFlight { epoch: u64, state: String },
    #[error(
        "the settler key {account} does not have SETTLER_ROLE on the RewardDistributor {distributor}"
    )]
    NotSettler {
        account: Address,
        distributor: Address,
    },
    #[error("this daemon has no key to settle with (set OPENLEDGER_PRIVATE_KEY or --keystore)")]
    NoKey,
    #[error(
        "the root would owe {owed} wei but the RewardDistributor holds {balance} wei (total {total}, already claimed {claimed})"
    )]
    InsufficientPool {
        owed: String,
        balance: String,
        total: String,
        claimed: String,
    },
    #[error("epoch {epoch} on chain has root {onchain}, not this daemon's {ours}")]
    Conflict {
        epoch: u64,
        ours: String,
        onchain: String,
    },
    #[error(
        "the chain is at epoch {chain}, ahead of this database (epoch {db}): another settler proposes for this distributor"
    )]
    ChainAhead { chain: u64, db: u64 },
    #[error(
        "the accepted root of epoch {epoch} ({root}) is not one this daemon built; ask its settler for proofs"
    )]
    ForeignRoot { epoch: u64, root: String },
    #[error("the proposal of epoch {epoch} was refused: {reason}")]
    Rejected { epoch: u64, reason: String },
    #[error("{0}")]
    Timeout(String),
    /// The chain or the index moved under a build (a reorg): derive it again.
    #[error("{0}")]
    Moving(String),
    #[error(
        "the indexer has not reached block {needed} yet (it is at {indexed:?}); is `serve` or `index` running?"
    )]
    Unindexed { needed: u64, indexed: Option<u64> },
    #[error("RPC: {0}")]
    Rpc(String),
    #[error("stored settlement data is inconsistent: {0}")]
    Stored(String),
    #[error(transparent)]
    Math(#[from] openledger_settlement::SettleError),
    #[error(transparent)]
    Index(#[from] openledger_indexer::IndexerError),
    #[error(transparent)]
    Manifest(#[from] openledger_chain::ManifestError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl SettleError {
    fn rpc(e: impl std::fmt::Display) -> Self {
        Self::Rpc(e.to_string())
    }
}

/// Fault injection for the crash tests: `OPENLEDGER_FAILPOINT=<name>` aborts the process at that point
/// (`after-build`: the build is stored, nothing signed; `before-send`: the transaction is stored, not broadcast; `after-send`: broadcast, no receipt yet;
/// `after-receipt`: mined, the database not updated). Never set in production.
pub(crate) fn failpoint(name: &str) {
    if std::env::var("OPENLEDGER_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// `U256` from stored NUMERIC text.
pub(crate) fn u256(s: &str) -> Result<U256, SettleError> {
    s.parse()
        .map_err(|_| SettleError::Stored(format!("{s:?} is not an amount")))
}
