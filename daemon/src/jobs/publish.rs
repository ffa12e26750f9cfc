//! What the jobs that write to the chain share: the daemon's signing key, the job-side reading of a failed
//! call (a revert is final, a node error worth another attempt), and sending a transaction with its hash
//! in the job's log. The sending itself is `Chain::send`'s and `Chain::confirm`'s.

use std::time::Duration;

use alloy::primitives::Address;
use alloy::rpc::types::TransactionReceipt;

use super::worker::{JobContext, JobError};
use crate::chain::{self, Call, Chain, SendError};

impl From<SendError> for JobError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Reverted { .. } => JobError::fatal(e),
            SendError::Node { .. } => JobError::unavailable(e),
            SendError::Dropped { .. } => JobError::retryable(e),
        }
    }
}

/// A failed contract call: a revert is final, anything else (node, network) retried through an outage.
pub fn classify(e: alloy::contract::Error) -> JobError {
    if e.as_revert_data().is_some() {
        JobError::fatal(chain::revert_reason(&e))
    } else {
        JobError::unavailable(e)
    }
}

/// The daemon's chain connection and key, or why it cannot send transactions.
pub fn signing_chain(chain: Option<&Chain>) -> Result<(&Chain, Address), JobError> {
    let chain = chain
        .ok_or_else(|| JobError::fatal("this daemon has no chain connection to publish with"))?;
    let me = chain
        .signer()
        .ok_or_else(|| JobError::fatal("this daemon has no key to publish with"))?;
    Ok((chain, me))
}

/// `Chain::send` and `Chain::confirm`, with the transaction's hash in the job's log as soon as it is sent.
pub async fn send_logged<D: alloy::contract::CallDecoder + Clone>(
    ctx: &JobContext,
    chain: &Chain,
    what: &str,
    call: Call<'_, D>,
    timeout: Duration,
) -> Result<TransactionReceipt, JobError> {
    let sent = chain.send(what, &call).await?;
    ctx.log(format!("{what} sent: {}", sent.tx_hash)).await;
    Ok(chain.confirm(what, &sent, timeout).await?)
}
