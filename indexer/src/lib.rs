//! Chain events -> Postgres. Backfills a deployment's events from its deployment block in adaptive
//! eth_getLogs ranges, follows the head, repairs reorgs and resumes from its checkpoint; each range is one
//! transaction. `query` is the read side used by the daemon.

pub mod config;
pub mod decode;
pub mod indexer;
pub mod query;
pub mod source;
pub mod store;

use std::time::Duration;

use alloy::primitives::Address;

pub use config::IndexerConfig;
pub use indexer::{Indexer, IndexerStatus, Mode, Step};
pub use source::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error("invalid indexer configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Manifest(#[from] openledger_chain::ManifestError),
    #[error("bad contract ABI: {0}")]
    Abi(String),
    #[error("no JSON-RPC node answers at {url} (waited {waited:?}): {detail}")]
    NoNode {
        url: String,
        waited: Duration,
        detail: String,
    },
    #[error("the manifest is for chain {manifest} but the node at {url} is chain {node}")]
    WrongChain {
        manifest: u64,
        node: u64,
        url: String,
    },
    #[error("{contract} is not deployed at {address} on chain {chain_id}: {detail}")]
    NotDeployed {
        contract: &'static str,
        address: Address,
        chain_id: u64,
        detail: String,
    },
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("the chain changed while it was read: {0}")]
    ChainMoved(String),
    #[error(
        "reorg deeper than the reorg window ({window} blocks): no remembered block from {oldest_known} up is canonical; \
         re-index from scratch into an empty database"
    )]
    ReorgTooDeep { oldest_known: u64, window: u64 },
    #[error("another indexer moved the checkpoint (expected {expected}, found {found})")]
    Conflict { expected: u64, found: u64 },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
}

impl IndexerError {
    /// Worth retrying after a pause: the node or the database is unreachable or busy, or the chain moved.
    pub fn is_transient(&self) -> bool {
        match self {
            IndexerError::Rpc(_) | IndexerError::ChainMoved(_) | IndexerError::Conflict { .. } => {
                true
            }
            IndexerError::Db(e) => is_connection_error(e),
            _ => false,
        }
    }
}

/// Errors of an unreachable or restarting server, as opposed to errors in what was sent.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03" || c == "53300"
        }),
        _ => false,
    }
}
