//! Text <-> token ids for a base model, from GGUF metadata or a Hugging Face `tokenizer.json`, and the
//! model's chat template for prompt/completion data.
//!
//! GGUF files hold one of two tokenizer kinds (`tokenizer.ggml.model`):
//! - `gpt2`: byte-level BPE with merges, split first by the pre-tokenizer the file names
//!   (`tokenizer.ggml.pre`): SmolLM2's `smollm` (every digit apart, then GPT-2's regex), Llama 3's
//!   `llama-bpe` (digits in threes), Qwen 2's `qwen2` (every digit apart). Plain GPT-2 handling (what
//!   candle's own converter falls back to) merges digit runs and so yields different ids; `tests/smollm.rs`
//!   checks ours against ids from llama.cpp's tokenizer;
//! - `llama`: SentencePiece (Llama 2, Mistral, Gemma): pieces with scores and byte-fallback tokens, spaces
//!   as `▁`, a leading space unless `tokenizer.ggml.add_space_prefix` is false (Gemma). It runs as BPE whose
//!   merges are ranked by the merged piece's score, as Hugging Face's converter builds it;
//!   `tests/families.rs` checks the ids against SentencePiece's own.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};

/// ChatML, used when a model ships no template (SmolLM2's own template is ChatML too).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One training example's tokens and which of them the loss is computed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// `true` where the token is a training target (completion tokens; every token of plain text).
    pub targets: Vec<bool>,
}

/// Per token id: whether its text begins / ends with something other than a letter or digit.
#[derive(Debug, Clone)]
pub struct WordBreaks {
    starts: Vec<bool>,
    ends: Vec<bool>,
}

impl WordBreaks {
    /// Whether a word breaks between tokens `a` and `b` (unknown ids break).
    pub fn between(&self, a: u32, b: u32) -> bool {
        self.ends.get(a as usize).is_none_or(|&e| e)
            || self.starts.get(b as usize).is_none_or(|&s| s)
    }
}

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    /// Further tokens that end a generation (`generation_config.json`'s `eos_token_id` list; GGUF's
    /// end-of-turn and end-of-message tokens): Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`.
    pub stops: Vec<u32>,
    /// Prepend BOS when encoding a document (GGUF `add_bos_token`; false for SmolLM2).
    pub add_bos: bool,
    chat_template: String,
    bos_text: String,
    eos_text: String,
}

fn tk_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Split by `regex` (matches kept as pieces), then byte-level symbols without GPT-2's own regex.
fn regex_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    Ok(Sequence::new(vec![
        Split::new(
            SplitPattern::Regex(regex.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tk_err)?
        .into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    Ok(match pre {
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => regex_then_bytes(LLAMA3_REGEX)?,
        "qwen2" | "deepseek-r1-qwen" => regex_then_bytes(QWEN2_REGEX)?,
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer.ggml.pre {other:?} (supported: smollm, gpt2, llama-bpe, qwen2); load the \
                 model from a Hugging Face folder with tokenizer.json instead"
            )));
        }
    })
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    v.to_vec()
        .map_err(|_| tk_err(format!("{key} is not an array")))?
        .iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|_| tk_err(format!("{key} holds a non-string")))
        })
        .collect()
}

fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::U8(x) => Some(*x as u32),
        Value::I8(x) => u32::try_from(*x).ok(),
        Value::U16(x) => Some(*x as u32),
        Value::I16(x) => u32::try_from(*x).ok(),
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

