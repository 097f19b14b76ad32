//! The L7 path: lb's hyper proxy. The kernel hands it the connects of services whose
//! VirtualService looks inside requests; it recovers what each client dialled from the
//! original-destination map and routes every request (shared `route` code, the same
//! as `lb explain`).

pub mod access_log;
pub mod admin;
pub mod forward;
pub mod guard;
pub mod kernel;
pub mod metrics;
pub mod pool;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::route::RouteTable;

/// Largest request head accepted (request line + headers); larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

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
}

/// Proxy settings from the command line.
pub struct ProxyOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub access_log: Option<access_log::Target>,
    /// Bound on finishing in-flight requests at SIGTERM.
    pub drain: Duration,
}

/// State every connection shares.
pub struct Shared {
    pub table: watch::Receiver<Arc<RouteTable>>,
    pub client: pool::Pool,
    pub metrics: metrics::Metrics,
    pub log: Option<access_log::AccessLog>,
    pub kernel: Option<Mutex<kernel::KernelMaps>>,
}

/// A bound, not yet serving proxy: binding first lets the daemon point the kernel at
/// it only once it listens.
pub struct Proxy {
    listener: TcpListener,
    admin: TcpListener,
    /// Accepted sockets inherit TCP_NODELAY from the listener (Linux copies it), so it
    /// is set once here rather than once per connection; false if that failed.
    nodelay_inherited: bool,
}

/// Sets TCP_NODELAY on a listening socket (its accepted sockets inherit it).
fn set_nodelay(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

impl Proxy {
    pub async fn bind(opts: &ProxyOptions) -> Result<Self, ProxyError> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: opts.listen,
                source,
            })?;
        let admin = TcpListener::bind(opts.admin)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: opts.admin,
                source,
            })?;
        let nodelay_inherited = set_nodelay(&listener);
        Ok(Self {
            listener,
            admin,
            nodelay_inherited,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains in-flight
    /// requests for at most `drain`.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        drain: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(MAX_HEADER_BYTES)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.max_header_list_size(MAX_HEADER_BYTES as u32)
            .timer(TokioTimer::new());
        let builders = Arc::new((h1, h2));
        // Every connection holds a receiver; draining is over when none is left.
        let (stopping, _) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(self.admin, shared.clone()));
        let flusher = tokio::spawn(flush_loop(shared.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    if !self.nodelay_inherited {
                        let _ = stream.set_nodelay(true);
                    }
                    let dialled = shared.kernel.as_ref().and_then(|k| k.lock().ok()?.take_orig_dst(peer));
                    tokio::spawn(serve_connection(
                        stream,
                        forward::ConnInfo {
                            peer,
                            peer_ip: http::HeaderValue::from_str(&peer.ip().to_string()).ok(),
                            dialled,
                            smuggling: Default::default(),
                        },
                        shared.clone(),
                        builders.clone(),
                        stopping.subscribe(),
                    ));
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
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
    }
}

/// Bound on a client's first bytes and on each request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/2 prior-knowledge preface (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted connection: reads its first bytes once to tell HTTP/2 prior
/// knowledge from HTTP/1 (the bytes are handed to hyper again, no second read), then
/// runs hyper's connection until it ends or the proxy drains.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    mut conn: forward::ConnInfo,
    shared: Arc<Shared>,
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut stream = guard::Guarded::new(stream);
    conn.smuggling = stream.poisoned.clone();
    let mut first = bytes::BytesMut::with_capacity(4096);
    // Read until the bytes differ from the preface or hold all of it.
    let h2 = loop {
        match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
    };
    stream.unread(first.freeze());
    let conn = Arc::new(conn);
    let svc =
        hyper::service::service_fn(move |req| forward::handle(shared.clone(), conn.clone(), req));
    let io = TokioIo::new(stream);
    if h2 {
        let c = builders.1.serve_connection(io, svc);
        until_drained(c, &mut stopping, |c| c.graceful_shutdown()).await;
    } else {
        let c = builders.0.serve_connection(io, svc).with_upgrades();
        until_drained(c, &mut stopping, |c| c.graceful_shutdown()).await;
    }
}

/// Runs a hyper connection to its end; when the proxy drains, asks it to finish the
/// request in flight and close (`graceful`: hyper's per-protocol method).
async fn until_drained<C: std::future::Future>(
    c: C,
    stopping: &mut watch::Receiver<bool>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) {
    tokio::pin!(c);
    tokio::select! {
        _ = c.as_mut() => return,
        _ = stopping.changed() => graceful(c.as_mut()),
    }
    let _ = c.await;
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

async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        flush(&shared);
    }
}
