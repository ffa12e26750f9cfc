//! Every supported family against transformers: tiny random models built by transformers from each
//! family's own config class with every feature on, saved as Hugging Face folders with a PEFT adapter, and
//! what transformers computed on them (`scripts/model-fixtures.py`, committed under
//! `tests/data/families`). Our autograd forward, the hand-written training passes and the serving engine
//! must give the same logits and LoRA gradients (to float rounding: f32 through two layers) and the same
//! greedy tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use openledger_model::config::Family;
use openledger_model::serve::{KvCache, SeqStep, ServedAdapter, ServingModel, step};
use openledger_model::{BaseModel, Forward, Llama, Lora, Precision, TextTokenizer, backprop};

const FAMILIES: [(&str, Family); 6] = [
    ("llama3", Family::Llama),
    ("mistral", Family::Mistral),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("gemma2", Family::Gemma2),
    ("gemma3", Family::Gemma3),
];

/// Largest difference allowed between our logits and transformers', relative to the logits' scale.
const LOGIT_TOL: f32 = 1e-4;
/// The same for LoRA gradients, relative to the largest gradient of the tensor.
const GRAD_TOL: f32 = 1e-3;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/families")
        .join(name)
}

struct Fixture {
    name: &'static str,
    base: BaseModel,
    reference: HashMap<String, Tensor>,
    ids: Vec<u32>,
}

fn fixture(name: &'static str, family: Family) -> Fixture {
    let base = BaseModel::load(&dir(name), &Device::Cpu, None).unwrap();
    assert_eq!(base.config.family, family, "{name}");
    let reference =
        candle_core::safetensors::load(dir(name).join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let ids: Vec<u32> = reference["ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    Fixture {
        name,
        base,
        reference,
        ids,
    }
}

fn all() -> Vec<Fixture> {
    FAMILIES.iter().map(|&(n, f)| fixture(n, f)).collect()
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap()
}

/// max |t|.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// max |a - b| / max(1, max |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    assert_eq!(a.dims(), b.dims());
    let d: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let s: f32 = b.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    d / s.max(1.0)
}

/// ||a - b|| / ||b||: the error measure for quantized paths, whose worst single logit says little.
fn rms_rel(a: &Tensor, b: &Tensor) -> f32 {
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
}

fn adapter(f: &Fixture) -> Lora {
    Lora::load_peft(&dir(f.name).join("adapter"), &f.base.config, &Device::Cpu).unwrap()
}

fn tokens(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

#[test]
fn base_logits_match_transformers_for_every_family() {
    for f in all() {
        let want = &f.reference["logits"];
        for precision in [Precision::F32, Precision::Quantized] {
            let m = Llama::new(&f.base, precision, &Device::Cpu).unwrap();
            for mut opts in [Forward::differentiable(), Forward::infer()] {
                let grad = opts.grad;
                let got = m.forward(&ids_tensor(&f.ids), None, &mut opts).unwrap();
                let d = rel_diff(&got, want);
                assert!(
                    d < LOGIT_TOL,
                    "{}: logits differ by {d} ({precision:?}, grad {grad})",
                    f.name
                );
            }
        }
    }
}

#[test]
fn peft_adapters_give_transformers_logits_and_gradients_on_both_training_paths() {
    for f in all() {
        let m = Llama::new(&f.base, Precision::F32, &Device::Cpu).unwrap();
        let lora = adapter(&f);
        let x = ids_tensor(&f.ids);
        let logits = m
            .forward(&x, Some(&lora), &mut Forward::differentiable())
            .unwrap();
        let d = rel_diff(&logits, &f.reference["lora_logits"]);
        assert!(d < LOGIT_TOL, "{}: adapted logits differ by {d}", f.name);

        // autograd: the summed next-token loss and its gradients
        let n = f.ids.len();
        let h = m
            .hidden(&x, Some(&lora), &mut Forward::differentiable())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .narrow(0, 0, n - 1)
            .unwrap();
        let labels = Tensor::from_slice(&f.ids[1..], n - 1, &Device::Cpu).unwrap();
        let loss = m.loss_sum(&h, &labels).unwrap();
        let want_loss: f32 = f.reference["lora_loss"].to_vec1::<f32>().unwrap()[0];
        let got_loss: f32 = loss.to_scalar().unwrap();
        assert!(
            (got_loss - want_loss).abs() < 1e-4 * want_loss.abs(),
            "{}: loss {got_loss} vs {want_loss}",
            f.name
        );
        let store = loss.backward().unwrap();
        let autograd: Vec<Tensor> = lora
            .vars()
            .iter()
            .map(|v| store.get(v.as_tensor()).unwrap().clone())
            .collect();
        check_grads(&f, &lora, &autograd, "autograd");

        // the hand-written passes on the same batch
        let positions: Vec<u32> = (0..n as u32 - 1).collect();
        let batch = backprop::BatchRef {
            ids: &f.ids,
            batch: 1,
            seq: n,
            positions: &positions,
            labels: &f.ids[1..],
        };
        assert!(backprop::supported(&m), "{}", f.name);
        let out = backprop::loss_and_grads(&m, &lora, &batch, None, 1.0).unwrap();
        assert!(
            (out.loss_sum as f32 - want_loss).abs() < 1e-4 * want_loss.abs(),
            "{}: hand-written loss {} vs {want_loss}",
            f.name,
            out.loss_sum
        );
        let hand: Vec<Tensor> = out
            .grads
            .iter()
            .zip(lora.vars())
            .map(|(g, v)| Tensor::from_slice(g, v.shape(), &Device::Cpu).unwrap())
            .collect();
        check_grads(&f, &lora, &hand, "hand-written");
    }
}

/// `grads` (in `Lora::vars` order, this crate's row order) against transformers' under PEFT's names.
fn check_grads(f: &Fixture, lora: &Lora, grads: &[Tensor], path: &str) {
    let g = Lora::init(&f.base.config, lora.config.clone(), 0, &Device::Cpu).unwrap();
    for (v, t) in g.vars().iter().zip(grads) {
        v.set(t).unwrap();
    }
    let named = g.peft_tensors().unwrap();
    assert_eq!(named.len(), 2 * 7 * f.base.config.num_hidden_layers);
    for (name, got) in named {
        let want = f
            .reference
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("{}: no reference gradient for {name}", f.name));
        let scale = max_abs(want);
        let d = max_abs(&(&got - want).unwrap());
        assert!(
            d <= GRAD_TOL * scale.max(1e-6),
            "{} ({path}): gradient of {name} differs by {d} (scale {scale})",
            f.name
        );
    }
}

