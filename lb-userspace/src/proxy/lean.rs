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
mod head;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use http::Version;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use self::answer::{BodyEnd, parse_answer, with_date};
use self::head::{Parsed, Send, parse_request};
use super::forward::{self, ConnInfo, Logged, Outcome};
use super::h1::Refusal;
use super::pool::{Pool, Upstream, UpstreamError};
use super::{HEADER_READ_TIMEOUT, Shared, read_into};

/// Largest answer head accepted from an upstream (502 past it, as hyper's client).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

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
    /// Closed after lb's own answer to a request it did not read to its end (a
    /// refusal, a failed upstream): what the client sent beyond must not turn the
    /// close into a reset that discards the answer (the stream lingers).
    Linger,
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
                let read = tokio::select! {
                    r = tokio::time::timeout(HEADER_READ_TIMEOUT, read_into(client, buf)) => r,
                    _ = stopping.changed(), if buf.is_empty() => return Next::Closed,
                };
                let n = match read {
                    Ok(Ok(n)) if n > 0 => n,
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
        let mut status = 0;
        let mut failed = false;
        let keep = match exchange(client, buf, &shared.client, &req.send, &mut status).await {
            Ok(keep) => {
                outcome.status = status;
                keep && !req.send.close
            }
            // Nothing answered yet and the client failed: it ended (or broke) before
            // the body its Content-Length announced. Its fault, not the upstream's.
            Err(LeanError::Client(e)) if status == 0 => {
                tracing::debug!("lean path: client: {e}");
                let r = Refusal::Incomplete;
                let _ = client.write_all(&with_date(|d| r.answer(d))).await;
                outcome.refuse(r);
                false
            }
            Err(e) => {
                tracing::debug!("lean path: {e}");
                failed = true;
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
    }
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

/// Sends one request and relays its answer. Ok(whether the client connection may
/// go on); `status` is set once the answer's head is known (0: nothing was written
/// to the client).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    pool: &Pool,
    send: &Send<'_>,
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
    match BodyEnd::of(answer.framing) {
        // The head and the body bytes already read go out in one write.
        Some(mut end) => {
            let k = end.take(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
            out.extend_from_slice(&up.buf[..k]);
            up.buf.advance(k);
            write(client, &out).await?;
            while !end.done() {
                fill(&mut up, ep).await?;
                let k = end.take(&up.buf).map_err(|e| LeanError::Answer(ep, e))?;
                write(client, &up.buf[..k]).await?;
                up.buf.advance(k);
            }
        }
        None => {
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
    send: &Send<'_>,
) -> Result<answer::Answer, LeanError> {
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

#[cfg(test)]
mod tests;
