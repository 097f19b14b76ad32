//! The L7 path: lb's proxy (a lean HTTP/1.1 path for plain requests, hyper for the
//! rest; lean.rs). The kernel hands it the connects of services whose
//! VirtualService looks inside requests; it recovers what each client dialled from the
//! original-destination map and routes every request (shared `route` code, the same
//! as `lb explain`).

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod bounds;
pub mod client_io;
pub mod conns;
pub mod forward;
pub mod guard;
pub mod h1;
pub mod idle;
pub mod lean;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod own_thread;
pub mod pool;
pub mod replay;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::route::RouteTable;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("opening the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("starting the proxy's thread: {0}")]
    Thread(std::io::Error),
}

/// Proxy settings from the command line.
pub struct ProxyOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub access_log: Option<access_log::Target>,
    /// Bound on finishing in-flight requests at SIGTERM.
    pub drain: Duration,
    /// Bounds on request heads (both engines).
    pub limits: h1::Limits,
    /// Timeouts and limits on connections (both engines).
    pub bounds: bounds::Bounds,
    /// Whether the lean path serves the HTTP/1.1 requests it can (`--http1-engine
    /// lean`, the default); off, hyper serves every request.
    pub lean: bool,
}

/// State every connection shares.
pub struct Shared {
    pub table: watch::Receiver<Arc<RouteTable>>,
    pub client: pool::Pool,
    /// Admission of client connections (`Bounds::max_connections`).
    pub conns: Arc<conns::Conns>,
    pub metrics: metrics::Metrics,
    pub log: Option<access_log::AccessLog>,
    pub kernel: Option<Mutex<crate::datapath::ProxyMaps>>,
    pub front: Front,
    /// The daemon's sources, as of its last reload (`/ready`, `/source`, `/metrics`).
    pub source: watch::Receiver<crate::source::SourceStatus>,
}

impl Shared {
    /// State for a proxy without kernel maps or access log (tests, benchmarks).
    pub fn new(table: watch::Receiver<Arc<RouteTable>>, front: Front) -> Self {
        let client = pool::Pool::new(&front.bounds);
        Shared {
            table,
            metrics: metrics::Metrics::with(&client),
            client,
            conns: conns::Conns::new(front.bounds.max_connections),
            log: None,
            kernel: None,
            front,
            // Tests and benchmarks: applied, from nowhere in particular.
            source: watch::channel(crate::source::SourceStatus {
                applied_at_ms: Some(0),
                ..Default::default()
            })
            .1,
        }
    }
}

/// How the proxy reads requests: the same for both engines.
pub struct Front {
    pub limits: h1::Limits,
    pub bounds: bounds::Bounds,
    /// lb's own Via marker (`lb-` and 8 hex digits of this host and listener): added
    /// to every request lb forwards; a request that arrives carrying it has looped.
    pub via: Arc<[u8]>,
    /// `1.1 <via>`, the Via value lb appends.
    pub via_header: http::HeaderValue,
    pub lean: bool,
}

