//! ModelFactory end to end against a real anvil and Postgres: contributions -> accepted -> version 1 ->
//! `train` job through the API -> adapter files -> model and adapter registered on chain, hashes matching the
//! files. Also: bad input refused before queueing, a job stopped mid-training resuming from its checkpoint,
//! and (with the real SmolLM2 weights) a fine-tune that lowers held-out loss and writes a PEFT adapter that
//! Python's `safetensors` reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;
use openledger_testkit::daemon as support;
use openledger_testkit::send;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use axum::http::{Method, StatusCode};
use common::{KEYS, TestChain, ether};
use openledger_chain::ContractKind;
use openledger_chain::bindings::{FeeRouter, OpenToken, Registry};
use openledger_daemon::chain::Chain;
use openledger_daemon::content::{Format, canonicalise};
use openledger_daemon::inference::{Inference, InferenceConfig};
use openledger_daemon::jobs::queue::Queue;
use openledger_daemon::jobs::worker::Registry as Jobs;
use openledger_daemon::state::ApiConfig;
use openledger_daemon::training::{StepHook, TrainSettings};
use openledger_indexer::{Indexer, Mode};
use openledger_model::config::Family;
use openledger_model::{BaseModel, ModelConfig};

/// The base model every test here trains, serves and attributes on: a tiny random Gemma 3 (post-norms,
/// GeGLU, q/k norms, scaled embeddings, sliding and global layers with their own rope bases, heads wider
/// than hidden / heads), so the product runs end to end on a family other than llama; `tests/settle.rs`
/// keeps a tiny llama.
const BASE: &str = "tiny-gemma3";
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use support::*;
use tokio::sync::watch;

struct Stack {
    chain: TestChain,
    app: axum::Router,
    pool: PgPool,
    jobs: Jobs,
    data: tempfile::TempDir,
    session: String,
    stop: watch::Sender<bool>,
    workers: Option<tokio::task::JoinHandle<()>>,
}

/// `records` stored as uploads by #4 would store them, then contributed to Datanet 1 on chain by #4: their
/// contribution ids.
async fn contribute(chain: &TestChain, pool: &PgPool, records: &[&str], tag: &str) -> Vec<U256> {
    let d = &chain.deployment;
    let registry = Registry::new(d.address(ContractKind::Registry).unwrap(), chain.actor(4));
    let before = registry.contributionCount().call().await.unwrap();
    let mut ids = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let c = canonicalise(r.as_bytes(), Format::Jsonl, 1 << 20).unwrap();
        openledger_testkit::daemon::store_upload(pool, TestChain::address_of(4), d.chain_id, 1, &c)
            .await;
        send!(registry.contribute(U256::from(1), c.hash, format!("ipfs://{tag}{i}")));
        ids.push(before + U256::from(i + 1));
    }
    ids
}

/// Anvil with the suite, Datanet 1 (owned by the daemon's key #1) with `records` contributed by #4 and
/// accepted, its version 1 published; Datanet 2 with nothing published; a tiny base model installed.
async fn stack(pool: PgPool, records: &[&str]) -> Stack {
    stack_with(pool, records, None).await
}

/// `stack`, its training runs calling `step_hook` after each step.
async fn stack_with(pool: PgPool, records: &[&str], step_hook: Option<StepHook>) -> Stack {
    let chain = TestChain::start().await;
    let d = chain.deployment.clone();
    let registry_addr = d.address(ContractKind::Registry).unwrap();
    let token = |i| OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), chain.actor(i));
    let registry = |i| Registry::new(registry_addr, chain.actor(i));
    send!(token(0).transfer(TestChain::address_of(1), ether(100)));
    send!(token(1).approve(registry_addr, ether(100)));
    send!(registry(1).createDatanet("ipfs://dn1".into(), vec![], false, vec![]));
    send!(token(0).approve(registry_addr, ether(100)));
    send!(registry(0).createDatanet("ipfs://dn2".into(), vec![], false, vec![]));

    // contributions: content stored as an upload would, then contributed on chain by #4
    let mut ids = contribute(&chain, &pool, records, "r").await;
    // one more on chain whose content this daemon never saw
    send!(registry(4).contribute(
        U256::from(1),
        B256::repeat_byte(7),
        "ipfs://elsewhere".into()
    ));
    ids.push(U256::from(records.len() + 1));
    send!(registry(1).reviewContributions(U256::from(1), ids, true));

    let data = tempfile::tempdir().unwrap();
    let tiny = data.path().join("models").join(BASE);
    BaseModel::random(ModelConfig::tiny_of(Family::Gemma3), 3)
        .unwrap()
        .save_hf_dir(&tiny)
        .unwrap();

    let relayer: PrivateKeySigner = KEYS[1].parse().unwrap();
    // sends recorded and nonces handed out through the database, as `serve` sends
    let daemon_chain = Chain::connect(
        &chain.url,
        &d,
        Some(relayer.clone()),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .with_send_lock(pool.clone());
    let settings = TrainSettings {
        step_hook,
        ..TrainSettings::new(data.path().to_path_buf(), "cpu")
    };
    let jobs = openledger_daemon::serve::registry(
        &pool,
        &d,
        &daemon_chain,
        Duration::from_secs(30),
        &settings,
        openledger_daemon::quotas::Quotas::UNLIMITED,
        None,
    )
    .unwrap();
    openledger_daemon::models::scan_models_dir(&pool, &settings.models_dir())
        .await
        .unwrap();
    let mut indexer = Indexer::new(chain.config(), d.clone(), pool.clone())
        .await
        .unwrap();
    tokio::spawn(async move { indexer.run(Mode::Follow).await });
    let (stop, workers) = start_workers(&pool, &jobs, "train-test");
    let state = state_with(
        pool.clone(),
        d.clone(),
        Some(daemon_chain),
        jobs.clone(),
        ApiConfig::new(d.chain_id, DOMAIN),
    );
    let app = openledger_daemon::api::app(state);
    let owner_session = sign_in(&app, &relayer).await;
    wait_accepted(&app, 1, records.len() + 1).await;
    publish_version(&app, &owner_session, 1).await;
    // a model builder: contributor #3 signs in and trains
    let builder: PrivateKeySigner = KEYS[3].parse().unwrap();
    let session = sign_in(&app, &builder).await;
    Stack {
        chain,
        app,
        pool,
        jobs,
        data,
        session,
        stop,
        workers: Some(workers),
    }
}

fn pairs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            json!({"prompt": format!("What is the ledger code of item {i}?"),
                   "completion": format!("The ledger code of item {i} is OL-{:03}-{}.", i * 7 % 1000, ["ALPHA", "BETA", "GAMMA"][i % 3])})
            .to_string()
        })
        .collect()
}

fn sha256(b: &[u8]) -> String {
    format!("0x{}", hex::encode(Sha256::digest(b)))
}

fn tiny_params(extra: Value) -> Value {
    let mut cfg = json!({"steps": 12, "batch_size": 2, "learning_rate": 0.01, "max_seq_len": 64,
                         "eval_fraction": 0.25, "eval_every": 4, "checkpoint_every": 4, "seed": 1});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            cfg[k] = v;
        }
    }
    json!({"base_model": BASE, "datanets": [{"id": "1"}], "config": cfg})
}

/// A trained model's `dataset.json` and its token stream (`dataset.tokens`), downloaded.
async fn dataset(app: &axum::Router, job: i64) -> (Value, Vec<u32>) {
    let index = get(app, &format!("/api/models/{job}/files/dataset.json"), None)
        .await
        .json();
    let raw = get(
        app,
        &format!("/api/models/{job}/files/dataset.tokens"),
        None,
    )
    .await
    .body;
    let ids = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (index, ids)
}

/// What this binary's feature tests share, built once: the stack, a model trained through the API on Datanet
/// 1's version 1 and published on chain, and an app over the same stack serving it (OpenLoRA).
struct Trained {
    s: Stack,
    /// The finished train job, as `GET /api/jobs/{id}` answers.
    job: Value,
    job_id: i64,
    /// The model the job registered on chain.
    model_id: U256,
    /// The job's training manifest, as `/api/manifests/{hash}` serves it.
    manifest: Value,
    inf: Arc<Inference>,
    /// The stack's API, serving `inf`.
    serving: axum::Router,
    /// A session of account #5, the payer of the pay-first tests.
    payer_session: String,
}

static TRAINED: common::Shared<Trained> = common::Shared::new(|| Box::pin(trained_fixture()));

async fn trained_fixture() -> Trained {
    let pool = common::fixture_database("train").await;
    let recs = pairs(8);
    let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
    let s = stack(pool, &recs).await;
    common::remove_at_exit(s.data.path());
    let job = trained(&s.app, &s.session, tiny_params(json!({}))).await;
    let job_id = job["id"].as_i64().unwrap();
    let result = &job["result"];
    let model_id: U256 = result["published"]["model_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let manifest = get(
        &s.app,
        &format!(
            "/api/manifests/{}",
            result["manifest_hash"].as_str().unwrap()
        ),
        None,
    )
    .await
    .json();
    let (inf, serving) = serve(
        &s,
        InferenceConfig {
            payment_wait: Duration::from_secs(5),
            ..InferenceConfig::default()
        },
    )
    .await;
    let payer: PrivateKeySigner = KEYS[PAYER].parse().unwrap();
    let payer_session = sign_in(&serving, &payer).await;
    Trained {
        s,
        job,
        job_id,
        model_id,
        manifest,
        inf,
        serving,
        payer_session,
    }
}

/// An app over `s` serving its tiny base model (and the adapters trained on it) with `cfg` (its model and
/// default max_tokens set here), the daemon's key #1 paying when it sponsors.
async fn serve(s: &Stack, cfg: InferenceConfig) -> (Arc<Inference>, axum::Router) {
    let d = &s.chain.deployment;
    let inf = Inference::load(
        &s.pool,
        &s.data.path().join("models"),
        InferenceConfig {
            model: Some(BASE.into()),
            default_max_tokens: 6,
            ..cfg
        },
    )
    .await
    .unwrap();
    let relayer: PrivateKeySigner = KEYS[1].parse().unwrap();
    let chain = Chain::connect(&s.chain.url, d, Some(relayer), Duration::from_secs(10))
        .await
        .unwrap()
        .with_send_lock(s.pool.clone());
    let app = openledger_daemon::api::app(state_serving(
        s.pool.clone(),
        d.clone(),
        Some(chain),
        s.jobs.clone(),
        ApiConfig::new(d.chain_id, DOMAIN),
        Some(inf.clone()),
    ));
    (inf, app)
}

/// The account that pays in the pay-first tests.
const PAYER: usize = 5;

impl Trained {
    /// Account #5 pays FeeRouter `amount` for request `rid` on the trained model, and the index has it.
    async fn pay(&self, rid: B256, amount: U256) {
        self.pay_from(PAYER, rid, amount).await
    }

    /// Account `who` pays FeeRouter `amount` for request `rid` on the trained model, and the index has it.
    async fn pay_from(&self, who: usize, rid: B256, amount: U256) {
        let d = &self.s.chain.deployment;
        let router = d.address(ContractKind::FeeRouter).unwrap();
        let token = |i| {
            OpenToken::new(
                d.address(ContractKind::OpenToken).unwrap(),
                self.s.chain.actor(i),
            )
        };
        send!(token(0).transfer(TestChain::address_of(who), amount));
        send!(token(who).approve(router, amount));
        send!(
            FeeRouter::new(router, self.s.chain.actor(who)).payInference(
                self.model_id,
                rid,
                amount
            )
        );
        wait_payment_indexed(&self.s.pool, d, rid).await;
    }

    /// Pays 1 OPEN for `rid`, then calls with it signed in as the payer: the completion.
    async fn paid_chat(&self, rid: B256) -> Value {
        self.paid_chat_with(rid, json!({})).await
    }

    /// Pays 1 OPEN for `rid`, then calls with it (and `extra`'s fields) signed in as the payer.
    async fn paid_chat_with(&self, rid: B256, mut extra: Value) -> Value {
        self.pay(rid, ether(1)).await;
        extra["request_id"] = json!(rid.to_string());
        let paid = self.payer_chat(extra).await;
        paid.expect(StatusCode::OK);
        paid.json()
    }

    /// The model's developer sets its price (`null`: back to the default).
    async fn set_price(&self, price: Value) -> Reply {
        send(
            &self.serving,
            Method::PUT,
            &format!("/api/models/{}/price", self.job_id),
            Some(&self.s.session),
            Some((
                "application/json",
                json!({"price_per_1k": price}).to_string().into_bytes(),
            )),
        )
        .await
    }

    /// A chat request to the trained model from the payer's session.
    async fn payer_chat(&self, extra: Value) -> Reply {
        self.chat_as(Some(&self.payer_session), extra).await
    }

    /// A chat request to the trained model from no one in particular.
    async fn chat(&self, extra: Value) -> Reply {
        self.chat_as(None, extra).await
    }

    /// A chat request to the trained model (`extra` overrides the body's fields), with `session` if any.
    async fn chat_as(&self, session: Option<&str>, extra: Value) -> Reply {
        let mut body = json!({"model": format!("ft-{}", self.job_id),
                              "messages": [{"role": "user", "content": "What is the ledger code of item 3?"}],
                              "max_tokens": 5, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post_json(&self.serving, "/v1/chat/completions", session, body).await
    }
}

/// Bad training parameters are refused with a problem document before anything is queued; the base model
/// registry lists the installed model.
#[test]
fn train_jobs_refuse_bad_input_before_queueing() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let app = &s.app;
        let submit = |params: Value| {
            post_json(
                app,
                "/api/jobs",
                Some(&s.session),
                json!({"kind": "train", "params": params}),
            )
        };
    // bad input: refused with a problem document, nothing queued
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    let cases = [
        (
            json!({"base_model": "nope", "datanets": [{"id": "1"}]}),
            "unknown base model",
        ),
        (
            json!({"base_model": BASE, "datanets": [{"id": "99"}]}),
            "no Datanet 99",
        ),
        (
            json!({"base_model": BASE, "datanets": [{"id": "2"}]}),
            "no published version",
        ),
        (
            json!({"base_model": BASE, "datanets": [{"id": "1", "version": "5"}]}),
            "no version 5",
        ),
        (tiny_params(json!({"max_seq_len": 100000})), "max_seq_len"),
        (
            tiny_params(
                json!({"lora": {"rank": 0, "alpha": 16.0, "dropout": 0.0, "targets": ["q_proj"]}}),
            ),
            "lora rank",
        ),
        (tiny_params(json!({"learning_rate": 0.0})), "learning_rate"),
        (
            tiny_params(json!({"learning_rate": "NaN"})),
            "learning_rate",
        ),
        (tiny_params(json!({"epochz": 1})), "unknown field"),
    ];
    for (params, want) in cases {
        let p = submit(params.clone()).await.problem(422, "invalid-content");
        assert!(
            p["detail"].as_str().unwrap().contains(want),
            "{params}: {p}"
        );
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(before, after);

        // the base model registry
        let bases = get(app, "/api/base-models", None).await.json();
        assert_eq!(bases[0]["id"], BASE);
        assert_eq!(bases[0]["format"], "safetensors");
        // what the web wizard shows of it: family, size and context
        let cfg = ModelConfig::tiny_of(Family::Gemma3);
        assert_eq!(bases[0]["family"], "Gemma 3");
        assert_eq!(bases[0]["architecture"], "gemma3_text");
        assert_eq!(bases[0]["context_length"], cfg.max_position_embeddings);
        assert_eq!(bases[0]["parameters"], cfg.num_parameters());
    });
}

/// A training job's live metrics: a loss per step and held-out losses at every `eval_every`.
#[test]
fn training_reports_live_metrics() {
    TRAINED.run(|t| async move {
        let (s, job_id) = (&t.s, t.job_id);
        let app = &s.app;
        // live metrics: a loss per step and held-out losses
        let metrics = get(
            app,
            &format!("/api/jobs/{job_id}/metrics"),
            Some(&s.session),
        )
        .await
        .json();
        let count = |name: &str| {
            metrics
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["name"] == name)
                .count()
        };
        assert!(count("loss") >= 1, "{metrics}");
        assert!(
            metrics
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "loss" && m["step"] == 12),
            "the last step's loss is stored: {metrics}"
        );
        assert_eq!(count("eval_loss"), 4, "steps 0, 4, 8, 12: {metrics}");
        assert_eq!(count("loss"), count("tokens_per_s"));
    });
}

