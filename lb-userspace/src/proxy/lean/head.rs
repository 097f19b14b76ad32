//! The request side of the lean path: a head parsed, checked and routed, and the head
//! the upstream gets.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::MAX_HEADERS;
use crate::proxy::Shared;
use crate::proxy::forward::{self, ConnInfo, Decision, HOP_BY_HOP, Outcome};
use crate::route;

/// A request head read and routed: what to send where.
pub(super) struct Ready<'t> {
    pub(super) head_len: usize,
    pub(super) send: Send<'t>,
    pub(super) outcome: Outcome<'t>,
    /// Method and path for the access log (only when it is on).
    pub(super) log: Option<(String, String)>,
}

/// The upstream side of one request.
pub(super) struct Send<'t> {
    pub(super) endpoint: SocketAddr,
    /// The request head as the upstream gets it.
    pub(super) head: Vec<u8>,
    pub(super) body_len: u64,
    /// A HEAD request: the answer has no body whatever its headers say.
    pub(super) head_method: bool,
    /// Safe to send again on a fresh connection if a pooled one turns out closed: no
    /// body, and a method RFC 9110 calls idempotent.
    pub(super) replayable: bool,
    /// The client asked to close after this request.
    pub(super) close: bool,
    /// The rule's edits of the answer's headers.
    pub(super) answer_edits: &'t route::HeaderOps,
}

/// What the bytes read so far give.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing would allocate per request"
)]
pub(super) enum Parsed<'t> {
    Ready(Ready<'t>),
    /// The head is not complete yet.
    Partial,
    /// Not for the lean path: hyper serves the connection from here.
    Hyper,
}

pub(super) fn parse_request<'t>(
    buf: &[u8],
    shared: &Shared,
    table: &'t route::RouteTable,
    conn: &ConnInfo,
) -> Parsed<'t> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    // Absolute-form and CONNECT's authority-form are hyper's.
    if method == "CONNECT" || !path.starts_with('/') {
        return Parsed::Hyper;
    }
    let Some(facts) = Facts::of(req.headers) else {
        return Parsed::Hyper;
    };
    // Header matchers need a header map; most tables have none.
    let mut map = HeaderMap::new();
    if table.matches_headers {
        for h in req.headers.iter() {
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) else {
                return Parsed::Hyper;
            };
            map.append(n, v);
        }
    }
    let r = route::Request {
        method,
        scheme: "http",
        path_and_query: path,
        authority: facts.host.unwrap_or(""),
        headers: &map,
        dialled: conn.dialled,
    };
    let mut outcome = Outcome::default();
    // Only a forward whose path and Host go on the wire as they are, and whose header
    // edits leave the framing alone (hyper's path answers the rest: local answers, a
    // rewrite that made a bad path, edits of Content-Length or Transfer-Encoding).
    let target = match forward::decide(shared, table, conn, &r, facts.host.is_some(), &mut outcome)
    {
        Decision::Upstream(t)
            if !touches_framing(&t.rule.request_headers)
                && !touches_framing(&t.rule.response_headers)
                && t.path.starts_with('/')
                && plain(&t.path)
                && t.host.as_deref().is_none_or(plain) =>
        {
            t
        }
        _ => return Parsed::Hyper,
    };
    let peer_ip = conn.peer_ip.as_ref().map(HeaderValue::as_bytes);
    let head = upstream_head(method, &target, req.headers, &facts, peer_ip);
    Parsed::Ready(Ready {
        head_len,
        send: Send {
            endpoint: target.endpoint,
            head,
            body_len: facts.content_length,
            head_method: method == "HEAD",
            answer_edits: &target.rule.response_headers,
            replayable: facts.content_length == 0
                && matches!(
                    method,
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                ),
            close: facts.close,
        },
        outcome,
        log: shared
            .log
            .as_ref()
            .map(|_| (method.to_string(), path.to_string())),
    })
}

/// Whether header edits name a header the lean path frames messages by.
fn touches_framing(ops: &route::HeaderOps) -> bool {
    let framing =
        |n: &HeaderName| n == http::header::CONTENT_LENGTH || n == http::header::TRANSFER_ENCODING;
    ops.remove.iter().any(framing) || ops.set.iter().chain(&ops.add).any(|(n, _)| framing(n))
}

