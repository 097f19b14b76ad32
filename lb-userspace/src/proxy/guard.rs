//! hyper's path obeys the same verdict as the lean path. hyper's server parses request
//! heads with its own rules (it drops Content-Length when Transfer-Encoding is present,
//! accepts repeated Content-Lengths, two Hosts, ...), so this wrapper follows the bytes
//! hyper reads, finds every request head in them exactly where hyper will (the body of
//! each framed as [`h1::check`] says, chunked ones followed by the same strict scanner),
//! and queues one verdict per head. The handler takes the verdict of each request hyper
//! hands it, in order, and answers a refusal itself (forward.rs): no refused request
//! reaches a backend, and the two engines refuse the same requests.
//!
//! The guard never changes a byte: it only reads them. After a refused head, a body it
//! cannot follow, or an `Upgrade` request (a tunnel may follow; lb closes the
//! connection when the upgrade is declined), it stops: a request hyper would hand over
//! after that finds no verdict and is refused.
//!
//! Only hyper's HTTP/1 connections carry it (HTTP/2 frames its own messages).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h1::{self, ChunkScanner, Refusal};
use super::idle::Activity;

/// Verdicts of the request heads read so far, oldest first, shared with the handler.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<Result<(), Refusal>>>,
    /// Why a request body broke (a bad chunk, or the client ending mid-body): that
    /// request's failure is the client's (400), not the upstream's (502).
    broken_body: Mutex<Option<Refusal>>,
    /// The stream is inside a request body (a stall there is the client's).
    in_body: AtomicBool,
}

impl Verdicts {
    /// The verdict on the next request hyper hands over; none queued (the guard had
    /// stopped following the stream) is a refusal.
    pub fn next(&self) -> Result<(), Refusal> {
        self.queue
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or(Err(Refusal::Malformed))
    }

    /// Whether the client is still to send the rest of a request body.
    pub fn in_body(&self) -> bool {
        self.in_body.load(Ordering::Relaxed)
    }

    /// Why the body of the request in flight broke, if it did.
    pub fn body_broke(&self) -> Option<Refusal> {
        self.broken_body.lock().ok().and_then(|b| *b)
    }

    fn break_body(&self, why: Refusal) {
        if let Ok(mut b) = self.broken_body.lock() {
            b.get_or_insert(why);
        }
    }

    fn push(&self, v: Result<(), Refusal>) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(v);
        }
    }
}

/// Where in the stream the guard is.
enum State {
    /// Before or inside a request head (its bytes so far are in `head`).
    Head,
    /// Inside a body of so many more bytes.
    Length(u64),
    Chunked(ChunkScanner),
    /// Not following any more.
    Stopped,
}

/// Follows an HTTP/1 request stream and queues a verdict per head.
pub struct Follower {
    state: State,
    head: Vec<u8>,
    limits: h1::Limits,
    via: Arc<[u8]>,
    pub verdicts: Arc<Verdicts>,
    /// A head was refused: the connection ends after its answer.
    refused: bool,
}

impl Follower {
    pub fn new(limits: h1::Limits, via: Arc<[u8]>) -> Self {
        Follower {
            state: State::Head,
            head: Vec::new(),
            limits,
            via,
            verdicts: Arc::default(),
            refused: false,
        }
    }

