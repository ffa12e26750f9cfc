//! `batch_inference`: runs every line of a batch input file through the engine at batch priority (the
//! engine admits interactive requests first), each line paid and recorded like an interactive call, then
//! writes the output and error files. Resumable: a line's result is stored when it ends and a retried or
//! taken-back job skips those lines; a line an interrupted run had paid for (sponsored) reuses that payment.

use std::collections::HashSet;
use std::time::Duration;

use alloy::primitives::Address;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use openledger_model::serve::Priority;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::worker::{JobContext, JobError, JobHandler, Refusal};
use crate::inference::batch::{self, Line};
use crate::inference::error::InferenceError;
use crate::inference::records;
use crate::inference::request::Kind;
use crate::inference::service::{self, Origin, Serving};
use crate::quotas::Quota;

pub const KIND: &str = "batch_inference";

/// `params` of a `batch_inference` job (OpenAI's batch creation fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    /// A file uploaded with purpose `batch` (`POST /v1/files`).
    pub input_file_id: String,
    /// `/v1/chat/completions` or `/v1/completions`: every line's `url`.
    pub endpoint: String,
    /// Only `24h` (OpenAI's only value; this daemon runs batches as soon as capacity allows).
    #[serde(default = "window")]
    pub completion_window: String,
    /// Up to 16 string pairs kept with the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

fn window() -> String {
    "24h".into()
}

pub fn parse_params(v: &Value) -> Result<BatchParams, String> {
    let p: BatchParams = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    if Kind::from_url(&p.endpoint).is_none() {
        return Err(format!(
            "endpoint must be one of {:?}, got {:?}",
            Kind::URLS,
            p.endpoint
        ));
    }
    if p.completion_window != "24h" {
        return Err("completion_window must be 24h".into());
    }
    if let Some(m) = &p.metadata
        && (m.len() > 16
            || m.iter()
                .any(|(k, v)| k.len() > 64 || v.as_str().is_none_or(|s| s.len() > 512)))
    {
        return Err(
            "metadata holds at most 16 string values (keys up to 64 characters, values up to 512)"
                .into(),
        );
    }
    Ok(p)
}

/// How a failed line reads in the error file: the status code and body the HTTP endpoint would have
/// answered. The HTTP layer knows that (`api::openai::batch_problem`); whoever assembles the daemon gives it.
pub type Problem = fn(InferenceError) -> (u16, Value);

#[derive(Debug, Clone)]
pub struct BatchJob {
    pub serving: Serving,
    /// Lines in flight at once.
    pub concurrency: usize,
    pub problem: Problem,
}

