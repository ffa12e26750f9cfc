//! The job queue over HTTP: submit, list, inspect, follow (SSE), cancel, retry. A job belongs to the address
//! that submitted it; only that address (or an operator key) sees its details and logs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{Json, Path, Query};
use super::types::{parse_address, parse_id};
use super::{ApiError, ApiResult, Auth, Problem};
use crate::jobs::Refusal;
use crate::jobs::queue::{
    CancelOutcome, Charged, Job, JobFilter, JobState, LogLine, MetricPoint, NewJob,
};
use crate::jobs::worker::JobHandler;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(get_job))
        .routes(routes!(logs))
        .routes(routes!(job_metrics))
        .routes(routes!(events))
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// A job kind this daemon runs, e.g. `datanet_snapshot`.
    pub kind: String,
    /// The kind's parameters, e.g. `{"datanet_id": "1", "publish": false}` for `datanet_snapshot`.
    #[schema(value_type = Object)]
    pub params: Value,
    /// Higher runs first (-100 to 100, default 0).
    pub priority: Option<i32>,
    /// Attempts before the job counts as failed (1 to 10, default 3).
    pub max_attempts: Option<i32>,
}

async fn owned_job(s: &AppState, a: &Auth, id: &str) -> ApiResult<Job> {
    let id = parse_id("job id", id)?;
    let job = s
        .queue
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    if !a.may_access(&job.owner) {
        return Err(ApiError::Forbidden(format!(
            "job {id} belongs to another address"
        )));
    }
    Ok(job)
}

/// Queue a job.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = SubmitJob, security(("bearer" = [])),
    responses((status = 201, body = Job),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn submit(
    State(s): State<AppState>,
    a: Auth,
    Json(req): Json<SubmitJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let handler = s
        .jobs
        .get(&req.kind)
        .filter(|h| h.submittable())
        .ok_or_else(|| {
            let known: Vec<String> = s
                .jobs
                .kinds()
                .into_iter()
                .filter(|k| s.jobs.get(k).is_some_and(|h| h.submittable()))
                .collect();
            ApiError::BadRequest(format!(
                "unknown job kind {:?}; this daemon runs {known:?}",
                req.kind
            ))
        })?;
    let priority = req.priority.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err(ApiError::BadRequest(
            "priority must be between -100 and 100".into(),
        ));
    }
    let max_attempts = req.max_attempts.unwrap_or(3);
    if !(1..=10).contains(&max_attempts) {
        return Err(ApiError::BadRequest(
            "max_attempts must be between 1 and 10".into(),
        ));
    }
    let params = handler
        .validate(&req.params)
        .map_err(|e| ApiError::InvalidContent(format!("invalid params for {}: {e}", req.kind)))?;
    handler
        .authorize(a.0.address, a.0.admin, &params)
        .await
        .map_err(ApiError::from)?;
    let job = submit_within_quotas(
        &s,
        &a,
        handler.as_ref(),
        &NewJob {
            kind: req.kind,
            owner: a.0.address,
            params,
            priority,
            max_attempts,
        },
    )
    .await?;
    tracing::info!(job = job.id, kind = %job.kind, owner = %job.owner, "job queued");
    Ok((StatusCode::CREATED, Json(job)))
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::Invalid(m) => ApiError::InvalidContent(m),
            Refusal::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

/// Queues a job the caller submits, within the caller's quotas (concurrent jobs, and what the handler says
/// the job uses of the daily ones).
pub(super) async fn submit_within_quotas(
    s: &AppState,
    a: &Auth,
    handler: &dyn JobHandler,
    new: &NewJob,
) -> ApiResult<Job> {
    let usage = handler.usage(&new.params).await?;
    let charged = if a.0.admin {
        Charged::Exempt
    } else {
        Charged::Within(&s.cfg.quotas)
    };
    Ok(s.queue
        .submit_charged(new, charged, &usage, &[crate::jobs::relay::KIND])
        .await?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// queued, running, succeeded, failed or cancelled.
    pub state: Option<String>,
    pub kind: Option<String>,
    /// Operators only: another address's jobs (others always see their own).
    pub owner: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// The caller's jobs, newest first (operators: everyone's).
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<Job>),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json",
               description = "Another address's jobs, asked for by someone who is not an operator"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn list(
    State(s): State<AppState>,
    a: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    let (limit, offset) = super::types::Page {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let state = q
        .state
        .as_deref()
        .map(|st| {
            JobState::parse(st).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "state must be queued, running, succeeded, failed or cancelled, got {st:?}"
                ))
            })
        })
        .transpose()?;
    let owner = match q.owner.as_deref() {
        Some(o) => {
            let o = parse_address("owner", o)?;
            if !a.0.admin && o != a.0.address {
                return Err(ApiError::Forbidden(
                    "only operators list other addresses' jobs".into(),
                ));
            }
            Some(o)
        }
        None if a.0.admin => None,
        None => Some(a.0.address),
    };
    let jobs = s
        .queue
        .list(&JobFilter {
            owner,
            state,
            kind: q.kind,
            limit,
            offset,
        })
        .await?;
    Ok(Json(jobs))
}

/// One job.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = Job),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_job(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    Ok(Json(owned_job(&s, &a, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this sequence number.
    pub after: Option<i64>,
    /// At most this many lines (1-1000, default 500).
    pub limit: Option<i64>,
}

