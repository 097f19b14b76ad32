//! The verdict on a request head (RFC 9112 / RFC 9110): what it is, how its body is
//! framed, what it is routed by — or why lb refuses it. Stricter than hyper's server
//! wherever the two could differ, so whatever lb accepts hyper accepts too and the two
//! engines answer alike.

use super::connection::{self, tokens};
use super::{Limits, Refusal};

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body, and no framing header.
    None,
    /// `Content-Length: n` (n may be 0: the header goes upstream as sent).
    Length(u64),
    Chunked,
}

/// The request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'h> {
    /// `/path?query`.
    Origin(&'h str),
    /// `http://authority/path?query`: routed by its authority, forwarded in
    /// origin-form (`path_and_query`, `/` when empty).
    Absolute {
        authority: &'h str,
        path_and_query: &'h str,
    },
    /// `OPTIONS *`: routed like any request (its path `*` matches rules without a
    /// `uri` condition) and forwarded as `*`.
    Asterisk,
}

impl<'h> Target<'h> {
    /// The path and query as routing and the upstream see them (before
    /// normalisation).
    pub fn path_and_query(&self) -> &'h str {
        match *self {
            Target::Origin(p) => p,
            Target::Absolute { path_and_query, .. } => path_and_query,
            Target::Asterisk => "*",
        }
    }
}

/// A request head lb serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'h> {
    pub method: &'h str,
    /// The minor version: 0 (HTTP/1.0) or 1.
    pub version: u8,
    pub target: Target<'h>,
    /// What the request is routed by and forwarded with: the absolute-form target's
    /// authority, else the Host header. None: an HTTP/1.0 request without Host.
    pub authority: Option<&'h str>,
    /// The Host header as sent (exactly one for HTTP/1.1, at most one for 1.0).
    pub host: Option<&'h str>,
    pub body: Body,
    pub connection: connection::Options,
    /// The client connection closes after this exchange (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`).
    pub close: bool,
    /// An `Upgrade` header on an HTTP/1.1 request.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The first X-Forwarded-For, if it is visible ASCII.
    pub forwarded_for: Option<&'h [u8]>,
}

/// A complete request head, checked.
#[derive(Debug)]
pub struct Head<'s, 'b> {
    /// Its length in bytes (the body, if any, follows).
    pub len: usize,
    /// Its header fields, as sent.
    pub headers: &'s [httparse::Header<'b>],
    pub checked: Checked<'b>,
}

/// Parses and checks the request head at the start of `buf` with `headers` as
/// httparse's storage (its length is the header limit). Ok(None): the head is not
/// complete yet. `via`: lb's own Via marker (a request carrying it loops).
pub fn check<'s, 'b>(
    buf: &'b [u8],
    headers: &'s mut [httparse::Header<'b>],
    limits: &Limits,
    via: &[u8],
) -> Result<Option<Head<'s, 'b>>, Refusal> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.head_bytes => {
            return Err(Refusal::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(_) => return Err(Refusal::Malformed),
    };
    if len > limits.head_bytes {
        return Err(Refusal::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::Malformed);
    };
    let headers: &'s [httparse::Header<'b>] = req.headers;
    Ok(Some(Head {
        len,
        headers,
        checked: checked(method, target, version, headers, via)?,
    }))
}