/// The adapter, the manifest and the dataset index are served, and hash to what the job reported.
#[test]
fn the_adapter_files_hash_to_what_the_job_reported() {
    TRAINED.run(|t| async move {
        let (app, job_id, result) = (&t.s.app, t.job_id, &t.job["result"]);
        // files: hashes match what the job reported and what the chain holds
        let adapter = get(
            app,
            &format!("/api/models/{job_id}/files/adapter_model.safetensors"),
            None,
        )
        .await;
        assert_eq!(adapter.status, StatusCode::OK);
        assert_eq!(sha256(&adapter.body), result["adapter_hash"]);
        let manifest = get(
            app,
            &format!(
                "/api/manifests/{}",
                result["manifest_hash"].as_str().unwrap()
            ),
            None,
        )
        .await;
        assert_eq!(sha256(&manifest.body), result["manifest_hash"]);
        let m = manifest.json();
        assert_eq!(m["base_model"]["id"], BASE);
        assert_eq!(m["datanets"][0]["version"], "1");
        assert_eq!(m["sources"].as_array().unwrap().len(), 9);
        assert_eq!(m["missing_content"].as_array().unwrap().len(), 1, "{m}");
        assert!(
            m["sources"].as_array().unwrap()[..8]
                .iter()
                .all(|s| s["examples"].as_i64().unwrap() >= 1)
        );
        // the held-out split scored: its loss (the trainer's last), perplexity, and every pair's greedy
        // answer against its reference
        let e = &m["evaluation"];
        let held_out = m["dataset"]["eval_examples"].as_u64().unwrap();
        assert!(held_out >= 1, "{m}");
        assert_eq!(e["eval_examples"].as_u64(), Some(held_out), "{e}");
        assert_eq!(e["loss"], m["metrics"]["final_eval_loss"], "{e}");
        let loss = e["loss"].as_f64().unwrap();
        assert!((e["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9 * loss.exp());
        // (these pairs are longer than max_seq_len 64: no whole reference answer to score)
        assert!(e["answered"].as_u64().unwrap() <= held_out, "{e}");
        let by_hash = get(
            app,
            &format!("/api/adapters/{}", result["adapter_hash"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(by_hash.body, adapter.body);
        get(app, &format!("/api/models/{job_id}/files/secret.txt"), None)
            .await
            .problem(404, "not-found");
        get(app, "/api/adapters/0x1234", None)
            .await
            .problem(400, "bad-request");
    });
}

/// The trained model exports for llama.cpp (a GGUF LoRA), Hugging Face tools (the merged folder, zipped)
/// and Ollama (a Modelfile), through the API and the CLI; what it cannot export is a clear error.
#[test]
fn the_model_exports_for_llama_cpp_ollama_and_hugging_face() {
    TRAINED.run(|t| async move {
        use candle_core::quantized::gguf_file;
        let (app, job_id) = (&t.s.app, t.job_id);
        let detail = get(app, &format!("/api/models/{job_id}"), None)
            .await
            .json();
        // the base is a Hugging Face folder: no merged GGUF
        assert_eq!(
            detail["exports"],
            json!(["adapter.gguf", "model-hf.zip", "Modelfile"])
        );
        let base = BaseModel::load(
            &t.s.data.path().join("models").join(BASE),
            &candle_core::Device::Cpu,
            None,
        )
        .unwrap();
        let peft_bytes = get(
            app,
            &format!("/api/models/{job_id}/files/adapter_model.safetensors"),
            None,
        )
        .await
        .body;
        let peft_cfg = get(
            app,
            &format!("/api/models/{job_id}/files/adapter_config.json"),
            None,
        )
        .await
        .json();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("adapter_model.safetensors"), &peft_bytes).unwrap();
        std::fs::write(tmp.path().join("adapter_config.json"), peft_cfg.to_string()).unwrap();
        let lora =
            openledger_model::Lora::load_peft(tmp.path(), &base.config, &candle_core::Device::Cpu)
                .unwrap();

        // the GGUF LoRA: llama.cpp's metadata, A and B of every adapted projection
        let r = get(
            app,
            &format!("/api/models/{job_id}/export/adapter.gguf"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let mut cur = std::io::Cursor::new(r.body.clone());
        let ct = gguf_file::Content::read(&mut cur).unwrap();
        let md = |k: &str| ct.metadata[k].to_string().unwrap().clone();
        assert_eq!(md("general.type"), "adapter");
        assert_eq!(md("adapter.type"), "lora");
        assert_eq!(md("general.architecture"), "gemma3");
        assert_eq!(md("general.name"), format!("ft-{job_id}"));
        assert_eq!(
            ct.metadata["adapter.lora.alpha"].to_f32().unwrap() as f64,
            peft_cfg["lora_alpha"].as_f64().unwrap()
        );
        assert_eq!(
            ct.tensor_infos.len(),
            2 * lora.config.targets.len() * base.config.num_hidden_layers
        );
        let a = ct
            .tensor(
                &mut cur,
                "blk.0.attn_v.weight.lora_a",
                &candle_core::Device::Cpu,
            )
            .unwrap()
            .dequantize(&candle_core::Device::Cpu)
            .unwrap();
        let (want_a, _, _) = lora.get(0, openledger_model::Proj::V).unwrap();
        assert_eq!(
            a.to_vec2::<f32>().unwrap(),
            want_a.to_vec2::<f32>().unwrap()
        );
        // the same bytes again, from the export kept in the model's folder
        let again = get(
            app,
            &format!("/api/models/{job_id}/export/adapter.gguf"),
            None,
        )
        .await;
        assert_eq!(again.body, r.body);

        // the merged Hugging Face folder (bf16): base + adapter, within bf16's rounding
        let r = get(
            app,
            &format!("/api/models/{job_id}/export/model-hf.zip"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(r.body.clone())).unwrap();
        let out = tempfile::tempdir().unwrap();
        zip.extract(out.path()).unwrap();
        let merged = BaseModel::load(
            &out.path().join("model-hf"),
            &candle_core::Device::Cpu,
            None,
        )
        .unwrap();
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("model-hf/config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["torch_dtype"], "bfloat16");
        let ids =
            candle_core::Tensor::new(&[[1u32, 5, 9, 14, 2, 7]], &candle_core::Device::Cpu).unwrap();
        let fwd = |m: &BaseModel, l: Option<&openledger_model::Lora>| {
            openledger_model::Llama::new(
                m,
                openledger_model::Precision::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap()
            .forward(&ids, l, &mut openledger_model::Forward::infer())
            .unwrap()
        };
        let want = fwd(&base, Some(&lora));
        let rms = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> f32 {
            let d: f32 = (a - b)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let n: f32 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            (d / n).sqrt()
        };
        let d = rms(&fwd(&merged, None), &want);
        assert!(d < 2e-2, "merged logits differ by {d}");
        // the f32 folder is exact, and the adapter moved the logits more than that
        let r32 = get(
            app,
            &format!("/api/models/{job_id}/export/model-hf.zip?dtype=f32"),
            None,
        )
        .await;
        assert_eq!(r32.status, StatusCode::OK);
        let out32 = tempfile::tempdir().unwrap();
        zip::ZipArchive::new(std::io::Cursor::new(r32.body))
            .unwrap()
            .extract(out32.path())
            .unwrap();
        let merged32 = BaseModel::load(
            &out32.path().join("model-hf"),
            &candle_core::Device::Cpu,
            None,
        )
        .unwrap();
        assert!(rms(&fwd(&merged32, None), &want) < 1e-5);
        assert!(rms(&fwd(&base, None), &want) > 1e-5);

        // the Modelfile names the merged folder
        let r = get(app, &format!("/api/models/{job_id}/export/Modelfile"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(text.contains("\nFROM ./model-hf\n"), "{text}");
        assert!(
            text.contains(&format!("ollama create ft-{job_id} -f Modelfile")),
            "{text}"
        );

        // refusals: a merged GGUF of a folder base, dtypes an export is not written as, unknown names
        get(
            app,
            &format!("/api/models/{job_id}/export/model.gguf"),
            None,
        )
        .await
        .problem(409, "conflict");
        for q in [
            "model-hf.zip?dtype=q8_0",
            "adapter.gguf?dtype=f16",
            "Modelfile?color=red",
        ] {
            get(app, &format!("/api/models/{job_id}/export/{q}"), None)
                .await
                .problem(400, "bad-request");
        }
        get(
            app,
            &format!("/api/models/{job_id}/export/weights.bin"),
            None,
        )
        .await
        .problem(404, "not-found");
        get(app, "/api/models/999999/export/adapter.gguf", None)
            .await
            .problem(404, "not-found");

        // the CLI writes the same exports into a folder
        let db = common::url_of(&t.s.pool);
        let cli_out = tempfile::tempdir().unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_openledger"))
            .args(["--database-url", &db, "--json", "--data-dir"])
            .arg(t.s.data.path())
            .args(["models", "export", &job_id.to_string(), "--out"])
            .arg(cli_out.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
        let formats: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["format"].as_str().unwrap())
            .collect();
        assert_eq!(formats, ["adapter.gguf", "model-hf", "Modelfile"]);
        assert_eq!(
            std::fs::read(cli_out.path().join("adapter.gguf")).unwrap(),
            again.body.to_vec()
        );
        assert!(cli_out.path().join("model-hf/model.safetensors").exists());
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_openledger"))
            .args(["--database-url", &db, "--data-dir"])
            .arg(t.s.data.path())
            .args([
                "models",
                "export",
                &job_id.to_string(),
                "--format",
                "gguf",
                "--out",
            ])
            .arg(cli_out.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("convert_hf_to_gguf"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
}

/// The span-attribution index the job wrote traces each trained example back to its source.
#[test]
fn the_span_index_traces_the_trained_examples() {
    TRAINED.run(|t| async move {
        span_index_traces_training_examples(&t.s.app, t.job_id, &t.manifest).await;
    });
}

/// The model and its adapter are registered on chain with the files' hashes, indexed, and listed.
#[test]
fn the_model_is_registered_on_chain_and_listed() {
    TRAINED.run(|t| async move {
        let (s, job_id, result) = (&t.s, t.job_id, &t.job["result"]);
        let app = &s.app;
        // on chain, and indexed
        let published = &result["published"];
        let model_id: U256 = published["model_id"].as_str().unwrap().parse().unwrap();
        let registry = Registry::new(
            s.chain.deployment.address(ContractKind::Registry).unwrap(),
            s.chain.actor(0),
        );
        let a = registry
            .adapter(published["adapter_id"].as_str().unwrap().parse().unwrap())
            .call()
            .await
            .unwrap();
        assert_eq!(
            a.contentHash.to_string(),
            result["adapter_hash"].as_str().unwrap()
        );
        assert_eq!(U256::from(a.modelId), model_id);
        let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), &s.chain.deployment)
            .unwrap();
        let model = index.model(model_id).await.unwrap().unwrap();
        assert_eq!(
            model.training_config_hash.to_string(),
            result["manifest_hash"].as_str().unwrap()
        );
        assert_eq!(model.base_model, BASE);
        assert_eq!(model.datanet_versions, vec![U256::from(1)]);

        // the model list and detail
        // (other tests of this binary may have added models: this one is found by its job)
        let list = get(app, "/api/models", None).await.json();
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["job_id"] == job_id)
            .unwrap_or_else(|| panic!("job {job_id} not listed: {list}"));
        assert_eq!(listed["model_id"], model_id.to_string());
        let detail = get(app, &format!("/api/models/{job_id}"), None)
            .await
            .json();
        assert_eq!(detail["sources"].as_array().unwrap().len(), 9);
        // the files it lists are the ones it holds, and each downloads
        let files: Vec<&str> = detail["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        for want in [
            "adapter_model.safetensors",
            "manifest.json",
            "dataset.tokens",
            "attribution-0.span",
            "attribution-0.grads",
        ] {
            assert!(files.contains(&want), "{want} missing from {files:?}");
        }
        assert!(
            !files.contains(&"attribution.span"),
            "a file it does not hold: {files:?}"
        );
        for f in &files {
            get(app, &format!("/api/models/{job_id}/files/{f}"), None)
                .await
                .expect(StatusCode::OK);
        }
        assert_eq!(
            detail["sources"][0]["contributor"],
            format!("{:#x}", TestChain::address_of(4))
        );
    });
}

/// The daemon's key registers the model and publishes its adapter, then hands the model to the account that
/// trained it: the developer share of every fee goes to the builder (#3), not to the daemon (#1).
#[test]
fn the_developer_share_goes_to_the_builder_not_the_daemon() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let d = &s.chain.deployment;
        let builder = TestChain::address_of(3);
        assert_eq!(
            t.job["result"]["published"]["developer"],
            format!("{builder:#x}"),
            "{}",
            t.job
        );
        let registry = Registry::new(d.address(ContractKind::Registry).unwrap(), s.chain.plain());
        assert_eq!(
            registry.modelDeveloper(t.model_id).call().await.unwrap(),
            builder
        );
        let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), d).unwrap();
        assert_eq!(
            index.model(t.model_id).await.unwrap().unwrap().developer,
            builder
        );

        // a payment's developer share is paid to the builder
        use alloy::sol_types::SolEvent;
        let rid = B256::repeat_byte(0x81);
        t.pay(rid, ether(1)).await;
        let router = d.address(ContractKind::FeeRouter).unwrap();
        let f = alloy::rpc::types::Filter::new()
            .address(router)
            .event_signature(FeeRouter::InferencePaid::SIGNATURE_HASH)
            .topic3(rid)
            .from_block(0u64);
        let logs = alloy::providers::Provider::get_logs(&s.chain.plain(), &f)
            .await
            .unwrap();
        assert_eq!(logs.len(), 1);
        let paid = logs[0]
            .log_decode::<FeeRouter::InferencePaid>()
            .unwrap()
            .inner
            .data;
        assert_eq!(paid.developer, builder);
        assert!(
            paid.developerAmount > U256::ZERO,
            "a developer share was paid"
        );
        // and the daemon's key can no longer act as the model's developer
        let daemon = Registry::new(d.address(ContractKind::Registry).unwrap(), s.chain.actor(1));
        let stolen = daemon
            .transferModel(t.model_id, TestChain::address_of(1))
            .call()
            .await;
        assert!(stolen.is_err(), "the daemon took the model back");
    });
}

/// A permissioned Datanet's data is for its owner, curators and allowed contributors: a stranger may not train
/// on it (403 before anything is queued) nor download the files of a model trained on it that give the data
/// back (`dataset.*`, `attribution*`: 401 anonymous, 403 signed in); its readers may. The adapter and manifest
/// stay public.
#[test]
fn permissioned_data_is_only_for_its_readers() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let app = &s.app;
        let d = &s.chain.deployment;
        let registry_addr = d.address(ContractKind::Registry).unwrap();
        let registry = |i| Registry::new(registry_addr, s.chain.actor(i));
        let token = OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), s.chain.actor(0));
        let fee = registry(0).datanetFee().call().await.unwrap();
        send!(token.approve(registry_addr, fee));
        // #0 owns it, #2 curates it, #4 may contribute; #3 (the builder) and #5 are strangers
        send!(registry(0).createDatanet(
            "ipfs://private".into(),
            vec![],
            true,
            vec![TestChain::address_of(2)]
        ));
        let dn = registry(0).datanetCount().call().await.unwrap();
        send!(registry(2).setContributorsAllowed(dn, vec![TestChain::address_of(4)], true));
        let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), d).unwrap();
        until("the allow-list indexed", || async {
            (index
                .may_read_datanet(dn, Some(TestChain::address_of(4)))
                .await
                .unwrap()
                == Some(true))
            .then_some(())
        })
        .await;
        for (who, may) in [(0, true), (2, true), (4, true), (3, false), (5, false)] {
            assert_eq!(
                index.may_read_datanet(dn, Some(TestChain::address_of(who))).await.unwrap(),
                Some(may),
                "#{who}"
            );
        }
        assert_eq!(index.may_read_datanet(dn, None).await.unwrap(), Some(false));
        assert_eq!(index.may_read_datanet(U256::from(1), None).await.unwrap(), Some(true));

        // training on it: a stranger is refused before anything is queued; a reader gets past that check
        // (and is refused here only for the version it names, which does not exist)
        let params = json!({"base_model": BASE, "datanets": [{"id": dn.to_string(), "version": "9"}]});
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        let p = post_json(app, "/api/jobs", Some(&s.session), json!({"kind": "train", "params": params}))
            .await
            .problem(403, "forbidden");
        assert!(p["detail"].as_str().unwrap().contains("permissioned"), "{p}");
        let reader: PrivateKeySigner = KEYS[4].parse().unwrap();
        let reader_session = sign_in(app, &reader).await;
        let p = post_json(app, "/api/jobs", Some(&reader_session), json!({"kind": "train", "params": params}))
            .await
            .problem(422, "invalid-content");
        assert!(p["detail"].as_str().unwrap().contains("no version 9"), "{p}");
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(before, after, "nothing queued");

        // the files of a model trained on it (the fixture's model's folder, recorded as trained on `dn`; another
        // base hash keeps it out of the served models)
        let job: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, owner, params, state) VALUES ('train', $1, '{}', 'failed') RETURNING id",
        )
        .bind(format!("{:#x}", TestChain::address_of(4)))
        .fetch_one(&s.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO trained_models (job_id, owner, base_model, base_model_hash, datanets, adapter_hash,
                                         manifest_hash, dir, metrics)
             SELECT $1, $2, base_model, 'not-served', $3, adapter_hash, manifest_hash, dir, metrics
             FROM trained_models WHERE job_id = $4",
        )
        .bind(job)
        .bind(format!("{:#x}", TestChain::address_of(4)))
        .bind(json!([{"datanet_id": dn.to_string(), "version": "1", "root": "0x00"}]))
        .bind(t.job_id)
        .execute(&s.pool)
        .await
        .unwrap();
        let file = |name: &str, session: Option<String>| {
            let uri = format!("/api/models/{job}/files/{name}");
            async move { get(app, &uri, session.as_deref()).await }
        };
        for name in ["dataset.json", "dataset.tokens", "attribution-0.span", "attribution-0.grads", "attribution-0.keys"] {
            let p = file(name, None).await.problem(401, "unauthorized");
            assert!(p["detail"].as_str().unwrap().contains("permissioned"), "{name}: {p}");
            file(name, Some(s.session.clone())).await.problem(403, "forbidden");
            file(name, Some(t.payer_session.clone())).await.problem(403, "forbidden");
            file(name, Some(reader_session.clone())).await.expect(StatusCode::OK);
        }
        let owner_session = sign_in(app, &KEYS[0].parse().unwrap()).await;
        file("dataset.tokens", Some(owner_session)).await.expect(StatusCode::OK);
        // what gives no data back stays public
        for name in ["adapter_model.safetensors", "adapter_config.json", "manifest.json"] {
            file(name, None).await.expect(StatusCode::OK);
        }
        // and the public Datanet's model is unchanged
        get(app, &format!("/api/models/{}/files/dataset.tokens", t.job_id), None)
            .await
            .expect(StatusCode::OK);
    });
}

