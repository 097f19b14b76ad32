//! Request matchers (Istio `HTTPMatchRequest`): one match block is an AND of its
//! conditions; a rule's blocks are ORed by the caller.

use http::HeaderMap;
use regex::Regex;

/// Istio's `StringMatch`, compiled.
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    /// RE2 full match (anchored at compile time).
    Regex(Regex),
    /// `{}`: the value is present (any value).
    Present,
}

impl StrMatch {
    /// Whether `value` matches; `ignore_case` applies to exact and prefix.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StrMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e),
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) if ignore_case => {
                value.len() >= p.len()
                    && value.is_char_boundary(p.len())
                    && value[..p.len()].eq_ignore_ascii_case(p)
            }
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Present => true,
        }
    }
}

/// One `match` block.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    pub name: Option<String>,
    pub uri: Option<StrMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub headers: Vec<(http::HeaderName, StrMatch)>,
    pub without_headers: Vec<(http::HeaderName, StrMatch)>,
    pub query_params: Vec<(String, StrMatch)>,
    pub port: Option<u16>,
}

/// What a match block looks at.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host as sent, port included.
    pub authority: &'a str,
    /// Normalised path, no query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The service port the request came for, if known.
    pub port: Option<u16>,
}

/// The first condition of a block a request fails, borrowed from both: cheap to find
/// on every request, put into words only for `lb explain`.
pub enum Mismatch<'a> {
    Uri(&'a str, &'a StrMatch),
    Field(&'static str, &'a str, &'a StrMatch),
    Header(&'a str, &'a str, &'a StrMatch),
    HeaderAbsent(&'a str),
    WithoutHeader(&'a str),
    Query(&'a str, &'a str, &'a StrMatch),
    QueryAbsent(&'a str),
    Port(Option<u16>, u16),
}

impl std::fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Uri(path, m) => write!(f, "uri {path} does not match {}", describe(m)),
            Mismatch::Field(what, v, m) => {
                write!(f, "{what} {v:?} does not match {}", describe(m))
            }
            Mismatch::Header(name, v, m) => {
                write!(f, "header {name}: {v:?} does not match {}", describe(m))
            }
            Mismatch::HeaderAbsent(name) => write!(f, "header {name} is absent"),
            Mismatch::WithoutHeader(name) => write!(f, "withoutHeaders {name} matched"),
            Mismatch::Query(name, v, m) => {
                write!(f, "query {name}={v:?} does not match {}", describe(m))
            }
            Mismatch::QueryAbsent(name) => write!(f, "query parameter {name} is absent"),
            Mismatch::Port(got, want) => write!(f, "port {got:?} is not {want}"),
        }
    }
}

impl MatchBlock {
    /// Whether every condition of the block holds, and why not (tests).
    #[cfg(test)]
    pub fn check(&self, r: &RequestView<'_>) -> Result<(), String> {
        self.mismatch(r).map_or(Ok(()), |m| Err(m.to_string()))
    }

    /// The first condition `r` fails, if any (no allocation: the proxy's hot path).
    pub fn mismatch<'a>(&'a self, r: &RequestView<'a>) -> Option<Mismatch<'a>> {
        if let Some(u) = &self.uri
            && !u.matches(r.path, self.ignore_uri_case)
        {
            return Some(Mismatch::Uri(r.path, u));
        }
        for (what, m, v) in [
            ("scheme", &self.scheme, r.scheme),
            ("method", &self.method, r.method),
            ("authority", &self.authority, r.authority),
        ] {
            if let Some(m) = m
                && !m.matches(v, false)
            {
                return Some(Mismatch::Field(what, v, m));
            }
        }
        for (name, m) in &self.headers {
            match r.headers.get(name).map(|v| v.to_str().unwrap_or("")) {
                Some(v) if m.matches(v, false) => {}
                Some(v) => return Some(Mismatch::Header(name.as_str(), v, m)),
                None => return Some(Mismatch::HeaderAbsent(name.as_str())),
            }
        }
        for (name, m) in &self.without_headers {
            // Inverted: a missing header counts as the empty value; `{}` means absent.
            let v = r.headers.get(name).map(|v| v.to_str().unwrap_or(""));
            let hit = match (m, v) {
                (StrMatch::Present, v) => v.is_some(),
                (m, v) => m.matches(v.unwrap_or(""), false),
            };
            if hit {
                return Some(Mismatch::WithoutHeader(name.as_str()));
            }
        }
        for (name, m) in &self.query_params {
            match query_param(r.query, name) {
                Some(v) if m.matches(v, false) => {}
                Some(v) => return Some(Mismatch::Query(name, v, m)),
                None => return Some(Mismatch::QueryAbsent(name)),
            }
        }
        if let Some(p) = self.port
            && r.port != Some(p)
        {
            return Some(Mismatch::Port(r.port, p));
        }
        None
    }

    /// Length of the path prefix a `rewrite.uri` replaces (no uri match: prefix `/`).
    pub fn matched_len(&self, path: &str) -> usize {
        match &self.uri {
            Some(StrMatch::Prefix(p)) => p.len(),
            Some(StrMatch::Exact(_) | StrMatch::Regex(_)) => path.len(),
            Some(StrMatch::Present) | None => 1.min(path.len()),
        }
    }
}

/// The first value of `name` in a query string (a repeated key counts once).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

pub fn describe(m: &StrMatch) -> String {
    match m {
        StrMatch::Exact(e) => format!("exact {e:?}"),
        StrMatch::Prefix(p) => format!("prefix {p:?}"),
        StrMatch::Regex(r) => format!(
            "regex {:?}",
            r.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
        ),
        StrMatch::Present => "present".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a HeaderMap, path: &'a str, query: &'a str) -> RequestView<'a> {
        RequestView {
            method: "GET",
            scheme: "http",
            authority: "api.example.com:8080",
            path,
            query,
            headers,
            port: Some(80),
        }
    }

    fn re(p: &str) -> StrMatch {
        StrMatch::Regex(Regex::new(&format!("^(?:{p})$")).expect("regex"))
    }

    #[test]
    fn uri_matchers() {
        let h = HeaderMap::new();
        let prefix = MatchBlock {
            uri: Some(StrMatch::Prefix("/v2".into())),
            ..Default::default()
        };
        assert!(
            prefix.check(&view(&h, "/v2example", "")).is_ok(),
            "plain string prefix"
        );
        let exact = MatchBlock {
            uri: Some(StrMatch::Exact("/a".into())),
            ..Default::default()
        };
        assert!(exact.check(&view(&h, "/a", "q=1")).is_ok(), "query ignored");
        assert!(exact.check(&view(&h, "/A", "")).is_err());
        let ci = MatchBlock {
            ignore_uri_case: true,
            ..exact.clone()
        };
        assert!(ci.check(&view(&h, "/A", "")).is_ok());
        let regex = MatchBlock {
            uri: Some(re("/u/[0-9]+")),
            ..Default::default()
        };
        assert!(regex.check(&view(&h, "/u/12", "")).is_ok());
        assert!(
            regex.check(&view(&h, "/u/12/x", "")).is_err(),
            "full match only"
        );
    }

    #[test]
    fn header_matchers_and_without_headers() {
        let mut h = HeaderMap::new();
        h.insert("hellotest", "true".parse().expect("value"));
        let m = MatchBlock {
            headers: vec![(
                http::HeaderName::from_static("hellotest"),
                StrMatch::Exact("true".into()),
            )],
            ..Default::default()
        };
        assert!(m.check(&view(&h, "/", "")).is_ok());
        let present = MatchBlock {
            headers: vec![(
                http::HeaderName::from_static("hellotest"),
                StrMatch::Present,
            )],
            ..Default::default()
        };
        assert!(present.check(&view(&h, "/", "")).is_ok());
        assert!(present.check(&view(&HeaderMap::new(), "/", "")).is_err());
        // withoutHeaders x: {exact: ""} applies when x is absent (missing counts as empty).
        let without_empty = MatchBlock {
            without_headers: vec![(
                http::HeaderName::from_static("x"),
                StrMatch::Exact(String::new()),
            )],
            ..Default::default()
        };
        assert!(
            without_empty
                .check(&view(&HeaderMap::new(), "/", ""))
                .is_err()
        );
        let without_present = MatchBlock {
            without_headers: vec![(
                http::HeaderName::from_static("hellotest"),
                StrMatch::Present,
            )],
            ..Default::default()
        };
        assert!(without_present.check(&view(&h, "/", "")).is_err());
        assert!(
            without_present
                .check(&view(&HeaderMap::new(), "/", ""))
                .is_ok()
        );
    }

    #[test]
    fn authority_method_scheme_query_port() {
        let h = HeaderMap::new();
        let m = MatchBlock {
            authority: Some(StrMatch::Prefix("api.example.com".into())),
            method: Some(StrMatch::Exact("GET".into())),
            scheme: Some(StrMatch::Exact("http".into())),
            query_params: vec![("v".into(), StrMatch::Exact("1".into()))],
            port: Some(80),
            ..Default::default()
        };
        assert!(m.check(&view(&h, "/", "v=1&v=2")).is_ok());
        assert!(
            m.check(&view(&h, "/", "v=2&v=1")).is_err(),
            "first value counts"
        );
        let wrong_port = MatchBlock {
            port: Some(81),
            ..Default::default()
        };
        assert!(wrong_port.check(&view(&h, "/", "")).is_err());
    }
}
