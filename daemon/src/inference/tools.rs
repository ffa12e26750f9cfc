//! Tool calling, as OpenAI's chat API has it: `tools` (functions with JSON-schema parameters),
//! `tool_choice` (`none`, `auto`, `required`, or one named function), `parallel_tool_calls`, assistant
//! messages carrying `tool_calls`, and `role: "tool"` messages answering them.
//!
//! The conversation goes through the model's own chat template where the template knows tools (Qwen 2/2.5's
//! and Hermes-style templates: `<tool_call>` blocks; Llama 3.1+'s: one JSON object with `name` and
//! `parameters`); a template that does not (SmolLM2's ChatML, Gemma's...) gets the Hermes convention in a
//! system message. With `tool_choice` `required` or a named function, the answer is constrained to calls
//! whose arguments are valid against the function's schema; with `auto` the model decides and the answer is
//! parsed. Calls come back as OpenAI's `tool_calls` with `finish_reason: "tool_calls"`.

use std::collections::HashSet;

use openledger_model::serve::{Constraint, Grammars};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::InferenceError;

/// How the model writes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call (Qwen, Hermes, and
    /// this server's own convention for templates without tools).
    Hermes,
    /// The whole answer is `{"name": ..., "parameters": {...}}` (Llama 3.1 and later), one call.
    Llama3,
}

/// A function the model may call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

