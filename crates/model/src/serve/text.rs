//! Tokens to text as they come: incremental detokenization that never splits a UTF-8 character, and stop
//! sequences that are never streamed, even in part.

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

/// One sequence's output text.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    /// All text decoded so far.
    text: String,
    /// How much of `text` has been handed out.
    emitted: usize,
    stops: Vec<String>,
    /// Set once a stop sequence matched: `text` ends before it.
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Adds a token; returns the text that may be shown now (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        // decode a window starting a few tokens back: byte-level BPE pieces only make sense in context
        let prev = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() > prev.len() && !now.ends_with('\u{fffd}') && now.starts_with(&prev) {
            self.text.push_str(&now[prev.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        } else if !now.starts_with(&prev) {
            // the window re-segmented: fall back to decoding everything
            let all = tok.decode(&self.ids, true)?;
            if !all.ends_with('\u{fffd}') && all.len() >= self.text.len() {
                self.text = all;
                self.prefix = self.ids.len();
                self.read = self.ids.len();
            }
        }
        Ok(self.release())
    }

    fn release(&mut self) -> String {
        if let Some((at, _)) = self.find_stop() {
            self.text.truncate(at);
            self.stopped = true;
            return self.take(at);
        }
        // hold back a tail that could be the start of a stop sequence
        let mut safe = self.text.len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        self.take(safe.max(self.emitted))
    }

    fn find_stop(&self) -> Option<(usize, usize)> {
        let longest = self.stops.iter().map(|s| s.len()).max()?;
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.text[from..].find(s.as_str()).map(|p| (from + p, i)))
            .min()
    }

    fn take(&mut self, upto: usize) -> String {
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }

    /// Whether a stop sequence ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whatever was held back, at the end of the sequence.
    pub fn flush(&mut self) -> String {
        let end = self.text.len();
        self.take(end)
    }

    /// The whole text (after `flush`: everything that was streamed).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], text: &str) -> (Vec<String>, String, bool) {
        let tok = TextTokenizer::byte_level().unwrap();
        let ids = tok.encode(text).unwrap();
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut parts = Vec::new();
        for id in ids {
            parts.push(s.push(&tok, id).unwrap());
            if s.stopped() {
                break;
            }
        }
        parts.push(s.flush());
        (parts, s.text().to_string(), s.stopped())
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let (parts, text, _) = run(&[], "é→ok");
        assert_eq!(text, "é→ok");
        assert!(parts.iter().all(|p| !p.contains('\u{fffd}')));
        assert_eq!(parts.concat(), "é→ok");
    }

    #[test]
    fn a_stop_sequence_ends_the_text_and_is_never_streamed() {
        let (parts, text, stopped) = run(&["END"], "abc ENx END tail");
        assert!(stopped);
        assert_eq!(text, "abc ENx ");
        assert_eq!(parts.concat(), "abc ENx ");
        // a partial match is held back, then released when it turns out not to be the stop
        let (parts, text, stopped) = run(&["END"], "abEN");
        assert!(!stopped);
        assert_eq!(text, "abEN");
        assert_eq!(parts.last().map(String::as_str), Some("EN"));
    }
}
