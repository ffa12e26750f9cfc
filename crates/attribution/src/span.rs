//! Exact-span attribution: a suffix array over a model's training token stream, and the maximal spans of
//! an output that occur in it, each mapped to the training sources (contributions) it occurs in.
//!
//! The stream is the training examples joined with a separator token no output contains, so a match never
//! runs from one example into the next. Token ids are stored as u16 (SmolLM2's vocabulary is 49,152): ids
//! from `u16::MAX` up are refused at build time and in outputs.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use libsais::SuffixArrayConstruction;

/// Ends every example in the joined stream; never a token id.
const SEP: u16 = u16::MAX;

#[derive(Debug, thiserror::Error)]
pub enum SpanError {
    #[error("token id {0} does not fit the index's 16-bit token type (ids below {SEP})")]
    TokenTooLarge(u32),
    #[error("example {index} ({offset}+{len}) lies outside the {tokens}-token stream")]
    ExampleOutOfRange {
        index: usize,
        offset: usize,
        len: usize,
        tokens: usize,
    },
    #[error(
        "the training stream is too long for a 32-bit suffix array ({0} tokens with separators)"
    )]
    TooLong(usize),
    #[error("suffix array construction failed: {0}")]
    Build(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("segment {segment}: its source id {id} has no model source")]
    UnmappedSource { segment: usize, id: usize },
    #[error("{path}: not a span index ({reason})")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpanError + '_ {
    move |source| SpanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One training example: `len` tokens at `offset` of the token stream, from training source `source` (an
/// index into the manifest's `sources`: a contribution and its contributor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doc {
    pub offset: usize,
    pub len: usize,
    pub source: usize,
}

/// What counts as an attributable span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanParams {
    /// Shortest span, in tokens.
    pub min_len: usize,
    /// Spans occurring more often than this in the training data are too common to say whose they are.
    pub max_count: usize,
    /// Spans kept per output token (the rarest first, by unigram probability); at least one is kept.
    pub density: f64,
    /// Output tokens inside a run of at least this many tokens that also occurs in the prompt are the
    /// prompt's, not the training data's (`Span::prompt`); a span with fewer than `min_len` tokens of its
    /// own is the prompt's (`Span::from_prompt`): shown, never paid. `None`: nothing is the prompt's
    /// (method `ol-attr/1`).
    pub prompt_min_len: Option<usize>,
}

/// Shortest attributable span, tokens, by default.
pub const DEFAULT_SPAN_MIN_LEN: usize = 4;
/// Spans found more often than this in the training data are too common, by default (OLMoTrace's 10).
pub const DEFAULT_SPAN_MAX_COUNT: usize = 10;
/// Spans kept per output token, by default (OLMoTrace keeps the rarest ~5%).
pub const DEFAULT_SPAN_DENSITY: f64 = 0.05;
/// Shortest run of output tokens found in the prompt that counts as the prompt's, by default.
pub const DEFAULT_PROMPT_MIN_LEN: usize = 4;

impl Default for SpanParams {
    fn default() -> Self {
        SpanParams {
            min_len: DEFAULT_SPAN_MIN_LEN,
            max_count: DEFAULT_SPAN_MAX_COUNT,
            density: DEFAULT_SPAN_DENSITY,
            prompt_min_len: Some(DEFAULT_PROMPT_MIN_LEN),
        }
    }
}

/// Which output tokens the prompt supplied: those inside a run of at least `min_len` tokens (at least 1)
/// that also occurs in the prompt (every such run is a union of `min_len`-token windows found in the
/// prompt, so marking those windows marks exactly the runs).
pub fn prompt_echo(output: &[u32], prompt: &[u32], min_len: usize) -> Vec<bool> {
    let k = min_len.max(1);
    let mut echo = vec![false; output.len()];
    if output.len() < k || prompt.len() < k {
        return echo;
    }
    let windows: std::collections::HashSet<&[u32]> = prompt.windows(k).collect();
    for (i, w) in output.windows(k).enumerate() {
        if windows.contains(w) {
            for e in &mut echo[i..i + k] {
                *e = true;
            }
        }
    }
    echo
}

/// A maximal span of the output found in the training data.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// First output position and length, in tokens.
    pub start: usize,
    pub len: usize,
    /// Occurrences in the training stream.
    pub count: usize,
    /// Occurrences per training source, ascending by source.
    pub sources: Vec<(usize, usize)>,
    /// Sum of the span's tokens' log unigram probabilities in the training stream (lower: rarer).
    pub log_prob: f64,
    /// The span's tokens the prompt supplied (`SpanParams::prompt_min_len`), as runs `(start, len)` of
    /// output positions; empty when none.
    pub prompt: Vec<(usize, usize)>,
    /// Fewer than `SpanParams::min_len` of its tokens are its own: the prompt supplied it (an answer
    /// repeating its question), so it is shown but neither kept for its rarity nor paid. A span that adds
    /// `min_len` tokens of its own to words of the prompt is evidence as a whole, as in `ol-attr/1`.
    pub from_prompt: bool,
}