/// Greedy decoding by re-running the whole sequence through the autograd forward each step.
fn greedy_full(m: &Llama, lora: Option<&Lora>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = m
            .forward(&ids_tensor(&seq), lora, &mut Forward::infer())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let last = logits.get(seq.len() - 1).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        seq.push(next);
    }
    seq[prompt.len()..].to_vec()
}

/// Greedy decoding through the serving engine's batched step (prefill, then one token per step, KV cache).
fn greedy_served(
    m: &ServingModel,
    a: Option<&ServedAdapter>,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    openledger_model::serve::greedy(m, a, prompt, n).unwrap()
}

#[test]
fn greedy_generations_match_transformers_token_for_token() {
    for f in all() {
        let want = tokens(&f.reference["greedy"]);
        let want_lora = tokens(&f.reference["lora_greedy"]);
        let prompt = &f.ids[..4];
        let n = want.len();
        let m = Llama::new(&f.base, Precision::F32, &Device::Cpu).unwrap();
        let lora = adapter(&f);
        assert_eq!(
            greedy_full(&m, None, prompt, n),
            want,
            "{} (forward)",
            f.name
        );
        assert_eq!(
            greedy_full(&m, Some(&lora), prompt, n),
            want_lora,
            "{} (forward, adapter)",
            f.name
        );
        let served = ServingModel::new(m).unwrap();
        let a = ServedAdapter::from_lora("fixture", &lora).unwrap();
        assert_eq!(
            greedy_served(&served, None, prompt, n),
            want,
            "{} (served)",
            f.name
        );
        assert_eq!(
            greedy_served(&served, Some(&a), prompt, n),
            want_lora,
            "{} (served, adapter)",
            f.name
        );
    }
}

/// Largest `||int8 - f32|| / ||f32||` of a step's logits against transformers' (int8 weights and int8
/// activation rows with per-block scales). These random models with large random adapters are far more
/// sensitive than trained ones: measured 2-3% without the adapter and up to 9% with it, the same through
/// the engine as through the whole-sequence int8 forward (which the engine must match closely).
const INT8_TOL: f32 = 0.12;

