//! Shared by the daemon's tests: an app over a real Postgres, wallet sign-in, index fixtures, requests.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use openledger_chain::{ContractKind, Deployment};
use openledger_daemon::api;
use openledger_daemon::chain::Chain;
use openledger_daemon::jobs::Registry;
use openledger_daemon::jobs::snapshot::SnapshotJob;
use openledger_daemon::state::{ApiConfig, AppState, StateParts};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tower::ServiceExt;

pub const DOMAIN: &str = "localhost:8080";

pub use crate::STALL;

/// The stall detector of a whole job (training a model included) on a loaded two-core machine.
pub const JOB_STALL: std::time::Duration = std::time::Duration::from_secs(1200);

/// Calls `probe` (every 200 ms) until it returns `Some`, and returns that; panics naming `what` when `STALL`
/// has passed.
pub async fn until<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until_within(STALL, what, probe).await
}

/// `until`, with its own stall bound.
pub async fn until_within<T, F, Fut>(bound: std::time::Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("stalled: {what} (waited {bound:?})");
        }
        // 5 polls a second: well inside the API's per-client rate limit
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Waits until the index holds an `InferencePaid` for `request_id` (before a test asks the API to find it,
/// so the API's own payment wait is not what the test depends on).
pub async fn wait_payment_indexed(pool: &PgPool, deployment: &Deployment, request_id: B256) {
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), deployment).unwrap();
    until(&format!("payment {request_id} indexed"), || async {
        (!index
            .payments_by_request(request_id)
            .await
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .await
}

/// A deployment manifest with made-up addresses, for handler tests that read only the index tables and
/// never reach a chain (test data, not a stand-in for a service).
pub fn deployment_without_chain() -> Deployment {
    let mut contracts = serde_json::Map::new();
    for (i, k) in ContractKind::ALL.iter().enumerate() {
        contracts.insert(
            k.name().into(),
            serde_json::json!({
                "address": format!("0x{:040x}", 0x1000 + i),
                "block": 1,
                "txHash": format!("0x{:064x}", i + 1),
            }),
        );
    }
    serde_json::from_value(serde_json::json!({
        "chainId": 31337, "deployer": format!("0x{:040x}", 1), "config": "test", "startBlock": 1,
        "contracts": contracts,
        "roles": {"admin": format!("0x{:040x}", 1), "treasury": format!("0x{:040x}", 1),
                  "governor": format!("0x{:040x}", 1), "settlers": [], "revokers": [], "slashers": []}
    }))
    .unwrap()
}

pub fn state_with(
    pool: PgPool,
    deployment: Deployment,
    chain: Option<Chain>,
    jobs: Registry,
    cfg: ApiConfig,
) -> AppState {
    state_serving(pool, deployment, chain, jobs, cfg, None)
}

/// `state_with`, serving a model.
pub fn state_serving(
    pool: PgPool,
    deployment: Deployment,
    chain: Option<Chain>,
    jobs: Registry,
    cfg: ApiConfig,
    inference: Option<std::sync::Arc<openledger_daemon::inference::Inference>>,
) -> AppState {
    let (tx, _) = broadcast::channel(256);
    let (index_tx, index_progress) = tokio::sync::watch::channel(0);
    openledger_daemon::notify::spawn_listener(pool.clone(), tx.clone(), index_tx);
    AppState::new(StateParts {
        pool,
        deployment,
        chain,
        cfg,
        jobs,
        job_events: tx,
        indexer: None,
        metrics: openledger_daemon::metrics::handle(),
        inference,
        index_progress,
    })
    .unwrap()
}

/// The app over `pool` with a deployment that no chain is behind (`deployment_without_chain`) and the snapshot job kind.
pub fn app(pool: &PgPool) -> (Router, AppState) {
    let d = deployment_without_chain();
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), &d).unwrap();
    let jobs = Registry::default().with(SnapshotJob {
        index,
        chain: None,
        tx_timeout: std::time::Duration::from_secs(5),
    });
    let mut cfg = ApiConfig::new(d.chain_id, DOMAIN);
    cfg.max_upload_bytes = 4096;
    let s = state_with(pool.clone(), d, None, jobs, cfg);
    (api::app(s.clone()), s)
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Asserts a problem document with this status and `type` suffix.
    pub fn problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/problem+json"
        );
        let v = self.json();
        assert_eq!(v["type"], format!("/problems/{kind}"), "{v}");
        assert_eq!(v["status"], status);
        v
    }
}

pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some((ct, b)) => req.header("content-type", ct).body(Body::from(b)).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(app: &Router, uri: &str, token: Option<&str>) -> Reply {
    send(app, Method::GET, uri, token, None).await
}

pub async fn post_json(app: &Router, uri: &str, token: Option<&str>, body: Value) -> Reply {
    send(
        app,
        Method::POST,
        uri,
        token,
        Some(("application/json", serde_json::to_vec(&body).unwrap())),
    )
    .await
}

/// An EIP-4361 message as a wallet would build it.
pub fn siwe_message(address: Address, domain: &str, chain_id: u64, nonce: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let issued = (now - time::Duration::seconds(5)).format(fmt).unwrap();
    let exp = (now + time::Duration::minutes(10)).format(fmt).unwrap();
    format!(
        "{domain} wants you to sign in with your Ethereum account:\n{}\n\nSign in to OpenLedger\n\nURI: http://{domain}\nVersion: 1\nChain ID: {chain_id}\nNonce: {nonce}\nIssued At: {issued}\nExpiration Time: {exp}",
        address.to_checksum(None)
    )
}

pub fn personal_sign(key: &PrivateKeySigner, message: &str) -> String {
    key.sign_message_sync(message.as_bytes())
        .unwrap()
        .to_string()
}

/// Signs in with `key` through the API; returns the session token.
pub async fn sign_in(app: &Router, key: &PrivateKeySigner) -> String {
    let n = get(app, "/api/auth/nonce", None).await.json();
    let msg = siwe_message(
        key.address(),
        n["domain"].as_str().unwrap(),
        n["chain_id"].as_u64().unwrap(),
        n["nonce"].as_str().unwrap(),
    );
    let r = post_json(
        app,
        "/api/auth/siwe",
        None,
        serde_json::json!({ "message": msg, "signature": personal_sign(key, &msg) }),
    )
    .await;
    r.expect(StatusCode::CREATED);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// A `multipart/form-data` body as `POST /v1/files` takes it: a purpose and one file.
pub fn multipart(purpose: &str, filename: &str, content: &str) -> (&'static str, Vec<u8>) {
    let body = format!(
        "--XB\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{content}\r\n--XB--\r\n"
    );
    ("multipart/form-data; boundary=XB", body.into_bytes())
}

/// Stores `content` as `owner`'s upload for Datanet `datanet` (`r.jsonl`, `ipfs://r`), free of quotas, as the
/// upload route would.
pub async fn store_upload(
    pool: &PgPool,
    owner: Address,
    chain_id: u64,
    datanet: u64,
    content: &openledger_daemon::content::Canonical,
) {
    openledger_daemon::uploads::store(
        pool,
        openledger_daemon::uploads::NewUpload {
            owner,
            chain_id,
            datanet_id: U256::from(datanet),
            content,
            filename: "r.jsonl",
            metadata_uri: "ipfs://r",
        },
        &openledger_daemon::quotas::Quotas::UNLIMITED,
    )
    .await
    .unwrap();
}

/// Index fixture: a Datanet as the indexer would have written it.
pub async fn insert_datanet(pool: &PgPool, d: &Deployment, id: u64, owner: Address) {
    sqlx::query(
        "INSERT INTO datanets (chain_id, tx_hash, log_index, block_number, block_hash, contract_address,
             datanet_id, owner, metadata_uri, tags, permissioned, curators, fee_paid)
         VALUES ($1, $2, 0, $3, $4, $5, $6, $7, 'ipfs://datanet', ARRAY['test'], false, ARRAY[]::text[], 0)",
    )
    .bind(d.chain_id as i64)
    .bind(format!("0x{:064x}", 0xd000 + id))
    .bind(id as i64)
    .bind(format!("0x{:064x}", id))
    .bind(format!("{:#x}", d.address(ContractKind::Registry).unwrap()))
    .bind(id as i64)
    .bind(format!("{owner:#x}"))
    .execute(pool)
    .await
    .unwrap();
}

