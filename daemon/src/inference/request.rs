//! What an inference request asks for, in OpenAI's request format (chat and text completions, with
//! `top_k`, `repetition_penalty`, `request_id`, `request_secret` and `payer` besides), whether it came over HTTP or as a
//! line of a batch file: the fields, the prompt they make, and the sampling settings they choose.

use openledger_model::serve::SamplingParams;
use serde::Deserialize;
use serde_json::Value;

use super::Inference;
use super::error::InferenceError;

/// Which endpoint: chat or text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    /// The endpoints a batch line may name (`url`).
    pub const URLS: [&'static str; 2] = ["/v1/chat/completions", "/v1/completions"];

    pub fn from_url(url: &str) -> Option<Self> {
        match url {
            "/v1/chat/completions" => Some(Kind::Chat),
            "/v1/completions" => Some(Kind::Completion),
            _ => None,
        }
    }

    /// The `kind` column of the inference's record.
    pub fn record_name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Completion => "completion",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The generation fields both endpoints share.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<Value>,
    /// Pay-first: the bytes32 request id paid to `FeeRouter.payInference`; served only to a caller signed
    /// in as its payer.
    pub request_id: Option<String>,
    /// Pay-first: the bytes32 secret whose keccak256 is the request id paid; whoever sends it may use the
    /// payment (so keep it to yourself until you call).
    pub request_secret: Option<String>,
    /// Pay-first: the address that must have paid.
    pub payer: Option<String>,
}

/// A chat completion request (OpenAI's fields, plus `top_k`, `repetition_penalty`, `request_id`,
/// `request_secret`, `payer`).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

/// A text completion request.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Value,
    #[serde(flatten)]
    pub common: Common,
}

/// A request with its prompt tokenized: what the service starts.
#[derive(Debug)]
pub struct Prepared {
    pub kind: Kind,
    pub common: Common,
    pub prompt: Vec<u32>,
}

impl ChatRequest {
    /// The chat template applied to the messages, tokenized.
    pub fn prepare(self, inf: &Inference) -> Result<Prepared, InferenceError> {
        let prompt = chat_prompt(inf, &self.messages)?;
        Ok(Prepared {
            kind: Kind::Chat,
            common: self.common,
            prompt,
        })
    }
}

impl CompletionRequest {
    /// The prompt (text, one text in a list, or token ids) tokenized.
    pub fn prepare(self, inf: &Inference) -> Result<Prepared, InferenceError> {
        let prompt = completion_prompt(inf, &self.prompt)?;
        Ok(Prepared {
            kind: Kind::Completion,
            common: self.common,
            prompt,
        })
    }
}

impl Prepared {
    /// A request body of `kind` (a batch line's `body`), parsed and tokenized.
    pub fn from_body(inf: &Inference, kind: Kind, body: Value) -> Result<Self, InferenceError> {
        let bad =
            |e: serde_json::Error| InferenceError::Invalid(format!("invalid request body: {e}"));
        match kind {
            Kind::Chat => serde_json::from_value::<ChatRequest>(body)
                .map_err(bad)?
                .prepare(inf),
            Kind::Completion => serde_json::from_value::<CompletionRequest>(body)
                .map_err(bad)?
                .prepare(inf),
        }
    }
}

fn chat_prompt(inf: &Inference, messages: &[Message]) -> Result<Vec<u32>, InferenceError> {
    if messages.is_empty() {
        return Err(InferenceError::Invalid("messages must not be empty".into()));
    }
    let mut msgs = Vec::with_capacity(messages.len());
    for m in messages {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer"
        ) {
            return Err(InferenceError::Invalid(format!(
                "unknown message role {:?}",
                m.role
            )));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => text_parts(parts)?,
        };
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role.clone()
        };
        msgs.push((role, text));
    }
    let pairs: Vec<(&str, &str)> = msgs.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
    let text = inf.tokenizer.render_chat(&pairs, true).map_err(|e| {
        InferenceError::Invalid(format!("the chat template refused the messages: {e}"))
    })?;
    inf.tokenizer
        .encode(&text)
        .map_err(InferenceError::internal)
}

/// The text of a message given as content parts (only text parts are served).
fn text_parts(parts: &[Value]) -> Result<String, InferenceError> {
    let mut t = String::new();
    for p in parts {
        match (p["type"].as_str(), p["text"].as_str()) {
            (Some("text"), Some(x)) => t.push_str(x),
            _ => {
                return Err(InferenceError::Invalid(
                    "only text content parts are supported".into(),
                ));
            }
        }
    }
    Ok(t)
}

fn completion_prompt(inf: &Inference, prompt: &Value) -> Result<Vec<u32>, InferenceError> {
    match prompt {
        Value::String(p) => inf.tokenizer.encode(p).map_err(InferenceError::internal),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => inf
            .tokenizer
            .encode(a[0].as_str().unwrap_or_default())
            .map_err(InferenceError::internal),
        Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_u64()) => {
            let vocab = inf.tokenizer.vocab_size() as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(t) if t < vocab => Ok(t as u32),
                    _ => Err(InferenceError::Invalid(format!(
                        "token id {v} is outside the vocabulary"
                    ))),
                })
                .collect()
        }
        _ => Err(InferenceError::Invalid(
            "prompt must be a string, a list of one string, or a list of token ids".into(),
        )),
    }
}

impl Common {
    /// The sampling settings, OpenAI's defaults where the request gives none; `n` other than 1 and
    /// `logprobs` are refused, never ignored.
    pub fn sampling(&self) -> Result<SamplingParams, InferenceError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(InferenceError::Invalid(
                "n must be 1 (one choice per request)".into(),
            ));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(InferenceError::Invalid("logprobs are not supported".into()));
        }
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
        })
    }

    /// The stop sequences (at most 4, as OpenAI allows).
    pub fn take_stop(&mut self) -> Result<Vec<String>, InferenceError> {
        match self.stop.take() {
            None => Ok(vec![]),
            Some(Stop::One(s)) => Ok(vec![s]),
            Some(Stop::Many(v)) if v.len() <= 4 => Ok(v),
            Some(Stop::Many(_)) => Err(InferenceError::Invalid("at most 4 stop sequences".into())),
        }
    }
}
