//! The common case in one pass. The exact path (locate.rs, then serde_yaml) parses
//! every document twice: once event by event for its bounds, head and lines, once
//! into its type. For a run of plain block-style documents (what [`plain`] lets
//! through: no anchors, aliases, tags or directives, nothing libyaml and yaml_rust2
//! read differently, nesting well under the bound) with a top-level `kind:` line,
//! the split, the head and the bounds can be read from the lines, and each document
//! is parsed once, into its type. Anything else, and any document that does not
//! parse into its type, sends the whole run to the exact path, so every problem is
//! still found and said by it, with its words and lines; what this path loads equals
//! what the exact path loads (the `config` fuzz target compares them on every input;
//! each difference it found is named in [`plain`]). At 10,000 services it halves the
//! YAML's time.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::locate::Document;
use super::{API_VERSIONS, Loaded, Resource, Run, istio, kind_of, limits, simple_yaml};

/// The documents of `text` (a run starting after `base` lines of its file), if every
/// one is plain enough for this path and parses into its type.
pub(super) fn load_run(file: &Path, text: &str, base: usize) -> Option<Run> {
    if !plain(text) {
        return None;
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut run = Run {
        loaded: Vec::new(),
        diags: Vec::new(),
        documents: 0,
        first_lines: Vec::new(),
    };
    let mut start = 0;
    while start < lines.len() {
        let end = (start + 1..lines.len())
            .find(|&i| is_marker(lines[i]))
            .unwrap_or(lines.len());
        // The segment after its marker (the file's first has none).
        let from = if is_marker(lines[start]) {
            if !lines[start][3..].trim_matches(YAML_SPACE).is_empty() {
                return None; // content on the marker line
            }
            start + 1
        } else {
            start
        };
        // Comments and blank lines alone are no document.
        if let Some(first) = (from..end).find(|&i| has_content(lines[i])) {
            run.documents += 1;
            if run.documents > limits::MAX_DOCUMENTS {
                return None;
            }
            run.first_lines.push(base + first + 1);
            // From its marker on: comments are YAML too (what they may hold is checked
            // by plain(), and by the parse).
            let doc = Document::new(base + first + 1, lines[from..end].concat(), base + from);
            run.loaded
                .push(load_document(file, doc, &lines[from..end])?);
        }
        start = end;
    }
    Some(run)
}

/// YAML's white space.
const YAML_SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// Only characters YAML allows anywhere (comments included), and no line break but
/// `\n` (a lone `\r` breaks lines too, and to libyaml, which reads YAML 1.1, so do
/// U+0085, U+2028 and U+2029), nor a byte order mark (allowed at the start only): a
/// text with any other is the exact path's to judge.
fn printable(text: &str) -> bool {
    let ascii = |b: u8| b == b'\n' || (b' '..=b'~').contains(&b);
    if text.bytes().all(ascii) {
        return true;
    }
    text.chars().all(|c| match c {
        '\u{0}'..='\u{7f}' => ascii(c as u8),
        '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' => false,
        '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => true,
        _ => false,
    })
}

/// Printable; no anchors or aliases (whose expansion the exact path bounds), tags or
/// explicit keys; no `#` glued to what is before it, no directives, no document end
/// markers, no tabs (YAML's indentation has none; a tab where one matters is the
/// exact path's to say), no flow collection over more than a line; and nesting surely
/// within the bound.
fn plain(text: &str) -> bool {
    if !printable(text) {
        return false;
    }
    let bytes = text.as_bytes();
    // Anchors and aliases, and the indicators libyaml and yaml_rust2 read differently
    // in flow collections: `?` (an explicit key to libyaml even when glued to it) and
    // `!` (a tag). Where one is not an indicator it only costs the exact path.
    let indicator = |i: usize| i == 0 || b" \t\n[{,:-!?".contains(&bytes[i - 1]);
    let indicators = memchr::memchr3_iter(b'*', b'&', b'?', bytes).any(indicator)
        || memchr::memchr_iter(b'!', bytes).any(indicator);
    // A comment needs white space before it; libyaml lets `]#` pass, yaml_rust2 does
    // not (so neither does lb).
    let glued_comment =
        memchr::memchr_iter(b'#', bytes).any(|i| i > 0 && !b" \n".contains(&bytes[i - 1]));
    if indicators || glued_comment || memchr::memchr(b'\t', bytes).is_some() {
        return false;
    }
    let mut deepest_indent = 0;
    let mut most_open = 0;
    for line in text.lines() {
        if line.starts_with('%') || line.starts_with("...") {
            return false;
        }
        deepest_indent = deepest_indent.max(line.len() - line.trim_start_matches(' ').len());
        // Flow collections open and close on their line (libyaml and yaml_rust2 read
        // some that span lines differently). Brackets inside quotes count too: a
        // bound, not a parse.
        let mut open: i64 = 0;
        for b in line.bytes() {
            match b {
                b'[' | b'{' => {
                    open += 1;
                    most_open = most_open.max(open);
                }
                b']' | b'}' => open -= 1,
                _ => {}
            }
        }
        if open != 0 {
            return false;
        }
    }
    // Each block level is indented at least one column more than its parent, but a
    // sequence may sit at its key's column: two levels per column at most.
    2 * (deepest_indent as i64 + 1) + most_open + 1 < limits::MAX_DEPTH as i64
}

/// A line that starts a document (`---` alone or followed by white space).
fn is_marker(line: &str) -> bool {
    line.starts_with("---")
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| YAML_SPACE.contains(&c))
}

