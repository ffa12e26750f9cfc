//! The model machinery on a tiny random llama: exactness of LoRA plumbing, gradients, training, resuming,
//! file round trips and the errors bad input gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use openledger_model::train::{Dataset, Record, TrainConfig, Trainer};
use openledger_model::{
    BaseModel, Forward, Llama, Lora, LoraConfig, ModelConfig, ModelError, Precision, Proj,
};

fn tiny() -> BaseModel {
    BaseModel::random(ModelConfig::tiny(), 7).unwrap()
}

fn ids(m: &BaseModel, text: &str) -> Tensor {
    let ids = m.tokenizer.encode(text).unwrap();
    let n = ids.len();
    Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    }
}

/// Gives B non-zero values so adapters change the output: the same values for the same seed on every run
/// (candle's CPU `randn` cannot be seeded).
fn perturb(lora: &Lora, seed: u64) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, 0.05).unwrap();
    for v in lora.vars() {
        let values: Vec<f32> = (0..v.elem_count())
            .map(|_| normal.sample(&mut rng))
            .collect();
        let r = Tensor::from_vec(values, v.shape(), &Device::Cpu).unwrap();
        v.set(&(v.as_tensor() + r).unwrap()).unwrap();
    }
}

#[test]
fn fresh_lora_reproduces_the_base_model_exactly() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let lora = Lora::init(&m.config, all_targets(), 1, &Device::Cpu).unwrap();
    let x = ids(&m, "The quick brown fox jumps over the lazy dog.");
    for grad in [false, true] {
        let base = model
            .forward(
                &x,
                None,
                &mut Forward {
                    grad,
                    dropout_rng: None,
                },
            )
            .unwrap();
        let with = model
            .forward(
                &x,
                Some(&lora),
                &mut Forward {
                    grad,
                    dropout_rng: None,
                },
            )
            .unwrap();
        assert_eq!(max_abs_diff(&base, &with), 0.0, "grad={grad}");
    }
    // and a perturbed adapter does change it
    perturb(&lora, 2);
    let base = model.forward(&x, None, &mut Forward::infer()).unwrap();
    let with = model
        .forward(&x, Some(&lora), &mut Forward::infer())
        .unwrap();
    assert!(max_abs_diff(&base, &with) > 1e-3);
}

#[test]
fn fused_and_differentiable_paths_agree() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let lora = Lora::init(&m.config, all_targets(), 1, &Device::Cpu).unwrap();
    perturb(&lora, 3);
    let x = ids(&m, "Numbers 12345 and words, repeated words words.");
    let a = model
        .forward(&x, Some(&lora), &mut Forward::infer())
        .unwrap();
    let b = model
        .forward(&x, Some(&lora), &mut Forward::differentiable())
        .unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4, "{}", max_abs_diff(&a, &b));
}

