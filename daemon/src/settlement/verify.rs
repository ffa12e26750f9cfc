//! `openledger settle verify`: recompute an epoch from the chain's own logs and the stored attribution
//! records, and compare it with the root the chain holds. Nothing here trusts the index or the stored
//! split: payments are read from their receipts, weights from each record's hashed canonical text, the
//! previous leaves are checked against the previous epoch's root on chain.

use std::collections::{HashMap, HashSet};

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use openledger_chain::bindings::FeeRouter;
use openledger_settlement::{RewardTree, Share};
use serde_json::{Value, json};

use super::context::{Context, proposal_log};
use super::{SettleError, store, u256};
use crate::common::hex_addr;

#[derive(Debug)]
pub struct Verification {
    pub epoch: u64,
    pub matches: bool,
    pub differences: Vec<String>,
    /// The recomputed root and total.
    pub root: String,
    pub total: String,
    pub onchain_root: Option<String>,
    pub payments: usize,
    pub accounts: usize,
}

impl Verification {
    pub fn json(&self) -> Value {
        json!({
            "epoch": self.epoch, "matches": self.matches, "differences": self.differences,
            "root": self.root, "total": self.total, "onchain_root": self.onchain_root,
            "payments": self.payments, "accounts": self.accounts,
        })
    }
}

pub async fn verify(s: &Context, epoch: u64) -> Result<Verification, SettleError> {
    let row = store::epoch(&s.pool, s.chain_id, s.distributor, epoch)
        .await?
        .ok_or_else(|| {
            SettleError::Stored(format!(
                "epoch {epoch} was not built by this daemon's database"
            ))
        })?;
    let mut diff = Vec::new();
    let report_text = store::report(&s.pool, row.id).await?;
    if crate::common::sha256_hex(report_text.as_bytes()) != row.report_hash {
        diff.push("the stored report does not hash to its recorded hash".to_owned());
    }
    let report: Value = serde_json::from_str(&report_text)
        .map_err(|e| SettleError::Stored(format!("report of epoch {epoch}: {e}")))?;
    let to_block = row.to_block as u64;

    // 1. the root on chain
    // a proposal comes after the epoch's last block: the log query starts there
    let onchain = proposal_log(s, epoch, to_block)
        .await?
        .map(|p| (p.root, p.total, p.uri));
    match &onchain {
        None => diff.push(format!("the chain has no proposal of epoch {epoch}")),
        Some((_, _, uri)) if *uri != row.uri => diff.push(format!(
            "the proposal's uri {uri:?} does not name this report ({})",
            row.uri
        )),
        _ => {}
    }
    // 2. every InferencePaid of the range is in the report, included or held
    unlisted_payments(s, &report, row.from_block as u64, to_block, &mut diff).await?;
    // 3. each included payment: its log from its receipt, its inference, its record's weights
    let payments = included_payments(s, &report, to_block, &mut diff).await?;
    // 4. the leaves this epoch extends, checked against the previous root on chain
    let previous = match row.previous_id {
        Some(id) => previous_leaves(s, id, &mut diff).await?,
        None => Vec::new(),
    };
    // 5. the protocol's address as the chain had it at the epoch's end
    let treasury = super::build::treasury_at(s, to_block).await?;
    if report["treasury"].as_str() != Some(hex_addr(treasury).as_str()) {
        diff.push(format!(
            "the report names treasury {}, the FeeRouter had {treasury:#x} at block {to_block}",
            report["treasury"]
        ));
    }

    // 6. the recomputation
    let (_, tree) = openledger_settlement::settle(
        &previous,
        payments.iter().map(|(a, sh)| (*a, sh.as_slice())),
        treasury,
    )?;
    let root = tree.root().to_string();
    let total = tree.total();
    if root != row.root {
        diff.push(format!("recomputed root {root}, stored {}", row.root));
    }
    if let Some((r, t, _)) = &onchain {
        if r.to_string() != root {
            diff.push(format!("recomputed root {root}, the chain has {r}"));
        }
        if *t != total {
            diff.push(format!("recomputed total {total}, the chain has {t}"));
        }
    }
    if u256(&row.total)? != total {
        diff.push(format!("recomputed total {total}, stored {}", row.total));
    }
    Ok(Verification {
        epoch,
        matches: diff.is_empty(),
        differences: diff,
        root,
        total: total.to_string(),
        onchain_root: onchain.map(|(r, _, _)| r.to_string()),
        payments: payments.len(),
        accounts: tree.entries.len(),
    })
}

