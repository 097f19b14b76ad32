//! Upstream connections: a small hand-kept pool of HTTP/1.1 senders per endpoint.
//!
//! hyper-util's legacy `Client` costs about a quarter more instructions per request
//! here (an extra task hop per re-pooled connection, an absolute URI and pool key
//! built per request; shared/PERF-NOTES.md). A request takes the most recently used
//! sender that is ready (LIFO keeps few connections warm), else opens a connection.
//! Senders go back at once; one still busy with its response body is skipped.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::model::HashMap;

/// Idle senders kept per endpoint (beyond: dropped, the connection closes).
const MAX_IDLE: usize = 256;
/// Istio's default TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect {0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    fn take_ready(&self, ep: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&ep)?;
        // Closed senders are dropped on the way; busy ones stay for later.
        list.retain(|s| !s.is_closed());
        let i = list.iter().rposition(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn give_back(&self, ep: SocketAddr, s: SendRequest<Incoming>) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(ep).or_default();
            if list.len() < MAX_IDLE {
                list.push(s);
            }
        }
    }

    async fn connect(
        ep: SocketAddr,
        upgrades: bool,
    ) -> Result<SendRequest<Incoming>, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(ep))
            .await
            .map_err(|_| UpstreamError::Timeout(ep))?
            .map_err(|e| UpstreamError::Connect(ep, e))?;
        let _ = stream.set_nodelay(true);
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
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, Host set) to `ep`. Upgrade requests get a
    /// connection of their own, never pooled.
    pub async fn send(
        &self,
        ep: SocketAddr,
        req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Connecting is boxed: its future is large and rare (the pool usually has a
        // sender), and inline it would grow every request's future, which hyper moves
        // into place per request.
        if upgrade {
            let mut s = Box::pin(Self::connect(ep, true)).await?;
            return Ok(s.send_request(req).await?);
        }
        let mut s = match self.take_ready(ep) {
            Some(s) => s,
            None => Box::pin(Self::connect(ep, false)).await?,
        };
        let resp = s.send_request(req).await;
        if resp.is_ok() {
            self.give_back(ep, s);
        }
        Ok(resp?)
    }
}
