//! The lean HTTP/1.1 path. hyper's server and client handle everything (any framing,
//! upgrades, HTTP/2) and pay for it per connection and request: buffers, a dispatcher
//! task per upstream connection and the channels to it, header maps built and
//! re-encoded (~55 % and ~30 % of the proxy's user time with a new connection per
//! request, perf). Most requests need none of it: a head with at most a
//! Content-Length body, routed to an endpoint with no header edits. Those are parsed
//! with httparse (hyper's own parser), routed by the same code as hyper's path
//! (`forward::decide`), and written to a pooled upstream socket as the client sent
//! them — hop-by-hop headers dropped, Host and X-Forwarded-For as hyper's path sets
//! them; the answer's head is parsed the same way and relayed with its body bytes
//! untouched (Content-Length, chunked or until close). Anything else — HTTP/1.0,
//! Transfer-Encoding, Expect or Upgrade on a request, a local answer (404, 503,
//! redirect, direct response), a rule with header edits, a malformed head — goes to
//! hyper with the bytes read so far, for the rest of that connection.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use super::forward::{self, ConnInfo, Decision, HOP_BY_HOP, Logged, Outcome};
use super::pool::{Pool, Upstream, UpstreamError};
use super::{HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, Shared, read_into};
use crate::route;

/// Headers parsed per message (httparse needs a bound; hyper's default): a request
/// with more goes to hyper; an answer with more is refused (502), as hyper's client
/// does.
const MAX_HEADERS: usize = 100;

/// hyper's path answers an upstream failure the same way.
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 23\r\nconnection: close\r\n\r\nupstream connect error\n";

/// Why an exchange ended early.
#[derive(Debug, thiserror::Error)]
pub enum LeanError {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("upstream {0}: {1}")]
    Upstream(SocketAddr, std::io::Error),
    /// The upstream closed before answering (a pooled socket it had closed).
    #[error("upstream {0}: closed before answering")]
    Closed(SocketAddr),
    #[error("upstream {0}: {1}")]
    Answer(SocketAddr, &'static str),
    #[error("client: {0}")]
    Client(std::io::Error),
}

/// How the connection goes on after the lean path.
pub(super) enum Next {
    /// hyper takes over, with the bytes left in the buffer.
    Hyper,
    /// Closed: the client's last request is answered, an error, or the proxy drains.
    Closed,
}

/// Serves the connection's requests while they fit the lean path. `buf` holds what
/// was read and not yet consumed.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
    conn: &ConnInfo,
    stopping: &mut watch::Receiver<bool>,
) -> Next {
    loop {
        let table = shared.table.borrow().clone();
        let req = loop {
            match parse_request(buf, shared, &table, conn) {
                Parsed::Ready(r) => break r,
                Parsed::Hyper => return Next::Hyper,
                // hyper answers 431.
                Parsed::Partial if buf.len() >= MAX_HEADER_BYTES => return Next::Hyper,
                Parsed::Partial => {}
            }
            if buf.is_empty() && *stopping.borrow() {
                return Next::Closed;
            }
            let read = tokio::select! {
                r = tokio::time::timeout(HEADER_READ_TIMEOUT, read_into(client, buf)) => r,
                _ = stopping.changed(), if buf.is_empty() => return Next::Closed,
            };
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return Next::Closed;
            }
        };
        let start = shared.log.as_ref().map(|_| Instant::now());
        buf.advance(req.head_len);
        let mut outcome = req.outcome;
        let mut status = 0;
        let keep = match exchange(client, buf, &shared.client, &req.send, &mut status).await {
            Ok(keep) => {
                outcome.status = status;
                keep && !req.send.close
            }
            Err(e) => {
                tracing::debug!("lean path: {e}");
                if status == 0 {
                    outcome.status = 502;
                    outcome.flags = "UF";
                    let _ = client.write_all(BAD_GATEWAY).await;
                } else {
                    outcome.status = status;
                }
                false
            }
        };
        let (method, path) = req
            .log
            .as_ref()
            .map_or(("", ""), |(m, p)| (m.as_str(), p.as_str()));
        let logged = Logged {
            method,
            path,
            version: Version::HTTP_11,
            start,
        };
        forward::record(shared, &table, conn, &logged, &outcome);
        if !keep || *stopping.borrow() {
            let _ = client.shutdown().await;
            return Next::Closed;
        }
    }
}

