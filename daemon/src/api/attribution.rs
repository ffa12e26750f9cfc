//! Proof of Attribution records: which contributions an inference's answer came from, their payout weights
//! and the commitment `openledger attribution verify` checks. Public, like the payments they split: an
//! inference id is unguessable, and a record holds token positions, span texts and hashes.

use axum::extract::State;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{Json, Path};
use super::{ApiError, ApiResult, Problem};
use crate::attribution::{self, store};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_attribution))
}

/// The attribution of one inference: spans of the answer found in the model's training data (positions in
/// the output's tokens, their text, the contributions they occur in; `ol-attr/2` marks the tokens the
/// prompt supplied, `prompt_tokens` and `from_prompt`, which pay no one), the training examples its gradient
/// points at, the final weights over contributions (parts per million of the contributor pool; the rest,
/// `no_attribution`, goes to the protocol), and the commitment (hashes of the output and prompt tokens,
/// adapter, manifest and index files; method and parameters). An answer of `n` > 1 choices has each
/// choice's spans, gradient and weights under `choices`, and at the top the weights paid by, each choice an
/// equal part of the pool. `status` is `complete`, or `pending` while a queued gradient part runs (no
/// weights yet).
#[utoipa::path(get, path = "/api/inferences/{id}/attribution", tag = "inference",
    params(("id" = String, Path, description = "The inference id (`x-openledger-inference-id`, or `openledger.inference_id` of the response)")),
    responses((status = 200, body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json",
               description = "No such inference, or one with nothing to attribute (the base model, a failed call)"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "Still running, or flagged: it could not be attributed (the detail says why)")))]
async fn get_attribution(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let inf: Option<(Option<i64>, String)> =
        sqlx::query_as("SELECT job_id, status FROM inferences WHERE id = $1")
            .bind(&id)
            .fetch_optional(&s.pool)
            .await?;
    let Some((job, status)) = inf else {
        return Err(ApiError::NotFound(format!("no inference {id}")));
    };
    if job.is_none() {
        return Err(ApiError::NotFound(format!(
            "inference {id} is of the base model: it has no training data to attribute"
        )));
    }
    match status.as_str() {
        "running" => {
            return Err(ApiError::Conflict(format!(
                "inference {id} is still running"
            )));
        }
        "failed" | "cancelled" => {
            return Err(ApiError::NotFound(format!(
                "inference {id} {status}: it has no answer to attribute"
            )));
        }
        _ => {}
    }
    let Some(a) = store::get(&s.pool, &id).await? else {
        return Err(ApiError::NotFound(format!(
            "inference {id} has no attribution record (served before attribution existed)"
        )));
    };
    if a.status == "flagged" {
        return Err(ApiError::Conflict(format!(
            "inference {id} is flagged: {}",
            a.error.unwrap_or_default()
        )));
    }
    Ok(Json(attribution::shown(
        a.record.unwrap_or_default(),
        &a.status,
        a.record_hash.as_deref(),
    )))
}
