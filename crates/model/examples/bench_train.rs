//! Training throughput on a base model: `cargo run --release -p openledger-model --example bench_train --
//! <model> <targets> <rank> <seq> <batch> <steps> <corpus file>`. Prints tokens/s (after one warm-up step)
//! and peak RSS; `scripts/bench-train.sh` runs it beside the PyTorch + PEFT baseline.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use openledger_model::tokenizer::Tokenized;
use openledger_model::train::{Dataset, Example, TrainConfig, Trainer};
use openledger_model::{BaseModel, Device, Event, Llama, Lora, LoraConfig, Precision, Proj};

mod common;
use common::peak_rss_mb;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 8,
        "usage: bench_train <model> <targets q,v|all> <rank> <seq> <batch> <steps> <corpus>"
    );
    let dev = Device::Cpu;
    let t = Instant::now();
    let base = BaseModel::load(a[1].as_ref(), &dev, Some("0x00".into()))?;
    let model = Llama::new(&base, Precision::F32, &dev)?;
    eprintln!("loaded in {:.1}s", t.elapsed().as_secs_f64());
    let targets = if a[2] == "all" {
        Proj::ALL.to_vec()
    } else {
        a[2].split(',')
            .map(|s| Proj::parse(s).ok_or_else(|| anyhow::anyhow!("bad target {s}")))
            .collect::<anyhow::Result<_>>()?
    };
    let (rank, seq, batch, steps): (usize, usize, usize, usize) =
        (a[3].parse()?, a[4].parse()?, a[5].parse()?, a[6].parse()?);
    let corpus = std::fs::read_to_string(&a[7])?;
    // exactly `seq`-token windows of the corpus, as the PyTorch baseline feeds
    let ids = base.tokenizer.encode(&corpus)?;
    anyhow::ensure!(
        ids.len() >= seq * batch * (steps + 1),
        "corpus too small: {} tokens",
        ids.len()
    );
    let train: Vec<Example> = ids
        .chunks_exact(seq)
        .take(batch * (steps + 1))
        .enumerate()
        .map(|(i, w)| Example {
            source: i,
            tokens: Tokenized {
                ids: w.to_vec(),
                targets: vec![true; seq],
            },
        })
        .collect();
    let ds = Dataset {
        train,
        eval: vec![],
        truncated: 0,
    };
    let cfg = TrainConfig {
        steps: Some(steps + 1),
        batch_size: batch,
        max_seq_len: seq,
        eval_fraction: 0.0,
        eval_every: usize::MAX,
        checkpoint_every: 0,
        lora: LoraConfig {
            rank,
            alpha: 2.0 * rank as f64,
            dropout: 0.0,
            targets,
        },
        ..TrainConfig::default()
    };
    let lora = Lora::init(&base.config, cfg.lora.clone(), 0, &dev)?;
    let trainer = Trainer {
        model: &model,
        config: cfg,
        dataset: &ds,
        pad: base.tokenizer.eos,
        checkpoint_dir: None,
    };
    let mut marks = Vec::new();
    let mut t_step = Instant::now();
    trainer.run(&lora, &AtomicBool::new(false), &mut |e| {
        if let Event::Step { step, loss, .. } = e {
            let s = t_step.elapsed().as_secs_f64();
            eprintln!("step {step}: loss {loss:.4} in {s:.2}s");
            marks.push(s);
            t_step = Instant::now();
        }
        Ok(())
    })?;
    let timed: f64 = marks.iter().skip(1).sum();
    let tokens = (batch * seq * steps) as f64;
    println!("tokens_per_s {:.1}", tokens / timed);
    println!("peak_rss_mb {:.0}", peak_rss_mb());
    println!("lora_params {}", lora.num_parameters());
    Ok(())
}
