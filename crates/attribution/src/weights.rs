//! The combination rule (method `ol-attr/2`): span and gradient evidence -> integer payout weights over
//! training sources, in parts per million of the inference's contributor pool, with the rest going to
//! "no attributable data" (the protocol).
//!
//! 1. Span evidence. Each kept span carries its information, `-log_prob` (nats, from the training
//!    stream's unigram counts); a span's information is split over the sources it occurs in by
//!    occurrences. Its strength `d_span` is the share of the output's tokens the kept spans cover. A span
//!    the prompt supplied (`Span::from_prompt`: fewer than `min_len` tokens of its own; an answer that
//!    repeats its question) counts for nothing. (`ol-attr/1` is the same rule with no span the prompt's.)
//! 2. Gradient evidence. Among the top examples by DataInf score (positive ones), each counts for its
//!    source by how far its gradient cosine with the output's exceeds `cos_lo`. Its strength `d_grad`
//!    maps the best example's cosine linearly from `cos_lo` (0) to `cos_hi` (1).
//! 3. The data share is `max(d_span, d_grad)`; the sources' mix is the strength-weighted mean of the two
//!    normalised distributions. Both strengths and mixes are rounded to parts per million before any
//!    further step, so floating-point noise in the last bits (a gradient recomputed on another thread
//!    count) cannot move a payout.
//! 4. From here on integers only: sources below `floor_ppm` of the whole pool are dropped and the data
//!    share is re-split over the rest by largest remainder (ties to the lower source); what the data share
//!    leaves goes to the protocol. Weights always sum to exactly `SCALE`.

use std::collections::BTreeMap;

use crate::grad::GradScores;
use crate::span::Span;

/// Weights are parts of this.
pub const SCALE: u64 = 1_000_000;

/// The method's name in the records it makes.
pub const METHOD: &str = "ol-attr/2";

/// The first method: the same rule with no token the prompt's (`SpanParams::prompt_min_len` `None`).
/// `verify` still recomputes its records.
pub const METHOD_V1: &str = "ol-attr/1";

/// The methods this build makes and recomputes.
pub const METHODS: [&str; 2] = [METHOD_V1, METHOD];

/// The method a record made with `span` follows.
pub fn method_of(span: &crate::span::SpanParams) -> &'static str {
    match span.prompt_min_len {
        Some(_) => METHOD,
        None => METHOD_V1,
    }
}

/// The combination's parameters; part of a record's commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct CombineParams {
    /// Best-example gradient cosine at which gradient evidence starts to count.
    pub cos_lo: f64,
    /// ... and at which it counts fully.
    pub cos_hi: f64,
    /// Sources whose weight would fall below this (ppm of the pool) get nothing; the rest is re-split.
    pub floor_ppm: u64,
}

/// Sources below this share of an inference's contributor pool (ppm) get nothing, by default.
pub const DEFAULT_FLOOR_PPM: u64 = 20_000;

impl Default for CombineParams {
    fn default() -> Self {
        CombineParams {
            cos_lo: 0.35,
            cos_hi: 0.7,
            floor_ppm: DEFAULT_FLOOR_PPM,
        }
    }
}

/// The outcome: strengths and mixes (ppm, for the record) and the final integer weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    pub span_strength: u64,
    pub grad_strength: u64,
    /// Per source, the span and gradient distributions (each sums to `SCALE` when not empty).
    pub span_mix: BTreeMap<usize, u64>,
    pub grad_mix: BTreeMap<usize, u64>,
    /// Final weights per source, ascending by source; none below the floor.
    pub sources: Vec<(usize, u64)>,
    /// "No attributable data": `SCALE` minus the sources' weights.
    pub protocol: u64,
}

fn ppm(x: f64) -> u64 {
    (x.clamp(0.0, 1.0) * SCALE as f64).round() as u64
}

