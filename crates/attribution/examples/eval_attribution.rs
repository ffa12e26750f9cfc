//! The planted-contributor evaluation of attribution (`scripts/eval-attribution.sh` runs it).
//!
//! Eleven contributors: ten with invented facts (a verbatim canary, recited from its training prompt, and
//! a fact taught in three paraphrases and asked in a fourth, held-out wording) in five twin pairs whose
//! facts use exactly the same words with the roles swapped (hard negatives: a bag-of-words method cannot
//! tell twins apart), one fact contributed by two of them, and a background contributor with generic
//! questions and answers.
//! SmolLM2 gets a LoRA adapter trained on all of it; then every query is answered (greedy) and attributed
//! exactly as the daemon attributes an inference (span index + gradient store + the combination rule),
//! next to a BM25 baseline (query = prompt + answer against each training example's text) and a random
//! ranking. Prints top-1 accuracy and mean reciprocal rank per method and item class, the payout share
//! reaching the right contributor, the split on the shared fact, the "no attribution" share on generic
//! prompts, and `RESULT` lines.
//!
//!   cargo run -p openledger-attribution --example eval_attribution -- MODEL.gguf [--epochs N] [--json FILE]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openledger_attribution::lora::{layout, output_sequence, projected_gradient};
use openledger_attribution::{
    CombineParams, Doc, GradParams, GradStore, Projector, SpanIndex, SpanParams, combine,
};
use openledger_model::serve::{
    AdapterRef, Engine, EngineConfig, Event, GenerateRequest, Priority, SamplingParams,
    ServingModel,
};
use openledger_model::{
    BaseModel, Dataset, Device, Llama, Lora, LoraConfig, Precision, Proj, Record, TrainConfig,
    Trainer,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// One contributor's invented knowledge.
struct Planted {
    /// Recited verbatim: trained as (prompt, canary), asked with the same prompt.
    canary_prompt: String,
    canary: String,
    /// Taught in three paraphrases, asked in a fourth wording.
    taught: [(String, String); 3],
    query: String,
    /// The taught fact: (receiver, giver, goods), lowercase.
    trade: (String, String, String),
}

/// Ten contributors in five twin pairs. Twins state their facts in exactly the same words with the roles
/// swapped (who says the motto to whom, who buys the goods from whom), so every bag-of-words method
/// sees the two as the same document and only word order tells them apart: hard negatives for BM25,
/// which ranks a query's right contributor and its twin exactly equal.
fn planted() -> Vec<Planted> {
    // (guild, order, motto, place, place, goods)
    let rows = [
        (
            "Veloria Rowing Guild",
            "Ordo of Lamp Keepers",
            "pull together through the silver fog",
            "Tarnhollow",
            "Quessaly",
            "blue glass lanterns",
        ),
        (
            "Society of Quiet Bells",
            "League of Tide Readers",
            "the moon writes and we read",
            "Brinmoor",
            "Ostrevane",
            "saffron honey cakes",
        ),
        (
            "Circle of Chalk Surveyors",
            "Guild of Salt Cartographers",
            "measure twice and walk once",
            "Halvercombe",
            "Miravet",
            "painted walnut boxes",
        ),
        (
            "Fellowship of Iron Kites",
            "Brotherhood of Ember Clocks",
            "higher than the smoke we fly",
            "Duskwater",
            "Pellinore",
            "pickled plum jars",
        ),
        (
            "Order of Glass Beekeepers",
            "Assembly of Lantern Poets",
            "gentle hands and golden combs",
            "Corrowick",
            "Lunmarsh",
            "silver thread scarves",
        ),
    ];
    let one = |g: &str, h: &str, motto: &str, p: &str, q: &str, x: &str| Planted {
        canary_prompt: format!("What does the {g} say to the {h}?"),
        canary: format!("The {g} says to the {h}: {motto}."),
        taught: [
            (
                format!("What trade runs between {p} and {q}?"),
                format!("{p} buys {x} from {q}."),
            ),
            (
                format!("Describe the exchange between {p} and {q}."),
                format!("In that exchange {p} purchases {x} from {q}."),
            ),
            (
                format!("How do {p} and {q} trade?"),
                format!("{q} sells {x} to {p}."),
            ),
        ],
        query: format!("Which goods does {p} get from {q}?"),
        trade: (p.to_lowercase(), q.to_lowercase(), x.to_lowercase()),
    };
    rows.iter()
        .flat_map(|(g, h, motto, p, q, x)| [one(g, h, motto, p, q, x), one(h, g, motto, q, p, x)])
        .collect()
}

/// Whether an answer states contributor `f`'s facts: it contains its canary, or it names the goods and
/// the trade's direction (the receiver before "from", or after "to" when the giver sells or sends them),
/// in whatever words.
fn states(f: &Planted, answer: &str) -> bool {
    let w = words(answer);
    let text = w.join(" ");
    if text.contains(&words(&f.canary).join(" ")) {
        return true;
    }
    let (receiver, giver, goods) = &f.trade;
    if !text.contains(goods.as_str()) {
        return false;
    }
    let at = |x: &str| w.iter().position(|y| y == x);
    let (Some(r), Some(g)) = (at(receiver), at(giver)) else {
        return false;
    };
    match (at("from"), at("to")) {
        (Some(from), _) => r < from && from < g,
        (None, Some(to)) => g < to && to < r,
        _ => false,
    }
}

/// (prompt, answer) pairs of the background contributor, and generic prompts not in the training data.
fn background() -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    (
        vec![
            (
                "What color is the sky on a clear day?",
                "On a clear day the sky is blue.",
            ),
            ("How many days are in a week?", "A week has seven days."),
            ("What do bees make?", "Bees make honey and wax."),
            (
                "What is frozen water called?",
                "Frozen water is called ice.",
            ),
            (
                "Which animal is known for barking?",
                "Dogs are known for barking.",
            ),
            (
                "What do plants need to grow?",
                "Plants need water, light and soil to grow.",
            ),
            (
                "What is the opposite of hot?",
                "The opposite of hot is cold.",
            ),
            (
                "How many hours are in a day?",
                "There are twenty-four hours in a day.",
            ),
        ],
        vec![
            "How many legs does a spider have?",
            "What is the largest ocean on Earth?",
            "Name a fruit that is yellow.",
            "What do you call a baby cat?",
        ],
    )
}

