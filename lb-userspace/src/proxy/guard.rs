//! Request-smuggling guard. hyper resolves a request carrying both Content-Length and
//! Transfer-Encoding by dropping Content-Length (RFC 9112 allows it), so the handler
//! can no longer tell. lb refuses such requests instead: this wrapper watches the bytes
//! the client sends and poisons the connection when a request head carries both; the
//! handler then answers 400 and the request reaches no backend.
//!
//! Only hyper's path needs it (the lean path hands any request with
//! Transfer-Encoding to hyper), so it wraps a connection when hyper takes it over.
//! Cost there: one SIMD substring search per read; the head is only parsed when a
//! Transfer-Encoding header is present (rare in requests).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of the previous read kept, so a header split across two reads is still seen.
const CARRY: usize = 512;

pub struct Guarded<T> {
    inner: T,
    /// Lower-cased tail of the previous read, then the current read.
    scratch: Vec<u8>,
    /// Bytes already read (and inspected) that the next reads hand out first.
    unread: bytes::Bytes,
    pub poisoned: Arc<AtomicBool>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            scratch: Vec::new(),
            unread: bytes::Bytes::new(),
            poisoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hands `bytes`, read before the guard was put on (the first bytes, and what the
    /// lean path left), out before anything new — inspected here like any read.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        self.inspect(&bytes);
        self.unread = bytes;
    }

    fn inspect(&mut self, new: &[u8]) {
        let keep = self.scratch.len().min(CARRY);
        self.scratch.drain(..self.scratch.len() - keep);
        self.scratch.extend(new.iter().map(u8::to_ascii_lowercase));
        // Built once: constructing a searcher per read showed in the profile.
        static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"transfer-encoding"));
        if FINDER.find(&self.scratch).is_some() && has_conflicting_head(&self.scratch) {
            self.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether any request head (the lines before a blank line) in `bytes` (lower case)
/// has both a Content-Length and a Transfer-Encoding header.
pub fn has_conflicting_head(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n\r\n").any(|block| {
        let mut cl = false;
        let mut te = false;
        for line in block.split("\r\n") {
            let line = line.trim_start();
            cl |= line.starts_with("content-length:");
            te |= line.starts_with("transfer-encoding:");
        }
        cl && te
    })
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
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
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.inspect(new);
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_headers_in_one_head_only() {
        assert!(has_conflicting_head(
            b"post / http/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
        assert!(!has_conflicting_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
        assert!(!has_conflicting_head(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
    }
}
