//! The whole contribution path against a real anvil and Postgres: sign in with a wallet, upload, sign the
//! EIP-712 payload, the daemon relays, the in-process indexer confirms; follow the job over SSE; snapshot and
//! publish a Datanet version. One test per feature, over one stack built for the binary (`FLOW`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::daemon as support;
use openledger_testkit::send;

use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::signers::local::PrivateKeySigner;
use axum::http::{Method, StatusCode};
use common::{KEYS, TestChain, ether};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{OpenToken, Registry};
use openledger_chain::merkle::{StandardMerkleTree, leaf};
use openledger_daemon::chain::Chain;
use openledger_daemon::jobs::worker::{self, WorkerConfig};
use openledger_daemon::state::ApiConfig;
use openledger_indexer::{Indexer, Mode};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;
use tokio::sync::{broadcast, watch};

/// What this binary's tests share, built once: anvil with the suite, Datanet 1 owned by the daemon's key
/// (#1, the relayer, so it may publish its versions) and Datanet 2 by #0, and the daemon's pieces (chain with
/// the relayer key, in-process indexer, workers, API).
struct Flow {
    chain: TestChain,
    app: axum::Router,
    pool: PgPool,
    relayer: PrivateKeySigner,
    /// Keeps the workers running.
    _stop: watch::Sender<bool>,
    _data: tempfile::TempDir,
}

static FLOW: common::Shared<Flow> = common::Shared::new(|| Box::pin(flow()));

async fn flow() -> Flow {
    let pool = common::fixture_database("flow").await;
    let chain = TestChain::start().await;
    let d = chain.deployment.clone();
    let registry_addr = d.address(ContractKind::Registry).unwrap();
    let token = |i| OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), chain.actor(i));
    let registry = |i| Registry::new(registry_addr, chain.actor(i));

    // the daemon (#1, the relayer) owns Datanet 1 so it may publish its versions; #0 owns Datanet 2
    send!(token(0).transfer(TestChain::address_of(1), ether(100)));
    send!(token(1).approve(registry_addr, ether(100)));
    send!(registry(1).createDatanet("ipfs://dn1".into(), vec!["qa".into()], false, vec![]));
    send!(token(0).approve(registry_addr, ether(100)));
    send!(registry(0).createDatanet("ipfs://dn2".into(), vec![], false, vec![]));
    // Datanet 3: #0's permissioned one, open to #3
    send!(registry(0).createDatanet("ipfs://dn3".into(), vec![], true, vec![]));
    send!(registry(0).setContributorsAllowed(U256::from(3), vec![TestChain::address_of(3)], true));

    // the daemon's pieces: chain with the relayer key, in-process indexer, workers, API
    let relayer: PrivateKeySigner = KEYS[1].parse().unwrap();
    let daemon_chain = Chain::connect(
        &chain.url,
        &d,
        Some(relayer.clone()),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .with_send_lock(pool.clone());
    let data = tempfile::tempdir().unwrap();
    common::remove_at_exit(data.path());
    let training =
        openledger_daemon::training::TrainSettings::new(data.path().to_path_buf(), "cpu");
    let jobs = openledger_daemon::serve::registry(
        &pool,
        &d,
        &daemon_chain,
        Duration::from_secs(30),
        &training,
        openledger_daemon::quotas::Quotas::UNLIMITED,
        None,
    )
    .unwrap();
    let mut indexer = Indexer::new(chain.config(), d.clone(), pool.clone())
        .await
        .unwrap();
    tokio::spawn(async move { indexer.run(Mode::Follow).await });
    let (stop, stop_rx) = watch::channel(false);
    let (events, _) = broadcast::channel(256);
    openledger_daemon::notify::spawn_listener(pool.clone(), events.clone(), watch::channel(0).0);
    tokio::spawn(worker::run(
        openledger_daemon::jobs::Queue::new(pool.clone()),
        jobs.clone(),
        WorkerConfig::default(),
        "flow".into(),
        events,
        stop_rx,
    ));
    let state = state_with(
        pool.clone(),
        d.clone(),
        Some(daemon_chain),
        jobs,
        ApiConfig::new(d.chain_id, DOMAIN),
    );
    let app = openledger_daemon::api::app(state);
    until("Datanet 3 indexed", || async {
        (get(&app, "/api/datanets/3", None).await.status == StatusCode::OK).then_some(())
    })
    .await;

    Flow {
        chain,
        app,
        pool,
        relayer,
        _stop: stop,
        _data: data,
    }
}

impl Flow {
    fn registry(&self, i: usize) -> Registry::RegistryInstance<alloy::providers::DynProvider> {
        Registry::new(
            self.chain
                .deployment
                .address(ContractKind::Registry)
                .unwrap(),
            self.chain.actor(i),
        )
    }

    /// Uploads `content` to `datanet` as `session` through the fixture's API; the upload.
    async fn upload(&self, session: &str, datanet: u64, content: &[u8]) -> Value {
        upload(&self.app, session, datanet, content).await
    }

    /// Relays upload `id` through the fixture's API: accepted (202).
    async fn relay(&self, session: &str, id: i64, signature: &str, td: &Value) {
        relay(&self.app, session, id, signature, td).await
    }

    /// The EIP-712 payload to sign for upload `id`, from the fixture's API.
    async fn typed_data(&self, session: &str, id: i64) -> Value {
        typed_data(&self.app, session, id).await
    }

    /// The contributor (#4) sends `contribute` for `upload` themselves and the daemon matches it: the
    /// confirmed upload.
    async fn contribute_yourself(&self, session: &str, upload: &Value) -> Value {
        let h: B256 = upload["content_hash"].as_str().unwrap().parse().unwrap();
        let datanet: u64 = upload["datanet_id"].as_str().unwrap().parse().unwrap();
        send!(
            self.registry(4)
                .contribute(U256::from(datanet), h, "ipfs://self".into())
        );
        wait_upload(
            &self.app,
            session,
            upload["id"].as_i64().unwrap(),
            "confirmed",
        )
        .await
    }
}

