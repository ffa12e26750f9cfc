//! The serving engine: batching must not change a sequence's tokens, adapters must act as in the training
//! forward pass, and bad requests must be refused without touching the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use openledger_model::serve::{
    AdapterRef, Engine, EngineConfig, Event, FinishReason, Finished, GenerateRequest, KvCache,
    Priority, SamplingParams, SeqStep, ServedAdapter, ServingModel, SubmitError, step,
};
use openledger_model::train::{Dataset, Record, TrainConfig, Trainer};
use openledger_model::{BaseModel, Forward, Llama, Lora, LoraConfig, ModelConfig, Precision, Proj};

fn tiny_quantized() -> BaseModel {
    BaseModel::random(ModelConfig::tiny(), 11)
        .unwrap()
        .quantized(GgmlDType::Q8_0)
        .unwrap()
}

fn lora_cfg(rank: usize, targets: &[Proj]) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        targets: targets.to_vec(),
    }
}

/// Greedy decoding of one sequence by itself, straight through `step`.
fn decode_alone(m: &ServingModel, prompt: &[u32], a: Option<&ServedAdapter>, n: usize) -> Vec<u32> {
    sample_alone(m, prompt, a, n, SamplingParams::greedy())
}

/// Decoding one sequence by itself with `params`, as the engine samples.
fn sample_alone(
    m: &ServingModel,
    prompt: &[u32],
    a: Option<&ServedAdapter>,
    n: usize,
    params: SamplingParams,
) -> Vec<u32> {
    let mut sampler = openledger_model::serve::Sampler::new(params, prompt);
    let c = m.config();
    let mut cache = KvCache::new(c.num_hidden_layers, prompt.len() + n, m.kv_dim());
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..n {
        let logits = step(
            m,
            &mut [SeqStep {
                tokens: &input,
                cache: &mut cache,
                adapter: a,
                want_logits: true,
            }],
        )
        .unwrap();
        let mut row = logits[0].clone();
        let t = sampler.sample(&mut row);
        out.push(t);
        input = vec![t];
    }
    out
}

type Collected = mpsc::Receiver<Event>;

/// How long a test waits for the engine before calling it stalled: a stall detector, far beyond what a
/// loaded machine needs, never a measure of speed.
const STALL: Duration = Duration::from_secs(300);

fn request(
    prompt: Vec<u32>,
    adapter: Option<AdapterRef>,
    max_tokens: usize,
) -> (GenerateRequest, Collected) {
    let (tx, rx) = mpsc::channel();
    (
        GenerateRequest {
            prompt,
            adapter,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop: vec![],
            ignore_eos: false,
            constraint: None,
            priority: Priority::Interactive,
            sink: Box::new(move |e| tx.send(e).is_ok()),
        },
        rx,
    )
}

fn finished(rx: &Collected) -> Result<Finished, String> {
    loop {
        match rx.recv_timeout(STALL).expect("engine stalled") {
            Event::Done(f) => return Ok(f),
            Event::Failed(e) => return Err(e),
            _ => {}
        }
    }
}

fn no_eos_engine_cfg() -> EngineConfig {
    EngineConfig {
        max_seqs: 8,
        max_batch_tokens: 7,
        adapter_cache_bytes: 64 << 20,
        kv_cache_bytes: 64 << 20,
        ..EngineConfig::default()
    }
}

#[test]
fn batched_decoding_with_mixed_adapters_matches_decoding_each_alone() {
    // int8 is what `serve` runs; candle's quantized kernels are the other serving path
    for precision in [Precision::Int8, Precision::Quantized] {
        batched_matches_alone(precision);
    }
}

