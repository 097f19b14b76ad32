//! How long the proxy waits and how much it holds: every wait on a peer has a bound,
//! and so has every resource a peer can make it hold (`lb run` flags; the README's
//! "Timeouts and limits" says the same). Envoy's default where Envoy has one.

use std::time::Duration;

/// The proxy's timeouts and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// A connection waiting for a request head to begin (new, or idle keep-alive)
    /// closes after this. Envoy's `idle_timeout` default (1 h): client pools keep
    /// idle connections for minutes, and a shorter bound here races their reuse; a
    /// crowd of idle connections is bounded by `max_connections`, not by this.
    pub idle: Duration,
    /// A request head must be complete within this of its first byte, however its
    /// bytes trickle in (a per-read timer would let a head dripped a byte at a time
    /// live for ever): past it, 408. Go's `ReadHeaderTimeout`; Envoy has no default
    /// (`request_headers_timeout` off); HAProxy's documented `timeout http-request`
    /// is 10 s. hyper's path (after an HTTP/1.0, chunked or upgrade request) has
    /// one timer for both: a next head must be whole within this of the previous
    /// answer.
    pub head: Duration,
    /// A request in flight with no byte moving — the client's body stalled, the
    /// upstream silent before or during its answer, the client not reading the
    /// answer — ends after this: 408 (the client's body) or 504 (the upstream's
    /// answer) if nothing was answered yet, else the connection closes. Envoy's
    /// `stream_idle_timeout` default. Istio sets no route timeout by default and lb
    /// keeps that on purpose (a long poll or a slow report is legitimate while
    /// bytes move); this bound is what ends a request that has stopped moving.
    pub stream_idle: Duration,
    /// Connecting to an endpoint (Istio's `connectTimeout` default).
    pub connect: Duration,
    /// Client connections held at once. At the bound, a new connection closes the
    /// connection that has waited longest for a request head (idle keep-alive, or
    /// never sent one) so it can be served; with none waiting it is refused with a
    /// 503. Default: what the descriptor limit allows (see [`Bounds::for_descriptors`]).
    pub max_connections: usize,
    /// Connects in progress to one endpoint; past it a request gets 503 at once (flag
    /// `UO`) instead of queueing behind a backend that does not accept. Envoy's
    /// circuit-breaker default (`max_pending_requests`: 1024).
    pub max_pending_connects: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            idle: Duration::from_secs(3600),
            head: Duration::from_secs(10),
            stream_idle: Duration::from_secs(300),
            connect: Duration::from_secs(10),
            max_connections: 10_000,
            max_pending_connects: 1024,
        }
    }
}

/// Descriptors kept for everything but client connections: listeners, the pinned
/// maps, the access log, the Kubernetes watches, upstream connects in progress.
const RESERVED_FDS: u64 = 1024;

impl Bounds {
    /// The most client connections `fds` descriptors carry: each may hold one
    /// upstream connection besides its own, so half of what is left after the
    /// reserve, and at most 1,000,000.
    pub fn for_descriptors(fds: u64) -> usize {
        usize::try_from((fds.saturating_sub(RESERVED_FDS) / 2).clamp(1, 1_000_000))
            .unwrap_or(1_000_000)
    }
}

/// Raises this process's descriptor limit as far as it may go (the soft limit to the
/// hard one; root may also raise the hard one, up to `fs.nr_open`) and returns it.
/// A proxy's connections are descriptors: the usual soft limit of 1024 would make a
/// few hundred clients exhaust it.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    // Enough for the default bounds' million connections, not nr_open's maximum
    // (a huge limit slows programs that close every descriptor up to it).
    let want = nr_open.min(2 * 1_000_000 + RESERVED_FDS).max(lim.rlim_max);
    for max in [want, lim.rlim_max] {
        let raised = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(max);
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_half_the_descriptors_left_after_the_reserve() {
        assert_eq!(Bounds::for_descriptors(20_000), 9_488);
        assert_eq!(Bounds::for_descriptors(1024), 1);
        assert_eq!(Bounds::for_descriptors(0), 1);
        assert_eq!(Bounds::for_descriptors(u64::MAX), 1_000_000);
    }
}
