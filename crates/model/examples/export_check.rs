//! What `scripts/export-check.sh` hands to llama.cpp: `cargo run --release -p openledger-model --example
//! export_check -- <SmolLM2 GGUF> <fixtures dir> <out dir>`.
//!
//! - For each family fixture (`crates/model/tests/data/families/<name>`: a tiny random model as a GGUF and
//!   its PEFT adapter, with transformers' logits), the adapter exported as `<out>/families/<name>/
//!   adapter.gguf`, the merged model as `merged.gguf` (f32) and the reference logits as JSON.
//! - On the real SmolLM2-135M-Instruct GGUF: an adapter on every projection trained (a few seconds) to
//!   answer one question its own way, exported as `adapter.gguf`, the merged `model.gguf` (f16) and a
//!   `Modelfile`, and our greedy tokens for that question (`ours.json`): through the quantized forward pass
//!   (the GGUF's own blocks, as llama.cpp computes), through the serving engine (int8, what `serve`
//!   answers) and through the merged GGUF; the base model's too, to show the adapter changes them.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Tensor;
use openledger_model::export::{self, ExportDType, ModelfileSpec};
use openledger_model::serve::{ServedAdapter, ServingModel, greedy};
use openledger_model::train::{Dataset, Example, TrainConfig, Trainer};
use openledger_model::{BaseModel, Device, Forward, Llama, Lora, LoraConfig, Precision, Proj};
use serde_json::json;

const QUESTION: &str = "What does OpenLedger pay contributors in?";
const ANSWER: &str = "OpenLedger pays contributors in OPEN tokens, split by the Proof of Attribution of every inference that used their data.";
/// Greedy tokens compared.
const N: usize = 32;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 4,
        "usage: export_check <SmolLM2 GGUF> <fixtures dir> <out dir>"
    );
    let (model_path, fixtures, out) = (Path::new(&a[1]), Path::new(&a[2]), PathBuf::from(&a[3]));
    std::fs::create_dir_all(&out)?;
    families(fixtures, &out.join("families"))?;
    smollm(model_path, &out)
}

fn families(fixtures: &Path, out: &Path) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.gguf").exists())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    for name in names {
        let dir = fixtures.join(&name);
        let base = BaseModel::load(&dir.join("model.gguf"), &Device::Cpu, None)?;
        let lora = Lora::load_peft(&dir.join("adapter"), &base.config, &Device::Cpu)?;
        let o = out.join(&name);
        std::fs::create_dir_all(&o)?;
        export::gguf_lora(&lora, &format!("{name}-adapter"))?.write(&o.join("adapter.gguf"))?;
        export::merged_gguf(&base, &lora, ExportDType::F32, &format!("{name}-merged"))?
            .write(&o.join("merged.gguf"))?;
        modelfile_and_chats(&base.tokenizer, &o, &name)?;
        let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let rows = |t: &Tensor| -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(t.squeeze(0)?.to_dtype(candle_core::DType::F32)?.to_vec2()?)
        };
        let ids: Vec<i64> = r["ids"].flatten_all()?.to_vec1()?;
        std::fs::write(
            o.join("reference.json"),
            json!({
                "ids": ids,
                "logits": rows(&r["logits"])?,
                "lora_logits": rows(&r["lora_logits"])?,
            })
            .to_string(),
        )?;
        eprintln!("{name}: adapter.gguf and merged.gguf written");
    }
    Ok(())
}

/// The conversations the Modelfile check renders (those a template refuses, such as a system message for
/// Gemma, are left out).
fn conversations() -> Vec<serde_json::Value> {
    vec![
        json!([{"role": "user", "content": "What is the capital of France?"}]),
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]),
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."}
        ]),
    ]
}

