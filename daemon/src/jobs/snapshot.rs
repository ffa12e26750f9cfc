//! `datanet_snapshot`: freezes a Datanet's accepted contributions into a version: an OpenZeppelin
//! StandardMerkleTree over `(uint256 contributionId, address contributor, bytes32 contentHash)`, and
//! optionally publishes its root with `Registry.publishVersion` from the daemon's key (which must own the
//! Datanet). Publishing is idempotent: a version with the same root and count is not published twice.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use futures::FutureExt;
use futures::future::BoxFuture;
use openledger_chain::bindings::Registry;
use openledger_chain::merkle::{StandardMerkleTree, leaf};
use openledger_indexer::query::{ChainIndex, ContributionStatus};
use serde_json::{Value, json};

use super::publish::{classify, send_logged, signing_chain};
use super::worker::{JobContext, JobError, JobHandler, Refusal};
use crate::chain::Chain;

pub const KIND: &str = "datanet_snapshot";

/// The leaf encoding, for clients re-deriving proofs.
pub const LEAF_TYPES: [&str; 3] = ["uint256", "address", "bytes32"];

#[derive(Debug, Clone)]
pub struct SnapshotJob {
    pub index: ChainIndex,
    pub chain: Option<Chain>,
    /// How long to wait for the publish transaction's receipt.
    pub tx_timeout: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Decimal Datanet id.
    datanet_id: String,
    #[serde(default)]
    publish: bool,
    /// Where the version's manifest can be fetched (default: an `openledger://` URI naming the root).
    uri: Option<String>,
}

fn parse(params: &Value) -> Result<(U256, bool, Option<String>), String> {
    let p: Params = serde_json::from_value(params.clone()).map_err(|e| e.to_string())?;
    let id = U256::from_str_radix(&p.datanet_id, 10).map_err(|_| {
        format!(
            "datanet_id must be a decimal integer, got {:?}",
            p.datanet_id
        )
    })?;
    if let Some(u) = &p.uri
        && (u.is_empty() || u.len() > 2048)
    {
        return Err("uri must be 1 to 2048 characters".into());
    }
    Ok((id, p.publish, p.uri))
}

impl JobHandler for SnapshotJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate(&self, params: &Value) -> Result<Value, String> {
        let (id, publish, uri) = parse(params)?;
        Ok(json!({ "datanet_id": id.to_string(), "publish": publish, "uri": uri }))
    }

    fn authorize(
        &self,
        caller: Address,
        admin: bool,
        params: &Value,
    ) -> BoxFuture<'_, Result<(), Refusal>> {
        let parsed = parse(params);
        async move {
            let (id, publish, _) = parsed.map_err(Refusal::Invalid)?;
            let d = self
                .index
                .datanet(id)
                .await
                .map_err(Refusal::from)?
                .ok_or_else(|| Refusal::Invalid(format!("no Datanet {id} (indexed)")))?;
            if publish && !admin && d.owner != caller {
                return Err(Refusal::Forbidden(format!(
                    "only the Datanet's owner ({:#x}) may publish its versions",
                    d.owner
                )));
            }
            Ok(())
        }
        .boxed()
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        async move {
            let (id, publish, uri) = parse(ctx.params()).map_err(JobError::fatal)?;
            let mut contributions = Vec::new();
            loop {
                let page = self
                    .index
                    .contributions_by_datanet(
                        id,
                        Some(ContributionStatus::Accepted),
                        1000,
                        contributions.len() as i64,
                    )
                    .await
                    .map_err(JobError::retryable)?;
                let n = page.len();
                contributions.extend(page);
                if n < 1000 {
                    break;
                }
            }
            if contributions.is_empty() {
                return Err(JobError::fatal(format!(
                    "Datanet {id} has no accepted contributions yet"
                )));
            }
            ctx.log(format!("{} accepted contributions", contributions.len()))
                .await;
            ctx.progress(0.3).await;
            let leaves: Vec<B256> = contributions
                .iter()
                .map(|c| leaf(&(c.id, c.contributor, c.content_hash)))
                .collect();
            let tree = StandardMerkleTree::new(leaves.clone())
                .ok_or_else(|| JobError::fatal("no leaves"))?;
            let root = tree.root();
            ctx.metric(0, "leaves", contributions.len() as f64).await;
            ctx.log(format!("merkle root {root}")).await;
            ctx.progress(0.6).await;
            let count = contributions.len() as u64;
            let uri = uri.unwrap_or_else(|| format!("openledger://datanets/{id}/versions/{root}"));
            let mut result = json!({
                "datanet_id": id.to_string(),
                "root": root.to_string(),
                "contribution_count": count,
                "leaf_types": LEAF_TYPES,
                "uri": uri,
                "leaves": contributions.iter().zip(&leaves).map(|(c, l)| json!({
                    "contribution_id": c.id.to_string(),
                    "contributor": format!("{:#x}", c.contributor),
                    "content_hash": c.content_hash.to_string(),
                    "leaf": l.to_string(),
                })).collect::<Vec<_>>(),
            });
            if publish {
                result["published"] = self.publish(&ctx, id, root, count, &uri).await?;
            }
            Ok(result)
        }
        .boxed()
    }
}

impl SnapshotJob {
    async fn publish(
        &self,
        ctx: &JobContext,
        id: U256,
        root: B256,
        count: u64,
        uri: &str,
    ) -> Result<Value, JobError> {
        let (chain, me) = signing_chain(self.chain.as_ref())?;
        let registry = chain.registry();
        // the chain, not the index (which may lag), says whether this root is already the latest version
        let on_chain = registry.datanet(id).call().await.map_err(classify)?;
        if on_chain.versionCount > 0 {
            let latest = registry
                .versionRoot(id, on_chain.versionCount)
                .call()
                .await
                .map_err(classify)?;
            if latest == root {
                ctx.log(format!(
                    "already published as version {}",
                    on_chain.versionCount
                ))
                .await;
                return Ok(
                    json!({ "version": on_chain.versionCount.to_string(), "already": true }),
                );
            }
        }
        if on_chain.owner != me {
            return Err(JobError::fatal(format!(
                "the daemon's key {me:#x} does not own Datanet {id} (its owner is {:#x}); the owner must publish",
                on_chain.owner
            )));
        }
        let receipt = send_logged(
            ctx,
            chain,
            "publishVersion",
            registry.publishVersion(id, root, count, uri.to_owned()),
            self.tx_timeout,
        )
        .await?;
        let tx = receipt.transaction_hash;
        let version = receipt
            .decoded_log::<Registry::DatanetVersionPublished>()
            .map(|l| l.data.version)
            .ok_or_else(|| JobError::fatal("no DatanetVersionPublished event in the receipt"))?;
        ctx.log(format!(
            "published version {version} in block {}",
            receipt.block_number.unwrap_or_default()
        ))
        .await;
        Ok(
            json!({ "version": version.to_string(), "tx_hash": tx.to_string(),
                   "block_number": receipt.block_number, "already": false }),
        )
    }
}