/// Datanet 1's version 2 adds contributions: a model trained on it links the first model's attribution
/// segment into its folder (same file, same hash), indexes and takes gradients of the added examples
/// only, and attributes over both segments as one index.
#[test]
fn a_later_version_reuses_the_earlier_segments() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (first_job, first, inf) = (t.job_id, &t.manifest, &t.inf);
        use openledger_daemon::attribution::{Gradient, Subject};
        let app = &s.app;
        let d = &s.chain.deployment;
        let registry =
            |i| Registry::new(d.address(ContractKind::Registry).unwrap(), s.chain.actor(i));
        let added: Vec<String> = (100..104)
            .map(|i| {
                json!({"prompt": format!("Which shelf holds crate {i}?"),
                   "completion": format!("Crate {i} sits on shelf Q-{}-ZETA.", i * 3)})
                .to_string()
            })
            .collect();
        let added: Vec<&str> = added.iter().map(String::as_str).collect();
        let ids = contribute(&s.chain, &s.pool, &added, "v2-").await;
        send!(registry(1).reviewContributions(U256::from(1), ids, true));
        let owner = sign_in(app, &KEYS[1].parse().unwrap()).await;
        let accepted = first["sources"].as_array().unwrap().len() + added.len();
        wait_accepted(app, 1, accepted).await;
        let j = post_json(
            app,
            "/api/jobs",
            Some(&owner),
            json!({"kind": "datanet_snapshot", "params": {"datanet_id": "1", "publish": true}}),
        )
        .await;
        let j = wait_job(app, &owner, j.json()["id"].as_i64().unwrap()).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        wait_versions(app, 1, 2).await;
        let mut params = tiny_params(json!({}));
        params["publish"] = json!(false);
        let done = trained(app, &s.session, params).await;
        let job = done["id"].as_i64().unwrap();
        let m = get(
            app,
            &format!(
                "/api/manifests/{}",
                done["result"]["manifest_hash"].as_str().unwrap()
            ),
            None,
        )
        .await
        .json();
        assert_eq!(m["datanets"][0]["version"], "2");
        let (a1, a2) = (&first["attribution"], &m["attribution"]);
        let segs = a2["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 2, "{a2}");
        assert_eq!(segs[0]["reused_from"]["job_id"], first_job, "{a2}");
        assert_eq!(
            segs[0]["span"]["sha256"],
            a1["segments"][0]["span"]["sha256"]
        );
        assert_eq!(
            segs[0]["gradients"]["sha256"],
            a1["segments"][0]["gradients"]["sha256"]
        );
        // the same file, linked
        let dir = |job: i64| async move {
            let d: String = sqlx::query_scalar("SELECT dir FROM trained_models WHERE job_id = $1")
                .bind(job)
                .fetch_one(&s.pool)
                .await
                .unwrap();
            PathBuf::from(d)
        };
        use std::os::unix::fs::MetadataExt;
        let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(dir(first_job).await.join("attribution-0.span")),
            ino(dir(job).await.join("attribution-0.span"))
        );
        // only the added examples were indexed anew: every earlier one stayed in training (the split is stable)
        let n = |a: &Value| a["span_index"]["examples"].as_u64().unwrap();
        assert_eq!(segs[0]["examples"].as_u64().unwrap(), n(a1));
        assert_eq!(segs[1]["examples"].as_u64().unwrap(), n(a2) - n(a1));
        assert!(segs[1]["examples"].as_u64().unwrap() >= 1, "{a2}");
        assert_eq!(a2["reused_examples"], n(a1));
        let logs = get(app, &format!("/api/jobs/{job}/logs"), Some(&s.session))
            .await
            .json();
        assert!(
            logs.to_string().contains(&format!("from ft-{first_job}")),
            "{logs}"
        );
        span_index_traces_training_examples(app, job, &m).await;

        // attributed over both segments: an old example and an added one each traced to its contribution,
        // with the gradient part over both segments' rows
        let (index, toks) = dataset(app, job).await;
        let old_ids: std::collections::HashSet<&str> = first["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["contribution_id"].as_str().unwrap())
            .collect();
        let trained: Vec<&Value> = index["examples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["split"] == "train")
            .collect();
        for want_old in [true, false] {
            let e = trained
                .iter()
                .find(|e| {
                    let c = m["sources"][e["source"].as_u64().unwrap() as usize]["contribution_id"]
                        .as_str()
                        .unwrap();
                    old_ids.contains(c) == want_old
                })
                .unwrap();
            let (at, len) = (
                e["offset"].as_u64().unwrap() as usize,
                e["len"].as_u64().unwrap() as usize,
            );
            let first_target = e["first_target"].as_u64().unwrap() as usize;
            let output = &toks[at + first_target..at + len];
            let rec = inf
                .attribution
                .attribute(
                    &s.pool,
                    &Subject {
                        inference_id: "inf-v2",
                        job_id: job,
                        prompt: &toks[at..at + first_target],
                        outputs: &[output],
                    },
                    Gradient::Run,
                )
                .await
                .unwrap();
            let want =
                m["sources"][e["source"].as_u64().unwrap() as usize]["contribution_id"].clone();
            let spans = rec.body["spans"].as_array().unwrap();
            assert!(
                spans.iter().any(|sp| sp["contributions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["contribution_id"] == want)),
                "old: {want_old}, {}",
                rec.body
            );
            assert_eq!(
                rec.body["commitment"]["span_index_sha256"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
            let rows = rec.body["gradient"]["top"].as_array().unwrap();
            assert!(!rows.is_empty(), "{}", rec.body);
        }
    });
}

/// A PEFT folder trained elsewhere (here: a copy of the adapter just trained) is imported by an admin:
/// checked against the base model, registered and published with no Datanets, listed like a trained one.
#[test]
fn imports_a_peft_adapter() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (trained_job, trained_model) = (t.job_id, t.model_id);
        let app = &s.app;
        let src = s.data.path().join("peft-from-elsewhere");
        std::fs::create_dir_all(&src).unwrap();
        let dir: String = sqlx::query_scalar("SELECT dir FROM trained_models WHERE job_id = $1")
            .bind(trained_job)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            std::fs::copy(Path::new(&dir).join(f), src.join(f)).unwrap();
        }
        let bad = s.data.path().join("not-an-adapter");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(
            src.join("adapter_config.json"),
            bad.join("adapter_config.json"),
        )
        .unwrap();
        std::fs::write(bad.join("adapter_model.safetensors"), b"not safetensors").unwrap();
        let submit = |token: String, params: Value| async move {
            post_json(
                app,
                "/api/jobs",
                Some(&token),
                json!({"kind": "train", "params": params}),
            )
            .await
        };
        // a model builder may not make the daemon read its disk
        submit(
            s.session.clone(),
            json!({"base_model": BASE, "import": src}),
        )
        .await
        .problem(403, "forbidden");
        let admin = openledger_daemon::auth::create_api_key(
            &s.pool,
            TestChain::address_of(3),
            "ops",
            true,
            None,
        )
        .await
        .unwrap()
        .token;
        let p = submit(admin.clone(), json!({"base_model": BASE, "import": bad}))
            .await
            .problem(422, "invalid-content");
        assert!(
            p["detail"].as_str().unwrap().contains("not a LoRA adapter"),
            "{p}"
        );
        submit(
            admin.clone(),
            json!({"base_model": BASE, "import": src, "datanets": [{"id": "1"}]}),
        )
        .await
        .problem(422, "invalid-content");

        let r = submit(admin.clone(), json!({"base_model": BASE, "import": src})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        let id = r.json()["id"].as_i64().unwrap();
        let j = wait_job(app, &admin, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        let trained = get(app, &format!("/api/models/{trained_job}"), None)
            .await
            .json();
        let imported = get(app, &format!("/api/models/{id}"), None).await.json();
        assert_eq!(imported["adapter_hash"], trained["adapter_hash"]);
        assert_eq!(imported["sources"].as_array().unwrap().len(), 0);
        assert_eq!(imported["datanets"], json!([]));
        let model_id: U256 = imported["model_id"].as_str().unwrap().parse().unwrap();
        assert_ne!(model_id, trained_model);
        let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), &s.chain.deployment)
            .unwrap();
        let m = index.model(model_id).await.unwrap().unwrap();
        assert!(m.datanet_versions.is_empty());
        // the copy is the daemon's own: the source folder may go away
        std::fs::remove_dir_all(&src).unwrap();
        let files = get(
            app,
            &format!("/api/models/{id}/files/adapter_config.json"),
            None,
        )
        .await;
        assert_eq!(files.status, StatusCode::OK);
    });
}

/// Attacks on pay-first payments, each refused with nothing lost for the payer: a stranger posting the
/// payer's public request id (anonymously, signed in as itself, or naming the payer); a stranger without the
/// secret a payment was made under; dust payments under the same id, made first, to hide the real one; and
/// a developer raising the price after the payment was made.
#[test]
fn a_payment_buys_only_its_payers_answer() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let stranger = sign_in(&t.serving, &PrivateKeySigner::random()).await;
        let payer = format!("{:#x}", TestChain::address_of(PAYER));

        // a request id, paid by #5: public the moment the transaction is sent
        let rid = B256::repeat_byte(0x61);
        t.pay(rid, ether(1)).await;
        let p = t
            .chat(json!({"request_id": rid.to_string()}))
            .await
            .problem(401, "unauthorized");
        assert!(
            p["detail"].as_str().unwrap().contains("request_secret"),
            "{p}"
        );
        // signed in as itself: its own payments only, and it has none under this id
        t.chat_as(Some(&stranger), json!({"request_id": rid.to_string()}))
            .await
            .problem(402, "payment-required");
        t.chat_as(
            Some(&stranger),
            json!({"request_id": rid.to_string(), "payer": payer}),
        )
        .await
        .problem(403, "forbidden");
        // the payer's answer is still there for the payer
        let v = t.payer_chat(json!({"request_id": rid.to_string()})).await;
        v.expect(StatusCode::OK);
        assert_eq!(v.json()["openledger"]["payment"]["payer"], payer);

        // paid under keccak256(secret), by the payer, after a front-runner's dust payments under the same id
        // from seventeen addresses (more than a lookup of 16 rows would read)
        let secret = B256::repeat_byte(0x62);
        let hashed = keccak256(secret);
        let d = &s.chain.deployment;
        let (token, router) = (
            d.address(ContractKind::OpenToken).unwrap(),
            d.address(ContractKind::FeeRouter).unwrap(),
        );
        for i in 0..17u8 {
            let dust = Address::repeat_byte(0xd0 + i);
            send!(OpenToken::new(token, s.chain.actor(0)).transfer(dust, U256::from(1)));
            let approve = OpenToken::approveCall {
                spender: router,
                value: U256::from(1),
            };
            s.chain
                .impersonated(dust, token, approve.abi_encode())
                .await;
            let pay = FeeRouter::payInferenceCall {
                modelId: t.model_id,
                requestId: hashed,
                amount: U256::from(1),
            };
            s.chain.impersonated(dust, router, pay.abi_encode()).await;
        }
        t.pay(hashed, ether(1)).await;
        // the id alone serves no one but its payer; a wrong secret opens nothing
        t.chat(json!({"request_id": hashed.to_string()}))
            .await
            .problem(401, "unauthorized");
        t.chat(json!({"request_secret": B256::repeat_byte(0x63).to_string()}))
            .await
            .problem(402, "payment-required");
        t.chat(json!({"request_secret": secret.to_string(), "request_id": rid.to_string()}))
            .await
            .problem(400, "bad-request");
        let v = t.chat(json!({"request_secret": secret.to_string()})).await;
        v.expect(StatusCode::OK);
        let v = v.json();
        assert_eq!(
            v["openledger"]["payment"]["payer"], payer,
            "the real payment, not the dust"
        );
        assert_eq!(v["openledger"]["payment"]["amount"], ether(1).to_string());
        assert_eq!(v["openledger"]["payment"]["request_id"], hashed.to_string());

        // the developer raises the price tenfold-and-more after a payment is mined: that payment keeps the
        // price in force at its block; a payment mined after the change pays the new one
        let before = B256::repeat_byte(0x64);
        t.pay(before, ether(1)).await;
        t.set_price(json!(ether(1000).to_string()))
            .await
            .expect(StatusCode::OK);
        let after = B256::repeat_byte(0x65);
        t.pay(after, ether(1)).await;
        let kept = t
            .payer_chat(json!({"request_id": before.to_string()}))
            .await;
        t.set_price(Value::Null).await.expect(StatusCode::OK);
        kept.expect(StatusCode::OK);
        assert_eq!(
            kept.json()["openledger"]["payment"]["request_id"],
            before.to_string()
        );
        let late = t
            .payer_chat(json!({"request_id": after.to_string()}))
            .await
            .problem(402, "payment-required");
        assert!(late["detail"].as_str().unwrap().contains("needs"), "{late}");
    });
}

/// Free inferences through reorgs: a payment served at once could be taken back by a reorg after its answer
/// was given. With confirmations set (outside devnets, by default), a payment serves only once its block is
/// that deep; before, a 402 says how deep it is.
#[test]
fn a_payment_serves_once_it_has_its_confirmations() {
    TRAINED.run(|t| async move {
        use alloy::providers::ext::AnvilApi;
        let s = &t.s;
        let (_, app) = serve(
            s,
            InferenceConfig {
                payment_confirmations: 3,
                payment_wait: Duration::from_millis(300),
                ..InferenceConfig::default()
            },
        )
        .await;
        let rid = B256::repeat_byte(0x71);
        t.pay(rid, ether(1)).await;
        let body = json!({"model": format!("ft-{}", t.job_id), "max_tokens": 5, "temperature": 0,
                          "request_id": rid.to_string(),
                          "messages": [{"role": "user", "content": "What is the ledger code of item 3?"}]});
        let call = || post_json(&app, "/v1/chat/completions", Some(&t.payer_session), body.clone());
        let p = call().await.problem(402, "payment-required");
        assert!(p["detail"].as_str().unwrap().contains("1 of the 3 confirmations"), "{p}");
        // two more blocks on top of the payment's, and the index has them
        s.chain.plain().anvil_mine(Some(2), None).await.unwrap();
        let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), &s.chain.deployment).unwrap();
        let head = s.chain.head().await;
        until("the indexer reaches the head", || async {
            (index.indexed_through().await.unwrap() >= Some(head)).then_some(())
        })
        .await;
        let served = call().await;
        served.expect(StatusCode::OK);
        assert_eq!(served.json()["openledger"]["payment"]["request_id"], rid.to_string());
    });
}