fn batched_matches_alone(precision: Precision) {
    let base = tiny_quantized();
    let tok = base.tokenizer.clone();
    let model = ServingModel::new(Llama::new(&base, precision, &Device::Cpu).unwrap()).unwrap();
    let c = base.config.clone();
    // different ranks and targets in one batch
    let adapters: Vec<Arc<ServedAdapter>> = vec![
        Arc::new(ServedAdapter::random(
            "a4",
            &c,
            &lora_cfg(4, &[Proj::Q, Proj::V]),
            1,
        )),
        Arc::new(ServedAdapter::random("a8", &c, &lora_cfg(8, &Proj::ALL), 2)),
        Arc::new(ServedAdapter::random(
            "a16",
            &c,
            &lora_cfg(16, &[Proj::O, Proj::Down]),
            3,
        )),
    ];
    let prompts = [
        "hello there",
        "a much longer prompt than the others, so it is chunked",
        "x",
        "the base",
    ];
    let which = [Some(0), Some(1), Some(2), None];
    let n = 12;
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .zip(which)
        .map(|(p, w)| decode_alone(&model, &tok.encode(p).unwrap(), w.map(|i| &*adapters[i]), n))
        .collect();
    // the adapters really change the logits
    let first = |a: Option<&ServedAdapter>| {
        let p = tok.encode(prompts[0]).unwrap();
        let mut cache = KvCache::new(c.num_hidden_layers, p.len(), model.kv_dim());
        step(
            &model,
            &mut [SeqStep {
                tokens: &p,
                cache: &mut cache,
                adapter: a,
                want_logits: true,
            }],
        )
        .unwrap()
        .remove(0)
    };
    for a in &adapters {
        let (x, y) = (first(None), first(Some(a)));
        let d = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d > 1e-3, "adapter {} changes logits by only {d}", a.id);
    }
    // seeded sampling visits many different tokens: a stronger check that nothing leaks between rows
    let seeded = |i: usize| SamplingParams {
        temperature: 1.0,
        seed: Some(40 + i as u64),
        ..SamplingParams::default()
    };
    let sampled: Vec<Vec<u32>> = prompts
        .iter()
        .zip(which)
        .enumerate()
        .map(|(i, (p, w))| {
            sample_alone(
                &model,
                &tok.encode(p).unwrap(),
                w.map(|i| &*adapters[i]),
                n,
                seeded(i),
            )
        })
        .collect();
    assert!(
        sampled[0]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 3,
        "{:?}",
        sampled[0]
    );

    // one engine, all four at once; a 7-token step budget splits the long prompt across steps
    let engine = Engine::start(model, tok.clone(), no_eos_engine_cfg()).unwrap();
    engine.preload(adapters.clone()).unwrap();
    // greedy and seeded requests, all submitted at once
    let mut rxs: Vec<(Collected, &Vec<u32>)> = Vec::new();
    for (i, (p, w)) in prompts.iter().zip(which).enumerate() {
        for (params, want) in [
            (SamplingParams::greedy(), &alone[i]),
            (seeded(i), &sampled[i]),
        ] {
            let r = w.map(|i| AdapterRef {
                id: adapters[i].id.clone(),
                dir: "/nonexistent".into(),
                sha256: None,
            });
            let (mut req, rx) = request(tok.encode(p).unwrap(), r, n);
            req.sampling = params;
            engine.submit(req).unwrap();
            rxs.push((rx, want));
        }
    }
    for (i, (rx, want)) in rxs.iter().enumerate() {
        let f = finished(rx).unwrap();
        let stop_at = want
            .iter()
            .position(|t| engine.eos.contains(t))
            .unwrap_or(n);
        assert_eq!(f.tokens, want[..stop_at], "{precision:?}: request {i}");
        assert_eq!(
            f.reason,
            if stop_at < n {
                FinishReason::Stop
            } else {
                FinishReason::Length
            }
        );
    }
    assert!(
        engine
            .stats
            .steps
            .load(std::sync::atomic::Ordering::Relaxed)
            >= n as u64
    );
}

fn memorise_set() -> Vec<(usize, Record)> {
    vec![
        (0, Record::Text("alpha beta gamma delta".into())),
        (
            1,
            Record::Pair {
                prompt: "capital of France?".into(),
                completion: "Paris".into(),
            },
        ),
    ]
}