impl Front {
    /// The front end of a proxy listening on `listen`.
    pub fn new(limits: h1::Limits, bounds: bounds::Bounds, lean: bool, listen: SocketAddr) -> Self {
        let mut host = [0u8; 256];
        // SAFETY: a buffer of the length passed; gethostname NUL-terminates or fails.
        let named = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
        let host = if named { &host[..] } else { &[][..] };
        let host = &host[..host.iter().position(|b| *b == 0).unwrap_or(host.len())];
        // FNV-1a: stable across runs and versions (unlike std's hasher), so another
        // hop's logs name the same lb.
        let mut h: u32 = 0x811c_9dc5;
        for b in host.iter().chain(listen.to_string().as_bytes()) {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        let via = format!("lb-{h:08x}");
        Front {
            limits,
            bounds,
            via_header: http::HeaderValue::from_str(&format!("1.1 {via}")).expect("visible ASCII"),
            via: Arc::from(via.as_bytes()),
            lean,
        }
    }
}

/// A bound, not yet serving proxy: binding first lets the daemon point the kernel at
/// it only once it listens. Plain sockets: they join the reactor of the runtime that
/// serves them (the proxy's own thread, run.rs), not the binder's.
pub struct Proxy {
    /// Accepted by hand (`client_io::accept`): the sockets are registered with the
    /// reactor only when they would block.
    listener: std::net::TcpListener,
    /// The same, with `TCP_DEFER_ACCEPT` (an ephemeral port on the same address): the
    /// kernel hands it the clients that do not join the socket map, and the proxy
    /// accepts each once its request has arrived, so the first read finds it (with a
    /// new connection per request, ~half of them used to wait in epoll: two
    /// `epoll_ctl` calls, a failed read and a wake-up each).
    deferred: std::net::TcpListener,
    admin: std::net::TcpListener,
    /// Accepted sockets inherit TCP_NODELAY from the listener (Linux copies it), so it
    /// is set once here rather than once per connection; false if that failed.
    nodelay_inherited: bool,
}

/// Sets TCP_NODELAY on a socket (a listener's accepted sockets inherit it).
fn set_nodelay(fd: RawFd) -> bool {
    set_int(fd, libc::TCP_NODELAY, 1)
}

/// Sets an integer TCP option; false if the kernel refused it.
fn set_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// A listener registered with the reactor for readiness (accepted by hand).
fn watch_listener(l: std::net::TcpListener) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    // SAFETY: the listener moves into the AsyncFd, which owns and closes it.
    unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// A non-blocking listener whose accept queue is as long as the kernel allows
/// (net.core.somaxconn, 4096 on current kernels), as Envoy's: a burst of connects
/// waits in the queue instead of having its handshake dropped and retried a second
/// later (tokio's default is 1024).
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    use socket2::{Domain, Socket, Type};
    let listen = || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        // The kernel caps the length at somaxconn.
        s.listen(i32::MAX)?;
        Ok(s.into())
    };
    listen().map_err(|source| ProxyError::Bind { addr, source })
}

impl Proxy {
    pub fn bind(opts: &ProxyOptions) -> Result<Self, ProxyError> {
        // The deferred listener: an ephemeral port of the same address.
        Self::bind_at([
            opts.listen,
            SocketAddr::new(opts.listen.ip(), 0),
            opts.admin,
        ])
    }

    /// Binds the main, deferred and admin listeners at these addresses.
    pub fn bind_at([main, deferred, admin]: [SocketAddr; 3]) -> Result<Self, ProxyError> {
        let deferred = listen(deferred)?;
        // Seconds the kernel waits for the request before accepting anyway.
        set_int(deferred.as_raw_fd(), libc::TCP_DEFER_ACCEPT, 1);
        Self::from_listeners(listen(main)?, deferred, listen(admin)?)
    }

