//! Log-probabilities as OpenAI's responses carry them: chat's `logprobs.content` entries (token, bytes,
//! logprob, top_logprobs) and text completions' parallel lists (tokens, token_logprobs, top_logprobs,
//! text_offset). Values are the model's own distribution (before penalties, `logit_bias`, temperature and a
//! `response_format` grammar); an impossible token is -9999, as OpenAI writes it.

use openledger_model::serve::TokenLogprobs;
use serde_json::{Map, Value, json};

use super::Inference;

/// What OpenAI writes for a log-probability of minus infinity.
const IMPOSSIBLE: f32 = -9999.0;

fn finite(lp: f32) -> f32 {
    if lp.is_finite() { lp } else { IMPOSSIBLE }
}

/// A token's bytes as it adds them to the text (a special token: its name).
fn token_bytes(inf: &Inference, token: u32) -> Vec<u8> {
    match &inf.grammars {
        Some(g) => g.token_bytes(token),
        None => inf
            .tokenizer
            .decode(&[token], false)
            .unwrap_or_default()
            .into_bytes(),
    }
}

/// A token as chat's logprobs name it: its text (lossy where it holds part of a character) and its bytes.
fn chat_token(inf: &Inference, token: u32, lp: f32) -> Value {
    let bytes = token_bytes(inf, token);
    json!({ "token": String::from_utf8_lossy(&bytes), "logprob": finite(lp), "bytes": bytes })
}

/// Chat's `logprobs.content` entries for these tokens.
pub fn chat_content(inf: &Inference, lps: &[TokenLogprobs]) -> Vec<Value> {
    lps.iter()
        .map(|lp| {
            let mut v = chat_token(inf, lp.token, lp.logprob);
            v["top_logprobs"] = lp.top.iter().map(|&(t, l)| chat_token(inf, t, l)).collect();
            v
        })
        .collect()
}

/// Chat's `logprobs` object.
pub fn chat(inf: &Inference, lps: &[TokenLogprobs]) -> Value {
    json!({ "content": chat_content(inf, lps), "refusal": null })
}

/// A text completion's `logprobs` object; `offset` is the character offset of the first token in the
/// completion's text (streamed chunks continue where the last ended); returns the offset after the last.
pub fn completion(inf: &Inference, lps: &[TokenLogprobs], mut offset: usize) -> (Value, usize) {
    let (mut tokens, mut lp, mut top, mut offsets) = (vec![], vec![], vec![], vec![]);
    for x in lps {
        let text = String::from_utf8_lossy(&token_bytes(inf, x.token)).into_owned();
        offsets.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        lp.push(finite(x.logprob));
        let mut alts = Map::new();
        for &(t, l) in &x.top {
            let name = String::from_utf8_lossy(&token_bytes(inf, t)).into_owned();
            alts.entry(name).or_insert(json!(finite(l)));
        }
        top.push(Value::Object(alts));
    }
    (
        json!({ "tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": offsets }),
        offset,
    )
}
