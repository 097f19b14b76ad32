//! Splits a multi-document YAML file into documents and indexes, per document, the
//! line of every field path (`spec.http[0].route[1].weight`), so errors found after
//! deserialisation still name the line they came from. The index is built only when a
//! problem needs a line: loading a valid configuration never pays for it.

use std::collections::HashMap;
use std::sync::OnceLock;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

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
    /// A document that is no file's: an object read from the Kubernetes API (its
    /// problems name the object and field, no line).
    pub fn detached() -> Self {
        Document {
            first_line: 0,
            text: String::new(),
            line_offset: 0,
            lines: OnceLock::new(),
        }
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

/// Splits `text` into documents; empty documents are dropped. A file past the
/// bounds of limits.rs (documents, nesting, alias expansion) is an error at the line
/// where it went past.
pub fn split(text: &str) -> Result<Vec<Document>, SyntaxError> {
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
            Document {
                first_line: d.first_line,
                text,
                line_offset: start,
                lines: OnceLock::new(),
            }
        })
        .collect())
}

#[derive(Default)]
struct RawDoc {
    first_line: usize,
    last_line: usize,
    has_content: bool,
    lines: HashMap<String, usize>,
}

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
        if !self.record_paths {
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
            Event::Scalar(value, ..) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    let record = self.record_paths;
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        if !record {
                            *key = Some(String::new());
                        } else {
                            let full = join(path, &value);
                            *key = Some(value);
                            if let Some(doc) = self.docs.last_mut() {
                                doc.lines.entry(full).or_insert(line);
                            }
                        }
                    }
                } else {
                    let path = self.next_child_path();
                    let doc = self.doc();
                    doc.has_content |= !value.is_empty() || path.is_some();
                    if doc.first_line == 0 {
                        doc.first_line = line;
                    }
                    if let Some(p) = path.filter(|p| !p.is_empty()) {
                        doc.lines.entry(p).or_insert(line);
                    }
                }
                self.doc().last_line = line;
            }
            Event::Alias(_) => {
                let _ = self.next_child_path();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.stack.len() >= limits::MAX_DEPTH {
                    return Err(limits::Exceeded::Depth);
                }
                let path = self.next_child_path().unwrap_or_default();
                let doc = self.doc();
                doc.has_content = true;
                if doc.first_line == 0 {
                    doc.first_line = line;
                }
                if !path.is_empty() {
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
        let docs = split(text).expect("valid yaml");
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