/// A request head read and routed: what to send where.
struct Ready<'t> {
    head_len: usize,
    send: Send,
    outcome: Outcome<'t>,
    /// Method and path for the access log (only when it is on).
    log: Option<(String, String)>,
}

/// The upstream side of one request.
struct Send {
    endpoint: SocketAddr,
    /// The request head as the upstream gets it.
    head: Vec<u8>,
    body_len: u64,
    /// A HEAD request: the answer has no body whatever its headers say.
    head_method: bool,
    /// Safe to send again on a fresh connection if a pooled one turns out closed: no
    /// body, and a method RFC 9110 calls idempotent.
    replayable: bool,
    /// The client asked to close after this request.
    close: bool,
}

enum Parsed<'t> {
    Ready(Ready<'t>),
    /// The head is not complete yet.
    Partial,
    /// Not for the lean path: hyper serves the connection from here.
    Hyper,
}

fn parse_request<'t>(
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
    // Only a plain forward: no header edits, and a path and Host that go on the wire
    // as they are (hyper's path answers the rest: local answers, edits, a rewrite
    // that made a bad path).
    let target = match forward::decide(shared, table, conn, &r, facts.host.is_some(), &mut outcome)
    {
        Decision::Upstream(t)
            if t.rule.request_headers.is_empty()
                && t.rule.response_headers.is_empty()
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

/// Visible ASCII only: fit for a request line or a header value as it is.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// What the lean path needs to know of a request's headers.
#[derive(Debug, Default, PartialEq)]
struct Facts<'h> {
    host: Option<&'h str>,
    content_length: u64,
    /// `Connection: close`.
    close: bool,
    /// Connection names headers other than the standard options: those are
    /// hop-by-hop too.
    names_headers: bool,
    /// The first X-Forwarded-For, if it is visible ASCII (hyper's path: `to_str`).
    forwarded_for: Option<&'h [u8]>,
}

