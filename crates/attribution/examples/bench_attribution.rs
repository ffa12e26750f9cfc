//! Attribution cost per inference (`scripts/bench-attribution.sh` runs it):
//!
//!   cargo run --release -p openledger-attribution --example bench_attribution -- \
//!       [--model GGUF] [--export DIR] [tokens...]
//!
//! Span attribution: a Zipf-distributed token stream (SmolLM2's vocabulary size, examples of 50-500
//! tokens, 16 sources) of each size (default 1M and 10M tokens); outputs of 128 tokens that copy 2-3 runs
//! of 8-24 training tokens into random text. Index build throughput, bytes per token on disk, span query
//! latency p50/p99; then the same data grown by 10%: the added examples' segment alone (what a training
//! job on the new Datanet version builds) and queries over the two segments. `--export DIR` also writes each stream and the queries in infini-gram's index layout
//! (`DIR/<n>/tokenized.0`, `offset.0`, `queries.json`) for the baseline in the same run.
//!
//! Gradient attribution: scoring a 128-token output's projected gradient against a store of one entry
//! per 128 training tokens; with `--model`, also the backward pass of prompt + 128 output tokens under a
//! default LoRA adapter, against generating those 128 tokens (the int8 engine, one request).

use std::time::{Duration, Instant};

use openledger_attribution::lora::{layout, output_sequence, projected_gradient};
use openledger_attribution::{
    Doc, GradParams, GradStore, Projector, SpanIndex, SpanParams, SpanSet,
};
use openledger_model::serve::{
    Engine, EngineConfig, Event, GenerateRequest, Priority, SamplingParams, ServingModel,
};
use openledger_model::{BaseModel, Device, Llama, Lora, LoraConfig, Precision};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal, Zipf};