/// Splits `total` over `parts` proportionally by largest remainder (ties to the lower key).
fn split(total: u64, parts: &BTreeMap<usize, u64>) -> BTreeMap<usize, u64> {
    let sum: u128 = parts.values().map(|&v| v as u128).sum();
    if sum == 0 {
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    let mut rem = Vec::new();
    let mut given = 0u64;
    for (&k, &v) in parts {
        let num = total as u128 * v as u128;
        let q = (num / sum) as u64;
        given += q;
        out.insert(k, q);
        rem.push((num % sum, k));
    }
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, k) in rem.into_iter().take((total - given) as usize) {
        if let Some(v) = out.get_mut(&k) {
            *v += 1;
        }
    }
    out
}

/// A float distribution over sources, rounded to ppm summing to exactly `SCALE`.
fn distribution(raw: &BTreeMap<usize, f64>) -> BTreeMap<usize, u64> {
    let sum: f64 = raw.values().filter(|v| **v > 0.0).sum();
    if sum <= 0.0 || !sum.is_finite() {
        return BTreeMap::new();
    }
    // to integers at a fine grain first, then exactly SCALE by largest remainder
    let fine: BTreeMap<usize, u64> = raw
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(&k, &v)| (k, (v / sum * 1e12).round() as u64))
        .collect();
    split(SCALE, &fine)
}

/// Applies the rule to an output of `output_len` tokens.
pub fn combine(
    output_len: usize,
    spans: &[Span],
    grad: Option<&GradScores>,
    params: &CombineParams,
) -> Weights {
    // span evidence: information split by occurrences; strength = covered share of the output
    let mut span_raw: BTreeMap<usize, f64> = BTreeMap::new();
    let mut covered = vec![false; output_len];
    for s in spans.iter().filter(|s| !s.from_prompt) {
        let info = (-s.log_prob).max(0.0);
        let count: usize = s.sources.iter().map(|x| x.1).sum();
        for &(src, occ) in &s.sources {
            *span_raw.entry(src).or_default() += info * occ as f64 / count.max(1) as f64;
        }
        for c in covered.iter_mut().skip(s.start).take(s.len) {
            *c = true;
        }
    }
    let span_strength = if output_len == 0 {
        0
    } else {
        ppm(covered.iter().filter(|&&c| c).count() as f64 / output_len as f64)
    };
    let span_mix = distribution(&span_raw);
    let span_strength = if span_mix.is_empty() {
        0
    } else {
        span_strength
    };

    // gradient evidence: positive scores of the top examples per source; strength from the best cosine
    let (grad_mix, grad_strength) = match grad {
        Some(g) => {
            // the top examples (by DataInf score) that resemble the output, by how much they do
            let mut raw: BTreeMap<usize, f64> = BTreeMap::new();
            for e in g
                .top
                .iter()
                .filter(|e| e.score > 0.0 && e.cosine.is_finite())
            {
                let w = e.cosine - params.cos_lo;
                if w > 0.0 {
                    *raw.entry(e.source).or_default() += w;
                }
            }
            let best = g
                .top
                .iter()
                .filter(|e| e.score > 0.0)
                .map(|e| e.cosine)
                .fold(f64::NEG_INFINITY, f64::max);
            let strength = if best.is_finite() && params.cos_hi > params.cos_lo {
                ppm((best - params.cos_lo) / (params.cos_hi - params.cos_lo))
            } else {
                0
            };
            let mix = distribution(&raw);
            let strength = if mix.is_empty() { 0 } else { strength };
            (mix, strength)
        }
        None => (BTreeMap::new(), 0),
    };

    // integers from here: the mix, the data share, the floor, the re-split
    let data = span_strength.max(grad_strength);
    let mut mix: BTreeMap<usize, u64> = BTreeMap::new();
    if span_strength + grad_strength > 0 {
        let mut num: BTreeMap<usize, u64> = BTreeMap::new();
        for (m, w) in [(&span_mix, span_strength), (&grad_mix, grad_strength)] {
            for (&s, &v) in m {
                *num.entry(s).or_default() += v * w;
            }
        }
        mix = split(SCALE, &num);
    }
    let shares = split(data, &mix);
    let kept: BTreeMap<usize, u64> = mix
        .into_iter()
        .filter(|(s, _)| shares.get(s).is_some_and(|&w| w >= params.floor_ppm.max(1)))
        .collect();
    let final_w = split(data, &kept);
    let sources: Vec<(usize, u64)> = final_w.into_iter().filter(|(_, w)| *w > 0).collect();
    let protocol = SCALE - sources.iter().map(|s| s.1).sum::<u64>();
    Weights {
        span_strength,
        grad_strength,
        span_mix,
        grad_mix,
        sources,
        protocol,
    }
}

