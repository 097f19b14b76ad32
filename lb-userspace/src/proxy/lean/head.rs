//! The request side of the lean path: a head checked by the front end (proxy/h1),
//! routed, and the head the upstream gets.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::proxy::Shared;
use crate::proxy::forward::{self, ConnInfo, Decision, Outcome};
use crate::proxy::h1::connection::{is_hop_by_hop, named_by_connection};
use crate::proxy::h1::{self, Body, Checked, Refusal};
use crate::route;
use crate::route::policy::Policy;

/// A request head read and routed: what to send where.
pub(super) struct Ready<'t> {
    pub(super) head_len: usize,
    pub(super) job: Job<'t>,
    pub(super) outcome: Outcome<'t>,
    /// Method and path for the access log (only when it is on).
    pub(super) log: Option<(String, String)>,
}

/// What becomes of a request the lean path serves.
pub(super) enum Job<'t> {
    Forward(Send<'t>),
    /// lb's own plain answer (404, 503, a fault's abort), written here rather than by
    /// hyper's path, which would draw the weights and the fault's share again.
    Answer(Local<'t>),
}

/// lb's own answer, as the lean path writes it.
pub(super) struct Local<'t> {
    pub(super) status: u16,
    pub(super) body: &'t str,
    /// The connection ends after it: the client asked to.
    pub(super) close: bool,
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
    /// The rule's timeout, retries and fault.
    pub(super) policy: &'t Policy,
    /// The destination's endpoints (a retry goes to another).
    pub(super) endpoints: &'t [SocketAddr],
    /// The destination (its load balancer and outlier detection).
    pub(super) destination: &'t route::Destination,
    /// Its policy at the port the request goes to.
    pub(super) dest_policy: &'t route::policy::DestinationPolicy,
    /// The in-flight counts of `endpoints`, and `endpoint`'s index there.
    pub(super) in_flight: &'t [std::sync::atomic::AtomicU32],
    pub(super) index: usize,
    /// The fault's delay, if this request drew it.
    pub(super) delay: Option<std::time::Duration>,
    /// Where copies go (`mirror`).
    pub(super) mirrors: Vec<SocketAddr>,
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
    /// The front end refuses it (lb answers, the connection closes).
    Refused(Refusal, Option<(String, String)>),
}

/// Header fields parsed on the stack; a configured limit above it parses into a
/// vector (one allocation per request).
const STACK_HEADERS: usize = 100;

