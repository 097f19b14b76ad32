//! The block-style YAML that configurations are written in, read straight into a
//! type. libyaml (through serde_yaml) was two thirds of the fast path's time: it
//! scans every character into events, buffers a document's events, then hands them
//! to the type. This reads the common shape in one pass over the lines — block
//! mappings and sequences, flow collections on one line, plain and simply quoted
//! scalars, comments — into a small tree borrowed from the text, and the type from
//! that.
//!
//! It says *unsupported* for anything outside that shape, and for anything where
//! libyaml and this reader might differ (a scalar that YAML could read as a null,
//! bool or number where text is wanted, a duplicate key, an escape, a scalar over
//! two lines, a leading zero): the caller then parses the document with serde_yaml,
//! as before. So a document is either read as serde_yaml reads it, or by serde_yaml
//! (the `config` fuzz target and the tests below compare the two).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

/// This reader does not take the document (or its type did not fit it): serde_yaml's.
#[derive(Debug, PartialEq)]
pub struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not simple YAML")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

/// `text` (one document, no markers, no tabs: what the fast path lets through) as a `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Unsupported> {
    let lines = lines(text)?;
    let mut at = 0;
    let node = match lines.first() {
        Some(l) => block(&lines, &mut at, l.indent)?,
        None => return Err(Unsupported),
    };
    if at != lines.len() {
        return Err(Unsupported); // something left at a lesser indentation
    }
    T::deserialize(&node)
}

/// A line with content: its indentation and text, a trailing comment cut off.
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

fn lines(text: &str) -> Result<Vec<Line<'_>>, Unsupported> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let body = raw.trim_start_matches(' ');
        let text = strip_comment(body)?.trim_end_matches(' ');
        if !text.is_empty() {
            out.push(Line {
                indent: raw.len() - body.len(),
                text,
            });
        }
    }
    Ok(out)
}

/// The line before a ` #` (or a leading `#`) outside quotes. A quote opened and not
/// closed on its line is a scalar over lines: unsupported.
fn strip_comment(s: &str) -> Result<&str, Unsupported> {
    let b = s.as_bytes();
    let mut quote = None;
    for (i, &c) in b.iter().enumerate() {
        match (quote, c) {
            (None, b'#') if i == 0 || b[i - 1] == b' ' => return Ok(&s[..i]),
            (None, b'\'' | b'"') if i == 0 || b" [{,:".contains(&b[i - 1]) => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(Unsupported);
    }
    Ok(s)
}

#[derive(Debug)]
enum Node<'a> {
    /// Nothing after a key or dash.
    Null,
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<(&'a str, Node<'a>)>),
}

/// The block node starting at line `*at`, which is at `indent`.
fn block<'a>(lines: &[Line<'a>], at: &mut usize, indent: usize) -> Result<Node<'a>, Unsupported> {
    let first = &lines[*at];
    if first.indent != indent {
        return Err(Unsupported);
    }
    if is_item(first.text) {
        let mut items = Vec::new();
        while *at < lines.len() && lines[*at].indent == indent && is_item(lines[*at].text) {
            let rest = &lines[*at].text[1..];
            let content = rest.trim_start_matches(' ');
            let column = indent + 1 + (rest.len() - content.len());
            items.push(if content.is_empty() {
                *at += 1;
                child(lines, at, indent)?
            } else {
                inline(lines, at, column, content)?
            });
        }
        ends(lines, *at, indent)?;
        return Ok(Node::Seq(items));
    }
    let mut entries = Vec::new();
    entries_at(lines, at, indent, &mut entries)?;
    ends(lines, *at, indent)?;
    map(entries)
}

