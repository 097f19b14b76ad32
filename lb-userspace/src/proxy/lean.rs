//! The lean HTTP/1.1 path. hyper's server and client handle everything (any framing,
//! upgrades, HTTP/2) and pay for it per connection and request: buffers, a dispatcher
//! task per upstream connection and the channels to it, header maps built and
//! re-encoded (~55 % and ~30 % of the proxy's user time with a new connection per
//! request, perf). Most requests need none of it: a head with at most a
//! Content-Length body, routed to an endpoint. Those are parsed with httparse (hyper's
//! own parser), routed by the same code as hyper's path (`forward::decide`), and
//! written to a pooled upstream socket as the client sent them — hop-by-hop headers
//! dropped, Host, X-Forwarded-For and the rule's header edits as hyper's path applies
//! them; the answer's head is parsed the same way and relayed with its body bytes
//! untouched (Content-Length, chunked or until close). Anything else — HTTP/1.0,
//! Transfer-Encoding, Expect or Upgrade on a request, a local answer (404, 503,
//! redirect, direct response), edits of the framing headers, a malformed head — goes
//! to hyper with the bytes read so far, for the rest of that connection.

mod answer;
#[doc(hidden)]
pub use answer::{Relayed, relay_for_fuzzing};
mod head;
mod retry;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use http::Version;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use self::answer::{BodyEnd, parse_answer, with_date};
use self::head::{Job, Local, Parsed, Send, parse_request};
use self::retry::{Replay, Tried};
use super::conns::Admitted;
use super::forward::{self, ConnInfo, Logged, Outcome};
use super::h1::Refusal;
use super::pool::{Pool, Upstream, UpstreamError};
use super::{Shared, read_into};

/// Largest answer head accepted from an upstream (502 past it, as hyper's client).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// hyper's path answers an upstream failure the same way.
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 23\r\nconnection: close\r\n\r\nupstream connect error\n";
/// An upstream silent for `Bounds::stream_idle` before its answer's head (both paths).
const GATEWAY_TIMEOUT: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 25\r\nconnection: close\r\n\r\nupstream request timeout\n";
/// Too many connects to the endpoint in progress (both paths).
const OVERFLOW: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 30\r\nconnection: close\r\n\r\nupstream connections overflow\n";

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
    /// No byte of the request's body for `Bounds::stream_idle`.
    #[error("client: body stalled")]
    ClientStalled,
    /// The upstream took no byte and sent none for `Bounds::stream_idle`, or for the
    /// retry policy's per-try timeout.
    #[error("upstream {0}: silent")]
    UpstreamSilent(SocketAddr),
    /// The rule's `timeout` passed.
    #[error("route timeout")]
    RouteTimeout,
}

/// The bounds on one step of an exchange: no progress for the stream-idle bound, and
/// the rule's deadlines — its `timeout` over the whole exchange, the retry policy's
/// per-try timeout until the answer's head. Each step waits on one timer, until the
/// nearest of them, so a rule's timeouts cost no timer of their own (a timer armed per
/// request showed as ~10 % of the proxy's CPU per request).
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub(super) idle: std::time::Duration,
    /// The rule's `timeout` ends here (`RouteTimeout`).
    pub(super) route: Option<tokio::time::Instant>,
    /// This try's per-try timeout ends here, and the try's endpoint (silent then).
    pub(super) try_ends: Option<(tokio::time::Instant, SocketAddr)>,
}

/// Which of a [`Clock`]'s bounds a step waits for.
#[derive(Clone, Copy)]
enum Past {
    Idle,
    Route,
    Try,
}

impl Clock {
    /// `io` within the bounds; `silent` is the error past the stream-idle one.
    async fn within<T>(
        &self,
        io: impl std::future::Future<Output = Result<T, LeanError>>,
        silent: impl FnOnce() -> LeanError,
    ) -> Result<T, LeanError> {
        let idle = tokio::time::Instant::now() + self.idle;
        let try_ends = self.try_ends.map(|(t, _)| t);
        let (due, past) = match (self.route, try_ends) {
            (Some(r), t) if r <= idle && t.is_none_or(|t| r <= t) => (r, Past::Route),
            (_, Some(t)) if t <= idle => (t, Past::Try),
            _ => (idle, Past::Idle),
        };
        match tokio::time::timeout_at(due, io).await {
            Ok(done) => done,
            Err(_) => Err(match (past, self.try_ends) {
                (Past::Route, _) => LeanError::RouteTimeout,
                // The try's time is up: its upstream was too slow, whatever this
                // step waited for.
                (Past::Try, Some((_, ep))) => LeanError::UpstreamSilent(ep),
                _ => silent(),
            }),
        }
    }
}