impl Choice {
    fn parse(v: &Value) -> Result<Self, InferenceError> {
        let bad = || {
            InferenceError::Invalid(
                "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}"
                    .into(),
            )
        };
        match v {
            Value::String(s) => match s.as_str() {
                "none" => Ok(Choice::None),
                "auto" => Ok(Choice::Auto),
                "required" => Ok(Choice::Required),
                _ => Err(bad()),
            },
            Value::Object(o) if o.get("type") == Some(&json!("function")) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|n| Choice::Named(n.to_string()))
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// A request's tools, checked.
#[derive(Debug, Clone)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: Choice,
    pub parallel: bool,
    pub style: Style,
    /// The chat template renders `tools` itself (otherwise the Hermes system message does).
    pub in_template: bool,
}

/// The most functions one request may offer (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

impl Tools {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls` against each other; `None` when the request
    /// offers no tools (then `tool_choice` may only be `none` or `auto`).
    pub fn from_request(
        tools: Option<&Value>,
        choice: Option<&Value>,
        parallel: Option<bool>,
        template: &str,
    ) -> Result<Option<Tools>, InferenceError> {
        let invalid = |m: String| InferenceError::Invalid(m);
        let choice = match choice {
            None | Some(Value::Null) => None,
            Some(v) => Some(Choice::parse(v)?),
        };
        let tools: Vec<Tool> = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| invalid(format!("tools: {e}")))?
            }
        };
        if tools.is_empty() {
            return match choice {
                None | Some(Choice::None) | Some(Choice::Auto) => Ok(None),
                Some(_) => Err(invalid(
                    "tool_choice asks for a call but the request has no tools".into(),
                )),
            };
        }
        if tools.len() > MAX_TOOLS {
            return Err(invalid(format!("tools: at most {MAX_TOOLS} functions")));
        }
        let mut names = HashSet::new();
        for t in &tools {
            if t.kind != "function" {
                return Err(invalid(format!(
                    "tools: type {:?} is not served (only \"function\")",
                    t.kind
                )));
            }
            let n = &t.function.name;
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(invalid(format!(
                    "tools: function name {n:?} must be 1-64 letters, digits, _ or -"
                )));
            }
            if !names.insert(n.clone()) {
                return Err(invalid(format!("tools: function {n:?} is listed twice")));
            }
            if let Some(p) = &t.function.parameters
                && !p.is_object()
            {
                return Err(invalid(format!(
                    "tools: the parameters of {n:?} must be a JSON schema object"
                )));
            }
        }
        let choice = choice.unwrap_or(Choice::Auto);
        if let Choice::Named(n) = &choice
            && !names.contains(n)
        {
            return Err(invalid(format!(
                "tool_choice names {n:?}, which is not among the tools"
            )));
        }
        let (style, in_template) = style_of(template);
        Ok(Some(Tools {
            functions: tools.into_iter().map(|t| t.function).collect(),
            choice,
            // a Llama 3 answer is one JSON object: one call
            parallel: parallel.unwrap_or(true) && style == Style::Hermes,
            style,
            in_template,
        }))
    }

    /// The tools are offered to the model (not `tool_choice: "none"`).
    pub fn offered(&self) -> bool {
        self.choice != Choice::None
    }

    /// `tools` as the chat template receives them (transformers' format: OpenAI's tool objects).
    pub fn template_value(&self) -> Value {
        Value::Array(
            self.functions
                .iter()
                .map(|f| json!({"type": "function", "function": function_json(f)}))
                .collect(),
        )
    }

    /// The system message that teaches the Hermes convention to a template without tools.
    pub fn system_prompt(&self) -> String {
        let mut s = String::from(
            "You may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for f in &self.functions {
            s.push('\n');
            s.push_str(&json!({"type": "function", "function": function_json(f)}).to_string());
        }
        s.push_str(
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
             within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
             \"arguments\": <args-json-object>}\n</tool_call>",
        );
        s
    }

    /// The grammar a `required` or named choice puts on the answer: only calls, each to one of the allowed
    /// functions with arguments valid against its schema.
    pub fn constraint(&self, grammars: &Grammars) -> Result<Option<Constraint>, InferenceError> {
        let allowed: Vec<&Function> = match &self.choice {
            Choice::None | Choice::Auto => return Ok(None),
            Choice::Required => self.functions.iter().collect(),
            Choice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
        };
        let args = match self.style {
            Style::Hermes => "arguments",
            Style::Llama3 => "parameters",
        };
        let calls: Vec<Value> = allowed
            .iter()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        args: f.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                    },
                    "required": ["name", args],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut schema = if calls.len() == 1 {
            calls[0].clone()
        } else {
            json!({ "anyOf": calls })
        };
        // compact JSON, as for response_format
        schema["x-guidance"] = json!({"whitespace_flexible": false});
        let grammar = match self.style {
            Style::Hermes => {
                let more = if self.parallel { "(\"\\n\" call)*" } else { "" };
                // a newline may close the answer too (models end a call's line before their end token)
                format!(
                    "start: call {more} \"\\n\"?\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
                )
            }
            Style::Llama3 => format!("start: %json {schema}\n"),
        };
        grammars
            .lark("tools", &grammar)
            .map(Some)
            .map_err(|e| InferenceError::Invalid(e.to_string()))
    }

    /// The calls in an answer, and the text around them (`None` when there is none); no calls when the
    /// answer holds none, or names a function that was not offered, or its arguments are not a JSON object.
    pub fn parse(&self, text: &str) -> (Option<String>, Vec<Call>) {
        let names: HashSet<&str> = self.functions.iter().map(|f| f.name.as_str()).collect();
        let as_call = |v: &Value| -> Option<Call> {
            let name = v.get("name")?.as_str()?;
            let args = v.get("arguments").or_else(|| v.get("parameters"))?;
            let args = match args {
                Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
                other => other.clone(),
            };
            (names.contains(name) && args.is_object()).then(|| Call {
                id: format!("call_{}", hex::encode(rand::random::<[u8; 12]>())),
                name: name.to_string(),
                arguments: args.to_string(),
            })
        };
        // Hermes blocks
        if let Some(first) = text.find("<tool_call>") {
            let mut calls = Vec::new();
            let mut rest = &text[first..];
            while let Some(start) = rest.find("<tool_call>") {
                let body = &rest[start + "<tool_call>".len()..];
                let (inner, after, closed) = match body.find("</tool_call>") {
                    Some(end) => (&body[..end], &body[end + "</tool_call>".len()..], true),
                    None => (body, "", false),
                };
                match serde_json::from_str::<Value>(inner.trim())
                    .ok()
                    .as_ref()
                    .and_then(as_call)
                {
                    Some(c) => calls.push(c),
                    // an answer cut (max_tokens) inside a further call keeps the calls it completed
                    None if !closed && !calls.is_empty() => break,
                    None => return (Some(text.to_string()), Vec::new()),
                }
                rest = after;
            }
            let before = text[..first].trim();
            return ((!before.is_empty()).then(|| before.to_string()), calls);
        }
        // one JSON object (Llama 3), or a list of them
        match serde_json::from_str::<Value>(text.trim()) {
            Ok(v @ Value::Object(_)) => match as_call(&v) {
                Some(c) => (None, vec![c]),
                None => (Some(text.to_string()), Vec::new()),
            },
            Ok(Value::Array(a)) if !a.is_empty() => {
                let calls: Option<Vec<Call>> = a.iter().map(as_call).collect();
                match calls {
                    Some(c) => (None, c),
                    None => (Some(text.to_string()), Vec::new()),
                }
            }
            _ => (Some(text.to_string()), Vec::new()),
        }
    }
}

/// One function call of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string, as OpenAI gives them.
    pub arguments: String,
}

impl Call {
    /// OpenAI's `tool_calls` entry; `index` is set for streamed deltas.
    pub fn json(&self, index: Option<usize>) -> Value {
        let mut v = json!({
            "id": self.id, "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        });
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }
}

fn function_json(f: &Function) -> Value {
    let mut v = json!({"name": f.name});
    if let Some(d) = &f.description {
        v["description"] = json!(d);
    }
    v["parameters"] = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    v
}

/// The chat template renders tools, calls and tool results itself.
pub fn template_knows_tools(template: &str) -> bool {
    style_of(template).1
}

/// An assistant message's earlier call, from OpenAI's `tool_calls` entry: the function's name and its
/// arguments as a JSON value (templates write them as objects).
pub fn history_call(v: &Value) -> Result<(String, Value), InferenceError> {
    let bad = |m: &str| InferenceError::Invalid(format!("messages: a tool_calls entry {m}"));
    let f = v.get("function").ok_or_else(|| bad("has no function"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no function.name"))?;
    let args = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| bad(&format!("has arguments that are not JSON: {e}")))?,
        Some(o @ Value::Object(_)) => o.clone(),
        None | Some(Value::Null) => json!({}),
        Some(_) => {
            return Err(bad(
                "has arguments that are neither a JSON string nor an object",
            ));
        }
    };
    Ok((name.to_string(), args))
}

/// How a chat template writes calls, and whether it renders `tools` itself.
fn style_of(template: &str) -> (Style, bool) {
    if template.contains("<tool_call>") && template.contains("tools") {
        (Style::Hermes, true)
    } else if template.contains("tools") && template.contains("\"parameters\"") {
        (Style::Llama3, true)
    } else {
        (Style::Hermes, false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use openledger_model::TextTokenizer;

    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
                "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}])
    }

    const CHATML: &str =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

    fn tools(choice: Value) -> Tools {
        Tools::from_request(Some(&weather()), Some(&choice), None, CHATML)
            .unwrap()
            .unwrap()
    }

    /// Feeds `text` character by character to the constraint (the byte-level tokenizer without merges: one
    /// token per ASCII character); `Ok` when every one was allowed and the grammar may end there.
    fn feed(c: &mut Constraint, tok: &TextTokenizer, text: &str) -> Result<(), String> {
        let vocab = tok.vocab_size();
        for (i, ch) in text.chars().enumerate() {
            let ids = tok.encode(&ch.to_string()).unwrap();
            assert_eq!(ids.len(), 1);
            let mut l = vec![0.0f32; vocab];
            c.mask(&mut l).unwrap();
            if !l[ids[0] as usize].is_finite() {
                return Err(format!("character {i} ({ch:?}) refused"));
            }
            c.consume(ids[0]).unwrap();
        }
        if c.is_accepting() {
            Ok(())
        } else {
            Err("incomplete".into())
        }
    }

    #[test]
    fn choices_are_checked_against_the_tools() {
        let t = tools(json!("auto"));
        assert_eq!(t.choice, Choice::Auto);
        assert_eq!((t.style, t.in_template), (Style::Hermes, false));
        assert!(t.parallel);
        let err = |tools: Option<Value>, choice: Value| {
            Tools::from_request(tools.as_ref(), Some(&choice), None, CHATML)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(
                Some(weather()),
                json!({"type": "function", "function": {"name": "nope"}})
            )
            .contains("nope")
        );
        assert!(err(None, json!("required")).contains("no tools"));
        assert!(err(Some(weather()), json!("sometimes")).contains("tool_choice"));
        let twice = json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]);
        assert!(err(Some(twice), json!("auto")).contains("twice"));
        let bad_name = json!([{"type": "function", "function": {"name": "a b"}}]);
        assert!(err(Some(bad_name), json!("auto")).contains("a b"));
        let not_fn = json!([{"type": "retrieval", "function": {"name": "a"}}]);
        assert!(err(Some(not_fn), json!("auto")).contains("retrieval"));
        // no tools and no demand: nothing to do
        assert!(
            Tools::from_request(None, Some(&json!("auto")), None, CHATML)
                .unwrap()
                .is_none()
        );
        // a Qwen-style template renders tools itself
        let qwen = "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> <tool_call>{% endif %}";
        let t = Tools::from_request(Some(&weather()), None, Some(false), qwen)
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.style, t.in_template, t.parallel),
            (Style::Hermes, true, false)
        );
    }

    #[test]
    fn a_required_call_is_constrained_to_a_valid_call() {
        let tok = TextTokenizer::byte_level().unwrap();
        let g = Grammars::new(&tok, tok.vocab_size()).unwrap();
        let call = "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"unit\":\"C\"}}\n</tool_call>";
        let mut c = tools(json!("required")).constraint(&g).unwrap().unwrap();
        feed(&mut c, &tok, call).unwrap();
        // a newline after the last call may end the answer; after it, another call may still follow
        let mut c = tools(json!("required")).constraint(&g).unwrap().unwrap();
        feed(&mut c, &tok, &format!("{call}\n")).unwrap();
        feed(&mut c, &tok, call).unwrap();
        // two calls in a row (parallel), the second to the other function
        let mut c = tools(json!("required")).constraint(&g).unwrap().unwrap();
        let two = format!(
            "{call}\n<tool_call>\n{{\"name\":\"get_time\",\"arguments\":{{\"zone\":\"CET\"}}}}\n</tool_call>"
        );
        feed(&mut c, &tok, &two).unwrap();
        // plain text, an unknown function, or arguments the schema refuses: refused
        for bad in [
            "Sure! <tool_call>",
            "<tool_call>\n{\"name\":\"get_news\"",
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"unit\":\"K\"",
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"town\"",
        ] {
            let mut c = tools(json!("required")).constraint(&g).unwrap().unwrap();
            assert!(
                feed(&mut c, &tok, bad).unwrap_err().contains("refused"),
                "{bad}"
            );
        }
        // a named function: the other is refused
        let mut c = tools(json!({"type": "function", "function": {"name": "get_time"}}))
            .constraint(&g)
            .unwrap()
            .unwrap();
        assert!(feed(&mut c, &tok, call).is_err());
        // auto constrains nothing
        assert!(tools(json!("auto")).constraint(&g).unwrap().is_none());
    }

    #[test]
    fn answers_are_read_for_calls() {
        let t = tools(json!("auto"));
        let (text, calls) = t.parse(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"C\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}",
        );
        assert_eq!(text.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris", "unit": "C"}));
        assert_ne!(calls[0].id, calls[1].id);
        assert!(calls[0].id.starts_with("call_"));
        // Llama 3's form
        let (text, calls) =
            t.parse("{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}");
        assert!(text.is_none());
        assert_eq!(calls[0].name, "get_time");
        // cut inside a second call: the first stands
        let (_, calls) = t.parse("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_wea");
        assert_eq!(calls.len(), 1);
        // no call, an unknown function, broken JSON: text
        for s in [
            "It is sunny.",
            "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": ",
        ] {
            let (text, calls) = t.parse(s);
            assert!(calls.is_empty(), "{s}");
            assert_eq!(text.as_deref(), Some(s));
        }
    }

    #[test]
    fn earlier_calls_come_back_as_objects() {
        let (n, a) = history_call(&json!({"id": "call_1", "type": "function",
            "function": {"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}}))
        .unwrap();
        assert_eq!((n.as_str(), a), ("get_time", json!({"zone": "CET"})));
        assert!(history_call(&json!({"function": {"name": "x", "arguments": "{oops"}})).is_err());
        assert!(history_call(&json!({"type": "function"})).is_err());
    }
}
