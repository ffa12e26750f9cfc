//! The read side over the indexed tables (its dynamic SQL only splices the constant SELECTs below): what the REST API and the CLI show. Every query is scoped to one
//! deployment (chain id + contract addresses) and pages with `limit`/`offset` in on-chain id order.
//! Ids are selected as text under other names (`*_text`): an output column named like the numeric one would
//! make `ORDER BY` sort the text ("10" before "9").

use alloy::primitives::{Address, B256, U256};
use openledger_chain::{ContractKind, Deployment};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::IndexerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContributionStatus {
    Pending,
    Accepted,
    Rejected,
}

impl ContributionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContributionStatus::Pending => "pending",
            ContributionStatus::Accepted => "accepted",
            ContributionStatus::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatanetStats {
    pub pending: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub contributors: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datanet {
    pub id: U256,
    pub owner: Address,
    pub metadata_uri: String,
    pub tags: Vec<String>,
    pub permissioned: bool,
    pub contribution_count: i64,
    pub accepted_count: i64,
    pub latest_version: Option<U256>,
    pub created_block: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub id: U256,
    pub datanet_id: U256,
    pub contributor: Address,
    pub content_hash: B256,
    pub metadata_uri: String,
    pub status: ContributionStatus,
    pub block_number: u64,
    pub tx_hash: B256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatanetVersion {
    pub datanet_id: U256,
    pub version: U256,
    pub root: B256,
    pub contribution_count: U256,
    pub uri: String,
    pub block_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: U256,
    pub developer: Address,
    pub base_model: String,
    pub base_model_hash: B256,
    pub datanet_ids: Vec<U256>,
    pub datanet_versions: Vec<U256>,
    pub training_config_hash: B256,
    pub metadata_uri: String,
    pub registered_block: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    pub id: U256,
    pub model_id: U256,
    pub version: U256,
    pub content_hash: B256,
    pub uri: String,
    pub block_number: u64,
    pub tx_hash: B256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payer: Address,
    pub model_id: U256,
    pub request_id: B256,
    pub amount: U256,
    pub burned: U256,
    pub developer_amount: U256,
    pub treasury_amount: U256,
    pub pool_amount: U256,
    pub block_number: u64,
    pub tx_hash: B256,
}

fn payment_row(r: &sqlx::postgres::PgRow) -> Result<Payment, IndexerError> {
    Ok(Payment {
        payer: address(r, 0)?,
        model_id: u256(r, 1)?,
        request_id: hash(r, 2)?,
        amount: u256(r, 3)?,
        burned: u256(r, 4)?,
        developer_amount: u256(r, 5)?,
        treasury_amount: u256(r, 6)?,
        pool_amount: u256(r, 7)?,
        block_number: block(r, 8)?,
        tx_hash: hash(r, 9)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardEpoch {
    pub epoch: U256,
    pub root: B256,
    pub total: U256,
    pub uri: String,
    /// pending, accepted, revoked or superseded
    pub status: String,
    pub proposed_block: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub account: Address,
    pub epoch: U256,
    pub cumulative_amount: U256,
    pub amount: U256,
    pub block_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StakePosition {
    pub agent_id: U256,
    pub staker: Address,
    pub staked: U256,
    pub unbonding: U256,
}

/// Read access to one deployment's index.
#[derive(Debug, Clone)]
pub struct ChainIndex {
    pool: PgPool,
    chain_id: i64,
    registry: String,
    fee_router: String,
    distributor: String,
    staking: String,
}

impl ChainIndex {
    pub fn new(pool: PgPool, deployment: &Deployment) -> Result<Self, IndexerError> {
        let addr = |k| deployment.address(k).map(|a| format!("{a:#x}"));
        Ok(Self {
            pool,
            chain_id: deployment.chain_id as i64,
            registry: addr(ContractKind::Registry)?,
            fee_router: addr(ContractKind::FeeRouter)?,
            distributor: addr(ContractKind::RewardDistributor)?,
            staking: addr(ContractKind::Staking)?,
        })
    }

    /// The chain this index reads.
    pub fn chain_id(&self) -> i64 {
        self.chain_id
    }

    /// Every block up to this one is indexed (None before the first range).
    pub async fn indexed_through(&self) -> Result<Option<u64>, IndexerError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT max(indexed_through) FROM indexer_checkpoints WHERE chain_id = $1",
        )
        .bind(self.chain_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(v.map(|v| v as u64))
    }

    pub async fn datanets(&self, limit: i64, offset: i64) -> Result<Vec<Datanet>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{DATANET_SELECT} ORDER BY datanet_id LIMIT $3 OFFSET $4"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(datanet).collect()
    }

    pub async fn datanet(&self, id: U256) -> Result<Option<Datanet>, IndexerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{DATANET_SELECT} AND datanet_id = $3::numeric"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(datanet).transpose()
    }

    /// Whether the Datanet exists (cheaper than `datanet`, which aggregates its counts).
    pub async fn datanet_exists(&self, id: U256) -> Result<bool, IndexerError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM datanets WHERE chain_id = $1 AND contract_address = $2 AND datanet_id = $3::numeric)",
        )
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    /// A Datanet's contributions in id order, optionally only those with `status`.
    pub async fn contributions_by_datanet(
        &self,
        datanet_id: U256,
        status: Option<ContributionStatus>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Contribution>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{CONTRIBUTION_SELECT} AND datanet_id = $3::numeric AND ($6::text IS NULL OR status = $6)
             ORDER BY contribution_id LIMIT $4 OFFSET $5"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .bind(limit)
        .bind(offset)
        .bind(status.map(ContributionStatus::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(contribution).collect()
    }

    /// Counts per review status and distinct contributors of one Datanet.
    pub async fn datanet_stats(&self, datanet_id: U256) -> Result<DatanetStats, IndexerError> {
        let (pending, accepted, rejected, contributors): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'accepted'),
                    count(*) FILTER (WHERE status = 'rejected'), count(DISTINCT contributor)
             FROM contributions_current WHERE chain_id = $1 AND contract_address = $2 AND datanet_id = $3::numeric",
        )
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(DatanetStats {
            pending,
            accepted,
            rejected,
            contributors,
        })
    }

    pub async fn contributions_by_contributor(
        &self,
        contributor: Address,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Contribution>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{CONTRIBUTION_SELECT} AND contributor = $3 ORDER BY contribution_id LIMIT $4 OFFSET $5"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(format!("{contributor:#x}"))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(contribution).collect()
    }

    /// The contribution carrying this content hash, if any (content is matched to the chain by hash).
    pub async fn contribution_by_content(
        &self,
        content_hash: B256,
    ) -> Result<Vec<Contribution>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{CONTRIBUTION_SELECT} AND content_hash = $3 ORDER BY contribution_id"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(format!("{content_hash:#x}"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(contribution).collect()
    }

    /// `contributor`'s contribution of this content to `datanet_id`, if any: uniqueness on chain is per
    /// contributor, so this is at most one row, and a contribution of the same content by someone else is
    /// never taken for it.
    pub async fn contribution_of(
        &self,
        datanet_id: U256,
        contributor: Address,
        content_hash: B256,
    ) -> Result<Option<Contribution>, IndexerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{CONTRIBUTION_SELECT} AND datanet_id = $3::numeric AND contributor = $4 AND content_hash = $5"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .bind(format!("{contributor:#x}"))
        .bind(format!("{content_hash:#x}"))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(contribution).transpose()
    }

    /// One contribution by id.
    pub async fn contribution(
        &self,
        contribution_id: U256,
    ) -> Result<Option<Contribution>, IndexerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{CONTRIBUTION_SELECT} AND contribution_id = $3::numeric"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(contribution_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(contribution).transpose()
    }

    /// May `account` curate a Datanet (review its contributions): its current owner or one of its curators.
    /// `None` when the Datanet is not indexed.
    pub async fn may_curate_datanet(
        &self,
        datanet_id: U256,
        account: Address,
    ) -> Result<Option<bool>, IndexerError> {
        let v: Option<bool> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT d.owner = $4 OR {IS_CURATOR}
             FROM datanets_current d
             WHERE d.chain_id = $1 AND d.contract_address = $2 AND d.datanet_id = $3::numeric"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .bind(format!("{account:#x}"))
        .fetch_optional(&self.pool)
        .await?;
        Ok(v)
    }

    /// May `account` read a Datanet's data (and what is derived from it)? Anyone for a public Datanet; for a
    /// permissioned one only its current owner, its curators and its allowed contributors (`None`, an
    /// anonymous reader, is none of them). `None` when the Datanet is not indexed.
    pub async fn may_read_datanet(
        &self,
        datanet_id: U256,
        account: Option<Address>,
    ) -> Result<Option<bool>, IndexerError> {
        let v: Option<bool> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT NOT d.permissioned OR COALESCE(
                 d.owner = $4
                 OR {IS_CURATOR}
                 OR COALESCE((SELECT x.enabled FROM datanet_changes x
                               WHERE x.chain_id = d.chain_id AND x.contract_address = d.contract_address
                                 AND x.datanet_id = d.datanet_id AND x.kind = 'contributor_allowed'
                                 AND x.account = $4
                               ORDER BY x.block_number DESC, x.log_index DESC LIMIT 1), false),
                 false)
             FROM datanets_current d
             WHERE d.chain_id = $1 AND d.contract_address = $2 AND d.datanet_id = $3::numeric"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .bind(account.map(|a| format!("{a:#x}")))
        .fetch_optional(&self.pool)
        .await?;
        Ok(v)
    }

    pub async fn versions(&self, datanet_id: U256) -> Result<Vec<DatanetVersion>, IndexerError> {
        let rows = sqlx::query(
            "SELECT datanet_id::text AS datanet_id_text, version::text AS version_text, root, contribution_count::text, uri, block_number
             FROM datanet_versions WHERE chain_id = $1 AND contract_address = $2 AND datanet_id = $3::numeric
             ORDER BY version",
        )
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DatanetVersion {
                    datanet_id: u256(r, 0)?,
                    version: u256(r, 1)?,
                    root: hash(r, 2)?,
                    contribution_count: u256(r, 3)?,
                    uri: r.try_get(4)?,
                    block_number: block(r, 5)?,
                })
            })
            .collect()
    }

    /// The contributions a published version froze: those accepted by a review logged before the version's
    /// `DatanetVersionPublished` event (what `datanet_snapshot` hashed when it published). Callers check the
    /// Merkle root of the result against the version's root.
    pub async fn contributions_in_version(
        &self,
        datanet_id: U256,
        version: U256,
    ) -> Result<Vec<Contribution>, IndexerError> {
        let rows = sqlx::query(
            "SELECT c.contribution_id::text AS contribution_id_text, c.datanet_id::text AS datanet_id_text,
                    c.contributor, c.content_hash, c.metadata_uri, 'accepted', c.block_number, c.tx_hash
             FROM contributions c
             JOIN contribution_reviews r ON r.chain_id = c.chain_id AND r.contract_address = c.contract_address
                  AND r.contribution_id = c.contribution_id
             JOIN datanet_versions v ON v.chain_id = c.chain_id AND v.contract_address = c.contract_address
                  AND v.datanet_id = c.datanet_id AND v.version = $4::numeric
             WHERE c.chain_id = $1 AND c.contract_address = $2 AND c.datanet_id = $3::numeric AND r.accepted
               AND (r.block_number, r.log_index) < (v.block_number, v.log_index)
             ORDER BY c.contribution_id",
        )
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(datanet_id.to_string())
        .bind(version.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(contribution).collect()
    }

    /// A model's adapters in version order.
    pub async fn adapters_by_model(&self, model_id: U256) -> Result<Vec<Adapter>, IndexerError> {
        let rows = sqlx::query(
            "SELECT adapter_id::text AS adapter_id_text, model_id::text AS model_id_text, version::text AS version_text,
                    content_hash, uri, block_number, tx_hash
             FROM adapters WHERE chain_id = $1 AND contract_address = $2 AND model_id = $3::numeric
             ORDER BY version",
        )
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(model_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Adapter {
                    id: u256(r, 0)?,
                    model_id: u256(r, 1)?,
                    version: u256(r, 2)?,
                    content_hash: hash(r, 3)?,
                    uri: r.try_get(4)?,
                    block_number: block(r, 5)?,
                    tx_hash: hash(r, 6)?,
                })
            })
            .collect()
    }

    /// Models registered by `developer` with this training-config hash (how a retried publish finds the
    /// registration an earlier attempt already made).
    pub async fn models_by_config_hash(
        &self,
        developer: Address,
        training_config_hash: B256,
    ) -> Result<Vec<Model>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{MODEL_SELECT} AND training_config_hash = $3 AND model_id IN
                (SELECT model_id FROM models WHERE chain_id = $1 AND contract_address = $2 AND developer = $4)
             ORDER BY model_id"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(format!("{training_config_hash:#x}"))
        .bind(format!("{developer:#x}"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(model).collect()
    }

    pub async fn models(&self, limit: i64, offset: i64) -> Result<Vec<Model>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{MODEL_SELECT} ORDER BY model_id LIMIT $3 OFFSET $4"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(model).collect()
    }

    pub async fn model(&self, id: U256) -> Result<Option<Model>, IndexerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{MODEL_SELECT} AND model_id = $3::numeric"
        )))
        .bind(self.chain_id)
        .bind(&self.registry)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(model).transpose()
    }

    pub async fn payments_by_payer(
        &self,
        payer: Address,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Payment>, IndexerError> {
        self.payments("payer = $3", format!("{payer:#x}"), limit, offset)
            .await
    }

    /// Payments carrying `request_id` (ids are unique per payer, so possibly several payers').
    pub async fn payments_by_request(
        &self,
        request_id: B256,
    ) -> Result<Vec<Payment>, IndexerError> {
        self.payments("request_id = $3", format!("{request_id:#x}"), 16, 0)
            .await
    }

    /// The payment a pay-first request for `model_id` would use: of the payments with `request_id` (from
    /// `payer` only, if named), one for `model_id` before one for another model, the largest first, then the
    /// earliest. One row whatever else was paid under the same id, so dust payments cannot hide it.
    pub async fn best_payment(
        &self,
        request_id: B256,
        model_id: U256,
        payer: Option<Address>,
    ) -> Result<Option<Payment>, IndexerError> {
        let row = sqlx::query(
            "SELECT payer, model_id::text, request_id, amount::text, burned::text, developer_amount::text,
                    treasury_amount::text, pool_amount::text, block_number, tx_hash
             FROM inference_payments
             WHERE chain_id = $1 AND contract_address = $2 AND request_id = $3
               AND ($4::text IS NULL OR payer = $4)
             ORDER BY (model_id = $5::numeric) DESC, amount DESC, block_number, log_index LIMIT 1",
        )
        .bind(self.chain_id)
        .bind(&self.fee_router)
        .bind(format!("{request_id:#x}"))
        .bind(payer.map(|p| format!("{p:#x}")))
        .bind(model_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_row).transpose()
    }

    pub async fn payments_by_model(
        &self,
        model_id: U256,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Payment>, IndexerError> {
        self.payments(
            "model_id = $3::numeric",
            model_id.to_string(),
            limit,
            offset,
        )
        .await
    }

    async fn payments(
        &self,
        filter: &str,
        value: String,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Payment>, IndexerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT payer, model_id::text, request_id, amount::text, burned::text, developer_amount::text,
                    treasury_amount::text, pool_amount::text, block_number, tx_hash
             FROM inference_payments WHERE chain_id = $1 AND contract_address = $2 AND {filter}
             ORDER BY block_number, log_index LIMIT $4 OFFSET $5"
        )))
        .bind(self.chain_id)
        .bind(&self.fee_router)
        .bind(value)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_row).collect()
    }

    pub async fn reward_epochs(&self) -> Result<Vec<RewardEpoch>, IndexerError> {
        let rows = sqlx::query(
            "SELECT epoch::text AS epoch_text, root, total::text, uri, status, proposed_block FROM reward_epochs
             WHERE chain_id = $1 AND contract_address = $2 ORDER BY epoch",
        )
        .bind(self.chain_id)
        .bind(&self.distributor)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RewardEpoch {
                    epoch: u256(r, 0)?,
                    root: hash(r, 1)?,
                    total: u256(r, 2)?,
                    uri: r.try_get(3)?,
                    status: r.try_get(4)?,
                    proposed_block: block(r, 5)?,
                })
            })
            .collect()
    }

    pub async fn claims_by_account(&self, account: Address) -> Result<Vec<Claim>, IndexerError> {
        let rows = sqlx::query(
            "SELECT account, epoch::text, cumulative_amount::text, amount::text, block_number FROM reward_claims
             WHERE chain_id = $1 AND contract_address = $2 AND account = $3 ORDER BY block_number, log_index",
        )
        .bind(self.chain_id)
        .bind(&self.distributor)
        .bind(format!("{account:#x}"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    account: address(r, 0)?,
                    epoch: u256(r, 1)?,
                    cumulative_amount: u256(r, 2)?,
                    amount: u256(r, 3)?,
                    block_number: block(r, 4)?,
                })
            })
            .collect()
    }

    pub async fn stake_positions(
        &self,
        agent_id: U256,
    ) -> Result<Vec<StakePosition>, IndexerError> {
        let rows = sqlx::query(
            "SELECT agent_id::text, staker, staked::text, unbonding::text FROM stake_positions
             WHERE chain_id = $1 AND contract_address = $2 AND agent_id = $3::numeric ORDER BY staker",
        )
        .bind(self.chain_id)
        .bind(&self.staking)
        .bind(agent_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StakePosition {
                    agent_id: u256(r, 0)?,
                    staker: address(r, 1)?,
                    staked: u256(r, 2)?,
                    unbonding: u256(r, 3)?,
                })
            })
            .collect()
    }
}