/// How the connection goes on after the lean path.
pub(super) enum Next {
    /// hyper takes over, with the bytes left in the buffer.
    Hyper,
    /// Closed: the client's last request is answered, an error, or the proxy drains.
    Closed,
    /// Closed after lb's own answer to a request it did not read to its end (a
    /// refusal, a failed upstream): what the client sent beyond must not turn the
    /// close into a reset that discards the answer (the stream lingers).
    Linger,
}

/// Serves the connection's requests while they fit the lean path. `buf` holds what
/// was read and not yet consumed, the start of a head that must be complete by
/// `head_due`. A next head may take `Bounds::idle` to begin and then `Bounds::head`
/// to be complete (Envoy's idle timeout, then Go's ReadHeaderTimeout).
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
    conn: &ConnInfo,
    stopping: &mut watch::Receiver<bool>,
    admitted: &mut Admitted,
    head_due: tokio::time::Instant,
) -> Next {
    let bounds = shared.front.bounds;
    // When the head begun in `buf` is due; None while none has begun.
    let mut due = (!buf.is_empty()).then_some(head_due);
    let mut idle_due = tokio::time::Instant::now() + bounds.idle;
    loop {
        let mut table;
        let req = loop {
            // The table of the moment the head is complete: a keep-alive connection
            // idle across a reload routes its next request by the new one.
            table = shared.table.borrow().clone();
            match parse_request(buf, shared, &table, conn) {
                Parsed::Ready(r) => break r,
                Parsed::Hyper => return Next::Hyper,
                Parsed::Refused(r, log) => {
                    refuse(client, shared, &table, conn, r, log).await;
                    return Next::Linger;
                }
                Parsed::Partial => {}
            }
            // Read until a line ends: a head can only be complete at a newline, so
            // one dripped byte by byte is parsed once per line, not per byte.
            loop {
                if buf.is_empty() && *stopping.borrow() {
                    return Next::Closed;
                }
                let until = due.unwrap_or(idle_due);
                let read = tokio::select! {
                    r = admitted.wait_for_head(tokio::time::timeout_at(until, read_into(client, buf))) => r,
                    _ = stopping.changed(), if buf.is_empty() => return Next::Closed,
                };
                let n = match read {
                    Some(Ok(Ok(n))) if n > 0 => {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + bounds.head);
                        n
                    }
                    // Part of a head, and no more of it in time.
                    Some(Err(_)) if !buf.is_empty() => {
                        refuse(client, shared, &table, conn, Refusal::HeadTimeout, None).await;
                        return Next::Linger;
                    }
                    // Closed, idle past the bound, or evicted to make room.
                    _ => return Next::Closed,
                };
                if memchr::memchr(b'\n', &buf[buf.len() - n..]).is_some()
                    || buf.len() >= shared.front.limits.head_bytes
                {
                    break;
                }
            }
        };
        let start = shared.log.as_ref().map(|_| Instant::now());
        buf.advance(req.head_len);
        let mut outcome = req.outcome;
        let (keep, failed) = match &req.job {
            Job::Forward(send) => {
                forward_one(client, buf, shared, send, &mut outcome, stopping).await
            }
            Job::Answer(local) => {
                outcome.status = local.status;
                let answer = with_date(|d| local_answer(local, d));
                let written = client.write_all(&answer).await.is_ok();
                (written && !local.close, false)
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
        forward::record(
            shared,
            &table,
            conn,
            &logged,
            &outcome,
            forward::Engine::Lean,
        );
        if failed {
            return Next::Linger;
        }
        if !keep || *stopping.borrow() {
            // Dropping the socket closes it, which sends the FIN (a shutdown first
            // would only add a syscall per connection).
            return Next::Closed;
        }
        // Pipelined bytes are a head begun now; otherwise the connection is idle.
        let now = tokio::time::Instant::now();
        (due, idle_due) = (
            (!buf.is_empty()).then(|| now + bounds.head),
            now + bounds.idle,
        );
    }
}

/// Forwards one request (after its fault's delay, within its route timeout) and
/// relays the answer, or writes lb's answer when there is none. Returns whether the
/// connection may go on, and whether it ended in a failure (it then lingers).
async fn forward_one<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
    send: &Send<'_>,
    outcome: &mut Outcome<'_>,
    stopping: &watch::Receiver<bool>,
) -> (bool, bool) {
    if let Some(d) = send.delay {
        tokio::time::sleep(d).await;
        outcome.flags = "DI";
    }
    let mut status = 0;
    let mut tried = Tried::default();
    let clock = Clock {
        idle: shared.front.bounds.stream_idle,
        // Envoy's route timeout: the whole exchange, answer included.
        route: send.policy.timeout.map(|t| tokio::time::Instant::now() + t),
        try_ends: None,
    };
    let sent = exchange(
        client,
        buf,
        &shared.client,
        send,
        clock,
        &mut status,
        &mut tried,
        || *stopping.borrow(),
    )
    .await;
    outcome.upstream = Some(tried.endpoint.unwrap_or(send.endpoint));
    mirror(shared, send, tried.body.take());
    if tried.retries > 0 {
        shared.metrics.retries.inc_by(u64::from(tried.retries));
    }
    match sent {
        Ok(keep) => {
            outcome.status = status;
            if tried.exhausted {
                outcome.flags = "URX";
            }
            (keep && !send.close, false)
        }
        // Nothing answered yet and the client failed: it ended (or broke, or
        // stalled) before the body its Content-Length announced. Its fault, not
        // the upstream's.
        Err(e @ (LeanError::Client(_) | LeanError::ClientStalled)) if status == 0 => {
            tracing::debug!("lean path: {e}");
            let r = match e {
                LeanError::ClientStalled => Refusal::BodyTimeout,
                _ => Refusal::Incomplete,
            };
            let _ = client.write_all(&with_date(|d| r.answer(d))).await;
            outcome.refuse(r);
            (false, false)
        }
        Err(e) => {
            tracing::debug!("lean path: {e}");
            if status == 0 {
                let (code, flags, answer) = match e {
                    LeanError::UpstreamSilent(_) | LeanError::RouteTimeout => {
                        (504, "UT", GATEWAY_TIMEOUT)
                    }
                    LeanError::Connect(UpstreamError::Overflow(_) | UpstreamError::Breaker(_)) => {
                        (503, "UO", OVERFLOW)
                    }
                    _ if tried.exhausted => (502, "UF,URX", BAD_GATEWAY),
                    _ => (502, "UF", BAD_GATEWAY),
                };
                (outcome.status, outcome.flags) = (code, flags);
                let _ = client.write_all(answer).await;
            } else {
                // The answer was cut: by the upstream (Envoy's UC; UT if it went
                // silent or the route timeout passed) or by the client (DC).
                outcome.status = status;
                outcome.flags = match e {
                    LeanError::Client(_) | LeanError::ClientStalled => "DC",
                    LeanError::UpstreamSilent(_) | LeanError::RouteTimeout => "UT",
                    _ => "UC",
                };
            }
            (false, true)
        }
    }
}