/// A line with more than blanks or a comment.
fn has_content(line: &str) -> bool {
    let t = line.trim_matches(YAML_SPACE);
    !t.is_empty() && !t.starts_with('#')
}

/// The value of the top-level `kind:` line, if there is one and it is a plain word.
fn kind_line<'a>(lines: &[&'a str]) -> Option<&'a str> {
    let value = lines.iter().find_map(|l| l.strip_prefix("kind:"))?;
    let value = value.split(" #").next()?.trim();
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric())
        .then_some(value)
}

fn load_document(file: &Path, doc: Document, lines: &[&str]) -> Option<Loaded> {
    let kind = kind_of(kind_line(lines)?)?;
    let resource = match kind {
        "ServiceEntry" => Resource::ServiceEntry(Box::new(typed(&doc, kind)?)),
        "DestinationRule" => Resource::DestinationRule(Box::new(typed(&doc, kind)?)),
        _ => Resource::VirtualService(Box::new(typed(&doc, kind)?)),
    };
    let meta = resource.metadata();
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    Some(Loaded::new(resource, kind, namespace, name, file, doc))
}

/// The document as a `kind` with a known apiVersion, or None. Read by lb's own reader
/// when it takes the document (most are), else by serde_yaml (simple_yaml.rs).
fn typed<S: DeserializeOwned>(doc: &Document, kind: &str) -> Option<istio::Resource<S>> {
    let r: istio::Resource<S> = match simple_yaml::from_str(&doc.text) {
        Ok(r) => r,
        Err(_) => serde_yaml::from_str(&doc.text).ok()?,
    };
    (r.kind == kind && API_VERSIONS.contains(&r.api_version.as_str())).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run loads to, as the fuzz target compares them: kind, name, first line
    /// and the typed resource of each document.
    fn seen(loaded: &[Loaded]) -> Vec<String> {
        let each = |l: &Loaded| {
            let at = (l.kind, &l.namespace, &l.name, l.doc.first_line);
            format!("{at:?} {:?} {:?}", l.resource(), l.doc.line_of("spec.host"))
        };
        loaded.iter().map(each).collect()
    }

    fn exact(text: &str) -> (Vec<String>, Vec<String>) {
        let run = super::super::exact_run(Path::new("c.yaml"), text, 7).expect("no syntax error");
        let diags = run.diags.iter().map(ToString::to_string).collect();
        (seen(&run.loaded), diags)
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\nspec:\n  host: h  # here\n";

    #[test]
    fn plain_documents_load_in_one_pass_as_exactly() {
        let text = format!(
            "# a comment first\n{DR}---\n\n# only a comment: no document\n---   \n{}---\n{}",
            DR.replace("name: d", "name: e\n  namespace: ns"),
            "apiVersion: networking.istio.io/v1beta1\nkind: 'VirtualService'\nmetadata: {name: v}\nspec:\n  hosts: [\"*.example.com\"]\n  http:\n  - match: [{uri: {regex: \"/a.*\"}}]\n    route: [{destination: {host: h}}]\n",
        );
        let run = load_run(Path::new("c.yaml"), &text, 7).expect("plain");
        assert_eq!(run.documents, 3);
        assert_eq!(run.first_lines, [9, 19, 27]);
        assert_eq!((seen(&run.loaded), Vec::new()), exact(&text));
    }

    #[test]
    fn anything_else_goes_the_exact_way() {
        for (why, text) in [
            ("an anchor", DR.replace("host: h", "host: &a h")),
            ("an explicit key", DR.replace("metadata:\n  name: d", "metadata: {?name: d}")),
            ("a tag", DR.replace("host: h", "host: !!str h")),
            ("a tab", DR.replace("  host", "\thost")),
            ("a glued comment", DR.replace("h  # here", "[h]# here")),
            ("a carriage return", DR.replace('\n', "\r\n")),
            (
                "a control character in a comment",
                format!("{DR}---\n# \u{7f}\n"),
            ),
            ("a directive", format!("%YAML 1.2\n---\n{DR}")),
            ("a document end marker", format!("{DR}...\n")),
            (
                "content on a marker line",
                format!("--- {{a: 1}}\n---\n{DR}"),
            ),
            (
                "no kind line",
                "{kind: DestinationRule, apiVersion: networking.istio.io/v1, metadata: {name: d}, spec: {host: h}}\n".to_string(),
            ),
            ("an unknown kind", DR.replace("DestinationRule", "Gateway")),
            ("an unknown apiVersion", DR.replace("/v1", "/v2")),
            ("no name", DR.replace("name: d", "name: ''")),
            ("a field the schema lacks", DR.replace("host: h", "hots: h")),
            ("a second kind", format!("{DR}kind: VirtualService\n")),
            (
                "deep nesting",
                format!(
                    "{DR}  trafficPolicy: {}{}\n",
                    "[".repeat(70),
                    "]".repeat(70)
                ),
            ),
        ] {
            assert!(load_run(Path::new("c.yaml"), &text, 7).is_none(), "{why}");
        }
    }
}