/// GGUF's SentencePiece vocabulary as a BPE model: merges of every normal piece that splits into two
/// pieces of the vocabulary, ranked by the merged piece's score (highest first, then by id), byte fallback
/// to the `<0xXX>` tokens, spaces as `▁`.
fn sentencepiece(
    md: &std::collections::HashMap<String, Value>,
    tokens: &[String],
    types: &[u32],
    vocab: tokenizers::models::bpe::Vocab,
) -> Result<Tokenizer> {
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace};
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        _ => return Err(tk_err("GGUF metadata lacks tokenizer.ggml.scores")),
    };
    if scores.len() != tokens.len() {
        return Err(tk_err(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let mut normal: Vec<usize> = (0..tokens.len()).filter(|&i| types[i] == 1).collect();
    normal.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut merges = Vec::new();
    for i in normal {
        let piece = &tokens[i];
        let mut local: Vec<(u32, u32, String, String)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| {
                let (l, r) = piece.split_at(k);
                Some((*vocab.get(l)?, *vocab.get(r)?, l.to_string(), r.to_string()))
            })
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(_, _, l, r)| (l, r)));
    }
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(as_u32)
        .or_else(|| types.iter().position(|&t| t == 2).map(|i| i as u32))
        .and_then(|i| tokens.get(i as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(tk_err)?;
    let mut inner = Tokenizer::new(bpe);
    let prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if prefix {
        norm.push(Prepend::new("\u{2581}".into()).into());
    }
    norm.push(Replace::new(" ", "\u{2581}").map_err(tk_err)?.into());
    inner
        .with_normalizer(Some(tokenizers::normalizers::Sequence::new(norm)))
        .map_err(tk_err)?;
    let mut dec: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(tk_err)?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(inner)
}

impl TextTokenizer {
    /// From the `tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE or SentencePiece models).
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let md = &ct.metadata;
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| tk_err(format!("GGUF metadata lacks {k}")))
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(tk_err)?
            .clone();
        let tokens = strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let types: Vec<u32> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(t)) => t.iter().map(|v| as_u32(v).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(tk_err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut inner = match model.as_str() {
            "gpt2" => {
                let merges = strings(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| tk_err(format!("bad merge {m:?}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .build()
                    .map_err(tk_err)?;
                let mut inner = Tokenizer::new(bpe);
                let pre = md
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .cloned()
                    .unwrap_or_else(|| "gpt2".into());
                inner.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
                inner.with_decoder(Some(ByteLevelDecoder::default()));
                inner
            }
            "llama" => sentencepiece(md, &tokens, &types, vocab)?,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF tokenizer.ggml.model {other:?} (supported: gpt2 byte-level BPE, llama \
                     SentencePiece); load the model from a Hugging Face folder with tokenizer.json instead"
                )));
            }
        };
        // control (3) and user-defined (4) tokens are matched whole in text, as llama.cpp does with
        // `parse_special`; the chat template relies on it
        let specials: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t, 3 | 4))
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(tk_err)?;
        let id = |k: &str| md.get(k).and_then(as_u32);
        let eos = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| tk_err("GGUF metadata lacks tokenizer.ggml.eos_token_id"))?;
        let bos = id("tokenizer.ggml.bos_token_id");
        let stops = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .filter(|&t| t != eos && (t as usize) < tokens.len())
            .collect();
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let name = |i: Option<u32>| {
            i.and_then(|i| tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        Ok(TextTokenizer {
            bos_text: name(bos),
            eos_text: name(Some(eos)),
            inner,
            bos,
            eos,
            stops,
            add_bos,
            chat_template: template.unwrap_or_else(|| CHATML_TEMPLATE.into()),
        })
    }

    /// From a Hugging Face folder: `tokenizer.json`, plus `tokenizer_config.json` (chat template, BOS/EOS,
    /// `add_bos_token`) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            Tokenizer::from_file(&path).map_err(|e| tk_err(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| ModelError::corrupt(&cfg_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(ModelError::io(&cfg_path, e)),
        };
        let token_text = |k: &str| match &cfg[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        };
        let eos_text = token_text("eos_token").unwrap_or_else(|| "</s>".into());
        let eos = inner
            .token_to_id(&eos_text)
            .ok_or_else(|| tk_err(format!("EOS token {eos_text:?} is not in the vocabulary")))?;
        let bos_text = token_text("bos_token").unwrap_or_default();
        // generation_config.json may list several end tokens (an id or a list of ids)
        let gen_path = dir.join("generation_config.json");
        let stops = match std::fs::read_to_string(&gen_path) {
            Ok(text) => {
                let g: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&gen_path, e))?;
                let ids: Vec<u64> = match &g["eos_token_id"] {
                    serde_json::Value::Number(n) => n.as_u64().into_iter().collect(),
                    serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64()).collect(),
                    _ => Vec::new(),
                };
                let vocab = inner.get_vocab_size(true) as u64;
                if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
                    return Err(ModelError::corrupt(
                        &gen_path,
                        format!("eos_token_id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
                ids.into_iter()
                    .map(|i| i as u32)
                    .filter(|&i| i != eos)
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ModelError::io(&gen_path, e)),
        };
        Ok(TextTokenizer {
            bos: inner.token_to_id(&bos_text),
            eos,
            stops,
            add_bos: cfg["add_bos_token"].as_bool().unwrap_or(false),
            chat_template: cfg["chat_template"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| CHATML_TEMPLATE.into()),
            bos_text,
            eos_text,
            inner,
        })
    }

    /// A byte-level tokenizer without merges: the 256 byte symbols, then `<|endoftext|>` (BOS/EOS),
    /// `<|im_start|>`, `<|im_end|>`. Small enough for the tiny random models tests and demos build.
    pub fn byte_level() -> Result<Self> {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let mut vocab: tokenizers::models::bpe::Vocab = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        for (i, s) in specials.iter().enumerate() {
            vocab.insert(s.to_string(), (alphabet.len() + i) as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(tk_err)?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner
            .add_special_tokens(
                specials
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect::<Vec<_>>(),
            )
            .map_err(tk_err)?;
        let eos = alphabet.len() as u32;
        Ok(TextTokenizer {
            inner,
            bos: Some(eos),
            eos,
            stops: Vec::new(),
            add_bos: false,
            chat_template: CHATML_TEMPLATE.into(),
            bos_text: specials[0].into(),
            eos_text: specials[0].into(),
        })
    }

    /// `tokenizer_config.json`: the special tokens and chat template, as transformers writes them.
    pub fn hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "bos_token": self.bos_text,
            "eos_token": self.eos_text,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        })
    }

    /// The tokenizer as `tokenizer.json`.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tk_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Where words break between tokens, for span attribution (a matched span never starts or ends inside
    /// a word).
    pub fn word_breaks(&self) -> WordBreaks {
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for id in 0..self.vocab_size() as u32 {
            let text = self.inner.decode(&[id], false).unwrap_or_default();
            // whitespace, punctuation, special tokens and partial UTF-8 are not letters or digits
            let apart = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
            starts.push(apart(text.chars().next()));
            ends.push(apart(text.chars().next_back()));
        }
        WordBreaks { starts, ends }
    }

    /// Every token that ends a generation: EOS, the model's other end tokens, and ChatML's `<|im_end|>`
    /// when the vocabulary has it.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut out = vec![self.eos];
        for t in self
            .stops
            .iter()
            .copied()
            .chain(self.token_to_id("<|im_end|>"))
        {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`; special-token strings (`<|im_start|>`...) become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tk_err)
    }

    /// The model's chat template rendered (Jinja, as transformers does).
    pub fn render_chat(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({ "role": role, "content": content }))
            .collect();
        self.render_template(&msgs, add_generation_prompt, &serde_json::json!({}))
    }

    /// The chat template over `messages` (OpenAI-style objects) with `extra` variables (`tools`...),
    /// rendered as transformers' `apply_chat_template` renders it: Jinja with `trim_blocks` and
    /// `lstrip_blocks`, loop controls, Python's string methods, `raise_exception`, `strftime_now` and a
    /// `tojson` that writes what Python's `json.dumps` writes.
    pub fn render_template(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let env = crate::template::environment();
        let tmpl = env
            .template_from_str(&self.chat_template)
            .map_err(|e| tk_err(format!("chat template: {}", crate::template::describe(&e))))?;
        // transformers passes `tools` and `documents` as None when there are none
        let mut ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_text,
            "eos_token": self.eos_text,
            "tools": null,
            "documents": null,
        });
        if let (Some(c), Some(x)) = (ctx.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                c.insert(k.clone(), v.clone());
            }
        }
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| tk_err(format!("chat template: {}", crate::template::describe(&e))))
    }

    /// Refuses a chat template that cannot render a plain user/assistant exchange (a syntax error, or a
    /// `raise_exception` it reaches): naming `file` and `field`, so a model is refused at registration
    /// rather than failing every training job and chat later.
    pub fn check_template(&self, file: &Path, field: &str) -> Result<()> {
        for (messages, gen_prompt) in [
            (&[("user", "Hello")][..], true),
            (&[("user", "Hello"), ("assistant", "Hi.")][..], false),
        ] {
            self.render_chat(messages, gen_prompt).map_err(|e| {
                ModelError::corrupt(
                    file,
                    format!("{field} cannot render a user/assistant exchange: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The template text (for checks at registration).
    pub fn chat_template(&self) -> &str {
        &self.chat_template
    }

    /// A plain-text document: every token is a target; EOS closes it so the model learns to stop.
    pub fn document(&self, text: &str) -> Result<Tokenized> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend(self.encode(text)?);
        ids.push(self.eos);
        let targets = vec![true; ids.len()];
        Ok(Tokenized { ids, targets })
    }

    /// A prompt/completion pair through the chat template; only the assistant's turn is a target.
    pub fn chat_pair(&self, prompt: &str, completion: &str) -> Result<Tokenized> {
        self.chat_conversation(&[("user", prompt), ("assistant", completion)])
    }

    /// A conversation (`(role, content)` turns: system, user, assistant) through the chat template, the
    /// loss on the assistant turns only (their text and the template's end of turn). Rendered turn by turn
    /// where each generation prompt extends what came before (as for one pair: the targets are exactly
    /// what the model would generate); a template that rewrites earlier turns (Mistral's puts the system
    /// prompt into the last user turn) is rendered whole and each answer found in it, in order.
    pub fn chat_conversation(&self, turns: &[(&str, &str)]) -> Result<Tokenized> {
        let Some(last) = turns.iter().rposition(|(r, _)| *r == "assistant") else {
            return Err(tk_err("a conversation to train on needs an assistant turn"));
        };
        let turns = &turns[..=last];
        // (text, is target) pieces, in order
        let pieces = match self.pieces(turns) {
            // a template without a system role (Gemma 2's refuses one): the system prompt opens the first
            // user turn, as transformers users merge it
            Err(e) if turns.len() > 1 && turns[0].0 == "system" && turns[1].0 == "user" => {
                let merged = format!("{}\n\n{}", turns[0].1, turns[1].1);
                let mut rest: Vec<(&str, &str)> = vec![("user", merged.as_str())];
                rest.extend_from_slice(&turns[2..]);
                self.pieces(&rest).map_err(|_| e)?
            }
            other => other?,
        };
        // encoded whole (pieces encoded apart would each get a SentencePiece space prefix), each token a
        // target where it overlaps an answer
        let mut text = String::new();
        let mut answers = Vec::new();
        for (piece, target) in &pieces {
            if *target {
                answers.push(text.len()..text.len() + piece.len());
            }
            text.push_str(piece);
        }
        let enc = self.inner.encode(text.as_str(), false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        let mut targets = Vec::with_capacity(ids.capacity());
        if self.add_bos
            && let Some(b) = self.bos
            && !text.starts_with(&self.bos_text)
        {
            ids.push(b);
            targets.push(false);
        }
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            ids.push(id);
            targets.push(answers.iter().any(|r| end > r.start && start < r.end));
        }
        Ok(Tokenized { ids, targets })
    }

    fn pieces(&self, turns: &[(&str, &str)]) -> Result<Vec<(String, bool)>> {
        match self.incremental_pieces(turns)? {
            Some(p) => Ok(p),
            None => self.searched_pieces(turns),
        }
    }

    /// Turn by turn: before each answer the generation prompt, then the answer as the template writes it;
    /// `None` when a generation prompt does not extend what was rendered before it.
    fn incremental_pieces(&self, turns: &[(&str, &str)]) -> Result<Option<Vec<(String, bool)>>> {
        let mut pieces = Vec::new();
        let mut done = String::new();
        for (i, (role, _)) in turns.iter().enumerate() {
            if *role != "assistant" {
                continue;
            }
            let prefix = self.render_chat(&turns[..i], true)?;
            let full = self.render_chat(&turns[..=i], false)?;
            let (Some(context), Some(answer)) = (
                prefix.strip_prefix(done.as_str()),
                full.strip_prefix(prefix.as_str()),
            ) else {
                return Ok(None);
            };
            pieces.push((context.to_string(), false));
            pieces.push((answer.to_string(), true));
            done = full;
        }
        Ok(Some(pieces))
    }

    /// The whole conversation rendered once, each answer (and the end of turn the template writes after it
    /// when it is last) found in it after the one before.
    fn searched_pieces(&self, turns: &[(&str, &str)]) -> Result<Vec<(String, bool)>> {
        let whole = self.render_chat(turns, false)?;
        let mut pieces = Vec::new();
        let mut cursor = 0;
        for (i, (role, content)) in turns.iter().enumerate() {
            if *role != "assistant" {
                continue;
            }
            let alone = self.render_chat(&turns[..=i], false)?;
            let end_of_turn = alone
                .rfind(content)
                .map(|at| &alone[at + content.len()..])
                .unwrap_or_default();
            let Some(at) = whole[cursor..].find(content).map(|at| cursor + at) else {
                return Err(tk_err(format!(
                    "the chat template does not write assistant turn {} as given",
                    i + 1
                )));
            };
            let mut end = at + content.len();
            if !end_of_turn.is_empty() && whole[end..].starts_with(end_of_turn) {
                end += end_of_turn.len();
            }
            pieces.push((whole[cursor..at].to_string(), false));
            pieces.push((whole[at..end].to_string(), true));
            cursor = end;
        }
        Ok(pieces)
    }
}
