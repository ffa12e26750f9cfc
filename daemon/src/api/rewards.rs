//! Rewards and settlements: what an address has earned, claimed and can claim (with the proof
//! `RewardDistributor.claim` takes), and the settlement epochs with their reports. Public: every number
//! here is on chain or recomputable from it.

use alloy::primitives::{Address, B256};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use openledger_chain::ContractKind;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{Json, Path};
use super::types::parse_address;
use super::{ApiError, ApiResult, Problem};
use crate::common::hex_addr;
use crate::settlement::{rewards, store};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rewards))
        .routes(routes!(settlements))
        .routes(routes!(settlement_report))
}

fn distributor(s: &AppState) -> ApiResult<Address> {
    s.deployment
        .address(ContractKind::RewardDistributor)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// An address's rewards: `cumulative` (all it was ever owed, as of the latest accepted root), `claimed`
/// (from the chain's Claimed events), `claimable` (the difference) and the `proof` for the latest accepted
/// root; `pending` is a proposed root still in its challenge period; `history` one line per epoch that
/// paid it. `claim` is the call to make (`openledger claim` makes it; or `cast send <to> "claim(address,
/// uint256,bytes32[])" <account> <cumulative> "[<proof>,...]"`). Zeros for an address never paid.
#[utoipa::path(get, path = "/api/rewards/{address}", tag = "rewards",
    params(("address" = String, Path, description = "The contributor's 0x address")),
    responses((status = 200, body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "The accepted root is not one this daemon built")))]
async fn rewards(State(s): State<AppState>, Path(address): Path<String>) -> ApiResult<Json<Value>> {
    let account = parse_address("address", &address)?;
    let d = distributor(&s)?;
    let r = rewards::of(&s.pool, s.deployment.chain_id, d, account).await?;
    let (a, d) = (hex_addr(account), hex_addr(d));
    let proof: Vec<String> = r.proof.iter().map(B256::to_string).collect();
    let claimable = r.claimable();
    Ok(Json(json!({
        "account": a,
        "chain_id": s.deployment.chain_id,
        "distributor": d,
        "epoch": r.accepted.as_ref().map(|a| a.epoch),
        "root": r.accepted.as_ref().map(|a| &a.root),
        "cumulative": r.cumulative.to_string(),
        "claimed": r.claimed.to_string(),
        "claimable": claimable.to_string(),
        "proof": proof,
        "pending": r.pending.map(|p| json!({"epoch": p.epoch, "cumulative": p.cumulative, "root": p.root, "valid_at": p.valid_at})),
        "history": r.history.iter().map(|h| json!({
            "epoch": h.epoch, "state": h.state, "amount": h.amount, "cumulative": h.cumulative, "root": h.root,
        })).collect::<Vec<_>>(),
        "claim": (!claimable.is_zero()).then(|| json!({
            "to": d,
            "function": "claim(address,uint256,bytes32[])",
            "args": [a, r.cumulative.to_string(), proof],
        })),
    })))
}

/// Settlement epochs, newest first: state (built, submitted, confirmed, final, accepted, superseded,
/// revoked), block range, root, totals, how many payments were included and held, the report's hash.
#[utoipa::path(get, path = "/api/settlements", tag = "rewards",
    responses((status = 200, description = "The settlement epochs, newest first", body = [Object])))]
async fn settlements(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let mut rows = store::epochs(&s.pool, s.deployment.chain_id, distributor(&s)?).await?;
    rows.reverse();
    Ok(Json(Value::Array(rows.iter().map(|r| r.json()).collect())))
}

/// An epoch's report (what its proposal's `uri` names): every payment included or held with the reason,
/// every leaf, the protocol's part, the root. The canonical JSON exactly as hashed; its SHA-256 is the
/// last part of the uri.
#[utoipa::path(get, path = "/api/settlements/{epoch}/report", tag = "rewards",
    params(("epoch" = u64, Path, description = "The epoch number")),
    responses((status = 200, body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn settlement_report(
    State(s): State<AppState>,
    Path(epoch): Path<u64>,
) -> ApiResult<impl IntoResponse> {
    let row = store::epoch(&s.pool, s.deployment.chain_id, distributor(&s)?, epoch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no settlement of epoch {epoch}")))?;
    let report = store::report(&s.pool, row.id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], report))
}