pub(super) fn parse_request<'t>(
    buf: &[u8],
    shared: &Shared,
    table: &'t route::RouteTable,
    conn: &ConnInfo,
) -> Parsed<'t> {
    let front = &shared.front;
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let storage = if front.limits.headers <= STACK_HEADERS {
        &mut stack[..front.limits.headers]
    } else {
        heap.resize(front.limits.headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    // HTTP/2's preface after a request: hyper ends the connection (an h2c client
    // speaks it first or not at all), so the lean path hands it over rather than
    // answer it otherwise.
    if buf.starts_with(b"PRI * HTTP/2.0\r\n") {
        return Parsed::Hyper;
    }
    let head = match h1::check(buf, storage, &front.limits, &front.via) {
        Ok(Some(h)) => h,
        Ok(None) => return Parsed::Partial,
        Err(r) => return Parsed::Refused(r, None),
    };
    let c = &head.checked;
    let log = shared
        .log
        .as_ref()
        .map(|_| (c.method.to_string(), c.target.path_and_query().to_string()));
    // hyper's: HTTP/1.0, chunked bodies, upgrades, 100-continue.
    if c.version != 1 || c.body == Body::Chunked || c.upgrade || c.expect_continue {
        return Parsed::Hyper;
    }
    // Header matchers need a header map; most tables have none.
    let mut map = HeaderMap::new();
    if table.matches_headers {
        for h in head.headers {
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) else {
                return Parsed::Hyper;
            };
            map.append(n, v);
        }
    }
    let authority = c.authority.unwrap_or("");
    let r = route::Request {
        method: c.method,
        scheme: "http",
        path_and_query: c.target.path_and_query(),
        authority,
        headers: &map,
        dialled: conn.dialled,
        peer: Some(conn.peer.ip()),
    };
    let mut outcome = Outcome::default();
    // Only a forward whose path and Host go on the wire as they are, and whose header
    // edits leave the framing alone (hyper's path answers the rest: local answers, a
    // rewrite that made a bad path, edits of Content-Length or Transfer-Encoding).
    let host_as_sent = c.host == Some(authority);
    let body_len = match c.body {
        Body::Length(n) => n,
        _ => 0,
    };
    let endpoints = &shared.client.endpoints;
    let target = match forward::decide(table, &r, host_as_sent, endpoints, &mut outcome) {
        Decision::Upstream(t)
            if !touches_framing(t.rule.edits.request())
                && !touches_framing(t.rule.edits.response())
                // A destination's own edits: hyper's path applies them.
                && t.destination.edits.request().is_empty()
                && t.destination.edits.response().is_empty()
                // A generated cookie for the answer: hyper's path sets it.
                && t.set_cookie.is_none()
                && (t.path.starts_with('/') || t.path == "*")
                && plain(&t.path)
                && t.host.as_deref().is_none_or(plain) =>
        {
            t
        }
        Decision::Refused(r) => return Parsed::Refused(r, log),
        // Redirects and direct responses (their headers) are hyper's to write, and so
        // is an answer to a request with a body, which hyper reads past to serve the
        // next request (the two-client fuzz target holds the engines to the same
        // answers).
        // Only the answers a draw decides (a fault's abort, a subset without endpoints):
        // hyper would draw again. lb's other answers stay hyper's, whose front end
        // refuses some heads the lean path routes (the two-client fuzz target found a
        // 404 here against hyper's 400).
        Decision::Local(l) if matches!(l.flag, "FI" | "UH") && body_len == 0 => {
            return Parsed::Ready(Ready {
                head_len: head.len,
                job: Job::Answer(Local {
                    status: l.status,
                    body: l.body,
                    close: c.close,
                }),
                outcome,
                log,
            });
        }
        _ => return Parsed::Hyper,
    };
    let peer_ip = conn.peer_ip.as_ref().map(HeaderValue::as_bytes);
    let up = upstream_head(
        &target,
        head.headers,
        c,
        peer_ip,
        front.via_header.as_bytes(),
    );
    Parsed::Ready(Ready {
        head_len: head.len,
        job: Job::Forward(Send {
            endpoint: target.endpoint,
            head: up,
            body_len,
            head_method: c.method == "HEAD",
            answer_edits: target.rule.edits.response(),
            replayable: body_len == 0
                && matches!(
                    c.method,
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                ),
            close: c.close,
            policy: &target.rule.policy,
            endpoints: target.endpoints,
            destination: target.destination,
            dest_policy: target.policy,
            in_flight: target.in_flight,
            index: target.index,
            delay: target.delay,
            mirrors: target.mirrors,
        }),
        outcome,
        log,
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

/// The request head the upstream gets: the rewritten path, hop-by-hop headers
/// dropped, Host set when the rule rewrites it (or the target was absolute-form),
/// X-Forwarded-For extended, the rule's header edits applied, lb's Via marker last.
/// The framing is lb's own: the client's Content-Length and Transfer-Encoding lines
/// never go through; a `content-length` written from the front end's verdict does, so
/// the upstream frames exactly the bytes lb forwards.
pub(super) fn upstream_head(
    target: &route::Target<'_>,
    headers: &[httparse::Header<'_>],
    c: &Checked<'_>,
    peer_ip: Option<&[u8]>,
    via: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for part in [
        c.method.as_bytes(),
        b" ",
        target.path.as_bytes(),
        b" HTTP/1.1\r\n",
    ] {
        out.extend_from_slice(part);
    }
    // The rule's edits come last, over everything else (as on hyper's path).
    let ops = target.rule.edits.request();
    if let Some(host) = &target.host
        && !edits(ops, "host")
    {
        line(&mut out, "host", host.as_bytes());
    }
    for h in headers {
        let n = h.name;
        let drop = is_hop_by_hop(n)
            || n.eq_ignore_ascii_case("content-length")
            || n.eq_ignore_ascii_case("x-forwarded-for")
            || (target.host.is_some() && n.eq_ignore_ascii_case("host"))
            || (c.connection.names_headers && named_by_connection(headers, n))
            || edits(ops, n);
        if !drop {
            line(&mut out, n, h.value);
        }
    }
    if let Body::Length(n) = c.body {
        let mut digits = itoa::Buffer::new();
        line(&mut out, "content-length", digits.format(n).as_bytes());
    }
    if let Some(ip) = peer_ip
        && !edits(ops, "x-forwarded-for")
    {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = c.forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
    }
    edited_lines(&mut out, ops);
    line(&mut out, "via", via);
    out.extend_from_slice(b"\r\n");
    out
}

pub(super) fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    for part in [name.as_bytes(), b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}
