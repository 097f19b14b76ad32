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

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
    pub sk_msg: bool,
}

/// A bound, not yet serving proxy: binding first lets the daemon point the kernel at
/// it only once it listens.
pub struct Proxy {
    listener: TcpListener,
    admin: TcpListener,
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
        Ok(Self { listener, admin })
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(MAX_HEADER_BYTES)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder
            .http2()
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        let graceful = GracefulShutdown::new();
        let admin_task = tokio::spawn(admin::serve(self.admin, shared.clone()));
        let flusher = tokio::spawn(flush_loop(shared.clone()));
        tokio::pin!(shutdown);
        // Where clients reach the proxy (the sk_msg key of accepted sockets).
        let local = match self.listener.local_addr() {
            Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            Ok(a) => a,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let dialled = shared.kernel.as_ref().and_then(|k| {
                        let mut k = k.lock().ok()?;
                        if shared.sk_msg {
                            k.add_accepted(&stream, local, peer);
                        }
                        k.take_orig_dst(peer)
                    });
                    let stream = guard::Guarded::new(stream);
                    let conn = Arc::new(forward::ConnInfo { peer, dialled, smuggling: stream.poisoned.clone() });
                    let shared = shared.clone();
                    let svc = hyper::service::service_fn(move |req| forward::handle(shared.clone(), conn.clone(), req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = watched.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!("proxy draining (at most {drain:?})");
        if tokio::time::timeout(drain, graceful.shutdown())
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
