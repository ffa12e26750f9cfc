//! Text <-> token ids for a base model, from GGUF metadata or a Hugging Face `tokenizer.json`, and the
//! model's chat template for prompt/completion data.
//!
//! GGUF files name their pre-tokenizer (`tokenizer.ggml.pre`); SmolLM2's is `smollm`: every digit is split
//! off first, then the GPT-2 byte-level regex runs. Plain GPT-2 handling (what candle's own converter falls
//! back to) merges digit runs and so yields different ids; `tests/tokenizer.rs` checks ours against ids from
//! llama.cpp's tokenizer.

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

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    Ok(match pre {
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(LLAMA3_REGEX.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF pre-tokenizer {other:?} (supported: smollm, gpt2, llama-bpe); load the model from a \
                 Hugging Face folder with tokenizer.json instead"
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

impl TextTokenizer {
    /// From the `tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE models).
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
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model {model:?} (only byte-level BPE, \"gpt2\", is read from GGUF); load the \
                 model from a Hugging Face folder with tokenizer.json instead"
            )));
        }
        let tokens = strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let merges = strings(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tk_err(format!("bad merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
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
        // control (3) and user-defined (4) tokens are matched whole in text, as llama.cpp does with
        // `parse_special`; the chat template relies on it
        if let Some(Value::Array(types)) = md.get("tokenizer.ggml.token_type") {
            let specials: Vec<AddedToken> = types
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(as_u32(t), Some(3 | 4)))
                .filter_map(|(i, _)| tokens.get(i))
                .map(|t| AddedToken::from(t.clone(), true))
                .collect();
            inner.add_special_tokens(specials).map_err(tk_err)?;
        }
        let id = |k: &str| md.get(k).and_then(as_u32);
        let eos = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| tk_err("GGUF metadata lacks tokenizer.ggml.eos_token_id"))?;
        let bos = id("tokenizer.ggml.bos_token_id");
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
        Ok(TextTokenizer {
            bos: inner.token_to_id(&bos_text),
            eos,
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
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let tmpl = env
            .template_from_str(&self.chat_template)
            .map_err(|e| tk_err(format!("chat template: {e}")))?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({ "role": role, "content": content }))
            .collect();
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_text,
            eos_token => self.eos_text,
        })
        .map_err(|e| tk_err(format!("chat template: {e}")))
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
        let prefix = self.render_chat(&[("user", prompt)], true)?;
        let full = self.render_chat(&[("user", prompt), ("assistant", completion)], false)?;
        let rest = full.strip_prefix(prefix.as_str()).ok_or_else(|| {
            tk_err("the chat template's generation prompt is not a prefix of the rendered conversation")
        })?;
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(b) = self.bos
            && !prefix.starts_with(&self.bos_text)
        {
            ids.push(b);
        }
        ids.extend(self.encode(&prefix)?);
        let n_prompt = ids.len();
        ids.extend(self.encode(rest)?);
        let targets = (0..ids.len()).map(|i| i >= n_prompt).collect();
        Ok(Tokenized { ids, targets })
    }
}