/// An upload signed (EIP-712) by its owner is relayed by the daemon, which pays the gas, and confirmed by the
/// indexer; every other signature, nonce, deadline or caller is refused before anything is sent, and a
/// payload is relayed once.
#[test]
fn a_signed_upload_is_relayed_and_confirmed() {
    FLOW.run(|f| async move {
        let (app, registry) = (&f.app, |i| f.registry(i));
    // a contributor with no gas money of its own: #4 (anvil funds it with ETH, but it never sends)
    let contributor: PrivateKeySigner = KEYS[4].parse().unwrap();
    let session = sign_in(app, &contributor).await;
    let up = send(
        app,
        Method::POST,
        "/api/uploads?datanet_id=1&filename=qa.jsonl",
        Some(&session),
        Some((
            "application/jsonl",
            b"{\"prompt\":\"Capital of France?\",\"completion\":\"Paris\"}\n".to_vec(),
        )),
    )
    .await;
    assert_eq!(up.status, StatusCode::CREATED);
    let upload = up.json();
    let id = upload["id"].as_i64().unwrap();
    let td = f.typed_data(&session, id).await;
    assert_eq!(td["nonce"], "0");
    assert_eq!(
        td["typed_data"]["message"]["contentHash"],
        upload["content_hash"]
    );
    let signature = sign_typed(&contributor, &td["typed_data"]);

    // refusals before anything is sent
    let other: PrivateKeySigner = KEYS[5].parse().unwrap();
    let relay_url = format!("/api/uploads/{id}/relay");
    let body = |sig: &str, nonce: &str| json!({ "signature": sig, "nonce": nonce, "deadline": td["deadline"] });
    let p = post_json(
        app,
        &relay_url,
        Some(&session),
        body(&sign_typed(&other, &td["typed_data"]), "0"),
    )
    .await
    .problem(400, "bad-request");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("not by the upload's owner")
    );
    // the signature covers nonce 0: claiming another nonce breaks the recovery
    post_json(app, &relay_url, Some(&session), body(&signature, "1"))
        .await
        .problem(400, "bad-request");
    post_json(
        app,
        &relay_url,
        Some(&session),
        json!({ "signature": signature, "nonce": "0", "deadline": "1" }),
    )
    .await
    .problem(400, "bad-request");
    let stranger = sign_in(app, &other).await;
    post_json(app, &relay_url, Some(&stranger), body(&signature, "0"))
        .await
        .problem(403, "forbidden");

    // relay
    let r = post_json(app, &relay_url, Some(&session), body(&signature, "0")).await;
    r.expect(StatusCode::ACCEPTED);
    let relay = r.json();
    assert_eq!(relay["state"], "pending");
    let job_id = relay["job_id"].as_i64().unwrap();
    // the same signed payload twice is refused
    post_json(app, &relay_url, Some(&session), body(&signature, "0"))
        .await
        .problem(409, "conflict");

    // follow the job to its end over SSE
    let sse = get(
        app,
        &format!("/api/jobs/{job_id}/events?access_token={session}"),
        None,
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&sse.body).to_string();
    assert!(text.contains("event: log"), "{text}");
    assert!(text.contains("submitted transaction"), "{text}");
    assert!(text.contains("event: end\ndata: succeeded"), "{text}");
    // a token in the URL is taken on event streams only (elsewhere it would sit in logs and histories)
    get(app, &format!("/api/relays/{}?access_token={session}", relay["id"]), None)
        .await
        .problem(401, "unauthorized");

    let done = wait_upload(app, &session, id, "confirmed").await;
    assert_eq!(
        done["contribution"]["contributor"],
        format!("{:#x}", contributor.address())
    );
    assert_eq!(done["relays"][0]["state"], "confirmed");
    let tx: B256 = done["relays"][0]["tx_hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(done["contribution"]["tx_hash"], tx.to_string());
    // the relayer paid: the transaction is from #1, the contribution credits #4
    let on_chain = registry(0)
        .contributionByHash(
            U256::from(1),
            contributor.address(),
            upload["content_hash"].as_str().unwrap().parse().unwrap(),
        )
        .call()
        .await
        .unwrap();
    assert_ne!(on_chain, U256::ZERO);
    assert_eq!(done["contribution"]["id"], on_chain.to_string());
    // once on chain, relaying again is a conflict, and so is asking for a payload to sign
    post_json(app, &relay_url, Some(&session), body(&signature, "0"))
        .await
        .problem(409, "conflict");

    // a stale signature (nonce already used) is refused
    let up3 = send(
        app,
        Method::POST,
        "/api/uploads?datanet_id=2",
        Some(&session),
        Some(("text/plain", b"third".to_vec())),
    )
    .await
    .json();
    let stale = post_json(
        app,
        &format!("/api/uploads/{}/relay", up3["id"]),
        Some(&session),
        body(&signature, "0"),
    )
    .await;
    // the old signature covers other values, so recovery yields another address: 400, not a relay
    stale.problem(400, "bad-request");

    });
}

/// A front-runner copies an upload's content hash (from the mempool, a relay, a public listing) and contributes
/// it first. On chain that is the front-runner's own contribution: the uploader's upload is not taken for
/// confirmed by it, the uploader's signed relay still goes through to the uploader's credit, and the uploaded
/// content is trained only for the uploader's contribution. A second honest holder of the same data gets its
/// own contribution too.
#[test]
fn a_front_run_contribution_neither_blocks_nor_takes_the_uploaders_credit() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let victim: PrivateKeySigner = KEYS[6].parse().unwrap();
        let attacker = TestChain::address_of(7);
        let session = sign_in(app, &victim).await;
        let up = f.upload(&session, 2, b"The victim's own words.").await;
        let id = up["id"].as_i64().unwrap();
        let hash: B256 = up["content_hash"].as_str().unwrap().parse().unwrap();
        let td = f.typed_data(&session, id).await;
        let signature = sign_typed(&victim, &td["typed_data"]);

        // the attacker contributes the hash first
        send!(
            f.registry(7)
                .contribute(U256::from(2), hash, "ipfs://squat".into())
        );
        let squat = f
            .registry(0)
            .contributionByHash(U256::from(2), attacker, hash)
            .call()
            .await
            .unwrap();
        assert_ne!(squat, U256::ZERO);
        until("the front-run contribution indexed", || async {
            let v = get(app, &format!("/api/contents/{hash}/contributions"), None)
                .await
                .json();
            (v.as_array().unwrap().len() == 1).then_some(())
        })
        .await;
        // the attacker's contribution does not confirm the victim's upload
        let v = get(app, &format!("/api/uploads/{id}"), Some(&session))
            .await
            .json();
        assert_eq!(v["state"], "uploaded", "{v}");
        assert!(v["contribution"].is_null(), "{v}");

        // the victim's signed relay goes through, to the victim
        f.relay(&session, id, &signature, &td).await;
        let done = wait_upload(app, &session, id, "confirmed").await;
        assert_eq!(
            done["contribution"]["contributor"],
            format!("{:#x}", victim.address())
        );
        assert_ne!(done["contribution"]["id"], squat.to_string());
        // once the victim's is on chain, a payload to sign again is refused (the chain would refuse it)
        get(
            app,
            &format!("/api/uploads/{id}/typed-data"),
            Some(&session),
        )
        .await
        .problem(409, "conflict");

        // training reads the uploaded content for the uploader's contribution only
        let chain_id = f.chain.deployment.chain_id as i64;
        let bodies = openledger_daemon::uploads::bodies_uploaded_by(
            &f.pool,
            chain_id,
            &[(victim.address(), hash), (attacker, hash)],
        )
        .await
        .unwrap();
        let body = bodies
            .get(&(victim.address(), hash))
            .expect("the uploader's content");
        // the canonical form of the text upload (a JSON line)
        assert!(
            String::from_utf8_lossy(body).contains("The victim's own words."),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(
            !bodies.contains_key(&(attacker, hash)),
            "the squatter gets no content"
        );

        // a second honest holder of the same data (#8) uploads it: not confirmed by anyone else's, and it
        // contributes it itself
        let second: PrivateKeySigner = KEYS[8].parse().unwrap();
        let s2 = sign_in(app, &second).await;
        let up2 = f.upload(&s2, 2, b"The victim's own words.").await;
        assert_eq!(up2["content_hash"], up["content_hash"]);
        assert_eq!(up2["state"], "uploaded", "{up2}");
        send!(
            f.registry(8)
                .contribute(U256::from(2), hash, "ipfs://mine-too".into())
        );
        let mine = wait_upload(app, &s2, up2["id"].as_i64().unwrap(), "confirmed").await;
        assert_eq!(
            mine["contribution"]["contributor"],
            format!("{:#x}", second.address())
        );
    });
}