#[test]
fn a_trained_adapter_serves_as_the_training_forward_pass_computes() {
    let base = BaseModel::random(ModelConfig::tiny(), 5).unwrap();
    let f32_model = Llama::new(&base, Precision::F32, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        steps: Some(25),
        learning_rate: 2e-2,
        batch_size: 2,
        eval_fraction: 0.0,
        warmup_steps: Some(2),
        lora: lora_cfg(8, &Proj::ALL),
        max_seq_len: 64,
        ..TrainConfig::default()
    };
    let ds = Dataset::build(&base.tokenizer, &memorise_set(), &cfg).unwrap();
    let lora = Lora::init(&base.config, cfg.lora.clone(), 3, &Device::Cpu).unwrap();
    Trainer {
        model: &f32_model,
        config: cfg,
        dataset: &ds,
        pad: base.tokenizer.eos,
        checkpoint_dir: None,
    }
    .run(&lora, &AtomicBool::new(false), &mut |_| Ok(()))
    .unwrap();
    // written as training writes it, read back from disk with its hash checked
    let dir = tempfile::tempdir().unwrap();
    let st = lora.safetensors_bytes().unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), &st).unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_vec(&lora.peft_config("tiny")).unwrap(),
    )
    .unwrap();
    let hash = openledger_model::weights::hex0x(
        &openledger_model::weights::file_sha256(&dir.path().join("adapter_model.safetensors"))
            .unwrap(),
    );
    let r = AdapterRef {
        id: "trained".into(),
        dir: dir.path().to_path_buf(),
        sha256: Some(hash),
    };
    let served = ServedAdapter::load(&r, &base.config).unwrap();

    let prompt = base.tokenizer.encode("capital of France?").unwrap();
    let serving =
        ServingModel::new(Llama::new(&base, Precision::F32, &Device::Cpu).unwrap()).unwrap();
    let mut cache = KvCache::new(2, 64, serving.kv_dim());
    let got = step(
        &serving,
        &mut [SeqStep {
            tokens: &prompt,
            cache: &mut cache,
            adapter: Some(&served),
            want_logits: true,
        }],
    )
    .unwrap();
    let n = prompt.len();
    let ids = Tensor::from_vec(prompt.clone(), (1, n), &Device::Cpu).unwrap();
    let want = f32_model
        .forward(&ids, Some(&lora), &mut Forward::differentiable())
        .unwrap()
        .get(0)
        .unwrap()
        .get(n - 1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let diff = got[0]
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-3, "engine vs training forward: max |diff| {diff}");
    // and greedy continuations agree token for token with recomputing the training forward each time
    let engine_tokens = decode_alone(&serving, &prompt, Some(&served), 8);
    let mut seq = prompt.clone();
    for &t in &engine_tokens {
        let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
        let l = f32_model
            .forward(&ids, Some(&lora), &mut Forward::differentiable())
            .unwrap()
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(openledger_model::serve::sampling::argmax(&l), t);
        seq.push(t);
    }

    // a corrupted file is refused by its hash, before it is parsed
    let mut bad = st.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    std::fs::write(dir.path().join("adapter_model.safetensors"), &bad).unwrap();
    let err = ServedAdapter::load(&r, &base.config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256"), "{err}");
}