#[test]
fn the_engine_decodes_every_family_to_transformers_logits_in_f32_and_within_quantization_error_in_int8()
 {
    for (f, (precision, tol)) in all().into_iter().flat_map(|f| {
        [(Precision::F32, LOGIT_TOL), (Precision::Int8, INT8_TOL)]
            .map(|p| (fixture(f.name, f.base.config.family), p))
    }) {
        let lora = adapter(&f);
        let llama = Llama::new(&f.base, precision, &Device::Cpu).unwrap();
        let m = ServingModel::new(llama.clone()).unwrap();
        let a = ServedAdapter::from_lora("fixture", &lora).unwrap();
        for (adapter, key) in [(None, "logits"), (Some(&a), "lora_logits")] {
            let want = f.reference[key].squeeze(0).unwrap();
            // the same weights through the whole-sequence forward: what the engine must give, step by step
            let whole = llama
                .forward(
                    &ids_tensor(&f.ids),
                    adapter.map(|_| &lora),
                    &mut Forward::infer(),
                )
                .unwrap()
                .squeeze(0)
                .unwrap();
            let c = m.config();
            let mut cache = KvCache::new(c.num_hidden_layers, f.ids.len(), m.kv_dim());
            // a two-token prefill, then one token per step: past every sliding window
            let mut worst = 0f32;
            let mut fed = 0;
            for chunk in [&f.ids[..2]].into_iter().chain(f.ids[2..].chunks(1)) {
                let got = step(
                    &m,
                    &mut [SeqStep {
                        tokens: chunk,
                        cache: &mut cache,
                        adapter,
                        want_logits: true,
                    }],
                )
                .unwrap();
                fed += chunk.len();
                let got = Tensor::from_slice(&got[0], got[0].len(), &Device::Cpu).unwrap();
                let row = want.get(fed - 1).unwrap();
                worst = worst.max(match precision {
                    Precision::Int8 => rms_rel(&got, &row),
                    _ => rel_diff(&got, &row),
                });
                let same = rel_diff(&got, &whole.get(fed - 1).unwrap());
                assert!(
                    same < LOGIT_TOL,
                    "{} ({key}, {precision:?}): the engine's step differs from the forward by {same}",
                    f.name
                );
            }
            eprintln!(
                "{} ({key}, {precision:?}): worst relative difference {worst:.6}",
                f.name
            );
            assert!(
                worst < tol,
                "{} ({key}, {precision:?}): logits differ by {worst}",
                f.name
            );
        }
    }
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir("").join("templates.json")).unwrap())
            .unwrap();
    // the templates that print today's date printed the fixture's day
    let fixture_day = t["date"].as_str().unwrap();
    let today = chrono::Local::now().format("%d %b %Y").to_string();
    let conversations = t["conversations"].as_array().unwrap();
    for (name, _) in FAMILIES {
        let tok = TextTokenizer::from_hf_dir(&dir(name)).unwrap();
        let rendered = t["rendered"][name].as_array().unwrap();
        assert_eq!(rendered.len(), conversations.len());
        for (i, (conv, want)) in conversations.iter().zip(rendered).enumerate() {
            let messages = conv["messages"].as_array().unwrap();
            let gen_prompt = conv["add_generation_prompt"].as_bool().unwrap();
            let mut extra = serde_json::json!({});
            if let Some(tools) = conv.get("tools") {
                extra["tools"] = tools.clone();
            }
            let got = tok.render_template(messages, gen_prompt, &extra);
            match (want.get("text"), want.get("error")) {
                (Some(text), _) => assert_eq!(
                    got.unwrap(),
                    text.as_str().unwrap().replace(fixture_day, &today),
                    "{name}, conversation {i}"
                ),
                (_, Some(err)) => {
                    let e = got.unwrap_err().to_string();
                    assert!(
                        e.contains(err.as_str().unwrap()),
                        "{name}, conversation {i}: {e} (transformers: {err})"
                    );
                }
                _ => panic!("bad fixture"),
            }
        }
    }
}

#[test]
fn training_targets_end_at_each_templates_own_turn_boundary() {
    for (name, _) in FAMILIES {
        let tok = TextTokenizer::from_hf_dir(&dir(name)).unwrap();
        let stops = tok.stop_ids();
        let ex = tok.chat_pair("What is 2+2?", "Four.").unwrap();
        let first = ex.targets.iter().position(|&t| t).unwrap();
        assert!(
            ex.targets[first..].iter().all(|&t| t),
            "{name}: targets are one run"
        );
        let prompt = tok.decode(&ex.ids[..first], false).unwrap();
        let target = &ex.ids[first..];
        let text = tok.decode(target, false).unwrap();
        // the prompt ends with the template's generation prompt, the targets are the answer and the
        // template's end of turn, which is one of the model's stop tokens
        assert!(!prompt.contains("Four"), "{name}: {prompt:?}");
        // Qwen 3's template writes an empty reasoning block before a final answer
        let answer = text
            .trim_start()
            .trim_start_matches("<think>\n\n</think>\n\n");
        assert!(answer.starts_with("Four."), "{name}: {text:?}");
        assert!(
            target.iter().any(|t| stops.contains(t)),
            "{name}: no stop token among the targets {text:?} (stops {stops:?})"
        );
    }
    // Llama 3 and Gemma end turns with a token that is not EOS: it must stop generation too
    for (name, turn_end) in [("llama3", "<|eot_id|>"), ("gemma3", "<end_of_turn>")] {
        let tok = TextTokenizer::from_hf_dir(&dir(name)).unwrap();
        let id = tok.token_to_id(turn_end).unwrap();
        assert!(tok.stop_ids().contains(&id), "{name}");
    }
}