const DATANET_SELECT: &str =
    "SELECT datanet_id::text AS datanet_id_text, owner, metadata_uri, tags, permissioned, contribution_count,
        accepted_count, latest_version::text, created_block
    FROM datanets_current WHERE chain_id = $1 AND contract_address = $2";

/// Whether account `$4` curates the Datanet row `d`: the latest curator change for it, else the creation
/// list.
const IS_CURATOR: &str = "COALESCE((SELECT x.enabled FROM datanet_changes x
        WHERE x.chain_id = d.chain_id AND x.contract_address = d.contract_address
          AND x.datanet_id = d.datanet_id AND x.kind = 'curator' AND x.account = $4
        ORDER BY x.block_number DESC, x.log_index DESC LIMIT 1),
      $4 = ANY(COALESCE((SELECT c.curators FROM datanets c
        WHERE c.chain_id = d.chain_id AND c.contract_address = d.contract_address
          AND c.datanet_id = d.datanet_id), '{}'::text[])))";

const CONTRIBUTION_SELECT: &str =
    "SELECT contribution_id::text AS contribution_id_text, datanet_id::text AS datanet_id_text, contributor, content_hash,
        metadata_uri, status, block_number, tx_hash
    FROM contributions_current WHERE chain_id = $1 AND contract_address = $2";