    /// A proxy on listeners bound elsewhere (by the keeper: keeper.rs).
    pub fn from_listeners(
        listener: std::net::TcpListener,
        deferred: std::net::TcpListener,
        admin: std::net::TcpListener,
    ) -> Result<Self, ProxyError> {
        for l in [&listener, &deferred, &admin] {
            l.set_nonblocking(true).map_err(|source| ProxyError::Bind {
                addr: l
                    .local_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?;
        }
        let nodelay_inherited =
            set_nodelay(listener.as_raw_fd()) && set_nodelay(deferred.as_raw_fd());
        Ok(Self {
            listener,
            deferred,
            admin,
            nodelay_inherited,
        })
    }

    /// The main, deferred and admin listeners' addresses as bound.
    pub fn addrs(&self) -> [SocketAddr; 3] {
        [self.local_addr(), self.deferred_addr(), self.admin_addr()]
    }

    /// The main, deferred and admin listeners' descriptors.
    pub fn fds(&self) -> [RawFd; 3] {
        [
            self.listener.as_raw_fd(),
            self.deferred.as_raw_fd(),
            self.admin.as_raw_fd(),
        ]
    }

    /// Where the kernel sends the clients that do not join the socket map.
    pub fn deferred_addr(&self) -> SocketAddr {
        self.deferred.local_addr().expect("bound listener")
    }

    /// The listening sockets, in `lb_common::proxy_listener` order (main, deferred):
    /// the kernel hands connects over only while they are open.
    pub fn listeners(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        use std::os::fd::AsFd as _;
        [self.listener.as_fd(), self.deferred.as_fd()]
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` resolves, then accepts for [`SETTLE`] more (and what is
    /// queued then), closes its listeners and drains in-flight requests for at most
    /// `drain`.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        drain: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        // Joining this runtime's reactor fails only if it has none.
        let joined = |addr: SocketAddr| move |source| ProxyError::Bind { addr, source };
        let (main_at, deferred_at, admin_at) =
            (self.local_addr(), self.deferred_addr(), self.admin_addr());
        let listener = watch_listener(self.listener).map_err(joined(main_at))?;
        let deferred = watch_listener(self.deferred).map_err(joined(deferred_at))?;
        let admin = TcpListener::from_std(self.admin).map_err(joined(admin_at))?;
        let mut h1 = http1::Builder::new();
        // half_close: a client may shut its write side once the request is sent and
        // still get the answer; and hyper does not read the socket again while a
        // request is in flight to notice a hang-up (HAProxy's default, no
        // `abortonclose`), so a one-request connection is read exactly once and never
        // needs the reactor (client_io.rs).
        let limits = shared.front.limits;
        // hyper's read buffer bounds the head it accepts (431 past it), and may not be
        // smaller than 8 KiB.
        h1.max_buf_size(limits.head_bytes.max(8192))
            .max_headers(limits.headers)
            .half_close(true)
            .timer(TokioTimer::new())
            // A whole head within the bound, from the end of the previous answer
            // (hyper starts its timer when it waits for a head), as the lean path.
            .header_read_timeout(shared.front.bounds.head);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.max_header_list_size(u32::try_from(limits.head_bytes).unwrap_or(u32::MAX))
            .timer(TokioTimer::new());
        let builders = Arc::new((h1, h2));
        // Every connection holds a receiver; draining is over when none is left.
        let (stopping, _) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone()));
        let flusher = tokio::spawn(flush_loop(shared.clone()));
        let accept = Accept {
            shared: &shared,
            builders: &builders,
            stopping: &stopping,
            nodelay_inherited: self.nodelay_inherited,
        };
        accept.until(&listener, &deferred, shutdown).await;
        // The connects the kernel sent here before the daemon took the listeners out
        // of its map (run.rs) complete their handshakes within moments: accept them,
        // and whatever is queued after that, before closing the listeners, which
        // would reset every connection in their queues.
        accept
            .until(&listener, &deferred, tokio::time::sleep(SETTLE))
            .await;
        accept.queued(&listener, Listener::Main);
        accept.queued(&deferred, Listener::Deferred);
        drop(listener);
        drop(deferred);
        tracing::info!("proxy draining (at most {drain:?})");
        stopping.send_replace(true);
        if tokio::time::timeout(drain, stopping.closed())
            .await
            .is_err()
        {
            tracing::warn!("drain bound reached; closing remaining connections");
        }
        admin_task.abort();
        flusher.abort();
        flush(&shared);
        Ok(())
    }
}

type Builders = Arc<(http1::Builder, http2::Builder<TokioExecutor>)>;

/// Which of the proxy's listeners accepted a connection.
#[derive(Clone, Copy)]
enum Listener {
    Main,
    Deferred,
}

/// What accepting a connection needs.
struct Accept<'a> {
    shared: &'a Arc<Shared>,
    builders: &'a Builders,
    stopping: &'a watch::Sender<bool>,
    nodelay_inherited: bool,
}

impl Accept<'_> {
    /// Accepts connections from both listeners until `end` resolves.
    async fn until(
        &self,
        main: &AsyncFd<std::net::TcpListener>,
        deferred: &AsyncFd<std::net::TcpListener>,
        end: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(end);
        loop {
            tokio::select! {
                ready = main.readable() => {
                    if let Ok(ready) = ready {
                        self.batch(ready, Listener::Main).await;
                    }
                }
                ready = deferred.readable() => {
                    if let Ok(ready) = ready {
                        self.batch(ready, Listener::Deferred).await;
                    }
                }
                () = &mut end => return,
            }
        }
    }

    /// Accepts up to ACCEPT_BATCH connections from a readable listener.
    async fn batch(
        &self,
        mut ready: tokio::io::unix::AsyncFdReadyGuard<'_, std::net::TcpListener>,
        listener: Listener,
    ) {
        for _ in 0..ACCEPT_BATCH {
            match client_io::accept(ready.get_inner().as_raw_fd()) {
                Ok((stream, peer)) => self.serve(stream, peer, listener),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    return;
                }
                Err(e) => {
                    accept_failed(&e).await;
                    return;
                }
            }
        }
        // A full batch: let the accepted connections run before the next.
        tokio::task::yield_now().await;
    }

    /// Accepts every connection queued on `listener` now, without waiting.
    fn queued(&self, listener: &AsyncFd<std::net::TcpListener>, which: Listener) {
        while let Ok((stream, peer)) = client_io::accept(listener.get_ref().as_raw_fd()) {
            self.serve(stream, peer, which);
        }
    }

    /// Serves an accepted connection in a task of its own, if there is room for it.
    fn serve(&self, stream: client_io::ClientStream, peer: SocketAddr, listener: Listener) {
        let Some(admitted) = self.shared.conns.admit() else {
            refused_at_bound(stream, self.shared);
            return;
        };
        if !self.nodelay_inherited {
            set_nodelay(stream.as_raw_fd());
        }
        self.shared
            .metrics
            .accepted(matches!(listener, Listener::Deferred));
        let conn = Conn {
            stream,
            admitted,
            accepted_at: tokio::time::Instant::now(),
        };
        spawn_connection(conn, peer, self.shared, self.builders, self.stopping);
    }
}

/// A connection lb cannot hold (every one it holds has a request in flight): a 503,
/// then closed. Said in the log at most once a second.
fn refused_at_bound(stream: client_io::ClientStream, shared: &Shared) {
    stream.refuse(conns::REFUSED);
    static SAID: AtomicU64 = AtomicU64::new(0);
    if first_this_second(&SAID) {
        tracing::warn!(
            max = shared.front.bounds.max_connections,
            "connections refused: every connection lb holds has a request in flight (--max-connections)"
        );
    }
}

/// Whether this is the first call this second for `said` (a warning that could
/// repeat thousands of times a second is said once a second).
fn first_this_second(said: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    said.swap(now, Ordering::Relaxed) != now
}

/// An admitted connection: its socket, its place, and when it was accepted.
struct Conn {
    stream: client_io::ClientStream,
    admitted: conns::Admitted,
    accepted_at: tokio::time::Instant,
}

/// Starts serving one accepted connection in a task of its own, with what the client
/// dialled (the original-destination map, read once).
fn spawn_connection(
    accepted: Conn,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    builders: &Builders,
    stopping: &watch::Sender<bool>,
) {
    let dialled = shared
        .kernel
        .as_ref()
        .and_then(|k| Some(k.lock().ok()?.take_orig_dst(peer)))
        .and_then(|found| {
            shared.metrics.original_destination(found);
            found.addr()
        });
    let conn = forward::ConnInfo {
        peer,
        peer_ip: http::HeaderValue::from_str(&peer.ip().to_string()).ok(),
        dialled,
        verdicts: None,
        activity: None,
    };
    tokio::spawn(serve_connection(
        accepted,
        conn,
        shared.clone(),
        builders.clone(),
        stopping.subscribe(),
    ));
}

/// Connections accepted per wake-up before the accepted ones run (HAProxy's
/// `maxaccept` default).
const ACCEPT_BATCH: usize = 64;
/// How long the proxy keeps accepting once told to stop: the connects `connect4` sent
/// it before its listeners left the map take microseconds to arrive on one machine;
/// this is for a loaded one.
const SETTLE: Duration = Duration::from_millis(100);

/// A failed accept other than "none pending": a connection reset before it was
/// accepted is skipped; running out of descriptors or memory pauses accepting briefly
/// instead of spinning on a listener that stays readable.
async fn accept_failed(e: &std::io::Error) {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
        _ => {
            static SAID: AtomicU64 = AtomicU64::new(0);
            if first_this_second(&SAID) {
                tracing::warn!("accept: {e}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The HTTP/2 prior-knowledge preface (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted connection: reads its first bytes once to tell HTTP/2 prior
/// knowledge from HTTP/1, serves HTTP/1 requests on the lean path while they fit it
/// (lean.rs), then hands the bytes read so far to hyper, which runs the connection
/// until it ends or the proxy drains.
async fn serve_connection(
    accepted: Conn,
    mut conn: forward::ConnInfo,
    shared: Arc<Shared>,
    builders: Builders,
    mut stopping: watch::Receiver<bool>,
) {
    let Conn {
        mut stream,
        mut admitted,
        accepted_at,
    } = accepted;
    let bounds = shared.front.bounds;
    let mut first = bytes::BytesMut::new();
    // The first bytes may take the idle bound to come; the head they begin, the head
    // bound from then.
    let (mut begun, mut due) = (false, accepted_at + bounds.idle);
    // Read until the bytes differ from the preface or hold all of it.
    let h2 = loop {
        let read = tokio::time::timeout_at(due, read_into(&mut stream, &mut first));
        match admitted.wait_for_head(read).await {
            Some(Ok(Ok(n))) if n > 0 => {}
            _ => return,
        }
        if !begun {
            (begun, due) = (true, tokio::time::Instant::now() + bounds.head);
        }
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
    };
    // HTTP/1: the lean path serves what it can; hyper the rest of the connection.
    if !h2 && shared.front.lean {
        let served = lean::serve(
            &mut stream,
            &mut first,
            &shared,
            &conn,
            &mut stopping,
            &mut admitted,
            due,
        );
        match served.await {
            lean::Next::Closed => return,
            lean::Next::Linger => {
                guard::LingerOnClose::linger_on_close(&mut stream);
                return;
            }
            lean::Next::Hyper => {}
        }
    }
    // hyper's HTTP/1 path: the guard follows every byte from here on, and the ones
    // already read, with the lean path's verdict on each request head.
    let follower = (!h2).then(|| {
        let f = guard::Follower::new(shared.front.limits, shared.front.via.clone());
        conn.verdicts = Some(f.verdicts.clone());
        f
    });
    let activity = idle::Activity::default();
    conn.activity = Some(activity.clone());
    let mut stream = guard::Guarded::new(stream, follower, activity.clone());
    stream.unread(first.freeze());
    let conn = Arc::new(conn);
    let idle = shared.front.bounds.stream_idle;
    let svc =
        hyper::service::service_fn(move |req| forward::handle(shared.clone(), conn.clone(), req));
    let io = TokioIo::new(stream);
    // Boxed: hyper's connection state is large, and the task's future would otherwise
    // carry it inline, copied at every spawn (memmove was ~10 % of the proxy's user
    // time with a new connection per request, perf).
    // A connection whose bytes stopped moving closes: a moment after a request
    // waiting for its upstream got its 504 (forward.rs), so that answer goes out.
    let stalled = activity.stalled(idle + Duration::from_secs(1));
    if h2 {
        let c = Box::pin(builders.1.serve_connection(io, svc));
        until_drained(c, &mut stopping, stalled, |c| c.graceful_shutdown()).await;
    } else {
        let c = Box::pin(builders.0.serve_connection(io, svc).with_upgrades());
        until_drained(c, &mut stopping, stalled, |c| c.graceful_shutdown()).await;
    }
}

/// Reads what the socket has into `into`, through a per-thread scratch buffer: a
/// request head is a few hundred bytes, and a 4 KiB buffer per connection cost an
/// allocation big enough to make glibc consolidate its free lists (perf).
async fn read_into<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    into: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
    }
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = tokio::io::ReadBuf::new(scratch);
            std::task::ready!(std::pin::Pin::new(&mut *r).poll_read(cx, &mut buf))?;
            into.extend_from_slice(buf.filled());
            std::task::Poll::Ready(Ok(buf.filled().len()))
        })
    })
    .await
}

/// Runs a hyper connection to its end; when the proxy drains, asks it to finish the
/// request in flight and close (`graceful`: hyper's per-protocol method). Dropped
/// (closed) when `stalled` resolves.
async fn until_drained<C: std::future::Future>(
    mut c: std::pin::Pin<Box<C>>,
    stopping: &mut watch::Receiver<bool>,
    stalled: impl std::future::Future<Output = ()>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) {
    let mut stalled = std::pin::pin!(stalled);
    tokio::select! {
        _ = c.as_mut() => return,
        () = stalled.as_mut() => return,
        _ = stopping.changed() => graceful(c.as_mut()),
    }
    tokio::select! {
        _ = c => {}
        () = stalled => {}
    }
}

fn flush(shared: &Shared) {
    if let Some(log) = &shared.log {
        log.flush();
    }
    if let Some(k) = &shared.kernel
        && let Ok(mut k) = k.lock()
    {
        k.flush_hosts();
    }
}

/// Once a second: the access log and unknown Hosts flushed, upstream connections
/// idle past their destination's `idleTimeout` closed.
async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        flush(&shared);
        shared.client.sweep();
    }
}