/// A relay the contract refuses fails with the refusal in words, on the upload and on the relay: here the
/// Datanet's owner takes the contributor off the permissioned Datanet's list after the payload was signed.
#[test]
fn a_relay_the_contract_refuses_says_why_in_words() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let key: PrivateKeySigner = KEYS[3].parse().unwrap();
        let session = sign_in(app, &key).await;
        let up = f
            .upload(&session, 3, b"Written while still on the list.")
            .await;
        let id = up["id"].as_i64().unwrap();
        let td = f.typed_data(&session, id).await;
        let signature = sign_typed(&key, &td["typed_data"]);
        send!(
            f.registry(0)
                .setContributorsAllowed(U256::from(3), vec![key.address()], false)
        );
        f.relay(&session, id, &signature, &td).await;
        let failed = wait_upload(app, &session, id, "failed").await;
        let want = format!(
            "Datanet 3 is permissioned and {} is not on its list of contributors",
            key.address().to_checksum(None)
        );
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(error.contains(&want), "{failed}");
        assert!(!error.contains('{'), "not Rust debug text: {error}");
        assert_eq!(failed["relays"][0]["error"], failed["error"]);
    });
}

/// A contribution's rows are read by its contributor and the Datanet's owner (curator) while pending, by
/// others only once accepted, by nobody anonymously; a copy of the same hash contributed by someone who
/// never uploaded it here gets none of the uploader's content.
#[test]
fn curators_read_the_rows_of_a_contribution_and_strangers_do_not() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let key: PrivateKeySigner = KEYS[2].parse().unwrap();
        let session = sign_in(app, &key).await;
        let text = b"The Quessaly ferry crosses to Tarnhollow at dawn.";
        let up = f.upload(&session, 2, text).await;
        let id = up["id"].as_i64().unwrap();
        let td = f.typed_data(&session, id).await;
        f.relay(&session, id, &sign_typed(&key, &td["typed_data"]), &td)
            .await;
        let done = wait_upload(app, &session, id, "confirmed").await;
        let cid = done["contribution"]["id"].as_str().unwrap().to_owned();
        let url = format!("/api/datanets/2/contributions/{cid}/content");
        let owner_session = sign_in(app, &KEYS[0].parse::<PrivateKeySigner>().unwrap()).await;
        let stranger_session = sign_in(app, &KEYS[5].parse::<PrivateKeySigner>().unwrap()).await;
        for who in [&session, &owner_session] {
            let r = get(app, &url, Some(who)).await;
            r.expect(StatusCode::OK);
            assert_eq!(r.headers["content-type"], "application/jsonl");
            assert!(String::from_utf8_lossy(&r.body).contains("Tarnhollow at dawn"));
        }
        get(app, &url, None).await.problem(401, "unauthorized");
        let p = get(app, &url, Some(&stranger_session))
            .await
            .problem(403, "forbidden");
        assert!(p["detail"].as_str().unwrap().contains("curators"), "{p}");
        // not in another Datanet, and ids that do not parse are refused
        get(
            app,
            &format!("/api/datanets/1/contributions/{cid}/content"),
            Some(&owner_session),
        )
        .await
        .problem(404, "not-found");
        get(
            app,
            "/api/datanets/2/contributions/x/content",
            Some(&owner_session),
        )
        .await
        .problem(400, "bad-request");
        // a stranger contributes the same hash: their contribution carries none of the uploader's rows
        let hash: B256 = up["content_hash"].as_str().unwrap().parse().unwrap();
        send!(
            f.registry(5)
                .contribute(U256::from(2), hash, "ipfs://copied".into())
        );
        let copy = until("the copy indexed", || async {
            let list = get(app, &format!("/api/contents/{hash}/contributions"), None)
                .await
                .json();
            list.as_array()
                .unwrap()
                .iter()
                .find(|c| c["contributor"] == format!("{:#x}", TestChain::address_of(5)))
                .map(|c| c["id"].as_str().unwrap().to_owned())
        })
        .await;
        let p = get(
            app,
            &format!("/api/datanets/2/contributions/{copy}/content"),
            Some(&stranger_session),
        )
        .await
        .problem(404, "not-found");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("did not upload it here"),
            "{p}"
        );
        // accepted, the rows are the Datanet's readers' (an open Datanet: anyone signed in)
        send!(f.registry(0).reviewContributions(
            U256::from(2),
            vec![cid.parse::<U256>().unwrap()],
            true
        ));
        until("the contribution accepted", || async {
            let list = get(
                app,
                "/api/datanets/2/contributions?status=accepted&limit=1000",
                None,
            )
            .await
            .json();
            list.as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == cid)
                .then_some(())
        })
        .await;
        get(app, &url, Some(&stranger_session))
            .await
            .expect(StatusCode::OK);
    });
}

