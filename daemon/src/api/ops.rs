//! Liveness, readiness, Prometheus metrics and a status summary.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Json;
use super::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_page))
        .routes(routes!(status))
        .routes(routes!(client_config))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub chain_id: u64,
    /// The latest block the in-process indexer saw (absent without one).
    pub head: Option<u64>,
    /// Every block up to this one is indexed.
    pub indexed_through: Option<u64>,
    /// head - indexed_through.
    pub indexer_lag: Option<u64>,
    /// Jobs per state.
    pub jobs: std::collections::BTreeMap<String, i64>,
    /// The daemon's relayer address, when it has a key.
    pub relayer: Option<String>,
    /// Job kinds this process runs.
    pub job_kinds: Vec<String>,
    /// Job slots this process runs at once (0: API only).
    pub worker_slots: usize,
    /// Seconds between settlement rounds, when this process settles.
    pub settle_every_secs: Option<u64>,
}

async fn collect_status(s: &AppState) -> ApiResult<Status> {
    let indexed = s.index.indexed_through().await?;
    let head = s.indexer.as_ref().map(|w| w.borrow().head);
    let jobs = s.queue.depth().await?.into_iter().collect();
    Ok(Status {
        chain_id: s.deployment.chain_id,
        head,
        indexed_through: indexed,
        indexer_lag: head.zip(indexed).map(|(h, i)| h.saturating_sub(i)),
        jobs,
        relayer: s
            .chain
            .as_ref()
            .and_then(|c| c.signer())
            .map(|a| format!("{a:#x}")),
        job_kinds: s.jobs.kinds(),
        worker_slots: s.cfg.worker_slots,
        settle_every_secs: s.cfg.settle_every_secs,
    })
}

/// What a client (the web UI, a dApp) needs to talk to this deployment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientConfig {
    pub chain_id: u64,
    /// The suite's contract addresses by name (OpenToken, Registry, FeeRouter, RewardDistributor, ...).
    pub contracts: std::collections::BTreeMap<String, String>,
    /// The chain's JSON-RPC URL for browsers, when the operator advertises one.
    pub rpc_url: Option<String>,
    /// The node's unlocked accounts may be used as a wallet (devnets: `serve --dev-wallet`).
    pub dev_wallet: bool,
    /// Sign-in messages must name this domain.
    pub siwe_domain: String,
    /// This process serves models (OpenLoRA).
    pub inference: bool,
    /// Requests without a payment are paid by the daemon's key (the dev stack's `--sponsor-inference`).
    pub sponsor_inference: bool,
    /// Price in OPEN wei per 1,000 tokens for adapters without a developer price.
    pub default_price_per_1k: Option<String>,
}

/// Chain id, contract addresses, the RPC URL and the payment modes, for clients.
#[utoipa::path(get, path = "/api/config", tag = "ops", responses((status = 200, body = ClientConfig)))]
async fn client_config(State(s): State<AppState>) -> Json<ClientConfig> {
    let inf = s.inference.as_ref();
    Json(ClientConfig {
        chain_id: s.deployment.chain_id,
        contracts: s
            .deployment
            .contracts
            .iter()
            .map(|(k, v)| (k.clone(), crate::common::hex_addr(v.address)))
            .collect(),
        rpc_url: s.cfg.public_rpc_url.clone(),
        dev_wallet: s.cfg.dev_wallet && s.cfg.public_rpc_url.is_some(),
        siwe_domain: s.cfg.siwe.domain.clone(),
        inference: inf.is_some(),
        sponsor_inference: inf.is_some_and(|i| i.cfg.sponsor),
        default_price_per_1k: inf.map(|i| i.cfg.default_price_per_1k.to_string()),
    })
}

/// Chain, indexer and queue at a glance.
#[utoipa::path(get, path = "/api/status", tag = "ops", responses((status = 200, body = Status)))]
async fn status(State(s): State<AppState>) -> ApiResult<Json<Status>> {
    Ok(Json(collect_status(&s).await?))
}

