//! Upstream connections: a small hand-kept pool of HTTP/1.1 senders per endpoint, and
//! of plain sockets for the lean path.
//!
//! hyper-util's legacy `Client` costs about a quarter more instructions per request
//! here (an extra task hop per re-pooled connection, an absolute URI and pool key
//! built per request; shared/PERF-NOTES.md). A request takes the most recently used
//! sender that is ready (LIFO keeps few connections warm), else opens a connection.
//! Senders go back at once; one still busy with its response body is skipped.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};

use super::replay::UpBody;
use hyper_util::rt::TokioIo;

use crate::fasthash::HashMap;

/// A sender and the requests its connection carried.
pub type Sender = (SendRequest<UpBody>, u32);

/// Idle senders kept per endpoint (beyond: dropped, the connection closes).
const MAX_IDLE: usize = 256;

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect {0}: timed out")]
    Timeout(SocketAddr),
    /// `Bounds::max_pending_connects` connects to it are in progress already.
    #[error("connect {0}: too many connects in progress")]
    Overflow(SocketAddr),
    /// The destination is at a `connectionPool` bound.
    #[error("destination at its connectionPool bound: {0}")]
    Breaker(#[from] super::limits::Overflow),
    /// The retry policy's per-try timeout passed before the answer's head.
    #[error("{0}: no answer within the per-try timeout")]
    TryTimeout(SocketAddr),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Idle connections per endpoint, most recently used last, each with the end of its
/// destination's `idleTimeout` (None: kept while the endpoint is used).
type Idle<T> = Mutex<HashMap<SocketAddr, Vec<(T, Option<Instant>)>>>;

pub struct Pool {
    idle: Idle<Sender>,
    /// The lean path's idle sockets (proxy/lean.rs).
    raw: Idle<Upstream>,
    /// Connects in progress per endpoint (only endpoints with one are present).
    pending: Mutex<HashMap<SocketAddr, usize>>,
    connect_timeout: Duration,
    max_pending: usize,
    /// What is known of each endpoint: requests in flight, outlier detection.
    pub endpoints: super::balance::Endpoints,
    /// Each destination's `connectionPool` bounds.
    pub breakers: super::limits::Breakers,
    /// Some idle connection has an `idleTimeout` ([`Pool::sweep`] has work).
    timed: std::sync::atomic::AtomicBool,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new(&super::bounds::Bounds::default())
    }
}

/// A connect in progress, counted against its endpoint's bound until dropped.
struct Pending<'p> {
    pool: &'p Pool,
    ep: SocketAddr,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.pending.lock()
            && let Some(n) = p.get_mut(&self.ep)
        {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.ep);
            }
        }
    }
}

/// An upstream socket of the lean path, with the buffer its answers are read into
/// (kept with it: one allocation per connection, not per request).
pub struct Upstream {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
    /// Requests it carried (`maxRequestsPerConnection`).
    pub served: u32,
}

impl Upstream {
    /// Whether an idle socket still looks usable: the backend has not closed it, and
    /// it holds no stray bytes (one non-blocking peek, no wait).
    pub fn looks_alive(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a valid socket and a one-byte buffer we own.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                std::ptr::from_mut(&mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// Whether an idle connection whose timeout ends at `until` is past it (dropped then:
/// closed, never used again).
fn stale(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|u| u <= now)
}

/// Drops the connections of `idle` past their `idleTimeout`.
fn sweep_idle<T>(idle: &Idle<T>, now: Instant) {
    if let Ok(mut idle) = idle.lock() {
        idle.retain(|_, list| {
            list.retain(|(_, until)| !stale(*until, now));
            !list.is_empty()
        });
    }
}

impl Pool {
    pub fn new(bounds: &super::bounds::Bounds) -> Self {
        Pool {
            idle: Mutex::default(),
            raw: Mutex::default(),
            pending: Mutex::default(),
            connect_timeout: bounds.connect,
            max_pending: bounds.max_pending_connects,
            endpoints: Default::default(),
            breakers: Default::default(),
            timed: Default::default(),
        }
    }

    /// Keeps an idle connection to `ep` (its destination's `idleTimeout` from now), up
    /// to [`MAX_IDLE`] (beyond: dropped, closed).
    fn keep_idle<T>(&self, idle: &Idle<T>, ep: SocketAddr, c: T, idle_timeout: Option<Duration>) {
        let until = idle_timeout.map(|t| {
            self.timed.store(true, std::sync::atomic::Ordering::Relaxed);
            Instant::now() + t
        });
        if let Ok(mut idle) = idle.lock() {
            let list = idle.entry(ep).or_default();
            if list.len() < MAX_IDLE {
                list.push((c, until));
            }
        }
    }

    /// Closes the idle connections past their destination's `idleTimeout` (the proxy
    /// calls it every second; a request finds none of them either way).
    pub fn sweep(&self) {
        if self.timed.load(std::sync::atomic::Ordering::Relaxed) {
            let now = Instant::now();
            sweep_idle(&self.idle, now);
            sweep_idle(&self.raw, now);
        }
    }

    /// Idle connections kept, both kinds (tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        fn count<T>(m: &HashMap<SocketAddr, Vec<T>>) -> usize {
            m.values().map(Vec::len).sum()
        }
        self.idle.lock().map_or(0, |m| count(&m)) + self.raw.lock().map_or(0, |m| count(&m))
    }