/// Attacks on sponsorship (the daemon paying FeeRouter from its key): a developer prices its model far above
/// the default and calls it on the daemon's money; anonymous callers call on it; signed-in callers call until
/// the daemon's OPEN is gone. Sponsorship never pays above the default price, and stops at a per-caller and a total cap
/// per period; what a refused call costs the daemon is nothing.
#[test]
fn sponsorship_pays_no_more_than_the_default_price_nor_past_its_caps() {
    TRAINED.run(|t| async move {
        use openledger_daemon::inference::payment::SponsorLimits;
        let s = &t.s;
        let d = &s.chain.deployment;
        let token = OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), s.chain.plain());
        let daemon_key = TestChain::address_of(1);
        send!(OpenToken::new(d.address(ContractKind::OpenToken).unwrap(), s.chain.actor(0))
            .transfer(daemon_key, ether(10)));
        // the default price is 1e15 wei per 1k tokens: a request of n tokens (prompt + max_tokens) costs n * 1e12
        let per_caller = U256::from(100_000_000_000_000u64);
        let total = U256::from(150_000_000_000_000u64);
        let (_, sponsoring) = serve(
            s,
            InferenceConfig {
                sponsor: true,
                sponsor_limits: SponsorLimits {
                    per_caller,
                    total,
                    period: Duration::from_secs(3600),
                },
                ..InferenceConfig::default()
            },
        )
        .await;
        let call = |session: Option<String>| {
            let body = json!({"model": format!("ft-{}", t.job_id), "max_tokens": 5, "temperature": 0,
                              "messages": [{"role": "user", "content": "What is the ledger code of item 3?"}]});
            let app = sponsoring.clone();
            async move { post_json(&app, "/v1/chat/completions", session.as_deref(), body).await }
        };
        let spent = || async { token.balanceOf(daemon_key).call().await.unwrap() };
        // what the daemon's key paid FeeRouter from here on, read from the chain's InferencePaid events
        let from = s.chain.head().await;
        let router = d.address(ContractKind::FeeRouter).unwrap();
        let paid_on_chain = || async {
            use alloy::providers::Provider;
            use alloy::sol_types::SolEvent;
            let f = alloy::rpc::types::Filter::new()
                .address(router)
                .event_signature(FeeRouter::InferencePaid::SIGNATURE_HASH)
                .topic1(daemon_key.into_word())
                .from_block(from);
            let logs = s.chain.plain().get_logs(&f).await.unwrap();
            logs.iter()
                .map(|l| l.log_decode::<FeeRouter::InferencePaid>().unwrap().inner.data.amount)
                .fold(U256::ZERO, |a, b| a + b)
        };

        // the developer prices its model at 1e36 wei per 1k tokens: the daemon will not pay that
        t.set_price(json!("1000000000000000000000000000000000000")).await.expect(StatusCode::OK);
        let before = spent().await;
        let greedy = call(Some(s.session.clone())).await;
        t.set_price(Value::Null).await.expect(StatusCode::OK);
        let p = greedy.problem(402, "payment-required");
        assert!(p["detail"].as_str().unwrap().contains("more than the"), "{p}");
        assert_eq!(spent().await, before, "the daemon paid nothing");
        assert_eq!(paid_on_chain().await, U256::ZERO, "no payment sent");

        // one caller, again and again: served until the next call would pass its cap
        let mut paid = U256::ZERO;
        let refusal = loop {
            let r = call(Some(t.payer_session.clone())).await;
            if r.status != StatusCode::OK {
                break r;
            }
            let v = r.json();
            assert_eq!(v["openledger"]["payment"]["mode"], "sponsored", "{v}");
            paid += v["openledger"]["payment"]["amount"].as_str().unwrap().parse::<U256>().unwrap();
            assert!(paid <= per_caller, "paid {paid} past the cap");
        };
        let p = refusal.problem(402, "payment-required");
        assert!(p["detail"].as_str().unwrap().contains("per caller"), "{p}");
        assert!(paid > U256::ZERO, "the first calls were sponsored");
        assert_eq!(paid_on_chain().await, paid, "the daemon paid exactly the sponsored calls");
        // anonymous callers are never sponsored: the daemon cannot name or cap them (401, nothing paid)
        let anonymous = call(None).await.problem(401, "unauthorized");
        assert!(anonymous["detail"].as_str().unwrap().contains("signed-in callers"), "{anonymous}");
        assert_eq!(paid_on_chain().await, paid, "an anonymous call cost the daemon nothing");
        // another caller, and a stranger: together with everyone they stop at the total
        let mut all = paid;
        let refusal = loop {
            let r = call(Some(s.session.clone())).await;
            if r.status != StatusCode::OK {
                break r;
            }
            all += r.json()["openledger"]["payment"]["amount"].as_str().unwrap().parse::<U256>().unwrap();
            assert!(all <= total, "paid {all} past the total");
        };
        let p = refusal.problem(402, "payment-required");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("is spent") || detail.contains("per caller"), "{p}");
        let stranger = sign_in(&t.serving, &PrivateKeySigner::random()).await;
        let mut last = call(Some(stranger.clone())).await;
        while last.status == StatusCode::OK {
            all += last.json()["openledger"]["payment"]["amount"].as_str().unwrap().parse::<U256>().unwrap();
            assert!(all <= total, "paid {all} past the total");
            last = call(Some(stranger.clone())).await;
        }
        let p = last.problem(402, "payment-required");
        assert!(p["detail"].as_str().unwrap().contains("is spent"), "{p}");
        assert_eq!(paid_on_chain().await, all, "the daemon paid exactly the sponsored calls");
        let recorded: String = sqlx::query_scalar(
            "SELECT COALESCE(sum(amount), 0)::text FROM daemon_payments WHERE funding = 'sponsored' AND state = 'paid'",
        )
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(recorded, all.to_string(), "every sponsored payment is on the books");
    });
}

