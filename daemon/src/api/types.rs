//! Response bodies shared by several routes, and the parsing of ids, addresses and hashes. On-chain
//! integers (uint256) travel as decimal strings, addresses and hashes as lowercase 0x-hex.

use alloy::primitives::{Address, B256, U256};
use openledger_indexer::query::{self, ContributionStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use crate::common::{self, hex_addr};

pub fn parse_u256(what: &str, s: &str) -> Result<U256, ApiError> {
    common::parse_u256(what, s).map_err(ApiError::BadRequest)
}

/// A database id (job, upload, relay) from a path.
pub fn parse_id(what: &str, s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::BadRequest(format!("{what} must be a positive integer, got {s:?}"))
    })
}

pub fn parse_address(what: &str, s: &str) -> Result<Address, ApiError> {
    common::parse_address(what, s).map_err(ApiError::BadRequest)
}

pub fn parse_hash(what: &str, s: &str) -> Result<B256, ApiError> {
    common::parse_hash(what, s).map_err(ApiError::BadRequest)
}

/// Paging for lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// At most this many items (1-1000, default 100).
    pub limit: Option<i64>,
    /// Skip this many items.
    pub offset: Option<i64>,
}

impl Page {
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(100);
        let offset = self.offset.unwrap_or(0);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 1000".into(),
            ));
        }
        if offset < 0 {
            return Err(ApiError::BadRequest("offset must not be negative".into()));
        }
        Ok((limit, offset))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatanetView {
    /// uint256 as a decimal string.
    pub id: String,
    pub owner: String,
    pub metadata_uri: String,
    pub tags: Vec<String>,
    pub permissioned: bool,
    pub contribution_count: i64,
    pub accepted_count: i64,
    pub latest_version: Option<String>,
    pub created_block: u64,
}

impl From<query::Datanet> for DatanetView {
    fn from(d: query::Datanet) -> Self {
        Self {
            id: d.id.to_string(),
            owner: hex_addr(d.owner),
            metadata_uri: d.metadata_uri,
            tags: d.tags,
            permissioned: d.permissioned,
            contribution_count: d.contribution_count,
            accepted_count: d.accepted_count,
            latest_version: d.latest_version.map(|v| v.to_string()),
            created_block: d.created_block,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContributionView {
    pub id: String,
    pub datanet_id: String,
    pub contributor: String,
    pub content_hash: String,
    pub metadata_uri: String,
    /// pending, accepted or rejected.
    pub status: String,
    pub block_number: u64,
    pub tx_hash: String,
}

pub fn status_str(s: ContributionStatus) -> &'static str {
    s.as_str()
}

impl From<query::Contribution> for ContributionView {
    fn from(c: query::Contribution) -> Self {
        Self {
            id: c.id.to_string(),
            datanet_id: c.datanet_id.to_string(),
            contributor: hex_addr(c.contributor),
            content_hash: c.content_hash.to_string(),
            metadata_uri: c.metadata_uri,
            status: status_str(c.status).into(),
            block_number: c.block_number,
            tx_hash: c.tx_hash.to_string(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub datanet_id: String,
    pub version: String,
    pub root: String,
    pub contribution_count: String,
    pub uri: String,
    pub block_number: u64,
}

impl From<query::DatanetVersion> for VersionView {
    fn from(v: query::DatanetVersion) -> Self {
        Self {
            datanet_id: v.datanet_id.to_string(),
            version: v.version.to_string(),
            root: v.root.to_string(),
            contribution_count: v.contribution_count.to_string(),
            uri: v.uri,
            block_number: v.block_number,
        }
    }
}
