//! Splits a multi-document YAML file into documents and indexes, per document, the
//! line of every field path (`spec.http[0].route[1].weight`), so errors found after
//! deserialisation still name the line they came from. The index is built only when a
//! problem needs a line: loading a valid configuration never pays for it.
//!
//! The split is also where a document's head (`kind`, `apiVersion`, `metadata.name`,
//! `metadata.namespace`) is read, so each document is deserialised once, straight into
//! its type; and a large file is split at its document markers into chunks that are
//! parsed on every core ([`chunks`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::limits;

/// One YAML document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based line of the document's first node.
    pub first_line: usize,
    /// The document's text (the lines it spans, ready for serde_yaml).
    pub text: String,
    /// Lines of the file before `text`: add to a line serde_yaml reports.
    pub line_offset: usize,
    /// Field path → 1-based line in the file, built on first use.
    lines: OnceLock<HashMap<String, usize>>,
}

impl Document {
    /// A document whose first node is on `first_line` (1-based) of its file, and whose
    /// text starts after `line_offset` lines of it.
    pub fn new(first_line: usize, text: String, line_offset: usize) -> Self {
        Document {
            first_line,
            text,
            line_offset,
            lines: OnceLock::new(),
        }
    }

    /// A document that is no file's: an object read from the Kubernetes API (its
    /// problems name the object and field, no line).
    pub fn detached() -> Self {
        Document::new(0, String::new(), 0)
    }

    fn lines(&self) -> &HashMap<String, usize> {
        self.lines.get_or_init(|| {
            let mut rx = Receiver {
                record_paths: true,
                ..Receiver::default()
            };
            if feed(&self.text, &mut rx).is_err() {
                return HashMap::new();
            }
            let mut lines = rx
                .docs
                .into_iter()
                .next()
                .map(|d| d.lines)
                .unwrap_or_default();
            for l in lines.values_mut() {
                *l += self.line_offset;
            }
            lines
        })
    }

    /// Line of `path`, or of its nearest ancestor that has one, or the document's.
    pub fn line_of(&self, path: &str) -> usize {
        let lines = self.lines();
        let mut p = path;
        loop {
            if let Some(l) = lines.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.first_line,
            }
        }
    }
}

/// What tells a document's type and name: the scalars at `kind`, `apiVersion`,
/// `metadata.name` and `metadata.namespace` (a plain null or a non-scalar there is
/// absent), and whether the document is a mapping at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    pub kind: Option<String>,
    pub api_version: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub mapping: bool,
}

impl Head {
    fn slot(&mut self, path: &str) -> Option<&mut Option<String>> {
        match path {
            "kind" => Some(&mut self.kind),
            "apiVersion" => Some(&mut self.api_version),
            "metadata.name" => Some(&mut self.name),
            "metadata.namespace" => Some(&mut self.namespace),
            _ => None,
        }
    }
}

/// A YAML syntax error with its 1-based line.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses `text` event by event into `rx`, stopping at the first error or bound
/// exceeded. yaml_rust2's own `load` recurses once per nesting level (a file of
/// 100,000 `[` would overflow the stack); its event source does not.
fn feed(text: &str, rx: &mut Receiver) -> Result<(), SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        if ev == Event::StreamEnd {
            return Ok(());
        }
        rx.on_event(ev, mark).map_err(|e| SyntaxError {
            line: mark.line(),
            message: e.to_string(),
        })?;
    }
}

/// Splits `text` into documents with their heads; empty documents are dropped. A file
/// past the bounds of limits.rs (documents, nesting, alias expansion) is an error at
/// the line where it went past.
pub fn split(text: &str) -> Result<Vec<(Document, Head)>, SyntaxError> {
    let mut rx = Receiver::default();
    feed(text, &mut rx)?;
    let all_lines: Vec<&str> = text.split_inclusive('\n').collect();
    Ok(rx
        .docs
        .into_iter()
        .filter(|d| d.has_content)
        .map(|d| {
            let start = d.first_line.saturating_sub(1).min(all_lines.len());
            let end = d.last_line.min(all_lines.len()).max(start);
            let mut text = String::new();
            for (i, line) in all_lines[start..end].iter().enumerate() {
                // Document markers of the neighbours stay out (as blank lines).
                let marker = line.starts_with("---") || line.starts_with("...");
                text.push_str(if marker && i > 0 || marker && line.trim_end().len() == 3 {
                    "\n"
                } else {
                    line
                });
            }
            (Document::new(d.first_line, text, start), d.head)
        })
        .collect())
}

/// Cuts `text` into at most `n` runs of whole documents of about equal size, each
/// with the number of lines before it. A cut is made only before a line that starts
/// with `---` followed by a space or the line's end: YAML forbids such a line inside
/// any scalar, so it always starts a document and each run is a stream of its own.
/// Directives (`%YAML`, `%TAG`) belong to the document after them; a text that has
/// any is not cut.
pub fn chunks(text: &str, n: usize) -> Vec<(&str, usize)> {
    let has_directives =
        text.starts_with('%') || memchr::memmem::find(text.as_bytes(), b"\n%").is_some();
    if n <= 1 || has_directives {
        return vec![(text, 0)];
    }
    let target = text.len() / n + 1;
    let mut out = Vec::with_capacity(n);
    let (mut start, mut start_line) = (0, 0);
    let mut pos = 0;
    for (lines_before, line) in text.split_inclusive('\n').enumerate() {
        let at = pos;
        pos += line.len();
        let marker = line == "---"
            || (line.starts_with("---") && line[3..].starts_with([' ', '\t', '\n', '\r']));
        if marker && at - start >= target && out.len() + 1 < n {
            out.push((&text[start..at], start_line));
            (start, start_line) = (at, lines_before);
        }
    }
    out.push((&text[start..], start_line));
    out
}

