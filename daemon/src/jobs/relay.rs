//! `relay_contribution`: sends a contributor's signed `contributeWithSig` from the daemon's key and follows
//! it until the indexer has the event. Safe to re-run at any point: the contract's per-contributor nonce
//! makes a signature good once, and every step first looks at what the chain and the index already hold.

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use futures::FutureExt;
use futures::future::BoxFuture;
use openledger_indexer::query::{ChainIndex, Contribution};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::queue::{NewJob, Queue};
use super::worker::{JobContext, JobError, JobHandler};
use crate::chain::Chain;
use crate::quotas::{Quota, QuotaError, Quotas};
use crate::uploads::{self, NewRelay, RelayRow};

pub const KIND: &str = "relay_contribution";

/// Records a signed relay request and queues the job that sends it, in one transaction that also charges the
/// contributor's daily relay quota (the daemon's key pays the gas). `None` if this exact signature request
/// (contributor, nonce, upload) is already queued.
pub async fn queue(
    pool: &PgPool,
    r: &NewRelay,
    quotas: &Quotas,
) -> Result<Option<RelayRow>, QuotaError> {
    let mut tx = pool.begin().await?;
    let Some(id) = uploads::insert_relay(&mut tx, r).await? else {
        return Ok(None);
    };
    quotas
        .charge(&mut tx, r.contributor, Quota::Relays, 1, None)
        .await?;
    let job = Queue::submit_in(
        &mut tx,
        &NewJob {
            kind: KIND.into(),
            owner: r.contributor,
            params: json!({ "relay_id": id }),
            priority: 10,
            // with the doubling back-off, about four minutes of node trouble before it fails for good
            max_attempts: 8,
        },
    )
    .await?;
    let row = uploads::attach_job(&mut tx, id, job.id).await?;
    tx.commit().await?;
    Ok(Some(row))
}

#[derive(Debug, Clone)]
pub struct RelayJob {
    pub pool: PgPool,
    pub index: ChainIndex,
    pub chain: Chain,
    /// How long to wait for the receipt, and then for the indexer, before the attempt counts as failed.
    pub confirm_timeout: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    relay_id: i64,
}

impl JobHandler for RelayJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn submittable(&self) -> bool {
        false
    }

    fn validate(&self, params: &Value) -> Result<Value, String> {
        let p: Params = serde_json::from_value(params.clone()).map_err(|e| e.to_string())?;
        Ok(json!({ "relay_id": p.relay_id }))
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        async move {
            let p: Params =
                serde_json::from_value(ctx.params().clone()).map_err(JobError::fatal)?;
            let relay = uploads::relay(&self.pool, p.relay_id)
                .await?
                .ok_or_else(|| JobError::fatal(format!("relay {} does not exist", p.relay_id)))?;
            let last_attempt = ctx.attempt() >= ctx.lease.job.max_attempts;
            let in_window = time::OffsetDateTime::now_utc() - ctx.lease.job.created_at
                < super::queue::UNAVAILABLE_RETRY_WINDOW;
            match self.relay(&ctx, &relay).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    let again = e.retryable && (!last_attempt || (e.unavailable && in_window));
                    if !again {
                        uploads::set_relay_state(
                            &self.pool,
                            relay.id,
                            "failed",
                            None,
                            None,
                            Some(&e.message),
                        )
                        .await?;
                    }
                    Err(e)
                }
            }
        }
        .boxed()
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, JobError> {
    s.parse()
        .map_err(|_| JobError::fatal(format!("stored {what} {s:?} does not parse")))
}

impl RelayJob {
    /// The contributor's own contribution of this content: someone else's of the same hash (a front-runner's
    /// copy, say) neither confirms nor blocks this relay.
    async fn find_onchain(
        &self,
        datanet: U256,
        contributor: Address,
        hash: B256,
    ) -> Result<Option<Contribution>, JobError> {
        self.index
            .contribution_of(datanet, contributor, hash)
            .await
            .map_err(JobError::retryable)
    }

    async fn confirmed(
        &self,
        ctx: &JobContext,
        relay: &RelayRow,
        c: &Contribution,
    ) -> Result<Value, JobError> {
        uploads::set_relay_state(
            &self.pool,
            relay.id,
            "confirmed",
            Some(c.tx_hash),
            Some(c.id),
            None,
        )
        .await?;
        ctx.log(format!(
            "confirmed: contribution {} in block {} (tx {})",
            c.id, c.block_number, c.tx_hash
        ))
        .await;
        Ok(json!({
            "relay_id": relay.id,
            "contribution_id": c.id.to_string(),
            "tx_hash": c.tx_hash.to_string(),
            "block_number": c.block_number,
        }))
    }