#[test]
fn saved_then_loaded_adapter_gives_identical_logits() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let lora = Lora::init(&m.config, all_targets(), 1, &Device::Cpu).unwrap();
    perturb(&lora, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        lora.safetensors_bytes().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        lora.peft_config("tiny").to_string(),
    )
    .unwrap();
    let back = Lora::load_peft(dir.path(), &m.config, &Device::Cpu).unwrap();
    assert_eq!(back.config, lora.config);
    let x = ids(&m, "adapter round trip");
    let a = model
        .forward(&x, Some(&lora), &mut Forward::infer())
        .unwrap();
    let b = model
        .forward(&x, Some(&back), &mut Forward::infer())
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // the file is in PEFT's layout: q's B rows in Hugging Face order differ from ours
    let names = lora.peft_tensors().unwrap();
    assert!(names.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(
        names["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].dims(),
        &[4, 64]
    );
}

#[test]
fn hugging_face_folder_round_trip_keeps_the_logits() {
    round_trip(tiny());
    for family in openledger_model::config::Family::ALL {
        round_trip(BaseModel::random(ModelConfig::tiny_of(family), 3).unwrap());
    }
}

fn round_trip(m: BaseModel) {
    let dir = tempfile::tempdir().unwrap();
    m.save_hf_dir(dir.path()).unwrap();
    let back = BaseModel::load(dir.path(), &Device::Cpu, None).unwrap();
    assert_eq!(back.config, m.config);
    assert!(back.hash.starts_with("0x") && back.hash.len() == 66);
    let x = ids(&m, "hf folder");
    let a = Llama::new(&m, Precision::F32, &Device::Cpu)
        .unwrap()
        .forward(&x, None, &mut Forward::infer())
        .unwrap();
    let b = Llama::new(&back, Precision::F32, &Device::Cpu)
        .unwrap()
        .forward(&x, None, &mut Forward::infer())
        .unwrap();
    assert!(
        max_abs_diff(&a, &b) < 1e-6,
        "{:?}: {}",
        m.config.family,
        max_abs_diff(&a, &b)
    );
}

fn loss_of(model: &Llama, lora: &Lora, x: &Tensor) -> f32 {
    let logits = model
        .forward(x, Some(lora), &mut Forward::differentiable())
        .unwrap();
    let (_, s, v) = logits.dims3().unwrap();
    let l = logits
        .narrow(1, 0, s - 1)
        .unwrap()
        .reshape((s - 1, v))
        .unwrap();
    let y = x.narrow(1, 1, s - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&l, &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn lora_gradients_match_finite_differences() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let lora = Lora::init(&m.config, all_targets(), 5, &Device::Cpu).unwrap();
    perturb(&lora, 5);
    let x = ids(&m, "gradient check text");
    let logits = model
        .forward(&x, Some(&lora), &mut Forward::differentiable())
        .unwrap();
    let (_, s, v) = logits.dims3().unwrap();
    let l = logits
        .narrow(1, 0, s - 1)
        .unwrap()
        .reshape((s - 1, v))
        .unwrap();
    let y = x.narrow(1, 1, s - 1).unwrap().flatten_all().unwrap();
    let loss = candle_nn::loss::cross_entropy(&l, &y).unwrap();
    let grads = loss.backward().unwrap();
    let vars = lora.vars();
    let mut checked = 0;
    // A and B of q (layer 0), k/o (layer 1) and down (layer 1): a spread of attention and MLP parameters
    for vi in [0usize, 1, 2 * 7 + 2, 2 * 7 + 7, 2 * 7 + 13] {
        let var = &vars[vi];
        let g = grads
            .get(var)
            .expect("gradient reaches every LoRA parameter")
            .flatten_all()
            .unwrap();
        let gv: Vec<f32> = g.to_vec1().unwrap();
        // the three largest-magnitude entries: finite differences are meaningful there
        let mut idx: Vec<usize> = (0..gv.len()).collect();
        idx.sort_by(|&a, &b| gv[b].abs().total_cmp(&gv[a].abs()));
        for &i in idx.iter().take(3) {
            let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let eps = 1e-2f32;
            let set = |w: Vec<f32>| {
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap()
            };
            let bump = |d: f32| {
                let mut w = orig.clone();
                w[i] += d;
                set(w);
                loss_of(&model, &lora, &x)
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
            set(orig.clone());
            let rel = (fd - gv[i]).abs() / gv[i].abs().max(1e-3);
            assert!(
                rel < 0.05,
                "var {vi} entry {i}: autograd {} vs finite difference {fd}",
                gv[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}

fn memorise_set() -> Vec<(usize, Record)> {
    vec![
        (0, Record::Text("alpha beta gamma delta".into())),
        (1, Record::Text("one two three four five".into())),
        (
            2,
            Record::Pair {
                prompt: "capital of France?".into(),
                completion: "Paris".into(),
            },
        ),
    ]
}

/// Adding data never moves an earlier example between the splits (what lets a model trained on a later
/// Datanet version reuse the attribution segments of one trained on an earlier one).
#[test]
fn the_held_out_split_is_stable_when_data_is_added() {
    let m = tiny();
    let pairs = |range: std::ops::Range<usize>| -> Vec<(usize, Record)> {
        range
            .map(|i| {
                (
                    i,
                    Record::Pair {
                        prompt: format!("code of item {i}?"),
                        completion: format!("item {i} has code {}", i * 37 % 101),
                    },
                )
            })
            .collect()
    };
    let cfg = TrainConfig {
        eval_fraction: 0.3,
        ..TrainConfig::default()
    };
    let small = Dataset::build(&m.tokenizer, &pairs(0..200), &cfg).unwrap();
    let large = Dataset::build(&m.tokenizer, &pairs(0..300), &cfg).unwrap();
    let share = small.eval.len() as f64 / 200.0;
    assert!((0.2..0.4).contains(&share), "held out {share}");
    let has = |set: &[openledger_model::train::Example], e: &openledger_model::train::Example| {
        set.iter()
            .any(|x| x.source == e.source && x.tokens.ids == e.tokens.ids)
    };
    assert!(small.train.iter().all(|e| has(&large.train, e)));
    assert!(small.eval.iter().all(|e| has(&large.eval, e)));
    // another seed draws another split
    let other = Dataset::build(
        &m.tokenizer,
        &pairs(0..200),
        &TrainConfig {
            seed: 9,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(other.eval.iter().any(|e| !has(&small.eval, e)));
    // two examples: one on each side, whatever the draws
    for f in [0.01, 0.89] {
        let two = Dataset::build(
            &m.tokenizer,
            &pairs(0..2),
            &TrainConfig {
                eval_fraction: f,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!((two.train.len(), two.eval.len()), (1, 1), "fraction {f}");
    }
}

#[test]
fn training_memorises_a_small_set() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        steps: Some(60),
        learning_rate: 2e-2,
        batch_size: 3,
        eval_fraction: 0.0,
        warmup_steps: Some(5),
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        max_seq_len: 128,
        ..TrainConfig::default()
    };
    let ds = Dataset::build(&m.tokenizer, &memorise_set(), &cfg).unwrap();
    assert_eq!(ds.train.len(), 3);
    // the pair's prompt tokens are not targets, its completion tokens are
    let pair = ds.train.iter().find(|e| e.source == 2).unwrap();
    assert!(!pair.tokens.targets[0] && *pair.tokens.targets.last().unwrap());
    let lora = Lora::init(&m.config, cfg.lora.clone(), cfg.seed, &Device::Cpu).unwrap();
    let trainer = Trainer {
        model: &model,
        config: cfg,
        dataset: &ds,
        pad: m.tokenizer.eos,
        checkpoint_dir: None,
    };
    let mut losses = vec![];
    let metrics = trainer
        .run(&lora, &AtomicBool::new(false), &mut |e| {
            if let openledger_model::Event::Step { loss, .. } = e {
                losses.push(loss);
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(losses.len(), 60);
    assert!(
        metrics.final_loss < 0.3 * metrics.first_loss,
        "loss {} -> {}",
        metrics.first_loss,
        metrics.final_loss
    );
}

#[test]
fn an_interrupted_run_resumes_to_the_same_adapter() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        steps: Some(8),
        learning_rate: 1e-2,
        batch_size: 2,
        eval_fraction: 0.0,
        checkpoint_every: 3,
        lora: LoraConfig {
            dropout: 0.1,
            ..LoraConfig::default()
        },
        ..TrainConfig::default()
    };
    let ds = Dataset::build(&m.tokenizer, &memorise_set(), &cfg).unwrap();
    let run = |dir: Option<std::path::PathBuf>, stop_after: Option<usize>| {
        let lora = Lora::init(&m.config, cfg.lora.clone(), 0, &Device::Cpu).unwrap();
        let t = Trainer {
            model: &model,
            config: cfg.clone(),
            dataset: &ds,
            pad: m.tokenizer.eos,
            checkpoint_dir: dir,
        };
        let stop = AtomicBool::new(false);
        let r = t.run(&lora, &stop, &mut |e| {
            if let (openledger_model::Event::Step { step, .. }, Some(n)) = (&e, stop_after)
                && *step == n
            {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        });
        (lora, r)
    };
    let (straight, r) = run(None, None);
    r.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let (_, r) = run(Some(ckpt.clone()), Some(5));
    assert!(matches!(r, Err(ModelError::Stopped(_))), "{r:?}");
    let (resumed, r) = run(Some(ckpt), None);
    assert_eq!(r.unwrap().resumed_from, Some(5));
    assert_eq!(
        straight.safetensors_bytes().unwrap(),
        resumed.safetensors_bytes().unwrap()
    );
}

#[test]
fn bad_parameters_are_refused_with_their_name() {
    let ok = TrainConfig::default();
    let cases: Vec<(TrainConfig, &str)> = vec![
        (
            TrainConfig {
                learning_rate: 0.0,
                ..ok.clone()
            },
            "learning_rate",
        ),
        (
            TrainConfig {
                learning_rate: f64::NAN,
                ..ok.clone()
            },
            "learning_rate",
        ),
        (
            TrainConfig {
                max_seq_len: 100_000,
                ..ok.clone()
            },
            "max_seq_len",
        ),
        (
            TrainConfig {
                lora: LoraConfig {
                    rank: 0,
                    ..LoraConfig::default()
                },
                ..ok.clone()
            },
            "lora rank",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..ok.clone()
            },
            "batch_size",
        ),
    ];
    for (cfg, name) in cases {
        let err = cfg.validate(8192).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    ok.validate(8192).unwrap();
}

#[test]
fn corrupt_model_files_are_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("broken.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let err = BaseModel::load(&gguf, &Device::Cpu, None).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    let m = tiny();
    let hf = dir.path().join("hf");
    m.save_hf_dir(&hf).unwrap();
    let st = hf.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = BaseModel::load(&hf, &Device::Cpu, None).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run_with_the_error() {
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        steps: Some(6),
        batch_size: 2,
        eval_fraction: 0.0,
        checkpoint_every: 2,
        ..TrainConfig::default()
    };
    let ds = Dataset::build(&m.tokenizer, &memorise_set(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let lora = Lora::init(&m.config, cfg.lora.clone(), 0, &Device::Cpu).unwrap();
    let t = Trainer {
        model: &model,
        config: cfg,
        dataset: &ds,
        pad: m.tokenizer.eos,
        checkpoint_dir: Some(ckpt.clone()),
    };
    let mut steps = 0;
    let err = t
        .run(&lora, &AtomicBool::new(false), &mut |e| {
            if matches!(e, openledger_model::Event::Step { .. }) {
                steps += 1;
                // after the first step the checkpoint's staging path becomes unusable, as on a full disk
                std::fs::write(dir.path().join("ckpt.tmp"), b"in the way").unwrap();
            }
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(err.to_string().contains("ckpt.tmp"), "{err}");
    // it stopped at the first checkpoint instead of training on without one, and left no checkpoint
    assert_eq!(steps, 2);
    assert!(!ckpt.exists());
}

/// A padded two-row batch for the hand-written passes and the autograd path alike: the second row is
/// shorter (padding after it) and only some positions are targets (as a prompt/completion mask gives).
struct Padded {
    ids: Vec<u32>,
    seq: usize,
    positions: Vec<u32>,
    labels: Vec<u32>,
}

fn padded_batch(m: &BaseModel) -> Padded {
    // longer than two attention blocks of 64 rows, and a row that ends inside the second block
    let a = m
        .tokenizer
        .encode(&"the hand-written backward pass, checked against autograd. ".repeat(3))
        .unwrap();
    let b = m
        .tokenizer
        .encode("a shorter row, padded after its last token to the length of the first")
        .unwrap();
    assert!(a.len() > 128 && b.len() > 64 && b.len() < a.len());
    let seq = a.len();
    let pad = m.tokenizer.eos;
    let mut ids = a.clone();
    ids.extend(&b);
    ids.extend(std::iter::repeat_n(pad, seq - b.len()));
    let (mut positions, mut labels) = (Vec::new(), Vec::new());
    for i in 0..seq - 1 {
        // every other position of row 0 (a loss mask), every real position of row 1
        if i % 2 == 1 {
            positions.push(i as u32);
            labels.push(a[i + 1]);
        }
    }
    for i in 0..b.len() - 1 {
        positions.push((seq + i) as u32);
        labels.push(b[i + 1]);
    }
    Padded {
        ids,
        seq,
        positions,
        labels,
    }
}

impl Padded {
    fn host(&self) -> openledger_model::backprop::BatchRef<'_> {
        openledger_model::backprop::BatchRef {
            ids: &self.ids,
            batch: 2,
            seq: self.seq,
            positions: &self.positions,
            labels: &self.labels,
        }
    }
}

#[test]
fn hand_written_passes_match_autograd_with_padding_masks_and_dropout() {
    check_hand_written_against_autograd(&tiny());
}

/// The same check on a tiny random model of every family, every feature on (windows of 5 tokens inside
/// attention blocks of 64 rows, soft-caps, q/k norms, biases, post-norms, wide heads).
#[test]
fn hand_written_passes_match_autograd_for_every_family() {
    for family in openledger_model::config::Family::ALL {
        let m = BaseModel::random(ModelConfig::tiny_of(family), 7).unwrap();
        assert_eq!(m.config.family, family);
        check_hand_written_against_autograd(&m);
    }
}

fn check_hand_written_against_autograd(m: &BaseModel) {
    use openledger_model::backprop;
    use rand::SeedableRng;
    let model = Llama::new(m, Precision::F32, &Device::Cpu).unwrap();
    assert!(backprop::supported(&model));
    let mut cfg = all_targets();
    cfg.dropout = 0.2;
    let lora = Lora::init(&m.config, cfg, 11, &Device::Cpu).unwrap();
    perturb(&lora, 11);
    let batch = padded_batch(m);
    let scale = 1.0 / batch.labels.len() as f32;

    // autograd: hidden -> target rows -> summed cross-entropy -> backward, dropout from the same seed
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let ids = Tensor::from_slice(&batch.ids, (2, batch.seq), &Device::Cpu).unwrap();
    let hidden = model
        .hidden(
            &ids,
            Some(&lora),
            &mut Forward {
                grad: true,
                dropout_rng: Some(&mut rng),
            },
        )
        .unwrap();
    let pos = Tensor::from_slice(&batch.positions, batch.positions.len(), &Device::Cpu).unwrap();
    let lab = Tensor::from_slice(&batch.labels, batch.labels.len(), &Device::Cpu).unwrap();
    let h = hidden.flatten_to(1).unwrap().index_select(&pos, 0).unwrap();
    let loss = model.loss_sum(&h, &lab).unwrap();
    let want_loss = loss.to_scalar::<f32>().unwrap() as f64;
    let grads = (loss * scale as f64).unwrap().backward().unwrap();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let got =
        backprop::loss_and_grads(&model, &lora, &batch.host(), Some(&mut rng), scale).unwrap();
    assert!(
        (got.loss_sum - want_loss).abs() < 1e-4 * want_loss.abs(),
        "loss {} vs autograd {want_loss}",
        got.loss_sum
    );
    let vars = lora.vars();
    assert_eq!(got.grads.len(), vars.len());
    for (i, (v, g)) in vars.iter().zip(&got.grads).enumerate() {
        let want: Vec<f32> = grads
            .get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g.len(), want.len(), "var {i}");
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(
            scale > 0.0,
            "{:?}: var {i} has a zero gradient on the autograd path",
            m.config.family
        );
        let worst = g
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "{:?}: var {i}: max |diff| {worst} vs max |grad| {scale}",
            m.config.family
        );
    }
    // the forward-only loss (evaluation) is the same number, without dropout
    let eval = backprop::loss(&model, Some(&lora), &batch.host()).unwrap();
    let want_eval = {
        let hidden = model
            .hidden(&ids, Some(&lora), &mut Forward::infer())
            .unwrap();
        let h = hidden.flatten_to(1).unwrap().index_select(&pos, 0).unwrap();
        model
            .loss_sum(&h, &lab)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    assert!(
        (eval - want_eval).abs() < 1e-4 * want_eval.abs(),
        "{eval} vs {want_eval}"
    );
}

#[test]
fn hand_written_gradients_match_finite_differences() {
    use openledger_model::backprop;
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let lora = Lora::init(&m.config, all_targets(), 13, &Device::Cpu).unwrap();
    perturb(&lora, 13);
    let batch = padded_batch(&m);
    let got = backprop::loss_and_grads(&model, &lora, &batch.host(), None, 1.0).unwrap();
    let vars = lora.vars();
    let mut checked = 0;
    // A and B of v (layer 0) and of gate/down (layer 1)
    for vi in [4usize, 5, 14 + 8, 14 + 13] {
        let var = &vars[vi];
        let g = &got.grads[vi];
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for &i in idx.iter().take(3) {
            let bump = |d: f32| {
                let mut w = orig.clone();
                w[i] += d;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                backprop::loss(&model, Some(&lora), &batch.host()).unwrap()
            };
            let eps = 1e-2f32;
            let fd = ((bump(eps) - bump(-eps)) / (2.0 * eps as f64)) as f32;
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let rel = (fd - g[i]).abs() / g[i].abs().max(1e-3);
            assert!(
                rel < 0.05,
                "var {vi} entry {i}: backprop {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn hand_written_passes_refuse_out_of_range_batches() {
    use openledger_model::backprop::{self, BatchRef};
    let m = tiny();
    let model = Llama::new(&m, Precision::F32, &Device::Cpu).unwrap();
    let ids = [1u32, 2, 3, 4];
    let ok = BatchRef {
        ids: &ids,
        batch: 2,
        seq: 2,
        positions: &[0, 2],
        labels: &[2, 4],
    };
    assert!(backprop::loss(&model, None, &ok).unwrap().is_finite());
    let bad_label = BatchRef {
        labels: &[2, 10_000],
        ..ok
    };
    let bad_pos = BatchRef {
        positions: &[0, 4],
        ..ok
    };
    let bad_shape = BatchRef { seq: 3, ..ok };
    for b in [bad_label, bad_pos, bad_shape] {
        let e = backprop::loss(&model, None, &b).unwrap_err();
        assert!(
            matches!(e, ModelError::Invalid { name: "batch", .. }),
            "{e}"
        );
    }
    // a model built for inference (quantized precision) is not one to train through these passes
    let q = Llama::new(&m, Precision::Quantized, &Device::Cpu).unwrap();
    assert!(!backprop::supported(&q));
    assert!(matches!(
        backprop::loss(&q, None, &ok).unwrap_err(),
        ModelError::Unsupported(_)
    ));
}
