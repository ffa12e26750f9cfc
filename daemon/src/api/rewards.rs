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
use crate::settlement::store;
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

fn u256(s: &str) -> ApiResult<alloy::primitives::U256> {
    s.parse()
        .map_err(|_| ApiError::Internal(format!("stored amount {s:?}")))
}

/// An address's rewards: `cumulative` (all it was ever owed, as of the latest accepted root), `claimed`
/// (from the chain's Claimed events), `claimable` (the difference) and the `proof` for the latest accepted
/// root; `pending` is a proposed root still in its challenge period; `history` one line per epoch that
/// paid it. `claim` is the call to make (`openledger claim` makes it; or `cast send <to> "claim(address,
/// uint256,bytes32[])" <account> <cumulative> "[<proof>,...]"`). Zeros for an address never paid.
#[utoipa::path(get, path = "/api/rewards/{address}", tag = "rewards",
    params(("address" = String, Path, description = "The contributor's 0x address")),
    responses((status = 200, body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn rewards(State(s): State<AppState>, Path(address): Path<String>) -> ApiResult<Json<Value>> {
    let account = parse_address("address", &address)?;
    let distributor = distributor(&s)?;
    let chain_id = s.deployment.chain_id as i64;
    let d = format!("{distributor:#x}");
    let a = format!("{account:#x}");
    // the latest accepted root, as indexed, and this daemon's build of it
    let accepted: Option<(i64, String)> = sqlx::query_as(
        "SELECT epoch::bigint, root FROM reward_root_outcomes
         WHERE chain_id = $1 AND contract_address = $2 AND outcome = 'accepted'
         ORDER BY epoch DESC LIMIT 1",
    )
    .bind(chain_id)
    .bind(&d)
    .fetch_optional(&s.pool)
    .await?;
    let claimed: String = sqlx::query_scalar(
        "SELECT COALESCE(max(cumulative_amount), 0)::text FROM reward_claims
         WHERE chain_id = $1 AND contract_address = $2 AND account = $3",
    )
    .bind(chain_id)
    .bind(&d)
    .bind(&a)
    .fetch_one(&s.pool)
    .await?;
    let claimed = u256(&claimed)?;
    let mut cumulative = alloy::primitives::U256::ZERO;
    let mut proof: Vec<String> = Vec::new();
    let mut epoch = None;
    let mut root = None;
    if let Some((e, r)) = &accepted {
        let build = store::epoch(&s.pool, s.deployment.chain_id, distributor, *e as u64)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match build {
            Some(b) if b.root == *r => {
                if let Some((c, _, p)) = store::leaf(&s.pool, b.id, account)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                {
                    cumulative = u256(&c)?;
                    proof = p
                        .chunks_exact(32)
                        .map(|h| B256::from_slice(h).to_string())
                        .collect();
                }
                epoch = Some(*e);
                root = Some(r.clone());
            }
            _ => {
                return Err(ApiError::Conflict(format!(
                    "the accepted root of epoch {e} ({r}) is not one this daemon built; ask its settler for proofs"
                )));
            }
        }
    }
    // a proposed root in its challenge period
    let pending: Option<(i64, String, String, String)> = sqlx::query_as(
        "SELECT e.epoch, l.cumulative::text, e.root, to_char(rr.valid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         FROM settlement_epochs e
         JOIN reward_roots rr ON rr.chain_id = e.chain_id AND rr.contract_address = e.distributor
                             AND rr.epoch = e.epoch AND rr.root = e.root
         JOIN settlement_leaves l ON l.epoch_id = e.id AND l.account = $3
         WHERE e.chain_id = $1 AND e.distributor = $2 AND e.state = 'final'
         ORDER BY e.epoch DESC LIMIT 1",
    )
    .bind(chain_id)
    .bind(&d)
    .bind(&a)
    .fetch_optional(&s.pool)
    .await?;
    let history: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT e.epoch, e.state, l.amount::text, l.cumulative::text, e.root
         FROM settlement_leaves l JOIN settlement_epochs e ON e.id = l.epoch_id
         WHERE e.chain_id = $1 AND e.distributor = $2 AND l.account = $3 AND l.amount > 0
           AND e.state <> 'failed'
         ORDER BY e.epoch",
    )
    .bind(chain_id)
    .bind(&d)
    .bind(&a)
    .fetch_all(&s.pool)
    .await?;
    let claimable = cumulative.saturating_sub(claimed);
    Ok(Json(json!({
        "account": a,
        "chain_id": chain_id,
        "distributor": d,
        "epoch": epoch,
        "root": root,
        "cumulative": cumulative.to_string(),
        "claimed": claimed.to_string(),
        "claimable": claimable.to_string(),
        "proof": proof,
        "pending": pending.map(|(e, c, r, v)| json!({"epoch": e, "cumulative": c, "root": r, "valid_at": v})),
        "history": history.iter().map(|(e, st, amount, c, r)| json!({
            "epoch": e, "state": st, "amount": amount, "cumulative": c, "root": r,
        })).collect::<Vec<_>>(),
        "claim": (!claimable.is_zero()).then(|| json!({
            "to": d,
            "function": "claim(address,uint256,bytes32[])",
            "args": [a, cumulative.to_string(), proof],
        })),
    })))
}

/// Settlement epochs, newest first: state (built, submitted, confirmed, final, accepted, superseded,
/// revoked), block range, root, totals, how many payments were included and held, the report's hash.
#[utoipa::path(get, path = "/api/settlements", tag = "rewards",
    responses((status = 200, body = Object)))]
async fn settlements(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let mut rows = store::epochs(&s.pool, s.deployment.chain_id, distributor(&s)?)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no settlement of epoch {epoch}")))?;
    let report = store::report(&s.pool, row.id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], report))
}