/// Deadlines are the chain's: after a devnet's clock is moved two hours ahead (the demo's "skip the challenge
/// delay"), a fresh payload's deadline still lies ahead of the chain's time and its relay is confirmed (a
/// deadline counted from the wall clock would already be past for the contract).
#[test]
fn a_payload_signed_after_the_chain_clock_moved_ahead_is_relayed() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let node = f.chain.plain();
        node.anvil_increase_time(7200).await.unwrap();
        node.anvil_mine(Some(1), None).await.unwrap();
        let chain_now = node
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap()
            .header
            .timestamp;
        let key: PrivateKeySigner = KEYS[9].parse().unwrap();
        let session = sign_in(app, &key).await;
        let up = f.upload(&session, 2, b"Signed on a clock two hours ahead.").await;
        let id = up["id"].as_i64().unwrap();
        let td = f.typed_data(&session, id).await;
        let deadline: u64 = td["deadline"].as_str().unwrap().parse().unwrap();
        assert!(deadline > chain_now + 60, "deadline {deadline}, chain time {chain_now}");
        let signature = sign_typed(&key, &td["typed_data"]);
        f.relay(&session, id, &signature, &td).await;
        wait_upload(app, &session, id, "confirmed").await;
        // a deadline the chain has passed is refused before anything is sent, by the chain's clock
        let up2 = f.upload(&session, 2, b"Too late on the chain's clock.").await;
        let p = post_json(
            app,
            &format!("/api/uploads/{}/relay", up2["id"]),
            Some(&session),
            json!({ "signature": signature, "nonce": "1", "deadline": (chain_now - 1).to_string() }),
        )
        .await
        .problem(400, "bad-request");
        assert!(p["detail"].as_str().unwrap().contains("has passed"), "{p}");
    });
}

/// The contributor may also send `contribute` themselves: the upload is matched by its hash.
#[test]
fn a_contribution_sent_by_the_contributor_is_matched_to_its_upload() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let contributor: PrivateKeySigner = KEYS[4].parse().unwrap();
        let session = sign_in(app, &contributor).await;
        // the contributor may also send `contribute` themselves: the upload is matched by its hash
        let up2 = f
            .upload(&session, 1, b"Paris is the capital of France.")
            .await;
        let done = f.contribute_yourself(&session, &up2).await;
        assert_eq!(
            done["contribution"]["contributor"],
            format!("{:#x}", contributor.address())
        );
    });
}

/// The owner (#1 = the daemon) accepts contributions, snapshots Datanet 1 and publishes version 1: its root
/// is the OpenZeppelin Merkle root of the accepted leaves; a contributor may not publish, and publishing the
/// same snapshot again is a no-op.
#[test]
fn the_owner_snapshots_and_publishes_a_version() {
    FLOW.run(|f| async move {
        let (app, relayer, registry) = (&f.app, &f.relayer, |i| f.registry(i));
        let contributor: PrivateKeySigner = KEYS[4].parse().unwrap();
        let session = sign_in(app, &contributor).await;
        let mut ids = Vec::new();
        for text in [&b"Snapshot me."[..], b"And me."] {
            let up = f.upload(&session, 1, text).await;
            let done = f.contribute_yourself(&session, &up).await;
            ids.push(
                done["contribution"]["id"]
                    .as_str()
                    .unwrap()
                    .parse::<U256>()
                    .unwrap(),
            );
        }
        // the owner (#1 = the daemon) accepts both contributions (no other test accepts any in Datanet 1);
        // snapshot and publish version 1
        send!(registry(1).reviewContributions(U256::from(1), ids, true));
        let owner_session = sign_in(app, relayer).await;
        // wait for the reviews to be indexed
        wait_accepted(app, 1, 2).await;
        // the contributor may compute a snapshot but not publish one
        post_json(
            app,
            "/api/jobs",
            Some(&session),
            json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1", "publish": true}}),
        )
        .await
        .problem(403, "forbidden");
        let j = post_json(
            app,
            "/api/jobs",
            Some(&owner_session),
            json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1", "publish": true}}),
        )
        .await;
        assert_eq!(j.status, StatusCode::CREATED);
        let j = wait_job(app, &owner_session, j.json()["id"].as_i64().unwrap()).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        let result = &j["result"];
        assert_eq!(result["leaves"].as_array().unwrap().len(), 2, "{result}");
        let leaves: Vec<B256> = result["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                leaf(&(
                    l["contribution_id"]
                        .as_str()
                        .unwrap()
                        .parse::<U256>()
                        .unwrap(),
                    l["contributor"]
                        .as_str()
                        .unwrap()
                        .parse::<alloy::primitives::Address>()
                        .unwrap(),
                    l["content_hash"].as_str().unwrap().parse::<B256>().unwrap(),
                ))
            })
            .collect();
        let root = StandardMerkleTree::new(leaves).unwrap().root();
        assert_eq!(result["root"], root.to_string());
        assert_eq!(result["published"]["version"], "1");
        assert_eq!(
            registry(0)
                .versionRoot(U256::from(1), 1)
                .call()
                .await
                .unwrap(),
            root
        );
        // publishing the same snapshot again is a no-op
        let again = post_json(
            app,
            "/api/jobs",
            Some(&owner_session),
            json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1", "publish": true}}),
        )
        .await;
        wait_versions(app, 1, 1).await;
        let again = wait_job(app, &owner_session, again.json()["id"].as_i64().unwrap()).await;
        assert_eq!(again["result"]["published"]["already"], true, "{again}");
    });
}

/// Datanet 2 is owned by #0: the daemon cannot publish it, and says why (no retries).
#[test]
fn a_datanet_the_daemon_does_not_own_is_not_published() {
    FLOW.run(|f| async move {
        let (app, pool, relayer, registry) = (&f.app, &f.pool, &f.relayer, |i| f.registry(i));
        // Datanet 2 is owned by #0: the daemon cannot publish it, and says why (no retries)
        let ops =
            openledger_daemon::auth::create_api_key(pool, relayer.address(), "ops", true, None)
                .await
                .unwrap();
        let c = send!(registry(4).contribute(U256::from(2), B256::repeat_byte(9), "x".into()));
        assert!(c.status());
        let id = registry(0)
            .contributionByHash(
                U256::from(2),
                TestChain::address_of(4),
                B256::repeat_byte(9),
            )
            .call()
            .await
            .unwrap();
        send!(registry(0).reviewContributions(U256::from(2), vec![id], true));
        // the snapshot refuses a Datanet with nothing accepted before it checks the owner: wait for the review
        wait_accepted(app, 2, 1).await;
        let j = post_json(
            app,
            "/api/jobs",
            Some(&ops.token),
            json!({"kind": "datanet_snapshot", "params": {"datanet_id": "2", "publish": true}}),
        )
        .await;
        let j = wait_job(app, &ops.token, j.json()["id"].as_i64().unwrap()).await;
        assert_eq!(j["state"], "failed");
        assert_eq!(j["attempts"], 1);
        assert!(j["error"].as_str().unwrap().contains("does not own"), "{j}");
    });
}

