//! Constrained decoding: a grammar (a JSON schema, "any JSON object", a Lark grammar) turned into the set of
//! tokens each step of one sequence may take, by [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! [`Grammars`] is built once per tokenizer (the token trie over the model's vocabulary); each request that
//! asks for structured output gets its own [`Constraint`], which the engine thread consults for that row of
//! the batch only: before sampling it masks the logits to the tokens the grammar allows (the model's end
//! token only where the grammar is complete), after sampling it advances the grammar by the token drawn.
//! Constrained and free sequences share every step.
//!
//! JSON is generated compact (no free whitespace between tokens: a small model left free to emit whitespace
//! can spend its whole budget on it); a schema may say otherwise with llguidance's `x-guidance` options.
//! Schema features llguidance does not implement are refused when the constraint is built, with its message.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// The grammar compiler for one tokenizer (cheap to clone).
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .finish()
    }
}

/// llguidance's view of the tokenizer: every token's bytes (special tokens marked, so no grammar produces
/// them except the end token) and the real tokenizer for text it must tokenize itself.
struct Env {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text).unwrap_or_default(),
            // text cut inside a character: the trie's greedy tokenization is as good as any
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

impl Grammars {
    /// The compiler for `tokenizer`'s vocabulary, padded to `model_vocab` (the width of the model's logits,
    /// which may exceed the tokenizer's): padding tokens are never allowed.
    pub fn new(tokenizer: &TextTokenizer, model_vocab: usize) -> Result<Self> {
        let unusable = |e: &dyn std::fmt::Display| {
            ModelError::Unsupported(format!(
                "constrained decoding needs a byte-level or byte-fallback tokenizer: {e}"
            ))
        };
        let json: Value = serde_json::from_str(&tokenizer.to_json()?)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| unusable(&e))?;
        let vocab = model_vocab.max(words.len());
        for (i, w) in words.iter_mut().enumerate() {
            if w.is_empty() {
                *w = unused_token(i);
            }
        }
        words.extend((words.len()..vocab).map(unused_token));
        let mut info = TokRxInfo::new(vocab as u32, tokenizer.eos);
        info.tok_bos = tokenizer.bos;
        let env = Env {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        };
        let env: TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new(&env, Default::default(), &[]).map_err(|e| {
            ModelError::Unsupported(format!("the grammar engine refused the vocabulary: {e}"))
        })?;
        // llguidance logs grammar warnings to stderr by default; its errors come back as values
        factory.quiet();
        Ok(Grammars {
            factory: Arc::new(factory),
        })
    }

    /// A token's bytes as it contributes them to text (a special token: its name).
    pub fn token_bytes(&self, token: u32) -> Vec<u8> {
        self.factory.tok_env().tok_trie().decode(&[token])
    }

    /// Output that is one JSON value valid against `schema` (a JSON Schema object). `field` names the request
    /// field in errors (`response_format`, a tool's `parameters`).
    pub fn json_schema(&self, field: &'static str, schema: &Value) -> Result<Constraint> {
        let Value::Object(obj) = schema else {
            return Err(ModelError::invalid(
                field,
                "the schema must be a JSON object",
            ));
        };
        let mut obj = obj.clone();
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({ "whitespace_flexible": false }));
        self.build(field, TopLevelGrammar::from_json_schema(Value::Object(obj)))
    }

    /// Output that is one JSON object (OpenAI's JSON mode).
    pub fn json_object(&self, field: &'static str) -> Result<Constraint> {
        self.json_schema(field, &serde_json::json!({ "type": "object" }))
    }

    /// Output in the language of a Lark grammar (llguidance's dialect: `%json { ... }` embeds a schema).
    pub fn lark(&self, field: &'static str, grammar: &str) -> Result<Constraint> {
        self.build(field, TopLevelGrammar::from_lark(grammar.to_string()))
    }

    fn build(&self, field: &'static str, grammar: TopLevelGrammar) -> Result<Constraint> {
        // a request's schema is a stranger's input: a panic deep in the compiler is its error, not the server's
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(grammar)
        }))
        .map_err(|_| ModelError::invalid(field, "the grammar engine could not compile it"))?
        .map_err(|e| ModelError::invalid(field, e))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ModelError::invalid(field, e));
        }
        Ok(Constraint { matcher })
    }
}

/// A placeholder for a token id the tokenizer does not define (marked special: never allowed).
fn unused_token(i: usize) -> Vec<u8> {
    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    w.extend_from_slice(format!("<|unused {i}|>").as_bytes());
    w
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// An independent copy in the same state: one request's grammar for each of its choices (`n` > 1).
    pub fn fork(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
        }
    }

    /// Sets every logit the grammar does not allow next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| ModelError::invalid("grammar", e))?;
        // word by word: a word of 32 allowed tokens is skipped whole
        let n = allowed.len().min(logits.len());
        allowed.iter_unset_entries(|i| {
            if i < n {
                logits[i] = f32::NEG_INFINITY;
            }
        });
        for l in logits.iter_mut().skip(allowed.len()) {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Advances the grammar by the token drawn.
    pub fn consume(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ModelError::invalid("grammar", e))
    }

    /// The grammar allows nothing more (the output is complete).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The output so far is a complete sentence of the grammar.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
