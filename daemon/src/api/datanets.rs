//! Datanets, their contributions and versions, as the indexer saw them on chain.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Auth;
use super::error::{Json, Path, Query};
use super::types::*;
use super::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use openledger_indexer::query::ContributionStatus;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_datanets))
        .routes(routes!(get_datanet))
        .routes(routes!(datanet_contributions))
        .routes(routes!(contribution_content))
        .routes(routes!(datanet_versions))
        .routes(routes!(contributor_contributions))
        .routes(routes!(contributions_by_content))
}

/// Datanets in id order.
#[utoipa::path(get, path = "/api/datanets", tag = "datanets", params(Page),
    responses((status = 200, body = Vec<DatanetView>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_datanets(
    State(s): State<AppState>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Vec<DatanetView>>> {
    let (limit, offset) = page.resolve()?;
    let list = s.index.datanets(limit, offset).await?;
    Ok(Json(list.into_iter().map(DatanetView::from).collect()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatanetDetail {
    #[serde(flatten)]
    pub datanet: DatanetView,
    pub stats: DatanetStatsView,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatanetStatsView {
    pub pending: i64,
    pub accepted: i64,
    pub rejected: i64,
    /// Distinct contributor addresses.
    pub contributors: i64,
    /// Published versions.
    pub versions: usize,
}

/// One Datanet with its statistics.
#[utoipa::path(get, path = "/api/datanets/{id}", tag = "datanets",
    params(("id" = String, Path, description = "Datanet id (decimal)")),
    responses((status = 200, body = DatanetDetail),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn get_datanet(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DatanetDetail>> {
    let id = parse_u256("datanet id", &id)?;
    let d = s
        .index
        .datanet(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no Datanet {id} (indexed)")))?;
    let st = s.index.datanet_stats(id).await?;
    let versions = s.index.versions(id).await?.len();
    Ok(Json(DatanetDetail {
        datanet: d.into(),
        stats: DatanetStatsView {
            pending: st.pending,
            accepted: st.accepted,
            rejected: st.rejected,
            contributors: st.contributors,
            versions,
        },
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContributionQuery {
    /// pending, accepted or rejected.
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

async fn require_datanet(s: &AppState, id: &str) -> ApiResult<alloy::primitives::U256> {
    let id = parse_u256("datanet id", id)?;
    if s.index.datanet(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no Datanet {id} (indexed)")));
    }
    Ok(id)
}

/// A Datanet's contributions in id order.
#[utoipa::path(get, path = "/api/datanets/{id}/contributions", tag = "datanets",
    params(("id" = String, Path, description = "Datanet id (decimal)"), ContributionQuery),
    responses((status = 200, body = Vec<ContributionView>),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn datanet_contributions(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ContributionQuery>,
) -> ApiResult<Json<Vec<ContributionView>>> {
    let (limit, offset) = Page {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let status = match q.status.as_deref() {
        None => None,
        Some("pending") => Some(ContributionStatus::Pending),
        Some("accepted") => Some(ContributionStatus::Accepted),
        Some("rejected") => Some(ContributionStatus::Rejected),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status must be pending, accepted or rejected, got {other:?}"
            )));
        }
    };
    let id = require_datanet(&s, &id).await?;
    let list = s
        .index
        .contributions_by_datanet(id, status, limit, offset)
        .await?;
    Ok(Json(list.into_iter().map(ContributionView::from).collect()))
}

/// The content of one contribution, as its contributor uploaded it to this daemon (canonical JSON Lines), so
/// that a curator reads the rows they accept or reject. For the contributor, the Datanet's owner and its
/// curators; for anyone else only once accepted, and on a permissioned Datanet only for its readers.
#[utoipa::path(get, path = "/api/datanets/{id}/contributions/{contribution_id}/content", tag = "datanets",
    params(("id" = String, Path, description = "Datanet id (decimal)"),
           ("contribution_id" = String, Path, description = "Contribution id (decimal)")),
    security(("bearer" = [])),
    responses((status = 200, content_type = "application/jsonl", body = String),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, description = "no such contribution in this Datanet, or no content for it here", content_type = "application/problem+json")))]
async fn contribution_content(
    State(s): State<AppState>,
    a: Auth,
    Path((id, contribution_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let datanet = require_datanet(&s, &id).await?;
    let cid = parse_u256("contribution id", &contribution_id)?;
    let c = s
        .index
        .contribution(cid)
        .await?
        .filter(|c| c.datanet_id == datanet)
        .ok_or_else(|| ApiError::NotFound(format!("no contribution {cid} in Datanet {datanet}")))?;
    let caller = a.0.address;
    let allowed = a.0.admin
        || caller == c.contributor
        || s.index.may_curate_datanet(datanet, caller).await? == Some(true)
        || (c.status == ContributionStatus::Accepted
            && s.index.may_read_datanet(datanet, Some(caller)).await? == Some(true));
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "contribution {cid} is read by its contributor and Datanet {datanet}'s owner and curators (by \
             the Datanet's readers once accepted)"
        )));
    }
    let bodies = crate::uploads::bodies_uploaded_by(
        &s.pool,
        s.index.chain_id(),
        &[(c.contributor, c.content_hash)],
    )
    .await?;
    let body = bodies.into_values().next().ok_or_else(|| {
        ApiError::NotFound(format!(
            "this daemon holds no content for contribution {cid}: its contributor did not upload it here"
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

/// A Datanet's published versions.
#[utoipa::path(get, path = "/api/datanets/{id}/versions", tag = "datanets",
    params(("id" = String, Path, description = "Datanet id (decimal)")),
    responses((status = 200, body = Vec<VersionView>),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn datanet_versions(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<VersionView>>> {
    let id = require_datanet(&s, &id).await?;
    let list = s.index.versions(id).await?;
    Ok(Json(list.into_iter().map(VersionView::from).collect()))
}

/// Everything one address contributed.
#[utoipa::path(get, path = "/api/contributors/{address}/contributions", tag = "datanets",
    params(("address" = String, Path), Page),
    responses((status = 200, body = Vec<ContributionView>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn contributor_contributions(
    State(s): State<AppState>,
    Path(address): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Vec<ContributionView>>> {
    let address = parse_address("address", &address)?;
    let (limit, offset) = page.resolve()?;
    let list = s
        .index
        .contributions_by_contributor(address, limit, offset)
        .await?;
    Ok(Json(list.into_iter().map(ContributionView::from).collect()))
}

/// On-chain contributions carrying a content hash (in any Datanet).
#[utoipa::path(get, path = "/api/contents/{hash}/contributions", tag = "datanets",
    params(("hash" = String, Path, description = "keccak-256 of the canonical content")),
    responses((status = 200, body = Vec<ContributionView>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn contributions_by_content(
    State(s): State<AppState>,
    Path(hash): Path<String>,
) -> ApiResult<Json<Vec<ContributionView>>> {
    let hash = parse_hash("content hash", &hash)?;
    let list = s.index.contribution_by_content(hash).await?;
    Ok(Json(list.into_iter().map(ContributionView::from).collect()))
}