/// `OwnedWallet` (contracts/test/mocks), compiled by forge into a directory of its own: its creation code.
fn owned_wallet_creation_code() -> Vec<u8> {
    let root = common::repo_root();
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(root.join(".tools/bin/forge"))
        .args(["build", "contracts/test/mocks/OwnedWallet.sol", "--out"])
        .arg(out.path().join("out"))
        .arg("--cache-path")
        .arg(out.path().join("cache"))
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "forge build of OwnedWallet failed");
    let artifact: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("out/OwnedWallet.sol/OwnedWallet.json")).unwrap(),
    )
    .unwrap();
    alloy::primitives::hex::decode(artifact["bytecode"]["object"].as_str().unwrap()).unwrap()
}

/// A smart-contract wallet (no key of its own) signs in through ERC-1271: its owner's key signs the message
/// for the wallet's address and the daemon asks the wallet. Someone else's signature for the wallet, or any
/// signature for a key-less address that is not a contract, is refused.
#[test]
fn a_contract_wallet_signs_in_through_erc1271_and_others_cannot_for_it() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let owner = PrivateKeySigner::random();
        let mut code = owned_wallet_creation_code();
        code.extend_from_slice(&alloy::sol_types::SolValue::abi_encode(&owner.address()));
        let deploy = alloy::rpc::types::TransactionRequest::default().with_deploy_code(code);
        let receipt = f
            .chain
            .actor(7)
            .send_transaction(deploy)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        let wallet = receipt.contract_address.unwrap();
        let attempt = |signer: PrivateKeySigner, address: alloy::primitives::Address| async move {
            let n = get(app, "/api/auth/nonce", None).await.json();
            let msg = siwe_message(
                address,
                n["domain"].as_str().unwrap(),
                n["chain_id"].as_u64().unwrap(),
                n["nonce"].as_str().unwrap(),
            );
            post_json(
                app,
                "/api/auth/siwe",
                None,
                json!({ "message": msg, "signature": personal_sign(&signer, &msg) }),
            )
            .await
        };
        let ok = attempt(owner.clone(), wallet).await;
        ok.expect(StatusCode::CREATED);
        assert_eq!(ok.json()["address"], format!("{wallet:#x}"));
        let token = ok.json()["token"].as_str().unwrap().to_owned();
        let me = get(app, "/api/auth/me", Some(&token)).await.json();
        assert_eq!(me["address"], format!("{wallet:#x}"));
        // a stranger's signature for the wallet: the wallet refuses it
        let p = attempt(PrivateKeySigner::random(), wallet)
            .await
            .problem(401, "unauthorized");
        assert!(p["detail"].as_str().unwrap().contains("ERC-1271"), "{p}");
        // the wallet's owner cannot sign in as some other key-less address
        let nobody = alloy::primitives::Address::repeat_byte(0x5e);
        attempt(owner, nobody).await.problem(401, "unauthorized");
    });
}