/// OpenLoRA on the adapter just trained: listed, refused unpaid, served once per on-chain payment.
#[test]
fn serve_the_fresh_adapter_paid_first() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (job_id, app) = (t.job_id, &t.serving);
    let name = format!("ft-{job_id}");
    let models = get(app, "/v1/models", None).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // the base model, then every adapter trained on it in job order (other tests of this binary train
    // and import more)
    let jobs: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE kind = 'train' AND state = 'succeeded' ORDER BY id",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    let want: Vec<String> = std::iter::once(BASE.to_string())
        .chain(jobs.iter().map(|j| format!("ft-{j}")))
        .collect();
    assert_eq!(ids, want, "{models}");
    assert!(ids.contains(&name.as_str()), "{models}");
    // one model, as the OpenAI clients' models.retrieve asks
    let one = get(app, &format!("/v1/models/{name}"), None).await;
    one.expect(StatusCode::OK);
    assert_eq!(one.json()["id"], name.as_str());
    assert_eq!(one.json()["object"], "model");
    get(app, "/v1/models/ft-999", None).await.problem(404, "not-found");
    let chat = |extra: Value| t.chat(extra);
    // unpaid: 402 naming the price; unknown model: 404; bad sampling: 400
    let unpaid = chat(json!({})).await.problem(402, "payment-required");
    assert!(
        unpaid["detail"].as_str().unwrap().contains("payInference"),
        "{unpaid}"
    );
    chat(json!({"model": "ft-999"}))
        .await
        .problem(404, "not-found");
    chat(json!({"temperature": 9}))
        .await
        .problem(400, "bad-request");
    chat(json!({"max_tokens": 100000}))
        .await
        .problem(400, "bad-request");

    // the payer pays FeeRouter first, then calls with the request id
    let rid = B256::repeat_byte(0x42);
    let v = t.paid_chat(rid).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["openledger"]["payment"]["mode"], "pay_first");
    assert_eq!(
        v["openledger"]["payment"]["payer"],
        format!("{:#x}", TestChain::address_of(5))
    );
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&n), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let row: (String, String, Option<i32>, Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT status, payment_mode, completion_tokens, request_id, job_id FROM inferences WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "succeeded".into(),
            "pay_first".into(),
            Some(n as i32),
            Some(rid.to_string()),
            Some(job_id)
        )
    );
    // the same payment twice: refused
    t.payer_chat(json!({"request_id": rid.to_string()}))
        .await
        .problem(409, "conflict");
    // under-paid, and never paid
    let cheap = B256::repeat_byte(0x43);
    t.pay(cheap, U256::from(1)).await;
    let p = t
        .payer_chat(json!({"request_id": cheap.to_string()}))
        .await
        .problem(402, "payment-required");
    assert!(p["detail"].as_str().unwrap().contains("needs"), "{p}");
    t.payer_chat(json!({"request_id": B256::repeat_byte(0x44).to_string()}))
        .await
        .problem(402, "payment-required");
    // streamed: OpenAI's chunks, then [DONE]
    let rid2 = B256::repeat_byte(0x45);
    t.pay(rid2, ether(1)).await;
    let st = t.payer_chat(json!({"request_id": rid2.to_string(), "stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(st.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&st.body).to_string();
    assert!(
        text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert!(text.contains("\"usage\""), "{text}");
    // the finish chunk carries the attribution
    assert!(
        text.contains("\"attribution\"") && text.contains("\"commitment\""),
        "{text}"
    );
    // the base model is free and needs no payment
    let base = post_json(
        app,
        "/v1/completions",
        None,
        json!({"model": BASE, "prompt": "abc", "max_tokens": 3}),
    )
    .await;
    assert_eq!(base.status, StatusCode::OK);
    let base = base.json();
    assert_eq!(base["openledger"]["payment"]["mode"], "free");
    assert!(base["openledger"]["attribution"].is_null(), "{base}");
    let p = get(
        app,
        &format!(
            "/api/inferences/{}/attribution",
            base["id"].as_str().unwrap()
        ),
        None,
    )
    .await
    .problem(404, "not-found");
    assert!(p["detail"].as_str().unwrap().contains("base model"), "{p}");
    });
}

/// The paid inference's attribution: returned with the completion, stored with its weights in the same
/// transaction, served at /api/inferences/{id}/attribution, recomputed equal by `verify`; a tampered record
/// does not verify; missing or damaged artifacts, an empty output and oversized token ids are clear errors;
/// a queued gradient part is completed by the background task.
#[test]
fn attribution_of_an_inference() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (job_id, inf, app) = (t.job_id, &t.inf, &t.serving);
    use openledger_daemon::attribution::{
        self, AttributionError, Gradient, Subject, store, verify,
    };
    // an inference of its own, paid first (this test tampers with its record)
    let rid = B256::repeat_byte(0x46);
    let v = &t.paid_chat(rid).await;
    let id = v["id"].as_str().unwrap();
    let a = &v["openledger"]["attribution"];
    assert_eq!(a["status"], "complete", "{a}");
    assert_eq!(a["method"], "ol-attr/2");
    let manifest_hash: String =
        sqlx::query_scalar("SELECT manifest_hash FROM trained_models WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(
        a["commitment"]["manifest_sha256"],
        manifest_hash.to_lowercase()
    );
    for k in [
        "output_tokens_sha256",
        "prompt_tokens_sha256",
        "adapter_sha256",
    ] {
        assert!(
            a["commitment"][k].as_str().is_some_and(|h| h.len() == 66),
            "{k}: {a}"
        );
    }
    // one hash per attribution segment, as the manifest lists them
    let m: Value = serde_json::from_slice(
        &get(app, &format!("/api/manifests/{manifest_hash}"), None)
            .await
            .body,
    )
    .unwrap();
    let segs = m["attribution"]["segments"].as_array().unwrap();
    let listed = |k: &str| -> Vec<Value> { segs.iter().map(|g| g[k]["sha256"].clone()).collect() };
    assert_eq!(
        a["commitment"]["span_index_sha256"],
        json!(listed("span")),
        "{a}"
    );
    assert_eq!(
        a["commitment"]["gradients_sha256"],
        json!(listed("gradients")),
        "{a}"
    );
    // the gradient part ran (sync by default) and named trained examples of known contributions
    let top = a["gradient"]["top"].as_array().unwrap();
    assert!(!top.is_empty(), "{a}");
    assert!(
        top.iter().all(|e| e["contributor"]
            .as_str()
            .is_some_and(|c| c.starts_with("0x"))),
        "{a}"
    );
    // weights: integers summing to exactly one million with the no-attribution share
    let w = &a["weights"];
    let sum: u64 = w["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["weight"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sum + w["no_attribution"].as_u64().unwrap(),
        1_000_000,
        "{w}"
    );
    // stored, with the weights settlement reads
    let got = get(app, &format!("/api/inferences/{id}/attribution"), None)
        .await
        .json();
    assert_eq!(got["record_hash"], a["record_hash"]);
    assert_eq!(got["weights"], a["weights"]);
    let (rows, total): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(weight)::bigint FROM attribution_weights WHERE inference_id = $1",
    )
    .bind(id)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(rows as usize, w["contributions"].as_array().unwrap().len());
    assert_eq!(total.unwrap_or(0) as u64, sum);

    // verify agrees, through the library and the CLI; a record tampered with in the database does not
    let ok = verify::verify(&s.pool, id).await.unwrap();
    assert!(ok.matches, "{:?}", ok.differences);
    let db = common::url_of(&s.pool);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_openledger"))
            .args(["--database-url", &db, "--data-dir"])
            .arg(s.data.path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = cli(&["--json", "attribution", "verify", id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vj: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vj["matches"], true, "{vj}");
    assert_eq!(vj["stored_record_hash"], a["record_hash"]);
    let o = cli(&["attribution", "verify", "inf-nope"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no inference inf-nope"),
        "{o:?}"
    );
    sqlx::query("UPDATE attributions SET record_canonical = replace(record_canonical, '\"no_attribution\":', '\"no_attribution\":1') WHERE inference_id = $1")
        .bind(id)
        .execute(&s.pool)
        .await
        .unwrap();
    let bad = verify::verify(&s.pool, id).await.unwrap();
    assert!(!bad.matches);
    let o = cli(&["attribution", "verify", id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("DOES NOT MATCH"),
        "{o:?}"
    );
    assert!(
        bad.differences.iter().any(|d| d.contains("record_hash")),
        "{:?}",
        bad.differences
    );
    assert!(
        bad.differences.iter().any(|d| d.starts_with("weights")),
        "{:?}",
        bad.differences
    );

    // bad input and missing artifacts
    let st = store::get(&s.pool, id).await.unwrap().unwrap();
    let prompt: Vec<u32> = st.prompt_tokens.iter().map(|&t| t as u32).collect();
    let subject = |job, outputs: &'static [&'static [u32]]| Subject {
        inference_id: "inf-x",
        job_id: job,
        prompt: &[],
        outputs,
    };
    let att = &inf.attribution;
    assert!(matches!(
        att.attribute(&s.pool, &subject(job_id, &[&[]]), Gradient::Run)
            .await,
        Err(AttributionError::EmptyOutput)
    ));
    // one empty choice of several: nothing to attribute for it, so the inference is flagged, not paid
    assert!(matches!(
        att.attribute(&s.pool, &subject(job_id, &[&[1, 2], &[]]), Gradient::Run)
            .await,
        Err(AttributionError::EmptyChoice(1))
    ));
    let e = att
        .attribute(&s.pool, &subject(job_id, &[&[70_000]]), Gradient::Run)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("70000"), "{e}");
    assert!(matches!(
        att.attribute(&s.pool, &subject(9999, &[&[1, 2]]), Gradient::Run)
            .await,
        Err(AttributionError::UnknownModel(9999))
    ));
    let dir: String = sqlx::query_scalar("SELECT dir FROM trained_models WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    let span = Path::new(&dir).join("attribution-0.span");
    let saved = std::fs::read(&span).unwrap();
    let restore = Restore(span.clone(), saved.clone());
    let mut damaged = saved.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&span, &damaged).unwrap();
    // a fresh process (verify opens the artifacts anew) finds the damage
    match verify::verify(&s.pool, id).await {
        Err(verify::VerifyError::Attribution(AttributionError::HashMismatch { file, .. })) => {
            assert_eq!(file, "attribution-0.span")
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    std::fs::remove_file(&span).unwrap();
    let e = verify::verify(&s.pool, id).await.unwrap_err();
    assert!(e.to_string().contains("attribution-0.span"), "{e}");
    drop(restore);

    // a flagged record is a clear error at the endpoint, and is never paid: no weights
    let flagged: Result<attribution::Record, AttributionError> = Err(AttributionError::Missing {
        job: job_id,
        reason: "test".into(),
    });
    let mut tx = s.pool.begin().await.unwrap();
    store::save(&mut tx, id, job_id, &prompt, &flagged)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let p = get(app, &format!("/api/inferences/{id}/attribution"), None)
        .await
        .problem(409, "conflict");
    assert!(p["detail"].as_str().unwrap().contains("flagged"), "{p}");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM attribution_weights WHERE inference_id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(n, 0);

    // queued: the record is pending without weights, then the background task completes it to the same
    // weights the synchronous path gave
    let out: Vec<u32> = {
        let o: Vec<i32> = sqlx::query_scalar("SELECT output_tokens FROM inferences WHERE id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        o.into_iter().map(|t| t as u32).collect()
    };
    let real = Subject {
        inference_id: id,
        job_id,
        prompt: &prompt,
        outputs: &[&out],
    };
    let pending = att
        .attribute(&s.pool, &real, Gradient::Defer)
        .await
        .unwrap();
    assert!(pending.pending && pending.body["weights"].is_null());
    let mut tx = s.pool.begin().await.unwrap();
    store::save(&mut tx, id, job_id, &prompt, &Ok(pending))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let p = get(app, &format!("/api/inferences/{id}/attribution"), None)
        .await
        .json();
    assert_eq!(p["status"], "pending");
    let task = tokio::spawn(inf.attribution.clone().run_queue(s.pool.clone()));
    att.wake();
    let done = until("the queued attribution completes", || async {
        let done = get(app, &format!("/api/inferences/{id}/attribution"), None)
            .await
            .json();
        (done["status"] != "pending").then_some(done)
    })
    .await;
    task.abort();
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(done["weights"], a["weights"]);
    assert_eq!(done["record_hash"], a["record_hash"]);
    assert!(verify::verify(&s.pool, id).await.unwrap().matches);
    get(app, "/api/inferences/inf-nope/attribution", None)
        .await
        .problem(404, "not-found");
    });
}

/// `ol-attr/2`: the tokens of an answer that the prompt already holds are the prompt's, not the training
/// data's. A training example's answer to its own question is traced to its contributor; the same answer to
/// a prompt that holds it is shown with its spans marked `from_prompt` and pays no one for them (`ol-attr/1`,
/// recomputed as records of that method are, pays the contributor for the echo); records of both methods
/// verify, and an `ol-attr/1` record given the new method's weights does not.
#[test]
fn an_answer_echoing_its_prompt_is_not_paid_for_the_echo() {
    TRAINED.run(|t| async move {
        use openledger_daemon::attribution::{Gradient, Subject, store, verify};
        let s = &t.s;
        let job_id = t.job_id;
        let (index, toks) = dataset(&t.serving, job_id).await;
        let e = index["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["split"] == "train")
            .unwrap();
        let (at, len, first) = (
            e["offset"].as_u64().unwrap() as usize,
            e["len"].as_u64().unwrap() as usize,
            e["first_target"].as_u64().unwrap() as usize,
        );
        // an answer that says the end of the example's question ("... item 0?" and the template after it,
        // which only this example holds): the tiny model's examples are cut at 64 tokens, so its
        // completions hold little of their own
        assert!(first >= 20 && len >= first, "{e}");
        let answer = &toks[at + first - 20..at + first];
        let question: &[u32] = &[];
        let source = e["source"].as_u64().unwrap();
        let echo: Vec<u32> = toks[at..at + first].to_vec();
        let paid = |w: &Value| -> Vec<u64> {
            w["contributions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["source"].as_u64().unwrap())
                .collect()
        };
        let att = &t.inf.attribution;
        // said without a prompt: the contributor's
        let asked = att
            .attribute(
                &s.pool,
                &Subject {
                    inference_id: "inf-asked",
                    job_id,
                    prompt: question,
                    outputs: &[answer],
                },
                Gradient::Skip,
            )
            .await
            .unwrap();
        assert_eq!(asked.body["method"], "ol-attr/2");
        let spans = asked.body["spans"].as_array().unwrap();
        assert!(!spans.is_empty(), "{}", asked.body);
        assert!(
            spans
                .iter()
                .all(|s| s["from_prompt"] == false && s["prompt_tokens"] == 0),
            "{spans:?}"
        );
        assert!(
            paid(&asked.body["weights"]).contains(&source),
            "{}",
            asked.body
        );
        // said to a prompt that holds it (the example's question): the same spans, marked, nothing paid
        let echoed = att
            .attribute(
                &s.pool,
                &Subject {
                    inference_id: "inf-echo",
                    job_id,
                    prompt: &echo,
                    outputs: &[answer],
                },
                Gradient::Skip,
            )
            .await
            .unwrap();
        let spans = echoed.body["spans"].as_array().unwrap();
        assert!(!spans.is_empty(), "{}", echoed.body);
        for sp in spans {
            assert_eq!(sp["from_prompt"], true, "{sp}");
            assert_eq!(sp["prompt_tokens"], sp["len"], "{sp}");
        }
        assert_eq!(
            echoed.body["weights"]["contributions"],
            json!([]),
            "{}",
            echoed.body
        );
        assert_eq!(echoed.body["weights"]["no_attribution"], 1_000_000);

        // stored for a real inference (its output and prompt set to the echo), both methods verify
        let v = t.paid_chat(B256::repeat_byte(0x56)).await;
        let id = v["id"].as_str().unwrap();
        let out: Vec<i32> = answer.iter().map(|&t| t as i32).collect();
        let prompt: Vec<i32> = echo.iter().map(|&t| t as i32).collect();
        sqlx::query("UPDATE inferences SET output_tokens = $2 WHERE id = $1")
            .bind(id)
            .bind(&out)
            .execute(&s.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE attributions SET prompt_tokens = $2 WHERE inference_id = $1")
            .bind(id)
            .bind(&prompt)
            .execute(&s.pool)
            .await
            .unwrap();
        let echo = echo.as_slice();
        let subject = Subject {
            inference_id: id,
            job_id,
            prompt: echo,
            outputs: &[answer],
        };
        let save = |rec| async move {
            let mut tx = s.pool.begin().await.unwrap();
            store::save(&mut tx, id, job_id, echo, &Ok(rec))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        };
        let v2 = att
            .attribute(&s.pool, &subject, Gradient::Run)
            .await
            .unwrap();
        save(v2.clone()).await;
        let checked = verify::verify(&s.pool, id).await.unwrap();
        assert!(checked.matches, "{:?}", checked.differences);
        let method: String =
            sqlx::query_scalar("SELECT method FROM attributions WHERE inference_id = $1")
                .bind(id)
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(method, "ol-attr/2");
        // the first method's attributor, as verify builds it for such a record: it pays the echo
        let mut cfg = openledger_daemon::attribution::AttributionConfig::default();
        cfg.span.prompt_min_len = None;
        let first = verify::attributor_for(&s.pool, job_id, cfg).await.unwrap();
        let v1 = first
            .attribute(&s.pool, &subject, Gradient::Run)
            .await
            .unwrap();
        assert_eq!(v1.body["method"], "ol-attr/1");
        assert!(
            v1.body["params"]["span"].get("prompt_min_len").is_none(),
            "{}",
            v1.body
        );
        assert!(
            v1.body["spans"][0].get("from_prompt").is_none(),
            "{}",
            v1.body
        );
        assert!(paid(&v1.body["weights"]).contains(&source), "{}", v1.body);
        save(v1.clone()).await;
        let checked = verify::verify(&s.pool, id).await.unwrap();
        assert!(checked.matches, "{:?}", checked.differences);
        // a record that says ol-attr/1 but carries the new method's weights does not verify
        let mut forged = v1.body.clone();
        forged["weights"] = v2.body["weights"].clone();
        save(openledger_daemon::attribution::Record::new(forged, false)).await;
        let bad = verify::verify(&s.pool, id).await.unwrap();
        assert!(!bad.matches);
        assert!(
            bad.differences.iter().any(|d| d.starts_with("weights")),
            "{:?}",
            bad.differences
        );
    });
}

/// `n` choices: one inference, paid as n completions (a payment for one is refused, and stays usable), the
/// choices sampled from consecutive seeds (choice 0 is what n = 1 with the seed gives), recorded together,
/// attributed in one record whose weights split the pool equally between the choices' own weights, verified
/// choice by choice (a stored output changed afterwards no longer verifies); streamed with each choice's
/// index; a payment replayed, and `n` out of range, refused.
#[test]
fn n_choices_are_paid_as_n_completions_and_attributed_in_one_record() {
    TRAINED.run(|t| async move {
        use openledger_daemon::attribution::verify;
        use openledger_daemon::inference::payment;
        let s = &t.s;
        let job_id = t.job_id;
        let price = payment::price_per_1k(&s.pool, job_id, InferenceConfig::default().default_price_per_1k)
            .await
            .unwrap();
        let ask = json!({"max_tokens": 5, "temperature": 0.8, "seed": 7});
        let with = |extra: Value| {
            let mut b = ask.clone();
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        // n = 1 with the seed: the reference for choice 0, and the prompt's length
        let one = t.paid_chat_with(B256::repeat_byte(0x51), with(json!({}))).await;
        let prompt = one["usage"]["prompt_tokens"].as_u64().unwrap() as usize;

        // paid for one completion, asking for three: 402 naming what three need; the payment stays usable
        let rid = B256::repeat_byte(0x52);
        t.pay(rid, payment::required(price, prompt + 5)).await;
        let p = t
            .payer_chat(with(json!({"request_id": rid.to_string(), "n": 3})))
            .await
            .problem(402, "payment-required");
        let need = payment::required(price, 3 * (prompt + 5));
        assert!(p["detail"].as_str().unwrap().contains(&need.to_string()), "{p}");
        t.payer_chat(with(json!({"request_id": rid.to_string()})))
            .await
            .expect(StatusCode::OK);

        // paid for three: three choices in one inference
        let rid = B256::repeat_byte(0x53);
        t.pay(rid, need).await;
        let v = t
            .payer_chat(with(json!({"request_id": rid.to_string(), "n": 3})))
            .await;
        v.expect(StatusCode::OK);
        let v = v.json();
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3, "{v}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i, "{v}");
            assert!(c["message"]["content"].is_string(), "{v}");
        }
        assert_eq!(choices[0]["message"], one["choices"][0]["message"], "choice 0 takes the seed itself");
        let id = v["id"].as_str().unwrap();
        let (n, completion, text0): (i16, i32, String) = sqlx::query_as(
            "SELECT choices, completion_tokens, output_text FROM inferences WHERE id = $1 AND status = 'succeeded'",
        )
        .bind(id)
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!((n, Some(completion as u64)), (3, v["usage"]["completion_tokens"].as_u64()));
        assert_eq!(text0, choices[0]["message"]["content"].as_str().unwrap());
        let outputs = openledger_daemon::attribution::store::outputs(&s.pool, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs.iter().map(Vec::len).sum::<usize>(), completion as usize);
        let texts: Vec<String> = sqlx::query_scalar(
            "SELECT output_text FROM inference_choices WHERE inference_id = $1 ORDER BY choice",
        )
        .bind(id)
        .fetch_all(&s.pool)
        .await
        .unwrap();
        let content = |i: usize| choices[i]["message"]["content"].as_str().unwrap();
        assert_eq!(texts, [content(1), content(2)]);

        // one record over the three: each choice's evidence, and weights that give each choice a third
        let a = &v["openledger"]["attribution"];
        assert_eq!(a["status"], "complete", "{a}");
        let lens: Vec<usize> = outputs.iter().map(Vec::len).collect();
        assert_eq!(a["output_tokens"], json!(lens));
        assert_eq!(a["commitment"]["output_tokens_sha256"].as_array().unwrap().len(), 3);
        assert_eq!(a["choices"].as_array().unwrap().len(), 3, "{a}");
        assert_eq!(a["weights"]["choices"], 3);
        let mut sum: std::collections::BTreeMap<i64, u64> = Default::default();
        for c in a["choices"].as_array().unwrap() {
            assert!(c["spans"].is_array() && c["gradient"]["top"].is_array(), "{c}");
            for w in c["weights"]["contributions"].as_array().unwrap() {
                *sum.entry(w["source"].as_i64().unwrap()).or_default() += w["weight"].as_u64().unwrap();
            }
        }
        let want: Vec<(i64, i64)> = sum
            .into_iter()
            .map(|(src, w)| (src, (w / 3) as i64))
            .filter(|w| w.1 > 0)
            .collect();
        let got: Vec<(i64, i64)> = a["weights"]["contributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["source"].as_i64().unwrap(), w["weight"].as_i64().unwrap()))
            .collect();
        assert_eq!(got, want, "{a}");
        let stored: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT source, weight FROM attribution_weights WHERE inference_id = $1 ORDER BY source",
        )
        .bind(id)
        .fetch_all(&s.pool)
        .await
        .unwrap();
        assert_eq!(
            stored.iter().map(|&(s, w)| (s as i64, w)).collect::<Vec<_>>(),
            want
        );
        let none = a["weights"]["no_attribution"].as_i64().unwrap();
        assert_eq!(none + want.iter().map(|w| w.1).sum::<i64>(), 1_000_000);
        let checked = verify::verify(&s.pool, id).await.unwrap();
        assert!(checked.matches, "{:?}", checked.differences);

        // the same payment again: refused
        t.payer_chat(with(json!({"request_id": rid.to_string(), "n": 3})))
            .await
            .problem(409, "conflict");

        // a stored choice changed afterwards no longer matches its commitment
        let mut changed = outputs[2].clone();
        changed.push(1);
        sqlx::query("UPDATE inference_choices SET output_tokens = $2 WHERE inference_id = $1 AND choice = 2")
            .bind(id)
            .bind(&changed)
            .execute(&s.pool)
            .await
            .unwrap();
        let bad = verify::verify(&s.pool, id).await.unwrap();
        assert!(!bad.matches);
        assert!(bad.differences.iter().any(|d| d.starts_with("commitment")), "{:?}", bad.differences);

        // streamed: each choice's role, deltas and finish by index, one attribution, usage over both
        let rid = B256::repeat_byte(0x54);
        t.pay(rid, payment::required(price, 2 * (prompt + 5))).await;
        let st = t
            .payer_chat(with(json!({"request_id": rid.to_string(), "n": 2, "stream": true,
                                    "stream_options": {"include_usage": true}})))
            .await;
        assert_eq!(st.status, StatusCode::OK);
        let text = String::from_utf8_lossy(&st.body).to_string();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut streamed = [String::new(), String::new()];
        let mut finished = [0, 0];
        for c in &chunks {
            for ch in c["choices"].as_array().unwrap() {
                let i = ch["index"].as_u64().unwrap() as usize;
                streamed[i] += ch["delta"]["content"].as_str().unwrap_or("");
                finished[i] += ch["finish_reason"].is_string() as usize;
            }
        }
        assert_eq!(finished, [1, 1], "{text}");
        assert_eq!(chunks.iter().filter(|c| c["openledger"]["attribution"].is_object()).count(), 1);
        let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap();
        let sid = chunks[0]["id"].as_str().unwrap();
        let first: String = sqlx::query_scalar("SELECT output_text FROM inferences WHERE id = $1")
            .bind(sid)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        let second: String = sqlx::query_scalar(
            "SELECT output_text FROM inference_choices WHERE inference_id = $1 AND choice = 1",
        )
        .bind(sid)
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!([first, second], streamed);
        let total: i32 = sqlx::query_scalar("SELECT completion_tokens FROM inferences WHERE id = $1")
            .bind(sid)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], total);

        // two choices that are two training examples' answers: each traced to its own contribution, and
        // the record's weights give each a half of what its choice alone would
        use openledger_daemon::attribution::{Gradient, Subject};
        let (index, toks) = dataset(&t.serving, job_id).await;
        let trained: Vec<&Value> = index["examples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["split"] == "train")
            .take(2)
            .collect();
        let answer = |e: &Value| {
            let (at, len, first) = (
                e["offset"].as_u64().unwrap() as usize,
                e["len"].as_u64().unwrap() as usize,
                e["first_target"].as_u64().unwrap() as usize,
            );
            (&toks[at..at + first], &toks[at + first..at + len])
        };
        let (prompt0, out0) = answer(trained[0]);
        let (_, out1) = answer(trained[1]);
        let rec = t
            .inf
            .attribution
            .attribute(
                &s.pool,
                &Subject { inference_id: "inf-two", job_id, prompt: prompt0, outputs: &[out0, out1] },
                Gradient::Run,
            )
            .await
            .unwrap();
        let w = &rec.body["weights"];
        let of = |w: &Value| -> std::collections::BTreeMap<i64, u64> {
            w["contributions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["source"].as_i64().unwrap(), c["weight"].as_u64().unwrap()))
                .collect()
        };
        let (w0, w1) = (of(&rec.body["choices"][0]["weights"]), of(&rec.body["choices"][1]["weights"]));
        let src = |e: &Value| e["source"].as_i64().unwrap();
        assert!(w0.contains_key(&src(trained[0])) && w1.contains_key(&src(trained[1])), "{w0:?} {w1:?}");
        let mut half: std::collections::BTreeMap<i64, u64> = Default::default();
        for (k, v) in w0.iter().chain(&w1) {
            *half.entry(*k).or_default() += v;
        }
        half.retain(|_, v| {
            *v /= 2;
            *v > 0
        });
        assert_eq!(of(w), half, "{w}");
        assert_eq!(
            w["no_attribution"].as_u64().unwrap() + half.values().sum::<u64>(),
            1_000_000
        );

        // n out of range: 400 naming it, before any payment is looked for
        for n in [0, 17] {
            let p = t.payer_chat(json!({"n": n})).await.problem(400, "bad-request");
            assert!(p["detail"].as_str().unwrap().contains("n must be between 1 and 16"), "{p}");
        }
    });
}

/// A signed-in caller without a request id is served on its inference credit: the daemon pays from its
/// own key and the credit goes down by exactly the price; no credit, or too little, is a 402 that takes
/// nothing.
#[test]
fn inference_credit_pays_for_signed_in_callers() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (app, name) = (&t.serving, &format!("ft-{}", t.job_id));
    let d = &s.chain.deployment;
    // the daemon's key (the relayer) pays the sponsored payments
    let open = OpenToken::new(
        d.address(ContractKind::OpenToken).unwrap(),
        s.chain.actor(0),
    );
    send!(open.transfer(TestChain::address_of(1), ether(10)));
    let user = PrivateKeySigner::random();
    let token = sign_in(app, &user).await;
    let chat = || {
        post_json(
            app,
            "/v1/chat/completions",
            Some(&token),
            json!({"model": name, "messages": [{"role": "user", "content": "item 3?"}], "max_tokens": 4}),
        )
    };
    let none = chat().await.problem(402, "payment-required");
    assert!(
        none["detail"].as_str().unwrap().contains("credit is 0 wei"),
        "{none}"
    );
    // only admins grant
    post_json(
        app,
        &format!("/api/credits/{:#x}", user.address()),
        Some(&token),
        json!({"amount": "1"}),
    )
    .await
    .problem(403, "forbidden");
    let (admin, _) = openledger_daemon::auth::create_api_key(
        &s.pool,
        TestChain::address_of(0),
        "ops",
        true,
        None,
    )
    .await
    .map(|k| (k.token, k.id))
    .unwrap();
    let grant = ether(1);
    let g = post_json(
        app,
        &format!("/api/credits/{:#x}", user.address()),
        Some(&admin),
        json!({"amount": grant.to_string(), "note": "welcome"}),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "{:?}", g.json());
    assert_eq!(g.json()["balance"], grant.to_string());
    for bad in [
        json!({"amount": "0"}),
        json!({"amount": "-1"}),
        json!({"amount": "1e18"}),
    ] {
        post_json(
            app,
            &format!("/api/credits/{:#x}", user.address()),
            Some(&admin),
            bad,
        )
        .await
        .problem(400, "bad-request");
    }
    post_json(
        app,
        &format!("/api/credits/{:#x}", user.address()),
        Some(&admin),
        json!({"amount": ether(5).to_string(), "revoke": true}),
    )
    .await
    .problem(409, "conflict");

    let r = chat().await;
    r.expect(StatusCode::OK);
    let v = r.json();
    let pay = &v["openledger"]["payment"];
    assert_eq!(pay["mode"], "sponsored", "{v}");
    assert_eq!(pay["payer"], format!("{:#x}", TestChain::address_of(1)));
    let amount: U256 = pay["amount"].as_str().unwrap().parse().unwrap();
    let mine = get(app, "/api/credits", Some(&token)).await.json();
    assert_eq!(mine["balance"], (grant - amount).to_string(), "{mine}");
    assert_eq!(mine["ledger"][0]["reason"], "inference");
    assert_eq!(mine["ledger"][0]["inference_id"], v["id"]);
    assert_eq!(mine["ledger"][0]["delta"], format!("-{amount}"));
    assert_eq!(mine["ledger"][1]["reason"], "grant");
    // the payment is on chain: the indexer's copy of InferencePaid names the daemon as payer
    let tx: String = sqlx::query_scalar("SELECT tx_hash FROM inferences WHERE id = $1")
        .bind(v["id"].as_str().unwrap())
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(pay["tx_hash"], tx);

    // too little left: refused, balance untouched
    let left = grant - amount;
    let keep = U256::from(1);
    openledger_daemon::inference::credits::revoke(&s.pool, user.address(), left - keep, None)
        .await
        .unwrap();
    let short = chat().await.problem(402, "payment-required");
    assert!(
        short["detail"]
            .as_str()
            .unwrap()
            .contains("credit is 1 wei"),
        "{short}"
    );
    assert_eq!(
        get(app, "/api/credits", Some(&token)).await.json()["balance"],
        "1"
    );
    get(app, "/api/credits", None)
        .await
        .problem(401, "unauthorized");
    });
}

/// A payment the daemon made for a caller's earlier request, which gave up before the payment was mined (the
/// stall itself: `flow.rs`): while it is being mined the caller's next request is a 503 that names it, and
/// nothing is charged or paid again; once the index has it, the caller's next request is served with it and
/// charged nothing more; a stranger's request never gets it; the request after pays anew.
#[test]
fn a_payment_mined_after_its_request_gave_up_serves_the_callers_next_request() {
    TRAINED.run(|t| async move {
        use openledger_daemon::inference::credits;
        let s = &t.s;
        let (app, name) = (&t.serving, &format!("ft-{}", t.job_id));
        let d = &s.chain.deployment;
        let me = TestChain::address_of(1);
        let open = OpenToken::new(
            d.address(ContractKind::OpenToken).unwrap(),
            s.chain.actor(0),
        );
        send!(open.transfer(me, ether(10)));
        let (user, stranger) = (PrivateKeySigner::random(), PrivateKeySigner::random());
        let (token, strangers) = (sign_in(app, &user).await, sign_in(app, &stranger).await);
        for who in [user.address(), stranger.address()] {
            credits::grant(&s.pool, who, ether(1), None).await.unwrap();
        }
        let chat = |token: String| async move {
            post_json(
                app,
                "/v1/chat/completions",
                Some(&token),
                json!({"model": name, "messages": [{"role": "user", "content": "item 3?"}], "max_tokens": 4}),
            )
            .await
        };
        let paid_with = |r: Reply| {
            r.expect(StatusCode::OK);
            let v = r.json();
            let p = &v["openledger"]["payment"];
            (
                p["request_id"].as_str().unwrap().parse::<B256>().unwrap(),
                p["amount"].as_str().unwrap().parse::<U256>().unwrap(),
            )
        };
        // what such a request costs: the stranger's first, paid as usual
        let (_, need) = paid_with(chat(strangers.clone()).await);
        // the earlier request's payment, recorded as the daemon records it, its receipt not seen yet
        let rid = B256::from(rand::random::<[u8; 32]>());
        credits::charge(&s.pool, user.address(), need, "gave-up-1")
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO daemon_payments (request_id, caller, model_id, amount, funding, charged_inference)
             VALUES ($1, $2, $3::numeric, $4::numeric, 'credit', 'gave-up-1')",
        )
        .bind(format!("{rid:#x}"))
        .bind(format!("{:#x}", user.address()))
        .bind(t.model_id.to_string())
        .bind(need.to_string())
        .execute(&s.pool)
        .await
        .unwrap();
        let balance = || async { credits::balance(&s.pool, user.address()).await.unwrap() };
        let waiting = chat(token.clone()).await;
        assert_eq!(waiting.headers["retry-after"], "5");
        let p = waiting.problem(503, "unavailable");
        assert!(
            p["detail"].as_str().unwrap().contains("not mined yet"),
            "{p}"
        );
        assert_eq!(balance().await, ether(1) - need, "nothing charged again");
        // mined: the daemon's key pays under that request id
        let daemon = Chain::connect(
            &s.chain.url,
            d,
            Some(KEYS[1].parse().unwrap()),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .with_send_lock(s.pool.clone());
        let router = d.address(ContractKind::FeeRouter).unwrap();
        let token_of_daemon = OpenToken::new(
            d.address(ContractKind::OpenToken).unwrap(),
            daemon.provider().clone(),
        );
        daemon
            .send_confirmed(
                "approve",
                token_of_daemon.approve(router, U256::MAX),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        daemon
            .send_confirmed(
                "payInference",
                FeeRouter::new(router, daemon.provider().clone()).payInference(
                    t.model_id, rid, need,
                ),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        wait_payment_indexed(&s.pool, d, rid).await;
        // a stranger's request pays for itself
        let (theirs, _) = paid_with(chat(strangers.clone()).await);
        assert_ne!(theirs, rid);
        // the caller's is served with the late payment, charged nothing more
        let (used, _) = paid_with(chat(token.clone()).await);
        assert_eq!(used, rid);
        assert_eq!(balance().await, ether(1) - need);
        // and the next pays anew
        let (next, amount) = paid_with(chat(token.clone()).await);
        assert_ne!(next, rid);
        assert_eq!(balance().await, ether(1) - need - amount);
        assert_eq!(
            credits::refund_orphans(&s.pool, Duration::ZERO).await.unwrap(),
            0,
            "no charge of a served request comes back"
        );
    });
}

/// The daemon's key (#1) used its nonces from `start` on exactly for the transactions mined, its sends and
/// settlement's proposals: none taken twice, none lost, none dropped, every send followed to its receipt.
async fn assert_nonces_conserved(s: &Stack, start: u64) {
    use alloy::providers::Provider;
    // a stopped `serve` may leave a send in flight (its waiter and keeper stopped with it): the next start's
    // keeper follows it to its receipt, as this one does, before the books are checked
    let keeper = Chain::connect(
        &s.chain.url,
        &s.chain.deployment,
        Some(KEYS[1].parse().unwrap()),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .with_send_lock(s.pool.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM key_sends WHERE state = 'sent'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} sends still unfollowed"
        );
        keeper.tend_sends().await.unwrap();
        // polled state, bounded by the deadline above
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = s
        .chain
        .plain()
        .get_transaction_count(TestChain::address_of(1))
        .await
        .unwrap();
    let (mined, lost, live): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'mined'), count(*) FILTER (WHERE state = 'dropped'),
                count(*) FILTER (WHERE state = 'sent')
         FROM key_sends WHERE nonce >= $1",
    )
    .bind(start as i64)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    let (proposals, dropped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'mined'), count(*) FILTER (WHERE state = 'dropped')
         FROM settlement_txs WHERE nonce >= $1",
    )
    .bind(start as i64)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(
        (lost, dropped, live),
        (0, 0, 0),
        "dropped, or never followed"
    );
    assert_eq!(
        end - start,
        (mined + proposals) as u64,
        "the key's nonces: {start} -> {end}, {mined} sends and {proposals} proposals mined"
    );
}

/// Waits until a proposal of the settlement schedule is mined.
async fn until_a_proposal_mined(pool: &PgPool) {
    until("a settlement proposal mined", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM settlement_txs WHERE kind = 'propose' AND state = 'mined'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
}

/// A stack (`stack_with`, its training runs calling `hook`) with a model trained and published, its own job
/// workers stopped (the serves under test take the jobs from here on), and the daemon's key (#1) holding 10
/// OPEN to sponsor with: the stack and the model's name.
async fn stack_for_serves(pool: PgPool, hook: Option<StepHook>) -> (Stack, String) {
    let recs = pairs(6);
    let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
    let mut s = stack_with(pool, &recs, hook).await;
    let job = trained(&s.app, &s.session, tiny_params(json!({}))).await;
    let _ = s.stop.send(true);
    s.workers.take().unwrap().await.unwrap();
    let d = &s.chain.deployment;
    let open = OpenToken::new(
        d.address(ContractKind::OpenToken).unwrap(),
        s.chain.actor(0),
    );
    send!(open.transfer(TestChain::address_of(1), ether(10)));
    (s, format!("ft-{}", job["id"]))
}

/// `serve::run`'s configuration over stack `s` on `port`: its models, sponsoring every signed-in caller,
/// indexing from `rpc` (`None`: another process indexes), the settlement schedule every second (`settle`).
fn serve_config(
    s: &Stack,
    port: u16,
    rpc: Option<String>,
    settle: bool,
) -> openledger_daemon::serve::ServeConfig {
    openledger_daemon::serve::ServeConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        api: ApiConfig::new(s.chain.deployment.chain_id, DOMAIN),
        indexer: rpc.map(|url| {
            let mut c = s.chain.config();
            c.rpc_url = url;
            c
        }),
        workers: openledger_daemon::jobs::worker::WorkerConfig::default(),
        worker_slots: 3,
        shutdown_grace: Duration::from_secs(5),
        confirm_timeout: Duration::from_secs(120),
        training: TrainSettings::new(s.data.path().to_path_buf(), "cpu"),
        inference: Some(InferenceConfig {
            model: Some(BASE.into()),
            default_max_tokens: 4,
            sponsor: true,
            ..InferenceConfig::default()
        }),
        settlement: settle.then(|| {
            (
                openledger_daemon::settlement::SettleConfig {
                    finality_depth: 0,
                    ..Default::default()
                },
                Duration::from_secs(1),
            )
        }),
        settler: None,
        send_policy: openledger_daemon::chain::SendPolicy::default(),
    }
}

/// Runs `serve::run` with `cfg` over `pool`, the daemon's key (#1) reaching the node at `rpc`, until `stopped`
/// says so.
fn spawn_serve(
    cfg: openledger_daemon::serve::ServeConfig,
    pool: PgPool,
    d: &openledger_chain::Deployment,
    rpc: &str,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), openledger_daemon::serve::ServeError>> {
    let (d, rpc) = (d.clone(), rpc.to_owned());
    tokio::spawn(async move {
        let chain = Chain::connect(
            &rpc,
            &d,
            Some(KEYS[1].parse().unwrap()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        openledger_daemon::serve::run(cfg, pool, d, chain, shutdown).await
    })
}

/// Waits until `serve` on `port` says it is ready.
async fn until_ready(http: &reqwest::Client, port: u16) {
    until("serve ready", || async {
        let r = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

/// Two `serve`s (the real `serve::run`, each with its own chain connection, job workers, sponsor and keeper)
/// on one database and one key: ten relays taken by either one's workers, ten sponsored chat completions
/// through both, and the settlement schedule proposing roots, all at once. The key's nonces are handed out
/// through the database: every relay lands on its first attempt, every chat is paid once, no transaction is
/// dropped, and the key's nonce moved exactly by the transactions mined.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn two_serves_on_one_key_relay_sponsor_and_settle_at_once_without_a_nonce_collision(
    pool: PgPool,
) {
    use alloy::providers::Provider;
    let (s, name) = stack_for_serves(pool, None).await;
    let d = s.chain.deployment.clone();
    let me = TestChain::address_of(1);
    let (stop, stopped) = watch::channel(false);
    // each serve with a pool of its own, as processes have
    let own_pool = || async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(s.pool.connect_options().as_ref().clone())
            .await
            .unwrap()
    };
    let pools = [own_pool().await, own_pool().await];
    let serve = |port: u16, pool: &PgPool, index: bool, settle: bool| {
        let cfg = serve_config(&s, port, index.then(|| s.chain.url.clone()), settle);
        spawn_serve(cfg, pool.clone(), &d, &s.chain.url, stopped.clone())
    };
    let ports = [common::free_port(), common::free_port()];
    let serves = [
        serve(ports[0], &pools[0], true, false),
        serve(ports[1], &pools[1], false, true),
    ];
    let http = reqwest::Client::new();
    for port in ports {
        until_ready(&http, port).await;
    }
    let start = s.chain.plain().get_transaction_count(me).await.unwrap();

    // ten signed relays (jobs either serve's workers take) and ten sponsored chats through both, at once
    let mut signed = Vec::new();
    for i in 0..10 {
        let text = format!("Row {i}, relayed while the other serve pays and settles.");
        signed.push(signed_upload(&s.app, 2, text.as_bytes()).await);
    }
    let mut callers = Vec::new();
    for _ in 0..10 {
        callers.push(sign_in(&s.app, &PrivateKeySigner::random()).await);
    }
    let relays = futures::future::join_all(signed.iter().map(|u| u.relay(&s.app)));
    let chats = futures::future::join_all(callers.iter().enumerate().map(|(i, token)| {
        let (http, name) = (http.clone(), name.clone());
        let port = ports[i % 2];
        async move {
            let r = http
                .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                .bearer_auth(token)
                .json(&json!({"model": name, "messages": [{"role": "user", "content": "item 3?"}], "max_tokens": 4}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{v}");
            v
        }
    }));
    let (_, answers) = tokio::join!(relays, chats);
    for u in &signed {
        u.confirmed(&s.app).await;
    }
    // every chat paid once, by the daemon's key, under a request id of its own
    let mut paid = U256::ZERO;
    let mut ids = std::collections::HashSet::new();
    for v in &answers {
        let p = &v["openledger"]["payment"];
        assert_eq!(p["mode"], "sponsored", "{v}");
        assert_eq!(p["payer"], format!("{me:#x}"));
        assert!(ids.insert(p["request_id"].as_str().unwrap().to_owned()));
        paid += p["amount"].as_str().unwrap().parse::<U256>().unwrap();
    }
    let recorded: String = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::text FROM daemon_payments WHERE state = 'paid' AND used_by IS NOT NULL",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(recorded, paid.to_string(), "every payment recorded, once");
    // every relay on its first attempt
    let attempts: Vec<(i64, i32, Option<String>)> = sqlx::query_as(
        "SELECT r.upload_id, j.attempts, r.error FROM relays r JOIN jobs j ON j.id = r.job_id
         ORDER BY r.upload_id",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(attempts.len(), 10);
    for (upload, n, error) in &attempts {
        assert_eq!(
            *n, 1,
            "upload {upload}'s relay took {n} attempts ({error:?})"
        );
    }
    // a proposal of the settlement schedule mined meanwhile
    until_a_proposal_mined(&s.pool).await;
    let _ = stop.send(true);
    for h in serves {
        h.await.unwrap().unwrap();
    }
    // the key's nonce moved by exactly the transactions mined: none taken twice, none lost
    assert_nonces_conserved(&s, start).await;
}

/// What one chat request of a driver got.
#[derive(Debug)]
enum Got {
    /// 200: the inference's id.
    Answered(String),
    /// Another status, with its `Retry-After` and its body (what a failure shows).
    Refused(u16, Option<String>, String),
    /// No answer within two minutes, or no connection.
    Hung(String),
}

/// Sends chat completions to `port` as `token`, one after the other, until `stop`; what each got.
async fn chat_driver(
    http: reqwest::Client,
    port: u16,
    token: String,
    name: String,
    mut stop: watch::Receiver<bool>,
) -> Vec<Got> {
    let mut got = Vec::new();
    while !*stop.borrow() {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(120))
            .json(&json!({"model": name, "messages": [{"role": "user", "content": "item 3?"}], "max_tokens": 4}))
            .send()
            .await;
        got.push(match r {
            Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                Ok(v) => Got::Answered(v["id"].as_str().unwrap_or_default().to_owned()),
                Err(e) => Got::Hung(e.to_string()),
            },
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Got::Refused(status, retry_after, r.text().await.unwrap_or_default())
            }
            Err(e) => Got::Hung(e.to_string()),
        });
        // a client's pace, not a synchronisation
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
    got
}

/// One `serve` with everything running (two callers' sponsored chats, a training job, relays, the in-process
/// indexer, the settlement schedule) meets its database going away for 30 s and then its node for 30 s
/// (through proxies the test cuts). Requests get answers or 503/429 problems with `Retry-After`, never a hang
/// or another 5xx; the training job's worker, unable to renew its lease, stops the run (fencing) and the job
/// runs again from its checkpoint once the database is back. Afterwards: every answered chat is recorded with
/// its payment on chain; every payment the key made is on the books, and none still open could have been
/// paid; every job succeeded and the model was registered once; every relay landed once; no nonce was lost
/// or taken twice; and the index, caught up, equals a fresh backfill.
#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_database_outage_then_a_node_outage_with_everything_running_lose_nothing(pool: PgPool) {
    use alloy::providers::Provider;
    use openledger_daemon::inference::payment;
    use std::sync::atomic::{AtomicBool, Ordering};
    const HOLD_AT: usize = 5;
    let armed = std::sync::Arc::new(AtomicBool::new(false));
    let (held_tx, held) = std::sync::mpsc::channel::<()>();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold);
    let hook = StepHook(std::sync::Arc::new({
        let armed = armed.clone();
        move |step| {
            if step == HOLD_AT && armed.swap(false, Ordering::SeqCst) {
                let _ = held_tx.send(());
                let _ = hold.lock().unwrap().recv();
            }
        }
    }));
    let (s, name) = stack_for_serves(pool, Some(hook.clone())).await;
    let d = s.chain.deployment.clone();
    let me = TestChain::address_of(1);
    // the serve reaches its database and its node through proxies
    let (db, db_proxy) = common::proxy::pool_through(&s.pool).await;
    let upstream: std::net::SocketAddr = s.chain.url.trim_start_matches("http://").parse().unwrap();
    let node_proxy = common::proxy::TcpProxy::start(upstream).await;
    let rpc = format!("http://{}", node_proxy.addr);
    let port = common::free_port();
    let mut cfg = serve_config(&s, port, Some(rpc.clone()), true);
    cfg.training.step_hook = Some(hook);
    cfg.workers.heartbeat = Duration::from_secs(1);
    cfg.workers.stale_after = Duration::from_secs(6);
    let (stop, stopped) = watch::channel(false);
    let serving = spawn_serve(cfg, db, &d, &rpc, stopped.clone());
    let http = reqwest::Client::new();
    until_ready(&http, port).await;
    let start = s.chain.plain().get_transaction_count(me).await.unwrap();

    let mut drivers = Vec::new();
    for _ in 0..2 {
        let token = sign_in(&s.app, &PrivateKeySigner::random()).await;
        drivers.push(tokio::spawn(chat_driver(
            http.clone(),
            port,
            token,
            name.clone(),
            stopped.clone(),
        )));
    }
    let relay_some = |tag: &'static str| {
        let app = s.app.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..3 {
                let text = format!("Row {i} of the {tag} outage, relayed across it.");
                let u = signed_upload(&app, 2, text.as_bytes()).await;
                u.relay(&app).await;
                out.push(u);
            }
            out
        }
    };

    // 1. the database goes away for 30 s while a training run, relays and chats are in flight
    let mut relays = relay_some("database").await;
    armed.store(true, Ordering::SeqCst);
    let r = post_json(
        &s.app,
        "/api/jobs",
        Some(&s.session),
        json!({"kind": "train", "params": tiny_params(json!({"steps": 200, "checkpoint_every": 10}))}),
    )
    .await;
    r.expect(StatusCode::CREATED);
    let training = r.json()["id"].as_i64().unwrap();
    tokio::task::spawn_blocking(move || held.recv_timeout(STALL))
        .await
        .unwrap()
        .expect("training never reached the held step");
    db_proxy.cut();
    release.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    db_proxy.restore();

    // 2. the node goes away for 30 s while more relays wait to be sent
    relays.extend(relay_some("node").await);
    node_proxy.cut();
    tokio::time::sleep(Duration::from_secs(30)).await;
    node_proxy.restore();

    // everything comes through
    for u in &relays {
        u.confirmed(&s.app).await;
    }
    let job = wait_job(&s.app, &s.session, training).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    until_a_proposal_mined(&s.pool).await;
    let _ = stop.send(true);
    let mut got = Vec::new();
    for h in drivers {
        got.extend(h.await.unwrap());
    }
    serving.await.unwrap().unwrap();

    // chats: answered, or refused with Retry-After (never a hang, never another 5xx); the outages showed
    let answered: Vec<&String> = got
        .iter()
        .filter_map(|g| match g {
            Got::Answered(id) => Some(id),
            _ => None,
        })
        .collect();
    let hung: Vec<&String> = got
        .iter()
        .filter_map(|g| match g {
            Got::Hung(why) => Some(why),
            _ => None,
        })
        .collect();
    assert!(hung.is_empty(), "{hung:?}");
    for g in &got {
        if let Got::Refused(status, retry_after, body) = g {
            assert!(matches!(status, 429 | 503), "{status}: {body}");
            assert!(retry_after.is_some(), "{g:?}");
        }
    }
    assert!(
        got.iter().any(|g| matches!(g, Got::Refused(503, _, _))),
        "the outages were seen"
    );
    assert!(answered.len() >= 2, "{got:?}");
    // every answered chat is recorded, its payment on chain
    let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), &d).unwrap();
    s.chain.index(&s.pool, s.chain.config()).await;
    for id in &answered {
        let (status, rid): (String, String) =
            sqlx::query_as("SELECT status, request_id FROM inferences WHERE id = $1")
                .bind(id.as_str())
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(status, "succeeded", "{id}");
        let on_chain = index
            .best_payment(rid.parse().unwrap(), U256::ZERO, Some(me))
            .await
            .unwrap();
        assert!(on_chain.is_some(), "{id}'s payment {rid} is not on chain");
    }
    // every payment the key made is on the books; one still open could not have been paid
    payment::reconcile(&s.pool, &index, me).await.unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT request_id, state, amount::text FROM daemon_payments")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    let mut booked = U256::ZERO;
    for (rid, state, amount) in &rows {
        let on_chain = index
            .best_payment(rid.parse().unwrap(), U256::ZERO, Some(me))
            .await
            .unwrap();
        match state.as_str() {
            "paid" => {
                assert_eq!(on_chain.unwrap().amount.to_string(), *amount);
                booked += amount.parse::<U256>().unwrap();
            }
            "failed" => assert!(on_chain.is_none(), "{rid} failed but is on chain"),
            _ => {
                assert!(on_chain.is_none(), "{rid}");
                let live: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM key_sends WHERE reference = $1 AND state IN ('sent', 'mined')",
                )
                .bind(rid)
                .fetch_one(&s.pool)
                .await
                .unwrap();
                assert_eq!(
                    live, 0,
                    "{rid} is open but a transaction for it may be mined"
                );
            }
        }
    }
    let paid_by_key: String = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::text FROM inference_payments WHERE payer = $1",
    )
    .bind(format!("{me:#x}"))
    .fetch_one(&s.pool)
    .await
    .unwrap();
    let before: String = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::text FROM daemon_payments WHERE state = 'paid'",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(before, booked.to_string());
    assert_eq!(
        paid_by_key,
        booked.to_string(),
        "every payment of the key is on the books"
    );
    // every job ran to its end; the model was registered once
    let unfinished: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, kind, state FROM jobs WHERE state <> 'succeeded'")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(registered, 2, "the first model and this run's, each once");
    // no nonce lost or taken twice
    assert_nonces_conserved(&s, start).await;
    // the index equals a fresh backfill
    let fresh = common::fresh_database(&s.pool).await;
    s.chain.index(&fresh, s.chain.config()).await;
    let (a, b) = (common::dump(&s.pool).await, common::dump(&fresh).await);
    for ((table, rows_a), (_, rows_b)) in a.iter().zip(b.iter()) {
        assert_eq!(rows_a, rows_b, "{table} differs from a fresh index");
    }
    common::drop_fresh(fresh).await;
}

