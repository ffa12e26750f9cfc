//! Held-out evaluation of a trained adapter, so a builder can compare runs: the eval split's loss and
//! perplexity (per target token), and for conversational examples the adapter's greedy answer against the
//! reference answer: exact match and ROUGE-L.
//!
//! Exact match compares the two answers normalised as SQuAD's evaluation does (lower case, punctuation and
//! the articles a/an/the removed, whitespace collapsed); ROUGE-L is the F1 of the longest common subsequence
//! of their words (lower case, punctuation removed). The answer a conversation is scored on is its first
//! assistant turn, generated from everything before it.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::serve::ServedAdapter;
use crate::serve::forward::{KvCache, SeqStep, ServingModel, step};
use crate::serve::sampling::argmax;
use crate::tokenizer::{TextTokenizer, Tokenized};

/// The most eval examples whose answers are generated (the loss covers them all).
pub const MAX_ANSWERED: usize = 256;
/// Sequences decoded together.
const BATCH: usize = 16;
/// How many more tokens than the reference an answer may take.
const SLACK_TOKENS: usize = 16;
/// Examples shown in the report.
const SAMPLES: usize = 5;

/// What the evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub eval_examples: usize,
    /// Mean held-out loss per target token, and its exponential.
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    /// Conversational examples whose answer was generated and scored (those whose reference answer was
    /// not cut by `max_seq_len`).
    pub answered: usize,
    pub exact_match: Option<f64>,
    pub rouge_l: Option<f64>,
    /// A few of them, as generated.
    pub samples: Vec<AnswerSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerSample {
    pub reference: String,
    pub answer: String,
    pub rouge_l: f64,
}

/// The prompt (everything before the first target) and the reference answer (the first run of targets up
/// to its end-of-turn token) of a conversational example; `None` for a document (targets from the start)
/// and for an answer cut by `max_seq_len` before its end of turn (no whole reference to compare with).
fn split(t: &Tokenized, stops: &[u32]) -> Option<(Vec<u32>, Vec<u32>)> {
    let first = t.targets.iter().position(|&x| x)?;
    if first == 0 {
        return None;
    }
    let run = t.ids[first..]
        .iter()
        .zip(&t.targets[first..])
        .take_while(|(_, target)| **target)
        .map(|(id, _)| *id);
    let mut reference = Vec::new();
    for id in run {
        if stops.contains(&id) {
            return Some((t.ids[..first].to_vec(), reference));
        }
        reference.push(id);
    }
    None
}

/// Scores `examples` (the eval split): `loss` is the trainer's held-out loss; answers are decoded greedily
/// by `model` with `adapter`.
pub fn evaluate(
    model: &ServingModel,
    adapter: &ServedAdapter,
    tokenizer: &TextTokenizer,
    examples: &[&Tokenized],
    loss: Option<f64>,
) -> Result<EvalReport> {
    let stops = tokenizer.stop_ids();
    let context = model.config().max_position_embeddings;
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = examples
        .iter()
        .filter_map(|t| split(t, &stops))
        .filter(|(p, r)| !r.is_empty() && p.len() + r.len() + SLACK_TOKENS < context)
        .take(MAX_ANSWERED)
        .collect();
    let mut answers = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(BATCH) {
        answers.extend(greedy(model, adapter, chunk, &stops)?);
    }
    let (mut em, mut rl) = (0.0, 0.0);
    let mut samples = Vec::new();
    for ((_, reference), answer) in pairs.iter().zip(&answers) {
        let reference = tokenizer.decode(reference, true)?;
        let answer = tokenizer.decode(answer, true)?;
        let r = rouge_l(&reference, &answer);
        em += f64::from(u8::from(exact_match(&reference, &answer)));
        rl += r;
        if samples.len() < SAMPLES {
            samples.push(AnswerSample {
                reference,
                answer,
                rouge_l: r,
            });
        }
    }
    let n = pairs.len();
    Ok(EvalReport {
        eval_examples: examples.len(),
        loss,
        perplexity: loss.map(f64::exp),
        answered: n,
        exact_match: (n > 0).then(|| em / n as f64),
        rouge_l: (n > 0).then(|| rl / n as f64),
        samples,
    })
}

/// Greedy answers to `pairs`' prompts, decoded together, each at most its reference's length plus
/// `SLACK_TOKENS`, ending at a stop token.
fn greedy(
    model: &ServingModel,
    adapter: &ServedAdapter,
    pairs: &[(Vec<u32>, Vec<u32>)],
    stops: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let layers = model.config().num_hidden_layers;
    let mut caches: Vec<KvCache> = pairs
        .iter()
        .map(|(p, r)| KvCache::new(layers, p.len() + r.len() + SLACK_TOKENS, model.kv_dim()))
        .collect();
    let mut inputs: Vec<Vec<u32>> = pairs.iter().map(|(p, _)| p.clone()).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); pairs.len()];
    let mut open: Vec<bool> = vec![true; pairs.len()];
    loop {
        let live: Vec<usize> = (0..pairs.len()).filter(|&i| open[i]).collect();
        if live.is_empty() {
            return Ok(out);
        }
        let logits = {
            let mut seqs: Vec<SeqStep> = caches
                .iter_mut()
                .zip(&inputs)
                .zip(&open)
                .filter(|(_, o)| **o)
                .map(|((cache, tokens), _)| SeqStep {
                    tokens,
                    cache,
                    adapter: Some(adapter),
                    want_logits: true,
                })
                .collect();
            step(model, &mut seqs)?
        };
        for (row, &i) in logits.iter().zip(&live) {
            let t = argmax(row);
            if stops.contains(&t) {
                open[i] = false;
                continue;
            }
            out[i].push(t);
            inputs[i] = vec![t];
            if out[i].len() >= pairs[i].1.len() + SLACK_TOKENS {
                open[i] = false;
            }
        }
    }
}