/// Index fixture: a contribution (optionally reviewed).
pub async fn insert_contribution(
    pool: &PgPool,
    d: &Deployment,
    id: u64,
    datanet: u64,
    contributor: Address,
    hash: B256,
    accepted: Option<bool>,
) {
    let registry = format!("{:#x}", d.address(ContractKind::Registry).unwrap());
    sqlx::query(
        "INSERT INTO contributions (chain_id, tx_hash, log_index, block_number, block_hash, contract_address,
             contribution_id, datanet_id, contributor, content_hash, metadata_uri, submitter)
         VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, 'x', $8)",
    )
    .bind(d.chain_id as i64)
    .bind(format!("0x{:064x}", 0xc000 + id))
    .bind(100 + id as i64)
    .bind(format!("0x{:064x}", id))
    .bind(&registry)
    .bind(id as i64)
    .bind(datanet as i64)
    .bind(format!("{contributor:#x}"))
    .bind(format!("{hash:#x}"))
    .execute(pool)
    .await
    .unwrap();
    if let Some(accepted) = accepted {
        sqlx::query(
            "INSERT INTO contribution_reviews (chain_id, tx_hash, log_index, block_number, block_hash,
                 contract_address, contribution_id, datanet_id, curator, accepted)
             VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(d.chain_id as i64)
        .bind(format!("0x{:064x}", 0xe000 + id))
        .bind(200 + id as i64)
        .bind(format!("0x{:064x}", 200 + id))
        .bind(&registry)
        .bind(id as i64)
        .bind(datanet as i64)
        .bind(format!("{contributor:#x}"))
        .bind(accepted)
        .execute(pool)
        .await
        .unwrap();
    }
}

pub fn u(n: u64) -> U256 {
    U256::from(n)
}

/// Polls `/api/jobs/{id}` until the job ends (training jobs take a while: `JOB_STALL`).
pub async fn wait_job(app: &Router, token: &str, id: i64) -> Value {
    until_within(JOB_STALL, &format!("job {id} finished"), || async {
        let v = get(app, &format!("/api/jobs/{id}"), Some(token))
            .await
            .json();
        let Some(state) = v["state"].as_str() else {
            panic!("GET /api/jobs/{id} answered {v}");
        };
        ["succeeded", "failed", "cancelled"]
            .contains(&state)
            .then_some(v)
    })
    .await
}

/// Waits until the index shows `n` accepted contributions in `datanet`.
pub async fn wait_accepted(app: &Router, datanet: u64, n: usize) {
    until(
        &format!("Datanet {datanet} shows {n} accepted contributions"),
        || async {
            (get(app, &format!("/api/datanets/{datanet}"), None)
                .await
                .json()["stats"]["accepted"]
                == n)
                .then_some(())
        },
    )
    .await
}

/// Waits until the index lists `n` versions of `datanet`.
pub async fn wait_versions(app: &Router, datanet: u64, n: usize) {
    until(&format!("Datanet {datanet} lists {n} versions"), || async {
        get(app, &format!("/api/datanets/{datanet}/versions"), None)
            .await
            .json()
            .as_array()
            .is_some_and(|v| v.len() == n)
            .then_some(())
    })
    .await
}

/// Freezes `datanet`'s accepted contributions with a `datanet_snapshot` job that publishes the version
/// (as its owner, `session`), and waits until the index has the version.
pub async fn publish_version(app: &Router, session: &str, datanet: u64) {
    job_succeeded(
        app,
        session,
        "datanet_snapshot",
        serde_json::json!({"datanet_id": datanet.to_string(), "publish": true}),
    )
    .await;
    until(
        &format!("the version of Datanet {datanet} indexed"),
        || async {
            get(app, &format!("/api/datanets/{datanet}/versions"), None)
                .await
                .json()
                .as_array()
                .is_some_and(|v| !v.is_empty())
                .then_some(())
        },
    )
    .await
}

