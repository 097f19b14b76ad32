//! Splits a multi-document YAML file into documents and indexes, per document, the
//! line of every field path (`spec.http[0].route[1].weight`), so errors found after
//! deserialisation still name the line they came from.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One YAML document of a file.
#[derive(Debug)]
pub struct Document {
    /// 1-based line of the document's first node.
    pub first_line: usize,
    /// The document's text (the lines it spans, ready for serde_yaml).
    pub text: String,
    /// Field path → 1-based line.
    pub lines: HashMap<String, usize>,
}

impl Document {
    /// Line of `path`, or of its nearest ancestor that has one, or the document's.
    pub fn line_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
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

/// Splits `text` into documents; empty documents are dropped.
pub fn split(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut rx = Receiver::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut rx, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    let all_lines: Vec<&str> = text.split_inclusive('\n').collect();
    Ok(rx
        .docs
        .into_iter()
        .filter(|d| d.has_content)
        .map(|d| {
            let start = d.first_line.saturating_sub(1).min(all_lines.len());
            let end = d.last_line.min(all_lines.len()).max(start);
            // Blank lines keep serde_yaml's line numbers equal to the file's.
            let mut text = "\n".repeat(start);
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
                lines: d.lines,
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
}

impl Receiver {
    /// Path of the node that starts now, and advances the parent frame.
    fn next_child_path(&mut self) -> Option<String> {
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

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => {
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
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let full = join(path, &value);
                        *key = Some(value);
                        let doc = self.docs.last_mut();
                        if let Some(doc) = doc {
                            doc.lines.entry(full).or_insert(line);
                        }
                    }
                } else {
                    let path = self.next_child_path();
                    let doc = self.doc();
                    doc.has_content |= !value.is_empty() || path.is_some();
                    if doc.first_line == 0 {
                        doc.first_line = line;
                    }
                    if let Some(p) = path {
                        doc.lines.entry(p).or_insert(line);
                    }
                }
                self.doc().last_line = line;
            }
            Event::Alias(_) => {
                let _ = self.next_child_path();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
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
        // Each document's text keeps the file's line numbers.
        assert_eq!(docs[1].text.lines().nth(4), Some("kind: K"));
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