    async fn wait_for_index(
        &self,
        ctx: &JobContext,
        relay: &RelayRow,
        datanet: U256,
        hash: B256,
    ) -> Result<Value, JobError> {
        let contributor: Address = parse("contributor", &relay.contributor)?;
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        loop {
            if let Some(c) = self.find_onchain(datanet, contributor, hash).await? {
                return self.confirmed(ctx, relay, &c).await;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(JobError::retryable(
                    "the transaction is mined but the indexer has not seen the event yet",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether transaction `tx` is mined (an error if it reverted).
    async fn mined(&self, ctx: &JobContext, tx: B256) -> Result<bool, JobError> {
        let Some(r) = self
            .chain
            .provider()
            .get_transaction_receipt(tx)
            .await
            .map_err(JobError::unavailable)?
        else {
            return Ok(false);
        };
        if !r.status() {
            return Err(JobError::fatal(format!("transaction {tx} reverted")));
        }
        ctx.log(format!(
            "transaction {tx} is mined; waiting for the indexer"
        ))
        .await;
        Ok(true)
    }

    async fn relay(&self, ctx: &JobContext, relay: &RelayRow) -> Result<Value, JobError> {
        let upload = uploads::get(&self.pool, relay.upload_id)
            .await?
            .ok_or_else(|| JobError::fatal("the upload is gone"))?;
        let datanet: U256 = parse("datanet id", &upload.datanet_id)?;
        let hash: B256 = parse("content hash", &upload.content_hash)?;
        let contributor: Address = parse("contributor", &relay.contributor)?;
        let nonce: U256 = parse("nonce", &relay.nonce)?;
        let deadline: U256 = parse("deadline", &relay.deadline)?;
        let signature: Bytes = parse("signature", &relay.signature)?;

        if let Some(c) = self.find_onchain(datanet, contributor, hash).await? {
            return self.confirmed(ctx, relay, &c).await;
        }
        // a previous attempt's transaction, mined
        if let Some(prev) = &relay.tx_hash
            && self.mined(ctx, parse("tx hash", prev)?).await?
        {
            return self.wait_for_index(ctx, relay, datanet, hash).await;
        }
        let current = self
            .chain
            .contribute_nonce(contributor)
            .await
            .map_err(JobError::unavailable)?;
        if current > nonce {
            // the signature was used (by us, in flight, or by someone else): give the indexer its time
            ctx.log(format!(
                "nonce {nonce} is already used on chain; waiting for the indexer"
            ))
            .await;
            return self.wait_for_index(ctx, relay, datanet, hash).await.map_err(|_| {
                JobError::fatal(format!(
                    "the signature's nonce {nonce} was used by another transaction; sign a new payload"
                ))
            });
        }
        if current < nonce {
            return Err(JobError::fatal(format!(
                "the signature is for nonce {nonce} but the contributor's next nonce is {current}"
            )));
        }
        let registry = self.chain.registry();
        let call = registry.contributeWithSig(
            contributor,
            datanet,
            hash,
            upload.metadata_uri.clone(),
            nonce,
            deadline,
            signature,
        );
        // simulated first: a revert is final and costs no gas
        let sent = self.chain.send("contributeWithSig", &call).await?;
        let tx_hash = sent.tx_hash;
        uploads::set_relay_state(&self.pool, relay.id, "submitted", Some(tx_hash), None, None)
            .await?;
        ctx.log(format!("submitted transaction {tx_hash}")).await;
        ctx.progress(0.5).await;
        let receipt = self
            .chain
            .confirm("contributeWithSig", &sent, self.confirm_timeout)
            .await?;
        if receipt.transaction_hash != tx_hash {
            // an attempt re-sent with higher fees was the one mined
            let mined = Some(receipt.transaction_hash);
            uploads::set_relay_state(&self.pool, relay.id, "submitted", mined, None, None).await?;
            ctx.log(format!(
                "re-sent with higher fees as {}",
                receipt.transaction_hash
            ))
            .await;
        }
        ctx.log(format!(
            "mined in block {}; waiting for the indexer",
            receipt.block_number.unwrap_or_default()
        ))
        .await;
        self.wait_for_index(ctx, relay, datanet, hash).await
    }
}
