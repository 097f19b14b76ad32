//! Request paths: normalisation before matching, and Envoy's rewrite semantics.

/// Splits `/a/b?q=1` into (`/a/b`, `?q=1`).
pub fn split_query(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    }
}

/// RFC 3986 dot-segment removal (Istio's default BASE normalisation): the normalised
/// path is what is matched and forwarded. `/test/x/../v1/y` → `/test/v1/y`.
pub fn normalize(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    // Fast path: nothing to remove (the common case, on every request).
    if path.starts_with('/') && !path.contains("/.") {
        return path.to_string();
    }
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

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(normalize("/test/x/../v1/y"), "/test/v1/y");
        assert_eq!(normalize("/a/./b/"), "/a/b/");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize("/../../x"), "/x");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/"), "/");
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