impl<'h> Facts<'h> {
    /// None: the request is hyper's (framing or semantics the lean path leaves alone,
    /// or a head hyper would refuse: two Hosts, a bad or repeated Content-Length).
    fn of(headers: &[httparse::Header<'h>]) -> Option<Self> {
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

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The comma-separated tokens of a Connection header.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Whether a Connection header of `headers` names `name` (RFC 9110 §7.6.1).
fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// The request head the upstream gets: the rewritten path, hop-by-hop headers
/// dropped, Host set when the rule rewrites it, X-Forwarded-For extended.
fn upstream_head(
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
    if let Some(host) = &target.host {
        line(&mut out, "host", host.as_bytes());
    }
    for h in headers {
        let n = h.name;
        let drop = is_hop_by_hop(n)
            || n.eq_ignore_ascii_case("x-forwarded-for")
            || (target.host.is_some() && n.eq_ignore_ascii_case("host"))
            || (facts.names_headers && named_by_connection(headers, n));
        if !drop {
            line(&mut out, n, h.value);
        }
    }
    if let Some(ip) = peer_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = facts.forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    for part in [name.as_bytes(), b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}

/// Sends one request and relays its answer. Ok(whether the client connection may
/// go on); `status` is set once the answer's head is known (0: nothing was written
/// to the client).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    pool: &Pool,
    send: &Send,
    status: &mut u16,
) -> Result<bool, LeanError> {
    let ep = send.endpoint;
    let (mut up, mut reused) = take(pool, ep, send.replayable).await?;
    let answer = loop {
        match request(client, buf, &mut up, send).await {
            Ok(a) => break a,
            // A pooled socket the backend had closed: once more on a new one.
            Err(LeanError::Closed(_) | LeanError::Upstream(..)) if reused && send.replayable => {
                up = Pool::connect_raw(ep).await?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    };
    *status = answer.status;
    up.buf.advance(answer.len);
    let mut out = answer.head;
    let mut clean = answer.reusable;
    match answer.framing {
        Framing::Empty => write(client, &out).await?,
        Framing::Length(n) => {
            let mut left = n;
            let k = up
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&up.buf[..k]);
            up.buf.advance(k);
            left -= k as u64;
            write(client, &out).await?;
            while left > 0 {
                fill(&mut up, ep).await?;
                let k = up
                    .buf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                write(client, &up.buf[..k]).await?;
                up.buf.advance(k);
                left -= k as u64;
            }
        }
        Framing::Chunked => {
            let mut scan = ChunkScanner::default();
            let k = scan.feed(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
            out.extend_from_slice(&up.buf[..k]);
            up.buf.advance(k);
            write(client, &out).await?;
            while !scan.done() {
                fill(&mut up, ep).await?;
                let k = scan.feed(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
                write(client, &up.buf[..k]).await?;
                up.buf.advance(k);
            }
        }
        Framing::UntilClose => {
            clean = false;
            out.extend_from_slice(&up.buf);
            up.buf.clear();
            write(client, &out).await?;
            loop {
                up.buf.reserve(8192);
                let n = up
                    .stream
                    .read_buf(&mut up.buf)
                    .await
                    .map_err(|e| LeanError::Upstream(ep, e))?;
                if n == 0 {
                    break;
                }
                write(client, &up.buf).await?;
                up.buf.clear();
            }
        }
    }
    // Bytes past the answer mean the upstream is out of step: not reused.
    if clean && up.buf.is_empty() {
        pool.give_back_raw(ep, up);
    }
    Ok(!answer.close_client)
}

/// A pooled socket to `ep` (true) or a new one (false). A request that cannot be
/// sent again checks the pooled socket first.
async fn take(
    pool: &Pool,
    ep: SocketAddr,
    replayable: bool,
) -> Result<(Upstream, bool), LeanError> {
    while let Some(u) = pool.take_raw(ep) {
        if replayable || u.looks_alive() {
            return Ok((u, true));
        }
    }
    Ok((Pool::connect_raw(ep).await?, false))
}

async fn write<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> Result<(), LeanError> {
    client.write_all(bytes).await.map_err(LeanError::Client)
}

/// Reads more of the answer; the upstream closing mid-answer is an error.
async fn fill(up: &mut Upstream, ep: SocketAddr) -> Result<(), LeanError> {
    up.buf.reserve(8192);
    match up.stream.read_buf(&mut up.buf).await {
        Ok(0) => Err(LeanError::Answer(ep, "closed mid-answer")),
        Ok(_) => Ok(()),
        Err(e) => Err(LeanError::Upstream(ep, e)),
    }
}

/// Writes the request (and its body) upstream and reads the answer's head.
async fn request<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    up: &mut Upstream,
    send: &Send,
) -> Result<Answer, LeanError> {
    let ep = send.endpoint;
    let up_err = |e| LeanError::Upstream(ep, e);
    up.stream.write_all(&send.head).await.map_err(up_err)?;
    let mut left = send.body_len;
    while left > 0 {
        if buf.is_empty() {
            match read_into(client, buf).await {
                Ok(0) => {
                    return Err(LeanError::Client(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => return Err(LeanError::Client(e)),
            }
        }
        let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        up.stream.write_all(&buf[..k]).await.map_err(up_err)?;
        buf.advance(k);
        left -= k as u64;
    }
    up.buf.clear();
    loop {
        match with_date(|date| parse_answer(&up.buf, send.head_method, send.close, date)) {
            Err(e) => return Err(LeanError::Answer(ep, e)),
            // An interim answer (100 Continue, 103 Early Hints): hyper's client skips
            // them too.
            Ok(Some(a)) if a.interim => up.buf.advance(a.len),
            Ok(Some(a)) => return Ok(a),
            Ok(None) if up.buf.len() >= MAX_HEADER_BYTES => {
                return Err(LeanError::Answer(ep, "head too large"));
            }
            Ok(None) => {
                up.buf.reserve(4096);
                match up.stream.read_buf(&mut up.buf).await {
                    Ok(0) if up.buf.is_empty() => return Err(LeanError::Closed(ep)),
                    Ok(0) => return Err(LeanError::Answer(ep, "closed mid-head")),
                    Ok(_) => {}
                    Err(e) => return Err(up_err(e)),
                }
            }
        }
    }
}

/// How an answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An answer's head, read and turned into what the client gets.
#[derive(Debug, PartialEq)]
struct Answer {
    /// Bytes of the head (and of the interim answer, if it is one).
    len: usize,
    status: u16,
    interim: bool,
    framing: Framing,
    /// The upstream connection can carry another request.
    reusable: bool,
    /// The client connection must close after it (asked to, or the body ends at close).
    close_client: bool,
    /// The head for the client.
    head: Vec<u8>,
}

/// The Date header's value for now, formatted once a second (as hyper's server does).
fn with_date<T>(f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        f(text)
    })
}

/// Ok(None): the head is not complete yet. `date`: added as the Date header if the
/// answer has none (RFC 9110 §6.6.1: a proxy with a clock adds it; hyper's server
/// did).
fn parse_answer(
    bytes: &[u8],
    head_method: bool,
    client_close: bool,
    date: &str,
) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed head");
    };
    if status == 101 {
        return Err("101 without an upgrade");
    }
    let mut answer = Answer {
        len,
        status,
        interim: (100..200).contains(&status),
        framing: Framing::Empty,
        reusable: version == 1,
        close_client: client_close,
        head: Vec::new(),
    };
    if answer.interim {
        return Ok(Some(answer));
    }
    let (mut length, mut coded, mut chunked, mut names_headers) = (None, false, false, false);
    let mut dated = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("repeated Content-Length");
            }
            length = Some(digits(h.value).ok_or("bad Content-Length")?);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // Chunked must be the last coding (RFC 9112 §6.3).
            chunked = tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case("date") {
            dated = true;
        } else if n.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    answer.reusable = false;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    names_headers = true;
                }
            }
        }
    }
    if coded && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    answer.framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if coded {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if answer.framing == Framing::UntilClose {
        answer.reusable = false;
        answer.close_client = true;
    }
    let reason = resp.reason.unwrap_or("");
    let mut out = Vec::with_capacity(len + 32);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for h in resp.headers.iter() {
        let n = h.name;
        // Transfer-Encoding stays: the body goes through as it was coded.
        let drop = (is_hop_by_hop(n) && !n.eq_ignore_ascii_case("transfer-encoding"))
            || (names_headers && named_by_connection(resp.headers, n));
        if !drop {
            line(&mut out, n, h.value);
        }
    }
    if !dated {
        line(&mut out, "date", date.as_bytes());
    }
    if answer.close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    answer.head = out;
    Ok(Some(answer))
}

