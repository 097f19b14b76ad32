//! Request paths: normalisation before matching, and Envoy's rewrite semantics.

/// Splits `/a/b?q=1` into (`/a/b`, `?q=1`).
pub fn split_query(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    }
}

/// Istio's `pathNormalization` (MeshConfig; `--path-normalization`), as Envoy applies
/// it before routing. The normalised path is what rules match and what the backend
/// receives, so a matcher never sees a different path than the backend acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalization {
    /// The path as sent (Istio's NONE: matchers and backends may disagree).
    None,
    /// Percent-encoded unreserved characters decoded (`%61` → `a`, `%2e` → `.`),
    /// `\` → `/`, then RFC 3986 dot-segment removal; `%2F`/`%5C` stay encoded.
    #[default]
    Base,
    /// BASE, then `//` merged into `/`.
    MergeSlashes,
    /// MERGE_SLASHES with `%2F` and `%5C` decoded to slashes first.
    DecodeAndMergeSlashes,
}

impl std::str::FromStr for Normalization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Ok(Normalization::None),
            "BASE" | "DEFAULT" => Ok(Normalization::Base),
            "MERGE_SLASHES" => Ok(Normalization::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Ok(Normalization::DecodeAndMergeSlashes),
            _ => Err(format!(
                "unknown path normalization {s:?}: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
            )),
        }
    }
}

/// A path that does not normalise: `%00` (Istio answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path holds an encoded NUL (%00)")]
pub struct BadPath;

/// The path (no query) as `mode` normalises it. `/test/x/../v1/y` → `/test/v1/y`,
/// `/public/%2e%2e/admin` → `/admin`, `/%61dmin` → `/admin`. `*` (OPTIONS *) stays.
pub fn normalize(path: &str, mode: Normalization) -> Result<String, BadPath> {
    if mode == Normalization::None || path == "*" {
        return Ok(path.to_string());
    }
    if path.is_empty() {
        return Ok("/".to_string());
    }
    let merge = mode != Normalization::Base;
    // Fast path, on every request: nothing to decode, remove or merge.
    let plain = path.starts_with('/')
        && !path.bytes().any(|b| b == b'%' || b == b'\\' || b >= 0x80)
        && !path.contains("/.")
        && !(merge && path.contains("//"));
    if plain {
        return Ok(path.to_string());
    }
    let decoded = decode(path, mode == Normalization::DecodeAndMergeSlashes)?;
    let mut out = remove_dot_segments(&decoded);
    if merge {
        while out.contains("//") {
            out = out.replace("//", "/");
        }
    }
    Ok(out)
}

/// RFC 3986 §6.2.2: percent-encoded unreserved characters decoded, other escapes in
/// upper case, `\` as `/` (Envoy's canonicalisation), bytes past ASCII encoded.
/// `slashes`: `%2F` and `%5C` decoded to `/` too. A `%` not followed by two hex
/// digits is escaped as `%25`: left alone (as Chromium's URL library, hence Envoy,
/// leaves it) it can form an escape with what decoding puts after it — `%5%31` would
/// become `%51` — and a backend decoding once more would act on another path than the
/// one matched (found by fuzz/fuzz_targets/routes.rs).
fn decode(path: &str, slashes: bool) -> Result<String, BadPath> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        let escaped = (c == b'%')
            .then(|| b.get(i..i + 2).and_then(|h| hex_pair(h[0], h[1])))
            .flatten();
        if let Some(v) = escaped {
            i += 2;
            match v {
                0 => return Err(BadPath),
                b'/' | b'\\' if slashes => out.push('/'),
                v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                    out.push(char::from(v));
                }
                v => push_escaped(&mut out, v),
            }
            continue;
        }
        match c {
            b'%' => out.push_str("%25"),
            b'\\' => out.push('/'),
            c if c >= 0x80 => push_escaped(&mut out, c),
            c => out.push(char::from(c)),
        }
    }
    Ok(out)
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let d = |x: u8| (x as char).to_digit(16).map(|v| v as u8);
    Some(d(hi)? * 16 + d(lo)?)
}

