//! Indexer settings. Defaults suit a local devnet and an OP Stack L2 (2 s blocks).

use std::time::Duration;

use crate::IndexerError;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// JSON-RPC endpoint. `ws://` / `wss://` follow new heads by subscription; anything else polls.
    pub rpc_url: String,
    /// Stay this many blocks behind the head (0: index the head itself; reorgs are then repaired).
    pub confirmations: u64,
    /// How often to ask for a new head when polling (also the fallback when subscribed). Default 250 ms.
    pub poll_interval: Duration,
    /// Blocks below the head inside which reorgs are expected: block hashes there are checked and
    /// remembered. A reorg deeper than this stops the indexer with an error. Default 128.
    pub reorg_window: u64,
    /// First eth_getLogs range, in blocks. It doubles while responses stay small and fast, and halves
    /// while the node refuses it. Default 100.
    pub initial_range: u64,
    /// Largest range ever asked for. Default 100,000.
    pub max_range: u64,
    /// Smallest range the adaptation settles on after a refusal. Default 1.
    pub min_range: u64,
    /// Stop growing the range once a response holds this many logs. Default 20,000.
    pub target_logs_per_range: usize,
    /// Timeout of one RPC call; a timed-out eth_getLogs counts as "range too large". Default 30 s.
    pub rpc_timeout: Duration,
    /// How long to wait for the node at start-up before giving up. Default 30 s.
    pub startup_timeout: Duration,
}

impl IndexerConfig {
    /// Blocks the indexer stays behind the head, by default.
    pub const DEFAULT_CONFIRMATIONS: u64 = 0;
    /// Milliseconds between head polls (http URLs), by default.
    pub const DEFAULT_POLL_INTERVAL_MS: u64 = 250;

    pub fn new(rpc_url: impl Into<String>) -> Self {
        Self {
            rpc_url: rpc_url.into(),
            confirmations: Self::DEFAULT_CONFIRMATIONS,
            poll_interval: Duration::from_millis(Self::DEFAULT_POLL_INTERVAL_MS),
            reorg_window: 128,
            initial_range: 100,
            max_range: 100_000,
            min_range: 1,
            target_logs_per_range: 20_000,
            rpc_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
        }
    }

    pub fn validate(&self) -> Result<(), IndexerError> {
        let bad = |m: &str| Err(IndexerError::Config(m.to_string()));
        if self.rpc_url.is_empty() {
            return bad("rpc url is empty");
        }
        if self.min_range == 0
            || self.initial_range < self.min_range
            || self.max_range < self.initial_range
        {
            return bad("ranges must satisfy 1 <= min_range <= initial_range <= max_range");
        }
        if self.reorg_window == 0 {
            return bad("reorg_window must be at least 1");
        }
        if self.poll_interval.is_zero() || self.rpc_timeout.is_zero() {
            return bad("poll_interval and rpc_timeout must be positive");
        }
        Ok(())
    }
}