#[test]
fn bad_requests_are_refused_and_a_corrupt_adapter_fails_only_its_own_request() {
    let base = tiny_quantized();
    let tok = base.tokenizer.clone();
    let model =
        ServingModel::new(Llama::new(&base, Precision::Quantized, &Device::Cpu).unwrap()).unwrap();
    let engine = Engine::start(
        model,
        tok.clone(),
        EngineConfig {
            max_queue: 2,
            ..no_eos_engine_cfg()
        },
    )
    .unwrap();
    let ctx = engine.context();
    let p = tok.encode("hi").unwrap();
    let invalid = |prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams| {
        let (mut req, _rx) = request(prompt, None, max_tokens);
        req.sampling = sampling;
        match engine.submit(req) {
            Err(SubmitError::Invalid(e)) => e.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    };
    assert!(invalid(vec![], 4, SamplingParams::greedy()).contains("prompt"));
    assert!(invalid(vec![1; ctx], 4, SamplingParams::greedy()).contains("context"));
    assert!(invalid(p.clone(), ctx, SamplingParams::greedy()).contains("max_tokens"));
    assert!(invalid(p.clone(), 0, SamplingParams::greedy()).contains("max_tokens"));
    let hot = SamplingParams {
        temperature: 5.0,
        ..SamplingParams::default()
    };
    assert!(invalid(p.clone(), 4, hot).contains("temperature"));

    // The queue holds two. To fill it deterministically, a base request is held inside its sink on the
    // engine thread (at `Started`) until the test lets go: while it is held, the engine reads no command,
    // so the request for a missing adapter stays queued and its load cannot fail before the check.
    let (held, held_rx, started, release) = held_at_start(p.clone(), 6);
    engine.submit(held).unwrap();
    started
        .recv_timeout(STALL)
        .expect("the held request never started");
    let (bad, bad_rx) = request(
        p.clone(),
        Some(AdapterRef {
            id: "missing".into(),
            dir: "/nonexistent/adapter".into(),
            sha256: Some("0x00".into()),
        }),
        4,
    );
    engine.submit(bad).unwrap();
    assert_eq!(engine.in_flight(), 2);
    // the queue holds two: a third is turned away, and says how many are ahead of it
    let (third, _rx) = request(p.clone(), None, 4);
    assert!(matches!(engine.submit(third), Err(SubmitError::Busy(2))));
    release.send(()).unwrap();
    // the missing adapter fails its own request; the base request beside it completes
    let err = finished(&bad_rx).unwrap_err();
    assert!(err.contains("missing"), "{err}");
    let ok = finished(&held_rx).unwrap();
    assert_eq!(ok.tokens.len(), 6);
    // the engine drops a request's sink only after freeing its place
    drain(&held_rx);
    drain(&bad_rx);
    assert_eq!(engine.in_flight(), 0);

    // a client that goes away mid-stream frees its place
    let (tx, rx) = mpsc::channel();
    let mut seen = 0;
    let (mut gone, _) = request(p.clone(), None, 50);
    gone.sink = Box::new(move |e| {
        if matches!(e, Event::Token { .. }) {
            seen += 1;
        }
        let _ = tx.send(seen);
        seen < 3
    });
    engine.submit(gone).unwrap();
    // the sink (and the channel's sender in it) is dropped once the engine has ended the sequence
    // Started, three tokens; nothing after the sink asked to stop
    assert_eq!(drain(&rx), [0, 1, 2, 3]);
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(
        engine
            .stats
            .cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A request whose sink blocks the engine thread at `Started` until `release` gets a message (or is
/// dropped); `started` hears when it got there.
fn held_at_start(
    prompt: Vec<u32>,
    max_tokens: usize,
) -> (
    GenerateRequest,
    Collected,
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
) {
    let (mut req, rx) = request(prompt, None, max_tokens);
    req.ignore_eos = true;
    let (started_tx, started) = mpsc::channel();
    let (release, hold) = mpsc::channel::<()>();
    let mut inner = req.sink;
    req.sink = Box::new(move |e| {
        if matches!(e, Event::Started) {
            let _ = started_tx.send(());
            let _ = hold.recv();
        }
        inner(e)
    });
    (req, rx, started, release)
}

/// Everything still to come from a request's sink, once the engine has dropped it (which it does only
/// after ending the request and freeing its place).
fn drain<T>(rx: &mpsc::Receiver<T>) -> Vec<T> {
    let mut rest = Vec::new();
    loop {
        match rx.recv_timeout(STALL) {
            Ok(x) => rest.push(x),
            Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("engine stalled"),
        }
    }
}

#[test]
fn interactive_requests_are_admitted_before_waiting_batch_requests() {
    let base = tiny_quantized();
    let tok = base.tokenizer.clone();
    let model =
        ServingModel::new(Llama::new(&base, Precision::Quantized, &Device::Cpu).unwrap()).unwrap();
    // one sequence at a time: whoever is admitted next shows the order
    let engine = Engine::start(
        model,
        tok,
        EngineConfig {
            max_seqs: 1,
            ..no_eos_engine_cfg()
        },
    )
    .unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let mut go = Some(go);
    let submit = |name: &'static str, priority: Priority, hold: Option<mpsc::Receiver<()>>| {
        let (mut req, rx) = request(vec![5, 6, 7], None, 4);
        req.priority = priority;
        req.ignore_eos = true;
        let tx = started_tx.clone();
        let mut inner = req.sink;
        let mut hold = hold;
        req.sink = Box::new(move |e| {
            match &e {
                Event::Started => {
                    let _ = tx.send(name);
                }
                // holds the engine thread at its first token until the test has queued the others
                Event::Token { .. } => {
                    if let Some(h) = hold.take() {
                        let _ = h.recv();
                    }
                }
                _ => {}
            }
            inner(e)
        });
        engine.submit(req).unwrap();
        rx
    };
    // a batch request occupies the only slot; two more batch requests wait, then an interactive one
    let first = submit("batch-0", Priority::Batch, go.take());
    assert_eq!(started.recv_timeout(STALL).unwrap(), "batch-0");
    let b1 = submit("batch-1", Priority::Batch, None);
    let b2 = submit("batch-2", Priority::Batch, None);
    let i = submit("interactive", Priority::Interactive, None);
    go_tx.send(()).unwrap();
    for rx in [&first, &b1, &b2, &i] {
        finished(rx).unwrap();
    }
    let order: Vec<&str> = started.try_iter().collect();
    assert_eq!(order, ["interactive", "batch-1", "batch-2"]);
}
