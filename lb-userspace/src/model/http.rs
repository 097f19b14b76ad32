//! The request-level parts of an HTTP rule for the proxy path: match blocks, rewrite,
//! redirect, direct response, header edits — validated as Istio does, compiled once
//! (regexes at load time, never per request).

use http::{HeaderName, HeaderValue};
use regex::Regex;

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};
use crate::route::{HeaderOps, MatchBlock, Redirect, Rewrite, StrMatch};

/// A rule's action before its destinations are resolved to endpoints.
#[derive(Debug)]
pub enum ParsedAction {
    Route(Rewrite),
    Redirect(Redirect),
    Direct { status: u16, body: Option<String> },
}

/// A regex that does not compile, said with the last line of the regex crate's error.
fn bad_regex(pattern: &str, e: &regex::Error) -> Invalid {
    Invalid::BadRegex {
        pattern: pattern.to_string(),
        why: e.to_string().lines().last().unwrap_or("").to_string(),
    }
}

/// Compiles a `StringMatch`; `{}` is "present" where Istio allows it.
pub fn string_match(
    l: &Loaded,
    path: &str,
    m: &istio::StringMatch,
    allow_present: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<StrMatch> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let err = |diags: &mut Vec<Diagnostic>, problem: Invalid| {
        diags.push(Diagnostic::error(l.at(path), path, problem));
        None
    };
    if set > 1 {
        return err(diags, Invalid::ManyMatchers);
    }
    if let Some(e) = &m.exact {
        return Some(StrMatch::Exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        if p.is_empty() {
            return err(diags, Invalid::EmptyPrefix);
        }
        return Some(StrMatch::Prefix(p.clone()));
    }
    if let Some(r) = &m.regex {
        // RE2 semantics: a full match of the value.
        return match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(StrMatch::Regex(re)),
            Err(e) => err(diags, bad_regex(r, &e)),
        };
    }
    if allow_present {
        Some(StrMatch::Present)
    } else {
        err(diags, Invalid::NoMatcher)
    }
}

