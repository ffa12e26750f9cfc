//! Building an epoch: which payments it includes and holds, their split, the cumulative tree, the report.

use std::collections::HashMap;

use alloy::eips::BlockId;
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use openledger_chain::bindings::FeeRouter;
use openledger_settlement::{RULE, Share};
use serde_json::{Value, json};

use super::context::Context;
use super::epoch::{Build, HeldPayment, IncludedPayment, Previous};
use super::{SettleError, store, u256};
use crate::common::hex_addr;

/// The last block an epoch may reach: indexed, and `finality_depth` below the head. Waits (up to the
/// configured `confirm_timeout`) while the index's last block is not the chain's block of that number: the
/// indexer has yet to see a reorg, and its rows above the fork are stale.
pub async fn final_block(s: &Context) -> Result<(u64, u64, Option<u64>), SettleError> {
    let deadline = tokio::time::Instant::now() + s.cfg.confirm_timeout;
    loop {
        let head = s
            .provider()
            .get_block_number()
            .await
            .map_err(SettleError::rpc)?;
        let indexed = s.index.indexed_through().await?;
        if index_matches_chain(s).await? {
            let by_depth = head.saturating_sub(s.cfg.finality_depth);
            return Ok((by_depth.min(indexed.unwrap_or(0)), head, indexed));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SettleError::Moving(
                "the indexer has not caught up with a reorg of the chain; is it running?".into(),
            ));
        }
        tokio::time::sleep(s.cfg.poll_interval).await;
    }
}

/// Whether the block the index ends at is the chain's block of that number.
async fn index_matches_chain(s: &Context) -> Result<bool, SettleError> {
    let key = hex_addr(
        s.deployment
            .address(openledger_chain::ContractKind::OpenToken)?,
    );
    let last: Option<(i64, String)> = sqlx::query_as(
        "SELECT c.indexed_through, b.block_hash FROM indexer_checkpoints c
         JOIN indexer_blocks b ON b.chain_id = c.chain_id AND b.deployment_key = c.deployment_key
                              AND b.block_number = c.indexed_through
         WHERE c.chain_id = $1 AND c.deployment_key = $2",
    )
    .bind(s.chain_id as i64)
    .bind(key)
    .fetch_optional(&s.pool)
    .await?;
    match last {
        None => Ok(true),
        Some((n, h)) => Ok(block_hash(s, n as u64).await?.to_string() == h),
    }
}

/// Computes epoch `epoch` on top of `previous`.
pub async fn build(
    s: &Context,
    epoch: u64,
    previous: Option<Previous>,
    progress: &indicatif::ProgressBar,
) -> Result<Build, SettleError> {
    let from_block = previous
        .as_ref()
        .map_or(s.deployment.start_block, |p| p.to_block + 1);
    let to_block = final_range_end(s, epoch, from_block).await?;
    let to_block_hash = block_hash(s, to_block).await?;

    progress.set_message("reading payments");
    let (included, held) = payments(s, to_block).await?;
    // a reorg while reading: the rows may be of the old branch
    if block_hash(s, to_block).await? != to_block_hash || !index_matches_chain(s).await? {
        return Err(SettleError::Moving(format!(
            "the chain reorganised at or below block {to_block} while epoch {epoch} was built"
        )));
    }
    if included.is_empty() {
        return Err(nothing_to_settle(to_block, &held));
    }
    let treasury = treasury_at(s, to_block).await?;
    let prev_leaves = match &previous {
        Some(p) => store::leaves(&s.pool, p.id).await?,
        None => Vec::new(),
    };
    progress.set_message(format!(
        "splitting {} payments over {} earlier accounts",
        included.len(),
        prev_leaves.len()
    ));
    let (split, tree) = openledger_settlement::settle(
        &prev_leaves,
        included
            .iter()
            .map(|p| (p.pool_amount, p.shares.as_slice())),
        treasury,
    )?;
    let mut b = Build {
        epoch,
        from_block,
        to_block,
        to_block_hash,
        previous,
        treasury,
        included,
        held,
        split,
        tree,
        report: String::new(),
        report_hash: String::new(),
        uri: String::new(),
    };
    b.report = crate::common::canonical_json(&report(s, &b));
    b.report_hash = crate::common::sha256_hex(b.report.as_bytes());
    b.uri = format!(
        "openledger://settlement/{}/{}/{}",
        s.chain_id, epoch, b.report_hash
    );
    Ok(b)
}

/// The last block of epoch `epoch`, which starts at `from_block`: the last final block, or with fixed
/// windows the end of the last whole window that is final (at least one, so a window without a payable
/// payment does not hold back the ones after it). `NotFinal` when nothing new is final yet (or the
/// finality depth grew since the last epoch).
async fn final_range_end(s: &Context, epoch: u64, from_block: u64) -> Result<u64, SettleError> {
    let (final_block, _head, indexed) = final_block(s).await?;
    let to_block = match (final_block + 1)
        .saturating_sub(from_block)
        .checked_div(s.cfg.epoch_blocks)
    {
        Some(windows) => from_block + s.cfg.epoch_blocks * windows.max(1) - 1,
        None => final_block,
    };
    if to_block > final_block || to_block < from_block {
        tracing::debug!(?indexed, to_block, final_block, "not final");
        return Err(SettleError::NotFinal {
            epoch,
            to_block: to_block.max(from_block),
            final_block,
            depth: s.cfg.finality_depth,
        });
    }
    Ok(to_block)
}