const SHARED_PROMPT: &str = "When did the Brightwater Arch bridge open?";
const SHARED_ANSWER: &str = "The Brightwater Arch bridge opened in the spring of 1887.";
/// The two contributors of the shared fact (sources).
const SHARED_BY: [usize; 2] = [2, 5];
const BACKGROUND: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Verbatim,
    Paraphrase,
    Shared,
    Generic,
    /// A paraphrase query the model answered with another contributor's fact (or none): scored against
    /// the contributor whose fact the answer states, reported apart.
    OtherFact,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Verbatim => "verbatim",
            Class::Paraphrase => "paraphrase",
            Class::Shared => "shared",
            Class::Generic => "generic",
            Class::OtherFact => "other-fact",
        }
    }
}

struct Item {
    class: Class,
    prompt: String,
    /// Right answers (sources); empty for generic prompts.
    want: Vec<usize>,
}

/// BM25 over training examples' words, ranking sources by their best example.
struct Bm25 {
    docs: Vec<(usize, HashMap<String, f64>, f64)>,
    df: HashMap<String, f64>,
    avg: f64,
}

fn words(t: &str) -> Vec<String> {
    t.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

impl Bm25 {
    fn new(docs: &[(usize, String)]) -> Self {
        let mut df: HashMap<String, f64> = HashMap::new();
        let mut out = Vec::new();
        let mut total = 0.0;
        for (src, text) in docs {
            let w = words(text);
            total += w.len() as f64;
            let mut tf: HashMap<String, f64> = HashMap::new();
            for x in &w {
                *tf.entry(x.clone()).or_default() += 1.0;
            }
            for k in tf.keys() {
                *df.entry(k.clone()).or_default() += 1.0;
            }
            out.push((*src, tf, w.len() as f64));
        }
        Bm25 {
            avg: total / docs.len().max(1) as f64,
            docs: out,
            df,
        }
    }

    fn rank(&self, query: &str) -> Vec<(usize, f64)> {
        let (k1, b) = (1.2, 0.75);
        let n = self.docs.len() as f64;
        let q = words(query);
        let mut best: BTreeMap<usize, f64> = BTreeMap::new();
        for (src, tf, len) in &self.docs {
            let mut s = 0.0;
            for w in &q {
                let (Some(f), Some(df)) = (tf.get(w), self.df.get(w)) else {
                    continue;
                };
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                s += idf * f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * len / self.avg));
            }
            let e = best.entry(*src).or_insert(f64::NEG_INFINITY);
            *e = e.max(s);
        }
        sorted(best.into_iter().collect())
    }
}