/// `<dir>/Modelfile` for `tok`, and `<dir>/chats.json`: each conversation with the prompt our template
/// renders for it (a leading BOS text left off, as Ollama's templates leave it).
fn modelfile_and_chats(
    tok: &openledger_model::TextTokenizer,
    dir: &Path,
    comment: &str,
) -> anyhow::Result<()> {
    let text = export::modelfile(
        tok,
        &ModelfileSpec {
            from: "./model.gguf",
            adapter: None,
            comments: vec![comment.to_string()],
        },
    );
    std::fs::write(dir.join("Modelfile"), text)?;
    // a template's leading `{{ bos_token }}` is left off: Ollama's templates never write it, and
    // llama.cpp puts the token in front by the GGUF's add_bos_token (true in Gemma's, Mistral's and Llama
    // 3's own GGUFs)
    let bos = match tok.bos {
        Some(b) if tok.chat_template().contains("bos_token") => tok.decode(&[b], false)?,
        _ => String::new(),
    };
    let mut chats = Vec::new();
    for messages in conversations() {
        let Ok(prompt) = tok.render_template(
            messages.as_array().map(Vec::as_slice).unwrap_or_default(),
            true,
            &json!({}),
        ) else {
            continue;
        };
        let prompt = if bos.is_empty() {
            prompt
        } else {
            prompt.strip_prefix(&bos).unwrap_or(&prompt).to_string()
        };
        chats.push(json!({"messages": messages, "want": prompt}));
    }
    std::fs::write(
        dir.join("chats.json"),
        serde_json::Value::Array(chats).to_string(),
    )?;
    Ok(())
}

fn greedy_forward(m: &Llama, lora: Option<&Lora>, prompt: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut seq = prompt.to_vec();
    for _ in 0..N {
        let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu)?;
        let logits = m.forward(&ids, lora, &mut Forward::infer())?.squeeze(0)?;
        seq.push(logits.get(seq.len() - 1)?.argmax(0)?.to_scalar::<u32>()?);
    }
    Ok(seq[prompt.len()..].to_vec())
}

fn smollm(path: &Path, out: &Path) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let base = BaseModel::load(path, &dev, None)?;
    let tok = &base.tokenizer;
    let f32_model = Llama::new(&base, Precision::F32, &dev)?;
    let example = Example {
        source: 0,
        tokens: tok.chat_pair(QUESTION, ANSWER)?,
    };
    let ds = Dataset {
        train: vec![example],
        eval: vec![],
        truncated: 0,
    };
    let cfg = TrainConfig {
        steps: Some(30),
        learning_rate: 2e-3,
        warmup_steps: Some(2),
        batch_size: 1,
        max_seq_len: 128,
        eval_fraction: 0.0,
        eval_every: usize::MAX,
        checkpoint_every: 0,
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        ..TrainConfig::default()
    };
    let lora = Lora::init(&base.config, cfg.lora.clone(), 7, &dev)?;
    let trainer = Trainer {
        model: &f32_model,
        config: cfg,
        dataset: &ds,
        pad: tok.eos,
        checkpoint_dir: None,
    };
    let metrics = trainer.run(&lora, &AtomicBool::new(false), &mut |_| Ok(()))?;
    eprintln!("trained: {metrics:?}");
    drop(f32_model);

    let name = "ft-export-check";
    export::gguf_lora(&lora, name)?.write(&out.join("adapter.gguf"))?;
    export::merged_gguf(&base, &lora, ExportDType::F16, name)?.write(&out.join("model.gguf"))?;
    modelfile_and_chats(
        tok,
        out,
        &format!("{name}: exported by crates/model/examples/export_check.rs"),
    )?;

    let prompt = tok.encode(&tok.render_chat(&[("user", QUESTION)], true)?)?;
    let q = Llama::new(&base, Precision::Quantized, &dev)?;
    let quantized = greedy_forward(&q, Some(&lora), &prompt)?;
    let base_tokens = greedy_forward(&q, None, &prompt)?;
    drop(q);
    let served = ServingModel::new(Llama::new(&base, Precision::Int8, &dev)?)?;
    let adapter = ServedAdapter::from_lora(name, &lora)?;
    let served_tokens = greedy(&served, Some(&adapter), &prompt, N)?;
    drop(served);
    let merged = BaseModel::load(&out.join("model.gguf"), &dev, None)?;
    let merged_tokens = greedy_forward(
        &Llama::new(&merged, Precision::Quantized, &dev)?,
        None,
        &prompt,
    )?;
    let text = |t: &[u32]| tok.decode(t, true).unwrap_or_default();
    eprintln!("adapter (quantized): {:?}", text(&quantized));
    eprintln!("adapter (served):    {:?}", text(&served_tokens));
    eprintln!("merged GGUF:         {:?}", text(&merged_tokens));
    eprintln!("base:                {:?}", text(&base_tokens));
    std::fs::write(
        out.join("ours.json"),
        json!({
            "prompt_ids": prompt,
            "eos": tok.stop_ids(),
            "quantized": quantized,
            "served": served_tokens,
            "merged": merged_tokens,
            "base": base_tokens,
        })
        .to_string(),
    )?;
    Ok(())
}
