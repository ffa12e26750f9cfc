//! Multi-adapter serving on a base model, S-LoRA's protocol scaled to a small CPU machine:
//! `cargo run --release -p openledger-model --example bench_serve -- <model.gguf> [requests]`.
//!
//! Requests have prompts and outputs of 8-128 tokens (uniform; outputs run to their length), arrive all at
//! once (saturation) or as a Poisson process at a fraction of the saturation rate, and name one of N
//! random rank-8 q,v adapters (uniform, or skewed: p(i) ~ 1/(i+1)). Baselines in the same process: the base
//! model alone on the same requests, and merge-and-swap (serve requests in arrival order, merging each new
//! adapter into the quantized q/v weights before its run: dequantize, add scale*B*A, requantize, which is
//! measured for real; the merged model costs what the base model costs, so the run is served on it).
//! Prints `key value` lines for `scripts/bench-serve.sh`.
//!
//! With `BENCH_SCALE=1b` (`scripts/bench-1b.sh`, billion-parameter models) it measures only what that
//! benchmark reports: single-stream decode (prefill excluded, as llama.cpp's baseline measures it), the
//! base model at saturation, 8 adapters at saturation, and the process's memory.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::quantized::QTensor;
use openledger_model::q8::Q8Matrix;
use openledger_model::serve::{
    AdapterRef, Engine, EngineConfig, Event, Finished, GenerateRequest, Priority, SamplingParams,
    ServedAdapter, ServingModel,
};
use openledger_model::weights::Weight;
use openledger_model::{BaseModel, Device, Llama, LoraConfig, Precision, Proj};
use rand::{Rng, SeedableRng};

mod common;
use common::{peak_rss_mb, rss_mb};

#[derive(Clone)]
struct Req {
    prompt: Vec<u32>,
    out: usize,
    adapter: Option<usize>,
    /// Offset from the start of the run.
    at: Duration,
}

fn workload(n: usize, vocab: usize, adapters: usize, skewed: bool, seed: u64) -> Vec<Req> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let weights: Vec<f64> = (0..adapters.max(1))
        .map(|i| if skewed { 1.0 / (i + 1) as f64 } else { 1.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    (0..n)
        .map(|_| {
            let len = rng.random_range(8..=128);
            let prompt = (0..len)
                .map(|_| rng.random_range(100..vocab as u32))
                .collect();
            let adapter = (adapters > 0).then(|| {
                let mut u = rng.random::<f64>() * total;
                weights
                    .iter()
                    .position(|w| {
                        u -= w;
                        u <= 0.0
                    })
                    .unwrap_or(adapters - 1)
            });
            Req {
                prompt,
                out: rng.random_range(8..=128),
                adapter,
                at: Duration::ZERO,
            }
        })
        .collect()
}

/// Poisson arrivals at `rate` requests/s.
fn with_arrivals(mut reqs: Vec<Req>, rate: f64, seed: u64) -> Vec<Req> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    for r in &mut reqs {
        t += -(1.0 - rng.random::<f64>()).ln() / rate;
        r.at = Duration::from_secs_f64(t);
    }
    reqs
}