#[test]
fn conversations_train_on_every_assistant_turn_and_nothing_else() {
    for (name, _) in FAMILIES {
        let tok = TextTokenizer::from_hf_dir(&dir(name)).unwrap();
        let turns = [
            ("system", "Answer in one word."),
            ("user", "What is 2+2?"),
            ("assistant", "Four."),
            ("user", "And 3+3?"),
            ("assistant", "Six."),
        ];
        let ex = match tok.chat_conversation(&turns) {
            Ok(ex) => ex,
            Err(e) => panic!("{name}: {e}"),
        };
        // the targets are two runs: each answer with its end of turn
        let mut runs = Vec::new();
        let mut i = 0;
        while i < ex.ids.len() {
            if ex.targets[i] {
                let start = i;
                while i < ex.ids.len() && ex.targets[i] {
                    i += 1;
                }
                runs.push(tok.decode(&ex.ids[start..i], false).unwrap());
            } else {
                i += 1;
            }
        }
        assert_eq!(runs.len(), 2, "{name}: {runs:?}");
        let answer = |t: &str| {
            t.trim_start()
                .trim_start_matches("<think>\n\n</think>\n\n")
                .to_string()
        };
        assert!(answer(&runs[0]).starts_with("Four."), "{name}: {runs:?}");
        assert!(answer(&runs[1]).starts_with("Six."), "{name}: {runs:?}");
        for r in &runs {
            assert!(
                !r.contains("2+2") && !r.contains("one word"),
                "{name}: {r:?}"
            );
        }
        // the ids are the template's own rendering of the conversation, encoded whole (BOS first where the
        // tokenizer adds one and the template does not write it)
        // (a template without a system role gets the system prompt at the head of the first user turn)
        let merged = [
            ("user", "Answer in one word.\n\nWhat is 2+2?"),
            ("assistant", "Four."),
            ("user", "And 3+3?"),
            ("assistant", "Six."),
        ];
        let text = tok
            .render_chat(&turns, false)
            .or_else(|_| tok.render_chat(&merged, false))
            .unwrap();
        let rendered = tok.encode(&text).unwrap();
        let skip = ex.ids.len() - rendered.len();
        assert!(skip <= 1, "{name}");
        assert_eq!(ex.ids[skip..], rendered[..], "{name}");
        // a pair is a one-turn conversation
        assert_eq!(
            tok.chat_pair("What is 2+2?", "Four.").unwrap(),
            tok.chat_conversation(&[("user", "What is 2+2?"), ("assistant", "Four.")])
                .unwrap()
        );
    }
}

/// GGUF matrices are f16 (as llama.cpp writes them): logits move by about 1e-3 of their scale.
const GGUF_TOL: f32 = 1e-2;

#[test]
fn gguf_files_of_every_family_load_to_the_same_model() {
    for f in all() {
        let path = dir(f.name).join("model.gguf");
        let g = BaseModel::load(&path, &Device::Cpu, None).unwrap();
        let (mut want_cfg, mut got_cfg) = (f.base.config.clone(), g.config.clone());
        // GGUF has no place for a Llama 3 scaling's parameters: it stores the resulting divisors
        if let Some(openledger_model::config::RopeScaling::Factors { .. }) = got_cfg.rope_scaling {
            assert_eq!(
                got_cfg.inv_freqs(false).len(),
                want_cfg.inv_freqs(false).len()
            );
            for (a, b) in got_cfg
                .inv_freqs(false)
                .iter()
                .zip(want_cfg.inv_freqs(false))
            {
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{}: {a} vs {b}", f.name);
            }
            got_cfg.rope_scaling = None;
            want_cfg.rope_scaling = None;
        }
        assert_eq!(got_cfg, want_cfg, "{}", f.name);
        for precision in [Precision::F32, Precision::Quantized] {
            let m = Llama::new(&g, precision, &Device::Cpu).unwrap();
            let got = m
                .forward(&ids_tensor(&f.ids), None, &mut Forward::infer())
                .unwrap();
            let d = rel_diff(&got, &f.reference["logits"]);
            assert!(
                d < GGUF_TOL,
                "{} ({precision:?}): GGUF logits differ by {d}",
                f.name
            );
        }
        // the same adapter applies to either file
        let lora = adapter(&f);
        let m = Llama::new(&g, Precision::F32, &Device::Cpu).unwrap();
        let got = m
            .forward(&ids_tensor(&f.ids), Some(&lora), &mut Forward::infer())
            .unwrap();
        let d = rel_diff(&got, &f.reference["lora_logits"]);
        assert!(
            d < GGUF_TOL,
            "{}: adapted GGUF logits differ by {d}",
            f.name
        );
    }
}