/// Ten contributors relay at once through two job workers that send from the same key, each with a chain
/// connection of its own (as two `serve` processes on one database would): the key's nonces are taken one at
/// a time through the database, so every relay lands on its first attempt; none fails with a nonce error
/// that a retry would hide.
#[test]
fn ten_relays_at_once_from_two_senders_of_one_key_each_land_first_time() {
    FLOW.run(|f| async move {
        let app = &f.app;
        let d = &f.chain.deployment;
        let second = Chain::connect(
            &f.chain.url,
            d,
            Some(f.relayer.clone()),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .with_send_lock(f.pool.clone());
        let relays = openledger_daemon::jobs::worker::Registry::default().with(
            openledger_daemon::jobs::relay::RelayJob {
                pool: f.pool.clone(),
                index: openledger_indexer::query::ChainIndex::new(f.pool.clone(), d).unwrap(),
                chain: second,
                confirm_timeout: Duration::from_secs(30),
            },
        );
        let (_stop, _workers) = start_workers(&f.pool, &relays, "second-sender");
        // ten signed payloads, then all ten relays at once
        let mut signed = Vec::new();
        for i in 0..10 {
            let text = format!("Row {i} of ten, relayed together with the other nine.");
            signed.push(signed_upload(app, 2, text.as_bytes()).await);
        }
        futures::future::join_all(signed.iter().map(|u| u.relay(app))).await;
        for u in &signed {
            u.confirmed(app).await;
        }
        let ids: Vec<i64> = signed.iter().map(|u| u.id).collect();
        let attempts: Vec<(i64, i32, Option<String>)> = sqlx::query_as(
            "SELECT r.upload_id, j.attempts, r.error FROM relays r JOIN jobs j ON j.id = r.job_id
             WHERE r.upload_id = ANY($1) ORDER BY r.upload_id",
        )
        .bind(&ids)
        .fetch_all(&f.pool)
        .await
        .unwrap();
        assert_eq!(attempts.len(), 10);
        for (upload, n, error) in &attempts {
            assert_eq!(
                *n, 1,
                "upload {upload}'s relay took {n} attempts (last error: {error:?})"
            );
        }
    });
}

/// The node goes away between a relay's acceptance and its sending, for a stack of its own (database, indexer,
/// workers, API) that reaches the node through a proxy: requests that need the node get a 503 with
/// Retry-After, the relay's attempt fails as the node's failure (to be retried, not final), and once the node
/// is back the relay lands, once.
#[test]
fn with_the_node_away_a_relay_waits_and_lands_once_it_is_back() {
    FLOW.run(|f| async move {
        let d = &f.chain.deployment;
        let pool = common::fresh_database(&f.pool).await;
        let upstream: std::net::SocketAddr =
            f.chain.url.trim_start_matches("http://").parse().unwrap();
        let proxy = common::proxy::TcpProxy::start(upstream).await;
        let chain = Chain::connect(
            &format!("http://{}", proxy.addr),
            d,
            Some(f.relayer.clone()),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .with_send_lock(pool.clone());
        let mut indexer = Indexer::new(f.chain.config(), d.clone(), pool.clone())
            .await
            .unwrap();
        let indexing = tokio::spawn(async move { indexer.run(Mode::Follow).await });
        let relays = openledger_daemon::jobs::worker::Registry::default().with(
            openledger_daemon::jobs::relay::RelayJob {
                pool: pool.clone(),
                index: openledger_indexer::query::ChainIndex::new(pool.clone(), d).unwrap(),
                chain: chain.clone(),
                confirm_timeout: Duration::from_secs(30),
            },
        );
        let state = state_with(
            pool.clone(),
            d.clone(),
            Some(chain),
            relays.clone(),
            ApiConfig::new(d.chain_id, DOMAIN),
        );
        let app = openledger_daemon::api::app(state);
        until("Datanet 2 indexed", || async {
            (get(&app, "/api/datanets/2", None).await.status == StatusCode::OK).then_some(())
        })
        .await;
        let key = PrivateKeySigner::random();
        let session = sign_in(&app, &key).await;
        let up = upload(&app, &session, 2, b"Relayed across an outage of the node.").await;
        let id = up["id"].as_i64().unwrap();
        let td = typed_data(&app, &session, id).await;
        relay(
            &app,
            &session,
            id,
            &sign_typed(&key, &td["typed_data"]),
            &td,
        )
        .await;
        proxy.cut();
        // a request that needs the node: a clear 503, no hang
        let second = upload(&app, &session, 2, b"Another text, signed later.").await;
        let away = get(
            &app,
            &format!("/api/uploads/{}/typed-data", second["id"]),
            Some(&session),
        )
        .await;
        away.problem(503, "unavailable");
        assert_eq!(away.headers["retry-after"], "5");
        // the workers start with the node away: the first attempt fails and the job waits to be retried
        let (stop, workers) = start_workers(&pool, &relays, "node-away");
        let job: i64 = sqlx::query_scalar("SELECT job_id FROM relays WHERE upload_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        let job_row = || async {
            sqlx::query_as::<_, (String, i32)>("SELECT state, attempts FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        until("the first attempt to fail on the node", || async {
            let (state, attempts) = job_row().await;
            (state == "queued" && attempts >= 1).then_some(())
        })
        .await;
        proxy.restore();
        let done = wait_upload(&app, &session, id, "confirmed").await;
        let on_chain: i64 =
            sqlx::query_scalar("SELECT count(*) FROM contributions WHERE content_hash = $1")
                .bind(done["content_hash"].as_str().unwrap())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(on_chain, 1, "contributed once");
        // the indexer may confirm the upload before the job has recorded its end
        let attempts = until("the relay job to succeed", || async {
            let (state, attempts) = job_row().await;
            (state == "succeeded").then_some(attempts)
        })
        .await;
        assert!(attempts >= 2, "{attempts}");
        stop.send(true).unwrap();
        workers.await.unwrap();
        indexing.abort();
        drop(app);
        common::drop_fresh(pool).await;
    });
}

/// The daemon's key connected as `serve` connects it: sends recorded in `pool`, re-sent after `bump_after`.
async fn recorded_sender(chain: &TestChain, pool: &PgPool, bump_after: Duration) -> Chain {
    Chain::connect(
        &chain.url,
        &chain.deployment,
        Some(KEYS[1].parse().unwrap()),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .with_send_lock(pool.clone())
    .with_send_policy(openledger_daemon::chain::SendPolicy {
        bump_after,
        bump_percent: 25,
    })
}

/// `(tx_hash, max_fee, state)` of every attempt at `nonce`, oldest first.
async fn attempts_at(pool: &PgPool, nonce: u64) -> Vec<(String, u128, String)> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tx_hash, max_fee::text, state FROM key_sends WHERE nonce = $1 ORDER BY id",
    )
    .bind(nonce as i64)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(h, f, s)| (h, f.parse().unwrap(), s))
        .collect()
}

/// The next block's base fee jumps to `times` the fee `tx` offers and that block is mined without it.
async fn fee_spike(chain: &TestChain, pool: &PgPool, nonce: u64, times: u128) -> u128 {
    let node = chain.plain();
    let offered = attempts_at(pool, nonce).await.last().unwrap().1;
    let spike = offered * times;
    node.anvil_set_next_block_base_fee_per_gas(spike)
        .await
        .unwrap();
    node.evm_mine(None).await.unwrap();
    spike
}

/// Holds the chain still until an attempt at `nonce` that pays `base_fee` is in the node's pool.
async fn until_an_attempt_pays(chain: &TestChain, pool: &PgPool, nonce: u64, base_fee: u128) {
    let node = chain.plain();
    until("an attempt at the new fees in the node's pool", || async {
        for (hash, fee, _) in attempts_at(pool, nonce).await {
            if fee >= base_fee
                && node
                    .get_transaction_by_hash(hash.parse().unwrap())
                    .await
                    .unwrap()
                    .is_some()
            {
                return Some(());
            }
        }
        None
    })
    .await;
}

/// The operator uses the daemon's key (#1) elsewhere: a self-transfer at `nonce` offering `max_fee`, which
/// replaces whatever the daemon has pending there; mined (the node does not mine on its own).
async fn spend_nonce_elsewhere(chain: &TestChain, nonce: u64, max_fee: u128) {
    let me = TestChain::address_of(1);
    let elsewhere = alloy::rpc::types::TransactionRequest::default()
        .with_to(me)
        .with_nonce(nonce)
        .with_gas_limit(21_000)
        .with_max_fee_per_gas(max_fee)
        .with_max_priority_fee_per_gas(max_fee / 2);
    let operator = chain.actor(1).send_transaction(elsewhere).await.unwrap();
    let node = chain.plain();
    node.evm_mine(None).await.unwrap();
    assert!(
        node.get_transaction_receipt(*operator.tx_hash())
            .await
            .unwrap()
            .is_some()
    );
}