#[derive(Debug, Default)]
struct RunStats {
    tokens_per_s: f64,
    requests_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn adapter_ref(i: usize, dir: Option<&std::path::Path>) -> AdapterRef {
    let id = format!("a{i}");
    AdapterRef {
        dir: dir.map(|d| d.join(&id)).unwrap_or_default(),
        id,
        sha256: None,
    }
}

/// Submits the requests on their schedule and waits for all of them.
fn run(engine: &Engine, reqs: &[Req], disk: Option<&std::path::Path>) -> RunStats {
    let (done, wall) = finish_all(engine, reqs, disk);
    let tokens: usize = done.iter().map(|f| f.tokens.len()).sum();
    let mut ttft: Vec<f64> = done
        .iter()
        .map(|f| f.first_token.as_secs_f64() * 1e3)
        .collect();
    RunStats {
        tokens_per_s: tokens as f64 / wall,
        requests_per_s: done.len() as f64 / wall,
        ttft_p50_ms: pct(&mut ttft, 0.5),
        ttft_p99_ms: pct(&mut ttft, 0.99),
    }
}

/// The requests' results and the wall time from the first submission to the last answer.
fn finish_all(
    engine: &Engine,
    reqs: &[Req],
    disk: Option<&std::path::Path>,
) -> (Vec<Finished>, f64) {
    let (tx, rx) = mpsc::channel::<Finished>();
    let start = Instant::now();
    for r in reqs {
        if let Some(wait) = r.at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        loop {
            let tx = tx.clone();
            let req = GenerateRequest {
                prompt: r.prompt.clone(),
                adapter: r.adapter.map(|i| adapter_ref(i, disk)),
                sampling: SamplingParams::greedy(),
                max_tokens: r.out,
                stop: vec![],
                ignore_eos: true,
                constraint: None,
                priority: Priority::Interactive,
                sink: Box::new(move |e| match e {
                    Event::Done(f) => tx.send(f).is_ok(),
                    Event::Failed(m) => panic!("request failed: {m}"),
                    _ => true,
                }),
            };
            match engine.submit(req) {
                Ok(()) => break,
                Err(openledger_model::serve::SubmitError::Busy(_)) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    drop(tx);
    let done: Vec<Finished> = rx.iter().collect();
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(done.len(), reqs.len());
    (done, wall)
}

/// One request at a time (greedy, `out` new tokens after a 6-token prompt): decode tokens/s from the first
/// generated token on, the median of `runs` runs after a warm-up.
fn single_stream(engine: &Engine, vocab: usize, out: usize, runs: usize) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for i in 0..=runs {
        let mut req = workload(1, vocab, 0, false, 50 + i as u64).remove(0);
        req.prompt.truncate(6);
        req.out = out;
        let f = finish_all(engine, &[req], None).0.remove(0);
        let decode = (f.total - f.first_token).as_secs_f64();
        if i > 0 {
            rates.push((f.tokens.len() - 1) as f64 / decode);
        }
    }
    Ok(pct(&mut rates, 0.5))
}

/// Merges one adapter into the q/v weights for real, into the format the engine serves (int8: dequantize,
/// add scale*B*A, repack as int8 blocks; Q8_0: the same through candle's quantizer) and returns how long it
/// took; the merged tensors are dropped (serving on them costs what the base model costs).
fn merge_once(
    base: &BaseModel,
    a: &ServedAdapter,
    precision: Precision,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for l in 0..base.config.num_hidden_layers {
        for (p, name) in [(Proj::Q, "attn_q"), (Proj::V, "attn_v")] {
            let w = base.weight(&format!("blk.{l}.{name}.weight"))?;
            let delta = a
                .delta(&base.config, l, p)?
                .ok_or_else(|| anyhow::anyhow!("the adapter does not target {p:?}"))?;
            let merged = (w.dense(&Device::Cpu)? + delta)?;
            match (precision, w) {
                (Precision::Quantized, Weight::Quantized(q)) => {
                    std::hint::black_box(QTensor::quantize(&merged, q.dtype())?);
                }
                _ => {
                    let (rows, cols) = merged.dims2()?;
                    let v = merged.flatten_all()?.to_vec1::<f32>()?;
                    std::hint::black_box(Q8Matrix::quantize(&v, rows, cols)?);
                }
            }
        }
    }
    Ok(t.elapsed())
}

/// Merge-and-swap: arrival order, one adapter at a time; consecutive requests for the same adapter share
/// a batch.
fn merge_and_swap(
    engine: &Engine,
    base: &BaseModel,
    precision: Precision,
    adapters: &[Arc<ServedAdapter>],
    reqs: &[Req],
) -> anyhow::Result<(RunStats, f64)> {
    let start = Instant::now();
    let mut merges = Vec::new();
    let mut tokens = 0;
    let mut i = 0;
    let mut current = None;
    while i < reqs.len() {
        let a = reqs[i].adapter;
        let mut j = i;
        while j < reqs.len() && reqs[j].adapter == a {
            j += 1;
        }
        if a != current
            && let Some(k) = a
        {
            merges.push(merge_once(base, &adapters[k], precision)?.as_secs_f64() * 1e3);
            current = a;
        }
        let group: Vec<Req> = reqs[i..j]
            .iter()
            .map(|r| Req {
                adapter: None,
                at: Duration::ZERO,
                ..r.clone()
            })
            .collect();
        run(engine, &group, None);
        tokens += group.iter().map(|r| r.out).sum::<usize>();
        i = j;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok((
        RunStats {
            tokens_per_s: tokens as f64 / wall,
            requests_per_s: reqs.len() as f64 / wall,
            ..RunStats::default()
        },
        pct(&mut merges, 0.5),
    ))
}

fn report(name: &str, s: &RunStats) {
    println!("{name}_tokens_per_s {:.1}", s.tokens_per_s);
    println!("{name}_requests_per_s {:.3}", s.requests_per_s);
    if s.ttft_p50_ms.is_finite() {
        println!("{name}_ttft_p50_ms {:.0}", s.ttft_p50_ms);
        println!("{name}_ttft_p99_ms {:.0}", s.ttft_p99_ms);
    }
    eprintln!(
        "{name}: {:.1} tokens/s, {:.3} requests/s, first token p50 {:.0} ms p99 {:.0} ms",
        s.tokens_per_s, s.requests_per_s, s.ttft_p50_ms, s.ttft_p99_ms
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: bench_serve <model.gguf> [requests] [max adapters]")
    })?;
    let n_req: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(48);
    let max_n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    // the engine's weights: int8 (the serving default) or candle's Q8_0 kernels, for comparison
    let precision = match std::env::var("BENCH_PRECISION").as_deref() {
        Ok("q8_0") => Precision::Quantized,
        Ok("int8") | Err(_) => Precision::Int8,
        Ok(other) => anyhow::bail!("BENCH_PRECISION={other}: int8 or q8_0"),
    };
    println!("precision {precision:?}");
    let dev = Device::Cpu;
    let load = || BaseModel::load(std::path::Path::new(path), &dev, Some("0x00".into()));
    // candle's kernels want Q8_0 blocks; the int8 engine repacks from the file's blocks directly
    let base = match precision {
        Precision::Quantized => load()?.with_fast_kernels()?,
        _ => load()?,
    };
    let c = base.config.clone();
    let vocab = c.vocab_size;
    let lcfg = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::V],
    };
    let cfg = EngineConfig {
        adapter_cache_bytes: 16 << 30,
        ..EngineConfig::default()
    };
    let model = ServingModel::new(Llama::new(&base, precision, &dev)?)?;
    let engine = Engine::start(model, base.tokenizer.clone(), cfg.clone())?;
    println!("requests {n_req}");
    println!("max_seqs {}", cfg.max_seqs);

    // warm-up (page in the weights, spin up the thread pool)
    run(&engine, &workload(4, vocab, 0, false, 99), None);
    println!("model_parameters {}", c.num_parameters());
    println!("family {:?}", c.family);

    if std::env::var("BENCH_SCALE").as_deref() == Ok("1b") {
        println!(
            "single_tokens_per_s {:.2}",
            single_stream(&engine, vocab, 64, 3)?
        );
        let base_reqs = workload(n_req, vocab, 0, false, 1);
        report("base", &run(&engine, &base_reqs, None));
        let adapters: Vec<Arc<ServedAdapter>> = (0..8)
            .map(|i| Arc::new(ServedAdapter::random(format!("a{i}"), &c, &lcfg, i as u64)))
            .collect();
        engine
            .preload(adapters)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut reqs = base_reqs.clone();
        for (r, w) in reqs.iter_mut().zip(workload(n_req, vocab, 8, false, 2)) {
            r.adapter = w.adapter;
        }
        report("n8_uniform", &run(&engine, &reqs, None));
        println!("rss_mb {:.0}", rss_mb());
        println!("peak_rss_mb {:.0}", peak_rss_mb());
        return Ok(());
    }

    // the base model alone, at saturation
    let base_reqs = workload(n_req, vocab, 0, false, 1);
    let base_sat = run(&engine, &base_reqs, None);
    report("base", &base_sat);

    let mut adapters: Vec<Arc<ServedAdapter>> = Vec::new();
    let rss0 = rss_mb();
    let mut sat_2048 = None;
    for n in [1usize, 8, 64, 512, 2048]
        .into_iter()
        .filter(|&n| n <= max_n)
    {
        let fresh: Vec<Arc<ServedAdapter>> = (adapters.len()..n)
            .map(|i| Arc::new(ServedAdapter::random(format!("a{i}"), &c, &lcfg, i as u64)))
            .collect();
        adapters.extend(fresh.iter().cloned());
        engine.preload(fresh).map_err(|e| anyhow::anyhow!("{e}"))?;
        // same prompts and lengths as the base run, each naming an adapter
        let mut reqs = base_reqs.clone();
        for (r, w) in reqs.iter_mut().zip(workload(n_req, vocab, n, false, 2)) {
            r.adapter = w.adapter;
        }
        let s = run(&engine, &reqs, None);
        report(&format!("n{n}_uniform"), &s);
        let bytes: usize = adapters.iter().map(|a| a.bytes()).sum();
        println!("n{n}_adapter_mb {:.1}", bytes as f64 / 1048576.0);
        println!("n{n}_rss_growth_mb {:.1}", rss_mb() - rss0);
        if n == max_n {
            let mut skew = base_reqs.clone();
            for (r, w) in skew.iter_mut().zip(workload(n_req, vocab, n, true, 3)) {
                r.adapter = w.adapter;
            }
            report(&format!("n{n}_skewed"), &run(&engine, &skew, None));
            for frac in [0.25, 0.5, 0.75, 1.0] {
                let timed = with_arrivals(reqs.clone(), s.requests_per_s * frac, 4);
                report(
                    &format!("n{n}_uniform_load{}", (frac * 100.0) as u32),
                    &run(&engine, &timed, None),
                );
            }
            // merge-and-swap on the same requests: one adapter merged into the weights at a time
            let (mas, merge_ms) = merge_and_swap(&engine, &base, precision, &adapters, &reqs)?;
            report(&format!("n{n}_merge_swap"), &mas);
            println!("merge_ms_p50 {merge_ms:.0}");
            println!(
                "vs_merge_swap_ratio {:.2}",
                s.tokens_per_s / mas.tokens_per_s
            );
            sat_2048 = Some(s);
        }
    }
    if let Some(s) = sat_2048 {
        println!(
            "vs_base_ratio {:.3}",
            s.tokens_per_s / base_sat.tokens_per_s
        );
    }

    // adapters from disk through a small cache: cold loads and the hit rate under a skewed load
    let dir = std::env::temp_dir().join(format!("bench-serve-{}", std::process::id()));
    let on_disk = 64;
    let mut loads = Vec::new();
    for (i, a) in adapters.iter().take(on_disk).enumerate() {
        let d = dir.join(format!("a{i}"));
        std::fs::create_dir_all(&d)?;
        let lora = a.to_lora(&c)?;
        std::fs::write(
            d.join("adapter_model.safetensors"),
            lora.safetensors_bytes()?,
        )?;
        std::fs::write(
            d.join("adapter_config.json"),
            serde_json::to_vec(&lora.peft_config("bench"))?,
        )?;
        let t = Instant::now();
        std::hint::black_box(ServedAdapter::load(&adapter_ref(i, Some(&dir)), &c)?);
        loads.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("cold_load_p50_ms {:.1}", pct(&mut loads, 0.5));
    println!("cold_load_p99_ms {:.1}", pct(&mut loads, 0.99));
    let cfg_ref = cfg.clone();
    let small = EngineConfig {
        adapter_cache_bytes: 16 * adapters[0].bytes(),
        ..cfg
    };
    drop(engine);
    let model = ServingModel::new(Llama::new(&base, precision, &dev)?)?;
    let disk_engine = Engine::start(model, base.tokenizer.clone(), small)?;
    let mut reqs = base_reqs.clone();
    for (r, w) in reqs
        .iter_mut()
        .zip(workload(n_req, vocab, on_disk.min(adapters.len()), true, 5))
    {
        r.adapter = w.adapter;
    }
    let st = &disk_engine.stats;
    let counts = || {
        (
            st.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
            st.cache_misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let rate = |(h0, m0): (u64, u64), (h1, m1): (u64, u64)| {
        (h1 - h0) as f64 / ((h1 - h0) + (m1 - m0)).max(1) as f64
    };
    let c0 = counts();
    report(
        "disk64_cache16_skewed",
        &run(&disk_engine, &reqs, Some(&dir)),
    );
    let c1 = counts();
    println!("disk64_cache16_hit_rate {:.3}", rate(c0, c1));
    // the same requests again: the cache now holds the adapters the last ones used
    report(
        "disk64_cache16_skewed_warm",
        &run(&disk_engine, &reqs, Some(&dir)),
    );
    println!("disk64_cache16_warm_hit_rate {:.3}", rate(c1, counts()));
    drop(disk_engine);
    if precision != Precision::Quantized {
        // the same base-model run through candle's Q8_0 kernels, for scale
        let q = load()?.with_fast_kernels()?;
        let model = ServingModel::new(Llama::new(&q, Precision::Quantized, &dev)?)?;
        let e = Engine::start(model, q.tokenizer.clone(), cfg_ref)?;
        run(&e, &workload(4, vocab, 0, false, 99), None);
        let s = run(&e, &base_reqs, None);
        report("base_candle_q8_0", &s);
        println!(
            "int8_vs_candle_q8_0_ratio {:.2}",
            base_sat.tokens_per_s / s.tokens_per_s
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