impl Span {
    /// How many of its tokens the prompt supplied.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.iter().map(|r| r.1).sum()
    }
}

/// The stream and its suffix array: built in memory, or memory-mapped from a saved index.
#[derive(Debug)]
enum Store {
    Owned {
        text: Vec<u16>,
        sa: Vec<i32>,
    },
    /// The suffix array packed: `width` little-endian bytes per entry (as few as the stream's length
    /// needs: 3 up to 16M tokens), so the file costs no more than the infini-gram layout.
    Mapped {
        map: memmap2::Mmap,
        text: std::ops::Range<usize>,
        sa: std::ops::Range<usize>,
        width: usize,
    },
}

/// The suffix array over one model's training stream.
#[derive(Debug)]
pub struct SpanIndex {
    store: Store,
    /// Start of each example in `text`, ascending, and its source.
    starts: Vec<usize>,
    sources: Vec<usize>,
    /// Occurrences of each token id.
    unigram: Vec<u64>,
    tokens: u64,
}

impl SpanIndex {
    /// Indexes `docs` of `tokens` (examples may come in any order; tokens outside every example are not
    /// indexed).
    pub fn build(tokens: &[u32], docs: &[Doc]) -> Result<Self, SpanError> {
        let total: usize = docs.iter().map(|d| d.len + 1).sum();
        if total > i32::MAX as usize {
            return Err(SpanError::TooLong(total));
        }
        let mut text = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(docs.len());
        let mut sources = Vec::with_capacity(docs.len());
        let mut unigram = vec![0u64; SEP as usize];
        for (index, d) in docs.iter().enumerate() {
            let ids = tokens.get(d.offset..d.offset.saturating_add(d.len)).ok_or(
                SpanError::ExampleOutOfRange {
                    index,
                    offset: d.offset,
                    len: d.len,
                    tokens: tokens.len(),
                },
            )?;
            starts.push(text.len());
            sources.push(d.source);
            for &t in ids {
                let t16 = to_u16(t)?;
                unigram[t16 as usize] += 1;
                text.push(t16);
            }
            text.push(SEP);
        }
        let sa = if text.is_empty() {
            Vec::new()
        } else {
            SuffixArrayConstruction::for_text(text.as_slice())
                .in_owned_buffer32()
                .single_threaded()
                .run()
                .map_err(|e| SpanError::Build(format!("{e:?}")))?
                .into_vec()
        };
        let tokens = text.len() as u64 - docs.len() as u64;
        Ok(SpanIndex {
            store: Store::Owned { text, sa },
            starts,
            sources,
            unigram,
            tokens,
        })
    }

    /// Examples, each followed by `SEP`.
    fn text(&self) -> &[u16] {
        match &self.store {
            Store::Owned { text, .. } => text,
            // checked aligned and in bounds by `open`
            Store::Mapped { map, text, .. } => bytemuck::cast_slice(&map[text.clone()]),
        }
    }

    /// Suffix-array row `i` (a position in `text`).
    #[inline]
    fn sa_at(&self, i: usize) -> usize {
        match &self.store {
            Store::Owned { sa, .. } => sa[i] as usize,
            Store::Mapped { map, sa, width, .. } => {
                let at = sa.start + i * width;
                let mut b = [0u8; 8];
                b[..*width].copy_from_slice(&map[at..at + width]);
                u64::from_le_bytes(b) as usize
            }
        }
    }

    /// Suffix-array rows (the stream's length).
    fn sa_len(&self) -> usize {
        self.text().len()
    }