/// A job's log lines.
#[utoipa::path(get, path = "/api/jobs/{id}/logs", tag = "jobs", params(("id" = i64, Path), LogQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<LogLine>),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn logs(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    let job = owned_job(&s, &a, &id).await?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    Ok(Json(
        s.queue.logs(job.id, q.after.unwrap_or(0), limit).await?,
    ))
}

/// A job's metrics (e.g. training loss per step).
#[utoipa::path(get, path = "/api/jobs/{id}/metrics", tag = "jobs", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<MetricPoint>),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn job_metrics(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MetricPoint>>> {
    let job = owned_job(&s, &a, &id).await?;
    Ok(Json(s.queue.metrics(job.id).await?))
}

/// Ask a job to stop: a queued job is cancelled at once, a running one at its worker's next heartbeat.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 202, body = Job, description = "cancelled or cancellation requested"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, description = "already finished", content_type = "application/problem+json")))]
async fn cancel(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let job = owned_job(&s, &a, &id).await?;
    match s.queue.cancel(job.id).await? {
        None => Err(ApiError::NotFound(format!("no job {}", job.id))),
        Some(CancelOutcome::AlreadyFinished(st)) => Err(ApiError::Conflict(format!(
            "job {} already finished ({})",
            job.id,
            st.as_str()
        ))),
        Some(_) => {
            let job = s
                .queue
                .get(job.id)
                .await?
                .ok_or_else(|| ApiError::NotFound("gone".into()))?;
            Ok((StatusCode::ACCEPTED, Json(job)))
        }
    }
}

/// Queue a failed or cancelled job again, with fresh attempts.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Job),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, description = "not failed or cancelled", content_type = "application/problem+json")))]
async fn retry(State(s): State<AppState>, a: Auth, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    let job = owned_job(&s, &a, &id).await?;
    if s.jobs.get(&job.kind).is_some_and(|h| !h.submittable()) && !a.0.admin {
        return Err(ApiError::Forbidden(format!(
            "{} jobs are retried by the daemon or an operator",
            job.kind
        )));
    }
    match s.queue.retry(job.id).await? {
        None => Err(ApiError::NotFound(format!("no job {}", job.id))),
        Some(Err(st)) => Err(ApiError::Conflict(format!(
            "only failed or cancelled jobs can be retried; job {} is {}",
            job.id,
            st.as_str()
        ))),
        Some(Ok(job)) => Ok(Json(job)),
    }
}

struct Follow {
    s: AppState,
    id: i64,
    last_seq: i64,
    last_state: Option<(String, u32)>,
    rx: broadcast::Receiver<i64>,
    finished: bool,
}

impl Follow {
    /// The next batch of events; `None` once the job has ended and everything was sent.
    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        if self.finished {
            return None;
        }
        let mut out = Vec::new();
        let lines = match self.s.queue.logs(self.id, self.last_seq, 500).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(job = self.id, error = %e, "SSE: reading logs");
                Vec::new()
            }
        };
        let got_lines = !lines.is_empty();
        for l in lines {
            self.last_seq = l.seq;
            if let Ok(ev) = Event::default()
                .event("log")
                .id(l.seq.to_string())
                .json_data(&l)
            {
                out.push(ev);
            }
        }
        let job = self.s.queue.get(self.id).await.ok().flatten();
        if let Some(job) = &job {
            let key = (job.state.clone(), (job.progress * 1000.0) as u32);
            if self.last_state.as_ref() != Some(&key) {
                self.last_state = Some(key);
                if let Ok(ev) = Event::default().event("job").json_data(job) {
                    out.push(ev);
                }
            }
            if job.state().is_terminal() && !got_lines {
                self.finished = true;
                out.push(Event::default().event("end").data(job.state.clone()));
                return Some(out);
            }
        } else {
            self.finished = true;
            return Some(out);
        }
        if out.is_empty() {
            // wait for a change to this job (any process), or poll now and then
            let wait = async {
                loop {
                    match self.rx.recv().await {
                        Ok(j) if j == self.id => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
        Some(out)
    }
}

/// Follow a job: Server-Sent Events `job` (state and progress), `log` (one line; its `id` is the line's
/// sequence number, so `Last-Event-ID` resumes), and `end` once it has finished.
#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs",
    params(("id" = i64, Path), ("access_token" = Option<String>, Query, description = "for EventSource, which cannot send headers")),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", description = "the event stream"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn events(
    State(s): State<AppState>,
    a: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = owned_job(&s, &a, &id).await?;
    let last_seq = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let follow = Follow {
        rx: s.job_events.subscribe(),
        s,
        id: job.id,
        last_seq,
        last_state: None,
        finished: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let batch = f.next_batch().await?;
        Some((futures::stream::iter(batch.into_iter().map(Ok)), f))
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_that_cannot_be_checked_is_a_503_not_the_submitters_fault() {
        let status = |r: Refusal| ApiError::from(r).problem().status;
        assert_eq!(status(Refusal::from(sqlx::Error::PoolTimedOut)), 503);
        // an answer of the database, not its absence: what the parameters named was refused
        assert_eq!(
            status(Refusal::from(sqlx::Error::ColumnNotFound("x".into()))),
            422
        );
        assert_eq!(status(Refusal::Invalid("no such model".into())), 422);
        assert_eq!(status(Refusal::Forbidden("not yours".into())), 403);
    }
}