/// What comes after a node at `indent` is a sibling's or its parent's: never more
/// indented (YAML might read that otherwise).
fn ends(lines: &[Line<'_>], at: usize, indent: usize) -> Result<(), Unsupported> {
    match lines.get(at) {
        Some(l) if l.indent > indent => Err(Unsupported),
        _ => Ok(()),
    }
}

/// The `key: value` lines at `indent` from line `*at` on, added to `entries` (whose
/// keys the caller checks once, with [`map`]).
fn entries_at<'a>(
    lines: &[Line<'a>],
    at: &mut usize,
    indent: usize,
    entries: &mut Vec<(&'a str, Node<'a>)>,
) -> Result<(), Unsupported> {
    while *at < lines.len() && lines[*at].indent == indent && !is_item(lines[*at].text) {
        let (key, value) = entry(lines[*at].text)?;
        *at += 1;
        entries.push((key, value_below(lines, at, indent, value)?));
    }
    Ok(())
}

/// What follows a key or dash with nothing after it: a block more indented than
/// `parent`, or null.
fn child<'a>(lines: &[Line<'a>], at: &mut usize, parent: usize) -> Result<Node<'a>, Unsupported> {
    match lines.get(*at) {
        Some(l) if l.indent > parent => block(lines, at, l.indent),
        _ => Ok(Node::Null),
    }
}

/// A sequence item with content on its dash's line, which starts at `column`: a
/// mapping whose first entry is on this line, or a scalar or flow collection.
fn inline<'a>(
    lines: &[Line<'a>],
    at: &mut usize,
    column: usize,
    content: &'a str,
) -> Result<Node<'a>, Unsupported> {
    let dash = lines[*at].indent;
    if is_item(content) {
        return Err(Unsupported); // `- - x`
    }
    let node = match entry(content) {
        Ok((key, value)) if !content.starts_with(['[', '{', '"', '\'']) => {
            // The first entry here, the others on the lines below at `column`.
            *at += 1;
            let mut entries = vec![(key, value_below(lines, at, column, value)?)];
            entries_at(lines, at, column, &mut entries)?;
            map(entries)?
        }
        _ => {
            *at += 1;
            value_node(content)?
        }
    };
    ends(lines, *at, dash)?;
    Ok(node)
}

/// The value of a key at `indent` whose line (now behind) held `value` after it:
/// that, or when empty the block below (a sequence may sit at the key's column).
fn value_below<'a>(
    lines: &[Line<'a>],
    at: &mut usize,
    indent: usize,
    value: &'a str,
) -> Result<Node<'a>, Unsupported> {
    if !value.is_empty() {
        return value_node(value);
    }
    if lines
        .get(*at)
        .is_some_and(|l| l.indent == indent && is_item(l.text))
    {
        block(lines, at, indent)
    } else {
        child(lines, at, indent)
    }
}

