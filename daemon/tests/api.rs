//! Handler tests: each endpoint's success and error paths through `oneshot`, against a fresh real
//! Postgres per test (`#[sqlx::test]`). Chain-facing paths are in `flow.rs` (real anvil).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit::daemon as support;

use alloy::primitives::{B256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::*;

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn sign_in_and_every_refusal(pool: PgPool) {
    let (app, _) = app(&pool);
    let key = PrivateKeySigner::random();
    let token = sign_in(&app, &key).await;
    let me = get(&app, "/api/auth/me", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["address"], format!("{:#x}", key.address()));
    assert_eq!(me.json()["kind"], "session");

    // replay: the same message and signature again
    let n = get(&app, "/api/auth/nonce", None).await.json();
    let nonce = n["nonce"].as_str().unwrap();
    let msg = siwe_message(key.address(), DOMAIN, 31337, nonce);
    let body = json!({ "message": msg, "signature": personal_sign(&key, &msg) });
    assert_eq!(
        post_json(&app, "/api/auth/siwe", None, body.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let again = post_json(&app, "/api/auth/siwe", None, body)
        .await
        .problem(401, "unauthorized");
    assert!(
        again["detail"].as_str().unwrap().contains("nonce"),
        "{again}"
    );

    // a nonce the server never issued
    let msg = siwe_message(key.address(), DOMAIN, 31337, "neverissued123");
    post_json(
        &app,
        "/api/auth/siwe",
        None,
        json!({ "message": msg, "signature": personal_sign(&key, &msg) }),
    )
    .await
    .problem(401, "unauthorized");

    let fresh = |app| async move {
        get(app, "/api/auth/nonce", None).await.json()["nonce"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // wrong domain, wrong chain
    for (domain, chain, what) in [("evil.example:443", 31337, "domain"), (DOMAIN, 1, "chain")] {
        let msg = siwe_message(key.address(), domain, chain, &fresh(&app).await);
        let p = post_json(
            &app,
            "/api/auth/siwe",
            None,
            json!({ "message": msg, "signature": personal_sign(&key, &msg) }),
        )
        .await
        .problem(401, "unauthorized");
        assert!(p["detail"].as_str().unwrap().contains(what), "{p}");
    }
    // expired
    let msg = siwe_message(key.address(), DOMAIN, 31337, &fresh(&app).await).replace(
        "Expiration Time: ",
        "Expiration Time: 2020-01-01T00:00:00Z\nX: ",
    );
    let msg = msg
        .lines()
        .filter(|l| !l.starts_with("X: "))
        .collect::<Vec<_>>()
        .join("\n");
    let p = post_json(
        &app,
        "/api/auth/siwe",
        None,
        json!({ "message": msg, "signature": personal_sign(&key, &msg) }),
    )
    .await
    .problem(401, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
    // signed by another key
    let other = PrivateKeySigner::random();
    let msg = siwe_message(key.address(), DOMAIN, 31337, &fresh(&app).await);
    let p = post_json(
        &app,
        "/api/auth/siwe",
        None,
        json!({ "message": msg, "signature": personal_sign(&other, &msg) }),
    )
    .await
    .problem(401, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("signed by"), "{p}");
    // malformed bodies
    post_json(&app, "/api/auth/siwe", None, json!({ "message": msg }))
        .await
        .problem(400, "bad-request");
    post_json(
        &app,
        "/api/auth/siwe",
        None,
        json!({ "message": msg, "signature": "0x", "extra": 1 }),
    )
    .await
    .problem(400, "bad-request");
    send(
        &app,
        Method::POST,
        "/api/auth/siwe",
        None,
        Some(("application/json", b"{not json".to_vec())),
    )
    .await
    .problem(400, "bad-request");
    send(
        &app,
        Method::POST,
        "/api/auth/siwe",
        None,
        Some(("text/plain", b"{}".to_vec())),
    )
    .await
    .problem(415, "unsupported-media-type");
    post_json(
        &app,
        "/api/auth/siwe",
        None,
        json!({ "message": "hello", "signature": "0x00" }),
    )
    .await
    .problem(401, "unauthorized");
    // missing and bad tokens
    get(&app, "/api/auth/me", None)
        .await
        .problem(401, "unauthorized");
    get(&app, "/api/auth/me", Some("ols_nope"))
        .await
        .problem(401, "unauthorized");
    // logout ends the session at once
    assert_eq!(
        send(&app, Method::POST, "/api/auth/logout", Some(&token), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    get(&app, "/api/auth/me", Some(&token))
        .await
        .problem(401, "unauthorized");
    // no session was written for any refused attempt: 2 successful sign-ins only
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 2);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn api_keys_work_until_revoked_and_admins_see_all(pool: PgPool) {
    let (app, _) = app(&pool);
    let user = PrivateKeySigner::random();
    let op = operator(&pool).await;
    let token = sign_in(&app, &user).await;
    let d = deployment_without_chain();
    insert_datanet(&pool, &d, 1, user.address()).await;
    let job = post_json(
        &app,
        "/api/jobs",
        Some(&token),
        json!({ "kind": "datanet_snapshot", "params": { "datanet_id": "1" } }),
    )
    .await;
    assert_eq!(job.status, StatusCode::CREATED);
    let id = job.json()["id"].as_i64().unwrap();
    // the operator sees the user's job and its logs; a stranger does not
    assert_eq!(
        get(&app, &format!("/api/jobs/{id}"), Some(&op.token))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/api/jobs", Some(&op.token))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let stranger = sign_in(&app, &PrivateKeySigner::random()).await;
    get(&app, &format!("/api/jobs/{id}"), Some(&stranger))
        .await
        .problem(403, "forbidden");
    get(&app, &format!("/api/jobs/{id}/logs"), Some(&stranger))
        .await
        .problem(403, "forbidden");
    get(&app, &format!("/api/jobs/{id}/events"), Some(&stranger))
        .await
        .problem(403, "forbidden");
    send(
        &app,
        Method::POST,
        &format!("/api/jobs/{id}/cancel"),
        Some(&stranger),
        None,
    )
    .await
    .problem(403, "forbidden");
    assert!(
        get(&app, "/api/jobs", Some(&stranger))
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    get(
        &app,
        &format!("/api/jobs?owner={:#x}", user.address()),
        Some(&stranger),
    )
    .await
    .problem(403, "forbidden");
    // revocation takes effect on the next request
    assert!(openledger_daemon::auth::revoke(&pool, op.id).await.unwrap());
    get(&app, "/api/jobs", Some(&op.token))
        .await
        .problem(401, "unauthorized");
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn datanet_reads(pool: PgPool) {
    let (app, _) = app(&pool);
    let d = deployment_without_chain();
    let owner = PrivateKeySigner::random().address();
    let alice = PrivateKeySigner::random().address();
    insert_datanet(&pool, &d, 1, owner).await;
    insert_datanet(&pool, &d, 2, owner).await;
    insert_contribution(&pool, &d, 1, 1, alice, keccak256("a"), Some(true)).await;
    insert_contribution(&pool, &d, 2, 1, alice, keccak256("b"), Some(false)).await;
    insert_contribution(&pool, &d, 3, 1, owner, keccak256("c"), None).await;

    // ids order numerically, not as text
    for id in 4..=11 {
        insert_contribution(&pool, &d, id, 2, alice, keccak256(id.to_string()), None).await;
    }
    for id in 3..=10 {
        insert_datanet(&pool, &d, id, owner).await;
    }
    let ids: Vec<String> = get(&app, "/api/datanets/2/contributions", None)
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, (4..=11).map(|i| i.to_string()).collect::<Vec<_>>());
    let dn: Vec<String> = get(&app, "/api/datanets", None)
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dn, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>());
    let list = get(&app, "/api/datanets?limit=2", None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json().as_array().unwrap().len(), 2);
    assert_eq!(
        get(&app, "/api/datanets?limit=1&offset=1", None)
            .await
            .json()[0]["id"],
        "2"
    );
    let one = get(&app, "/api/datanets/1", None).await.json();
    assert_eq!(one["owner"], format!("{owner:#x}"));
    assert_eq!(
        one["stats"],
        json!({"pending": 1, "accepted": 1, "rejected": 1, "contributors": 2, "versions": 0})
    );
    let all = get(&app, "/api/datanets/1/contributions", None)
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let accepted = get(&app, "/api/datanets/1/contributions?status=accepted", None)
        .await
        .json();
    assert_eq!(accepted.as_array().unwrap().len(), 1);
    assert_eq!(accepted[0]["content_hash"], keccak256("a").to_string());
    assert_eq!(
        get(&app, "/api/datanets/1/versions", None).await.json(),
        json!([])
    );
    let by = get(
        &app,
        &format!("/api/contributors/{alice:#x}/contributions"),
        None,
    )
    .await
    .json();
    assert_eq!(by.as_array().unwrap().len(), 10);
    let by_hash = get(
        &app,
        &format!("/api/contents/{}/contributions", keccak256("c")),
        None,
    )
    .await
    .json();
    assert_eq!(by_hash[0]["id"], "3");

    get(&app, "/api/datanets/99", None)
        .await
        .problem(404, "not-found");
    get(&app, "/api/datanets/99/contributions", None)
        .await
        .problem(404, "not-found");
    get(&app, "/api/datanets/x1", None)
        .await
        .problem(400, "bad-request");
    get(&app, &format!("/api/datanets/{}", "9".repeat(80)), None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/datanets?limit=0", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/datanets?limit=abc", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/datanets?bogus=1", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/datanets/1/contributions?status=maybe", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/contributors/0x12/contributions", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/contents/0xzz/contributions", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/nope", None).await.problem(404, "not-found");
    send(&app, Method::DELETE, "/api/datanets", None, None)
        .await
        .problem(405, "method-not-allowed");
    let st = get(&app, "/api/status", None).await.json();
    assert_eq!(st["chain_id"], 31337);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn uploads_store_canonical_content_once(pool: PgPool) {
    let (app, _) = app(&pool);
    let d = deployment_without_chain();
    let key = PrivateKeySigner::random();
    insert_datanet(&pool, &d, 1, key.address()).await;
    let token = sign_in(&app, &key).await;
    let up = |body: &'static [u8], ct: &'static str, q: &'static str| {
        let app = app.clone();
        let token = token.clone();
        async move {
            send(
                &app,
                Method::POST,
                &format!("/api/uploads?{q}"),
                Some(&token),
                Some((ct, body.to_vec())),
            )
            .await
        }
    };
    let first = up(
        b"{\"prompt\":\"2+2?\",\"completion\":\"4\"}\n{\"text\":\"hello\"}\n",
        "application/jsonl",
        "datanet_id=1",
    )
    .await;
    first.expect(StatusCode::CREATED);
    let v = first.json();
    let canonical = b"{\"prompt\":\"2+2?\",\"completion\":\"4\"}\n{\"text\":\"hello\"}\n";
    assert_eq!(v["content_hash"], keccak256(canonical).to_string());
    assert_eq!(v["records"], 2);
    assert_eq!(v["state"], "uploaded");
    assert_eq!(v["owner"], format!("{:#x}", key.address()));
    // same content in another spelling: the same upload
    let again = up(
        b"{ \"completion\": \"4\", \"prompt\": \"2+2?\" }\r\n{\"text\":\"hello\"}",
        "application/x-ndjson",
        "datanet_id=1",
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], v["id"]);
    let id = v["id"].as_i64().unwrap();
    let content = get(&app, &format!("/api/uploads/{id}/content"), Some(&token)).await;
    assert_eq!(content.body, canonical);
    assert_eq!(
        get(&app, &format!("/api/uploads/{id}"), Some(&token))
            .await
            .json()["id"],
        id
    );
    assert_eq!(
        get(&app, "/api/uploads", Some(&token))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // markdown via ?format and a file name
    let md = up(
        b"# Notes\n\nbody\n",
        "application/octet-stream",
        "datanet_id=1&format=markdown&filename=notes.md",
    )
    .await;
    assert_eq!(md.status, StatusCode::CREATED);
    assert_eq!(md.json()["filename"], "notes.md");
    // once the chain has it, the upload shows the contribution
    let hash: B256 = v["content_hash"].as_str().unwrap().parse().unwrap();
    insert_contribution(&pool, &d, 7, 1, key.address(), hash, None).await;
    let seen = get(&app, &format!("/api/uploads/{id}"), Some(&token))
        .await
        .json();
    assert_eq!(seen["state"], "confirmed");
    assert_eq!(seen["contribution"]["id"], "7");

    // refusals, none of which writes anything
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&pool)
        .await
        .unwrap();
    up(b"{\"txt\":\"x\"}", "application/jsonl", "datanet_id=1")
        .await
        .problem(422, "invalid-content");
    up(b"ab\xffcd", "text/plain", "datanet_id=1")
        .await
        .problem(422, "invalid-content");
    up(b"", "text/plain", "datanet_id=1")
        .await
        .problem(422, "invalid-content");
    up(&[b'a'; 5000], "text/plain", "datanet_id=1")
        .await
        .problem(413, "payload-too-large");
    up(b"x", "application/pdf", "datanet_id=1")
        .await
        .problem(415, "unsupported-media-type");
    up(b"x", "text/plain", "datanet_id=9")
        .await
        .problem(404, "not-found");
    up(b"x", "text/plain", "datanet_id=-1")
        .await
        .problem(400, "bad-request");
    up(b"x", "text/plain", "").await.problem(400, "bad-request");
    up(b"x", "text/plain", "datanet_id=1&format=pdf")
        .await
        .problem(400, "bad-request");
    send(
        &app,
        Method::POST,
        "/api/uploads?datanet_id=1",
        None,
        Some(("text/plain", b"x".to_vec())),
    )
    .await
    .problem(401, "unauthorized");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    // someone else's upload
    let other = sign_in(&app, &PrivateKeySigner::random()).await;
    get(&app, &format!("/api/uploads/{id}"), Some(&other))
        .await
        .problem(403, "forbidden");
    get(&app, &format!("/api/uploads/{id}/content"), Some(&other))
        .await
        .problem(403, "forbidden");
    get(&app, "/api/uploads/99999", Some(&token))
        .await
        .problem(404, "not-found");
    get(&app, "/api/uploads/abc", Some(&token))
        .await
        .problem(400, "bad-request");
    // a payload the chain would refuse is not served: this content is the uploader's contribution 7 already
    let p = get(&app, &format!("/api/uploads/{id}/typed-data"), Some(&token))
        .await
        .problem(409, "conflict");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("already contributed"),
        "{p}"
    );
    // chain-facing routes say so when the daemon has no chain
    let fresh = up(b"not contributed yet", "text/plain", "datanet_id=1").await;
    fresh.expect(StatusCode::CREATED);
    get(
        &app,
        &format!("/api/uploads/{}/typed-data", fresh.json()["id"]),
        Some(&token),
    )
    .await
    .problem(503, "unavailable");
    post_json(
        &app,
        &format!("/api/uploads/{id}/relay"),
        Some(&token),
        json!({"signature": "0x12", "nonce": "0", "deadline": "1"}),
    )
    .await
    .problem(400, "bad-request");
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn jobs_submit_list_cancel_retry(pool: PgPool) {
    let (app, _) = app(&pool);
    let d = deployment_without_chain();
    let key = PrivateKeySigner::random();
    insert_datanet(&pool, &d, 1, key.address()).await;
    insert_datanet(&pool, &d, 2, PrivateKeySigner::random().address()).await;
    let token = sign_in(&app, &key).await;
    let submit = |body: serde_json::Value| {
        let app = app.clone();
        let token = token.clone();
        async move { post_json(&app, "/api/jobs", Some(&token), body).await }
    };
    let j =
        submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1"}, "priority": 5}))
            .await;
    assert_eq!(j.status, StatusCode::CREATED);
    let job = j.json();
    assert_eq!(job["state"], "queued");
    assert_eq!(
        job["params"],
        json!({"datanet_id": "1", "publish": false, "uri": null})
    );
    let id = job["id"].as_i64().unwrap();
    let listed = get(
        &app,
        "/api/jobs?state=queued&kind=datanet_snapshot",
        Some(&token),
    )
    .await
    .json();
    assert_eq!(listed[0]["id"], id);
    let logs = get(&app, &format!("/api/jobs/{id}/logs"), Some(&token))
        .await
        .json();
    assert!(
        logs[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("queued by")
    );
    assert_eq!(
        get(&app, &format!("/api/jobs/{id}/metrics"), Some(&token))
            .await
            .json(),
        json!([])
    );
    // cancel a queued job: at once; cancelling again conflicts; retry requeues it
    let c = send(
        &app,
        Method::POST,
        &format!("/api/jobs/{id}/cancel"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(c.status, StatusCode::ACCEPTED);
    assert_eq!(c.json()["state"], "cancelled");
    send(
        &app,
        Method::POST,
        &format!("/api/jobs/{id}/cancel"),
        Some(&token),
        None,
    )
    .await
    .problem(409, "conflict");
    let r = send(
        &app,
        Method::POST,
        &format!("/api/jobs/{id}/retry"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.json()["state"], "queued");
    send(
        &app,
        Method::POST,
        &format!("/api/jobs/{id}/retry"),
        Some(&token),
        None,
    )
    .await
    .problem(409, "conflict");

    // bad submissions: nothing queued
    submit(json!({"kind": "mine_bitcoin", "params": {}}))
        .await
        .problem(400, "bad-request");
    submit(json!({"kind": "relay_contribution", "params": {"relay_id": 1}}))
        .await
        .problem(400, "bad-request");
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "one"}}))
        .await
        .problem(422, "invalid-content");
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1", "extra": true}}))
        .await
        .problem(422, "invalid-content");
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1"}, "priority": 1000}))
        .await
        .problem(400, "bad-request");
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1"}, "max_attempts": 0}))
        .await
        .problem(400, "bad-request");
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1"}, "owner": "0x"}))
        .await
        .problem(400, "bad-request");
    submit(json!({"kind": 7, "params": {}}))
        .await
        .problem(400, "bad-request");
    // an unknown Datanet is bad content, not a permission problem
    let p = submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "9"}}))
        .await
        .problem(422, "invalid-content");
    assert!(
        p["detail"].as_str().unwrap().contains("no Datanet 9"),
        "{p}"
    );
    // publishing a Datanet one does not own
    submit(json!({"kind": "datanet_snapshot", "params": {"datanet_id": "2", "publish": true}}))
        .await
        .problem(403, "forbidden");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    get(&app, "/api/jobs/0", Some(&token))
        .await
        .problem(400, "bad-request");
    get(&app, "/api/jobs/424242", Some(&token))
        .await
        .problem(404, "not-found");
    get(&app, "/api/jobs?state=sleeping", Some(&token))
        .await
        .problem(400, "bad-request");
    get(&app, "/api/jobs", None)
        .await
        .problem(401, "unauthorized");
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn per_address_rate_limit(pool: PgPool) {
    let d = deployment_without_chain();
    let mut cfg = openledger_daemon::state::ApiConfig::new(d.chain_id, DOMAIN);
    cfg.rate_per_minute = std::num::NonZeroU32::new(1).unwrap();
    cfg.rate_burst = std::num::NonZeroU32::new(3).unwrap();
    let s = state_with(
        pool.clone(),
        d,
        None,
        openledger_daemon::jobs::Registry::default(),
        cfg,
    );
    let app = openledger_daemon::api::app(s);
    let a = sign_in(&app, &PrivateKeySigner::random()).await;
    let b = sign_in(&app, &PrivateKeySigner::random()).await;
    for _ in 0..3 {
        assert_eq!(
            get(&app, "/api/auth/me", Some(&a)).await.status,
            StatusCode::OK
        );
    }
    let limited = get(&app, "/api/auth/me", Some(&a)).await;
    let p = limited.problem(429, "rate-limited");
    assert!(p["retry_after"].as_u64().unwrap() >= 1);
    assert_eq!(p["limit"], "--rate-limit-per-minute");
    assert!(limited.headers.get("retry-after").is_some());
    // another address has its own budget; public reads are not limited
    assert_eq!(
        get(&app, "/api/auth/me", Some(&b)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/api/datanets", None).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn openapi_lists_every_route_and_ops_endpoints_answer(pool: PgPool) {
    let (app, _) = app(&pool);
    let doc = get(&app, "/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // the document and the router are built from the same handlers: every documented route answers
    // something other than the 404 fallback, and every route the app serves is documented
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        "/api/auth/nonce",
        "/api/auth/siwe",
        "/api/auth/me",
        "/api/auth/logout",
        "/api/datanets",
        "/api/datanets/{id}",
        "/api/datanets/{id}/contributions",
        "/api/datanets/{id}/contributions/{contribution_id}/content",
        "/api/datanets/{id}/versions",
        "/api/contributors/{address}/contributions",
        "/api/contents/{hash}/contributions",
        "/api/base-models",
        "/api/models",
        "/api/models/{job_id}",
        "/api/models/{job_id}/price",
        "/api/models/{job_id}/files/{name}",
        "/api/models/{job_id}/export/{name}",
        "/api/adapters/{hash}",
        "/api/manifests/{hash}",
        "/api/uploads",
        "/api/uploads/{id}",
        "/api/uploads/{id}/content",
        "/api/uploads/{id}/typed-data",
        "/api/uploads/{id}/relay",
        "/api/relays/{id}",
        "/api/rewards/{address}",
        "/api/settlements",
        "/api/settlements/{epoch}/report",
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/logs",
        "/api/jobs/{id}/metrics",
        "/api/jobs/{id}/events",
        "/api/jobs/{id}/cancel",
        "/api/jobs/{id}/retry",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/status",
        "/api/config",
        "/openapi.json",
        "/docs",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
        "/v1/batches",
        "/v1/batches/{id}",
        "/v1/batches/{id}/cancel",
        "/api/credits",
        "/api/credits/{address}",
        "/api/inferences/{id}/attribution",
    ];
    let mut documented: Vec<&str> = paths.keys().map(|k| k.as_str()).collect();
    documented.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(documented, want);
    // every operation names the answers its kind gives, and parameters carry the formats the API parses
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if secured {
                assert!(has("401"), "{method} {path}: 401");
            }
            if !matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
                assert!(has("429"), "{method} {path}: 429");
            }
            if op.get("requestBody").is_some() {
                assert!(
                    has("400") && has("413") && has("415"),
                    "{method} {path}: body answers"
                );
            }
            if !matches!(
                path.as_str(),
                "/openapi.json" | "/docs" | "/healthz" | "/metrics"
            ) {
                assert!(has("503"), "{method} {path}: 503");
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let (name, schema) = (p["name"].as_str().unwrap(), &p["schema"]);
                match name {
                    "address" => assert_eq!(schema["pattern"], "^0x[0-9a-fA-F]{40}$", "{path}"),
                    "hash" => assert_eq!(schema["pattern"], "^0x[0-9a-fA-F]{64}$", "{path}"),
                    "limit" => assert!(
                        schema["minimum"] == 1 && schema["maximum"].is_u64(),
                        "{path}"
                    ),
                    "offset" => assert_eq!(schema["minimum"], 0, "{path}"),
                    _ => {}
                }
            }
        }
    }
    // optional sign-in is documented as such: anonymous or a bearer token
    let chat = &paths["/v1/chat/completions"]["post"];
    assert_eq!(chat["security"], json!([{}, {"bearer": []}]));
    assert_eq!(
        chat["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ChatRequest"
    );
    assert_eq!(
        doc["components"]["schemas"]["ChatRequest"]["required"],
        json!(["model", "messages"])
    );
    // what the handlers return: an array of Datanet versions trained on, an array of epochs
    assert_eq!(
        doc["components"]["schemas"]["TrainedModel"]["properties"]["datanets"]["type"],
        "array"
    );
    assert_eq!(
        paths["/api/settlements"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["type"],
        "array"
    );
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            let uri = path
                .replace("{id}", "1")
                .replace("{address}", "0x0000000000000000000000000000000000000001")
                .replace("{hash}", &format!("0x{}", "00".repeat(32)));
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = if path.ends_with("/events") {
                // an open SSE stream would not end; the 401 shows the route exists
                send(&app, m, &uri, None, None).await
            } else {
                send(
                    &app,
                    m,
                    &uri,
                    None,
                    Some(("application/json", b"{}".to_vec())),
                )
                .await
            };
            let route_missing =
                r.status == StatusCode::NOT_FOUND && r.json()["detail"] == "no such route";
            assert!(
                !route_missing && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not served"
            );
        }
    }
    // every schema referenced exists
    let text = doc.to_string();
    for cap in text.split("\"#/components/schemas/").skip(1) {
        let name = cap.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "missing schema {name}"
        );
    }
    assert_eq!(get(&app, "/healthz", None).await.body, b"ok");
    assert_eq!(get(&app, "/readyz", None).await.status, StatusCode::OK);
    let docs = get(&app, "/docs", None).await;
    assert!(String::from_utf8_lossy(&docs.body).contains("/openapi.json"));
    let m = get(&app, "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("openledger_http_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("openledger_jobs"), "{text}");
    // every response carries a request id
    assert!(
        get(&app, "/healthz", None)
            .await
            .headers
            .get("x-request-id")
            .is_some()
    );
}

/// A trained model row (and its job) owned by `owner`, as a finished training job leaves them.
async fn insert_trained_model(pool: &PgPool, owner: alloy::primitives::Address) -> i64 {
    let owner = format!("{owner:#x}");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, owner, params, state) VALUES ('train', $1, '{}', 'succeeded') RETURNING id",
    )
    .bind(&owner)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO trained_models (job_id, owner, base_model, base_model_hash, datanets, adapter_hash,
                                     manifest_hash, dir, metrics)
         VALUES ($1, $2, 'm', '0x00', '[]', 'aa', 'bb', '/nonexistent', '{}')",
    )
    .bind(id)
    .bind(&owner)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// The model list filters by owner and pages in one query string (a filtered request was once always a 400:
/// the paging extractor refused `owner`); unknown fields are still refused.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn the_model_list_filters_by_owner_and_pages(pool: PgPool) {
    let (app, _) = app(&pool);
    let (a, b) = (
        PrivateKeySigner::random().address(),
        PrivateKeySigner::random().address(),
    );
    let first = insert_trained_model(&pool, a).await;
    let second = insert_trained_model(&pool, a).await;
    insert_trained_model(&pool, b).await;
    let ids = |v: serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["job_id"].as_i64().unwrap())
            .collect()
    };
    let mine = get(&app, &format!("/api/models?owner={a:#x}"), None).await;
    mine.expect(StatusCode::OK);
    assert_eq!(
        ids(mine.json()),
        vec![second, first],
        "newest first, only a's"
    );
    let page = get(
        &app,
        &format!("/api/models?owner={a:#x}&limit=1&offset=1"),
        None,
    )
    .await;
    page.expect(StatusCode::OK);
    assert_eq!(ids(page.json()), vec![first]);
    assert_eq!(
        ids(get(&app, "/api/models?limit=2", None).await.json()).len(),
        2
    );
    get(&app, "/api/models?owner=nope", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/models?ownr=0x00", None)
        .await
        .problem(400, "bad-request");
    get(&app, "/api/models?limit=0", None)
        .await
        .problem(400, "bad-request");
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn developers_set_their_models_price(pool: PgPool) {
    let (app, _) = app(&pool);
    let dev = PrivateKeySigner::random();
    let other = PrivateKeySigner::random();
    let job = insert_trained_model(&pool, dev.address()).await;
    let uri = format!("/api/models/{job}/price");
    let put = |token: Option<String>, body: serde_json::Value| {
        let (app, uri) = (app.clone(), uri.clone());
        async move {
            send(
                &app,
                Method::PUT,
                &uri,
                token.as_deref(),
                Some(("application/json", serde_json::to_vec(&body).unwrap())),
            )
            .await
        }
    };
    // no price of its own yet; this test daemon serves no model, so no effective price either
    let p = get(&app, &uri, None).await.json();
    assert_eq!(p["price_per_1k"], serde_json::Value::Null);
    assert_eq!(p["effective_price_per_1k"], serde_json::Value::Null);

    let tok = sign_in(&app, &dev).await;
    let set = put(
        Some(tok.clone()),
        json!({"price_per_1k": "2500000000000000"}),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.json());
    assert_eq!(set.json()["price_per_1k"], "2500000000000000");
    assert_eq!(set.json()["effective_price_per_1k"], "2500000000000000");
    let stored: String =
        sqlx::query_scalar("SELECT price_per_1k::text FROM model_prices WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, "2500000000000000");

    // refusals leave the price as it was
    put(None, json!({"price_per_1k": "1"}))
        .await
        .problem(401, "unauthorized");
    let stranger = sign_in(&app, &other).await;
    put(Some(stranger), json!({"price_per_1k": "1"}))
        .await
        .problem(403, "forbidden");
    for bad in [
        json!({"price_per_1k": "0"}),
        json!({"price_per_1k": "-5"}),
        json!({"price_per_1k": "1.5"}),
        json!({"price_per_1k": "0x10"}),
        json!({"price_per_1k": format!("1{}", "0".repeat(37))}),
        json!({"price_per_1k": 7}),
        json!({"price": "7"}),
    ] {
        put(Some(tok.clone()), bad.clone())
            .await
            .problem(400, "bad-request");
    }
    send(
        &app,
        Method::PUT,
        "/api/models/999999/price",
        Some(&tok),
        Some(("application/json", br#"{"price_per_1k":"5"}"#.to_vec())),
    )
    .await
    .problem(404, "not-found");
    assert_eq!(
        get(&app, &uri, None).await.json()["price_per_1k"],
        "2500000000000000"
    );

    // null returns the model to the default
    let cleared = put(Some(tok), json!({"price_per_1k": null})).await.json();
    assert_eq!(cleared["price_per_1k"], serde_json::Value::Null);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM model_prices")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0
    );
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn the_web_ui_is_served_from_the_binary(pool: PgPool) {
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use std::io::Read;
    use tower::ServiceExt;

    let (app, _) = app(&pool);
    let index = get(&app, "/", None).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let html = String::from_utf8(index.body.clone()).unwrap();
    assert!(html.contains(r#"src="/app/src/main.js""#), "{html}");
    // no third-party origin anywhere: scripts and styles come from this binary
    assert!(!html.contains("https://"), "{html}");
    assert!(
        index.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    // every module under ui/src (the shell imports some, the router the pages) is served, as JavaScript
    let ui = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui");
    let mut paths = vec!["/app/app.css".to_owned()];
    for dir in ["src", "src/pages"] {
        for e in std::fs::read_dir(ui.join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".js") {
                paths.push(format!("/app/{dir}/{name}"));
            }
        }
    }
    assert!(paths.len() > 20, "{paths:?}");
    for path in &paths {
        let r = get(&app, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let ct = r.headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        assert!(
            ct.starts_with(if path.ends_with(".css") {
                "text/css"
            } else {
                "text/javascript"
            }),
            "{path}: {ct}"
        );
    }
    // the ABIs (for naming reverts), but not the tests
    let abi = get(&app, "/app/abi/RewardDistributor.json", None).await;
    assert_eq!(abi.status, StatusCode::OK);
    assert!(
        abi.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "claim")
    );
    for missing in [
        "/app/test/abi.test.mjs",
        "/app/src/nope.js",
        "/app/../Cargo.toml",
        "/app/abi/Nope.json",
    ] {
        let r = get(&app, missing, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{missing}"
        );
    }

    // gzip on request, and a 304 for an unchanged file
    let req = Request::builder()
        .uri("/app/src/main.js")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    let etag = res.headers()[header::ETAG].clone();
    let zipped = res.into_body().collect().await.unwrap().to_bytes();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert!(
        plain.contains("hashchange"),
        "the decompressed module is main.js"
    );
    assert!(zipped.len() < plain.len());
    let req = Request::builder()
        .uri("/app/src/main.js")
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // what the UI needs to reach the chain
    let cfg = get(&app, "/api/config", None).await;
    assert_eq!(cfg.status, StatusCode::OK);
    let cfg = cfg.json();
    assert_eq!(cfg["chain_id"], 31337);
    assert!(
        cfg["contracts"]["RewardDistributor"]
            .as_str()
            .unwrap()
            .starts_with("0x")
    );
    // a dev wallet is offered only when asked for and with an RPC URL to reach
    assert_eq!(cfg["dev_wallet"], false);
    assert_eq!(cfg["siwe_domain"], DOMAIN);
}

/// An operator's API key (admin) for a random address.
async fn operator(pool: &PgPool) -> openledger_daemon::auth::Issued {
    openledger_daemon::auth::create_api_key(
        pool,
        PrivateKeySigner::random().address(),
        "ops",
        true,
        None,
    )
    .await
    .unwrap()
}

/// An app over `s` whose requests come from `ip`: each request carries the peer address `serve`'s
/// connection would give it.
fn app_from(s: &openledger_daemon::state::AppState, ip: &str) -> axum::Router {
    let peer: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    openledger_daemon::api::app(s.clone()).layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| async move {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req
        },
    ))
}

fn config_with(
    f: impl FnOnce(&mut openledger_daemon::state::ApiConfig),
) -> openledger_daemon::state::ApiConfig {
    let mut cfg =
        openledger_daemon::state::ApiConfig::new(deployment_without_chain().chain_id, DOMAIN);
    f(&mut cfg);
    cfg
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn anonymous_floods_are_limited_per_ip_and_a_bad_token_counts_as_anonymous(pool: PgPool) {
    let cfg = config_with(|c| {
        c.ip_rate_per_minute = std::num::NonZeroU32::new(1).unwrap();
        c.ip_rate_burst = std::num::NonZeroU32::new(3).unwrap();
    });
    let s = bare_state(&pool, cfg);
    let (flood, calm) = (app_from(&s, "192.0.2.1"), app_from(&s, "192.0.2.2"));
    // signing in costs the calm address two anonymous requests (nonce, sign-in)
    let token = sign_in(&calm, &PrivateKeySigner::random()).await;
    for _ in 0..3 {
        get(&flood, "/api/datanets", None)
            .await
            .expect(StatusCode::OK);
    }
    let limited = get(&flood, "/api/auth/nonce", None).await;
    let p = limited.problem(429, "rate-limited");
    assert_eq!(p["limit"], "--ip-rate-limit-per-minute");
    assert!(p["retry_after"].as_u64().unwrap() >= 1);
    assert_eq!(
        limited.headers["retry-after"],
        p["retry_after"].to_string().as_str()
    );
    // a nonce row per call was the abuse: the refused call wrote none
    let nonces: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        nonces, 0,
        "the sign-in used its nonce and the refused call made none"
    );
    // the same address signed in, the web app's files, the probes, and other addresses are served
    get(&flood, "/api/auth/me", Some(&token))
        .await
        .expect(StatusCode::OK);
    get(&flood, "/", None).await.expect(StatusCode::OK);
    get(&flood, "/healthz", None).await.expect(StatusCode::OK);
    get(&calm, "/api/datanets", None)
        .await
        .expect(StatusCode::OK);
    // IPv6 neighbours in one /64 share a budget
    let (v6a, v6b) = (
        app_from(&s, "[2001:db8:7:7::1]"),
        app_from(&s, "[2001:db8:7:7::2]"),
    );
    for _ in 0..3 {
        get(&v6a, "/api/datanets", None)
            .await
            .expect(StatusCode::OK);
    }
    get(&v6b, "/api/datanets", None)
        .await
        .problem(429, "rate-limited");
    // guessing tokens is anonymous traffic: three wrong tokens, then the address is limited
    let guesser = app_from(&s, "192.0.2.3");
    for i in 0..3 {
        get(&guesser, "/api/auth/me", Some(&format!("ol_guess{i}")))
            .await
            .problem(401, "unauthorized");
    }
    get(&guesser, "/api/auth/me", Some("ol_guess4"))
        .await
        .problem(429, "rate-limited");
}

/// A signed-in caller's `POST /api/jobs` whose body arrives only when the test sends it: the request holds a
/// slot of the server until then.
fn stalled_submission(
    token: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    axum::http::Request<axum::body::Body>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let req = axum::http::Request::post("/api/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(stream))
        .unwrap();
    (tx, req)
}

/// A state over `pool` with `cfg`, no chain and no job kinds.
fn bare_state(
    pool: &PgPool,
    cfg: openledger_daemon::state::ApiConfig,
) -> openledger_daemon::state::AppState {
    state_with(
        pool.clone(),
        deployment_without_chain(),
        None,
        Default::default(),
        cfg,
    )
}

/// The app over a state with `cfg` and no chain, and a session on it.
async fn signed_in_app(
    pool: &PgPool,
    cfg: openledger_daemon::state::ApiConfig,
) -> (axum::Router, openledger_daemon::state::AppState, String) {
    let s = bare_state(pool, cfg);
    let app = openledger_daemon::api::app(s.clone());
    let token = sign_in(&app, &PrivateKeySigner::random()).await;
    (app, s, token)
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_full_house_answers_429_naming_its_limit_and_recovers(pool: PgPool) {
    use tower::ServiceExt;
    let (app, s, token) =
        signed_in_app(&pool, config_with(|c| c.max_concurrent_requests = 1)).await;
    let (tx, req) = stalled_submission(&token);
    let held = tokio::spawn(app.clone().oneshot(req));
    until("the stalled request to hold the only slot", || async {
        (s.in_flight.available_permits() == 0).then_some(())
    })
    .await;
    let busy = get(&app, "/api/datanets", None).await;
    let p = busy.problem(429, "overloaded");
    assert_eq!(p["limit"], "--max-concurrent-requests");
    assert!(busy.headers.get("retry-after").is_some());
    // liveness and readiness probes are answered whatever the load
    get(&app, "/healthz", None).await.expect(StatusCode::OK);
    // the held request completes once its body arrives, and the slot is free again
    tx.send(Ok(br#"{"kind":"nothing","params":{}}"#.to_vec()))
        .await
        .unwrap();
    drop(tx);
    let done = held.await.unwrap().unwrap();
    assert_eq!(done.status(), StatusCode::BAD_REQUEST);
    get(&app, "/api/datanets", None)
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_request_past_the_time_limit_is_a_503_naming_it(pool: PgPool) {
    let cfg = config_with(|c| c.request_timeout = std::time::Duration::from_secs(1));
    let (app, s, token) = signed_in_app(&pool, cfg).await;
    let (_tx, req) = stalled_submission(&token);
    let res = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p["type"], "/problems/timeout");
    assert_eq!(p["limit"], "--request-timeout-secs");
    assert_eq!(
        s.in_flight.available_permits(),
        s.cfg.max_concurrent_requests
    );
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn upload_bytes_per_day_are_a_quota_and_a_refused_upload_leaves_nothing(pool: PgPool) {
    let cfg = config_with(|c| c.quotas.upload_bytes_per_day = 100);
    let d = deployment_without_chain();
    let s = state_with(pool.clone(), d.clone(), None, Default::default(), cfg);
    let app = openledger_daemon::api::app(s);
    let (key, other) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    insert_datanet(&pool, &d, 1, key.address()).await;
    insert_datanet(&pool, &d, 2, key.address()).await;
    let (token, other_token) = (sign_in(&app, &key).await, sign_in(&app, &other).await);
    let up = |token: String, datanet: u64, text: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                Method::POST,
                &format!("/api/uploads?datanet_id={datanet}"),
                Some(&token),
                Some(("text/plain", text.as_bytes().to_vec())),
            )
            .await
        }
    };
    let first = "some sixty bytes of contribution text, stored canonically";
    up(token.clone(), 1, first)
        .await
        .expect(StatusCode::CREATED);
    let size: i32 = sqlx::query_scalar("SELECT byte_size FROM contents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(size > 50 && size < 100, "{size}");
    // the same content again is free
    up(token.clone(), 1, first).await.expect(StatusCode::OK);
    let over = up(
        token.clone(),
        2,
        "another sixty bytes of contribution text, which do not fit",
    )
    .await;
    let p = over.problem(429, "quota-exceeded");
    assert_eq!(p["limit"], "--quota-upload-bytes-per-day");
    let wait = p["retry_after"].as_u64().unwrap();
    assert!(
        (86_000..=86_400).contains(&wait),
        "the first upload leaves the window in a day: {wait}"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("used {size} of its 100")),
        "{p}"
    );
    // a batch input file is stored bytes too
    let line = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}"#;
    let file = send(
        &app,
        Method::POST,
        "/v1/files",
        Some(&token),
        Some(multipart("batch", "b.jsonl", line)),
    )
    .await;
    assert_eq!(
        file.problem(429, "quota-exceeded")["limit"],
        "--quota-upload-bytes-per-day"
    );
    let files: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(files, 0);
    let contents: i64 = sqlx::query_scalar("SELECT count(*) FROM contents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(contents, 1, "the refused upload's content was not kept");
    // another address has its own quota; a stranger's uploads do not use it up
    up(
        other_token,
        1,
        "another sixty bytes of contribution text, which do not fit",
    )
    .await
    .expect(StatusCode::CREATED);
    // a day later the first upload has left the window
    sqlx::query("UPDATE quota_usage SET at = at - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    up(token, 2, "the third text, uploaded a day after the first")
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn concurrent_jobs_are_capped_per_address_but_not_for_operators(pool: PgPool) {
    let d = deployment_without_chain();
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), &d).unwrap();
    let jobs = openledger_daemon::jobs::Registry::default().with(
        openledger_daemon::jobs::snapshot::SnapshotJob {
            index,
            chain: None,
            tx_timeout: std::time::Duration::from_secs(5),
        },
    );
    let cfg = config_with(|c| c.quotas.concurrent_jobs = 2);
    let s = state_with(pool.clone(), d.clone(), None, jobs, cfg);
    let app = openledger_daemon::api::app(s);
    let (user, other) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    insert_datanet(&pool, &d, 1, user.address()).await;
    let (token, other_token) = (sign_in(&app, &user).await, sign_in(&app, &other).await);
    let op = operator(&pool).await;
    let snapshot = json!({ "kind": "datanet_snapshot", "params": { "datanet_id": "1" } });
    let mut ids = Vec::new();
    for _ in 0..2 {
        let j = post_json(&app, "/api/jobs", Some(&token), snapshot.clone()).await;
        ids.push(j.expect(StatusCode::CREATED).json()["id"].as_i64().unwrap());
    }
    let third = post_json(&app, "/api/jobs", Some(&token), snapshot.clone()).await;
    let p = third.problem(429, "quota-exceeded");
    assert_eq!(p["limit"], "--quota-concurrent-jobs");
    assert_eq!(third.headers["retry-after"], "30");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 2, "the refused job was not queued");
    // others, and operators, are not held by this address's queue
    post_json(&app, "/api/jobs", Some(&other_token), snapshot.clone())
        .await
        .expect(StatusCode::CREATED);
    for _ in 0..3 {
        post_json(&app, "/api/jobs", Some(&op.token), snapshot.clone())
            .await
            .expect(StatusCode::CREATED);
    }
    // a finished job makes room
    let cancelled = send(
        &app,
        Method::POST,
        &format!("/api/jobs/{}/cancel", ids[0]),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(cancelled.json()["state"], "cancelled");
    post_json(&app, "/api/jobs", Some(&token), snapshot)
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn with_the_database_away_requests_get_a_503_with_retry_after_and_recover(pool: PgPool) {
    let (proxied, proxy) = openledger_testkit::proxy::pool_through(&pool).await;
    let app = openledger_daemon::api::app(bare_state(&proxied, config_with(|_| {})));
    let token = sign_in(&app, &PrivateKeySigner::random()).await;
    get(&app, "/api/datanets", None)
        .await
        .expect(StatusCode::OK);
    proxy.cut();
    for (path, token) in [("/api/datanets", None), ("/api/jobs", Some(token.as_str()))] {
        let away = get(&app, path, token).await;
        let p = away.problem(503, "unavailable");
        assert_eq!(away.headers["retry-after"], "5", "{path}");
        assert!(
            !p["detail"].as_str().unwrap().contains("postgres://"),
            "{p}"
        );
    }
    // liveness holds; readiness says the database is away
    get(&app, "/healthz", None).await.expect(StatusCode::OK);
    assert_eq!(
        get(&app, "/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    proxy.restore();
    get(&app, "/api/datanets", None)
        .await
        .expect(StatusCode::OK);
    get(&app, "/api/jobs", Some(&token))
        .await
        .expect(StatusCode::OK);
}