impl BatchJob {
    /// Runs one line to its end and stores the result.
    async fn line(
        &self,
        job: i64,
        owner: Address,
        kind: Kind,
        index: i32,
        line: Line,
    ) -> Result<(), JobError> {
        let origin = Origin {
            caller: Some(owner),
            priority: Priority::Batch,
            batch: Some((job, index)),
        };
        let (status, inference, body) = loop {
            match service::execute(&self.serving, origin, kind, line.body.clone()).await {
                Ok((id, body)) => break (200, Some(id), body),
                // the engine's queue is full: wait for room rather than fail the line
                Err(InferenceError::Overloaded) => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                // a database or process failure: the job is retried and resumes at this line
                Err(e) if e.is_transient() => return Err(JobError::retryable(e)),
                Err(e) => {
                    let (status, body) = (self.problem)(e);
                    break (i32::from(status), None, body);
                }
            }
        };
        sqlx::query(
            "INSERT INTO batch_results (job_id, line, custom_id, status_code, inference_id, body)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(job)
        .bind(index)
        .bind(&line.custom_id)
        .bind(status)
        .bind(inference)
        .bind(body)
        .execute(&self.serving.pool)
        .await?;
        Ok(())
    }

    /// Writes the job's output file, and its error file if a line failed, in input order: (the output
    /// file's id, the error file's, how many lines failed).
    async fn write_outputs(
        &self,
        job: i64,
        owner: Address,
    ) -> Result<(String, Option<String>, usize), JobError> {
        let pool = &self.serving.pool;
        let rows: Vec<(i32, String, i32, Option<String>, Value)> = sqlx::query_as(
            "SELECT line, custom_id, status_code, inference_id, body FROM batch_results
             WHERE job_id = $1 ORDER BY line",
        )
        .bind(job)
        .fetch_all(pool)
        .await?;
        let (mut out, mut err, mut failed) = (Vec::new(), Vec::new(), 0);
        for (line, custom_id, status, inference, body) in rows {
            let entry = json!({
                "id": format!("batch_req_{job}_{line}"),
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": inference, "body": body},
                "error": null,
            });
            let to = if status < 300 {
                &mut out
            } else {
                failed += 1;
                &mut err
            };
            to.extend_from_slice(entry.to_string().as_bytes());
            to.push(b'\n');
        }
        let (out_id, err_id) = batch::output_file_ids(job);
        batch::store_file(
            pool,
            &out_id,
            owner,
            "batch_output",
            &format!("batch_{job}_output.jsonl"),
            &out,
            None,
        )
        .await?;
        if failed == 0 {
            return Ok((out_id, None, 0));
        }
        batch::store_file(
            pool,
            &err_id,
            owner,
            "batch_output",
            &format!("batch_{job}_errors.jsonl"),
            &err,
            None,
        )
        .await?;
        Ok((out_id, Some(err_id), failed))
    }

    async fn run_batch(&self, ctx: JobContext) -> Result<Value, JobError> {
        let pool = &self.serving.pool;
        let job = ctx.id();
        let p = parse_params(ctx.params()).map_err(JobError::fatal)?;
        let owner: Address = ctx
            .lease
            .job
            .owner
            .parse()
            .map_err(|e| JobError::fatal(format!("job owner: {e}")))?;
        let bytes = batch::file_bytes(pool, &p.input_file_id)
            .await?
            .ok_or_else(|| JobError::fatal(format!("input file {} is gone", p.input_file_id)))?;
        let (kind, lines) = batch::parse(&bytes, Some(&p.endpoint)).map_err(JobError::fatal)?;
        let interrupted = records::fail_interrupted(pool, job).await?;
        let done: HashSet<i32> =
            sqlx::query_scalar("SELECT line FROM batch_results WHERE job_id = $1")
                .bind(job)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        let total = lines.len();
        ctx.log(format!(
            "{total} requests to {}; {} already done{}",
            p.endpoint,
            done.len(),
            if interrupted > 0 {
                format!(", {interrupted} interrupted ones run again")
            } else {
                String::new()
            }
        ))
        .await;
        let todo: Vec<(i32, Line)> = lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| (i as i32, l))
            .filter(|(i, _)| !done.contains(i))
            .collect();
        let mut finished = done.len();
        let mut runs = futures::stream::iter(todo)
            .map(|(i, l)| self.line(job, owner, kind, i, l))
            .buffer_unordered(self.concurrency.max(1));
        while let Some(r) = runs.next().await {
            r?;
            finished += 1;
            ctx.progress(finished as f32 / total as f32).await;
        }
        drop(runs);

        let (out_id, err_id, failed) = self.write_outputs(job, owner).await?;
        ctx.log(format!(
            "done: {} succeeded, {failed} failed",
            total - failed
        ))
        .await;
        Ok(json!({
            "output_file_id": out_id,
            "error_file_id": err_id,
            "request_counts": {"total": total, "completed": total - failed, "failed": failed},
        }))
    }
}

impl JobHandler for BatchJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate(&self, params: &Value) -> Result<Value, String> {
        let p = parse_params(params)?;
        serde_json::to_value(p).map_err(|e| e.to_string())
    }

    /// A batch's lines count against the owner's daily batch lines.
    fn usage(&self, params: &Value) -> BoxFuture<'_, Result<Vec<(Quota, u64)>, Refusal>> {
        let parsed = parse_params(params);
        async move {
            let p = parsed.map_err(Refusal::Invalid)?;
            let f = batch::file(&self.serving.pool, &p.input_file_id)
                .await?
                .ok_or_else(|| Refusal::Invalid(format!("no file {}", p.input_file_id)))?;
            Ok(vec![(
                Quota::BatchLines,
                f.lines.unwrap_or(0).max(0) as u64,
            )])
        }
        .boxed()
    }

    fn authorize(
        &self,
        caller: Address,
        admin: bool,
        params: &Value,
    ) -> BoxFuture<'_, Result<(), Refusal>> {
        let parsed = parse_params(params);
        async move {
            let p = parsed.map_err(Refusal::Invalid)?;
            let pool = &self.serving.pool;
            let gone = || Refusal::Invalid(format!("no file {}", p.input_file_id));
            let f = batch::file(pool, &p.input_file_id)
                .await?
                .ok_or_else(gone)?;
            // another's file is not found, as in the file routes
            if !admin && f.owner != format!("{caller:#x}") {
                return Err(gone());
            }
            if f.purpose != "batch" {
                return Err(Refusal::Invalid(format!(
                    "file {} was not uploaded with purpose batch",
                    f.id
                )));
            }
            let bytes = batch::file_bytes(pool, &f.id).await?.ok_or_else(gone)?;
            batch::parse(&bytes, Some(&p.endpoint)).map_err(Refusal::Invalid)?;
            Ok(())
        }
        .boxed()
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        self.run_batch(ctx).boxed()
    }
}