/// Step 2: every `InferencePaid` of the FeeRouter in `from..=to` is listed in the report, included or held.
async fn unlisted_payments(
    s: &Context,
    report: &Value,
    from: u64,
    to: u64,
    diff: &mut Vec<String>,
) -> Result<(), SettleError> {
    let listed: HashSet<(String, i64)> = ["payments", "held"]
        .iter()
        .flat_map(|k| report[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p["tx_hash"].as_str()?.to_owned(), p["log_index"].as_i64()?)))
        .collect();
    let mut start = from;
    while start <= to {
        let end = (start + 9_999).min(to);
        let filter = Filter::new()
            .address(s.fee_router)
            .event_signature(FeeRouter::InferencePaid::SIGNATURE_HASH)
            .from_block(start)
            .to_block(end);
        for l in s
            .provider()
            .get_logs(&filter)
            .await
            .map_err(SettleError::rpc)?
        {
            let key = (
                l.transaction_hash
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                l.log_index.unwrap_or_default() as i64,
            );
            if !listed.contains(&key) {
                diff.push(format!(
                    "payment {}:{} of block {} is in the epoch's range but neither included nor held",
                    key.0,
                    key.1,
                    l.block_number.unwrap_or_default()
                ));
            }
        }
        start = end + 1;
    }
    Ok(())
}

/// Step 3: each payment the report includes, checked against the chain and the database; returns the
/// pool amounts and shares to recompute the split from.
async fn included_payments(
    s: &Context,
    report: &Value,
    to_block: u64,
    diff: &mut Vec<String>,
) -> Result<Vec<(U256, Vec<Share>)>, SettleError> {
    let mut receipts: HashMap<B256, alloy::rpc::types::TransactionReceipt> = HashMap::new();
    let mut payments: Vec<(U256, Vec<Share>)> = Vec::new();
    let empty = vec![];
    for p in report["payments"].as_array().unwrap_or(&empty) {
        let tx: B256 = p["tx_hash"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| SettleError::Stored(format!("payment {p} in the report")))?;
        let log_index = p["log_index"].as_u64().unwrap_or(u64::MAX);
        let what = format!("payment {tx}:{log_index}");
        // the public report names no inference (ids are what keeps attribution records private): the
        // inference is found here by its record's hash (reports written before that also named it)
        let Some(inference_id) = inference_of(s, p, &what, diff).await? else {
            continue;
        };
        let inference_id = inference_id.as_str();
        if let std::collections::hash_map::Entry::Vacant(slot) = receipts.entry(tx) {
            match s
                .provider()
                .get_transaction_receipt(tx)
                .await
                .map_err(SettleError::rpc)?
            {
                Some(r) => {
                    slot.insert(r);
                }
                None => {
                    diff.push(format!("{what}: no such transaction on chain"));
                    continue;
                }
            }
        }
        let receipt = &receipts[&tx];
        let Some(paid) = paid_event(s, receipt, log_index, &what, diff) else {
            continue;
        };
        if receipt.block_number.is_none_or(|b| b > to_block) {
            diff.push(format!(
                "{what}: mined after the epoch's last block {to_block}"
            ));
        }
        if p["pool_amount"].as_str() != Some(paid.poolAmount.to_string().as_str()) {
            diff.push(format!(
                "{what}: the chain says poolAmount {}, the report {}",
                paid.poolAmount, p["pool_amount"]
            ));
        }
        check_inference(s, inference_id, &paid, &what, diff).await?;
        let Some(shares) = record_shares(s, p, inference_id, &what, diff).await? else {
            continue;
        };
        payments.push((paid.poolAmount, shares));
    }
    Ok(payments)
}

/// The `InferencePaid` of the FeeRouter at `log_index` of a receipt, or why there is none.
fn paid_event(
    s: &Context,
    receipt: &alloy::rpc::types::TransactionReceipt,
    log_index: u64,
    what: &str,
    diff: &mut Vec<String>,
) -> Option<FeeRouter::InferencePaid> {
    let Some(log) = receipt
        .inner
        .logs()
        .iter()
        .find(|l| l.log_index == Some(log_index))
    else {
        diff.push(format!("{what}: the transaction has no such log"));
        return None;
    };
    match log.log_decode::<FeeRouter::InferencePaid>() {
        Ok(e) if log.address() == s.fee_router => Some(e.inner.data),
        _ => {
            diff.push(format!("{what}: not an InferencePaid of the FeeRouter"));
            None
        }
    }
}

/// The inference whose attribution record the report's payment names by hash; `None` (with the reason in
/// `diff`) when this daemon holds no such record.
async fn inference_of(
    s: &Context,
    p: &Value,
    what: &str,
    diff: &mut Vec<String>,
) -> Result<Option<String>, SettleError> {
    if let Some(id) = p["inference_id"].as_str() {
        return Ok(Some(id.to_owned()));
    }
    let Some(hash) = p["record_hash"].as_str() else {
        diff.push(format!("{what}: the report names no attribution record"));
        return Ok(None);
    };
    let id: Option<String> =
        sqlx::query_scalar("SELECT inference_id FROM attributions WHERE record_hash = $1 LIMIT 1")
            .bind(hash)
            .fetch_optional(&s.pool)
            .await?;
    if id.is_none() {
        diff.push(format!("{what}: no attribution record hashes to {hash}"));
    }
    Ok(id)
}