/// A transaction stuck under a fee spike is signed again at its nonce with higher fees until one attempt is
/// mined: the waiter gets that attempt's receipt, the first attempt is never mined, the key's nonce moves by
/// one and the records say which attempt landed. A transaction whose waiter stopped (a timeout, a killed
/// process) is re-sent the same way by the keeper every `serve` runs (`tend_sends`). A nonce the key spent
/// elsewhere (an operator's own transaction) makes the daemon's transaction `Dropped`: it never happened.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_transaction_stuck_under_a_fee_spike_is_re_sent_with_higher_fees_and_lands_once(
    pool: PgPool,
) {
    let chain = TestChain::start().await;
    let d = &chain.deployment;
    let node = chain.plain();
    let me = TestChain::address_of(1);
    let daemon = recorded_sender(&chain, &pool, Duration::from_secs(1)).await;
    let token = OpenToken::new(
        d.address(ContractKind::OpenToken).unwrap(),
        daemon.provider().clone(),
    );
    let spender = TestChain::address_of(7);
    let allowance = || async { token.allowance(me, spender).call().await.unwrap() };
    let start = node.get_transaction_count(me).await.unwrap();
    node.anvil_set_auto_mine(false).await.unwrap();

    // 1. the waiter re-sends its own transaction
    let sent = daemon
        .send("approve", &token.approve(spender, U256::from(1)))
        .await
        .unwrap();
    assert_eq!(sent.nonce, Some(start));
    let spike = fee_spike(&chain, &pool, start, 4).await;
    assert!(
        node.get_transaction_receipt(sent.tx_hash)
            .await
            .unwrap()
            .is_none(),
        "the first attempt does not pay the spiked base fee"
    );
    let waiting = tokio::spawn({
        let daemon = daemon.clone();
        async move {
            daemon
                .confirm("approve", &sent, Duration::from_secs(600))
                .await
        }
    });
    until_an_attempt_pays(&chain, &pool, start, spike).await;
    node.evm_mine(None).await.unwrap();
    let receipt = waiting.await.unwrap().unwrap();
    assert_ne!(
        receipt.transaction_hash, sent.tx_hash,
        "a re-sent attempt was mined"
    );
    let rows = attempts_at(&pool, start).await;
    assert!(rows.len() >= 2, "{rows:?}");
    assert_eq!(rows[0].2, "replaced");
    let mined: Vec<_> = rows.iter().filter(|r| r.2 == "mined").collect();
    assert_eq!(mined.len(), 1, "{rows:?}");
    assert_eq!(mined[0].0, format!("{:#x}", receipt.transaction_hash));
    assert!(
        rows.windows(2).all(|w| w[1].1 > w[0].1),
        "fees go up: {rows:?}"
    );
    assert_eq!(node.get_transaction_count(me).await.unwrap(), start + 1);
    assert_eq!(allowance().await, U256::from(1));

    // 2. nobody waits: the keeper re-sends it
    let second = daemon
        .send("approve", &token.approve(spender, U256::from(2)))
        .await
        .unwrap();
    assert_eq!(second.nonce, Some(start + 1));
    let spike = fee_spike(&chain, &pool, start + 1, 4).await;
    until("the keeper re-sends it", || async {
        daemon.tend_sends().await.unwrap();
        let rows = attempts_at(&pool, start + 1).await;
        (rows.last().unwrap().1 >= spike).then_some(())
    })
    .await;
    until_an_attempt_pays(&chain, &pool, start + 1, spike).await;
    node.evm_mine(None).await.unwrap();
    // (a node may serve the receipt a moment after it counts the nonce)
    until("the keeper finds it mined", || async {
        let t = daemon.tend_sends().await.unwrap();
        (t.mined == 1 && t.waiting == 0).then_some(())
    })
    .await;
    assert_eq!(allowance().await, U256::from(2));
    assert_eq!(node.get_transaction_count(me).await.unwrap(), start + 2);

    // 3. the key's nonce spent elsewhere: the daemon's transaction is dropped, never mined
    let third = daemon
        .send("approve", &token.approve(spender, U256::from(3)))
        .await
        .unwrap();
    let offered = attempts_at(&pool, start + 2).await[0].1;
    spend_nonce_elsewhere(&chain, start + 2, offered * 3).await;
    let e = daemon
        .confirm("approve", &third, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(e, openledger_daemon::chain::SendError::Dropped { nonce, .. } if nonce == start + 2),
        "{e}"
    );
    assert!(
        attempts_at(&pool, start + 2)
            .await
            .iter()
            .all(|r| r.2 == "dropped")
    );
    assert_eq!(
        allowance().await,
        U256::from(2),
        "the dropped approve never ran"
    );
    // the next send takes the next free nonce
    node.anvil_set_auto_mine(true).await.unwrap();
    let next = daemon
        .send_confirmed(
            "approve",
            token.approve(spender, U256::from(4)),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(next.status());
    assert_eq!(allowance().await, U256::from(4));
}

/// The daemon pays FeeRouter for a caller's request against the caller's inference credit, and the receipt
/// does not come in time (the chain stalls): the request gets `Pending` (a 503 at the API), the charge is kept
/// and nothing is paid again. Once mined, the payment is the caller's: the caller's next request uses it
/// (once; a stranger never), no charge is refunded wrongly. A payment whose nonce went to another
/// transaction is never mined: it is failed and the charge refunded, once.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_sponsored_payment_mined_after_its_request_gave_up_is_used_once_and_never_refunded_wrongly(
    pool: PgPool,
) {
    use openledger_daemon::inference::credits;
    use openledger_daemon::inference::payment::{
        self, Funding, Order, PaymentError, Sponsor, take_unused,
    };
    let chain = TestChain::start().await;
    let d = &chain.deployment;
    let node = chain.plain();
    let me = TestChain::address_of(1);
    let open = |i| OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), chain.actor(i));
    send!(open(0).transfer(me, ether(10)));
    // a model to pay for, registered by its developer (#2)
    let registry = Registry::new(d.address(ContractKind::Registry).unwrap(), chain.actor(2));
    send!(registry.registerModel(Registry::ModelSpec {
        baseModel: "tiny-llama".into(),
        baseModelHash: B256::repeat_byte(1),
        datanetIds: vec![],
        datanetVersions: vec![],
        trainingConfigHash: B256::repeat_byte(2),
        metadataURI: String::new(),
    }));
    let model = U256::from(1);
    let mut indexer = Indexer::new(chain.config(), d.clone(), pool.clone())
        .await
        .unwrap();
    tokio::spawn(async move { indexer.run(Mode::Follow).await });
    let index = openledger_indexer::query::ChainIndex::new(pool.clone(), d).unwrap();
    let daemon = recorded_sender(&chain, &pool, Duration::from_secs(600)).await;
    let sponsor = Sponsor::new(Duration::from_secs(2));
    let (caller, stranger) = (TestChain::address_of(5), TestChain::address_of(6));
    let price = U256::from(1_000_000u64);
    credits::grant(&pool, caller, price * U256::from(10), None)
        .await
        .unwrap();
    let order = |inference| Order {
        caller: Some(caller),
        model_id: model,
        amount: price,
        funding: Funding::Credit,
        inference,
    };
    let balance = || async { credits::balance(&pool, caller).await.unwrap() };
    let spent = || async {
        open(0)
            .balanceOf(me)
            .call()
            .await
            .map(|b| ether(10) - b)
            .unwrap()
    };
    // a payment in time: paid, used by its own request (the allowance is approved on the way)
    credits::charge(&pool, caller, price, "req-0")
        .await
        .unwrap();
    let paid = sponsor
        .pay(&daemon, d, &pool, order("req-0"))
        .await
        .unwrap();
    assert_eq!(paid.payer, me);
    assert_eq!(spent().await, price);

    // the chain stalls: the request gives up, the charge stays, nothing is paid twice
    node.anvil_set_auto_mine(false).await.unwrap();
    let given_up = |inference: &'static str| {
        let (pool, sponsor, daemon) = (&pool, &sponsor, &daemon);
        async move {
            credits::charge(pool, caller, price, inference)
                .await
                .unwrap();
            let e = sponsor
                .pay(daemon, d, pool, order(inference))
                .await
                .unwrap_err();
            assert!(matches!(e, PaymentError::Pending(_)), "{e}");
            let rid: String = sqlx::query_scalar(
                "SELECT request_id FROM daemon_payments WHERE charged_inference = $1",
            )
            .bind(inference)
            .fetch_one(pool)
            .await
            .unwrap();
            rid.parse::<B256>().unwrap()
        }
    };
    let rid = given_up("req-1").await;
    assert_eq!(balance().await, price * U256::from(8));
    assert_eq!(
        credits::refund_orphans(&pool, Duration::ZERO)
            .await
            .unwrap(),
        0,
        "a payment that may still be mined keeps its charge"
    );
    assert!(
        take_unused(&pool, me, caller, (model, price), "req-2")
            .await
            .unwrap()
            .is_none(),
        "not mined yet: nothing to use"
    );
    assert!(
        payment::sending_for(&pool, caller, model, price)
            .await
            .unwrap()
            .is_some()
    );
    node.evm_mine(None).await.unwrap();
    wait_payment_indexed(&pool, d, rid).await;
    let r = payment::reconcile(&pool, &index, me).await.unwrap();
    assert_eq!((r.paid, r.failed), (1, 0), "{r:?}");
    // a stranger cannot take it; its caller's next request does, once
    assert!(
        take_unused(&pool, me, stranger, (model, price), "req-x")
            .await
            .unwrap()
            .is_none()
    );
    let used = take_unused(&pool, me, caller, (model, price), "req-2")
        .await
        .unwrap()
        .expect("the late payment is the caller's");
    assert_eq!(used.request_id, rid);
    assert!(
        take_unused(&pool, me, caller, (model, price), "req-3")
            .await
            .unwrap()
            .is_none(),
        "used once"
    );
    assert_eq!(spent().await, price * U256::from(2));
    assert_eq!(balance().await, price * U256::from(8));
    assert_eq!(
        credits::refund_orphans(&pool, Duration::ZERO)
            .await
            .unwrap(),
        0,
        "a mined payment that served a request is not refunded"
    );

    // a payment whose nonce goes to another transaction: failed, the charge refunded once
    let lost = given_up("req-4").await;
    let nonce: i64 = sqlx::query_scalar("SELECT nonce FROM key_sends WHERE reference = $1")
        .bind(format!("{lost:#x}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    spend_nonce_elsewhere(&chain, nonce as u64, 1_000_000_000_000).await;
    assert_eq!(
        payment::reconcile_one(&pool, &index, me, lost)
            .await
            .unwrap(),
        None,
        "open until the key's transactions are followed"
    );
    // dropped once its nonce has stayed used with no receipt of its own for a while
    until("the keeper finds it dropped", || async {
        (daemon.tend_sends().await.unwrap().dropped == 1).then_some(())
    })
    .await;
    let r = payment::reconcile(&pool, &index, me).await.unwrap();
    assert_eq!((r.paid, r.failed), (0, 1), "{r:?}");
    assert_eq!(balance().await, price * U256::from(8), "refunded");
    let again = payment::reconcile(&pool, &index, me).await.unwrap();
    assert_eq!(again, payment::Reconciled::default());
    let refunds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credit_ledger WHERE inference_id = 'req-4' AND reason = 'refund'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(refunds, 1);
    assert_eq!(spent().await, price * U256::from(2), "never paid");

    // a request still waiting for its receipt while the caller's next request finds the payment mined and
    // takes it: the payment serves that next request only, and the waiting one is told to send again
    // (the pay future is held, not polled, between its send and the take)
    let patient = Sponsor::new(Duration::from_secs(600));
    credits::charge(&pool, caller, price, "req-5")
        .await
        .unwrap();
    let pay = patient.pay(&daemon, d, &pool, order("req-5"));
    tokio::pin!(pay);
    let sent = until("the payment for req-5 sent", || async {
        let tx: Option<Option<String>> = sqlx::query_scalar(
            "SELECT tx_hash FROM daemon_payments WHERE charged_inference = 'req-5'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        tx.flatten()
    });
    tokio::select! {
        r = &mut pay => panic!("paid before any block was mined (ok: {})", r.is_ok()),
        _ = sent => {}
    }
    let rid: B256 = sqlx::query_scalar::<_, String>(
        "SELECT request_id FROM daemon_payments WHERE charged_inference = 'req-5'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .parse()
    .unwrap();
    node.evm_mine(None).await.unwrap();
    wait_payment_indexed(&pool, d, rid).await;
    payment::reconcile(&pool, &index, me).await.unwrap();
    let next = take_unused(&pool, me, caller, (model, price), "req-6")
        .await
        .unwrap()
        .expect("mined: the caller's next request may use it");
    assert_eq!(next.request_id, rid);
    let e = pay.await.unwrap_err();
    assert!(
        matches!(&e, PaymentError::Pending(m) if m.contains("next request")),
        "{e}"
    );
    let used_by: Option<String> =
        sqlx::query_scalar("SELECT used_by FROM daemon_payments WHERE request_id = $1")
            .bind(format!("{rid:#x}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        used_by.as_deref(),
        Some("req-6"),
        "one payment, one request"
    );
}