/// The refusal when no payment through `through` is payable: how many are held, and why.
fn nothing_to_settle(through: u64, held: &[HeldPayment]) -> SettleError {
    let mut reasons: Vec<String> = held.iter().map(|h| h.reason.clone()).collect();
    reasons.sort();
    reasons.dedup();
    SettleError::NothingToSettle {
        through,
        held: held.len(),
        reasons: if reasons.is_empty() {
            "no payments".into()
        } else {
            reasons.join("; ")
        },
    }
}

/// The protocol's address (FeeRouter's `treasury()`) as of block `number`: it takes the protocol's part.
pub async fn treasury_at(s: &Context, number: u64) -> Result<Address, SettleError> {
    FeeRouter::new(s.fee_router, s.provider())
        .treasury()
        .block(BlockId::number(number))
        .call()
        .await
        .map_err(SettleError::rpc)
}

pub async fn block_hash(s: &Context, number: u64) -> Result<B256, SettleError> {
    let block = s
        .provider()
        .get_block_by_number(number.into())
        .await
        .map_err(SettleError::rpc)?
        .ok_or_else(|| SettleError::Rpc(format!("the node has no block {number}")))?;
    Ok(block.header.hash)
}

/// A payment no live epoch included, with the inference that used it and that inference's attribution.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    tx_hash: String,
    log_index: i64,
    block_number: i64,
    pool_amount: String,
    paid_model: String,
    inference: Option<String>,
    inf_status: Option<String>,
    served_model: Option<String>,
    attr_status: Option<String>,
    record_hash: Option<String>,
    attr_error: Option<String>,
    /// An inference with this request id failed (the payer may use the id again).
    failed_before: bool,
}

impl PaymentRow {
    /// Why the payment cannot be included yet, if it cannot.
    fn held_because(&self) -> Option<String> {
        let (inference, st, attr) = (
            &self.inference,
            self.inf_status.as_deref(),
            self.attr_status.as_deref(),
        );
        match (inference, st, attr) {
            (None, _, _) if self.failed_before => {
                Some("its inference failed; the payer may use the request id again".to_owned())
            }
            (None, _, _) => Some("no inference has used this payment yet".to_owned()),
            (Some(_), Some("running"), _) => Some("the inference is still running".to_owned()),
            (Some(_), Some(st), _) if st != "succeeded" => Some(format!("the inference is {st}")),
            _ if self.served_model.as_deref() != Some(self.paid_model.as_str()) => Some(format!(
                "paid for model {}, served {}",
                self.paid_model,
                self.served_model.as_deref().unwrap_or("a base model")
            )),
            (Some(_), _, None) => Some("the inference has no attribution record".to_owned()),
            (Some(_), _, Some("pending")) => {
                Some("its attribution is pending (gradient part queued)".to_owned())
            }
            (Some(_), _, Some("flagged")) => Some(format!(
                "its attribution is flagged: {}",
                self.attr_error.as_deref().unwrap_or("no reason given")
            )),
            _ => None,
        }
    }

    /// Included (without its shares yet), or held with the reason.
    fn sort(self) -> Result<Result<IncludedPayment, HeldPayment>, SettleError> {
        let pool_amount = u256(&self.pool_amount)?;
        Ok(
            match (self.held_because(), self.inference, self.record_hash) {
                (None, Some(inference_id), Some(record_hash)) => Ok(IncludedPayment {
                    tx_hash: self.tx_hash,
                    log_index: self.log_index,
                    block_number: self.block_number,
                    pool_amount,
                    inference_id,
                    record_hash,
                    shares: Vec::new(),
                }),
                (reason, inference_id, _) => Err(HeldPayment {
                    tx_hash: self.tx_hash,
                    log_index: self.log_index,
                    block_number: self.block_number,
                    pool_amount,
                    inference_id,
                    reason: reason.unwrap_or_else(|| "the attribution record has no hash".into()),
                }),
            },
        )
    }
}

