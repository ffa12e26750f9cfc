//! Next-token choice: greedy, or temperature with top-k / top-p, after repetition, presence and frequency
//! penalties; seeded, so the same seed gives the same text.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};

/// Sampling parameters (OpenAI's names where OpenAI has them). Defaults: temperature 1, no truncation, no
/// penalties.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; otherwise logits are divided by it. 0..=2.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1: all). (0, 1].
    pub top_p: f32,
    /// Hugging Face's multiplicative penalty on tokens already in the prompt or output (1: none). (0, 10].
    pub repetition_penalty: f32,
    /// OpenAI's additive penalties on tokens already in the output. -2..=2.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Generator seed (`None`: from the OS).
    pub seed: Option<u64>,
    /// Added to these tokens' logits before anything else (OpenAI's `logit_bias`). -100..=100 each.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each drawn token's log-probability and this many most likely alternatives (0..=20; `None`:
    /// no log-probabilities).
    pub logprobs: Option<usize>,
}

/// The most alternatives a token's log-probabilities may list (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A drawn token's log-probability under the model's distribution (the logits as the model gave them, before
/// penalties, `logit_bias`, temperature or a grammar), and the most likely tokens with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first, ties by token id.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// `token`'s entry from the raw logits, with the `top` most likely alternatives.
    pub fn from_logits(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| f64::from(l - max).exp())
            .sum();
        let lse = max + sum.ln() as f32;
        let lp = |t: u32| {
            logits
                .get(t as usize)
                .map_or(f32::NEG_INFINITY, |&l| l - lse)
        };
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            let mut all: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            let k = top.min(all.len());
            if k < all.len() {
                all.select_nth_unstable_by(k - 1, by);
                all.truncate(k);
            }
            all.sort_unstable_by(by);
            best = all.into_iter().map(|(t, l)| (t, l - lse)).collect();
        }
        TokenLogprobs {
            token,
            logprob: lp(token),
            top: best,
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| Err(ModelError::invalid(name, reason.to_string()));
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad("repetition_penalty", "must be in (0, 10]");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be between -2 and 2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be between -2 and 2");
        }
        if let Some((t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(ModelError::invalid(
                "logit_bias",
                format!("token {t}: {b} (each bias must be between -100 and 100)"),
            ));
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(ModelError::invalid(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        Ok(())
    }
}

/// One sequence's sampler state.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Output token counts (presence/frequency penalties).
    counts: std::collections::HashMap<u32, u32>,
    /// Tokens seen in prompt or output (repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Sampler {
            params,
            rng,
            counts: Default::default(),
            seen,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        // the scalars copied out, the bias read in place: nothing of the parameters is cloned per token
        let (rep, presence, frequency, temperature) = (
            self.params.repetition_penalty,
            self.params.presence_penalty,
            self.params.frequency_penalty,
            self.params.temperature,
        );
        for &(t, b) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if rep != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / rep } else { *l * rep };
                }
            }
        }
        if presence != 0.0 || frequency != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= presence + frequency * n as f32;
                }
            }
        }
        let tok = if temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        if rep != 1.0 {
            self.seen.insert(tok);
        }
        *self.counts.entry(tok).or_default() += 1;
        tok
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        // ties broken by token id so the order (and the draw) is reproducible
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for i in 0..keep {
            u -= probs[i];
            if u <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// The index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_penalties_change_it() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9]), 1);
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            &[1],
        );
        // 3.0 / 2 = 1.5 < 2.9
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9]), 2);
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 1.0,
                ..SamplingParams::greedy()
            },
            &[],
        );
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.5]), 1);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.5]), 2);
    }

    #[test]
    fn seeded_sampling_repeats_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    temperature: 1.0,
                    seed: Some(seed),
                    ..Default::default()
                },
                &[],
            );
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                seed: Some(1),
                ..Default::default()
            },
            &[],
        );
        assert_eq!(s.sample(&mut logits.clone()), argmax(&logits));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // token 0 holds ~88% of the mass: top_p 0.5 must always pick it
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.5,
                seed: Some(3),
                ..Default::default()
            },
            &[],
        );
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [4.0, 1.0, 1.0, 1.0]), 0);
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }
}
