//! `openledger settle watch`: a watcher of the RewardDistributor's pending root. Each round it reads the
//! pending root from the chain, recomputes it as `settle verify` does (the chain's own logs and this
//! database's attribution records), and disputes a root that does not match (or that this database never
//! built: a stolen settler key's) during its challenge delay, posting the bond from the watcher's key. A
//! root is checked once per (epoch, root); a dispute is sent once (the chain refuses a second one).

use alloy::primitives::{Address, B256, U256};
use alloy::providers::DynProvider;
use openledger_chain::ContractKind;
use openledger_chain::bindings::{OpenToken, RewardDistributor};
use serde_json::{Value, json};

use super::{Context, SettleError, verify};
use crate::chain::{self, SendError};

/// What one look at the pending root found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No root is pending.
    Nothing,
    /// The pending root is what this database recomputes.
    Matches { epoch: u64, root: B256 },
    /// The pending root is disputed already (by `disputer`).
    Disputed {
        epoch: u64,
        root: B256,
        disputer: Address,
    },
    /// The pending root is wrong but its challenge delay is over: only the revoker can act now.
    TooLate {
        epoch: u64,
        root: B256,
        reason: String,
    },
    /// The pending root was wrong and this watcher disputed it.
    DisputedNow {
        epoch: u64,
        root: B256,
        reason: String,
        tx: B256,
    },
}

impl Finding {
    pub fn json(&self) -> Value {
        match self {
            Finding::Nothing => json!({"finding": "nothing pending"}),
            Finding::Matches { epoch, root } => {
                json!({"finding": "matches", "epoch": epoch, "root": root})
            }
            Finding::Disputed {
                epoch,
                root,
                disputer,
            } => {
                json!({"finding": "disputed already", "epoch": epoch, "root": root, "disputer": disputer})
            }
            Finding::TooLate {
                epoch,
                root,
                reason,
            } => {
                json!({"finding": "wrong, challenge delay over", "epoch": epoch, "root": root, "reason": reason})
            }
            Finding::DisputedNow {
                epoch,
                root,
                reason,
                tx,
            } => {
                json!({"finding": "wrong, disputed", "epoch": epoch, "root": root, "reason": reason, "tx": tx})
            }
        }
    }
}

/// The longest dispute reason sent on chain (the differences can be many; the first ones say enough).
pub const MAX_REASON_BYTES: usize = 512;

fn distributor(s: &Context) -> RewardDistributor::RewardDistributorInstance<DynProvider> {
    RewardDistributor::new(s.distributor, s.provider().clone())
}

/// Why the pending `(epoch, root)` is wrong, or `None` when this database recomputes exactly it.
pub async fn wrong(s: &Context, epoch: u64, root: B256) -> Result<Option<String>, SettleError> {
    match verify::verify(s, epoch).await {
        Ok(v) if v.matches && v.root == root.to_string() => Ok(None),
        Ok(v) if v.matches => Ok(Some(format!(
            "the pending root {root} is not the recomputed {}",
            v.root
        ))),
        Ok(v) => Ok(Some(v.differences.join("; "))),
        // a root this database never built: nobody can show it is right
        Err(SettleError::Stored(why)) => Ok(Some(why)),
        Err(e) => Err(e),
    }
}

/// One round: look at the pending root and dispute it if it is wrong and still in its challenge delay.
pub async fn watch_once(s: &Context) -> Result<Finding, SettleError> {
    let d = distributor(s);
    let pending = d.pendingRoot().call().await.map_err(SettleError::rpc)?;
    if pending.root == B256::ZERO {
        return Ok(Finding::Nothing);
    }
    let (epoch, root) = (pending.epoch, pending.root);
    let open = d.pendingDispute().call().await.map_err(SettleError::rpc)?;
    if open.disputer != Address::ZERO {
        return Ok(Finding::Disputed {
            epoch,
            root,
            disputer: open.disputer,
        });
    }
    let Some(reason) = wrong(s, epoch, root).await? else {
        return Ok(Finding::Matches { epoch, root });
    };
    // the chain's clock decides whether a dispute is still on time
    let now = s.chain.now().await.map_err(SettleError::rpc)?;
    if now >= pending.validAt {
        return Ok(Finding::TooLate {
            epoch,
            root,
            reason,
        });
    }
    let tx = dispute(s, epoch, root, &reason).await?;
    Ok(Finding::DisputedNow {
        epoch,
        root,
        reason,
        tx,
    })
}

/// Posts the bond (approving it first where the allowance is short) and disputes `(epoch, root)`.
async fn dispute(s: &Context, epoch: u64, root: B256, reason: &str) -> Result<B256, SettleError> {
    let me = s.chain.signer().ok_or(SettleError::NoKey)?;
    let d = distributor(s);
    let bond = U256::from(d.disputeBond().call().await.map_err(SettleError::rpc)?);
    let token = OpenToken::new(
        s.deployment.address(ContractKind::OpenToken)?,
        s.provider().clone(),
    );
    let balance = token.balanceOf(me).call().await.map_err(SettleError::rpc)?;
    if balance < bond {
        return Err(SettleError::Rejected {
            epoch,
            reason: format!(
                "disputing needs a bond of {bond} OPEN wei and the watcher {me:#x} holds {balance}"
            ),
        });
    }
    let allowance = token
        .allowance(me, s.distributor)
        .call()
        .await
        .map_err(SettleError::rpc)?;
    if allowance < bond {
        chain::send_confirmed(
            "approve",
            token.approve(s.distributor, bond),
            s.cfg.confirm_timeout,
        )
        .await
        .map_err(|e| send_error(epoch, e))?;
    }
    let reason = truncate(reason, MAX_REASON_BYTES);
    let receipt = chain::send_confirmed(
        "dispute",
        d.dispute(epoch, root, reason.to_owned()),
        s.cfg.confirm_timeout,
    )
    .await
    .map_err(|e| send_error(epoch, e))?;
    tracing::warn!(epoch, %root, tx = %receipt.transaction_hash, reason, "pending root disputed");
    Ok(receipt.transaction_hash)
}

fn send_error(epoch: u64, e: SendError) -> SettleError {
    match e {
        SendError::Reverted { what, reason } => SettleError::Rejected {
            epoch,
            reason: format!("{what} {reason}"),
        },
        SendError::Node { what, detail } => SettleError::Rpc(format!("{what}: {detail}")),
        e @ SendError::Dropped { .. } => SettleError::Rpc(e.to_string()),
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: cutting inside it backs off to before it
        assert_eq!(truncate("aé", 2), "a");
    }
}
