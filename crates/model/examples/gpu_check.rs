//! The GPU check (`scripts/gpu-check.sh`): on one device, every GPU path against transformers + PEFT, then
//! (with `--bench`) throughput.
//!
//! ```text
//! gpu_check --device cuda:0|cpu --out DIR [--bench] [--dtype bf16|f32] MODEL_DIR...
//! (`--dtype`: how the device engine holds the weights; bf16 on a GPU and f32 on the CPU by default)
//! ```
//!
//! Each `MODEL_DIR` is a Hugging Face folder with a PEFT adapter (`adapter/`) and what transformers computed
//! on it (`reference.safetensors`: `ids`, `logits`, `lora_logits`, `lora_loss`, `grad.<PEFT name>`), the
//! layout of `scripts/model-fixtures.py` (CPU mode uses those committed fixtures; on a GPU machine
//! `scripts/gpu_models.py` builds SmolLM2- and 1B-shaped ones). Checked, per model:
//! - **serving**: the device engine's step logits (a 2-token prefill, then one token per step, with and
//!   without the adapter) against transformers' (f32 on the CPU: 1e-3 of the logits' scale; bf16 on a
//!   GPU: 5% RMS, bf16's rounding through the layers);
//! - **training**: the autograd loss and LoRA gradients on the device against PEFT's;
//! - **attribution**: `sequence_gradient` (the hand-written passes on the CPU, autograd on a GPU) against
//!   PEFT's gradients of the mean loss.
//!
//! `--bench` then measures, on the first model: aggregate decode tokens/s at saturation with the base
//! alone and with 1, 64 and 1,024 adapters (4 on the CPU), the step's weight bytes against the device's
//! copy bandwidth, and LoRA training tokens/s (forward and backward, batch 4 x 256; 1 x 32 on the CPU).
//! Writes `report.md` into `--out` and ends with `RESULT` lines; exits non-zero when a check fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use openledger_model::config::Proj;
use openledger_model::lora::LoraConfig;
use openledger_model::serve::{
    AdapterRef, Backend, DeviceConfig, DeviceModel, Engine, EngineConfig, Event, GenerateRequest,
    Priority, SamplingParams, SeqStep, ServedAdapter,
};
use openledger_model::tokenizer::Tokenized;
use openledger_model::{BaseModel, Forward, Llama, Lora, Precision, sequence_gradient};

struct Report {
    text: String,
    results: Vec<(String, f64, &'static str)>,
    failures: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        eprintln!("{s}");
        self.text.push_str(&s);
        self.text.push('\n');
    }
    fn result(&mut self, name: String, value: f64, unit: &'static str) {
        self.results.push((name, value, unit));
    }
    fn check(&mut self, what: String, value: f64, limit: f64) {
        let ok = value.is_finite() && value <= limit;
        self.line(format!(
            "- {what}: {value:.3e} (limit {limit:.0e}) {}",
            if ok { "ok" } else { "FAILED" }
        ));
        if !ok {
            self.failures.push(what);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut device = "cpu".to_string();
    let mut out = PathBuf::from("gpu-check-out");
    let mut bench = false;
    let mut dtype = None;
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device = args.next().context("--device needs a value")?,
            "--out" => out = args.next().context("--out needs a value")?.into(),
            "--bench" => bench = true,
            "--dtype" => {
                dtype = Some(match args.next().as_deref() {
                    Some("bf16") => DType::BF16,
                    Some("f32") => DType::F32,
                    other => bail!("--dtype: bf16 or f32, not {other:?}"),
                })
            }
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => models.push(PathBuf::from(a)),
        }
    }
    if models.is_empty() {
        bail!("usage: gpu_check --device cuda:0|cpu --out DIR [--bench] MODEL_DIR...");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let dev = openledger_model::device(&device)?;
    let dtype = dtype.unwrap_or(DeviceConfig::for_device(&dev).dtype);
    let mut r = Report {
        text: String::new(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    r.line(format!("# GPU check on {device}, serving in {dtype:?}\n"));
    for dir in &models {
        check_model(&mut r, dir, &dev, dtype)?;
    }
    if bench {
        bench_model(&mut r, &models[0], &dev, dtype)?;
    }
    std::fs::write(out.join("report.md"), &r.text)?;
    for (name, value, unit) in &r.results {
        if value.abs() < 0.01 {
            println!("RESULT {name} {value:.3e} {unit}");
        } else {
            println!("RESULT {name} {value:.4} {unit}");
        }
    }
    if !r.failures.is_empty() {
        bail!(
            "{} check(s) failed: {}",
            r.failures.len(),
            r.failures.join("; ")
        );
    }
    Ok(())
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned())
}

/// ||a - b|| / ||b|| and max |a - b| / max(1, max |b|).
fn diffs(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut d2, mut n2, mut dmax, mut bmax) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x - y) as f64;
        d2 += d * d;
        n2 += (y as f64) * (y as f64);
        dmax = dmax.max(d.abs());
        bmax = bmax.max((y as f64).abs());
    }
    ((d2 / n2.max(1e-30)).sqrt(), dmax / bmax.max(1.0))
}

