//! An epoch as settlement computes it: the payments it includes and holds, the build it extends, and the
//! build itself (split, cumulative tree, report). `build` makes one, `store` keeps it, `submit` proposes it.

use std::collections::HashMap;

use alloy::primitives::{Address, B256, U256};
use openledger_settlement::{RewardTree, Share, Split};
use serde_json::{Value, json};

use crate::common::hex_addr;

/// A payment the epoch splits.
#[derive(Debug, Clone)]
pub struct IncludedPayment {
    pub tx_hash: String,
    pub log_index: i64,
    pub block_number: i64,
    pub pool_amount: U256,
    pub inference_id: String,
    /// The attribution record the split follows (SHA-256 of its canonical text).
    pub record_hash: String,
    pub shares: Vec<Share>,
}

/// A payment the epoch cannot split yet, and why; the next epoch looks at it again.
#[derive(Debug, Clone)]
pub struct HeldPayment {
    pub tx_hash: String,
    pub log_index: i64,
    pub block_number: i64,
    pub pool_amount: U256,
    pub inference_id: Option<String>,
    pub reason: String,
}

/// The build this one extends.
#[derive(Debug, Clone)]
pub struct Previous {
    pub id: i64,
    pub epoch: u64,
    pub root: String,
    pub to_block: u64,
}

/// One epoch, computed and not yet stored.
#[derive(Debug)]
pub struct Build {
    pub epoch: u64,
    pub from_block: u64,
    pub to_block: u64,
    pub to_block_hash: B256,
    pub previous: Option<Previous>,
    pub treasury: Address,
    pub included: Vec<IncludedPayment>,
    pub held: Vec<HeldPayment>,
    pub split: Split,
    pub tree: RewardTree,
    /// Canonical JSON (sorted keys, no whitespace) and its SHA-256.
    pub report: String,
    pub report_hash: String,
    pub uri: String,
}

impl Build {
    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    pub fn total(&self) -> U256 {
        self.tree.total()
    }

    /// What `settle --json` and the API print about it (the report without its per-payment lists).
    pub fn summary(&self) -> Value {
        let mut reasons: HashMap<&str, usize> = HashMap::new();
        for h in &self.held {
            *reasons.entry(h.reason.as_str()).or_default() += 1;
        }
        json!({
            "epoch": self.epoch,
            "from_block": self.from_block,
            "to_block": self.to_block,
            "root": self.root().to_string(),
            "total": self.total().to_string(),
            "pool_amount": self.split.pool.to_string(),
            "protocol_amount": self.split.protocol.to_string(),
            "treasury": hex_addr(self.treasury),
            "accounts": self.tree.entries.len(),
            "paid_accounts": self.tree.entries.iter().filter(|e| !e.amount.is_zero()).count(),
            "included": self.included.len(),
            "held": self.held.len(),
            "held_reasons": reasons,
            "report_hash": self.report_hash,
            "uri": self.uri,
        })
    }
}