fn push_escaped(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 15)]));
}

/// RFC 3986 §5.2.4 dot-segment removal (above the root, `..` stays at the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// `rewrite.uri` as Envoy applies it: the matched part is replaced, the rest kept.
/// `matched_len` is the length of the matched prefix (the whole path for exact and
/// regex matches). Prefix `/p` rewritten to `/` makes `/p/x` → `//x`, as Envoy does.
pub fn rewrite_prefix(path: &str, matched_len: usize, replacement: &str) -> String {
    let rest = path.get(matched_len..).unwrap_or("");
    format!("{replacement}{rest}")
}

/// RE2-style `\1` captures in a rewrite to Rust regex's `${1}`.
pub fn re2_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(p: &str) -> String {
        normalize(p, Normalization::Base).expect("normalises")
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(base("/test/x/../v1/y"), "/test/v1/y");
        assert_eq!(base("/a/./b/"), "/a/b/");
        assert_eq!(base("/a/b/.."), "/a/");
        assert_eq!(base("/../../x"), "/x");
        assert_eq!(base(""), "/");
        assert_eq!(base("/"), "/");
        assert_eq!(base("*"), "*", "OPTIONS * keeps its target");
    }

    #[test]
    fn encoded_unreserved_characters_and_dots_are_decoded_first() {
        assert_eq!(base("/public/%2e%2e/admin"), "/admin");
        assert_eq!(base("/public/%2E%2e/admin"), "/admin");
        assert_eq!(base("/%61dmin"), "/admin");
        assert_eq!(base("/a/.%2e/b"), "/b");
        assert_eq!(base("/%7euser/%5f%2d"), "/~user/_-");
        assert_eq!(
            base("/a%2fb/%5c/%3f"),
            "/a%2Fb/%5C/%3F",
            "reserved stay encoded"
        );
        assert_eq!(base("/a\\..\\admin"), "/admin", "backslash is a slash");
        assert_eq!(base("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(base("/100%/x%4"), "/100%25/x%254", "a lone % is escaped");
        assert_eq!(
            normalize("/%5%31", Normalization::DecodeAndMergeSlashes),
            Ok("/%2551".into()),
            "decoding makes no new escape"
        );
        assert_eq!(base("//a//b"), "//a//b", "BASE keeps double slashes");
        assert_eq!(normalize("/a/%00", Normalization::Base), Err(BadPath));
    }

    #[test]
    fn slash_options_follow_istio() {
        let n = |p: &str, m| normalize(p, m).expect("normalises");
        assert_eq!(n("//a//b/", Normalization::MergeSlashes), "/a/b/");
        assert_eq!(n("/a%2Fb", Normalization::MergeSlashes), "/a%2Fb");
        assert_eq!(
            n("/a%2Fb%5c%2F/c", Normalization::DecodeAndMergeSlashes),
            "/a/b/c"
        );
        assert_eq!(
            n("/x/..%2fadmin", Normalization::DecodeAndMergeSlashes),
            "/admin"
        );
        assert_eq!(
            n("/public/%2e%2e/admin", Normalization::None),
            "/public/%2e%2e/admin"
        );
        assert_eq!("merge-slashes".parse(), Ok(Normalization::MergeSlashes));
        assert!("x".parse::<Normalization>().is_err());
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest() {
        assert_eq!(
            rewrite_prefix("/test/v2/abc", "/test/v2".len(), "/test"),
            "/test/abc"
        );
        assert_eq!(rewrite_prefix("/p/x", 2, "/"), "//x");
        assert_eq!(rewrite_prefix("/exact", 6, "/other"), "/other");
    }

    #[test]
    fn re2_captures_translate() {
        assert_eq!(re2_replacement(r"/v\1/\2"), "/v${1}/${2}");
        assert_eq!(re2_replacement("/$x"), "/$$x");
    }

    #[test]
    fn query_splits_off() {
        assert_eq!(split_query("/a?q=1&r"), ("/a", "?q=1&r"));
        assert_eq!(split_query("/a"), ("/a", ""));
    }
}