fn engine_cfg(kv_bytes: usize, adapters: usize) -> EngineConfig {
    EngineConfig {
        kv_cache_bytes: kv_bytes,
        max_active_adapters: adapters,
        ..EngineConfig::default()
    }
}

fn check_model(r: &mut Report, dir: &Path, dev: &Device, dtype: DType) -> anyhow::Result<()> {
    let name = name_of(dir);
    let base = BaseModel::load(dir, &Device::Cpu, None)?;
    let c = base.config.clone();
    r.line(format!(
        "## {name}: {:?}, {} parameters\n",
        c.family,
        openledger_model::config::human_count(c.num_parameters())
    ));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let ids: Vec<u32> = reference["ids"]
        .flatten_all()?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let n = ids.len();
    let llama = Llama::new(&base, Precision::F32, dev)?;
    let lora = Lora::load_peft(&dir.join("adapter"), &c, dev)?;

    // serving
    let dc = DeviceConfig {
        dtype,
        ..DeviceConfig::for_device(dev)
    };
    let bf16 = dc.dtype == DType::BF16;
    let mut m = DeviceModel::new(&llama, dc)?;
    m.prepare(&engine_cfg(4 * n * m.kv_bytes_per_token(), 1))?;
    let served = ServedAdapter::from_lora("adapter", &lora)?;
    for (adapter, key) in [(None, "logits"), (Some(&served), "lora_logits")] {
        let want = reference[key].squeeze(0)?.to_dtype(DType::F32)?;
        let mut cache = m.new_cache(m.reserve_tokens(n))?;
        let (mut rms, mut max) = (0f64, 0f64);
        let mut fed = 0;
        let t0 = Instant::now();
        for chunk in [&ids[..2]].into_iter().chain(ids[2..].chunks(1)) {
            let got = m.step(&mut [SeqStep {
                tokens: chunk,
                cache: &mut cache,
                adapter,
                want_logits: true,
            }])?;
            fed += chunk.len();
            let row = want.get(fed - 1)?.to_vec1::<f32>()?;
            let (a, b) = diffs(&got[0], &row);
            rms = rms.max(a);
            max = max.max(b);
        }
        m.free_cache(cache);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if bf16 {
            r.check(
                format!("{name} serving ({key}), bf16: RMS difference"),
                rms,
                5e-2,
            );
        } else {
            r.check(
                format!("{name} serving ({key}), f32: max difference"),
                max,
                1e-3,
            );
        }
        r.result(format!("serve_parity_{name}_{key}"), rms, "rms_rel");
        r.line(format!("  ({n} steps in {ms:.0} ms)"));
    }
    drop(m);

    // training: autograd on the device
    let x = Tensor::from_slice(&ids, (1, n), dev)?;
    let h = llama
        .hidden(&x, Some(&lora), &mut Forward::differentiable())?
        .squeeze(0)?
        .narrow(0, 0, n - 1)?;
    let labels = Tensor::from_slice(&ids[1..], n - 1, dev)?;
    let loss = llama.loss_sum(&h, &labels)?;
    let want_loss = reference["lora_loss"].to_vec1::<f32>()?[0] as f64;
    let got_loss = loss.to_scalar::<f32>()? as f64;
    r.check(
        format!("{name} training loss (autograd on the device)"),
        (got_loss - want_loss).abs() / want_loss.abs().max(1e-9),
        1e-3,
    );
    let store = loss.backward()?;
    let autograd: Vec<Vec<f32>> = lora
        .vars()
        .iter()
        .map(|v| {
            store
                .get(v.as_tensor())
                .context("a LoRA tensor got no gradient")?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let worst = grad_error(&lora, &c, &autograd, &reference, 1.0)?;
    r.check(
        format!("{name} training gradients (autograd on the device)"),
        worst,
        2e-3,
    );

    // attribution: the per-sequence gradient of the mean loss
    let mut targets = vec![true; n];
    targets[0] = false;
    let (mean, grads) = sequence_gradient(
        &llama,
        &lora,
        &Tokenized {
            ids: ids.clone(),
            targets,
        },
    )?;
    r.check(
        format!("{name} attribution loss"),
        (mean * (n - 1) as f64 - want_loss).abs() / want_loss.abs().max(1e-9),
        1e-3,
    );
    let worst = grad_error(&lora, &c, &grads, &reference, 1.0 / (n - 1) as f32)?;
    r.check(format!("{name} attribution gradients"), worst, 2e-3);
    r.line(String::new());
    Ok(())
}

/// Worst `max |got - want| / max |want|` over the LoRA tensors, `want` scaled by `scale`.
fn grad_error(
    lora: &Lora,
    c: &openledger_model::ModelConfig,
    grads: &[Vec<f32>],
    reference: &std::collections::HashMap<String, Tensor>,
    scale: f32,
) -> anyhow::Result<f64> {
    let g = Lora::init(c, lora.config.clone(), 0, &Device::Cpu)?;
    for (v, t) in g.vars().iter().zip(grads) {
        v.set(&Tensor::from_slice(t, v.shape(), &Device::Cpu)?)?;
    }
    let mut worst = 0f64;
    for (name, got) in g.peft_tensors()? {
        let want = reference
            .get(&format!("grad.{name}"))
            .with_context(|| format!("no reference gradient for {name}"))?;
        let want = (want.to_dtype(DType::F32)? * scale as f64)?;
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        let want = want.flatten_all()?.to_vec1::<f32>()?;
        let top = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let d = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max((d / top) as f64);
    }
    Ok(worst)
}

/// Decode tokens/s of `requests` requests (prompt `prompt`, `new_tokens` tokens each) spread over `adapters`
/// adapters (0: the base alone), all submitted at once.
#[allow(clippy::too_many_arguments)]
fn serve_rate(
    llama: &Llama,
    base: &BaseModel,
    cfg: &EngineConfig,
    adapters: &[Arc<ServedAdapter>],
    requests: usize,
    prompt: usize,
    new_tokens: usize,
    dc: DeviceConfig,
) -> anyhow::Result<(f64, u64)> {
    let m = DeviceModel::new(llama, dc)?;
    let engine = Engine::start(m, base.tokenizer.clone(), cfg.clone())?;
    engine
        .preload(adapters.to_vec())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let vocab = base.config.vocab_size as u32;
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    for i in 0..requests {
        let tx = tx.clone();
        engine
            .submit(GenerateRequest {
                prompt: (0..prompt as u32)
                    .map(|j| (j * 31 + i as u32 * 7) % (vocab - 10) + 5)
                    .collect(),
                adapter: (!adapters.is_empty()).then(|| AdapterRef {
                    id: adapters[i % adapters.len()].id.clone(),
                    dir: PathBuf::from("/nonexistent"),
                    sha256: None,
                }),
                sampling: SamplingParams::greedy(),
                max_tokens: new_tokens,
                stop: Vec::new(),
                ignore_eos: true,
                constraint: None,
                priority: Priority::Batch,
                sink: Box::new(move |e| match e {
                    Event::Done(f) => tx.send(Ok(f.tokens.len())).is_ok(),
                    Event::Failed(e) => tx.send(Err(e)).is_ok(),
                    _ => true,
                }),
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(tx);
    let mut tokens = 0;
    for res in rx {
        tokens += res.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let steps = engine
        .stats
        .steps
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok((tokens as f64 / secs, steps))
}

fn bench_model(r: &mut Report, dir: &Path, dev: &Device, dtype: DType) -> anyhow::Result<()> {
    let gpu = !dev.is_cpu();
    let base = BaseModel::load(dir, &Device::Cpu, None)?;
    let c = base.config.clone();
    let llama = Llama::new(&base, Precision::F32, dev)?;
    r.line(format!(
        "## Benchmarks: {} ({})\n",
        name_of(dir),
        openledger_model::config::human_count(c.num_parameters())
    ));
    // serving at saturation (S-LoRA's protocol: every request its own adapter, round robin)
    let (seqs, requests, prompt, new_tokens, counts) = if gpu {
        (256, 1024, 64, 64, vec![0, 1, 64, 1024])
    } else {
        (8, 16, 8, 8, vec![0, 1, 4])
    };
    let cfg = EngineConfig {
        max_seqs: seqs,
        max_batch_tokens: seqs * 4,
        max_active_adapters: seqs,
        adapter_cache_bytes: 64 << 30,
        kv_cache_bytes: if gpu { 16 << 30 } else { 64 << 20 },
        max_queue: requests,
        ..EngineConfig::default()
    };
    let lc = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::K, Proj::V, Proj::O],
    };
    let mut base_rate = f64::NAN;
    let most = counts.last().copied().unwrap_or(0);
    // every count with f32 LoRA (the default), then the most adapters again with bf16 LoRA pools
    let runs = counts
        .iter()
        .map(|&k| (k, DType::F32))
        .chain([(most, DType::BF16)]);
    for (k, lora_dtype) in runs {
        let adapters: Vec<Arc<ServedAdapter>> = (0..k)
            .map(|i| Arc::new(ServedAdapter::random(format!("a{i}"), &c, &lc, i as u64)))
            .collect();
        let dc = DeviceConfig {
            dtype,
            lora_dtype,
            ..DeviceConfig::for_device(dev)
        };
        let (rate, steps) = serve_rate(
            &llama, &base, &cfg, &adapters, requests, prompt, new_tokens, dc,
        )?;
        if k == 0 {
            base_rate = rate;
        }
        let tag = if lora_dtype == DType::F32 {
            ""
        } else {
            "_bf16_lora"
        };
        r.line(format!(
            "- serving, {k} adapters (LoRA in {lora_dtype:?}): {rate:.0} tokens/s ({requests} requests x {new_tokens} tokens, {steps} steps, batch {seqs}), {:.2}x the base alone",
            rate / base_rate
        ));
        r.result(format!("serve_tok_s_{k}_adapters{tag}"), rate, "tokens/s");
        if k > 0 {
            r.result(
                format!("serve_ratio_{k}_adapters{tag}_vs_base"),
                rate / base_rate,
                "x",
            );
        }
    }
    // the device's copy bandwidth, and the weight bytes a decode step reads
    let elems = if gpu { 1 << 28 } else { 1 << 22 };
    let t = Tensor::zeros(elems, DType::BF16, dev)?;
    let _ = t
        .affine(1.0, 0.0)?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let reps = 10;
    let t0 = Instant::now();
    let mut acc = t.clone();
    for _ in 0..reps {
        acc = acc.affine(1.0, 0.0)?;
    }
    let _ = acc
        .narrow(0, 0, 1)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let bw = (2 * 2 * elems * reps) as f64 / t0.elapsed().as_secs_f64();
    let weight_bytes = 2.0 * c.num_parameters() as f64;
    let step_floor = weight_bytes / bw;
    r.line(format!(
        "- copy bandwidth {:.0} GB/s: a decode step reads {:.2} GB of bf16 weights, at least {:.2} ms",
        bw / 1e9,
        weight_bytes / 1e9,
        step_floor * 1e3
    ));
    r.result("copy_bandwidth".into(), bw / 1e9, "GB/s");
    // training: forward and backward of the autograd path, LoRA r=8 on q and v
    let (batch, seq, steps) = if gpu { (4, 256, 10) } else { (1, 32, 2) };
    let lora = Lora::init(
        &c,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![Proj::Q, Proj::V],
        },
        7,
        dev,
    )?;
    let vocab = c.vocab_size as u32;
    let ids: Vec<u32> = (0..(batch * seq) as u32)
        .map(|j| j.wrapping_mul(2_654_435_761) % (vocab - 10) + 5)
        .collect();
    let x = Tensor::from_slice(&ids, (batch, seq), dev)?;
    let labels = Tensor::from_slice(&ids, batch * seq, dev)?;
    let run = || -> anyhow::Result<()> {
        let h = llama
            .hidden(&x, Some(&lora), &mut Forward::differentiable())?
            .flatten_to(1)?;
        let loss = llama.loss_sum(&h, &labels)?;
        let g = loss.backward()?;
        let v = &lora.vars()[0];
        let _ = g
            .get(v.as_tensor())
            .context("no gradient")?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok(())
    };
    run()?;
    let t0 = Instant::now();
    for _ in 0..steps {
        run()?;
    }
    let rate = (batch * seq * steps) as f64 / t0.elapsed().as_secs_f64();
    r.line(format!(
        "- training (autograd forward + backward, LoRA r=8 q,v, batch {batch} x {seq}): {rate:.0} tokens/s"
    ));
    r.result("train_tok_s".into(), rate, "tokens/s");
    Ok(())
}
