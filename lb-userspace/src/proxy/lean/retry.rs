//! The tries of one request on the lean path, as the rule's `retries` allow (Istio's
//! default policy without one): each retry on an endpoint not tried yet where there is
//! one, within the per-try timeout, the request body sent again from a copy kept while
//! it was first sent.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncRead;

use super::head::Send;
use super::{Clock, LeanError, answer, request};
use crate::proxy::balance::{Active, Answered};
use crate::proxy::limits::Admitted;
use crate::proxy::pool::{Pool, Upstream, UpstreamError};
use crate::route::policy::{Balance, another};

/// The largest request body kept to be sent again (Envoy buffers up to its connection
/// buffer limit, 1 MiB; lb keeps less per request). A larger body is tried once, unless
/// the try failed before any of it was read (a failed connect).
pub(super) const REPLAY_LIMIT: u64 = 64 * 1024;

/// How a request's tries went.
#[derive(Debug, Default)]
pub(super) struct Tried {
    /// The endpoint of the last try (None: only the first was tried).
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) retries: u32,
    /// The retries were used up and the last try failed in a way that would have been
    /// retried (Envoy's `URX`).
    pub(super) exhausted: bool,
    /// The request body as sent, when it was kept whole (None: none, or not kept).
    pub(super) body: Option<Vec<u8>>,
}

/// The request body as read from the client so far, with a copy to send again.
pub(super) struct Replay {
    consumed: u64,
    copy: Option<Vec<u8>>,
}

impl Replay {
    fn new(send: &Send<'_>) -> Self {
        // Kept for a retry, or for the mirrors' copies.
        let keep = (send.policy.retry.attempts > 0 || !send.mirrors.is_empty())
            && send.body_len > 0
            && send.body_len <= REPLAY_LIMIT;
        Replay {
            consumed: 0,
            // Allocated as the body arrives: most requests have none.
            copy: keep.then(Vec::new),
        }
    }

    pub(super) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The bytes to send again before reading more from the client.
    pub(super) fn kept(&self) -> Option<&[u8]> {
        self.copy.as_deref().filter(|c| !c.is_empty())
    }

    pub(super) fn keep(&mut self, bytes: &[u8]) {
        self.consumed += bytes.len() as u64;
        if let Some(c) = &mut self.copy {
            c.extend_from_slice(bytes);
        }
    }

    /// The body kept, if all `len` bytes were.
    fn whole(&mut self, len: u64) -> Option<Vec<u8>> {
        self.copy.take().filter(|c| c.len() as u64 == len)
    }

    /// Whether a retry can send the same request.
    fn replayable(&self) -> bool {
        self.consumed == 0 || self.copy.is_some()
    }
}