/// A mapping, unless a key repeats (libyaml lets that pass, serde may not: its call).
/// Sorted, not scanned pairwise: a file may hold a mapping of a million keys.
fn map<'a>(entries: Vec<(&'a str, Node<'a>)>) -> Result<Node<'a>, Unsupported> {
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(Unsupported);
    }
    Ok(Node::Map(entries))
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: value` (value possibly empty). Keys are plain words.
fn entry(text: &str) -> Result<(&str, &str), Unsupported> {
    let (key, value) = match text.find(": ") {
        Some(i) => (&text[..i], text[i + 2..].trim_start_matches(' ')),
        None => (text.strip_suffix(':').ok_or(Unsupported)?, ""),
    };
    if !simple_key(key) {
        return Err(Unsupported);
    }
    Ok((key, value))
}

/// A key any YAML reader takes as this text: letters, digits and `_-./`, starting with
/// a letter (so never a number, bool or null to anyone but `y`/`n`/`on`/… to YAML
/// 1.1 readers, which are refused too).
fn simple_key(key: &str) -> bool {
    key.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
        && !special(key)
}

/// The value after a key or dash, on its line.
fn value_node(v: &str) -> Result<Node<'_>, Unsupported> {
    if v.starts_with(['[', '{']) {
        let mut p = Flow { s: v, i: 0 };
        let node = p.node()?;
        p.space();
        return if p.i == v.len() {
            Ok(node)
        } else {
            Err(Unsupported)
        };
    }
    scalar(v, false)
}

/// A scalar: quoted (no escapes; `''` in single quotes), or plain — nothing that
/// could start something else, no `: ` inside, and in a flow collection no `:` at all.
fn scalar(v: &str, in_flow: bool) -> Result<Node<'_>, Unsupported> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or(Unsupported)?;
        if inner.contains(['"', '\\']) {
            return Err(Unsupported);
        }
        return Ok(Node::Scalar {
            text: Cow::Borrowed(inner),
            plain: false,
        });
    }
    if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or(Unsupported)?;
        if inner.replace("''", "").contains('\'') {
            return Err(Unsupported);
        }
        let text = if inner.contains("''") {
            Cow::Owned(inner.replace("''", "'"))
        } else {
            Cow::Borrowed(inner)
        };
        return Ok(Node::Scalar { text, plain: false });
    }
    // `-` may start a number (`-1`), not anything else here.
    let starts_badly = v.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c))
        && !(v.starts_with('-') && v[1..].starts_with(|c: char| c.is_ascii_digit()));
    if v.is_empty()
        || starts_badly
        || v.contains(": ")
        || v.ends_with(':')
        || v.contains(" #")
        || (in_flow && v.contains([':', ',', '[', ']', '{', '}']))
    {
        return Err(Unsupported);
    }
    Ok(Node::Scalar {
        text: Cow::Borrowed(v),
        plain: true,
    })
}

/// A flow collection on one line.
struct Flow<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Flow<'a> {
    fn space(&mut self) {
        while self.s.as_bytes().get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }

    fn node(&mut self) -> Result<Node<'a>, Unsupported> {
        self.space();
        match self.s.as_bytes().get(self.i) {
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                if self.close(b']') {
                    return Ok(Node::Seq(items));
                }
                loop {
                    items.push(self.node()?);
                    if self.close(b']') {
                        return Ok(Node::Seq(items));
                    }
                    self.comma()?;
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut entries: Vec<(&'a str, Node<'a>)> = Vec::new();
                if self.close(b'}') {
                    return Ok(Node::Map(entries));
                }
                loop {
                    self.space();
                    let rest = &self.s[self.i..];
                    let end = rest.find(':').ok_or(Unsupported)?;
                    let key = &rest[..end];
                    if !simple_key(key) {
                        return Err(Unsupported);
                    }
                    self.i += end + 1;
                    if self.s.as_bytes().get(self.i) != Some(&b' ') {
                        return Err(Unsupported); // `{a:b}` or `{a:}`
                    }
                    entries.push((key, self.node()?));
                    if self.close(b'}') {
                        return map(entries);
                    }
                    self.comma()?;
                }
            }
            Some(_) => {
                let rest = &self.s[self.i..];
                let end = if rest.starts_with(['"', '\'']) {
                    let q = rest.as_bytes()[0];
                    1 + rest[1..].find(q as char).ok_or(Unsupported)? + 1
                } else {
                    rest.find([',', ']', '}']).ok_or(Unsupported)?
                };
                self.i += end;
                scalar(rest[..end].trim_end_matches(' '), true)
            }
            None => Err(Unsupported),
        }
    }

    fn close(&mut self, c: u8) -> bool {
        self.space();
        let closed = self.s.as_bytes().get(self.i) == Some(&c);
        if closed {
            self.i += 1;
        }
        closed
    }

    fn comma(&mut self) -> Result<(), Unsupported> {
        self.space();
        if self.s.as_bytes().get(self.i) != Some(&b',') {
            return Err(Unsupported);
        }
        self.i += 1;
        self.space();
        // No empty entry, no trailing comma.
        if matches!(
            self.s.as_bytes().get(self.i),
            Some(b',' | b']' | b'}') | None
        ) {
            return Err(Unsupported);
        }
        Ok(())
    }
}

/// A plain scalar some YAML reader (1.1 or 1.2) may take for a null, bool or number
/// (generously: `1_0`, `0x1f`, `1:20`, `.5e3`, `.inf` count): where text is wanted,
/// serde_yaml decides. An address (`10.0.0.1`: more than one dot) is text to all.
fn special(s: &str) -> bool {
    const WORDS: [&str; 13] = [
        "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", ".nan", "",
    ];
    if s.len() <= 5 && WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return true;
    }
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    let b = t.as_bytes();
    if t.eq_ignore_ascii_case(".inf") || (b.len() > 1 && b[0] == b'0' && b[1].is_ascii_alphabetic())
    {
        return true;
    }
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mantissa_ok = mantissa.bytes().any(|b| b.is_ascii_digit())
        && mantissa
            .bytes()
            .all(|b| b.is_ascii_digit() || b"_.:".contains(&b))
        && mantissa.bytes().filter(|&b| b == b'.').count() <= 1;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

/// Decimal digits with an optional `-`, no leading zero (serde_yaml reads those
/// alike; `+1`, `0x1`, `1_0`, `010` are its to read).
fn decimal(s: &str) -> Option<&str> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    ok.then_some(s)
}

impl<'a> Node<'a> {
    fn plain(&self) -> Option<&str> {
        match self {
            Node::Scalar { text, plain: true } => Some(text),
            _ => None,
        }
    }

    /// Text as serde_yaml would give it for a string: a quoted scalar, or a plain
    /// one no reader takes for anything else.
    fn text(&self) -> Result<&str, Unsupported> {
        match self {
            Node::Scalar { text, plain: false } => Ok(text),
            Node::Scalar { text, plain: true } if !special(text) => Ok(text),
            _ => Err(Unsupported),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Node::Null) || matches!(self.plain(), Some("~" | "null" | "Null" | "NULL"))
    }
}

macro_rules! integer {
    ($($method:ident $visit:ident $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
            let n: $t = self.plain().and_then(decimal).ok_or(Unsupported)?.parse().map_err(|_| Unsupported)?;
            v.$visit(n.into())
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for &'de Node<'a> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        match self {
            Node::Null => v.visit_unit(),
            Node::Map(_) => self.deserialize_map(v),
            Node::Seq(_) => self.deserialize_seq(v),
            Node::Scalar { .. } => v.visit_str(self.text()?),
        }
    }

    integer!(deserialize_i64 visit_i64 i64, deserialize_u64 visit_u64 u64,
        deserialize_i32 visit_i64 i32, deserialize_u32 visit_u64 u32,
        deserialize_i16 visit_i64 i16, deserialize_u16 visit_u64 u16,
        deserialize_i8 visit_i64 i8, deserialize_u8 visit_u64 u8);

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        let s = self.plain().ok_or(Unsupported)?;
        let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if decimal(whole).is_none() || !digits(frac) {
            return Err(Unsupported);
        }
        v.visit_f64(s.parse().map_err(|_| Unsupported)?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_f64(v)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        match self.plain() {
            Some("true") => v.visit_bool(true),
            Some("false") => v.visit_bool(false),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        v.visit_str(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        if self.is_null() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        if self.is_null() {
            v.visit_unit()
        } else {
            Err(Unsupported)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Unsupported> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        match self {
            Node::Seq(items) => v.visit_seq(de::value::SeqDeserializer::new(items.iter())),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        match self {
            Node::Map(entries) => v.visit_map(de::value::MapDeserializer::new(
                entries.iter().map(|(k, n)| (*k, n)),
            )),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Unsupported> {
        Err(Unsupported) // none in lb's types; serde_yaml's to read
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! { char bytes byte_buf i128 u128 }
}

impl<'de, 'a> IntoDeserializer<'de, Unsupported> for &'de Node<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use serde::Deserialize;

    use super::*;
    use crate::load::istio;

    /// Every shape a field of lb's types takes (compared by their Debug form).
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shapes {
        s: Option<String>,
        num: Option<i64>,
        port: Option<u32>,
        frac: Option<f64>,
        flag: Option<bool>,
        list: Option<Vec<String>>,
        map: Option<BTreeMap<String, String>>,
        nested: Option<Vec<Shapes>>,
        any: Option<serde_yaml::Value>,
        ignored: Option<serde::de::IgnoredAny>,
    }

    /// Read by this reader (Some) or not (None); when read, as serde_yaml reads it.
    fn read<T: DeserializeOwned + Debug>(text: &str) -> Option<T> {
        let mine = from_str::<T>(text).ok()?;
        let theirs = serde_yaml::from_str::<T>(text).ok();
        assert_eq!(
            Some(format!("{mine:?}")),
            theirs.map(|t| format!("{t:?}")),
            "{text:?}"
        );
        Some(mine)
    }

    #[test]
    fn the_common_shapes_are_read_as_serde_yaml_reads_them() {
        for text in [
            "s: abc\nnum: -12\nport: 8080\nfrac: 0.25\nflag: true\n",
            "s: 'it''s'\nlist: [a, 'b c', \"d\"]\nmap: {version: v1, app.kubernetes.io/name: x}\n",
            "# first\ns: 10.0.0.1   # an address is text\n\nlist:\n- a\n- b # comment\n",
            "nested:\n  - s: x\n    num: 1\n  -   s: why\n      list:\n      - z\n  - {s: w, port: 3}\n",
            "map:\n  a: b\n  c: 'd: e'\nnested: []\nignored: {deep: [1, 2, {x: y}]}\n",
            "any: {a: [b, c]}\ns: \"quoted # not a comment\"\n",
            "s: ~\nnum:\nlist:\n",
            "  s: indented\n  port: 0\n",
            "nested:\n- s: a\n  nested:\n  - s: b\n- s: c\n",
        ] {
            assert!(read::<Shapes>(text).is_some(), "{text:?}");
        }
    }

    #[test]
    fn what_yaml_might_read_otherwise_is_serde_yamls() {
        for text in [
            "s: 123\n",                      // text that YAML reads as a number
            "s: true\n",                     // … as a bool
            "s: no\n",                       // … as a bool to YAML 1.1
            "n: a\n",                        // a key YAML 1.1 reads as a bool
            "port: 010\n",                   // a leading zero
            "port: 0x1f\n",                  // hex
            "port: +1\n",                    // a sign
            "frac: 1e3\n",                   // an exponent
            "s: \"a\\tb\"\n",                // an escape
            "s: 'unclosed\n",                // a quote over lines
            "s: a\n  b\n",                   // a plain scalar over lines
            "s: a: b\n",                     // a mapping where a value is
            "s: |\n  a\n",                   // a block scalar
            "list: [a, b,]\n",               // a trailing comma
            "list: [a, , b]\n",              // an empty entry
            "map: {a:b}\n",                  // no space after a flow key's colon
            "map: {\"a\": b}\n",             // a quoted key
            "s: a\ns: b\n",                  // a duplicate key
            "nested:\n- s: a\n  s: b\n",     // … in a sequence item
            "list:\n- - a\n",                // a sequence in a sequence item
            "s: [a] b\n",                    // text after a flow collection
            "any: 5\n",                      // a number where anything goes
            "? s\n: a\n",                    // an explicit key
            "1: a\n",                        // a key YAML reads as a number
            "s: a\n   port: 1\n",            // a line indented without a parent
            "nested:\n- s: a\n   port: 1\n", // … in a sequence item
        ] {
            assert!(from_str::<Shapes>(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_key_repeated_in_a_large_mapping_is_found() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}: v")).collect();
        let flow = format!("map: {{{}}}\n", keys.join(", "));
        assert!(read::<Shapes>(&flow).is_some());
        let block = format!("map:\n  {}\n", keys.join("\n  "));
        assert!(read::<Shapes>(&block).is_some());
        for text in [
            flow.replace("}", ", k500: w}"),
            format!("{block}  k999: w\n"),
        ] {
            assert!(from_str::<Shapes>(&text).is_err());
        }
    }

    /// Every document of the project's own configurations and test cases.
    #[test]
    fn the_projects_configurations_read_as_with_serde_yaml() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in [
            "config",
            "config/seed",
            "tests/golden",
            "tests/validate",
            "deploy",
        ] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "yaml") {
                        files.push(p);
                    }
                }
            }
        }
        let (mut read_here, mut documents) = (0, 0);
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read");
            for doc in text.split("\n---\n") {
                documents += 1;
                let doc = doc.strip_prefix("---\n").unwrap_or(doc);
                let kind = doc.lines().find_map(|l| l.strip_prefix("kind: "));
                let here = match kind {
                    Some("ServiceEntry") => {
                        read::<istio::Resource<istio::ServiceEntrySpec>>(doc).is_some()
                    }
                    Some("DestinationRule") => {
                        read::<istio::Resource<istio::DestinationRuleSpec>>(doc).is_some()
                    }
                    Some("VirtualService") => {
                        read::<istio::Resource<istio::VirtualServiceSpec>>(doc).is_some()
                    }
                    _ => false,
                };
                read_here += usize::from(here);
            }
        }
        // Most are plain enough for this reader (the rest are bad on purpose).
        assert!(read_here * 2 > documents, "{read_here} of {documents}");
    }
}