/// Every payment up to `to_block` that no live epoch included, sorted into included and held.
async fn payments(
    s: &Context,
    to_block: u64,
) -> Result<(Vec<IncludedPayment>, Vec<HeldPayment>), SettleError> {
    let rows: Vec<PaymentRow> = sqlx::query_as(
        "SELECT p.tx_hash, p.log_index, p.block_number, p.pool_amount::text AS pool_amount,
                p.model_id::text AS paid_model, i.id AS inference, i.status AS inf_status,
                i.model_id::text AS served_model, a.status AS attr_status, a.record_hash,
                a.error AS attr_error,
                EXISTS (SELECT 1 FROM inferences f WHERE f.chain_id = p.chain_id AND f.payer = p.payer
                        AND f.request_id = p.request_id AND f.status = 'failed') AS failed_before
         FROM inference_payments p
         LEFT JOIN LATERAL (
             SELECT id, status, model_id FROM inferences i
             WHERE i.chain_id = p.chain_id AND i.payer = p.payer AND i.request_id = p.request_id
               AND i.status <> 'failed'
             ORDER BY (i.status = 'succeeded') DESC, i.created_at LIMIT 1) i ON true
         LEFT JOIN attributions a ON a.inference_id = i.id
         WHERE p.chain_id = $1 AND p.contract_address = $2 AND p.block_number <= $3
           AND NOT EXISTS (SELECT 1 FROM settlement_payments sp
                           WHERE sp.included AND sp.chain_id = p.chain_id AND sp.tx_hash = p.tx_hash
                             AND sp.log_index = p.log_index)
         ORDER BY p.block_number, p.log_index",
    )
    .bind(s.chain_id as i64)
    .bind(hex_addr(s.fee_router))
    .bind(to_block as i64)
    .fetch_all(&s.pool)
    .await?;
    let mut included = Vec::new();
    let mut held = Vec::new();
    for r in rows {
        match r.sort()? {
            Ok(p) => included.push(p),
            Err(h) => held.push(h),
        }
    }
    attach_shares(s, &mut included).await?;
    // a record whose weights overflow the pool would stop every epoch: hold it alone, with the reason
    let (ok, bad): (Vec<_>, Vec<_>) = included.into_iter().partition(|p| {
        p.shares.iter().map(|s| u64::from(s.ppm)).sum::<u64>() <= openledger_settlement::PPM
    });
    for p in bad {
        let sum: u64 = p.shares.iter().map(|s| u64::from(s.ppm)).sum();
        held.push(HeldPayment {
            tx_hash: p.tx_hash,
            log_index: p.log_index,
            block_number: p.block_number,
            pool_amount: p.pool_amount,
            inference_id: Some(p.inference_id),
            reason: format!("its attribution weights sum to {sum} ppm, more than 1,000,000"),
        });
    }
    Ok((ok, held))
}

/// Reads the attribution weights of the included inferences into their shares.
async fn attach_shares(s: &Context, included: &mut [IncludedPayment]) -> Result<(), SettleError> {
    let ids: Vec<String> = included.iter().map(|p| p.inference_id.clone()).collect();
    let mut shares: HashMap<String, Vec<Share>> = HashMap::new();
    for chunk in ids.chunks(10_000) {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT inference_id, contributor, weight FROM attribution_weights
             WHERE inference_id = ANY($1) ORDER BY inference_id, source",
        )
        .bind(chunk)
        .fetch_all(&s.pool)
        .await?;
        for (id, contributor, weight) in rows {
            let account: Address = contributor
                .parse()
                .map_err(|_| SettleError::Stored(format!("contributor {contributor:?}")))?;
            let ppm = u32::try_from(weight)
                .map_err(|_| SettleError::Stored(format!("weight {weight} of {id}")))?;
            shares.entry(id).or_default().push(Share { account, ppm });
        }
    }
    for p in included {
        p.shares = shares.remove(&p.inference_id).unwrap_or_default();
    }
    Ok(())
}

/// The epoch's report: everything needed to recompute the root, and the root.
fn report(s: &Context, b: &Build) -> Value {
    json!({
        "rule": RULE,
        "chain_id": s.chain_id,
        "distributor": hex_addr(s.distributor),
        "fee_router": hex_addr(s.fee_router),
        "epoch": b.epoch,
        "from_block": b.from_block,
        "to_block": b.to_block,
        "to_block_hash": b.to_block_hash.to_string(),
        "previous": b.previous.as_ref().map(|p| json!({"epoch": p.epoch, "root": p.root})),
        "treasury": hex_addr(b.treasury),
        "payments": b.included.iter().map(|p| json!({
            "tx_hash": p.tx_hash, "log_index": p.log_index, "block_number": p.block_number,
            "pool_amount": p.pool_amount.to_string(), "record_hash": p.record_hash,
        })).collect::<Vec<_>>(),
        "held": b.held.iter().map(|p| json!({
            "tx_hash": p.tx_hash, "log_index": p.log_index, "block_number": p.block_number,
            "pool_amount": p.pool_amount.to_string(), "reason": p.reason,
        })).collect::<Vec<_>>(),
        "leaves": b.tree.entries.iter().map(|e| json!({
            "account": hex_addr(e.account), "cumulative": e.cumulative.to_string(),
            "amount": e.amount.to_string(),
        })).collect::<Vec<_>>(),
        "pool_amount": b.split.pool.to_string(),
        "protocol_amount": b.split.protocol.to_string(),
        "total": b.total().to_string(),
        "root": b.root().to_string(),
    })
}