    /// Writes the index to one file (little-endian): a header (stream length, examples, tokens, suffix
    /// array width), the stream, the packed suffix array, each example's source. `open` maps it back; the
    /// example starts (after each separator) and the unigram counts are recomputed from the stream.
    pub fn save(&self, path: &Path) -> Result<(), SpanError> {
        let f = std::fs::File::create(path).map_err(io(path))?;
        let mut w = std::io::BufWriter::new(f);
        let text = self.text();
        let n = text.len();
        let width = sa_width(n);
        let mut put = |b: &[u8]| w.write_all(b).map_err(io(path));
        put(MAGIC)?;
        for v in [
            n as u64,
            self.starts.len() as u64,
            self.tokens,
            width as u64,
        ] {
            put(&v.to_le_bytes())?;
        }
        put(bytemuck::cast_slice(text))?;
        put(&[0u8; 8][..pad8(2 * n)])?;
        let mut row = Vec::with_capacity(width * 4096);
        for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
            row.clear();
            for &i in chunk {
                row.extend_from_slice(&(self.sa_at(i) as u64).to_le_bytes()[..width]);
            }
            put(&row)?;
        }
        put(&[0u8; 8][..pad8(width * n)])?;
        for v in &self.sources {
            put(&(*v as u32).to_le_bytes())?;
        }
        let f = w.into_inner().map_err(|e| SpanError::Io {
            path: path.to_path_buf(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io(path))
    }

    /// Memory-maps an index written by `save`, checking its layout and every suffix array entry, so a
    /// damaged file is an error here rather than a wrong answer or a panic later.
    pub fn open(path: &Path) -> Result<Self, SpanError> {
        let corrupt = |reason: String| SpanError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if cfg!(target_endian = "big") {
            return Err(corrupt("span indexes are little-endian".into()));
        }
        let f = std::fs::File::open(path).map_err(io(path))?;
        let map = map_file(&f).map_err(io(path))?;
        if map.len() < 40 || &map[..8] != MAGIC {
            return Err(corrupt(
                "bad header (or an index from an older format: retrain)".into(),
            ));
        }
        let word = |i: usize| {
            u64::from_le_bytes(map[8 + 8 * i..16 + 8 * i].try_into().unwrap_or_default())
        };
        let (n, docs, tokens, width) = (
            word(0) as usize,
            word(1) as usize,
            word(2),
            word(3) as usize,
        );
        if n > i32::MAX as usize || width != sa_width(n) || docs > n || tokens != (n - docs) as u64
        {
            return Err(corrupt("inconsistent header".into()));
        }
        let text = 40..40 + 2 * n;
        let sa = text.end + pad8(2 * n)..text.end + pad8(2 * n) + width * n;
        let tables = sa.end + pad8(width * n);
        let want = tables + 4 * docs;
        if map.len() != want {
            return Err(corrupt(format!(
                "{} bytes, the header implies {want}",
                map.len()
            )));
        }
        let sources: Vec<usize> = map[tables..want]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()) as usize)
            .collect();
        let mut idx = SpanIndex {
            store: Store::Mapped {
                map,
                text,
                sa,
                width,
            },
            starts: Vec::with_capacity(docs),
            sources,
            unigram: vec![0u64; SEP as usize],
            tokens,
        };
        let mut starts = Vec::with_capacity(docs);
        let mut unigram = vec![0u64; SEP as usize];
        let mut at = 0;
        for (i, &t) in idx.text().iter().enumerate() {
            if t == SEP {
                starts.push(at);
                at = i + 1;
            } else {
                unigram[t as usize] += 1;
            }
        }
        if starts.len() != docs || at != n {
            return Err(corrupt(
                "the stream's example separators do not match the examples".into(),
            ));
        }
        if (0..n).any(|i| idx.sa_at(i) >= n) {
            return Err(corrupt("suffix array entry out of range".into()));
        }
        idx.starts = starts;
        idx.unigram = unigram;
        Ok(idx)
    }

    /// Training tokens indexed (separators excluded).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Occurrences of `pattern` within examples (empty: 0).
    pub fn count(&self, pattern: &[u32]) -> Result<usize, SpanError> {
        let p = pattern
            .iter()
            .map(|&t| to_u16(t))
            .collect::<Result<Vec<_>, _>>()?;
        if p.is_empty() {
            return Ok(0);
        }
        let (lo, hi) = self.range(&p);
        Ok(hi - lo)
    }

    /// Suffix-array rows whose suffixes start with `pat`.
    fn range(&self, pat: &[u16]) -> (usize, usize) {
        let text = self.text();
        let cmp = |row: usize| {
            let p = self.sa_at(row);
            let end = (p + pat.len()).min(text.len());
            text[p..end].cmp(pat)
        };
        // first row not below `pat`, then first row above it
        let (mut lo, mut hi) = (0, self.sa_len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if cmp(mid) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let first = lo;
        hi = self.sa_len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if cmp(mid) == Ordering::Greater {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        (first, lo)
    }

    /// The output's maximal spans that occur in the training data, filtered by `params`: at least
    /// `min_len` tokens, starting and ending on word boundaries (`breaks(a, b)`: a word breaks between
    /// tokens `a` and `b`; the output's ends always break; a span is shrunk inward to the nearest
    /// boundaries), at most `max_count` occurrences, then the rarest `density` per output token. Returned
    /// in output order.
    pub fn spans(
        &self,
        output: &[u32],
        params: &SpanParams,
        breaks: &dyn Fn(u32, u32) -> bool,
    ) -> Result<Vec<Span>, SpanError> {
        self.spans_for(output, &[], params, breaks)
    }

    /// `spans` of an output answering `prompt`: the tokens the prompt supplied are marked
    /// (`SpanParams::prompt_min_len`) and do not rank or weigh a span.
    pub fn spans_for(
        &self,
        output: &[u32],
        prompt: &[u32],
        params: &SpanParams,
        breaks: &dyn Fn(u32, u32) -> bool,
    ) -> Result<Vec<Span>, SpanError> {
        let parts = [Part {
            index: self,
            sources: None,
        }];
        let q = Query {
            output,
            prompt,
            params,
            breaks,
        };
        find_spans(&parts, &self.unigram, self.tokens, &q)
    }

    /// Examples indexed.
    pub fn examples(&self) -> usize {
        self.starts.len()
    }

    /// One past the highest source id the examples name (0 when empty).
    pub fn source_bound(&self) -> usize {
        self.sources.iter().map(|s| s + 1).max().unwrap_or(0)
    }
}

/// One index of a query, with its sources' ids in the answer (`None`: as stored).
struct Part<'a> {
    index: &'a SpanIndex,
    sources: Option<&'a [usize]>,
}