    fn take_ready(&self, ep: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&ep)?;
        // Closed and stale senders are dropped on the way; busy ones stay for later.
        let now = Instant::now();
        list.retain(|(s, until)| !s.0.is_closed() && !stale(*until, now));
        let i = list.iter().rposition(|(s, _)| s.0.is_ready())?;
        Some(list.swap_remove(i).0)
    }

    /// A lean-path socket to `ep`: the most recently used idle one, if any (those past
    /// their `idleTimeout` are dropped).
    pub fn take_raw(&self, ep: SocketAddr) -> Option<Upstream> {
        let mut raw = self.raw.lock().ok()?;
        let list = raw.get_mut(&ep)?;
        let now = Instant::now();
        while let Some((u, until)) = list.pop() {
            if !stale(until, now) {
                return Some(u);
            }
        }
        None
    }

    /// Keeps a lean-path socket whose last exchange ended cleanly, for `idle_timeout`
    /// (the destination's; None: no bound).
    pub fn give_back_raw(&self, ep: SocketAddr, u: Upstream, idle_timeout: Option<Duration>) {
        self.keep_idle(&self.raw, ep, u, idle_timeout);
    }

    /// A new lean-path socket to `ep`, within `timeout` (the destination's
    /// `connectTimeout`) or `--connect-timeout`.
    pub async fn connect_raw(
        &self,
        ep: SocketAddr,
        timeout: Option<Duration>,
    ) -> Result<Upstream, UpstreamError> {
        Ok(Upstream {
            stream: self.open(ep, timeout).await?,
            buf: bytes::BytesMut::with_capacity(4096),
            served: 0,
        })
    }

    /// A TCP connection to `ep`, Nagle off (requests and answers are whole writes),
    /// within the connect timeout and the bound on connects in progress to `ep`.
    async fn open(
        &self,
        ep: SocketAddr,
        timeout: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, UpstreamError> {
        let _pending = {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| UpstreamError::Overflow(ep))?;
            let n = p.entry(ep).or_insert(0);
            if *n >= self.max_pending {
                return Err(UpstreamError::Overflow(ep));
            }
            *n += 1;
            Pending { pool: self, ep }
        };
        let bound = timeout.unwrap_or(self.connect_timeout);
        let stream = tokio::time::timeout(bound, tokio::net::TcpStream::connect(ep))
            .await
            .map_err(|_| UpstreamError::Timeout(ep))?
            .map_err(|e| UpstreamError::Connect(ep, e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(
        &self,
        ep: SocketAddr,
        upgrades: bool,
        timeout: Option<Duration>,
    ) -> Result<Sender, UpstreamError> {
        let stream = self.open(ep, timeout).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        if upgrades {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        Ok((sender, 0))
    }

    /// A sender to `ep`: a pooled connection, or a new one (a connect that fails
    /// leaves the request unsent, so it can go to another endpoint). Upgrade requests
    /// get a connection of their own, never pooled.
    pub async fn sender(
        &self,
        ep: SocketAddr,
        upgrade: bool,
        pool: &crate::route::policy::ConnPool,
    ) -> Result<Sender, UpstreamError> {
        if !upgrade && let Some(s) = self.take_ready(ep) {
            return Ok(s);
        }
        let connect_timeout = pool.connect_timeout;
        // Connecting is boxed: its future is large and rare (the pool usually has a
        // sender), and inline it would grow every request's future, which hyper moves
        // into place per request.
        Box::pin(self.connect(ep, upgrade, connect_timeout)).await
    }

    /// Sends `req` (origin-form URI, Host set) on `s`, a sender to `ep`, which goes back
    /// to the pool after a clean exchange (for the destination's `idleTimeout`) unless
    /// it carried its `maxRequestsPerConnection`; an upgrade's never does.
    pub async fn send(
        &self,
        ep: SocketAddr,
        (mut s, served): Sender,
        req: Request<UpBody>,
        upgrade: bool,
        policy: &crate::route::policy::ConnPool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let resp = s.send_request(req).await;
        let spent = policy.max_requests.is_some_and(|m| served + 1 >= m);
        if resp.is_ok() && !upgrade && !spent {
            self.keep_idle(&self.idle, ep, (s, served + 1), policy.idle_timeout);
        }
        Ok(resp?)
    }
}