/// The inference the payment paid for succeeded, and used exactly this payment (payer and request id).
async fn check_inference(
    s: &Context,
    inference_id: &str,
    paid: &FeeRouter::InferencePaid,
    what: &str,
    diff: &mut Vec<String>,
) -> Result<(), SettleError> {
    let inf: Option<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT status, payer, request_id FROM inferences WHERE id = $1")
            .bind(inference_id)
            .fetch_optional(&s.pool)
            .await?;
    match inf {
        Some((status, payer, request)) => {
            if status != "succeeded"
                || payer.as_deref() != Some(hex_addr(paid.payer).as_str())
                || request.as_deref() != Some(paid.requestId.to_string().as_str())
            {
                diff.push(format!(
                    "{what}: inference {inference_id} ({status}) did not use this payment"
                ));
            }
        }
        None => diff.push(format!("{what}: inference {inference_id} does not exist")),
    }
    Ok(())
}

/// The shares of an inference's pool, from its attribution record's hashed text; `None` when it has no
/// record. Weights that do not sum to the whole pool split it as if unattributed, so the rest of the epoch
/// is still compared.
async fn record_shares(
    s: &Context,
    p: &Value,
    inference_id: &str,
    what: &str,
    diff: &mut Vec<String>,
) -> Result<Option<Vec<Share>>, SettleError> {
    let rec: Option<(Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT record_canonical, record_hash, status FROM attributions WHERE inference_id = $1",
    )
    .bind(inference_id)
    .fetch_optional(&s.pool)
    .await?;
    let Some((Some(canonical), Some(hash), status)) = rec else {
        diff.push(format!(
            "{what}: inference {inference_id} has no attribution record"
        ));
        return Ok(None);
    };
    let recomputed = crate::common::sha256_hex(canonical.as_bytes());
    if recomputed != hash || p["record_hash"].as_str() != Some(hash.as_str()) {
        diff.push(format!(
            "{what}: the attribution record hashes to {recomputed}; stored {hash}, report {}",
            p["record_hash"]
        ));
    }
    if status != "complete" {
        diff.push(format!("{what}: the attribution is {status}, not complete"));
    }
    let record: Value = serde_json::from_str(&canonical)
        .map_err(|e| SettleError::Stored(format!("record of {inference_id}: {e}")))?;
    if record["inference_id"].as_str() != Some(inference_id) {
        diff.push(format!(
            "{what}: the record is not of inference {inference_id}"
        ));
    }
    let mut shares = Vec::new();
    let empty = vec![];
    for w in record["weights"]["contributions"]
        .as_array()
        .unwrap_or(&empty)
    {
        let account: Option<Address> = w["contributor"].as_str().and_then(|a| a.parse().ok());
        let ppm = w["weight"].as_u64().and_then(|v| u32::try_from(v).ok());
        match (account, ppm) {
            (Some(account), Some(ppm)) => shares.push(Share { account, ppm }),
            _ => diff.push(format!(
                "{what}: a weight of the record does not parse: {w}"
            )),
        }
    }
    let sum: u64 = shares.iter().map(|s| u64::from(s.ppm)).sum::<u64>()
        + record["weights"]["no_attribution"].as_u64().unwrap_or(0);
    if sum != openledger_settlement::PPM {
        diff.push(format!(
            "{what}: the record's weights and no-attribution part sum to {sum} ppm, not 1,000,000"
        ));
        shares.clear();
    }
    Ok(Some(shares))
}

/// Step 4: the stored leaves of the previous epoch (`id`), whose root must be the one its proposal put on
/// chain.
async fn previous_leaves(
    s: &Context,
    id: i64,
    diff: &mut Vec<String>,
) -> Result<Vec<(Address, U256)>, SettleError> {
    let prev = store::by_id(&s.pool, id).await?;
    let leaves = store::leaves(&s.pool, id).await?;
    let entries = leaves
        .iter()
        .map(|&(account, cumulative)| openledger_settlement::Entry {
            account,
            cumulative,
            amount: U256::ZERO,
        })
        .collect();
    let root = RewardTree::build(entries)?.root();
    match proposal_log(s, prev.epoch as u64, prev.to_block as u64).await? {
        Some(p) if p.root == root => {}
        Some(p) => diff.push(format!(
            "the previous epoch's stored leaves give root {root}, the chain has {}",
            p.root
        )),
        None => diff.push(format!(
            "the previous epoch {} has no proposal on chain",
            prev.epoch
        )),
    }
    Ok(leaves)
}
