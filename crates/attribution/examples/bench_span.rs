//! Span attribution cost: `cargo run --release -p openledger-attribution --example bench_span [tokens...]`.
//!
//! A Zipf-distributed token stream (SmolLM2's vocabulary size, examples of 50-500 tokens, 16 sources) of
//! each size (default 1M and 10M tokens); outputs of 128 tokens that copy 2-3 runs of 8-24 training
//! tokens into random text. Prints index build throughput, bytes per token on disk, and span query
//! latency p50/p99, ending with `RESULT` lines.

use std::time::Instant;

use openledger_attribution::{Doc, SpanIndex, SpanParams};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const VOCAB: u32 = 49_152;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let zipf = Zipf::new(VOCAB as f64, 1.1)?;
    let dir = std::env::temp_dir().join(format!("bench-span-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
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
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