/// The weights of an answer of several choices (OpenAI's `n`), each choice paid an equal part of the pool:
/// per source, its weight summed over the choices and divided by their number, rounded down (what rounding
/// leaves goes to the protocol with the rest). Ascending by source, none zero; with the protocol's share
/// they sum to exactly `SCALE`.
pub fn mean(choices: &[Weights]) -> (Vec<(usize, u64)>, u64) {
    let n = choices.len() as u64;
    if n == 0 {
        return (Vec::new(), SCALE);
    }
    let mut sum: BTreeMap<usize, u64> = BTreeMap::new();
    for w in choices {
        for &(src, ppm) in &w.sources {
            *sum.entry(src).or_default() += ppm;
        }
    }
    let sources: Vec<(usize, u64)> = sum
        .into_iter()
        .map(|(src, total)| (src, total / n))
        .filter(|&(_, w)| w > 0)
        .collect();
    let protocol = SCALE - sources.iter().map(|s| s.1).sum::<u64>();
    (sources, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grad::ExampleScore;

    fn span(start: usize, len: usize, sources: &[(usize, usize)], log_prob: f64) -> Span {
        Span {
            start,
            len,
            count: sources.iter().map(|s| s.1).sum(),
            sources: sources.to_vec(),
            log_prob,
            prompt: Vec::new(),
            from_prompt: false,
        }
    }

    #[test]
    fn what_the_prompt_supplied_weighs_nothing() {
        let p = CombineParams::default();
        // source 1's span is all the prompt's (an answer echoing the question); source 2's is the answer
        let echo = Span {
            prompt: vec![(0, 6)],
            from_prompt: true,
            ..span(0, 6, &[(1, 1)], -30.0)
        };
        let answer = span(6, 4, &[(2, 1)], -12.0);
        let w = combine(10, &[echo.clone(), answer.clone()], None, &p);
        assert_eq!(w.sources, [(2, 400_000)], "{w:?}");
        assert_eq!(w.span_strength, 400_000);
        // the echo alone pays no one
        let w = combine(10, std::slice::from_ref(&echo), None, &p);
        assert_eq!((w.sources.len(), w.protocol), (0, SCALE));
        // a span that adds words of its own to the prompt's is evidence as a whole (the answer's own
        // sentence, which may name the prompt's words): weighed as if nothing were the prompt's
        let own = Span {
            prompt: vec![(0, 3)],
            ..span(0, 6, &[(1, 1)], -30.0)
        };
        let w = combine(10, &[own, answer.clone()], None, &p);
        assert_eq!(
            w,
            combine(10, &[span(0, 6, &[(1, 1)], -30.0), answer], None, &p)
        );
        assert_eq!(w.span_strength, SCALE);
    }

    fn ex(source: usize, score: f64, cosine: f64) -> ExampleScore {
        ExampleScore {
            example: source * 10,
            source,
            score,
            tracin: score,
            cosine,
        }
    }

    #[test]
    fn weights_always_sum_to_the_scale_and_no_evidence_goes_to_the_protocol() {
        let w = combine(20, &[], None, &CombineParams::default());
        assert_eq!((w.sources.len(), w.protocol), (0, SCALE));
        let w = combine(0, &[], None, &CombineParams::default());
        assert_eq!(w.protocol, SCALE);
        // a weak gradient (cosine below cos_lo) is no evidence either
        let g = GradScores {
            top: vec![ex(1, 5.0, 0.3)],
        };
        let w = combine(20, &[], Some(&g), &CombineParams::default());
        assert_eq!((w.grad_strength, w.protocol), (0, SCALE));
    }

    #[test]
    fn a_verbatim_copy_pays_its_source_by_coverage() {
        // 15 of 20 tokens copied from source 3
        let spans = [span(2, 15, &[(3, 1)], -40.0)];
        let w = combine(20, &spans, None, &CombineParams::default());
        assert_eq!(w.span_strength, 750_000);
        assert_eq!(w.sources, vec![(3, 750_000)]);
        assert_eq!(w.protocol, 250_000);
    }

    #[test]
    fn a_shared_span_is_split_by_occurrences_and_small_shares_are_dropped_and_resplit() {
        let spans = [
            span(0, 10, &[(1, 1), (2, 1)], -30.0),
            // a little from source 9, below the floor once scaled
            span(10, 4, &[(9, 1)], -0.5),
        ];
        let w = combine(14, &spans, None, &CombineParams::default());
        assert_eq!(w.span_strength, 1_000_000);
        assert_eq!(w.sources.len(), 2, "{w:?}");
        assert_eq!(w.sources[0].1, w.sources[1].1);
        assert_eq!(w.sources[0].1 + w.sources[1].1 + w.protocol, SCALE);
        assert_eq!(w.protocol, 0);
    }

    #[test]
    fn gradient_evidence_weighs_by_its_strength_and_mixes_with_spans() {
        let p = CombineParams::default();
        // best cosine 0.7 = cos_hi: full strength; cosines 0.35 above cos_lo for source 4, 0.05 for 5 (a
        // negative score and one below cos_lo count for nothing)
        let g = GradScores {
            top: vec![
                ex(4, 3.0, 0.7),
                ex(5, 1.0, 0.4),
                ex(6, -2.0, 0.9),
                ex(7, 1.0, 0.2),
            ],
        };
        let w = combine(30, &[], Some(&g), &p);
        assert_eq!(w.grad_strength, SCALE);
        assert_eq!(w.sources, vec![(4, 875_000), (5, 125_000)]);
        // half strength and a span over a third of the output from source 7
        let g = GradScores {
            top: vec![ex(4, 1.0, 0.525)],
        };
        let spans = [span(0, 10, &[(7, 2)], -20.0)];
        let w = combine(30, &spans, Some(&g), &p);
        assert_eq!((w.grad_strength, w.span_strength), (500_000, 333_333));
        assert_eq!(w.sources.iter().map(|s| s.1).sum::<u64>(), 500_000);
        let (s4, s7) = (w.sources[0], w.sources[1]);
        assert_eq!((s4.0, s7.0), (4, 7));
        assert!(s4.1 > s7.1, "{w:?}");
        assert_eq!(w.protocol, 500_000);
    }

    #[test]
    fn split_is_exact_and_deterministic() {
        let parts: BTreeMap<usize, u64> = [(0, 1), (1, 1), (2, 1)].into();
        let s = split(100, &parts);
        assert_eq!(s.values().sum::<u64>(), 100);
        assert_eq!(s[&0], 34);
        assert_eq!((s[&1], s[&2]), (33, 33));
    }

    #[test]
    fn several_choices_split_the_pool_equally() {
        let w = |sources: Vec<(usize, u64)>| Weights {
            span_strength: 0,
            grad_strength: 0,
            span_mix: BTreeMap::new(),
            grad_mix: BTreeMap::new(),
            protocol: SCALE - sources.iter().map(|s| s.1).sum::<u64>(),
            sources,
        };
        // source 1 in both choices, 2 and 3 in one each; 3's 1 ppm halves to nothing
        let (sources, protocol) = mean(&[
            w(vec![(1, 600_001), (2, 300_000)]),
            w(vec![(1, 200_000), (3, 1)]),
        ]);
        assert_eq!(sources, [(1, 400_000), (2, 150_000)]);
        assert_eq!(protocol, 450_000);
        // one choice: its own weights
        let one = w(vec![(4, 123_456)]);
        assert_eq!(
            mean(std::slice::from_ref(&one)),
            (one.sources.clone(), one.protocol)
        );
        assert_eq!(mean(&[]), (vec![], SCALE));
    }
}