fn map_matches(
    l: &Loaded,
    base: &str,
    m: &std::collections::BTreeMap<String, istio::StringMatch>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(String, StrMatch)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (name, sm) in m {
        match string_match(l, &format!("{base}.{name}"), sm, true, diags) {
            Some(s) => out.push((name.to_ascii_lowercase(), s)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// [`map_matches`] keyed by header name, parsed once here (a request is then
/// looked up without re-validating the name each time).
fn header_matches(
    l: &Loaded,
    base: &str,
    m: &std::collections::BTreeMap<String, istio::StringMatch>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(http::HeaderName, StrMatch)> {
    let mut out = Vec::new();
    for (name, sm) in map_matches(l, base, m, diags).unwrap_or_default() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push((h, sm)),
            Err(_) => {
                let path = format!("{base}.{name}");
                diags.push(Diagnostic::error(
                    l.at(&path),
                    path,
                    Invalid::BadHeaderName(name.clone()),
                ));
            }
        }
    }
    out
}

/// Compiles one `match` block.
pub fn match_block(
    l: &Loaded,
    base: &str,
    m: &istio::HttpMatchRequest,
    diags: &mut Vec<Diagnostic>,
) -> Option<MatchBlock> {
    let n0 = diags.iter().filter(|d| d.is_error()).count();
    let one = |f: &Option<istio::StringMatch>, name: &str, diags: &mut Vec<Diagnostic>| {
        f.as_ref()
            .and_then(|s| string_match(l, &format!("{base}.{name}"), s, false, diags))
    };
    // Istio accepts pseudo-headers among `headers`: `:method`, `:authority`,
    // `:scheme`, `:path` match what the fields of the same name match.
    let mut plain = m.headers.clone();
    let mut pseudo = |name: &str, field: &Option<istio::StringMatch>| {
        let h = plain.remove(name);
        if h.is_some() && field.is_some() {
            let path = format!("{base}.headers.{name}");
            diags.push(Diagnostic::error(
                l.at(&path),
                path,
                Invalid::PseudoTwice(name.to_string()),
            ));
        }
        h.or_else(|| field.clone())
    };
    let (m_uri, m_scheme, m_method, m_authority) = (
        pseudo(":path", &m.uri),
        pseudo(":scheme", &m.scheme),
        pseudo(":method", &m.method),
        pseudo(":authority", &m.authority),
    );
    let uri = one(&m_uri, "uri", diags);
    let scheme = one(&m_scheme, "scheme", diags);
    let method = one(&m_method, "method", diags);
    let authority = one(&m_authority, "authority", diags);
    let headers = header_matches(l, &format!("{base}.headers"), &plain, diags);
    let without_headers = header_matches(
        l,
        &format!("{base}.withoutHeaders"),
        &m.without_headers,
        diags,
    );
    let query_params =
        map_matches(l, &format!("{base}.queryParams"), &m.query_params, diags).unwrap_or_default();
    let port = match m.port {
        Some(p) => match u16::try_from(p).ok().filter(|p| *p != 0) {
            Some(p) => Some(p),
            None => {
                let path = format!("{base}.port");
                diags.push(Diagnostic::error(l.at(&path), path, Invalid::PortRange(p)));
                None
            }
        },
        None => None,
    };
    if m.ignore_uri_case == Some(true) && matches!(uri, Some(StrMatch::Regex(_))) {
        let path = format!("{base}.ignoreUriCase");
        diags.push(Diagnostic::warning(l.at(&path), path, Invalid::RegexCase));
    }
    for (field, set) in [
        ("sourceLabels", !m.source_labels.is_empty()),
        ("gateways", !m.gateways.is_empty()),
        ("sourceNamespace", m.source_namespace.is_some()),
    ] {
        if set {
            let path = format!("{base}.{field}");
            let problem = Invalid::Unenforced {
                field: field.into(),
                consequence: ": the condition is ignored",
            };
            diags.push(Diagnostic::warning(l.at(&path), &path, problem));
        }
    }
    (diags.iter().filter(|d| d.is_error()).count() == n0).then(|| MatchBlock {
        name: m.name.clone(),
        uri,
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        scheme,
        method,
        authority,
        headers,
        without_headers,
        query_params,
        port,
    })
}

/// Checks the combinations Istio rejects and compiles the action (destinations aside).
pub fn action(
    l: &Loaded,
    base: &str,
    r: &istio::HttpRoute,
    diags: &mut Vec<Diagnostic>,
) -> Option<ParsedAction> {
    let mut err = |field: &str, problem: Invalid| {
        let path = format!("{base}{field}");
        diags.push(Diagnostic::error(l.at(&path), path, problem));
    };
    let has_route = !r.route.is_empty();
    if has_route && r.redirect.is_some() {
        err("", Invalid::Both("route", "redirect"));
        return None;
    }
    if has_route && r.direct_response.is_some() {
        err("", Invalid::Both("route", "directResponse"));
        return None;
    }
    if r.redirect.is_some() && r.direct_response.is_some() {
        err("", Invalid::Both("redirect", "directResponse"));
        return None;
    }
    if r.rewrite.is_some() && (r.redirect.is_some() || r.direct_response.is_some()) {
        err(".rewrite", Invalid::RewriteAndLocal);
        return None;
    }
    if let Some(rd) = &r.redirect {
        if r.fault.is_some() {
            err(".fault", Invalid::Both("fault", "redirect"));
            return None;
        }
        if rd.uri.is_none()
            && rd.authority.is_none()
            && rd.scheme.is_none()
            && rd.port.is_none()
            && rd.derive_port.is_none()
        {
            err(".redirect", Invalid::EmptyRedirect);
            return None;
        }
        let code = rd.redirect_code.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&code) {
            err(".redirect.redirectCode", Invalid::RedirectCode(code));
            return None;
        }
        let port = match rd.port.map(u16::try_from) {
            Some(Ok(p)) if p != 0 => Some(p),
            Some(_) => {
                err(".redirect.port", Invalid::RedirectPort);
                return None;
            }
            None => None,
        };
        return Some(ParsedAction::Redirect(Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            scheme: rd.scheme.clone(),
            port,
            derive_from_request: rd.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
            code: code as u16,
        }));
    }
    if let Some(dr) = &r.direct_response {
        let status = dr.status.unwrap_or(0);
        if !(200..=599).contains(&status) {
            err(".directResponse.status", Invalid::Status(status));
            return None;
        }
        if dr.body.as_ref().is_some_and(|b| b.bytes.is_some()) {
            err(".directResponse.body.bytes", Invalid::BodyBytes);
            return None;
        }
        return Some(ParsedAction::Direct {
            status: status as u16,
            body: dr.body.as_ref().and_then(|b| b.string.clone()),
        });
    }
    let mut rewrite = Rewrite::default();
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            err(".rewrite", Invalid::RewriteBoth);
            return None;
        }
        if rw.uri.is_none() && rw.authority.is_none() && rw.uri_regex_rewrite.is_none() {
            err(".rewrite", Invalid::EmptyRewrite);
            return None;
        }
        rewrite.uri = rw.uri.clone();
        rewrite.authority = rw.authority.clone();
        if let Some(rr) = &rw.uri_regex_rewrite {
            let pattern = rr.pattern.clone().unwrap_or_default();
            match Regex::new(&pattern) {
                Ok(re) => {
                    rewrite.uri_regex = Some((
                        re,
                        crate::route::path::re2_replacement(rr.rewrite.as_deref().unwrap_or("")),
                    ))
                }
                Err(e) => {
                    err(".rewrite.uriRegexRewrite.match", bad_regex(&pattern, &e));
                    return None;
                }
            }
        }
    }
    Some(ParsedAction::Route(rewrite))
}

/// Compiles `headers.request` / `headers.response` edits.
pub fn header_ops(
    l: &Loaded,
    base: &str,
    ops: Option<&istio::HeaderOperations>,
    diags: &mut Vec<Diagnostic>,
) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(ops) = ops else { return out };
    let mut parse = |k: &str, v: &str, field: &str| -> Option<(HeaderName, HeaderValue)> {
        let path = format!("{base}.{field}.{k}");
        // Setting `:authority` is setting Host (the caller makes it a rewrite).
        let k = if field == "set" && k.eq_ignore_ascii_case(":authority") {
            "host"
        } else {
            k
        };
        if k.starts_with(':') || k.eq_ignore_ascii_case("host") && field == "remove" {
            diags.push(Diagnostic::error(
                l.at(&path),
                &path,
                Invalid::FixedHeader(k.to_string()),
            ));
            return None;
        }
        match (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                diags.push(Diagnostic::error(
                    l.at(&path),
                    &path,
                    Invalid::BadHeader {
                        name: k.to_string(),
                        value: v.to_string(),
                    },
                ));
                None
            }
        }
    };
    out.set = ops
        .set
        .iter()
        .filter_map(|(k, v)| parse(k, v, "set"))
        .collect();
    out.add = ops
        .add
        .iter()
        .filter_map(|(k, v)| parse(k, v, "add"))
        .collect();
    out.remove = ops
        .remove
        .iter()
        .filter_map(|k| parse(k, "", "remove").map(|(n, _)| n))
        .collect();
    out
}