#[test]
fn tokenizers_from_folders_and_gguf_give_the_reference_ids() {
    for (name, _) in FAMILIES {
        let cases: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(dir(name).join("encodings.json")).unwrap(),
        )
        .unwrap();
        let hf = TextTokenizer::from_hf_dir(&dir(name)).unwrap();
        let gguf = BaseModel::load(&dir(name).join("model.gguf"), &Device::Cpu, None)
            .unwrap()
            .tokenizer;
        for c in &cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(hf.encode(text).unwrap(), want, "{name} (folder): {text:?}");
            assert_eq!(gguf.encode(text).unwrap(), want, "{name} (GGUF): {text:?}");
            assert_eq!(
                gguf.decode(&want, false).unwrap(),
                hf.decode(&want, false).unwrap(),
                "{name}: decoding {text:?}"
            );
        }
        assert_eq!((gguf.bos, gguf.eos), (hf.bos, hf.eos), "{name}");
        assert_eq!(gguf.stop_ids(), hf.stop_ids(), "{name}");
        assert_eq!(gguf.chat_template(), hf.chat_template(), "{name}");
    }
}

/// A copy of a fixture folder whose `config.json` is edited by `edit` (`None`: deleted).
fn edited_copy(name: &str, edit: Option<&dyn Fn(&mut serde_json::Value)>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let cfg = tmp.path().join("config.json");
    match edit {
        Some(f) => {
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
            f(&mut v);
            std::fs::write(&cfg, v.to_string()).unwrap();
        }
        None => std::fs::remove_file(&cfg).unwrap(),
    }
    tmp
}

/// Both ways in (registration's `inspect` and loading) refuse, and the message names each of `want`.
fn refused(path: &std::path::Path, want: &[&str]) {
    use openledger_model::weights::inspect;
    let errors = [
        inspect(path).map(|_| ()).unwrap_err().to_string(),
        BaseModel::load(path, &Device::Cpu, None)
            .map(|_| ())
            .unwrap_err()
            .to_string(),
    ];
    for e in errors {
        for w in want {
            assert!(e.contains(w), "{e:?} does not name {w:?}");
        }
    }
}

#[test]
fn bad_model_files_are_refused_naming_the_file_and_the_field() {
    // a folder without config.json
    let t = edited_copy("qwen2", None);
    refused(t.path(), &["config.json"]);
    // an architecture we do not run: the message lists the ones we do
    let t = edited_copy("qwen2", Some(&|v| v["model_type"] = "mamba".into()));
    refused(
        t.path(),
        &[
            "config.json",
            "model_type",
            "\"mamba\"",
            "llama, mistral, qwen2, qwen3, gemma2, gemma3_text",
        ],
    );
    // a missing field, a wrong type, an inconsistent shape
    let t = edited_copy(
        "llama3",
        Some(&|v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        }),
    );
    refused(t.path(), &["config.json", "hidden_size", "missing"]);
    let t = edited_copy("llama3", Some(&|v| v["num_hidden_layers"] = "two".into()));
    refused(t.path(), &["config.json", "num_hidden_layers"]);
    let t = edited_copy(
        "mistral",
        Some(&|v| {
            v["num_key_value_heads"] = 3.into();
        }),
    );
    refused(
        t.path(),
        &["num_key_value_heads 3", "num_attention_heads 4"],
    );
    let t = edited_copy(
        "gemma3",
        Some(&|v| v["layer_types"] = serde_json::json!(["sliding_attention"])),
    );
    refused(t.path(), &["layer_types", "num_hidden_layers"]);
    // a config that does not describe the tensors: caught when they are read
    let t = edited_copy("qwen3", Some(&|v| v["num_hidden_layers"] = 3.into()));
    let e = BaseModel::load(t.path(), &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tensor blk.2."), "{e}");
    let t = edited_copy("gemma2", Some(&|v| v["intermediate_size"] = 64.into()));
    let e = BaseModel::load(t.path(), &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ffn_gate.weight has shape [96, 64], the config implies [64, 64]"),
        "{e}"
    );
    // a chat template that raises on a plain exchange
    let t = edited_copy("qwen2", Some(&|_| {}));
    let tc = t.path().join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = "{{ raise_exception('this template needs a system prompt') }}".into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let e = openledger_model::weights::inspect(t.path())
        .unwrap_err()
        .to_string();
    for w in [
        "tokenizer_config.json",
        "chat_template",
        "needs a system prompt",
    ] {
        assert!(e.contains(w), "{e:?} does not name {w:?}");
    }
}

/// GGUF metadata as an editable list.
type Metadata = Vec<(String, candle_core::quantized::gguf_file::Value)>;

/// The fixture GGUF rewritten with `edit` applied to its metadata.
fn gguf_with(name: &str, edit: &dyn Fn(&mut Metadata)) -> (tempfile::TempDir, PathBuf) {
    use candle_core::quantized::gguf_file;
    let src = dir(name).join("model.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut md: Vec<(String, gguf_file::Value)> = ct
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    edit(&mut md);
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = ct
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), ct.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edited.gguf");
    let mut w = std::fs::File::create(&out).unwrap();
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &md_refs, &t_refs).unwrap();
    (tmp, out)
}