/// Lower case, punctuation removed, whitespace-separated words.
fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// SQuAD's exact match: equal once lower-cased, without punctuation or articles, whitespace collapsed.
pub fn exact_match(reference: &str, answer: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        words(s)
            .into_iter()
            .filter(|w| !matches!(w.as_str(), "a" | "an" | "the"))
            .collect()
    };
    norm(reference) == norm(answer)
}

/// ROUGE-L F1: the longest common subsequence of the two answers' words against both lengths.
pub fn rouge_l(reference: &str, answer: &str) -> f64 {
    let (r, a) = (words(reference), words(answer));
    if r.is_empty() || a.is_empty() {
        return f64::from(u8::from(r.is_empty() && a.is_empty()));
    }
    let mut prev = vec![0usize; a.len() + 1];
    for rw in &r {
        let mut cur = vec![0usize; a.len() + 1];
        for (j, aw) in a.iter().enumerate() {
            cur[j + 1] = if rw == aw {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[a.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rec) = (lcs / a.len() as f64, lcs / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn exact_match_and_rouge_l_follow_their_definitions() {
        assert!(exact_match("The lighthouse.", "lighthouse"));
        assert!(exact_match("Pier K-7", "pier k 7"));
        assert!(!exact_match("Pier K-7", "Pier K-8"));
        // LCS "the cat on mat" is 4 of 6 reference words and 4 of 5 answer words
        let r = rouge_l("the cat sat on the mat", "the cat lay on mat");
        let (p, rec) = (4.0 / 5.0, 4.0 / 6.0);
        assert!((r - 2.0 * p * rec / (p + rec)).abs() < 1e-12, "{r}");
        assert_eq!(rouge_l("a b c", "a b c"), 1.0);
        assert_eq!(rouge_l("a b c", "x y"), 0.0);
        assert_eq!(rouge_l("", ""), 1.0);
        assert_eq!(rouge_l("a", ""), 0.0);
    }

    /// The report's answers are each prompt's greedy decode with the adapter, whether decoded alone or
    /// beside others; its figures are those of the samples.
    #[test]
    fn answers_are_greedy_decodes_and_the_figures_add_up() {
        use crate::{BaseModel, Llama, LoraConfig, ModelConfig, Precision, Proj};
        let run = || -> Result<()> {
            let base = BaseModel::random(ModelConfig::tiny(), 5)?;
            let model = ServingModel::new(Llama::new(
                &base,
                Precision::F32,
                &candle_core::Device::Cpu,
            )?)?;
            let lora = LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec![Proj::Q, Proj::V],
            };
            let adapter = ServedAdapter::random("a", &base.config, &lora, 9);
            let tok = &base.tokenizer;
            let examples: Vec<Tokenized> = [
                ("2+2?", "Four."),
                ("Capital of France?", "Paris."),
                ("Hi", "Hello there."),
            ]
            .iter()
            .map(|(p, c)| tok.chat_pair(p, c))
            .collect::<Result<_>>()?;
            let refs: Vec<&Tokenized> = examples.iter().collect();
            let report = evaluate(&model, &adapter, tok, &refs, Some(2.0))?;
            assert_eq!((report.eval_examples, report.answered), (3, 3));
            assert_eq!(report.perplexity, Some(2f64.exp()));
            let stops = tok.stop_ids();
            for (i, e) in examples.iter().enumerate() {
                let pair = split(e, &stops).unwrap();
                let alone = greedy(&model, &adapter, std::slice::from_ref(&pair), &stops)?;
                assert_eq!(report.samples[i].answer, tok.decode(&alone[0], true)?);
                assert_eq!(report.samples[i].reference, tok.decode(&pair.1, true)?);
            }
            let mean = report.samples.iter().map(|s| s.rouge_l).sum::<f64>() / 3.0;
            assert!((report.rouge_l.unwrap() - mean).abs() < 1e-12);
            Ok(())
        };
        run().unwrap();
    }

    #[test]
    fn a_conversation_is_scored_on_its_first_answer() {
        let t = Tokenized {
            ids: vec![1, 2, 3, 10, 11, 99, 4, 12],
            targets: vec![false, false, false, true, true, true, false, true],
        };
        assert_eq!(split(&t, &[99]), Some((vec![1, 2, 3], vec![10, 11])));
        let doc = Tokenized {
            ids: vec![1, 2],
            targets: vec![true, true],
        };
        assert_eq!(split(&doc, &[99]), None);
        // cut before its end of turn: no whole reference
        let cut = Tokenized {
            ids: vec![1, 2, 10, 11],
            targets: vec![false, false, true, true],
        };
        assert_eq!(split(&cut, &[99]), None);
    }
}
