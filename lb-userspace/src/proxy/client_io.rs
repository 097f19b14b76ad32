//! Accepted client sockets, read and written with plain syscalls until one would
//! block, and only then registered with tokio's reactor (epoll).
//!
//! tokio's `TcpListener::accept` registers every socket (`epoll_ctl` ADD) and its drop
//! deregisters it (DEL): two syscalls per connection, ~6 % of the proxy's CPU with a
//! new connection per request (perf, BENCHMARKS.md). A busy proxy accepts a batch of
//! connections at once and reaches each one after its client has written the request,
//! so the first read finds it, the answer fits the empty send buffer, and the socket
//! closes without ever being registered (HAProxy's "speculative I/O" does the same).
//! A read or write that would block registers the socket; from then on it is an
//! ordinary reactor-driven socket (keep-alive connections pay one failed read).

use std::io::{self, IoSlice};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct ClientStream {
    state: State,
    /// Close gently: see [`ClientStream::linger_on_close`].
    linger: bool,
}

/// How long, and for how many bytes, a gently closed connection is read before its
/// descriptor closes: enough for a client to read an answer written just before.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

enum State {
    Raw(OwnedFd),
    Registered(AsyncFd<OwnedFd>),
    /// Registration failed; every operation reports that error's kind.
    Failed(io::ErrorKind),
}

/// Accepts one connection from a non-blocking listener: the socket comes back
/// non-blocking and close-on-exec from the one syscall (std's accept would need a
/// second to make it non-blocking). `WouldBlock` when none is pending.
pub fn accept(listener: RawFd) -> io::Result<(ClientStream, SocketAddr)> {
    // SAFETY: zeroed sockaddr_storage is a valid value; the kernel writes at most
    // `len` bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid pointers to the storage and its length.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::from_mut(&mut addr).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor this process now owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = peer_addr(&addr).ok_or_else(|| io::Error::other("accepted a non-IP socket"))?;
    Ok((
        ClientStream {
            state: State::Raw(fd),
            linger: false,
        },
        peer,
    ))
}

fn peer_addr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The result of a syscall returning a byte count.
fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn recv(fd: RawFd, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: only the kernel writes into the unfilled part, at most its length.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: the kernel writes at most `unfilled.len()` bytes into the buffer.
    let n = result(unsafe { libc::recv(fd, unfilled.as_mut_ptr().cast(), unfilled.len(), 0) })?;
    // SAFETY: the kernel initialised the first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: a valid buffer of the length passed; MSG_NOSIGNAL: EPIPE, not SIGPIPE.
    result(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

fn sendv(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid; IoSlice is ABI-compatible with iovec.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr().cast_mut().cast();
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: msg points at live buffers for the call's duration.
    result(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })
}

impl ClientStream {
    /// Registers the socket with the reactor after a syscall would have blocked.
    fn register(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Failed(io::ErrorKind::Other));
        self.state = match state {
            // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same
            // descriptor, until the AsyncFd drops it.
            State::Raw(fd) => match unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
            } {
                Ok(a) => State::Registered(a),
                Err(e) => State::Failed(e.into_parts().1.kind()),
            },
            other => other,
        };
    }

    /// Runs `op` on the socket: at once while unregistered, else when the reactor
    /// says the socket is ready for `interest`.
    fn poll_io<R>(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        mut op: impl FnMut(RawFd) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            match &self.state {
                State::Raw(fd) => match op(fd.as_raw_fd()) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.register(),
                    r => return Poll::Ready(r),
                },
                State::Registered(a) => {
                    let mut guard = if interest.is_readable() {
                        ready!(a.poll_read_ready(cx))?
                    } else {
                        ready!(a.poll_write_ready(cx))?
                    };
                    if let Ok(r) = guard.try_io(|a| op(a.get_ref().as_raw_fd())) {
                        return Poll::Ready(r);
                    }
                }
                State::Failed(kind) => return Poll::Ready(Err((*kind).into())),
            }
        }
    }
}

