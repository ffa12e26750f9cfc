//! Contribution content: validation and the canonical byte form whose keccak-256 goes on chain.
//!
//! Whatever the upload format, the canonical form is JSON Lines, one record per line, each record exactly
//! `{"text":...}`, `{"prompt":...,"completion":...}` or `{"messages":[{"role":...,"content":...},...]}` (keys
//! in that order, compact JSON, `\n` after every line). Strings are Unicode NFC with `\r\n`/`\r` turned into
//! `\n`, so the same text typed on two systems hashes the same. A `.txt`/`.md` file becomes one
//! `{"text":...}` record. Training reads this form as is.
//!
//! JSON Lines rows may come in the formats other tools use, each turned into the one canonical record
//! (so the same data in two formats is one content hash): OpenAI chat (`{"messages": [...]}`, roles
//! system/developer/user/assistant), Alpaca (`instruction`, optional `input` joined to it with a newline,
//! `output`, optional `system` and `history` of earlier `[prompt, answer]` pairs) and ShareGPT
//! (`conversations` of `{"from", "value"}` with human/gpt/system, optional `system`). A conversation of one
//! user turn and one assistant turn is a `{"prompt","completion"}` record; any other (a system prompt,
//! several turns) is a `{"messages"}` record; training computes the loss on assistant turns only.

use std::collections::BTreeMap;

use alloy::primitives::{B256, keccak256};
use serde::Deserialize;
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

/// How the uploaded bytes are to be read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON Lines: `{"prompt": ..., "completion": ...}` or `{"text": ...}` per line.
    Jsonl,
    /// A plain text document.
    Text,
    /// A Markdown document.
    Markdown,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Text => "text",
            Format::Markdown => "markdown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jsonl" => Some(Format::Jsonl),
            "text" => Some(Format::Text),
            "markdown" => Some(Format::Markdown),
            _ => None,
        }
    }

    /// From a file name's extension.
    pub fn from_filename(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "txt" | "text" => Some(Format::Text),
            "md" | "markdown" => Some(Format::Markdown),
            _ => None,
        }
    }

    /// From a request's media type (parameters such as `charset` ignored).
    pub fn from_media_type(ct: &str) -> Option<Self> {
        let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/jsonl"
            | "application/x-ndjson"
            | "application/x-jsonlines"
            | "application/jsonlines" => Some(Format::Jsonl),
            "text/plain" => Some(Format::Text),
            "text/markdown" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// Why content was refused; each names where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("the content is empty")]
    Empty,
    #[error("the content is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the content is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("line {line}: {reason}")]
    BadRecord { line: usize, reason: String },
    #[error("the content contains a NUL character")]
    Nul,
}

/// One training record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Record {
    Text { text: String },
    Pair { prompt: String, completion: String },
    Chat { messages: Vec<Turn> },
}

/// One turn of a conversation record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// The row formats an upload's records arrived in (what `Canonical::formats` counts).
pub const ROW_FORMATS: [&str; 5] = [
    "text",
    "prompt_completion",
    "openai_chat",
    "alpaca",
    "sharegpt",
];

/// Content in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub format: Format,
    pub records: Vec<Record>,
    /// The canonical JSON Lines bytes.
    pub bytes: Vec<u8>,
    /// keccak-256 of `bytes`: the `contentHash` on chain.
    pub hash: B256,
    /// How many records came in each row format (`ROW_FORMATS`; a document counts as `text`).
    pub formats: BTreeMap<&'static str, usize>,
}

fn normalise(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n").nfc().collect()
}

