//! Contribution content: validation and the canonical byte form whose keccak-256 goes on chain.
//!
//! Whatever the upload format, the canonical form is JSON Lines, one record per line, each record exactly
//! `{"text":...}` or `{"prompt":...,"completion":...}` (keys in that order, compact JSON, `\n` after every
//! line). Strings are Unicode NFC with `\r\n`/`\r` turned into `\n`, so the same text typed on two systems
//! hashes the same. A `.txt`/`.md` file becomes one `{"text":...}` record. Training reads this form as is.

use alloy::primitives::{B256, keccak256};
use serde::Deserialize;
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    text: Option<String>,
    prompt: Option<String>,
    completion: Option<String>,
}

/// Content in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub format: Format,
    pub records: Vec<Record>,
    /// The canonical JSON Lines bytes.
    pub bytes: Vec<u8>,
    /// keccak-256 of `bytes`: the `contentHash` on chain.
    pub hash: B256,
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
    let records = match format {
        Format::Text | Format::Markdown => {
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
                records.push(parse_record(line, i + 1)?);
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
    })
}

fn parse_record(line: &str, line_no: usize) -> Result<Record, ContentError> {
    let bad = |reason: String| ContentError::BadRecord {
        line: line_no,
        reason,
    };
    let raw: RawRecord = serde_json::from_str(line).map_err(|e| {
        bad(format!(
            "not a record object ({e}); expected {{\"text\": ...}} or {{\"prompt\": ..., \"completion\": ...}}"
        ))
    })?;
    let nonempty = |s: String, field: &str| {
        let s = normalise(&s);
        if s.trim().is_empty() {
            Err(bad(format!("\"{field}\" is empty")))
        } else {
            Ok(s)
        }
    };
    match raw {
        RawRecord {
            text: Some(t),
            prompt: None,
            completion: None,
        } => Ok(Record::Text {
            text: nonempty(t, "text")?,
        }),
        RawRecord {
            text: None,
            prompt: Some(p),
            completion: Some(c),
        } => Ok(Record::Pair {
            prompt: nonempty(p, "prompt")?,
            completion: nonempty(c, "completion")?,
        }),
        _ => Err(bad(
            "a record has either \"text\" alone or both \"prompt\" and \"completion\"".into(),
        )),
    }
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
}