impl ClientStream {
    /// Answers a connection lb will not serve with `answer`, then closes it, without
    /// waiting for anything: one non-blocking send, then what the client has sent so
    /// far is read and dropped (so the close is a FIN, not a reset that could
    /// discard the answer).
    pub fn refuse(self, answer: &[u8]) {
        let fd = self.as_raw_fd();
        // SAFETY: a send from a live buffer on a descriptor this stream owns.
        unsafe {
            libc::send(
                fd,
                answer.as_ptr().cast(),
                answer.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        let mut scratch = [0u8; 4096];
        for _ in 0..LINGER_BYTES / scratch.len() {
            // SAFETY: the kernel writes at most `scratch.len()` bytes into it.
            let n = unsafe {
                libc::recv(
                    fd,
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
        }
    }
}

impl super::guard::LingerOnClose for ClientStream {
    /// At close, sends the FIN, then reads and drops what the client still sends for
    /// at most [`LINGER`] (or [`LINGER_BYTES`]) before the descriptor closes. Closing
    /// a socket with unread input makes the kernel reset the connection, and a reset
    /// can discard an answer the client has not read yet — a refusal's 400, written
    /// just before (Apache's and nginx's lingering close). Only connections lb ends
    /// with input unread pay for it.
    fn linger_on_close(&mut self) {
        self.linger = true;
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if !self.linger {
            return;
        }
        let fd = match std::mem::replace(&mut self.state, State::Failed(io::ErrorKind::Other)) {
            State::Raw(fd) => fd,
            State::Registered(a) => a.into_inner(),
            State::Failed(_) => return,
        };
        // SAFETY: shutdown of a descriptor this stream owns.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(fd));
        }
    }
}

/// Reads and drops what arrives on `fd` until the client closes, [`LINGER`] passes or
/// [`LINGER_BYTES`] came; then `fd` closes.
async fn drain(fd: OwnedFd) {
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open until it drops it.
    let Ok(a) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        let Ok(Ok(mut ready)) = tokio::time::timeout_at(deadline, a.readable()).await else {
            return;
        };
        // SAFETY: the kernel writes at most `scratch.len()` bytes into it.
        match ready.try_io(|a| {
            result(unsafe {
                libc::recv(a.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len(), 0)
            })
        }) {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => total += n,
            Err(_would_block) => {}
        }
    }
}

impl std::os::fd::AsRawFd for ClientStream {
    fn as_raw_fd(&self) -> RawFd {
        match &self.state {
            State::Raw(fd) => fd.as_raw_fd(),
            State::Registered(a) => a.get_ref().as_raw_fd(),
            State::Failed(_) => -1,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, Interest::READABLE, |fd| recv(fd, buf).map(|_| ()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Interest::WRITABLE, |fd| send(fd, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, Interest::WRITABLE, |fd| sendv(fd, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Failed(kind) = &self.state {
            return Poll::Ready(Err((*kind).into()));
        }
        let fd = self.as_raw_fd();
        // SAFETY: shutdown on a descriptor this stream owns.
        let r = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        Poll::Ready(if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn registered(s: &ClientStream) -> bool {
        matches!(s.state, State::Registered(_))
    }

    /// A request already there is read with no registration; a read that would block
    /// registers the socket and completes when the client writes again; writes and
    /// the half close reach the client.
    #[tokio::test(flavor = "current_thread")]
    async fn registers_only_when_a_read_would_block() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client.write_all(b"first").expect("write");
        let (mut s, peer) = loop {
            match accept(listener.as_raw_fd()) {
                Ok(a) => break a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(peer, client.local_addr().expect("client addr"));
        // Loopback delivers the bytes before write() returns.
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.expect("read"), 5);
        assert_eq!(&buf[..5], b"first");
        assert!(!registered(&s), "a read that found data must not register");

        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            client.write_all(b"second").expect("write");
            client
        });
        let n = s.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"second");
        assert!(registered(&s), "a read that would block registers");
        let mut client = writer.join().expect("writer");

        s.write_all(b"answer").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read to end");
        assert_eq!(got, b"answer");
    }
}