/// Validates `raw` as `format` and returns its canonical form.
pub fn canonicalise(raw: &[u8], format: Format, limit: usize) -> Result<Canonical, ContentError> {
    if raw.len() > limit {
        return Err(ContentError::TooLarge {
            size: raw.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(raw).map_err(|e| ContentError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.contains('\0') {
        return Err(ContentError::Nul);
    }
    let mut formats = BTreeMap::new();
    let records = match format {
        Format::Text | Format::Markdown => {
            formats.insert("text", 1);
            let body = normalise(text);
            let body = body.trim_end();
            if body.trim_start().is_empty() {
                return Err(ContentError::Empty);
            }
            vec![Record::Text {
                text: body.to_owned(),
            }]
        }
        Format::Jsonl => {
            let mut records = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let (r, f) = parse_record(line, i + 1)?;
                *formats.entry(f).or_default() += 1;
                records.push(r);
            }
            if records.is_empty() {
                return Err(ContentError::Empty);
            }
            records
        }
    };
    let mut bytes = Vec::with_capacity(raw.len() + 16);
    for r in &records {
        // serialising Strings into a Vec cannot fail
        serde_json::to_writer(&mut bytes, r).map_err(|e| ContentError::BadRecord {
            line: 0,
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
    }
    let hash = keccak256(&bytes);
    Ok(Canonical {
        format,
        records,
        bytes,
        hash,
        formats,
    })
}

/// What a row must look like, for error messages.
const SHAPES: &str = "expected {\"text\"}, {\"prompt\", \"completion\"}, OpenAI chat {\"messages\"}, Alpaca \
    {\"instruction\", \"input\", \"output\"} or ShareGPT {\"conversations\"}";

/// One row, in any of the row formats, as its canonical record and the format it came in.
fn parse_record(line: &str, line_no: usize) -> Result<(Record, &'static str), ContentError> {
    let bad = |reason: String| ContentError::BadRecord {
        line: line_no,
        reason,
    };
    let v: Value = serde_json::from_str(line)
        .map_err(|e| bad(format!("not a JSON record ({e}); {SHAPES}")))?;
    let Value::Object(o) = v else {
        return Err(bad(format!("not a JSON object; {SHAPES}")));
    };
    let has = |k: &str| o.contains_key(k);
    let only = |allowed: &[&str]| -> Result<(), ContentError> {
        match o.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(bad(format!("unexpected field \"{k}\" beside {allowed:?}"))),
            None => Ok(()),
        }
    };
    let string = |o: &Map<String, Value>, k: &str| -> Result<String, ContentError> {
        match o.get(k) {
            Some(Value::String(s)) => Ok(normalise(s)),
            _ => Err(bad(format!("\"{k}\" must be a string"))),
        }
    };
    let nonempty = |s: String, field: &str| {
        if s.trim().is_empty() {
            Err(bad(format!("\"{field}\" is empty")))
        } else {
            Ok(s)
        }
    };
    let (turns, shape) = if has("text") {
        only(&["text"])?;
        let text = nonempty(string(&o, "text")?, "text")?;
        return Ok((Record::Text { text }, "text"));
    } else if has("prompt") || has("completion") {
        only(&["prompt", "completion"])?;
        let turns = vec![
            ("user", nonempty(string(&o, "prompt")?, "prompt")?),
            (
                "assistant",
                nonempty(string(&o, "completion")?, "completion")?,
            ),
        ];
        (turns, "prompt_completion")
    } else if has("messages") {
        only(&["messages"])?;
        let Some(Value::Array(ms)) = o.get("messages") else {
            return Err(bad("\"messages\" must be a list".into()));
        };
        let mut turns = Vec::with_capacity(ms.len());
        for (i, m) in ms.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(bad(format!("messages[{i}] is not an object")));
            };
            if let Some(k) = m
                .keys()
                .find(|k| !["role", "content"].contains(&k.as_str()))
            {
                return Err(bad(format!(
                    "messages[{i}] has \"{k}\" (only role and content are kept)"
                )));
            }
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => "system",
                Some("user") => "user",
                Some("assistant") => "assistant",
                other => {
                    return Err(bad(format!(
                        "messages[{i}] has role {other:?} (system, developer, user or assistant)"
                    )));
                }
            };
            turns.push((role, string(m, "content")?));
        }
        (turns, "openai_chat")
    } else if has("instruction") || has("output") {
        only(&["instruction", "input", "output", "system", "history"])?;
        let mut turns = Vec::new();
        if has("system") {
            turns.push(("system", string(&o, "system")?));
        }
        match o.get("history") {
            None | Some(Value::Null) => {}
            Some(Value::Array(h)) => {
                for (i, pair) in h.iter().enumerate() {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(q), Value::String(a)]) => {
                            turns.push(("user", normalise(q)));
                            turns.push(("assistant", normalise(a)));
                        }
                        _ => {
                            return Err(bad(format!(
                                "history[{i}] is not a [prompt, answer] pair of strings"
                            )));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(bad(
                    "\"history\" must be a list of [prompt, answer] pairs".into()
                ));
            }
        }
        let mut prompt = nonempty(string(&o, "instruction")?, "instruction")?;
        if has("input") {
            let input = string(&o, "input")?;
            if !input.trim().is_empty() {
                prompt = format!("{prompt}\n{input}");
            }
        }
        turns.push(("user", prompt));
        turns.push(("assistant", nonempty(string(&o, "output")?, "output")?));
        (turns, "alpaca")
    } else if has("conversations") {
        only(&["conversations", "system"])?;
        let Some(Value::Array(cs)) = o.get("conversations") else {
            return Err(bad("\"conversations\" must be a list".into()));
        };
        let mut turns = Vec::with_capacity(cs.len() + 1);
        if has("system") {
            turns.push(("system", string(&o, "system")?));
        }
        for (i, c) in cs.iter().enumerate() {
            let Value::Object(c) = c else {
                return Err(bad(format!("conversations[{i}] is not an object")));
            };
            if let Some(k) = c.keys().find(|k| !["from", "value"].contains(&k.as_str())) {
                return Err(bad(format!(
                    "conversations[{i}] has \"{k}\" (only from and value are kept)"
                )));
            }
            let role = match c.get("from").and_then(Value::as_str) {
                Some("system") => "system",
                Some("human" | "user") => "user",
                Some("gpt" | "assistant") => "assistant",
                other => {
                    return Err(bad(format!(
                        "conversations[{i}] is from {other:?} (system, human or gpt)"
                    )));
                }
            };
            turns.push((role, string(c, "value")?));
        }
        (turns, "sharegpt")
    } else {
        return Err(bad(format!("not a record: {SHAPES}")));
    };
    Ok((conversation(turns).map_err(bad)?, shape))
}

/// A conversation's canonical record: one user and one assistant turn is a pair; anything else keeps its
/// turns. Every turn has text; a system prompt comes first only; the last turn is the assistant's (what
/// training learns).
fn conversation(turns: Vec<(&'static str, String)>) -> Result<Record, String> {
    for (i, (role, content)) in turns.iter().enumerate() {
        if content.trim().is_empty() {
            return Err(format!("turn {} ({role}) is empty", i + 1));
        }
        if *role == "system" && i > 0 {
            return Err(format!("turn {}: a system prompt comes first only", i + 1));
        }
    }
    match turns.last() {
        Some(("assistant", _)) => {}
        _ => return Err("the last turn must be the assistant's (it is what is learned)".into()),
    }
    if let [("user", p), ("assistant", c)] = turns.as_slice() {
        return Ok(Record::Pair {
            prompt: p.clone(),
            completion: c.clone(),
        });
    }
    Ok(Record::Chat {
        messages: turns
            .into_iter()
            .map(|(role, content)| Turn {
                role: role.to_string(),
                content,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn equivalent_inputs_hash_the_same() {
        let a = canonicalise(
            b"{\"prompt\":\"2+2?\",\"completion\":\"4\"}\n{\"text\":\"caf\xc3\xa9\"}\n",
            Format::Jsonl,
            LIMIT,
        )
        .unwrap();
        // other key order, whitespace, CRLF, a blank line, a BOM, decomposed e + combining acute
        let b = canonicalise(
            "\u{feff}{ \"completion\": \"4\", \"prompt\": \"2+2?\" }\r\n\r\n{\"text\": \"cafe\u{301}\"}"
                .as_bytes(),
            Format::Jsonl,
            LIMIT,
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(
            String::from_utf8(a.bytes.clone()).unwrap(),
            "{\"prompt\":\"2+2?\",\"completion\":\"4\"}\n{\"text\":\"café\"}\n"
        );
        assert_eq!(a.hash, keccak256(&a.bytes));
        assert_eq!(a.records.len(), 2);
        let c = canonicalise(b"{\"text\":\"cafe\"}\n", Format::Jsonl, LIMIT).unwrap();
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn documents_become_one_text_record() {
        let t = canonicalise(b"# Title\r\nbody\r\n\r\n", Format::Markdown, LIMIT).unwrap();
        assert_eq!(
            t.records,
            vec![Record::Text {
                text: "# Title\nbody".into()
            }]
        );
        assert_eq!(t.bytes, b"{\"text\":\"# Title\\nbody\"}\n");
    }

    #[test]
    fn bad_input_is_refused_with_its_place() {
        assert_eq!(
            canonicalise(b"ab\xffcd", Format::Text, LIMIT),
            Err(ContentError::NotUtf8 { offset: 2 })
        );
        assert_eq!(
            canonicalise(b"   \n", Format::Text, LIMIT),
            Err(ContentError::Empty)
        );
        assert_eq!(
            canonicalise(b"\n\n", Format::Jsonl, LIMIT),
            Err(ContentError::Empty)
        );
        assert!(matches!(
            canonicalise(&[b'a'; 11], Format::Text, 10),
            Err(ContentError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        for (input, line) in [
            (&b"{\"text\":\"a\"}\n{\"txt\":\"b\"}"[..], 2),
            (b"{\"text\":\"a\",\"prompt\":\"b\",\"completion\":\"c\"}", 1),
            (b"{\"prompt\":\"b\"}", 1),
            (b"{\"text\":\"a\"}\n\nnot json", 3),
            (b"[\"text\"]", 1),
            (b"{\"text\":7}", 1),
            (b"{\"text\":\"  \"}", 1),
        ] {
            match canonicalise(input, Format::Jsonl, LIMIT) {
                Err(ContentError::BadRecord { line: l, .. }) => assert_eq!(l, line),
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(input)),
            }
        }
        assert_eq!(
            canonicalise(b"a\0b", Format::Text, LIMIT),
            Err(ContentError::Nul)
        );
    }

    #[test]
    fn formats_from_names_and_media_types() {
        assert_eq!(Format::from_filename("x.JSONL"), Some(Format::Jsonl));
        assert_eq!(Format::from_filename("notes.md"), Some(Format::Markdown));
        assert_eq!(Format::from_filename("a.pdf"), None);
        assert_eq!(
            Format::from_media_type("text/plain; charset=utf-8"),
            Some(Format::Text)
        );
        assert_eq!(Format::from_media_type("application/json"), None);
    }

    #[test]
    fn the_same_conversation_in_every_row_format_is_one_hash() {
        let one = |row: &str| canonicalise(row.as_bytes(), Format::Jsonl, LIMIT).unwrap();
        // one user turn and one answer: a prompt/completion record whatever the format
        let pair = one(r#"{"prompt":"Add 2 and 2.\n2+2","completion":"4"}"#);
        for (row, format) in [
            (
                r#"{"messages":[{"role":"user","content":"Add 2 and 2.\n2+2"},{"role":"assistant","content":"4"}]}"#,
                "openai_chat",
            ),
            (
                r#"{"instruction":"Add 2 and 2.","input":"2+2","output":"4"}"#,
                "alpaca",
            ),
            (
                r#"{"conversations":[{"from":"human","value":"Add 2 and 2.\n2+2"},{"from":"gpt","value":"4"}]}"#,
                "sharegpt",
            ),
        ] {
            let c = one(row);
            assert_eq!(c.hash, pair.hash, "{row}");
            assert_eq!(c.formats, BTreeMap::from([(format, 1)]));
        }
        assert_eq!(pair.formats, BTreeMap::from([("prompt_completion", 1)]));
        // an empty Alpaca input adds nothing
        assert_eq!(
            one(r#"{"instruction":"Hi","input":"","output":"Hello"}"#).hash,
            one(r#"{"prompt":"Hi","completion":"Hello"}"#).hash
        );
        // a system prompt and several turns: a messages record, the same from each format
        let chat = one(
            r#"{"messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}"#,
        );
        assert_eq!(
            String::from_utf8(chat.bytes.clone()).unwrap(),
            "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello\"},{\"role\":\"user\",\"content\":\"2+2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]}\n"
        );
        for row in [
            r#"{"system":"Be brief.","instruction":"2+2?","output":"4","history":[["Hi","Hello"]]}"#,
            r#"{"system":"Be brief.","conversations":[{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello"},{"from":"human","value":"2+2?"},{"from":"gpt","value":"4"}]}"#,
            r#"{"conversations":[{"from":"system","value":"Be brief."},{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello"},{"from":"human","value":"2+2?"},{"from":"gpt","value":"4"}]}"#,
        ] {
            assert_eq!(one(row).hash, chat.hash, "{row}");
        }
        // formats counted per row in a mixed upload
        let mixed = canonicalise(
            b"{\"text\":\"a\"}\n{\"instruction\":\"b\",\"output\":\"c\"}\n{\"instruction\":\"d\",\"output\":\"e\"}\n",
            Format::Jsonl,
            LIMIT,
        )
        .unwrap();
        assert_eq!(mixed.formats, BTreeMap::from([("alpaca", 2), ("text", 1)]));
        assert!(mixed.formats.keys().all(|k| ROW_FORMATS.contains(k)));
    }

    #[test]
    fn conversations_that_teach_nothing_or_hide_fields_are_refused() {
        for (row, needle) in [
            (
                r#"{"messages":[{"role":"user","content":"Hi"}]}"#,
                "last turn",
            ),
            (
                r#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":" "}]}"#,
                "empty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"Hi"},{"role":"system","content":"x"},{"role":"assistant","content":"y"}]}"#,
                "system prompt comes first",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"Hi"},{"role":"assistant","content":"y"}]}"#,
                "role",
            ),
            (
                r#"{"messages":[{"role":"user","content":"Hi","weight":0},{"role":"assistant","content":"y"}]}"#,
                "weight",
            ),
            (r#"{"messages":"Hi"}"#, "list"),
            (r#"{"instruction":"Hi"}"#, "output"),
            (r#"{"instruction":"Hi","output":"x","extra":1}"#, "extra"),
            (
                r#"{"instruction":"Hi","output":"x","history":[["only one"]]}"#,
                "history[0]",
            ),
            (
                r#"{"conversations":[{"from":"human","value":"Hi"},{"from":"function_call","value":"x"}]}"#,
                "function_call",
            ),
            (
                r#"{"conversations":[{"from":"gpt","value":"Hi","weight":1}]}"#,
                "weight",
            ),
            (
                r#"{"prompt":"a","completion":"b","messages":[]}"#,
                "messages",
            ),
        ] {
            match canonicalise(row.as_bytes(), Format::Jsonl, LIMIT) {
                Err(ContentError::BadRecord { line: 1, reason }) => {
                    assert!(reason.contains(needle), "{row}: {reason}")
                }
                other => panic!("{row} gave {other:?}"),
            }
        }
    }
}