#[test]
fn gguf_files_whose_tensors_or_metadata_do_not_fit_are_refused() {
    use candle_core::quantized::gguf_file::Value;
    let set = |key: &'static str, value: Value| {
        move |md: &mut Metadata| {
            md.retain(|(k, _)| k != key);
            md.push((key.to_string(), value.clone()));
        }
    };
    // the unedited rewrite loads: the edits below are what is refused
    let (_t, ok) = gguf_with("qwen2", &|_| {});
    BaseModel::load(&ok, &Device::Cpu, None).unwrap();
    let (_t, p) = gguf_with("qwen2", &set("qwen2.block_count", Value::U32(3)));
    refused(&p, &["edited.gguf", "missing tensor blk.2."]);
    let (_t, p) = gguf_with("gemma2", &set("gemma2.feed_forward_length", Value::U32(64)));
    refused(
        &p,
        &[
            "edited.gguf",
            "ffn_gate.weight has shape [96, 64], the config implies [64, 64]",
        ],
    );
    let (_t, p) = gguf_with(
        "llama3",
        &set("general.architecture", Value::String("mamba".into())),
    );
    refused(
        &p,
        &[
            "edited.gguf",
            "general.architecture",
            "\"mamba\"",
            "llama, qwen2, qwen3, gemma2, gemma3",
        ],
    );
    let (_t, p) = gguf_with("qwen3", &|md| {
        md.retain(|(k, _)| k != "qwen3.embedding_length")
    });
    refused(&p, &["edited.gguf", "qwen3.embedding_length"]);
    let (_t, p) = gguf_with(
        "gemma3",
        &set(
            "gemma3.attention.sliding_window_pattern",
            Value::Array(vec![Value::Bool(true)]),
        ),
    );
    refused(&p, &["edited.gguf", "layer_types", "num_hidden_layers"]);
    let (_t, p) = gguf_with(
        "mistral",
        &set(
            "tokenizer.chat_template",
            Value::String("{{ raise_exception('no') }}".into()),
        ),
    );
    let e = openledger_model::weights::inspect(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.chat_template") && e.contains("edited.gguf"),
        "{e}"
    );
}

#[test]
fn adapters_leave_in_peft_s_own_layout_for_every_family() {
    for (name, _) in FAMILIES {
        let base = BaseModel::load(&dir(name), &Device::Cpu, None).unwrap();
        let lora = Lora::load_peft(&dir(name).join("adapter"), &base.config, &Device::Cpu).unwrap();
        // what we write is what PEFT wrote (names, shapes, values: q/k rows back in Hugging Face order),
        // so PeftModel.from_pretrained loads ours as it loads its own
        let theirs = candle_core::safetensors::load(
            dir(name).join("adapter/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let ours = lora.peft_tensors().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (k, t) in &ours {
            let want = theirs
                .get(k)
                .unwrap_or_else(|| panic!("{name}: PEFT has no tensor {k}"));
            assert_eq!(t.dims(), want.dims(), "{name}: {k}");
            let d = max_abs(&(t - want).unwrap());
            assert_eq!(d, 0.0, "{name}: {k}");
        }
        let peft: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir(name).join("adapter/adapter_config.json")).unwrap(),
        )
        .unwrap();
        let cfg = lora.peft_config("base");
        for key in [
            "r",
            "lora_alpha",
            "target_modules",
            "peft_type",
            "task_type",
        ] {
            let norm = |v: &serde_json::Value| match v.as_array() {
                Some(a) => {
                    let mut a: Vec<String> = a.iter().map(|x| x.to_string()).collect();
                    a.sort();
                    serde_json::json!(a)
                }
                None => v.as_f64().map_or(v.clone(), |f| serde_json::json!(f)),
            };
            assert_eq!(norm(&cfg[key]), norm(&peft[key]), "{name}: {key}");
        }
    }
}

/// A GGUF file's tensors as stored (file row order), dequantized to f32, and its metadata.
fn gguf_contents(
    path: &std::path::Path,
) -> (
    HashMap<String, candle_core::quantized::gguf_file::Value>,
    HashMap<String, Tensor>,
) {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let tensors = ct
        .tensor_infos
        .keys()
        .map(|n| {
            let q = ct.tensor(&mut f, n, &Device::Cpu).unwrap();
            (n.clone(), q.dequantize(&Device::Cpu).unwrap())
        })
        .collect();
    (ct.metadata, tensors)
}

fn f32_gguf(path: &std::path::Path, tensors: &HashMap<String, Tensor>, src: &std::path::Path) {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let mut f = std::fs::File::open(src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let md: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let qs: Vec<(&str, QTensor)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, q)| (*k, q)).collect();
    let mut w = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut w, &md, &refs).unwrap();
}

fn logits(base: &BaseModel, lora: Option<&Lora>, ids: &[u32]) -> Tensor {
    Llama::new(base, Precision::F32, &Device::Cpu)
        .unwrap()
        .forward(&ids_tensor(ids), lora, &mut Forward::infer())
        .unwrap()
}