const VOCAB: u32 = 49_152;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        let v = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        v
    };
    let model = take("--model");
    let export = take("--export").map(std::path::PathBuf::from);
    let sizes: Vec<usize> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let zipf = Zipf::new(VOCAB as f64, 1.1)?;
    let dir = std::env::temp_dir().join(format!("bench-span-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut score_10m = None;
    for n in sizes {
        let tokens: Vec<u32> = (0..n).map(|_| zipf.sample(&mut rng) as u32 - 1).collect();
        let mut docs = Vec::new();
        let mut at = 0;
        while at < n {
            let len = rng.random_range(50..=500).min(n - at);
            docs.push(Doc {
                offset: at,
                len,
                source: docs.len() % 16,
            });
            at += len;
        }
        let t = Instant::now();
        let idx = SpanIndex::build(&tokens, &docs)?;
        let build_s = t.elapsed().as_secs_f64();
        let path = dir.join(format!("{n}.span"));
        idx.save(&path)?;
        let bytes = std::fs::metadata(&path)?.len();
        drop(idx);
        let t = Instant::now();
        let idx = SpanIndex::open(&path)?;
        let open_ms = t.elapsed().as_secs_f64() * 1e3;
        let params = SpanParams::default();
        let mut lat = Vec::new();
        let mut found = 0;
        let mut queries = Vec::new();
        for _ in 0..200 {
            let mut out: Vec<u32> = (0..128).map(|_| rng.random_range(0..VOCAB)).collect();
            for _ in 0..rng.random_range(2..=3) {
                let len = rng.random_range(8..=24);
                let from = rng.random_range(0..n - len);
                let to = rng.random_range(0..128 - len);
                out[to..to + len].copy_from_slice(&tokens[from..from + len]);
            }
            let t = Instant::now();
            let spans = idx.spans(&out, &params, &|_, _| true)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            found += spans.len();
            queries.push(out);
        }
        if let Some(dir) = &export {
            export_infinigram(&dir.join(n.to_string()), &tokens, &docs, &queries)?;
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
        let m = n / 1_000_000;
        eprintln!(
            "{n} tokens: build {:.2} s ({:.2}M tokens/s), {:.2} bytes/token on disk, open {open_ms:.1} ms, \
             query p50 {p50:.3} ms p99 {p99:.3} ms, {:.1} spans per output",
            build_s,
            n as f64 / build_s / 1e6,
            bytes as f64 / n as f64,
            found as f64 / 200.0
        );
        println!(
            "RESULT attr_span_build_{m}m_tokens_per_s {:.0} tokens/s",
            n as f64 / build_s
        );
        println!(
            "RESULT attr_span_bytes_per_token_{m}m {:.2} bytes",
            bytes as f64 / n as f64
        );
        println!("RESULT attr_span_latency_{m}m_p50_ms {p50:.3} ms");
        println!("RESULT attr_span_latency_{m}m_p99_ms {p99:.3} ms");
        if n == 10_000_000 {
            println!("RESULT attr_span_latency_ms {p50:.3} ms");
        }

        // a Datanet version that adds 10% more data: the model's index is the earlier examples' segment
        // (reused as it is) plus one new segment over the added ones
        let cut = docs.len() * 9 / 10;
        let earlier = dir.join(format!("{n}-0.span"));
        SpanIndex::build(&tokens, &docs[..cut])?.save(&earlier)?;
        let t = Instant::now();
        let added = SpanIndex::build(&tokens, &docs[cut..])?;
        let added_s = t.elapsed().as_secs_f64();
        let later = dir.join(format!("{n}-1.span"));
        added.save(&later)?;
        drop(added);
        let ids: Vec<usize> = (0..16).collect();
        let set = SpanSet::new(vec![
            (SpanIndex::open(&earlier)?, ids.clone()),
            (SpanIndex::open(&later)?, ids),
        ])?;
        let mut lat2 = Vec::new();
        for out in &queries {
            let t = Instant::now();
            let spans = set.spans(out, &params, &|_, _| true)?;
            lat2.push(t.elapsed().as_secs_f64() * 1e3);
            if lat2.len() <= 20 {
                anyhow::ensure!(
                    spans == idx.spans(out, &params, &|_, _| true)?,
                    "two segments answered differently from one index"
                );
            }
        }
        lat2.sort_by(f64::total_cmp);
        let p50_2 = lat2[lat2.len() / 2];
        eprintln!(
            "{n} tokens, +10% added: the added segment built in {added_s:.2} s ({:.1}% of a full rebuild); \
             query over 2 segments p50 {p50_2:.3} ms ({:.2}x one index)",
            100.0 * added_s / build_s,
            p50_2 / p50
        );
        println!("RESULT attr_span_incremental_{m}m_build_s {added_s:.3} s");
        println!(
            "RESULT attr_span_incremental_{m}m_vs_rebuild {:.3} x",
            added_s / build_s
        );
        println!("RESULT attr_span_latency_{m}m_2seg_p50_ms {p50_2:.3} ms");
        drop(set);
        drop(idx);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&earlier);
        let _ = std::fs::remove_file(&later);

        // gradient scoring against a store of one entry per 128 training tokens
        let dims = 3840;
        let entries = n / 128;
        let mut store = GradStore::new(dims, (0..30).map(|b| (b * 128, (b + 1) * 128)).collect());
        let mut row = vec![0f32; dims];
        for i in 0..entries {
            for x in row.iter_mut() {
                *x = StandardNormal.sample(&mut rng);
            }
            store.push(i % 16, &row)?;
        }
        let q: Vec<f32> = (0..dims).map(|_| StandardNormal.sample(&mut rng)).collect();
        let mut lat = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let s = store.score(&q, &GradParams::default())?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(s.top.len(), 8);
        }
        lat.sort_by(f64::total_cmp);
        eprintln!(
            "{n} tokens: gradient store {entries} x {dims} ({:.0} MB), DataInf scoring {:.1} ms",
            (entries * dims * 4) as f64 / 1e6,
            lat[2]
        );
        println!("RESULT attr_grad_score_{m}m_ms {:.1} ms", lat[2]);
        if n == 10_000_000 {
            score_10m = Some(lat[2]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(m) = model {
        gradient_vs_generation(std::path::Path::new(&m), score_10m.unwrap_or(0.0))?;
    }
    Ok(())
}

/// infini-gram's index layout (version 4, u16 tokens): each document as `ff ff` + its tokens, the byte
/// offset of each document as u64, and the queries as JSON.
fn export_infinigram(
    dir: &std::path::Path,
    tokens: &[u32],
    docs: &[Doc],
    queries: &[Vec<u32>],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut data = Vec::with_capacity(2 * (tokens.len() + docs.len()));
    let mut offsets = Vec::with_capacity(8 * docs.len());
    for d in docs {
        offsets.extend_from_slice(&(data.len() as u64).to_le_bytes());
        data.extend_from_slice(&[0xff, 0xff]);
        for &t in &tokens[d.offset..d.offset + d.len] {
            data.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
    std::fs::write(dir.join("tokenized.0"), data)?;
    std::fs::write(dir.join("offset.0"), offsets)?;
    let q: Vec<String> = queries
        .iter()
        .map(|q| {
            format!(
                "[{}]",
                q.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    std::fs::write(dir.join("queries.json"), format!("[{}]", q.join(",")))?;
    Ok(())
}

/// Generating 128 tokens (int8 engine, one request) against the gradient part of attributing them: the
/// backward pass over prompt + output under a default LoRA adapter (f32), the projection, and `score_ms`
/// (scoring at 10M training tokens).
fn gradient_vs_generation(path: &std::path::Path, score_ms: f64) -> anyhow::Result<()> {
    let base = BaseModel::load(path, &Device::Cpu, None)?;
    let tok = base.tokenizer.clone();
    let prompt = tok.encode(&tok.render_chat(
        &[(
            "user",
            "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        )],
        true,
    )?)?;
    let engine = Engine::start(
        ServingModel::new(Llama::new(&base, Precision::Int8, &Device::Cpu)?)?,
        tok.clone(),
        EngineConfig::default(),
    )?;
    let generate = || -> anyhow::Result<(f64, Vec<u32>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        engine
            .submit(GenerateRequest {
                prompt: prompt.clone(),
                adapter: None,
                sampling: SamplingParams::greedy(),
                max_tokens: 128,
                stop: vec![],
                ignore_eos: true,
                constraint: None,
                priority: Priority::Interactive,
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            match rx.recv_timeout(Duration::from_secs(300))? {
                Event::Done(f) => return Ok((t.elapsed().as_secs_f64() * 1e3, f.tokens)),
                Event::Failed(m) => anyhow::bail!("generation failed: {m}"),
                _ => {}
            }
        }
    };
    let _ = generate()?;
    let mut gens = Vec::new();
    let mut out = Vec::new();
    for _ in 0..3 {
        let (ms, o) = generate()?;
        gens.push(ms);
        out = o;
    }
    drop(engine);
    let f32_model = Llama::new(&base, Precision::F32, &Device::Cpu)?;
    let lora = Lora::init(&base.config, LoraConfig::default(), 1, &Device::Cpu)?;
    let lay = layout(&lora);
    let projector = Projector::new(
        &lay,
        GradParams::k_for(&lay, openledger_attribution::grad::TARGET_DIMS),
        1,
    );
    let seq = output_sequence(&prompt, &out);
    let _ = projected_gradient(&f32_model, &lora, &projector, &seq)?;
    let mut grads = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let _ = projected_gradient(&f32_model, &lora, &projector, &seq)?;
        grads.push(t.elapsed().as_secs_f64() * 1e3);
    }
    gens.sort_by(f64::total_cmp);
    grads.sort_by(f64::total_cmp);
    let (g, b) = (gens[1], grads[1] + score_ms);
    eprintln!(
        "generation of {} tokens after a {}-token prompt: {g:.0} ms; gradient attribution: backward + projection {:.0} ms + scoring {score_ms:.1} ms = {b:.0} ms ({:.2}x the generation)",
        out.len(),
        prompt.len(),
        grads[1],
        b / g
    );
    println!("RESULT attr_generation_128_ms {g:.0} ms");
    println!("RESULT attr_gradient_ms {b:.0} ms");
    println!("RESULT attr_gradient_vs_generation_ratio {:.2} x", b / g);
    Ok(())
}