    /// Takes in the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Stopped => return,
                State::Length(left) => {
                    let k = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= k as u64;
                    bytes = &bytes[k..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(scan) => match scan.feed(bytes) {
                    Ok(k) => {
                        bytes = &bytes[k..];
                        if scan.done() {
                            self.state = State::Head;
                        }
                    }
                    Err(_) => {
                        self.verdicts.break_body(Refusal::BadChunk);
                        self.state = State::Stopped;
                    }
                },
                State::Head => {
                    self.head.extend_from_slice(bytes);
                    // A head can only be complete (or over its bound) at a newline:
                    // a head dripped byte by byte is parsed once per line, not per byte.
                    let line_ended = memchr::memchr(b'\n', bytes).is_some();
                    bytes = &[];
                    if !line_ended && self.head.len() < self.limits.head_bytes {
                        return;
                    }
                    let rest = self.parse_head();
                    if let Some(rest) = rest {
                        // The bytes after the head go through the body states.
                        let head = std::mem::take(&mut self.head);
                        self.feed(&head[rest..]);
                    }
                }
            }
        }
    }

    /// Notes for the handler whether the stream is inside a body now.
    fn note_state(&self) {
        let in_body = matches!(self.state, State::Length(_) | State::Chunked(_));
        self.verdicts.in_body.store(in_body, Ordering::Relaxed);
    }

    /// The stream ended: inside a body, that body is cut short.
    fn end(&mut self) {
        if matches!(self.state, State::Length(_) | State::Chunked(_)) {
            self.verdicts.break_body(Refusal::Incomplete);
        }
        self.state = State::Stopped;
    }

    /// Parses the head gathered so far; Some(its length) once it is complete and the
    /// state is set for what follows.
    fn parse_head(&mut self) -> Option<usize> {
        let mut storage = vec![httparse::EMPTY_HEADER; self.limits.headers];
        let (len, body, upgrade) =
            match h1::check(&self.head, &mut storage, &self.limits, &self.via) {
                Ok(None) => return None,
                Ok(Some(h)) => (h.len, h.checked.body, h.checked.upgrade),
                Err(r) => {
                    self.verdicts.push(Err(r));
                    self.refused = true;
                    self.state = State::Stopped;
                    return None;
                }
            };
        self.verdicts.push(Ok(()));
        self.state = match body {
            _ if upgrade => State::Stopped,
            h1::Body::None | h1::Body::Length(0) => State::Head,
            h1::Body::Length(n) => State::Length(n),
            h1::Body::Chunked => State::Chunked(ChunkScanner::default()),
        };
        Some(len)
    }
}

/// A stream that can close gently (`ClientStream`): lingering after a refusal.
pub trait LingerOnClose {
    /// At close, send the FIN and read what is left for a moment before closing, so
    /// an answer written just before is not discarded by a reset.
    fn linger_on_close(&mut self);
}

pub struct Guarded<T> {
    inner: T,
    /// Bytes already read that the next reads hand out first (already followed).
    unread: bytes::Bytes,
    follower: Option<Follower>,
    /// Touched whenever a byte moves (the stream-idle bound, proxy/idle.rs).
    activity: Activity,
}

impl<T: LingerOnClose> Guarded<T> {
    /// `follower`: None for a stream that is not HTTP/1 (h2c).
    pub fn new(inner: T, follower: Option<Follower>, activity: Activity) -> Self {
        Self {
            inner,
            unread: bytes::Bytes::new(),
            follower,
            activity,
        }
    }

    /// Hands `bytes`, read before the guard was put on (the first bytes, and what the
    /// lean path left), out before anything new — followed here like any read.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        if let Some(f) = &mut self.follower {
            f.feed(&bytes);
            f.note_state();
            if f.refused {
                self.inner.linger_on_close();
            }
        }
        self.unread = bytes;
    }
}

impl<T: AsyncRead + Unpin + LingerOnClose> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            let chunk = self.unread.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        if let (Poll::Ready(Ok(())), Some(f)) = (&r, &mut this.follower) {
            let new = &buf.filled()[before..];
            if new.is_empty() && buf.remaining() > 0 {
                f.end();
            } else {
                f.feed(new);
            }
            f.note_state();
            // A head refused: hyper answers it and closes, maybe before reading what
            // follows.
            if f.refused {
                this.inner.linger_on_close();
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(chunks: &[&[u8]]) -> (Vec<Result<(), Refusal>>, Option<Refusal>) {
        let mut f = Follower::new(h1::Limits::default(), Arc::from(&b"lb-t"[..]));
        for c in chunks {
            f.feed(c);
        }
        let v = f.verdicts.clone();
        let mut out = Vec::new();
        while let Ok(mut q) = v.queue.lock() {
            match q.pop_front() {
                Some(x) => out.push(x),
                None => break,
            }
        }
        (out, v.body_broke())
    }

    #[test]
    fn one_verdict_per_head_across_bodies_and_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /\
              POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n\
              GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        let want = vec![Ok(()), Ok(()), Err(Refusal::DuplicateHost)];
        assert_eq!(verdicts_of(&[stream]), (want.clone(), None), "whole");
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts_of(&bytes), (want, None), "byte by byte");
    }

    #[test]
    fn a_broken_chunk_or_an_upgrade_stops_it() {
        let (v, broke) = verdicts_of(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]);
        assert_eq!((v, broke), (vec![Ok(())], Some(Refusal::BadChunk)));
        let (v, _) = verdicts_of(&[
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(v, vec![Ok(())], "tunnel bytes are not parsed");
    }
}