#[test]
fn exported_gguf_loras_applied_to_each_familys_gguf_as_llama_cpp_applies_them_give_the_adapted_logits()
 {
    use openledger_model::export;
    for f in all() {
        let lora = adapter(&f);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter.gguf");
        export::gguf_lora(&lora, "ft-1")
            .unwrap()
            .write(&out)
            .unwrap();
        let (md, lora_t) = gguf_contents(&out);
        let base_gguf = dir(f.name).join("model.gguf");
        let (base_md, mut weights) = gguf_contents(&base_gguf);
        let s = |m: &HashMap<String, candle_core::quantized::gguf_file::Value>, k: &str| {
            m[k].to_string().unwrap().clone()
        };
        assert_eq!(s(&md, "general.type"), "adapter", "{}", f.name);
        assert_eq!(s(&md, "adapter.type"), "lora", "{}", f.name);
        assert_eq!(
            s(&md, "general.architecture"),
            s(&base_md, "general.architecture"),
            "{}",
            f.name
        );
        let alpha = md["adapter.lora.alpha"].to_f32().unwrap();
        assert_eq!(alpha as f64, lora.config.alpha, "{}", f.name);
        assert_eq!(
            lora_t.len(),
            2 * lora.config.targets.len() * f.base.config.num_hidden_layers,
            "{}",
            f.name
        );
        // llama.cpp's arithmetic, on the files alone: W += alpha / r * B A, r from B's shape
        let mut adapted = 0;
        for (name, w) in weights.iter_mut() {
            let (Some(a), Some(b)) = (
                lora_t.get(&format!("{name}.lora_a")),
                lora_t.get(&format!("{name}.lora_b")),
            ) else {
                continue;
            };
            assert_eq!(a.dim(1).unwrap(), w.dim(1).unwrap(), "{}: {name}", f.name);
            assert_eq!(b.dim(0).unwrap(), w.dim(0).unwrap(), "{}: {name}", f.name);
            let scale = alpha as f64 / b.dim(1).unwrap() as f64;
            *w = (&*w + (b.matmul(a).unwrap() * scale).unwrap()).unwrap();
            adapted += 1;
        }
        assert_eq!(adapted * 2, lora_t.len(), "{}", f.name);
        let merged_path = tmp.path().join("merged.gguf");
        f32_gguf(&merged_path, &weights, &base_gguf);
        let merged = BaseModel::load(&merged_path, &Device::Cpu, None).unwrap();
        let g = BaseModel::load(&base_gguf, &Device::Cpu, None).unwrap();
        let want = logits(&g, Some(&lora), &f.ids);
        let got = logits(&merged, None, &f.ids);
        let d = rel_diff(&got, &want);
        assert!(d < LOGIT_TOL, "{}: differ by {d}", f.name);
        let d_base = rel_diff(&logits(&g, None, &f.ids), &want);
        assert!(
            d_base > 100.0 * LOGIT_TOL,
            "{}: the adapter moves the logits by {d_base} only",
            f.name
        );
        let d = rel_diff(&got, &f.reference["lora_logits"]);
        assert!(d < GGUF_TOL, "{}: transformers differs by {d}", f.name);
    }
}