/// Tries the request until an answer or a failure the policy does not retry, within
/// the destination's `connectionPool` bounds (its admission comes back with the
/// answer, to hold while it is relayed).
pub(super) async fn attempts<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    pool: &Pool,
    send: &Send<'_>,
    clock: Clock,
    tried: &mut Tried,
) -> Result<(Upstream, answer::Answer, Option<Admitted>), LeanError> {
    let retry = &send.policy.retry;
    // The destination's connectionPool bounds, held until the answer is relayed.
    let admitted = pool
        .breakers
        .admit(send.destination, send.dest_policy)
        .await
        .map_err(|e| LeanError::Connect(e.into()))?;
    let mut retrying = None;
    let mut body = Replay::new(send);
    let mut ep = send.endpoint;
    let mut previous = Vec::new();
    let policy = send.dest_policy;
    let track = policy.balance == Balance::LeastRequest && send.endpoints.len() > 1;
    let result = loop {
        // In flight until the answer's head (LEAST_REQUEST compares these).
        let active = track.then(|| Active::begin(send.in_flight, send.endpoints, ep, send.index));
        let clock = Clock {
            try_ends: retry.per_try.map(|t| (tokio::time::Instant::now() + t, ep)),
            ..clock
        };
        let result = once(client, buf, pool, send, ep, &mut body, &clock).await;
        let again = match &result {
            Ok((_, a)) => retry.on.status(a.status, None),
            Err(LeanError::Connect(UpstreamError::Connect(..) | UpstreamError::Timeout(_))) => {
                retry.on.connect()
            }
            // An overflow is lb's own bound (503 `UO`); the client's failures are its.
            Err(
                LeanError::Connect(_)
                | LeanError::Client(_)
                | LeanError::ClientStalled
                | LeanError::RouteTimeout,
            ) => false,
            Err(_) => retry.on.no_answer(),
        };
        drop(active);
        if let Some(o) = &policy.outlier
            && let Some(a) = answered(&result)
        {
            pool.endpoints.report(o, send.endpoints, ep, a);
        }
        if !again || !body.replayable() {
            break result;
        }
        if tried.retries == retry.attempts {
            tried.exhausted = true;
            break result;
        }
        // Past `maxRetries` retries in progress for the destination: not retried.
        let Some(ticket) = crate::proxy::limits::may_retry(&admitted) else {
            break result;
        };
        retrying = ticket;
        // A retried answer's connection is dropped with the rest of that answer.
        drop(result);
        tried.retries += 1;
        previous.push(ep);
        ep = another(send.endpoints, &previous);
        tried.endpoint = Some(ep);
    };
    // The whole body as sent, for the mirrors' copies.
    tried.body = body.whole(send.body_len);
    drop(retrying);
    result.map(|(up, answer)| (up, answer, admitted))
}

/// What outlier detection learns from a try (None: the client's failure, or lb's own
/// limit, says nothing of the endpoint).
fn answered<T>(result: &Result<(T, answer::Answer), LeanError>) -> Option<Answered> {
    match result {
        Ok((_, a)) => Some(Answered::Status(a.status)),
        Err(
            LeanError::Client(_)
            | LeanError::ClientStalled
            | LeanError::RouteTimeout
            | LeanError::Connect(UpstreamError::Overflow(_) | UpstreamError::Breaker(_)),
        ) => None,
        Err(_) => Some(Answered::Nothing),
    }
}

/// One try: a pooled socket (or a new one if the pooled one turns out closed and the
/// request is safe to send again), the request, the answer's head.
async fn once<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    pool: &Pool,
    send: &Send<'_>,
    ep: SocketAddr,
    body: &mut Replay,
    clock: &Clock,
) -> Result<(Upstream, answer::Answer), LeanError> {
    let dest_pool = &send.dest_policy.pool;
    let timeout = dest_pool.connect_timeout;
    // A connect is bounded by the clock's deadlines too (a timer only then: pooled
    // sockets need none).
    let silent = || LeanError::UpstreamSilent(ep);
    let (mut up, mut reused) = match take_pooled(pool, ep, send.replayable) {
        Some(u) => (u, true),
        None => (
            clock.within(connect(pool, ep, timeout), silent).await?,
            false,
        ),
    };
    loop {
        match request(client, buf, &mut up, send, ep, body, clock).await {
            Ok(a) => return Ok((up, a)),
            // A pooled socket the backend had closed: once more on a new one.
            Err(LeanError::Closed(_) | LeanError::Upstream(..)) if reused && send.replayable => {
                up = clock.within(connect(pool, ep, timeout), silent).await?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn connect(
    pool: &Pool,
    ep: SocketAddr,
    timeout: Option<std::time::Duration>,
) -> Result<Upstream, LeanError> {
    Ok(pool.connect_raw(ep, timeout).await?)
}

/// A pooled socket to `ep`, if one is idle. A request that cannot be sent again
/// checks it first.
fn take_pooled(pool: &Pool, ep: SocketAddr, replayable: bool) -> Option<Upstream> {
    while let Some(u) = pool.take_raw(ep) {
        if replayable || u.looks_alive() {
            return Some(u);
        }
    }
    None
}