/// Finds where a chunked body ends in the bytes relayed (RFC 9112 §7.1); the bytes
/// themselves go through unchanged.
#[derive(Debug, Default)]
struct ChunkScanner {
    state: Chunk,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Chunk {
    #[default]
    Size,
    /// Chunk extensions (or whitespace) up to the CR.
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line, or the final CRLF.
    Trailer,
    TrailerLine,
    FinalLf,
    Done,
}

impl ChunkScanner {
    /// How many of `bytes` belong to the body (all of them until its end).
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                let k = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += k;
                let left = left - k as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err("chunk size too large");
                    }
                    self.digits += 1;
                    let v = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(v);
                    Chunk::Size
                }
                (Chunk::Size, b';' | b' ' | b'\t') if self.digits > 0 => Chunk::Ext,
                (Chunk::Size, b'\r') if self.digits > 0 => Chunk::SizeLf,
                (Chunk::Size, _) => return Err("bad chunk size"),
                (Chunk::Ext, b'\r') => Chunk::SizeLf,
                (Chunk::Ext, _) => Chunk::Ext,
                (Chunk::SizeLf, b'\n') => {
                    let size = std::mem::take(&mut self.size);
                    self.digits = 0;
                    if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::Trailer, b'\r') => Chunk::FinalLf,
                // A bare LF ends a line too (RFC 9112 §2.2 lets a recipient accept it).
                (Chunk::Trailer, b'\n') => Chunk::Done,
                (Chunk::TrailerLine, b'\n') => Chunk::Trailer,
                (Chunk::Trailer | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::FinalLf, b'\n') => Chunk::Done,
                _ => return Err("bad chunked framing"),
            };
        }
        Ok(i)
    }

    fn done(&self) -> bool {
        self.state == Chunk::Done
    }
}

#[cfg(test)]
mod tests;