impl Part<'_> {
    fn source(&self, doc: usize) -> usize {
        let s = self.index.sources[doc];
        self.sources.map_or(s, |m| m[s])
    }
}

/// What a span query asks: the output, the prompt it answers, the parameters and the word breaks.
struct Query<'a> {
    output: &'a [u32],
    prompt: &'a [u32],
    params: &'a SpanParams,
    breaks: &'a dyn Fn(u32, u32) -> bool,
}

/// `SpanIndex::spans_for` over the union of `parts` (the same answer one index over all their examples
/// gives: a match never crosses an example, so it occurs in the union exactly when it occurs in a part).
fn find_spans(
    parts: &[Part<'_>],
    unigram: &[u64],
    tokens: u64,
    q: &Query<'_>,
) -> Result<Vec<Span>, SpanError> {
    let (output, params, breaks) = (q.output, q.params, q.breaks);
    let echo = match params.prompt_min_len {
        Some(k) => prompt_echo(output, q.prompt, k),
        None => vec![false; output.len()],
    };
    let out = output
        .iter()
        .map(|&t| to_u16(t))
        .collect::<Result<Vec<_>, _>>()?;
    let n = out.len();
    let occurs = |pat: &[u16]| {
        parts.iter().any(|p| {
            let (lo, hi) = p.index.range(pat);
            hi > lo
        })
    };
    // maximal matches: the longest match at each start, kept when it reaches past every earlier one
    // (the match at i + 1 is at least the one at i minus its first token)
    let mut maximal = Vec::new();
    let (mut len, mut reach) = (0usize, 0usize);
    for i in 0..n {
        len = len.saturating_sub(1);
        while i + len < n && occurs(&out[i..i + len + 1]) {
            len += 1;
        }
        if len > 0 && i + len > reach {
            maximal.push((i, len));
            reach = i + len;
        }
    }
    let boundary = |p: usize| p == 0 || p == n || breaks(output[p - 1], output[p]);
    let mut spans = Vec::new();
    for (s, l) in maximal {
        let (mut a, mut b) = (s, s + l);
        while a < b && !boundary(a) {
            a += 1;
        }
        while b > a && !boundary(b) {
            b -= 1;
        }
        if b - a < params.min_len.max(1) {
            continue;
        }
        let ranges: Vec<(usize, usize)> = parts.iter().map(|p| p.index.range(&out[a..b])).collect();
        let count: usize = ranges.iter().map(|(lo, hi)| hi - lo).sum();
        if count == 0 || count > params.max_count {
            continue;
        }
        let mut per: BTreeMap<usize, usize> = BTreeMap::new();
        for (part, &(lo, hi)) in parts.iter().zip(&ranges) {
            for row in lo..hi {
                let p = part.index.sa_at(row);
                let doc = part.index.starts.partition_point(|&st| st <= p) - 1;
                *per.entry(part.source(doc)).or_default() += 1;
            }
        }
        let log_p = |t: u16| (unigram[t as usize] as f64 / tokens as f64).ln();
        let log_prob = out[a..b].iter().map(|&t| log_p(t)).sum();
        let mut prompt: Vec<(usize, usize)> = Vec::new();
        for p in (a..b).filter(|&p| echo[p]) {
            match prompt.last_mut() {
                Some(r) if r.0 + r.1 == p => r.1 += 1,
                _ => prompt.push((p, 1)),
            }
        }
        spans.push(Span {
            start: a,
            len: b - a,
            count,
            sources: per.into_iter().collect(),
            log_prob,
            from_prompt: params.prompt_min_len.is_some()
                && (b - a) - prompt.iter().map(|r| r.1).sum::<usize>() < params.min_len.max(1),
            prompt,
        });
    }
    let keep = ((params.density * n as f64).ceil() as usize).max(1);
    if spans.len() > keep {
        // rarest first, what the prompt supplied last; ties to the earlier span, so the choice is
        // deterministic
        let rarity = |s: &Span| if s.from_prompt { 0.0 } else { s.log_prob };
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by(|&x, &y| {
            rarity(&spans[x])
                .total_cmp(&rarity(&spans[y]))
                .then(x.cmp(&y))
        });
        let mut kept: Vec<usize> = order[..keep].to_vec();
        kept.sort_unstable();
        spans = kept.into_iter().map(|i| spans[i].clone()).collect();
    }
    Ok(spans)
}

/// A model's training data indexed in segments (an index built when a Datanet version added data covers
/// only the new examples; the earlier ones stay in the segments already built), queried as one index over
/// all of them: counts and unigram statistics are summed, and each segment's own source ids are mapped to
/// the model's.
#[derive(Debug)]
pub struct SpanSet {
    parts: Vec<(SpanIndex, Vec<usize>)>,
    unigram: Vec<u64>,
    tokens: u64,
}

impl SpanSet {
    /// `parts`: each segment with the model source of each of its own source ids (`sources[i]` for id
    /// `i`); every id a segment's examples name must be mapped.
    pub fn new(parts: Vec<(SpanIndex, Vec<usize>)>) -> Result<Self, SpanError> {
        let mut unigram = vec![0u64; SEP as usize];
        let mut tokens = 0;
        for (segment, (idx, sources)) in parts.iter().enumerate() {
            if idx.source_bound() > sources.len() {
                return Err(SpanError::UnmappedSource {
                    segment,
                    id: idx.source_bound() - 1,
                });
            }
            for (u, c) in unigram.iter_mut().zip(&idx.unigram) {
                *u += c;
            }
            tokens += idx.tokens;
        }
        Ok(SpanSet {
            parts,
            unigram,
            tokens,
        })
    }

    /// Training tokens indexed, over all segments.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Examples indexed, over all segments.
    pub fn examples(&self) -> usize {
        self.parts.iter().map(|(i, _)| i.examples()).sum()
    }

    /// Occurrences of `pattern` within examples, over all segments.
    pub fn count(&self, pattern: &[u32]) -> Result<usize, SpanError> {
        self.parts.iter().map(|(i, _)| i.count(pattern)).sum()
    }

    /// `SpanIndex::spans` over every segment, with model source ids.
    pub fn spans(
        &self,
        output: &[u32],
        params: &SpanParams,
        breaks: &dyn Fn(u32, u32) -> bool,
    ) -> Result<Vec<Span>, SpanError> {
        self.spans_for(output, &[], params, breaks)
    }

    /// `SpanIndex::spans_for` over every segment, with model source ids.
    pub fn spans_for(
        &self,
        output: &[u32],
        prompt: &[u32],
        params: &SpanParams,
        breaks: &dyn Fn(u32, u32) -> bool,
    ) -> Result<Vec<Span>, SpanError> {
        let parts: Vec<Part<'_>> = self
            .parts
            .iter()
            .map(|(index, sources)| Part {
                index,
                sources: Some(sources),
            })
            .collect();
        let q = Query {
            output,
            prompt,
            params,
            breaks,
        };
        find_spans(&parts, &self.unigram, self.tokens, &q)
    }
}

const MAGIC: &[u8; 8] = b"OLSPAN\x00\x02";

/// Bytes per suffix array entry for a stream of `n` positions.
fn sa_width(n: usize) -> usize {
    let bits = usize::BITS - n.saturating_sub(1).leading_zeros();
    (bits as usize).div_ceil(8).max(1)
}

/// Zero bytes that bring `n` to a multiple of 8 (each section starts aligned for its element type).
fn pad8(n: usize) -> usize {
    (8 - n % 8) % 8
}

// The one `unsafe` here: mapping a file. Indexes are written once, into a new directory, and never
// modified in place, so the mapping cannot change underneath.
#[allow(unsafe_code)]
fn map_file(f: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: see above; the bytes are only read, through bounds-checked slices.
    unsafe { memmap2::Mmap::map(f) }
}

fn to_u16(t: u32) -> Result<u16, SpanError> {
    u16::try_from(t)
        .ok()
        .filter(|&t| t != SEP)
        .ok_or(SpanError::TokenTooLarge(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn naive_count(tokens: &[u32], docs: &[Doc], pat: &[u32]) -> usize {
        docs.iter()
            .map(|d| {
                let t = &tokens[d.offset..d.offset + d.len];
                t.windows(pat.len()).filter(|w| *w == pat).count()
            })
            .sum()
    }

    fn corpus(rng: &mut StdRng, docs: usize, alphabet: u32) -> (Vec<u32>, Vec<Doc>) {
        let mut tokens = Vec::new();
        let mut ds = Vec::new();
        for i in 0..docs {
            let len = rng.random_range(0..40);
            ds.push(Doc {
                offset: tokens.len(),
                len,
                source: i % 3,
            });
            tokens.extend((0..len).map(|_| rng.random_range(0..alphabet)));
        }
        (tokens, ds)
    }

    #[test]
    fn counts_equal_a_scan_of_every_example_and_never_cross_examples() {
        let mut rng = StdRng::seed_from_u64(1);
        let (tokens, docs) = corpus(&mut rng, 30, 4);
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        assert_eq!(idx.tokens(), tokens.len() as u64);
        for _ in 0..300 {
            let len = rng.random_range(1..6);
            let pat: Vec<u32> = (0..len).map(|_| rng.random_range(0..4)).collect();
            assert_eq!(
                idx.count(&pat).unwrap(),
                naive_count(&tokens, &docs, &pat),
                "{pat:?}"
            );
        }
        // the last tokens of one example followed by the first of the next occur in the stream but in
        // no example
        let (a, b) = (docs[0], docs[1]);
        if a.len > 0 && b.len > 0 {
            let cross = [tokens[a.offset + a.len - 1], tokens[b.offset]];
            assert_eq!(
                idx.count(&cross).unwrap(),
                naive_count(&tokens, &docs, &cross)
            );
        }
    }

    #[test]
    fn maximal_spans_occur_and_cannot_be_extended() {
        let mut rng = StdRng::seed_from_u64(2);
        let (tokens, docs) = corpus(&mut rng, 40, 3);
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        let params = SpanParams {
            min_len: 1,
            max_count: usize::MAX,
            density: 1.0,
            prompt_min_len: None,
        };
        for _ in 0..50 {
            let out: Vec<u32> = (0..30).map(|_| rng.random_range(0..3)).collect();
            let spans = idx.spans(&out, &params, &|_, _| true).unwrap();
            let occurs = |a: usize, b: usize| naive_count(&tokens, &docs, &out[a..b]) > 0;
            let mut covered = vec![false; out.len()];
            for s in &spans {
                let (a, b) = (s.start, s.start + s.len);
                assert_eq!(s.count, naive_count(&tokens, &docs, &out[a..b]));
                assert_eq!(s.count, s.sources.iter().map(|x| x.1).sum::<usize>());
                assert!(a == 0 || !occurs(a - 1, b), "{s:?} extends left");
                assert!(b == out.len() || !occurs(a, b + 1), "{s:?} extends right");
                covered[a..b].iter_mut().for_each(|c| *c = true);
            }
            // every output token found anywhere in the data is inside some span
            for (i, c) in covered.iter().enumerate() {
                assert_eq!(*c, occurs(i, i + 1), "position {i} of {out:?}");
            }
        }
    }

    #[test]
    fn a_planted_phrase_is_traced_to_its_source_and_common_ones_are_dropped() {
        let mut rng = StdRng::seed_from_u64(3);
        // background: tokens 10..60 at random; source 7 holds a phrase of rare tokens 100..108; the common
        // phrase 1 2 3 4 5 is in every example
        let mut tokens = Vec::new();
        let mut docs = Vec::new();
        for i in 0..50 {
            let offset = tokens.len();
            tokens.extend([1, 2, 3, 4, 5]);
            tokens.extend((0..30).map(|_| rng.random_range(10..60)));
            if i == 20 {
                tokens.extend(100..108);
            }
            docs.push(Doc {
                offset,
                len: tokens.len() - offset,
                source: if i == 20 { 7 } else { i % 5 },
            });
        }
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        let mut out = vec![9, 9];
        out.extend(1..=5);
        out.push(9);
        out.extend(100..108);
        out.extend([9, 9, 9]);
        let spans = idx
            .spans(&out, &SpanParams::default(), &|_, _| true)
            .unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!((spans[0].start, spans[0].len), (8, 8));
        assert_eq!(spans[0].sources, [(7, 1)]);
        // the common phrase is there, but 50 times
        assert_eq!(idx.count(&[1, 2, 3, 4, 5]).unwrap(), 50);
        // word boundaries: the 9 after the phrase continues 107's word, so the span ends before 107; 100
        // continuing a word moves the start past it
        let spans = idx
            .spans(&out, &SpanParams::default(), &|_, t| t != 9)
            .unwrap();
        assert_eq!((spans[0].start, spans[0].len), (8, 7));
        let spans = idx
            .spans(&out, &SpanParams::default(), &|_, t| t != 100 && t != 9)
            .unwrap();
        assert_eq!((spans[0].start, spans[0].len), (9, 6));
        // shorter than min_len after shrinking: nothing
        let strict = SpanParams {
            min_len: 7,
            ..SpanParams::default()
        };
        assert!(
            idx.spans(&out, &strict, &|_, t| t != 100 && t != 9)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn density_keeps_the_rarest_spans() {
        // two planted phrases: one of tokens seen once each, one of tokens seen often elsewhere
        let mut tokens: Vec<u32> = (200..206).collect();
        tokens.extend([50, 51, 52, 53, 54, 55]);
        for _ in 0..20 {
            tokens.extend([55, 54, 53, 52, 51, 50]);
        }
        let docs = [
            Doc {
                offset: 0,
                len: 6,
                source: 0,
            },
            Doc {
                offset: 6,
                len: tokens.len() - 6,
                source: 1,
            },
        ];
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        let mut out: Vec<u32> = vec![50, 51, 52, 53, 54, 55, 9];
        out.extend(200..206);
        let one = SpanParams {
            density: 0.01,
            ..SpanParams::default()
        };
        let spans = idx.spans(&out, &one, &|_, _| true).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            (spans[0].start, spans[0].sources.clone()),
            (7, vec![(0, 1)])
        );
        let all = SpanParams {
            density: 1.0,
            ..SpanParams::default()
        };
        assert_eq!(idx.spans(&out, &all, &|_, _| true).unwrap().len(), 2);

        // the prompt supplied the rare phrase: it is marked, weighs nothing, and the other span is kept
        let prompt: Vec<u32> = [7, 8].into_iter().chain(200..206).collect();
        let spans = idx.spans_for(&out, &prompt, &one, &|_, _| true).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].prompt.clone()), (0, vec![]));
        assert!(!spans[0].from_prompt);
        let spans = idx.spans_for(&out, &prompt, &all, &|_, _| true).unwrap();
        assert_eq!(spans[1].start, 7);
        assert_eq!(
            (spans[1].prompt.clone(), spans[1].prompt_tokens()),
            (vec![(7, 6)], 6)
        );
        assert!(spans[1].from_prompt && !spans[0].from_prompt);
        // a prompt holding only part of it (4 of 6 tokens): the 2 of its own are under min_len (4), so it
        // is still the prompt's; with min_len 2 it adds enough of its own to be evidence as a whole
        let part: Vec<u32> = (200..204).collect();
        let spans = idx.spans_for(&out, &part, &all, &|_, _| true).unwrap();
        assert_eq!(
            (spans[1].prompt.clone(), spans[1].from_prompt),
            (vec![(7, 4)], true)
        );
        let short = SpanParams {
            min_len: 2,
            ..all.clone()
        };
        let spans = idx.spans_for(&out, &part, &short, &|_, _| true).unwrap();
        assert_eq!(
            (spans[1].prompt.clone(), spans[1].from_prompt),
            (vec![(7, 4)], false)
        );
        // method ol-attr/1 marks nothing: the same spans as without a prompt
        let v1 = SpanParams {
            prompt_min_len: None,
            ..all.clone()
        };
        assert_eq!(
            idx.spans_for(&out, &prompt, &v1, &|_, _| true).unwrap(),
            idx.spans(&out, &v1, &|_, _| true).unwrap()
        );
    }

    #[test]
    fn the_prompt_supplies_runs_of_at_least_its_minimum_length() {
        let prompt = [1, 2, 3, 4, 5, 9, 7, 8];
        // 1 2 3 4 (4 tokens) and 3 4 5 (3) are in the prompt; 7 8 only as a pair
        let out = [0, 1, 2, 3, 4, 6, 3, 4, 5, 6, 7, 8];
        let marks = |k| {
            prompt_echo(&out, &prompt, k)
                .iter()
                .enumerate()
                .filter(|e| *e.1)
                .map(|e| e.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(marks(4), [1, 2, 3, 4]);
        assert_eq!(marks(3), [1, 2, 3, 4, 6, 7, 8]);
        assert_eq!(marks(2), [1, 2, 3, 4, 6, 7, 8, 10, 11]);
        assert!(marks(9).is_empty());
        assert!(prompt_echo(&out, &[], 1).iter().all(|e| !e));
    }

    #[test]
    fn a_saved_index_maps_back_and_answers_the_same() {
        let mut rng = StdRng::seed_from_u64(4);
        let (tokens, docs) = corpus(&mut rng, 25, 5);
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        let dir = std::env::temp_dir().join(format!("span-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("index.span");
        idx.save(&path).unwrap();
        let back = SpanIndex::open(&path).unwrap();
        assert!(matches!(back.store, Store::Mapped { .. }));
        assert_eq!(back.tokens(), idx.tokens());
        let params = SpanParams {
            min_len: 2,
            ..SpanParams::default()
        };
        for _ in 0..20 {
            let out: Vec<u32> = (0..20).map(|_| rng.random_range(0..5)).collect();
            assert_eq!(
                back.spans(&out, &params, &|_, _| true).unwrap(),
                idx.spans(&out, &params, &|_, _| true).unwrap()
            );
        }
        // a flipped suffix array entry, a truncated file, another file: refused
        let mut bytes = std::fs::read(&path).unwrap();
        let sa_at = 40 + 2 * back.text().len() + pad8(2 * back.text().len());
        let Store::Mapped { width, .. } = back.store else {
            unreachable!()
        };
        bytes[sa_at + width - 1] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            SpanIndex::open(&path),
            Err(SpanError::Corrupt { .. })
        ));
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            SpanIndex::open(&path),
            Err(SpanError::Corrupt { .. })
        ));
        std::fs::write(&path, b"{}").unwrap();
        assert!(matches!(
            SpanIndex::open(&path),
            Err(SpanError::Corrupt { .. })
        ));
        assert!(matches!(
            SpanIndex::open(&dir.join("missing")),
            Err(SpanError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_answer_as_one_index_over_all_their_examples() {
        let mut rng = StdRng::seed_from_u64(5);
        let (tokens, docs) = corpus(&mut rng, 60, 4);
        let whole = SpanIndex::build(&tokens, &docs).unwrap();
        // three segments, each with its own dense source ids mapped back to the corpus's
        let mut parts = Vec::new();
        for seg in 0..3 {
            let mine: Vec<Doc> = docs
                .iter()
                .copied()
                .filter(|d| (d.offset + d.len) % 3 == seg)
                .collect();
            let mut map: Vec<usize> = mine.iter().map(|d| d.source).collect();
            map.sort_unstable();
            map.dedup();
            let local: Vec<Doc> = mine
                .iter()
                .map(|d| Doc {
                    source: map.binary_search(&d.source).unwrap(),
                    ..*d
                })
                .collect();
            parts.push((SpanIndex::build(&tokens, &local).unwrap(), map));
        }
        let set = SpanSet::new(parts).unwrap();
        assert_eq!(set.tokens(), whole.tokens());
        assert_eq!(set.examples(), docs.len());
        let params = SpanParams {
            min_len: 2,
            max_count: 50,
            density: 1.0,
            prompt_min_len: None,
        };
        for _ in 0..50 {
            let out: Vec<u32> = (0..25).map(|_| rng.random_range(0..4)).collect();
            assert_eq!(
                set.spans(&out, &params, &|a, b| a != b).unwrap(),
                whole.spans(&out, &params, &|a, b| a != b).unwrap()
            );
            assert_eq!(
                set.count(&out[..3]).unwrap(),
                whole.count(&out[..3]).unwrap()
            );
        }
        // a segment naming a source its map lacks
        let idx = SpanIndex::build(&tokens, &docs).unwrap();
        assert!(matches!(
            SpanSet::new(vec![(idx, vec![0, 1])]),
            Err(SpanError::UnmappedSource { segment: 0, id: 2 })
        ));
    }

    #[test]
    fn bad_input_is_refused() {
        let docs = [Doc {
            offset: 0,
            len: 3,
            source: 0,
        }];
        assert!(matches!(
            SpanIndex::build(&[1, 2, 70_000], &docs),
            Err(SpanError::TokenTooLarge(70_000))
        ));
        assert!(matches!(
            SpanIndex::build(&[1, 2], &docs),
            Err(SpanError::ExampleOutOfRange { index: 0, .. })
        ));
        let idx = SpanIndex::build(&[1, 2, 3], &docs).unwrap();
        assert!(matches!(
            idx.spans(&[1, 65_535], &SpanParams::default(), &|_, _| true),
            Err(SpanError::TokenTooLarge(65_535))
        ));
        assert!(
            idx.spans(&[], &SpanParams::default(), &|_, _| true)
                .unwrap()
                .is_empty()
        );
        let empty = SpanIndex::build(&[], &[]).unwrap();
        assert_eq!(empty.count(&[1]).unwrap(), 0);
        assert!(
            empty
                .spans(&[1, 2], &SpanParams::default(), &|_, _| true)
                .unwrap()
                .is_empty()
        );
    }
}