#[derive(Default)]
struct RawDoc {
    first_line: usize,
    last_line: usize,
    has_content: bool,
    lines: HashMap<String, usize>,
    head: Head,
    /// Whether the root node was seen (the first node says if it is a mapping).
    rooted: bool,
}

/// Frames this deep or shallower keep their paths even when no line is asked for:
/// the head lives there (`metadata.name`).
const HEAD_DEPTH: usize = 2;

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    docs: Vec<RawDoc>,
    stack: Vec<Frame>,
    /// Index field paths (only when a line is asked for).
    record_paths: bool,
    /// What the document's aliases would expand to.
    aliases: limits::Aliases,
}

impl Receiver {
    /// Path of the node that starts now, and advances the parent frame.
    fn next_child_path(&mut self) -> Option<String> {
        if !self.record_paths && self.stack.len() > HEAD_DEPTH {
            return match self.stack.last_mut()? {
                Frame::Map { key, .. } => key.take().map(|_| String::new()),
                Frame::Seq { index, .. } => {
                    *index += 1;
                    Some(String::new())
                }
            };
        }
        match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let k = key.take()?;
                Some(join(path, &k))
            }
            Frame::Seq { path, index } => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }

    fn doc(&mut self) -> &mut RawDoc {
        if self.docs.is_empty() {
            self.docs.push(RawDoc::default());
        }
        self.docs.last_mut().expect("one document")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), limits::Exceeded> {
        let line = mark.line();
        self.aliases.on_event(&ev, mark.index())?;
        match ev {
            Event::DocumentStart => {
                if self.docs.len() >= limits::MAX_DOCUMENTS {
                    return Err(limits::Exceeded::Documents);
                }
                self.docs.push(RawDoc {
                    last_line: line,
                    ..RawDoc::default()
                });
                self.stack.clear();
            }
            Event::DocumentEnd => {
                self.doc().last_line = line.max(1);
            }
            Event::StreamEnd | Event::StreamStart | Event::Nothing => {}
            Event::Scalar(value, style, ..) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    let record = self.record_paths;
                    let shallow = self.stack.len() <= HEAD_DEPTH;
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        if !record && !shallow {
                            *key = Some(String::new());
                        } else {
                            let full = join(path, &value);
                            *key = Some(value);
                            if record && let Some(doc) = self.docs.last_mut() {
                                doc.lines.entry(full).or_insert(line);
                            }
                        }
                    }
                } else {
                    let root = self.stack.is_empty();
                    let path = self.next_child_path();
                    let record = self.record_paths;
                    let doc = self.doc();
                    doc.has_content |= !value.is_empty() || path.is_some();
                    if doc.first_line == 0 {
                        doc.first_line = line;
                    }
                    doc.rooted |= root;
                    if let Some(p) = path.filter(|p| !p.is_empty()) {
                        let null = style == TScalarStyle::Plain
                            && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                        if let Some(slot) = doc.head.slot(&p)
                            && slot.is_none()
                            && !null
                        {
                            *slot = Some(value);
                        }
                        if record {
                            doc.lines.entry(p).or_insert(line);
                        }
                    }
                }
                self.doc().last_line = line;
            }
            Event::Alias(_) => {
                let root = self.stack.is_empty();
                let _ = self.next_child_path();
                self.doc().rooted |= root;
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.stack.len() >= limits::MAX_DEPTH {
                    return Err(limits::Exceeded::Depth);
                }
                let root = self.stack.is_empty();
                let path = self.next_child_path().unwrap_or_default();
                let record = self.record_paths;
                let doc = self.doc();
                doc.has_content = true;
                if doc.first_line == 0 {
                    doc.first_line = line;
                }
                if root && !doc.rooted {
                    doc.rooted = true;
                    doc.head.mapping = matches!(ev, Event::MappingStart(..));
                }
                if record && !path.is_empty() {
                    doc.lines.entry(path.clone()).or_insert(line);
                }
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.doc().last_line = line;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_paths_per_document() {
        let text =
            "a: 1\nb:\n  c: [x, y]\n---\nkind: K\nspec:\n  http:\n  - route:\n    - weight: 5\n";
        let docs: Vec<Document> = split(text)
            .expect("valid yaml")
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line_of("b.c"), 3);
        assert_eq!(docs[1].line_of("kind"), 5);
        assert_eq!(docs[1].line_of("spec.http[0].route[0].weight"), 9);
        // Unknown paths fall back to the nearest known ancestor.
        assert_eq!(docs[1].line_of("spec.http[0].route[0].destination.host"), 9);
        // Each document's text starts at its first line; the offset maps lines back.
        assert_eq!(docs[1].text.lines().next(), Some("kind: K"));
        assert_eq!(docs[1].line_offset, 4);
    }

    #[test]
    fn reports_syntax_errors_with_line() {
        let err = split("a: 1\nb: [1, 2\nc: 3\n").expect_err("unclosed flow sequence");
        assert!(err.line >= 2, "line {}", err.line);
    }

    #[test]
    fn drops_empty_documents() {
        let docs = split("---\n---\na: 1\n").expect("valid yaml");
        assert_eq!(docs.len(), 1);
    }
}