/// Sends the copies `send.mirrors` asks for, with the body as sent (a body lb did not
/// keep whole: no copy, counted as dropped).
fn mirror(shared: &Shared, send: &Send<'_>, body: Option<Vec<u8>>) {
    if send.mirrors.is_empty() {
        return;
    }
    let m = &shared.metrics;
    let body = match body {
        Some(b) => b,
        None if send.body_len == 0 => Vec::new(),
        None => {
            m.mirror_dropped.inc_by(send.mirrors.len() as u64);
            return;
        }
    };
    if let Some(head) = super::mirror::head_from_wire(&send.head) {
        super::mirror::copies(shared, &send.mirrors, &head, &body);
    }
}

/// lb's own plain answer, as hyper's server writes `forward::local`'s.
fn local_answer(l: &Local<'_>, date: &str) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(l.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let close = if l.close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\n{close}date: {date}\r\n\r\n{}",
        l.status,
        l.body.len(),
        l.body
    )
    .into_bytes()
}

/// Answers a request the front end refuses (the bytes hyper's path sends too) and
/// records it.
async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    shared: &Shared,
    table: &std::sync::Arc<crate::route::RouteTable>,
    conn: &ConnInfo,
    r: Refusal,
    log: Option<(String, String)>,
) {
    let _ = client.write_all(&with_date(|d| r.answer(d))).await;
    let mut outcome = Outcome::default();
    outcome.refuse(r);
    let (method, path) = log
        .as_ref()
        .map_or(("-", "-"), |(m, p)| (m.as_str(), p.as_str()));
    let logged = Logged {
        method,
        path,
        version: Version::HTTP_11,
        start: None,
    };
    forward::record(
        shared,
        table,
        conn,
        &logged,
        &outcome,
        forward::Engine::Lean,
    );
}