const MODEL_SELECT: &str =
    "SELECT model_id::text AS model_id_text, developer, base_model, base_model_hash, datanet_ids::text[],
        datanet_versions::text[], training_config_hash, metadata_uri, registered_block
    FROM models_current WHERE chain_id = $1 AND contract_address = $2";

fn datanet(r: &PgRow) -> Result<Datanet, IndexerError> {
    Ok(Datanet {
        id: u256(r, 0)?,
        owner: address(r, 1)?,
        metadata_uri: r.try_get(2)?,
        tags: r.try_get(3)?,
        permissioned: r.try_get(4)?,
        contribution_count: r.try_get(5)?,
        accepted_count: r.try_get(6)?,
        latest_version: r
            .try_get::<Option<String>, _>(7)?
            .map(|s| parse_u256(&s))
            .transpose()?,
        created_block: block(r, 8)?,
    })
}

fn contribution(r: &PgRow) -> Result<Contribution, IndexerError> {
    let status: String = r.try_get(5)?;
    Ok(Contribution {
        id: u256(r, 0)?,
        datanet_id: u256(r, 1)?,
        contributor: address(r, 2)?,
        content_hash: hash(r, 3)?,
        metadata_uri: r.try_get(4)?,
        status: match status.as_str() {
            "accepted" => ContributionStatus::Accepted,
            "rejected" => ContributionStatus::Rejected,
            _ => ContributionStatus::Pending,
        },
        block_number: block(r, 6)?,
        tx_hash: hash(r, 7)?,
    })
}