/// The verdict on a parsed head.
pub fn checked<'h>(
    method: &'h str,
    target: &'h str,
    version: u8,
    headers: &[httparse::Header<'h>],
    via: &[u8],
) -> Result<Checked<'h>, Refusal> {
    if method == "CONNECT" {
        return Err(Refusal::Connect);
    }
    let target = parse_target(method, target)?;
    let mut c = Checked {
        method,
        version,
        target,
        authority: None,
        host: None,
        body: Body::None,
        connection: connection::Options::default(),
        close: false,
        upgrade: false,
        expect_continue: false,
        forwarded_for: None,
    };
    let mut length = None;
    let mut lengths = 0;
    // Refusals only lb's front end makes (417, 508) wait for the framing checks: on
    // hyper's path hyper's own parser answers 400 for broken framing before lb's
    // verdict is asked, so both engines must rank framing first.
    let mut deferred = None;
    // Transfer codings across every Transfer-Encoding field: how many, how many
    // `chunked`, and whether the last one is.
    let (mut coded, mut codings, mut chunked, mut last_chunked) = (false, 0, 0, false);
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if c.host.is_some() {
                return Err(Refusal::DuplicateHost);
            }
            let v = std::str::from_utf8(h.value).map_err(|_| Refusal::BadHost)?;
            if !v.is_empty() && !valid_authority(v) {
                return Err(Refusal::BadHost);
            }
            c.host = Some(v);
        } else if n.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = Some(digits(h.value).ok_or(Refusal::BadLength)?);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            for t in tokens(h.value) {
                codings += 1;
                last_chunked = t.eq_ignore_ascii_case(b"chunked");
                chunked += usize::from(last_chunked);
            }
        } else if n.eq_ignore_ascii_case("connection") {
            c.connection.add(h.value);
        } else if n.eq_ignore_ascii_case("upgrade") {
            c.upgrade = version == 1;
        } else if n.eq_ignore_ascii_case("expect") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"100-continue") {
                    c.expect_continue = true;
                } else {
                    deferred.get_or_insert(Refusal::Expectation);
                }
            }
        } else if n.eq_ignore_ascii_case("via") {
            if !via.is_empty() && carries(h.value, via) {
                deferred.get_or_insert(Refusal::Loop);
            }
        } else if n.eq_ignore_ascii_case("x-forwarded-for") && c.forwarded_for.is_none() {
            c.forwarded_for = Some(h.value)
                .filter(|v| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
        }
    }
    if lengths > 1 {
        return Err(Refusal::DuplicateLength);
    }
    if c.connection.names_protected {
        return Err(Refusal::ConnectionNamesFraming);
    }
    c.body = match (coded, length) {
        (true, _) if version == 0 => return Err(Refusal::CodingInHttp10),
        (true, Some(_)) => return Err(Refusal::LengthAndCoding),
        (true, None) if !last_chunked || chunked > 1 => return Err(Refusal::BadCoding),
        (true, None) if codings > 1 => return Err(Refusal::UnsupportedCoding),
        (true, None) => Body::Chunked,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::None,
    };
    if version == 1 && c.host.is_none() {
        return Err(Refusal::MissingHost);
    }
    if let Some(r) = deferred {
        return Err(r);
    }
    c.authority = match c.target {
        Target::Absolute { authority, .. } => Some(authority),
        _ => c.host,
    };
    c.close = c.connection.close || (version == 0 && !c.connection.keep_alive);
    Ok(c)
}

fn parse_target<'h>(method: &str, target: &'h str) -> Result<Target<'h>, Refusal> {
    if target.len() > MAX_TARGET {
        return Err(Refusal::TargetTooLong);
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(Target::Asterisk)
        } else {
            Err(Refusal::BadTarget)
        };
    }
    if target.starts_with('/') {
        check_path_chars(target)?;
        return Ok(Target::Origin(target));
    }
    let (scheme, rest) = target.split_once("://").ok_or(Refusal::BadTarget)?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(Refusal::BadTarget);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.is_empty() || !valid_authority(authority) {
        return Err(Refusal::BadHost);
    }
    // `http://host?q` would need a `/` lb does not have to hand; rare enough to refuse.
    let path_and_query = match path_and_query {
        "" => "/",
        p if p.starts_with('/') => {
            check_path_chars(p)?;
            p
        }
        _ => return Err(Refusal::BadTarget),
    };
    Ok(Target::Absolute {
        authority,
        path_and_query,
    })
}

/// The longest target hyper's URI holds (`http::uri`'s MAX_LEN).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// A byte class of `http::uri`'s path and query tables: what hyper's server accepts
/// in a target, so the lean path accepts no more.
const fn path_byte(b: u8, query: bool) -> bool {
    match b {
        0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E => true,
        // Not valid in a URI, accepted by `http` for clients that send JSON in paths.
        b'"' | b'{' | b'}' if !query => true,
        b'?' | b'`' | b'{' | b'}' if query => true,
        // UTF-8 (httparse checked the target is valid UTF-8).
        0x80..=0xFF => true,
        _ => false,
    }
}

fn check_path_chars(target: &str) -> Result<(), Refusal> {
    let mut query = false;
    for b in target.bytes() {
        match b {
            b'#' => return Err(Refusal::Fragment),
            b'?' if !query => query = true,
            _ if path_byte(b, query) => {}
            _ => return Err(Refusal::TargetChar),
        }
    }
    Ok(())
}

/// `host[:port]` (RFC 3986 §3.2.2): a reg-name, an IPv4 address or a bracketed IPv6
/// literal; no userinfo.
fn valid_authority(a: &str) -> bool {
    let (host, port) = match a.rfind(':') {
        Some(i) if !a[i..].contains(']') => (&a[..i], Some(&a[i + 1..])),
        _ => (a, None),
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        })
    } else {
        !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            })
    };
    port_ok && host_ok
}

/// A Content-Length value: 1 to 18 digits (no sign, no list, no spaces).
pub fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a Via value names `token` as a recipient (`1.1 token`, RFC 9110 §7.6.3).
fn carries(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|entry| {
        entry
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty())
            .nth(1)
            == Some(token)
    })
}

#[cfg(test)]
mod tests;