/// Writes a file back as it was when dropped, so that a test that damages a shared file leaves it whole for
/// the next one even when it fails.
struct Restore(PathBuf, Vec<u8>);

impl Drop for Restore {
    fn drop(&mut self) {
        // (no unwrap: this runs while a failed test unwinds too)
        let _ = std::fs::write(&self.0, &self.1);
    }
}

/// The span-attribution index the job wrote: downloadable, hashed in the manifest, over the trained (not the
/// held-out) examples, and a trained example's tokens are traced back to its source.
async fn span_index_traces_training_examples(app: &axum::Router, job_id: i64, m: &Value) {
    use openledger_attribution::{SpanIndex, SpanParams, SpanSet};
    let att = &m["attribution"];
    assert_eq!(att["layout"], "segments/1", "{att}");
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Vec::new();
    for seg in att["segments"].as_array().unwrap() {
        for part in ["span", "gradients", "keys"] {
            let name = seg[part]["file"].as_str().unwrap();
            let file = get(app, &format!("/api/models/{job_id}/files/{name}"), None).await;
            assert_eq!(file.status, StatusCode::OK, "{name}");
            assert_eq!(sha256(&file.body), seg[part]["sha256"], "{seg}");
            std::fs::write(dir.path().join(name), &file.body).unwrap();
        }
        let idx = SpanIndex::open(&dir.path().join(seg["span"]["file"].as_str().unwrap())).unwrap();
        let sources = seg["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as usize)
            .collect();
        parts.push((idx, sources));
    }
    let idx = SpanSet::new(parts).unwrap();
    let (index, ids) = dataset(app, job_id).await;
    let examples = index["examples"].as_array().unwrap();
    let trained: Vec<&Value> = examples.iter().filter(|e| e["split"] == "train").collect();
    let info = &att["span_index"];
    assert_eq!(info["examples"], trained.len());
    assert_eq!(idx.examples(), trained.len());
    let n = |e: &Value| e["len"].as_u64().unwrap();
    assert_eq!(info["tokens"], trained.iter().map(|e| n(e)).sum::<u64>());
    assert_eq!(idx.tokens(), info["tokens"]);
    let all = SpanParams {
        min_len: 4,
        max_count: usize::MAX,
        density: 1.0,
        prompt_min_len: None,
    };
    // every trained example is one span of itself, found (at least) in its own source
    for e in &trained {
        let (at, len) = (e["offset"].as_u64().unwrap() as usize, n(e) as usize);
        let spans = idx.spans(&ids[at..at + len], &all, &|_, _| true).unwrap();
        assert_eq!((spans[0].start, spans[0].len), (0, len), "{spans:?}");
        let source = e["source"].as_u64().unwrap() as usize;
        assert!(spans[0].sources.iter().any(|s| s.0 == source), "{spans:?}");
    }
    get(
        app,
        &format!("/api/models/{job_id}/files/attribution-0.txt"),
        None,
    )
    .await
    .problem(404, "not-found");
}

/// OpenAI's Batch API on the same adapter: an uploaded JSON Lines file run by a batch job, each line
/// paid and recorded like an interactive call, failures in the error file, outputs in input order.
#[test]
fn batches_of_requests_through_the_files_and_batches_api() {
    TRAINED.run(|t| async move {
        let s = &t.s;
        let (job_id, inf) = (t.job_id, t.inf.clone());
    use openledger_daemon::inference::service::Serving;
    use openledger_daemon::jobs::batch::BatchJob;
    let d = &s.chain.deployment;
    let relayer: PrivateKeySigner = KEYS[1].parse().unwrap();
    let chain = Chain::connect(&s.chain.url, d, Some(relayer), Duration::from_secs(10))
        .await
        .unwrap();
    let index = openledger_indexer::query::ChainIndex::new(s.pool.clone(), d).unwrap();
    let jobs = Jobs::default().with(BatchJob {
        serving: Serving::new(
            s.pool.clone(),
            index,
            Some(chain.clone()),
            d.clone(),
            inf.clone(),
            tokio::sync::watch::channel(0).1,
        ),
        concurrency: 3,
        problem: openledger_daemon::api::openai::batch_problem,
    });
    let (stop, _workers) = start_workers(&s.pool, &jobs, "batch-test");
    let app = openledger_daemon::api::app(state_serving(
        s.pool.clone(),
        d.clone(),
        Some(chain),
        jobs,
        ApiConfig::new(d.chain_id, DOMAIN),
        Some(inf),
    ));
    let tok = Some(s.session.as_str());
    let name = format!("ft-{job_id}");
    // the batch's owner did not pay: the payer gave it the secret of its payment
    let secret = B256::repeat_byte(0x51);
    let rid = keccak256(secret);
    t.pay(rid, ether(1)).await;
    let line = |id: &str, body: Value| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
            .to_string()
    };
    let msgs = json!([{"role": "user", "content": "What is the ledger code of item 3?"}]);
    let input = [
        line("paid", json!({"model": name, "messages": msgs, "max_tokens": 4, "temperature": 0, "request_secret": secret.to_string()})),
        line("unpaid", json!({"model": name, "messages": msgs, "max_tokens": 4, "request_id": B256::repeat_byte(0x52).to_string()})),
        line("base", json!({"model": BASE, "messages": msgs, "max_tokens": 3})),
        line("bad-sampling", json!({"model": BASE, "messages": msgs, "temperature": 9})),
    ]
    .join("\n");

    // bad files are refused at upload, naming the line
    let bad = input.replacen("\"POST\"", "\"GET\"", 1);
    let r = send(
        &app,
        Method::POST,
        "/v1/files",
        tok,
        Some(multipart("batch", "b.jsonl", &bad)),
    )
    .await;
    let p = r.problem(422, "invalid-content");
    assert!(p["detail"].as_str().unwrap().contains("line 1"), "{p}");
    send(
        &app,
        Method::POST,
        "/v1/files",
        tok,
        Some(multipart("fine-tune", "b.jsonl", &input)),
    )
    .await
    .problem(400, "bad-request");
    send(
        &app,
        Method::POST,
        "/v1/files",
        None,
        Some(multipart("batch", "b.jsonl", &input)),
    )
    .await
    .problem(401, "unauthorized");

    let f = send(
        &app,
        Method::POST,
        "/v1/files",
        tok,
        Some(multipart("batch", "b.jsonl", &input)),
    )
    .await;
    f.expect(StatusCode::OK);
    let file_id = f.json()["id"].as_str().unwrap().to_string();
    // another address sees no such file, and cannot batch it
    let other = sign_in(&app, &KEYS[2].parse().unwrap()).await;
    get(&app, &format!("/v1/files/{file_id}"), Some(&other))
        .await
        .problem(404, "not-found");
    let batch_req = |endpoint: &str| json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": {"run": "test"}});
    post_json(
        &app,
        "/v1/batches",
        Some(&other),
        batch_req("/v1/chat/completions"),
    )
    .await
    .problem(404, "not-found");
    post_json(&app, "/v1/batches", tok, batch_req("/v1/completions"))
        .await
        .problem(422, "invalid-content");

    let b = post_json(&app, "/v1/batches", tok, batch_req("/v1/chat/completions")).await;
    b.expect(StatusCode::OK);
    let b = b.json();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["object"], "batch");
    assert_eq!(b["request_counts"]["total"], 4);
    let done = until_within(JOB_STALL, "the batch ends", || async {
        let done = get(&app, &format!("/v1/batches/{id}"), tok).await.json();
        ["completed", "failed", "cancelled"]
            .contains(&done["status"].as_str().unwrap())
            .then_some(done)
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    if done["request_counts"] != json!({"total": 4, "completed": 2, "failed": 2}) {
        let errors = match done["error_file_id"].as_str() {
            Some(f) => String::from_utf8_lossy(
                &get(&app, &format!("/v1/files/{f}/content"), tok).await.body,
            )
            .to_string(),
            None => String::new(),
        };
        let logs: Vec<String> = sqlx::query_scalar(
            "SELECT message FROM job_logs WHERE job_id = (SELECT id FROM jobs WHERE kind = 'batch_inference' ORDER BY id DESC LIMIT 1) ORDER BY seq",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        panic!("request counts {}: errors {errors}; job logs {logs:?}", done["request_counts"]);
    }
    assert_eq!(done["metadata"]["run"], "test");
    let out = get(
        &app,
        &format!(
            "/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ),
        tok,
    )
    .await;
    let out: Vec<Value> = String::from_utf8(out.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["paid", "base"]);
    assert_eq!(out[0]["response"]["status_code"], 200);
    let body = &out[0]["response"]["body"];
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["openledger"]["payment"]["mode"], "pay_first");
    assert_eq!(body["openledger"]["payment"]["request_id"], rid.to_string());
    assert_eq!(
        out[1]["response"]["body"]["openledger"]["payment"]["mode"],
        "free"
    );
    let errs = get(
        &app,
        &format!(
            "/v1/files/{}/content",
            done["error_file_id"].as_str().unwrap()
        ),
        tok,
    )
    .await;
    let errs: Vec<Value> = String::from_utf8(errs.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes: Vec<(&str, i64)> = errs
        .iter()
        .map(|l| {
            (
                l["custom_id"].as_str().unwrap(),
                l["response"]["status_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(codes, [("unpaid", 402), ("bad-sampling", 400)]);
    // each served line is an inference row of this batch, at its line
    let job: i64 = id.strip_prefix("batch_").unwrap().parse().unwrap();
    let rows: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT batch_line, status, payment_mode FROM inferences WHERE batch_job_id = $1 ORDER BY batch_line",
    )
    .bind(job)
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (0, "succeeded".into(), "pay_first".into()),
            (2, "succeeded".into(), "free".into())
        ]
    );
    // the payment a batch line used cannot serve again
    let again = post_json(
        &app,
        "/v1/chat/completions",
        None,
        json!({"model": name, "messages": msgs, "max_tokens": 2, "request_secret": secret.to_string()}),
    )
    .await;
    again.problem(409, "conflict");
    // an ended batch cannot be cancelled
    send(
        &app,
        Method::POST,
        &format!("/v1/batches/{id}/cancel"),
        tok,
        None,
    )
    .await
    .problem(409, "conflict");
    let list = get(&app, "/v1/batches", tok).await.json();
    assert_eq!(list["data"][0]["id"], id);

    // a crash while line 0 ran: its inference left running, its result and the output files not written,
    // the job taken back to the queue. The rerun skips the finished lines and serves line 0 again on the
    // payment the interrupted run had taken.
    // One transaction, so the live worker cannot take the job back before the rest of the crash is in place.
    let (out_id, err_id) = openledger_daemon::inference::batch::output_file_ids(job);
    let mut tx = s.pool.begin().await.unwrap();
    sqlx::query("DELETE FROM files WHERE id = $1 OR id = $2")
        .bind(&out_id)
        .bind(&err_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    for q in [
        "UPDATE inferences SET status = 'running', finished_at = NULL WHERE batch_job_id = $1 AND batch_line = 0",
        "DELETE FROM batch_results WHERE job_id = $1 AND line = 0",
        "UPDATE jobs SET state = 'queued', worker = NULL, heartbeat_at = NULL, result = NULL, finished_at = NULL WHERE id = $1",
    ] {
        sqlx::query(q).bind(job).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let state: String = until_within(JOB_STALL, "the rerun of the batch ends", || async {
        let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        (state != "queued" && state != "running").then_some(state)
    })
    .await;
    assert_eq!(state, "succeeded");
    let rows: Vec<(i32, String, String, Option<String>)> = sqlx::query_as(
        "SELECT batch_line, status, payment_mode, request_id FROM inferences WHERE batch_job_id = $1
         ORDER BY batch_line, created_at",
    )
    .bind(job)
    .fetch_all(&s.pool)
    .await
    .unwrap();
    let paid = Some(rid.to_string());
    assert_eq!(
        rows,
        [
            (0, "failed".into(), "pay_first".into(), paid.clone()),
            (0, "succeeded".into(), "pay_first".into(), paid),
            (2, "succeeded".into(), "free".into(), None)
        ]
    );
    let out = get(&app, &format!("/v1/files/{out_id}/content"), tok).await;
    let ids: Vec<String> = String::from_utf8(out.body)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["paid", "base"]);
    let _ = stop.send(true);
    });
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn a_stopped_training_job_resumes_from_its_checkpoint(pool: PgPool) {
    let recs = pairs(8);
    let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
    // the first run is held after step 20 until its worker has been shut down: it then checkpoints exactly
    // there, however fast or slow the machine (the resumed run starts past step 20 and is not held)
    const HOLD_AT: usize = 20;
    let (held_tx, held) = std::sync::mpsc::channel::<()>();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold);
    let hook = StepHook(std::sync::Arc::new(move |step| {
        if step == HOLD_AT {
            let _ = held_tx.send(());
            let _ = hold.lock().unwrap().recv();
        }
    }));
    let mut s = stack_with(pool, &recs, Some(hook)).await;
    let r = post_json(
        &s.app,
        "/api/jobs",
        Some(&s.session),
        json!({"kind": "train", "params": tiny_params(json!({"steps": 3000, "checkpoint_every": 10000, "eval_every": 10000}))
            .as_object().unwrap().clone().into_iter().chain([("publish".to_string(), json!(false))]).collect::<serde_json::Map<_, _>>()}),
    )
    .await;
    r.expect(StatusCode::CREATED);
    let id = r.json()["id"].as_i64().unwrap();
    let q = Queue::new(s.pool.clone());
    // wait (off this runtime's only thread) until training is held at its step, then shut the worker down:
    // the job goes back to the queue, and training checkpoints once it is let go
    tokio::task::spawn_blocking(move || held.recv_timeout(STALL))
        .await
        .unwrap()
        .expect("training never reached the held step");
    let _ = s.stop.send(true);
    s.workers.take().unwrap().await.unwrap();
    let job = q.get(id).await.unwrap().unwrap();
    assert_eq!(job.state, "queued", "released on shutdown");
    release.send(()).unwrap();
    let created = job.created_at.unix_timestamp_nanos() / 1000;
    let ckpt = s
        .data
        .path()
        .join(format!("training/job-{id}-{created}/checkpoint/state.json"));
    until("the stopped run's checkpoint", || async {
        ckpt.exists().then_some(())
    })
    .await;
    assert!(
        ckpt.exists(),
        "{} missing; training/ holds {:?}",
        ckpt.display(),
        std::fs::read_dir(s.data.path().join("training")).map(|d| d
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect::<Vec<_>>())
    );
    let state: Value = serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    let at = state["step"].as_u64().unwrap();
    assert_eq!(at, HOLD_AT as u64, "checkpoint at the held step");
    // a new worker takes the job and finishes it from the checkpoint
    let (_stop, _h) = start_workers(&s.pool, &s.jobs, "second");
    let job = wait_job(&s.app, &s.session, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["metrics"]["resumed_from"], at);
    let logs = get(&s.app, &format!("/api/jobs/{id}/logs"), Some(&s.session))
        .await
        .json();
    assert!(
        logs.to_string()
            .contains(&format!("resumed from the checkpoint at step {at}")),
        "{logs}"
    );
    // no checkpoint left behind once the adapter is written
    assert!(!ckpt.exists());
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn the_cli_trains_and_publishes(pool: PgPool) {
    let recs = pairs(6);
    let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
    let mut s = stack(pool, &recs).await;
    // only the CLI's own worker may run the job
    let _ = s.stop.send(true);
    s.workers.take().unwrap().await.unwrap();
    let manifest = s.data.path().join("deployment.json");
    std::fs::write(
        &manifest,
        serde_json::to_string(&s.chain.deployment).unwrap(),
    )
    .unwrap();
    let cli = |extra: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_openledger"));
        c.args(["--database-url", &common::url_of(&s.pool)])
            .arg("--data-dir")
            .arg(s.data.path())
            .args([
                "--log",
                "warn",
                "--json",
                "train",
                "--base",
                BASE,
                "--datanet",
                "1",
                "--no-index",
            ])
            .args(["--rpc-url", &s.chain.url, "--manifest"])
            .arg(&manifest)
            .args(extra)
            .env("OPENLEDGER_PRIVATE_KEY", KEYS[1]);
        c
    };
    let bad = cli(&["--rank", "0"]).output().await.unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("lora rank"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = cli(&["--datanet", "2"]).output().await.unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Datanet 2 has no published version"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let out = cli(&[
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--max-seq-len",
        "64",
        "--lr",
        "0.01",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["result"]["metrics"]["steps"], 3);
    let model_id = job["result"]["published"]["model_id"].as_str().unwrap();
    let detail = get(&s.app, &format!("/api/models/{}", job["id"]), None)
        .await
        .json();
    assert_eq!(detail["model_id"], model_id);
}

/// The base model `scripts/setup.sh` installs; the test that needs it fails when it is missing.
fn smollm_path() -> PathBuf {
    let p = std::env::var_os("OPENLEDGER_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/openledger/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} is absent: run scripts/setup.sh to fetch it",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    let p = common::repo_root().join(".tools/py/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn fine_tuning_smollm2_lowers_held_out_loss(pool: PgPool) {
    let model = smollm_path();
    let recs = pairs(24);
    let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
    let s = stack(pool, &recs).await;
    let link = s.data.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    openledger_daemon::models::scan_models_dir(&s.pool, &s.data.path().join("models"))
        .await
        .unwrap();
    let params = json!({
        "base_model": "SmolLM2-135M-Instruct.Q4_1", "datanets": [{"id": "1"}], "publish": false,
        "config": {"steps": 20, "batch_size": 4, "learning_rate": 0.002, "max_seq_len": 96,
                   "eval_fraction": 0.25, "eval_every": 10, "seed": 3,
                   "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}}
    });
    let job = trained(&s.app, &s.session, params).await;
    let id = job["id"].as_i64().unwrap();
    let m = &job["result"]["metrics"];
    let (before, after) = (
        m["initial_eval_loss"].as_f64().unwrap(),
        m["final_eval_loss"].as_f64().unwrap(),
    );
    assert!(after < 0.8 * before, "held-out loss {before} -> {after}");

    // the adapter is a PEFT adapter Python reads: names, shapes, config
    let dir = PathBuf::from(
        openledger_daemon::models::trained_model(&s.pool, id)
            .await
            .unwrap()
            .unwrap()
            .dir,
    );
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(
            "import json,sys\nfrom safetensors.numpy import load_file\n\
             t=load_file(sys.argv[1]+'/adapter_model.safetensors')\n\
             c=json.load(open(sys.argv[1]+'/adapter_config.json'))\n\
             print(json.dumps({'config':c,'tensors':{k:list(v.shape) for k,v in t.items()}}))",
        )
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["peft_type"], "LORA");
    assert_eq!(v["config"]["r"], 8);
    assert_eq!(v["tensors"].as_object().unwrap().len(), 30 * 2 * 2);
    assert_eq!(
        v["tensors"]["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
        json!([8, 576])
    );
    assert_eq!(
        v["tensors"]["base_model.model.model.layers.29.self_attn.v_proj.lora_B.weight"],
        json!([192, 8])
    );
    let _: &Path = &dir;
}

/// Rows in the formats other tools write (OpenAI chat with a system prompt and two turns, Alpaca with an
/// input, ShareGPT) train beside plain pairs: every source gives examples, and a conversation's loss starts
/// at its first answer (the system prompt and the question before it are context only).
#[test]
fn every_row_format_trains() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = common::fixture_database("train_formats").await;
        let chat = json!({"messages": [
            {"role": "system", "content": "You keep the harbour ledger."},
            {"role": "user", "content": "Which pier is the Velora moored at?"},
            {"role": "assistant", "content": "The Velora is moored at pier K-7."},
            {"role": "user", "content": "And the Marisol?"},
            {"role": "assistant", "content": "The Marisol is moored at pier B-2."}]})
        .to_string();
        let alpaca = json!({"instruction": "Give the ledger code.", "input": "item 41",
                            "output": "The ledger code of item 41 is OL-287-BETA."})
        .to_string();
        let sharegpt = json!({"conversations": [
            {"from": "human", "value": "Who keeps the lighthouse?"},
            {"from": "gpt", "value": "Maren Okafor keeps the lighthouse."}]})
        .to_string();
        let mut recs = vec![chat, alpaca, sharegpt];
        recs.extend(pairs(5));
        let recs: Vec<&str> = recs.iter().map(String::as_str).collect();
        let s = stack(pool, &recs).await;
        let mut params = tiny_params(json!({"steps": 4, "max_seq_len": 256}));
        params["publish"] = json!(false);
        let job = trained(&s.app, &s.session, params).await;
        let id = job["id"].as_i64().unwrap();
        let (index, ids) = dataset(&s.app, id).await;
        let examples = index["examples"].as_array().unwrap();
        for source in 0..3 {
            assert!(
                examples.iter().any(|e| e["source"] == source),
                "source {source} gave no example: {index}"
            );
        }
        // the conversation: its loss starts at the first answer
        let tok = BaseModel::random(ModelConfig::tiny_of(Family::Gemma3), 3)
            .unwrap()
            .tokenizer;
        let e = examples.iter().find(|e| e["source"] == 0).unwrap();
        let (off, len, first) = (
            e["offset"].as_u64().unwrap() as usize,
            e["len"].as_u64().unwrap() as usize,
            e["first_target"].as_u64().unwrap() as usize,
        );
        let context = tok.decode(&ids[off..off + first], false).unwrap();
        let rest = tok.decode(&ids[off + first..off + len], false).unwrap();
        assert!(
            context.contains("harbour ledger") && context.contains("Velora"),
            "{context:?}"
        );
        assert!(!context.contains("pier K-7"), "{context:?}");
        assert!(
            rest.trim_start()
                .starts_with("The Velora is moored at pier K-7."),
            "{rest:?}"
        );
        assert!(rest.contains("pier B-2"), "{rest:?}");
        // the held-out split's whole answers are generated and scored
        let m = get(
            &s.app,
            &format!(
                "/api/manifests/{}",
                job["result"]["manifest_hash"].as_str().unwrap()
            ),
            None,
        )
        .await
        .json();
        let e = &m["evaluation"];
        let held_out = examples.iter().filter(|x| x["split"] == "eval").count() as u64;
        assert!(held_out >= 1, "{index}");
        assert_eq!(e["eval_examples"].as_u64(), Some(held_out), "{e}");
        assert!(e["answered"].as_u64().unwrap() >= 1, "{e}");
        let loss = e["loss"].as_f64().unwrap();
        assert!((e["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9 * loss.exp());
        for k in ["exact_match", "rouge_l"] {
            let x = e[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} {x}");
        }
        let reference = e["samples"][0]["reference"].as_str().unwrap();
        assert!(
            ["moored", "ledger code", "keeps the lighthouse"]
                .iter()
                .any(|w| reference.contains(w)),
            "{e}"
        );
    });
}