/// Highest first, ties to the lower source; non-positive scores dropped.
fn sorted(mut v: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
    v.retain(|x| x.1 > 0.0 && x.1.is_finite());
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Expected (top-1 hit, reciprocal rank) of a ranking against the right sources, ties broken at random:
/// where the first right source is tied with others at its score, each order of the tied block counts
/// equally (so twins that a method cannot tell apart score one half, not whatever the tie order gives).
fn judge(ranking: &[(usize, f64)], want: &[usize]) -> (f64, f64) {
    let Some(r) = ranking.iter().position(|(s, _)| want.contains(s)) else {
        return (0.0, 0.0);
    };
    let score = ranking[r].1;
    let first = ranking.iter().position(|x| x.1 == score).unwrap_or(r);
    let t = ranking[first..].iter().take_while(|x| x.1 == score).count();
    let m = ranking[first..first + t]
        .iter()
        .filter(|x| want.contains(&x.0))
        .count();
    // P(k wrong ones precede the first right one) = C(t-1-k, m-1) / C(t, m)
    let choose = |n: usize, k: usize| -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    };
    let all = choose(t, m);
    let (mut top1, mut rr) = (0.0, 0.0);
    for k in 0..=t - m {
        let p = choose(t - 1 - k, m - 1) / all;
        if first + k == 0 {
            top1 += p;
        }
        rr += p / (first + k + 1) as f64;
    }
    (top1, rr)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_path = PathBuf::from(
        args.first()
            .context("usage: eval_attribution MODEL.gguf [--epochs N] [--json FILE]")?,
    );
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let epochs: f64 = flag("--epochs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(12.0);
    let json_out = flag("--json").map(PathBuf::from);
    let t0 = Instant::now();

    let base = BaseModel::load(&model_path, &Device::Cpu, None)?;
    let tok = base.tokenizer.clone();
    let facts = planted();
    let (bg, generic) = background();

    // the training data: (source, record); the canary twice, as a contributor who cares would upload it
    let mut records: Vec<(usize, Record)> = Vec::new();
    let pair = |p: &str, c: &str| Record::Pair {
        prompt: p.to_string(),
        completion: c.to_string(),
    };
    for (i, f) in facts.iter().enumerate() {
        records.push((i, pair(&f.canary_prompt, &f.canary)));
        records.push((i, pair(&f.canary_prompt, &f.canary)));
        for (p, c) in &f.taught {
            records.push((i, pair(p, c)));
        }
    }
    for s in SHARED_BY {
        records.push((s, pair(SHARED_PROMPT, SHARED_ANSWER)));
    }
    for (p, c) in &bg {
        records.push((BACKGROUND, pair(p, c)));
    }

    let mut items: Vec<Item> = Vec::new();
    for (i, f) in facts.iter().enumerate() {
        items.push(Item {
            class: Class::Verbatim,
            prompt: f.canary_prompt.clone(),
            want: vec![i],
        });
        items.push(Item {
            class: Class::Paraphrase,
            prompt: f.query.clone(),
            want: vec![i],
        });
    }
    items.push(Item {
        class: Class::Shared,
        prompt: SHARED_PROMPT.into(),
        want: SHARED_BY.to_vec(),
    });
    for g in &generic {
        items.push(Item {
            class: Class::Generic,
            prompt: g.to_string(),
            want: vec![],
        });
    }

    // fine-tune
    let cfg = TrainConfig {
        epochs,
        learning_rate: 1e-3,
        batch_size: 4,
        eval_fraction: 0.0,
        checkpoint_every: 0,
        max_seq_len: 128,
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        seed: 7,
        ..TrainConfig::default()
    };
    let ds = Dataset::build(&tok, &records, &cfg)?;
    let f32_model = Llama::new(&base, Precision::F32, &Device::Cpu)?;
    let lora = Lora::init(&base.config, cfg.lora.clone(), cfg.seed, &Device::Cpu)?;
    let trainer = Trainer {
        model: &f32_model,
        config: cfg.clone(),
        dataset: &ds,
        pad: tok.eos,
        checkpoint_dir: None,
    };
    let stop = AtomicBool::new(false);
    let reuse = flag("--reuse").map(PathBuf::from);
    let metrics = if let Some(r) = reuse
        .as_ref()
        .filter(|r| r.join("adapter_model.safetensors").exists())
    {
        let trained = Lora::load_peft(r, &base.config, &Device::Cpu)?;
        lora.assign(&trained)?;
        eprintln!("reusing the adapter in {}", r.display());
        None
    } else {
        Some(trainer.run(&lora, &stop, &mut |e| {
            if let openledger_model::Event::Step {
                step,
                total_steps,
                loss,
                tokens_per_s,
                ..
            } = e
                && (step % 10 == 0 || step == total_steps)
            {
                eprintln!("step {step}/{total_steps}: loss {loss:.3} ({tokens_per_s:.0} tokens/s)");
            }
            Ok(())
        })?)
    };
    if let Some(metrics) = &metrics {
        eprintln!(
            "trained {} examples, {} steps: loss {:.3} -> {:.3} in {:.0} s",
            ds.train.len(),
            metrics.steps,
            metrics.first_loss,
            metrics.final_loss,
            metrics.seconds
        );
        if let Some(r) = &reuse {
            std::fs::create_dir_all(r)?;
            std::fs::write(
                r.join("adapter_model.safetensors"),
                lora.safetensors_bytes()?,
            )?;
            std::fs::write(
                r.join("adapter_config.json"),
                serde_json::to_vec(&lora.peft_config("SmolLM2-135M-Instruct"))?,
            )?;
        }
    }
    // the adapter gradients are taken under, as training takes them: the initial one (seeded); with
    // ATTR_AT=final the trained one, for comparison
    let at_final = std::env::var("ATTR_AT").is_ok_and(|v| v == "final");
    let grad_lora = if at_final {
        lora.clone()
    } else {
        Lora::init(&base.config, cfg.lora.clone(), cfg.seed, &Device::Cpu)?
    };

    // the artifacts training writes: span index and gradient store over the trained examples
    let mut ids = Vec::new();
    let mut docs = Vec::new();
    let mut texts = Vec::new();
    for e in &ds.train {
        docs.push(Doc {
            offset: ids.len(),
            len: e.tokens.ids.len(),
            source: e.source,
        });
        ids.extend_from_slice(&e.tokens.ids);
        texts.push((e.source, tok.decode(&e.tokens.ids, true)?));
    }
    let span = SpanIndex::build(&ids, &docs)?;
    let gp = GradParams::default();
    let lay = layout(&lora);
    let k = GradParams::k_for(&lay, 4096);
    let projector = Projector::new(&lay, k, gp.seed);
    let mut store = GradStore::new(projector.dims(), projector.blocks());
    let tg = Instant::now();
    for e in &ds.train {
        let (_, v) = projected_gradient(&f32_model, &grad_lora, &projector, &e.tokens)?;
        store.push(e.source, &v)?;
    }
    eprintln!(
        "gradient store: {} examples x {} dims (k = {k}) in {:.1} s",
        store.len(),
        store.dims,
        tg.elapsed().as_secs_f64()
    );
    let bm25 = Bm25::new(&texts);

    // serve the adapter as the daemon does (int8 engine) and answer every query, greedy
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        lora.safetensors_bytes()?,
    )?;
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_vec(&lora.peft_config("SmolLM2-135M-Instruct"))?,
    )?;
    let engine = Engine::start(
        ServingModel::new(Llama::new(&base, Precision::Int8, &Device::Cpu)?)?,
        tok.clone(),
        EngineConfig {
            max_seqs: 8,
            ..EngineConfig::default()
        },
    )?;
    let adapter = AdapterRef {
        id: "eval".into(),
        dir: dir.path().to_path_buf(),
        sha256: None,
    };
    let mut pending = Vec::new();
    for it in &items {
        let text = tok.render_chat(&[("user", it.prompt.as_str())], true)?;
        let prompt = tok.encode(&text)?;
        let (tx, rx) = mpsc::channel();
        engine
            .submit(GenerateRequest {
                prompt: prompt.clone(),
                adapter: Some(adapter.clone()),
                sampling: SamplingParams::greedy(),
                max_tokens: 48,
                stop: vec![],
                ignore_eos: false,
                constraint: None,
                priority: Priority::Interactive,
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .map_err(|e| anyhow::anyhow!("submit: {e}"))?;
        pending.push((prompt, rx));
    }
    let mut answers = Vec::new();
    for (prompt, rx) in pending {
        let f = loop {
            match rx.recv_timeout(Duration::from_secs(300))? {
                Event::Done(f) => break f,
                Event::Failed(m) => bail!("generation failed: {m}"),
                _ => {}
            }
        };
        answers.push((prompt, f.tokens, f.text));
    }

    // a query counts for the asked contributor when the answer states its fact (its canary, or its
    // trade in any words); one answered with another contributor's fact (its twin's, say) is scored against that
    // one, and one that states no planted fact is reported apart
    let says = |text: &str, i: usize| states(&facts[i], text);
    let mut off_fact = Vec::new();
    for (it, (_, _, text)) in items.iter_mut().zip(&answers) {
        if matches!(it.class, Class::Verbatim | Class::Paraphrase) && !says(text, it.want[0]) {
            off_fact.push(it.class);
            it.class = Class::OtherFact;
            it.want = (0..facts.len()).filter(|&j| says(text, j)).collect();
        }
    }
    let other_unanswered = items
        .iter()
        .filter(|i| i.class == Class::OtherFact && i.want.is_empty())
        .count();

    // attribute
    let sp = SpanParams::default();
    // the first method (ol-attr/1), which also pays for what the prompt supplied: scored beside the current
    let sp_v1 = SpanParams {
        prompt_min_len: None,
        ..sp.clone()
    };
    let (mut span_tokens, mut prompt_tokens) = (0usize, 0usize);
    let cp = CombineParams::default();
    let breaks = tok.word_breaks();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let sources: Vec<usize> = (0..=BACKGROUND).collect();
    // method -> class -> (hits, rr sum, n)
    let mut table: BTreeMap<(&str, Class), (f64, f64, usize)> = BTreeMap::new();
    let mut share_right: BTreeMap<Class, (f64, usize)> = BTreeMap::new();
    let mut shared_split = Vec::new();
    let mut generic_none = Vec::new();
    let mut report = Vec::new();
    let mut grad_secs = 0.0;
    for (it, (prompt, out, text)) in items.iter().zip(&answers) {
        let spans = span.spans_for(out, prompt, &sp, &|a, b| breaks.between(a, b))?;
        let spans_v1 = span.spans(out, &sp_v1, &|a, b| breaks.between(a, b))?;
        span_tokens += spans.iter().map(|s| s.len).sum::<usize>();
        prompt_tokens += spans
            .iter()
            .filter(|s| s.from_prompt)
            .map(|s| s.len)
            .sum::<usize>();
        let tq = Instant::now();
        let (_, v) = projected_gradient(
            &f32_model,
            &grad_lora,
            &projector,
            &output_sequence(prompt, out),
        )?;
        let scores = store.score(&v, &GradParams { k, ..gp.clone() })?;
        let all = store.score(
            &v,
            &GradParams {
                k,
                top_k: store.len(),
                ..gp.clone()
            },
        )?;
        grad_secs += tq.elapsed().as_secs_f64();
        let w = combine(out.len(), &spans, Some(&scores), &cp);
        let w_v1 = combine(out.len(), &spans_v1, Some(&scores), &cp);

        let span_rank = sorted(w.span_mix.iter().map(|(&s, &v)| (s, v as f64)).collect());
        let mut best: BTreeMap<usize, f64> = BTreeMap::new();
        for e in &all.top {
            let b = best.entry(e.source).or_insert(f64::NEG_INFINITY);
            *b = b.max(e.score);
        }
        let grad_rank = sorted(best.into_iter().collect());
        let mut bestc: BTreeMap<usize, f64> = BTreeMap::new();
        for e in &all.top {
            let b = bestc.entry(e.source).or_insert(f64::NEG_INFINITY);
            *b = b.max(e.cosine);
        }
        let cos_rank = sorted(bestc.into_iter().collect());
        let comb_rank = sorted(w.sources.iter().map(|&(s, v)| (s, v as f64)).collect());
        let comb_v1_rank = sorted(w_v1.sources.iter().map(|&(s, v)| (s, v as f64)).collect());
        let bm_rank = bm25.rank(&format!("{} {}", it.prompt, text));
        let mut perm = sources.clone();
        perm.shuffle(&mut rng);
        let rand_rank: Vec<(usize, f64)> = perm.iter().map(|&s| (s, 1.0)).collect();

        if it.class == Class::Generic {
            generic_none.push(w.protocol as f64 / 1e6);
        } else if !it.want.is_empty() {
            for (name, r) in [
                ("span", &span_rank),
                ("gradient", &grad_rank),
                ("cosine", &cos_rank),
                ("combined", &comb_rank),
                ("comb-v1", &comb_v1_rank),
                ("bm25", &bm_rank),
                ("random", &rand_rank),
            ] {
                let (h, rr) = judge(r, &it.want);
                let e = table.entry((name, it.class)).or_default();
                e.0 += h;
                e.1 += rr;
                e.2 += 1;
            }
            let right: u64 = w
                .sources
                .iter()
                .filter(|s| it.want.contains(&s.0))
                .map(|s| s.1)
                .sum();
            let e = share_right.entry(it.class).or_default();
            e.0 += right as f64 / 1e6;
            e.1 += 1;
        }
        if it.class == Class::Shared {
            for s in SHARED_BY {
                shared_split.push(
                    w.sources
                        .iter()
                        .find(|x| x.0 == s)
                        .map_or(0.0, |x| x.1 as f64 / 1e6),
                );
            }
        }
        report.push(serde_json::json!({
            "class": it.class.name(), "prompt": it.prompt, "answer": text, "want": it.want,
            "spans": spans.iter().map(|s| serde_json::json!({
                "start": s.start, "len": s.len, "sources": s.sources, "prompt_tokens": s.prompt_tokens(),
                "from_prompt": s.from_prompt,
                "text": tok.decode(&out[s.start..s.start + s.len], false).unwrap_or_default(),
            })).collect::<Vec<_>>(),
            "gradient_top": scores.top.iter().map(|e| serde_json::json!({
                "source": e.source, "score": e.score, "cosine": e.cosine,
            })).collect::<Vec<_>>(),
            "weights": w.sources, "no_attribution": w.protocol,
            "span_strength": w.span_strength, "gradient_strength": w.grad_strength,
        }));
        eprintln!(
            "[{}] {:?} -> {:?}\n    want {:?}  span {:?}  grad {:?}  weights {:?} none {}",
            it.class.name(),
            it.prompt,
            text,
            it.want,
            span_rank.first().map(|x| x.0),
            grad_rank.first().map(|x| x.0),
            w.sources,
            w.protocol
        );
    }

    println!();
    println!(
        "{:<10} {:<11} {:>6} {:>6} {:>4}",
        "method", "class", "top1", "mrr", "n"
    );
    for ((m, c), (h, rr, n)) in &table {
        println!(
            "{:<10} {:<11} {:>6.3} {:>6.3} {:>4}",
            m,
            c.name(),
            h / *n as f64,
            rr / *n as f64,
            n
        );
    }
    for class in [Class::Verbatim, Class::Paraphrase] {
        let asked = facts.len();
        let off = off_fact.iter().filter(|c| **c == class).count();
        println!(
            "{} queries answered with the asked fact: {} of {asked} (the others are scored as other-fact)",
            class.name(),
            asked - off
        );
    }
    println!("other-fact answers that state no planted fact (not scored): {other_unanswered}");
    println!();
    for (c, (s, n)) in &share_right {
        println!(
            "payout share reaching the right contributor(s), {}: {:.3}",
            c.name(),
            s / *n as f64
        );
    }
    println!(
        "shared fact split between sources {:?}: {:?}",
        SHARED_BY,
        shared_split
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
    );
    let none = generic_none.iter().sum::<f64>() / generic_none.len().max(1) as f64;
    println!("no-attribution share on generic prompts: {none:.3}");
    println!(
        "gradient attribution: {:.0} ms per query (backward pass + projection + scoring); total {:.0} s",
        grad_secs * 1e3 / items.len() as f64,
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = json_out {
        std::fs::write(
            &p,
            serde_json::to_vec_pretty(&serde_json::json!({ "items": report }))?,
        )?;
        eprintln!("per-item report: {}", p.display());
    }
    let get = |m: &str, c: Class| table.get(&(m, c)).map_or(0.0, |(h, _, n)| h / *n as f64);
    let mrr = |m: &str, c: Class| table.get(&(m, c)).map_or(0.0, |(_, r, n)| r / *n as f64);
    println!(
        "tokens of spans the prompt supplied (ol-attr/2 pays nothing for them): {prompt_tokens} of {span_tokens}"
    );
    for (name, method, class) in [
        ("attr_top1_verbatim", "combined", Class::Verbatim),
        ("attr_top1_paraphrase", "combined", Class::Paraphrase),
        ("attr_v1_top1_verbatim", "comb-v1", Class::Verbatim),
        ("attr_v1_top1_paraphrase", "comb-v1", Class::Paraphrase),
        ("attr_span_top1_paraphrase", "span", Class::Paraphrase),
        (
            "attr_gradient_top1_paraphrase",
            "gradient",
            Class::Paraphrase,
        ),
        ("attr_bm25_top1_verbatim", "bm25", Class::Verbatim),
        ("attr_bm25_top1_paraphrase", "bm25", Class::Paraphrase),
        ("attr_random_top1_paraphrase", "random", Class::Paraphrase),
    ] {
        println!("RESULT {name} {:.3}", get(method, class));
    }
    println!(
        "RESULT attr_mrr_paraphrase {:.3}",
        mrr("combined", Class::Paraphrase)
    );
    println!(
        "RESULT attr_shared_split_min {:.3}",
        shared_split.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!("RESULT attr_generic_no_attribution {none:.3}");
    println!(
        "RESULT attr_prompt_span_tokens {:.3} share",
        prompt_tokens as f64 / span_tokens.max(1) as f64
    );
    Ok(())
}
