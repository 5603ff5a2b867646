//! Where in the file a key is, for error messages: its line, and its dotted name.
//!
//! Two directions, each answered by a TOML parser rather than by scanning text:
//! - [`KeyLines`]: key -> line, for rules checked after deserialization (the document parsed,
//!   so `toml_edit` keeps every span);
//! - [`key_at`]: byte offset -> key, for syntax errors, where no document exists: `toml_parser`
//!   recovers from errors and reports its events with spans.

use toml_edit::{ImDocument, Item};
use toml_parser::parser::{EventReceiver, parse_document};
use toml_parser::{ErrorSink, Raw, Source, Span, decoder::Encoding};

use super::Problem;

/// 1-based line of byte `offset`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The lines of the keys a (valid) file sets.
pub(super) struct KeyLines<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> KeyLines<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        // Only called on text that deserialized; without a document, messages lack the line.
        let doc = ImDocument::parse(text).ok();
        KeyLines { text, doc }
    }

    fn item(&self, key: &str) -> Option<&Item> {
        let mut item = self.doc.as_ref()?.as_item();
        for part in key.split('.') {
            item = item.get(part)?;
        }
        Some(item)
    }

    fn line(&self, item: Option<&Item>) -> Option<usize> {
        Some(line_of(self.text, item?.span()?.start))
    }

    /// Whether the file sets `key` (dotted).
    pub(super) fn is_set(&self, key: &str) -> bool {
        self.item(key).is_some()
    }

    /// A problem at the line of `key`, or without a line when the file does not set it.
    pub(super) fn problem(&self, key: &str, message: String) -> Problem {
        Problem {
            line: self.line(self.item(key)),
            key: Some(key.to_owned()),
            message,
        }
    }

    /// Line of the path of the `i`-th `[[watch]]` block.
    pub(super) fn watch_path(&self, i: usize) -> Option<usize> {
        self.watch_key(i, "path")
    }

    /// Line of `key` in the `i`-th `[[watch]]` block.
    pub(super) fn watch_key(&self, i: usize, key: &str) -> Option<usize> {
        self.line(self.item("watch")?.get(i)?.get(key))
    }
}

/// The dotted key at byte `offset` of `text`: the key of the assignment whose key or value
/// covers it, within its table and inline tables; on a table header, the header.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    // An error at the end of the text ("expected `}`") is about the last thing in it.
    let last = text.trim_end().len();
    let offset = if offset >= last {
        last.saturating_sub(1)
    } else {
        offset
    };
    let source = Source::new(text);
    let tokens = source.lex().into_vec();
    let mut finder = KeyFinder {
        text,
        offset,
        table: Vec::new(),
        key: Vec::new(),
        nest: Vec::new(),
        in_key: false,
        in_header: false,
        header_hit: false,
        found: None,
    };
    parse_document(&tokens, &mut finder, &mut ());
    let key = finder.found.unwrap_or(finder.key);
    (!key.is_empty()).then(|| key.join("."))
}

/// Follows the parser's events, remembering the key in effect when `offset` is reached.
struct KeyFinder<'s> {
    text: &'s str,
    offset: usize,
    /// The current `[table]` or `[[array]]` header.
    table: Vec<String>,
    /// The key being read, or the one whose value is being read.
    key: Vec<String>,
    /// Open arrays (None) and inline tables (their key) inside a value.
    nest: Vec<Option<Vec<String>>>,
    in_key: bool,
    in_header: bool,
    /// `offset` was reached inside the current header.
    header_hit: bool,
    found: Option<Vec<String>>,
}

impl KeyFinder<'_> {
    /// Called before an event takes effect. In a header, the answer is the whole header, known
    /// at its end.
    fn reach(&mut self, span: Span) {
        if self.found.is_none() && span.end() > self.offset {
            if self.in_header {
                self.header_hit = true;
            } else {
                self.found = Some(self.key.clone());
            }
        }
    }

    fn header_open(&mut self, span: Span) {
        self.key.clear();
        self.in_key = true;
        self.in_header = true;
        self.reach(span);
    }

    fn header_close(&mut self, span: Span) {
        self.end_header();
        self.table = self.key.clone();
        self.reach(span);
    }

    fn end_header(&mut self) {
        if self.in_header {
            self.in_header = false;
            self.in_key = false;
            if self.header_hit && self.found.is_none() {
                self.found = Some(self.key.clone());
            }
        }
    }
}

impl EventReceiver for KeyFinder<'_> {
    fn std_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.header_open(span);
    }
    fn std_table_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.header_close(span);
    }
    fn array_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.header_open(span);
    }
    fn array_table_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.header_close(span);
    }
    fn inline_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.reach(span);
        self.nest.push(Some(self.key.clone()));
        self.in_key = false;
        true
    }
    fn inline_table_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.reach(span);
        if let Some(Some(key)) = self.nest.pop() {
            self.key = key;
        }
    }
    fn array_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.reach(span);
        self.nest.push(None);
        true
    }
    fn array_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.reach(span);
        self.nest.pop();
    }
    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _: &mut dyn ErrorSink) {
        if !self.in_key {
            // A new assignment: relative to the innermost inline table, else the header.
            self.key = match self.nest.iter().rev().find_map(Option::as_ref) {
                Some(base) => base.clone(),
                None => self.table.clone(),
            };
            self.in_key = true;
        }
        let raw = self.text.get(span.start()..span.end()).unwrap_or("");
        let mut part = String::new();
        Raw::new_unchecked(raw, encoding, span).decode_key(&mut part, &mut ());
        if encoding.is_none() {
            // After an error the parser may hand over a bare key with the bad text in it
            // ("listen:"); the key is what precedes it.
            let valid = part
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(part.len());
            part.truncate(valid);
        }
        if !part.is_empty() {
            self.key.push(part);
        }
        self.reach(span);
    }
    fn key_val_sep(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.reach(span);
        self.in_key = false;
    }
    fn value_sep(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.reach(span);
        self.in_key = false;
    }
    fn scalar(&mut self, span: Span, _: Option<Encoding>, _: &mut dyn ErrorSink) {
        self.reach(span);
    }
    fn newline(&mut self, span: Span, _: &mut dyn ErrorSink) {
        // A header left open by an error ends with its line.
        self.end_header();
        self.reach(span);
        if self.nest.is_empty() {
            self.in_key = false;
        }
    }
    fn error(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.reach(span);
    }
}