/// Sends one request (with the retries its policy allows, `tried` says how it went)
/// and relays the answer. Ok(whether the client connection may go on); `status` is
/// set once the answer's head is known (0: nothing was written to the client). Each
/// read and write ends at `clock`'s bounds. If `draining` says so when the answer
/// comes, the answer closes the connection.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument distinct"
)]
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    pool: &Pool,
    send: &Send<'_>,
    clock: Clock,
    status: &mut u16,
    tried: &mut Tried,
    draining: impl Fn() -> bool,
) -> Result<bool, LeanError> {
    let (mut up, answer, _admitted) =
        retry::attempts(client, buf, pool, send, clock, tried).await?;
    let ep = tried.endpoint.unwrap_or(send.endpoint);
    let silent = || LeanError::UpstreamSilent(ep);
    let client_stuck = || LeanError::Client(std::io::ErrorKind::TimedOut.into());
    *status = answer.status;
    up.buf.advance(answer.len);
    let mut answer = answer;
    if draining() && !answer.close_client {
        // The proxy drains: the client learns from this answer that the connection
        // ends, instead of sending its next request into a close (as hyper's path).
        answer.head.truncate(answer.head.len() - 2);
        answer.head.extend_from_slice(b"connection: close\r\n\r\n");
        answer.close_client = true;
    }
    let mut out = std::mem::take(&mut answer.head);
    let mut clean = answer.reusable;
    match BodyEnd::of(answer.framing) {
        // The head and the body bytes already read go out in one write.
        Some(mut end) => {
            let k = end.take(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
            out.extend_from_slice(&up.buf[..k]);
            up.buf.advance(k);
            clock.within(write(client, &out), client_stuck).await?;
            while !end.done() {
                clock.within(fill(&mut up, ep), silent).await?;
                let k = end.take(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
                clock
                    .within(write(client, &up.buf[..k]), client_stuck)
                    .await?;
                up.buf.advance(k);
            }
        }
        None => {
            clean = false;
            out.extend_from_slice(&up.buf);
            up.buf.clear();
            clock.within(write(client, &out), client_stuck).await?;
            loop {
                up.buf.reserve(8192);
                let read = async {
                    up.stream
                        .read_buf(&mut up.buf)
                        .await
                        .map_err(|e| LeanError::Upstream(ep, e))
                };
                if clock.within(read, silent).await? == 0 {
                    break;
                }
                clock.within(write(client, &up.buf), client_stuck).await?;
                up.buf.clear();
            }
        }
    }
    // Bytes past the answer mean the upstream is out of step: not reused. Nor is a
    // connection that carried the destination's maxRequestsPerConnection.
    up.served += 1;
    let spent = send
        .dest_policy
        .pool
        .max_requests
        .is_some_and(|m| up.served >= m);
    if clean && up.buf.is_empty() && !spent {
        pool.give_back_raw(ep, up, send.dest_policy.pool.idle_timeout);
    }
    Ok(!answer.close_client)
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

/// Writes the request upstream to `ep` — its head, the body bytes a previous try kept,
/// the rest from the client — and reads the answer's head.
async fn request<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    up: &mut Upstream,
    send: &Send<'_>,
    ep: SocketAddr,
    body: &mut Replay,
    clock: &Clock,
) -> Result<answer::Answer, LeanError> {
    let up_err = |e| LeanError::Upstream(ep, e);
    let silent = || LeanError::UpstreamSilent(ep);
    let upload = async { up.stream.write_all(&send.head).await.map_err(up_err) };
    clock.within(upload, silent).await?;
    if let Some(kept) = body.kept() {
        let upload = async { up.stream.write_all(kept).await.map_err(up_err) };
        clock.within(upload, silent).await?;
    }
    let mut left = send.body_len - body.consumed();
    while left > 0 {
        if buf.is_empty() {
            let read = async { read_into(client, buf).await.map_err(LeanError::Client) };
            if clock.within(read, || LeanError::ClientStalled).await? == 0 {
                return Err(LeanError::Client(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        // Consumed from the client once written (or not): kept for a retry if it can be.
        body.keep(&buf[..k]);
        let upload = async { up.stream.write_all(&buf[..k]).await.map_err(up_err) };
        let uploaded = clock.within(upload, silent).await;
        buf.advance(k);
        uploaded?;
        left -= k as u64;
    }
    up.buf.clear();
    loop {
        let answer = with_date(|date| {
            parse_answer(
                &up.buf,
                send.head_method,
                send.close,
                send.answer_edits,
                date,
            )
        });
        match answer {
            Err(e) => return Err(LeanError::Answer(ep, e)),
            // An interim answer (100 Continue, 103 Early Hints): hyper's client skips
            // them too.
            Ok(Some(a)) if a.interim => up.buf.advance(a.len),
            Ok(Some(a)) => return Ok(a),
            Ok(None) if up.buf.len() >= MAX_ANSWER_HEAD => {
                return Err(LeanError::Answer(ep, "head too large"));
            }
            Ok(None) => {
                up.buf.reserve(4096);
                let read = async { up.stream.read_buf(&mut up.buf).await.map_err(up_err) };
                match clock.within(read, silent).await? {
                    0 if up.buf.is_empty() => return Err(LeanError::Closed(ep)),
                    0 => return Err(LeanError::Answer(ep, "closed mid-head")),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
