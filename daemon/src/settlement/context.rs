//! What every step of settlement works with: the database, the index, the chain connection, the
//! deployment's contract addresses and the settings; and the one chain read they share (a `RootProposed`
//! as the chain's logs have it). `build`, `submit` and `verify` take a `&Context`.

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use openledger_chain::bindings::RewardDistributor;
use openledger_chain::{ContractKind, Deployment};
use openledger_indexer::query::ChainIndex;
use sqlx::PgPool;

use super::{SettleConfig, SettleError};
use crate::chain::Chain;

#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) pool: PgPool,
    pub(crate) index: ChainIndex,
    pub(crate) chain: Chain,
    pub(crate) deployment: Deployment,
    pub(crate) cfg: SettleConfig,
    pub(crate) chain_id: u64,
    pub(crate) distributor: Address,
    pub(crate) fee_router: Address,
}

impl Context {
    pub fn new(
        pool: PgPool,
        deployment: Deployment,
        chain: Chain,
        cfg: SettleConfig,
    ) -> Result<Self, SettleError> {
        Ok(Self {
            index: ChainIndex::new(pool.clone(), &deployment)?,
            chain_id: deployment.chain_id,
            distributor: deployment.address(ContractKind::RewardDistributor)?,
            fee_router: deployment.address(ContractKind::FeeRouter)?,
            pool,
            chain,
            deployment,
            cfg,
        })
    }

    pub fn provider(&self) -> &DynProvider {
        self.chain.provider()
    }
}

/// A `RootProposed` event as the chain has it.
#[derive(Debug, Clone)]
pub(crate) struct ProposalLog {
    pub root: B256,
    pub total: U256,
    pub uri: String,
    pub tx_hash: B256,
    pub block: u64,
}

/// The chain's `RootProposed` of `epoch` (read from its logs from block `from` on, not from the index).
pub(crate) async fn proposal_log(
    s: &Context,
    epoch: u64,
    from: u64,
) -> Result<Option<ProposalLog>, SettleError> {
    let filter = Filter::new()
        .address(s.distributor)
        .event_signature(RewardDistributor::RootProposed::SIGNATURE_HASH)
        .topic1(B256::from(U256::from(epoch)))
        .from_block(from);
    let logs = s
        .provider()
        .get_logs(&filter)
        .await
        .map_err(SettleError::rpc)?;
    Ok(logs.iter().find_map(|log| {
        let ev = log.log_decode::<RewardDistributor::RootProposed>().ok()?;
        Some(ProposalLog {
            root: ev.inner.data.root,
            total: ev.inner.data.total,
            uri: ev.inner.data.uri.clone(),
            tx_hash: log.transaction_hash?,
            block: log.block_number?,
        })
    }))
}
