//! What an inference request asks for, in OpenAI's request format (chat and text completions, with
//! `top_k`, `repetition_penalty`, `request_id`, `request_secret` and `payer` besides), whether it came over HTTP or as a
//! line of a batch file: the fields, the prompt they make, and the sampling settings they choose.

use std::collections::BTreeMap;

use openledger_model::serve::{Constraint, MAX_TOP_LOGPROBS, SamplingParams};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Inference;
use super::error::InferenceError;
use super::tools::{self, Choice, Tools};

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
    /// An assistant message's calls (OpenAI's `tool_calls`: `function.arguments` a JSON string).
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// OpenAI's `response_format`: free text, any JSON object (JSON mode), or JSON valid against a schema. Both
/// JSON forms are enforced by constrained decoding, `strict` or not.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// Fields of OpenAI's requests this server does not implement, and the value each may still carry (the
/// one that asks for nothing); any other value is refused, naming the field. Fields outside OpenAI's
/// reference and this server's extensions are refused too.
fn inert(field: &str, v: &Value) -> bool {
    match field {
        "echo" | "store" => v == &Value::Bool(false),
        "best_of" => v.as_u64() == Some(1),
        _ => false,
    }
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
    /// Chat: `true` for each token's log-probability; completions: the number of alternatives (0..=5).
    pub logprobs: Option<Value>,
    /// Chat: how many alternatives each token lists (0..=20, with `logprobs: true`).
    pub top_logprobs: Option<usize>,
    /// Token id (as a string) to a bias added to its logit, -100..=100.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub response_format: Option<ResponseFormat>,
    /// The end user, for abuse monitoring: written to the log line of the inference.
    pub user: Option<String>,
    /// Pay-first: the bytes32 request id paid to `FeeRouter.payInference`; served only to a caller signed
    /// in as its payer.
    pub request_id: Option<String>,
    /// Pay-first: the bytes32 secret whose keccak256 is the request id paid; whoever sends it may use the
    /// payment (so keep it to yourself until you call).
    pub request_secret: Option<String>,
    /// Pay-first: the address that must have paid.
    pub payer: Option<String>,
    /// Every other field: refused unless null or inert (`inert`), never ignored.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A chat completion request (OpenAI's fields, plus `top_k`, `repetition_penalty`, `request_id`,
/// `request_secret`, `payer`).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Message>,
    /// Functions the model may call (`inference::tools`).
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
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

/// A request with its prompt tokenized and its output grammar compiled: what the service starts.
#[derive(Debug)]
pub struct Prepared {
    pub kind: Kind,
    pub common: Common,
    pub prompt: Vec<u32>,
    /// What the output must parse as (`response_format`, or the calls `tool_choice` requires).
    pub constraint: Option<Constraint>,
    /// The tools offered (chat): the answer is parsed for calls.
    pub tools: Option<Tools>,
}

impl ChatRequest {
    /// The chat template applied to the messages, tokenized.
    pub fn prepare(self, inf: &Inference) -> Result<Prepared, InferenceError> {
        self.common.check_fields(Kind::Chat)?;
        let tools = Tools::from_request(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
            inf.tokenizer.chat_template(),
        )?
        .filter(Tools::offered);
        let prompt = chat_prompt(inf, &self.messages, tools.as_ref())?;
        let mut constraint = self.common.constraint(inf)?;
        if let Some(t) = &tools {
            let g = inf.grammars.as_ref();
            let required = match g {
                Some(g) => t.constraint(g)?,
                None if matches!(t.choice, Choice::Auto) => None,
                None => {
                    return Err(InferenceError::Invalid(
                        "tool_choice: this model's tokenizer does not support constrained calls; use \"auto\"".into(),
                    ));
                }
            };
            if required.is_some() && constraint.is_some() {
                return Err(InferenceError::Invalid(
                    "response_format and a required tool_choice both constrain the answer: give one".into(),
                ));
            }
            constraint = constraint.or(required);
        }
        Ok(Prepared {
            kind: Kind::Chat,
            common: self.common,
            prompt,
            constraint,
            tools,
        })
    }
}

impl CompletionRequest {
    /// The prompt (text, one text in a list, or token ids) tokenized.
    pub fn prepare(self, inf: &Inference) -> Result<Prepared, InferenceError> {
        self.common.check_fields(Kind::Completion)?;
        let prompt = completion_prompt(inf, &self.prompt)?;
        let constraint = self.common.constraint(inf)?;
        Ok(Prepared {
            kind: Kind::Completion,
            common: self.common,
            prompt,
            constraint,
            tools: None,
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

/// The messages through the model's chat template: tools and calls as the template writes them where it
/// knows tools, else in the Hermes convention (`inference::tools`).
fn chat_prompt(
    inf: &Inference,
    messages: &[Message],
    tools: Option<&Tools>,
) -> Result<Vec<u32>, InferenceError> {
    if messages.is_empty() {
        return Err(InferenceError::Invalid("messages must not be empty".into()));
    }
    let native = tools::template_knows_tools(inf.tokenizer.chat_template());
    let mut msgs: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer" | "tool"
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
        if m.tool_calls.is_some() && m.role != "assistant" {
            return Err(InferenceError::Invalid(
                "tool_calls belong to assistant messages".into(),
            ));
        }
        let calls = m
            .tool_calls
            .iter()
            .flatten()
            .map(tools::history_call)
            .collect::<Result<Vec<_>, _>>()?;
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        let msg = match (role, native) {
            ("tool", true) => {
                let mut v = json!({"role": "tool", "content": text});
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = json!(id);
                }
                if let Some(n) = &m.name {
                    v["name"] = json!(n);
                }
                v
            }
            ("tool", false) => json!({
                "role": "user", "content": format!("<tool_response>\n{text}\n</tool_response>"),
            }),
            ("assistant", true) if !calls.is_empty() => {
                let tc: Vec<Value> = calls
                    .iter()
                    .map(|(n, a)| json!({"type": "function", "function": {"name": n, "arguments": a}}))
                    .collect();
                json!({"role": "assistant", "content": text, "tool_calls": tc})
            }
            ("assistant", false) if !calls.is_empty() => {
                let mut t = text.clone();
                for (n, a) in &calls {
                    if !t.is_empty() {
                        t.push('\n');
                    }
                    t.push_str(&format!(
                        "<tool_call>\n{}\n</tool_call>",
                        json!({"name": n, "arguments": a})
                    ));
                }
                json!({"role": "assistant", "content": t})
            }
            _ => json!({"role": role, "content": text}),
        };
        msgs.push(msg);
    }
    let mut extra = json!({});
    if let Some(t) = tools {
        if t.in_template {
            extra["tools"] = t.template_value();
        } else {
            // the convention goes into the system message (a first system message keeps its text)
            let prompt = t.system_prompt();
            match msgs.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let text = first["content"].as_str().unwrap_or_default().to_string();
                    first["content"] = json!(format!("{text}\n\n{prompt}"));
                }
                _ => msgs.insert(0, json!({"role": "system", "content": prompt})),
            }
        }
    }
    let text = inf
        .tokenizer
        .render_template(&msgs, true, &extra)
        .map_err(|e| {
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
    /// Refuses the fields this server does not implement (naming them) unless they ask for nothing.
    pub fn check_fields(&self, kind: Kind) -> Result<(), InferenceError> {
        for (k, v) in &self.other {
            if v.is_null() || inert(k, v) {
                continue;
            }
            let hint = match k.as_str() {
                "tools" | "tool_choice" | "parallel_tool_calls" => {
                    ": tools are served on chat completions"
                }
                "functions" | "function_call" => ": use tools and tool_choice",
                "echo" | "best_of" | "suffix" => ": only its default is served",
                _ => "",
            };
            return Err(InferenceError::Invalid(format!(
                "unsupported field `{k}`{hint}"
            )));
        }
        if kind == Kind::Completion && self.top_logprobs.is_some() {
            return Err(InferenceError::Invalid(
                "unsupported field `top_logprobs`: text completions take `logprobs: N` (0..=5)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// How many alternatives each token's log-probabilities list (`None`: none asked): chat's `logprobs:
    /// true` with `top_logprobs`, or completions' `logprobs: N`.
    pub fn logprobs(&self, kind: Kind) -> Result<Option<usize>, InferenceError> {
        let bad = |m: &str| Err(InferenceError::Invalid(m.into()));
        match (kind, &self.logprobs) {
            (Kind::Chat, None | Some(Value::Null) | Some(Value::Bool(false))) => {
                if self.top_logprobs.is_some() {
                    return bad("top_logprobs needs logprobs: true");
                }
                Ok(None)
            }
            (Kind::Chat, Some(Value::Bool(true))) => {
                let k = self.top_logprobs.unwrap_or(0);
                if k > MAX_TOP_LOGPROBS {
                    return bad("top_logprobs must be between 0 and 20");
                }
                Ok(Some(k))
            }
            (Kind::Chat, Some(_)) => bad("logprobs must be true or false"),
            (Kind::Completion, None | Some(Value::Null)) => Ok(None),
            (Kind::Completion, Some(v)) => match v.as_u64() {
                Some(k) if k <= 5 => Ok(Some(k as usize)),
                _ => bad("logprobs must be an integer between 0 and 5"),
            },
        }
    }

    /// How many choices to generate (`n`, 1 by default): 1 to `MAX_CHOICES`, and no more than the engine
    /// holds at once (`max_queue`), since every choice is a sequence of its own.
    pub fn choices(&self, max_queue: usize) -> Result<usize, InferenceError> {
        let max = MAX_CHOICES.min(max_queue);
        match self.n {
            None => Ok(1),
            Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
            Some(n) => Err(InferenceError::Invalid(format!(
                "n must be between 1 and {max} (got {n}): each choice is a sequence of its own"
            ))),
        }
    }

    /// The sampling settings, OpenAI's defaults where the request gives none. `vocab` bounds `logit_bias`'s
    /// token ids.
    pub fn sampling(&self, kind: Kind, vocab: usize) -> Result<SamplingParams, InferenceError> {
        let mut logit_bias = Vec::new();
        for (k, &b) in self.logit_bias.iter().flatten() {
            let t = k
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    InferenceError::Invalid(format!(
                        "logit_bias: {k:?} is not a token id of this model (0..{vocab})"
                    ))
                })?;
            logit_bias.push((t, b));
        }
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
            logit_bias,
            logprobs: self.logprobs(kind)?,
        })
    }

    /// The grammar `response_format` asks the output to follow.
    pub fn constraint(&self, inf: &Inference) -> Result<Option<Constraint>, InferenceError> {
        let grammars = || {
            inf.grammars.as_ref().ok_or_else(|| {
                InferenceError::Invalid(
                    "response_format: this model's tokenizer does not support structured outputs"
                        .into(),
                )
            })
        };
        let invalid = |e: openledger_model::ModelError| InferenceError::Invalid(e.to_string());
        match &self.response_format {
            None | Some(ResponseFormat::Text) => Ok(None),
            Some(ResponseFormat::JsonObject) => grammars()?
                .json_object("response_format")
                .map(Some)
                .map_err(invalid),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let schema = json_schema.schema.as_ref().ok_or_else(|| {
                    InferenceError::Invalid(
                        "response_format: json_schema.schema is required".into(),
                    )
                })?;
                grammars()?
                    .json_schema("response_format", schema)
                    .map(Some)
                    .map_err(invalid)
            }
        }
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