#[test]
fn merged_exports_of_every_family_give_the_adapted_logits() {
    use openledger_model::export::{self, ExportDType};
    for f in all() {
        let lora = adapter(&f);
        let tmp = tempfile::tempdir().unwrap();
        // the Hugging Face folder, in f32: transformers' adapted logits
        let hf = tmp.path().join("model-hf");
        f.base
            .merged(&lora)
            .unwrap()
            .save_hf_dir_as(&hf, DType::F32)
            .unwrap();
        let m = BaseModel::load(&hf, &Device::Cpu, None).unwrap();
        let d = rel_diff(&logits(&m, None, &f.ids), &f.reference["lora_logits"]);
        assert!(d < LOGIT_TOL, "{} (folder): differ by {d}", f.name);
        // in bf16: the same tensors, each rounded to bf16
        let hf16 = tmp.path().join("model-hf-bf16");
        f.base
            .merged(&lora)
            .unwrap()
            .save_hf_dir_as(&hf16, DType::BF16)
            .unwrap();
        let t32 =
            candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
        let t16 =
            candle_core::safetensors::load(hf16.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(t16.len(), t32.len(), "{}", f.name);
        for (name, t) in &t16 {
            assert_eq!(t.dtype(), DType::BF16, "{}: {name}", f.name);
            let want = t32[name].to_dtype(DType::BF16).unwrap();
            assert_eq!(
                rel_diff(t, &want),
                0.0,
                "{}: {name} is not the f32 tensor rounded",
                f.name
            );
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf16.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], "bfloat16", "{}", f.name);
        BaseModel::load(&hf16, &Device::Cpu, None).unwrap();
        // the GGUF: the base file's own layout and metadata, the adapted tensors merged
        let g = BaseModel::load(&dir(f.name).join("model.gguf"), &Device::Cpu, None).unwrap();
        let out = tmp.path().join("model.gguf");
        export::merged_gguf(&g, &lora, ExportDType::F32, "ft-7")
            .unwrap()
            .write(&out)
            .unwrap();
        let merged = BaseModel::load(&out, &Device::Cpu, None).unwrap();
        let want = logits(&g, Some(&lora), &f.ids);
        let d = rel_diff(&logits(&merged, None, &f.ids), &want);
        assert!(d < LOGIT_TOL, "{} (GGUF): differ by {d}", f.name);
        assert_eq!(merged.config, g.config, "{}", f.name);
        let text = "Hello, world! 1234";
        assert_eq!(
            merged.tokenizer.encode(text).unwrap(),
            g.tokenizer.encode(text).unwrap()
        );
        let (md, _) = gguf_contents(&out);
        assert_eq!(md["general.name"].to_string().unwrap(), "ft-7");
        // untouched tensors are the base's, as stored; merged ones in the dtype asked for
        let (_, stored) = gguf_contents(&dir(f.name).join("model.gguf"));
        let (_, written) = gguf_contents(&out);
        let emb = "token_embd.weight";
        assert_eq!(rel_diff(&written[emb], &stored[emb]), 0.0, "{}", f.name);
        let f16 = export::merged_gguf(&g, &lora, ExportDType::F16, "ft-7").unwrap();
        let stems: Vec<&str> = lora.config.targets.iter().map(|p| p.gguf()).collect();
        let mut n_f16 = 0;
        for (name, q) in &f16.tensors {
            if stems
                .iter()
                .any(|s| name.starts_with("blk.") && name.ends_with(&format!(".{s}.weight")))
            {
                assert_eq!(
                    q.dtype(),
                    candle_core::quantized::GgmlDType::F16,
                    "{}: {name}",
                    f.name
                );
                n_f16 += 1;
            }
        }
        assert_eq!(
            n_f16,
            stems.len() * g.config.num_hidden_layers,
            "{}",
            f.name
        );
        // a Hugging Face base has no GGUF to merge into; an adapter of another shape is refused
        let e = export::merged_gguf(&f.base, &lora, ExportDType::F16, "x").unwrap_err();
        assert!(e.to_string().contains("convert_hf_to_gguf"), "{e}");
    }
    let (a, b) = (
        fixture("qwen2", Family::Qwen2),
        fixture("llama3", Family::Llama),
    );
    let e = b.base.merged(&adapter(&a)).unwrap_err();
    assert!(e.to_string().contains("trained for a"), "{e}");
}

#[test]
fn ollama_modelfiles_carry_each_templates_conventions_and_stop_tokens() {
    use openledger_model::export::{ModelfileSpec, base_tokenizer, modelfile};
    let spec = ModelfileSpec {
        from: "./model.gguf",
        adapter: Some("./adapter.gguf"),
        comments: vec!["ft-3: made\nby a test".into()],
    };
    // (Llama 3.1's template writes today's date into a system block: left to Ollama's own template)
    for (name, marker, stop) in [
        ("qwen2", Some("<|im_start|>{{ .Role }}"), "<|im_end|>"),
        ("llama3", None, "<|eot_id|>"),
        ("gemma2", Some("<start_of_turn>model\n"), "<end_of_turn>"),
        (
            "mistral",
            Some("[INST] {{ if and $sys (eq $i $last) }}"),
            "</s>",
        ),
    ] {
        for path in [dir(name), dir(name).join("model.gguf")] {
            let tok = base_tokenizer(&path).unwrap();
            let text = modelfile(&tok, &spec);
            assert!(
                text.starts_with(
                    "# ft-3: made\n# by a test\nFROM ./model.gguf\nADAPTER ./adapter.gguf\n"
                ),
                "{name}: {text}"
            );
            assert!(
                text.contains(&format!("PARAMETER stop \"{stop}\"\n")),
                "{name}: {text}"
            );
            let Some(marker) = marker else {
                assert!(!text.contains("TEMPLATE \"\"\""), "{name}: {text}");
                assert!(
                    text.contains("# no TEMPLATE: Ollama uses"),
                    "{name}: {text}"
                );
                continue;
            };
            assert!(text.contains(marker), "{name}: {text}");
            let template = text.split("TEMPLATE \"\"\"").nth(1).unwrap();
            assert!(
                template.contains("\"\"\"\n"),
                "{name}: the template is closed"
            );
            // ChatML's default system prompt (what the template writes when a conversation has none)
            let system = (name == "qwen2")
                .then_some("SYSTEM \"\"\"You are Qwen, a helpful assistant.\"\"\"\n");
            match system {
                Some(s) => assert!(text.contains(s), "{name}: {text}"),
                None => assert!(!text.contains("SYSTEM"), "{name}: {text}"),
            }
        }
    }
}