fn model(r: &PgRow) -> Result<Model, IndexerError> {
    let ids: Vec<String> = r.try_get(4)?;
    let versions: Vec<String> = r.try_get(5)?;
    Ok(Model {
        id: u256(r, 0)?,
        developer: address(r, 1)?,
        base_model: r.try_get(2)?,
        base_model_hash: hash(r, 3)?,
        datanet_ids: ids
            .iter()
            .map(|s| parse_u256(s))
            .collect::<Result<_, _>>()?,
        datanet_versions: versions
            .iter()
            .map(|s| parse_u256(s))
            .collect::<Result<_, _>>()?,
        training_config_hash: hash(r, 6)?,
        metadata_uri: r.try_get(7)?,
        registered_block: block(r, 8)?,
    })
}

fn parse_u256(s: &str) -> Result<U256, IndexerError> {
    s.parse()
        .map_err(|e| IndexerError::Corrupt(format!("uint256 {s}: {e}")))
}

fn u256(r: &PgRow, i: usize) -> Result<U256, IndexerError> {
    parse_u256(&r.try_get::<String, _>(i)?)
}

fn address(r: &PgRow, i: usize) -> Result<Address, IndexerError> {
    let s: String = r.try_get(i)?;
    s.parse()
        .map_err(|e| IndexerError::Corrupt(format!("address {s}: {e}")))
}

fn hash(r: &PgRow, i: usize) -> Result<B256, IndexerError> {
    let s: String = r.try_get(i)?;
    s.parse()
        .map_err(|e| IndexerError::Corrupt(format!("hash {s}: {e}")))
}

fn block(r: &PgRow, i: usize) -> Result<u64, IndexerError> {
    Ok(r.try_get::<i64, _>(i)? as u64)
}