/// Submits a job of `kind` with `params` and waits for it to succeed: the finished job.
pub async fn job_succeeded(app: &Router, session: &str, kind: &str, params: Value) -> Value {
    let r = post_json(
        app,
        "/api/jobs",
        Some(session),
        serde_json::json!({"kind": kind, "params": params}),
    )
    .await;
    r.expect(StatusCode::CREATED);
    let job = wait_job(app, session, r.json()["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

/// Submits a `train` job with `params` and waits for it to succeed: the finished job.
pub async fn trained(app: &Router, session: &str, params: Value) -> Value {
    job_succeeded(app, session, "train", params).await
}

/// Job workers over `pool` running `jobs` until the sender is told to stop.
pub fn start_workers(
    pool: &PgPool,
    jobs: &Registry,
    name: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (events, _) = tokio::sync::broadcast::channel(256);
    openledger_daemon::notify::spawn_listener(
        pool.clone(),
        events.clone(),
        tokio::sync::watch::channel(0).0,
    );
    let h = tokio::spawn(openledger_daemon::jobs::worker::run(
        openledger_daemon::jobs::queue::Queue::new(pool.clone()),
        jobs.clone(),
        openledger_daemon::jobs::worker::WorkerConfig::default(),
        name.into(),
        events,
        stop_rx,
    ));
    (stop, h)
}

/// Waits until upload `id` (seen by its owner `token`) is in state `want`; the upload.
pub async fn wait_upload(app: &axum::Router, token: &str, id: i64, want: &str) -> Value {
    until(&format!("upload {id} {want}"), || async {
        let v = get(app, &format!("/api/uploads/{id}"), Some(token))
            .await
            .json();
        (v["state"] == want).then_some(v)
    })
    .await
}

/// Uploads `content` to `datanet` as `session`; the upload.
pub async fn upload(app: &axum::Router, session: &str, datanet: u64, content: &[u8]) -> Value {
    let up = send(
        app,
        Method::POST,
        &format!("/api/uploads?datanet_id={datanet}"),
        Some(session),
        Some(("text/plain", content.to_vec())),
    )
    .await;
    up.expect(StatusCode::CREATED);
    up.json()
}

/// Relays upload `id` with the owner's `signature` over payload `td`: accepted (202).
pub async fn relay(app: &axum::Router, session: &str, id: i64, signature: &str, td: &Value) {
    post_json(
        app,
        &format!("/api/uploads/{id}/relay"),
        Some(session),
        serde_json::json!({ "signature": signature, "nonce": td["nonce"], "deadline": td["deadline"] }),
    )
    .await
    .expect(StatusCode::ACCEPTED);
}

/// The EIP-712 payload to sign for upload `id`, as its owner asks for it.
pub async fn typed_data(app: &axum::Router, session: &str, id: i64) -> Value {
    let td = get(app, &format!("/api/uploads/{id}/typed-data"), Some(session)).await;
    td.expect(StatusCode::OK);
    td.json()
}

pub fn sign_typed(key: &PrivateKeySigner, typed: &Value) -> String {
    // sign the JSON the API returned, as a wallet would: this checks the JSON, not only the digest
    let td: alloy::dyn_abi::TypedData = serde_json::from_value(typed.clone()).unwrap();
    key.sign_dynamic_typed_data_sync(&td).unwrap().to_string()
}

/// An upload of `content` to `datanet` by a fresh signed-in contributor, with its EIP-712 payload signed and
/// ready to relay: the contributor's session, the upload's id, the signature and the payload.
pub struct SignedUpload {
    pub session: String,
    pub id: i64,
    pub signature: String,
    pub typed: Value,
}

pub async fn signed_upload(app: &Router, datanet: u64, content: &[u8]) -> SignedUpload {
    let key = PrivateKeySigner::random();
    let session = sign_in(app, &key).await;
    let up = upload(app, &session, datanet, content).await;
    let id = up["id"].as_i64().unwrap();
    let typed = typed_data(app, &session, id).await;
    let signature = sign_typed(&key, &typed["typed_data"]);
    SignedUpload {
        session,
        id,
        signature,
        typed,
    }
}

impl SignedUpload {
    /// Asks the daemon to relay it (202).
    pub async fn relay(&self, app: &Router) {
        relay(app, &self.session, self.id, &self.signature, &self.typed).await
    }

    /// Waits until it is confirmed on chain.
    pub async fn confirmed(&self, app: &Router) -> Value {
        wait_upload(app, &self.session, self.id, "confirmed").await
    }
}