/// Whether `ops` replace or drop the header `name` (a set replaces every value).
pub(super) fn edits(ops: &route::HeaderOps, name: &str) -> bool {
    ops.remove
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r.as_str()))
        || ops
            .set
            .iter()
            .any(|(s, _)| name.eq_ignore_ascii_case(s.as_str()))
}

/// The header lines `ops` set and add (after the headers they replace are dropped):
/// what `HeaderOps::apply` does to a header map, on the wire.
pub(super) fn edited_lines(out: &mut Vec<u8>, ops: &route::HeaderOps) {
    for (n, v) in ops.set.iter().chain(&ops.add) {
        line(out, n.as_str(), v.as_bytes());
    }
}

/// Visible ASCII only: fit for a request line or a header value as it is.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// What the lean path needs to know of a request's headers.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Facts<'h> {
    pub(super) host: Option<&'h str>,
    pub(super) content_length: u64,
    /// `Connection: close`.
    pub(super) close: bool,
    /// Connection names headers other than the standard options: those are
    /// hop-by-hop too.
    pub(super) names_headers: bool,
    /// The first X-Forwarded-For, if it is visible ASCII (hyper's path: `to_str`).
    pub(super) forwarded_for: Option<&'h [u8]>,
}

impl<'h> Facts<'h> {
    /// None: the request is hyper's (framing or semantics the lean path leaves alone,
    /// or a head hyper would refuse: two Hosts, a bad or repeated Content-Length).
    pub(super) fn of(headers: &[httparse::Header<'h>]) -> Option<Self> {
        let mut f = Facts::default();
        let mut length = None;
        for h in headers {
            let n = h.name;
            if n.eq_ignore_ascii_case("host") {
                if f.host.is_some() {
                    return None;
                }
                f.host = Some(std::str::from_utf8(h.value).ok()?);
            } else if n.eq_ignore_ascii_case("content-length") {
                if length.is_some() {
                    return None;
                }
                length = Some(digits(h.value)?);
            } else if ["transfer-encoding", "expect", "upgrade"]
                .iter()
                .any(|x| n.eq_ignore_ascii_case(x))
            {
                return None;
            } else if n.eq_ignore_ascii_case("connection") {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        f.names_headers = true;
                    }
                }
            } else if n.eq_ignore_ascii_case("x-forwarded-for") && f.forwarded_for.is_none() {
                f.forwarded_for = Some(h.value)
                    .filter(|v| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
            }
        }
        f.content_length = length.unwrap_or(0);
        Some(f)
    }
}

pub(super) fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The comma-separated tokens of a Connection header.
pub(super) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

pub(super) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Whether a Connection header of `headers` names `name` (RFC 9110 §7.6.1).
pub(super) fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// The request head the upstream gets: the rewritten path, hop-by-hop headers
/// dropped, Host set when the rule rewrites it, X-Forwarded-For extended, the rule's
/// header edits applied.
pub(super) fn upstream_head(
    method: &str,
    target: &forward::Target<'_>,
    headers: &[httparse::Header<'_>],
    facts: &Facts<'_>,
    peer_ip: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for part in [
        method.as_bytes(),
        b" ",
        target.path.as_bytes(),
        b" HTTP/1.1\r\n",
    ] {
        out.extend_from_slice(part);
    }
    // The rule's edits come last, over everything else (as on hyper's path).
    let ops = &target.rule.request_headers;
    if let Some(host) = &target.host
        && !edits(ops, "host")
    {
        line(&mut out, "host", host.as_bytes());
    }
    for h in headers {
        let n = h.name;
        let drop = is_hop_by_hop(n)
            || n.eq_ignore_ascii_case("x-forwarded-for")
            || (target.host.is_some() && n.eq_ignore_ascii_case("host"))
            || (facts.names_headers && named_by_connection(headers, n))
            || edits(ops, n);
        if !drop {
            line(&mut out, n, h.value);
        }
    }
    if let Some(ip) = peer_ip
        && !edits(ops, "x-forwarded-for")
    {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = facts.forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
    }
    edited_lines(&mut out, ops);
    out.extend_from_slice(b"\r\n");
    out
}

pub(super) fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    for part in [name.as_bytes(), b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}