/// Ready to serve: the database answers and the in-process indexer (if any) is near the head.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = String), (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn readyz(State(s): State<AppState>) -> ApiResult<&'static str> {
    sqlx::query("SELECT 1")
        .execute(&s.pool)
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    if let Some(w) = &s.indexer {
        let st = w.borrow().clone();
        if st.head == 0 {
            return Err(ApiError::Unavailable(
                "the indexer has not reached the node yet".into(),
            ));
        }
        let lag = st.head.saturating_sub(st.indexed_through);
        if lag > s.cfg.ready_max_lag {
            return Err(ApiError::Unavailable(format!(
                "the indexer is {lag} blocks behind the head (ready at {})",
                s.cfg.ready_max_lag
            )));
        }
    }
    Ok("ready")
}

/// The OpenLoRA engine's counters and gauges, copied from its own atomics at scrape time.
fn engine_metrics(st: &openledger_model::serve::Stats, in_flight: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = |name: &'static str, v: &std::sync::atomic::AtomicU64| {
        metrics::counter!(name).absolute(v.load(Relaxed));
    };
    c("openledger_inference_submitted_total", &st.submitted);
    c("openledger_inference_completed_total", &st.completed);
    c("openledger_inference_failed_total", &st.failed);
    c("openledger_inference_cancelled_total", &st.cancelled);
    c(
        "openledger_inference_generated_tokens_total",
        &st.generated_tokens,
    );
    c(
        "openledger_inference_prompt_tokens_total",
        &st.prompt_tokens,
    );
    c("openledger_inference_steps_total", &st.steps);
    c("openledger_adapter_cache_hits_total", &st.cache_hits);
    c("openledger_adapter_cache_misses_total", &st.cache_misses);
    c("openledger_adapter_loads_total", &st.adapter_loads);
    c(
        "openledger_adapter_load_failures_total",
        &st.adapter_load_failures,
    );
    // a gauge: the metrics crate's counters are integers
    metrics::gauge!("openledger_adapter_load_seconds_sum")
        .set(st.adapter_load_micros.load(Relaxed) as f64 / 1e6);
    let g = |name: &'static str, v: usize| metrics::gauge!(name).set(v as f64);
    g("openledger_inference_running", st.running.load(Relaxed));
    g("openledger_inference_waiting", st.waiting.load(Relaxed));
    g("openledger_inference_in_flight", in_flight);
    g(
        "openledger_adapters_resident",
        st.resident_adapters.load(Relaxed),
    );
    g(
        "openledger_adapters_resident_bytes",
        st.resident_adapter_bytes.load(Relaxed),
    );
}

/// Prometheus metrics: HTTP latency, queue depth, job durations, indexer lag, the inference engine.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics_page(State(s): State<AppState>) -> ApiResult<Response> {
    let Some(handle) = &s.metrics else {
        return Err(ApiError::NotFound(
            "metrics are not enabled in this process".into(),
        ));
    };
    // gauges sampled at scrape time
    let depth: std::collections::BTreeMap<String, i64> =
        s.queue.depth().await?.into_iter().collect();
    for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let n = depth.get(state).copied().unwrap_or(0);
        metrics::gauge!("openledger_jobs", "state" => state).set(n as f64);
    }
    if let Some(w) = &s.indexer {
        let st = w.borrow().clone();
        metrics::gauge!("openledger_chain_head").set(st.head as f64);
        metrics::gauge!("openledger_indexed_through").set(st.indexed_through as f64);
        metrics::gauge!("openledger_indexer_lag_blocks")
            .set(st.head.saturating_sub(st.indexed_through) as f64);
        metrics::gauge!("openledger_indexer_reorgs").set(st.reorgs as f64);
    }
    if let Some(inf) = &s.inference {
        engine_metrics(&inf.engine.stats, inf.engine.in_flight());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
