//! A rule's traffic policy on the proxy path: `timeout`, `retries` and `fault`, as
//! Istio configures Envoy with them (../shared/ISTIO-SEMANTICS.md).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// A policy as the route table holds it: nearly every rule and destination has
/// Istio's defaults, so one copy of those serves them all (a `Policy` is 168 bytes, a
/// `DestinationPolicy` 192: with 10,000 services, ~5 MB of copies of the defaults).
pub fn shared<T: Defaults>(p: T) -> Arc<T> {
    let d = T::defaults();
    if p == **d { d.clone() } else { Arc::new(p) }
}

/// A policy whose defaults are shared ([`shared`]).
pub trait Defaults: PartialEq + Default + 'static {
    fn defaults() -> &'static Arc<Self>;
}

/// One static copy of each type's defaults (a generic function cannot hold a static
/// per type).
macro_rules! shared_defaults {
    ($($t:ty),*) => {$(
        impl Defaults for $t {
            fn defaults() -> &'static Arc<Self> {
                static D: LazyLock<Arc<$t>> = LazyLock::new(Default::default);
                &D
            }
        }
    )*};
}

shared_defaults!(Policy, DestinationPolicy);

/// What a rule does besides choosing a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The route timeout: from the request to the end of its answer (504 `UT`). None:
    /// no route timeout (Istio's default; the stream-idle bound still applies).
    pub timeout: Option<Duration>,
    pub retry: Retry,
    pub fault: Fault,
}

impl Default for Policy {
    /// What a rule without `timeout`, `retries` and `fault` gets.
    fn default() -> Self {
        Policy {
            timeout: None,
            retry: Retry::istio_default(),
            fault: Fault::default(),
        }
    }
}

/// `retries`: how often, and on what, a request is sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Retries after the first try (0: none).
    pub attempts: u32,
    /// Each try's bound (504 `UT` for the last); None: the route timeout only.
    pub per_try: Option<Duration>,
    pub on: RetryOn,
}

impl Retry {
    /// Istio's policy for a route without `retries` (pilot's `retry.DefaultPolicy`):
    /// 2 retries on connect failures, refused streams, gRPC `unavailable` and
    /// `cancelled`, and 503 answers, each on another endpoint where there is one.
    pub fn istio_default() -> Self {
        Retry {
            attempts: 2,
            per_try: None,
            on: RetryOn::parse(ISTIO_DEFAULT_RETRY_ON).expect("Istio's default parses"),
        }
    }

    pub fn none() -> Self {
        Retry {
            attempts: 0,
            per_try: None,
            on: RetryOn::default(),
        }
    }
}

/// `retryOn` when `retries` leaves it out, or has no `retries` at all.
pub const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";

/// The conditions of `retryOn` (Envoy's `x-envoy-retry-on` policies), with the status
/// codes it lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// As configured (`lb explain`).
    pub text: String,
    /// Any 5xx answer, or no answer (connect failure, reset, per-try timeout).
    pub any_5xx: bool,
    /// 502, 503 or 504, or no answer.
    pub gateway_error: bool,
    /// No answer: the connection reset or closed, or the per-try bound passed.
    pub reset: bool,
    pub connect_failure: bool,
    /// 409 (`retriable-4xx`).
    pub conflict: bool,
    /// `retriable-status-codes`: the codes listed in `retryOn`.
    pub codes: Vec<u16>,
    /// gRPC statuses (`grpc-status` of an answer's head): cancelled 1, deadline-exceeded 4,
    /// resource-exhausted 8, internal 13, unavailable 14.
    pub grpc: Vec<u8>,
}

/// The `retryOn` values Istio accepts (besides status codes 100–599).
const POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl RetryOn {
    /// Parses `retryOn`; Err names the value Istio would reject.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Codes listed count as `retriable-status-codes` (Istio adds that policy itself).
        let mut on = RetryOn {
            text: text.to_string(),
            ..RetryOn::default()
        };
        for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(code) = p.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(p.to_string());
                }
                on.codes.push(code);
                continue;
            }
            if !POLICIES.contains(&p) {
                return Err(p.to_string());
            }
            match p {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" | "http3-post-connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.conflict = true,
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                // The codes listed; HTTP/2's REFUSED_STREAM, Envoy's rate limiting,
                // retriable headers: nothing lb's HTTP/1.1 upstreams produce.
                _ => {}
            }
        }
        Ok(on)
    }

    /// Whether an answer with `status` (and `grpc` status, if its head has one) is tried
    /// again.
    pub fn status(&self, status: u16, grpc: Option<u8>) -> bool {
        (self.any_5xx && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.conflict && status == 409)
            || self.codes.contains(&status)
            || grpc.is_some_and(|g| self.grpc.contains(&g))
    }

    /// Whether a connect that failed (refused, timed out) is tried again.
    pub fn connect(&self) -> bool {
        self.connect_failure || self.any_5xx || self.gateway_error || self.reset
    }

    /// Whether a try that got no answer (reset, closed, past the per-try bound) is
    /// tried again.
    pub fn no_answer(&self) -> bool {
        self.any_5xx || self.gateway_error || self.reset
    }

    /// Whether any answer's status can cause a retry (the request must then be kept
    /// until its answer's head is read).
    pub fn on_status(&self) -> bool {
        self.any_5xx || self.gateway_error || self.conflict || !self.codes.is_empty()
    }
}

/// The endpoint of the next try: one not tried yet, at random (Envoy's
/// `previous_hosts` predicate, which Istio sets); once all were, any.
pub fn another(endpoints: &[SocketAddr], previous: &[SocketAddr]) -> SocketAddr {
    let fresh = endpoints.iter().filter(|e| !previous.contains(e)).count();
    if fresh == 0 {
        return endpoints[fastrand::usize(..endpoints.len())];
    }
    let n = fastrand::usize(..fresh);
    *endpoints
        .iter()
        .filter(|e| !previous.contains(e))
        .nth(n)
        .expect("n < fresh")
}

/// How a destination's endpoint is picked (`loadBalancer.simple`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balance {
    /// Istio's default: the fewer active requests of two endpoints drawn at random
    /// (Envoy's power of two choices).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
}

/// `outlierDetection`: when an endpoint is ejected and for how long (Envoy's
/// consecutive-errors detectors, with Istio's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// 5xx answers and failures without an answer (connect, reset) in a row; 0: off.
    pub consecutive_5xx: u32,
    /// 502, 503, 504 and failures without an answer in a row; 0: off.
    pub consecutive_gateway: u32,
    /// How often the ejection multiplier may fall back by one while healthy.
    pub interval: Duration,
    /// An ejection lasts this × the times the endpoint was ejected.
    pub base_ejection: Duration,
    /// At most this share of the destination's endpoints is ejected (at least one).
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored (Envoy's panic
    /// threshold; Istio's default 0 never ignores them).
    pub min_health_percent: u32,
}

/// Envoy's `max_ejection_time` default: an ejection never lasts longer.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Which endpoints a destination uses while some are ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Those not ejected.
    Healthy,
    /// All of them: fewer than `minHealthPercent` are healthy (Envoy's panic mode).
    All,
    /// None: every one is ejected and there is no panic threshold.
    None,
}

impl Outlier {
    /// Failures without an answer (a connect refused or reset) in a row that eject:
    /// they count for both detectors, so the lower threshold set (None: both off).
    pub fn failures_to_eject(&self) -> Option<u32> {
        [self.consecutive_5xx, self.consecutive_gateway]
            .into_iter()
            .filter(|n| *n > 0)
            .min()
    }

    /// Whether one more of `total` endpoints may be ejected while `ejected` are:
    /// at most `maxEjectionPercent`, but at least one.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        ejected < (total * self.max_ejection_percent as usize / 100).max(1)
    }

    /// What a destination uses while `healthy` of its `total` endpoints are not ejected.
    pub fn usable(&self, healthy: usize, total: usize) -> Usable {
        if healthy > 0 && healthy * 100 >= total * self.min_health_percent as usize {
            Usable::Healthy
        } else if total > 0 && self.min_health_percent > 0 {
            Usable::All
        } else {
            Usable::None
        }
    }
}

/// One endpoint's ejections under an [`Outlier`] (the proxy's and the kernel path's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Ejected until then (the end of the last ejection once it passed).
    until: Option<Instant>,
    /// Ejections counted for the next one's length.
    count: u32,
}

impl Ejection {
    pub fn ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Ejects the endpoint at `now` for `baseEjectionTime` × its ejections (at most
    /// Envoy's 300 s), and returns for how long. Healthy since the last ejection
    /// ended, the count falls back by one per `interval` (Envoy's).
    pub fn eject(&mut self, o: &Outlier, now: Instant) -> Duration {
        if let Some(until) = self.until {
            let healthy = now.saturating_duration_since(until).as_nanos();
            let steps = healthy / o.interval.as_nanos().max(1);
            self.count = self
                .count
                .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        self.count += 1;
        let length = o.base_ejection.saturating_mul(self.count).min(MAX_EJECTION);
        self.until = Some(now + length);
        length
    }

    /// When the ejection ends (None: never ejected).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

/// What a DestinationRule's `trafficPolicy` makes the proxy do for one destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicy {
    pub balance: Balance,
    /// `consistentHash`: the endpoint follows this key of the request (instead of
    /// `balance`) when the request has one.
    pub hash: Option<HashKey>,
    pub outlier: Option<Outlier>,
    /// `connectionPool`'s connects and connection reuse.
    pub pool: ConnPool,
}

/// A destination's `connectionPool` (None: no limit, Istio's default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnPool {
    /// `tcp.connectTimeout` (None: `--connect-timeout`, 10 s as Istio's default).
    pub connect_timeout: Option<Duration>,
    /// `http.maxRequestsPerConnection` (1: no keep-alive upstream; None: no limit).
    pub max_requests: Option<u32>,
    /// `http.idleTimeout`: an upstream connection idle this long is not used again.
    pub idle_timeout: Option<Duration>,
    /// Envoy's circuit breakers for the destination; past one: 503 `UO`.
    pub limits: Limits,
}

/// `connectionPool`'s bounds on a destination as a whole (all its endpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// `tcp.maxConnections`: upstream connections in use at once (HTTP/1.1: one
    /// request each); a request finding them all in use waits for one.
    pub connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub pending: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight (Envoy applies it to HTTP/1.1 too).
    pub requests: Option<u32>,
    /// `http.maxRetries`: retries in progress at once; past it a failure is not retried.
    pub retries: Option<u32>,
}

impl Limits {
    pub fn any(&self) -> bool {
        *self != Limits::default()
    }
}

/// What a request is hashed by (`consistentHash`, and lb's sticky subsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    /// `httpCookie`.
    Cookie(Cookie),
    SourceIp,
    Query(String),
}

/// `httpCookie`: the cookie a request is hashed by, and whether lb sets it when a
/// request comes without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    /// `ttl` (and `path`): set, a request without the cookie gets one generated, set
    /// on its answer (Envoy's); `ttl: 0s` makes it a session cookie.
    pub generate: Option<(Duration, Option<String>)>,
}

impl Cookie {
    /// For a request without the cookie: the generated value's hash (the key it and
    /// the requests carrying it hash to) and the `Set-Cookie` value. The value is a
    /// hash of the client's address (as Envoy's), so explain and both engines agree.
    pub fn generated(&self, r: &super::Request<'_>) -> Option<(u64, String)> {
        let (ttl, path) = self.generate.as_ref()?;
        let client = r.peer.map(|ip| ip.to_string()).unwrap_or_default();
        let value = format!("{:016x}", stable_hash(client.as_bytes()));
        let mut set = format!("{}={value}", self.name);
        if !ttl.is_zero() {
            set.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
        }
        if let Some(p) = path {
            set.push_str(&format!("; Path={p}"));
        }
        set.push_str("; HttpOnly");
        Some((stable_hash(value.as_bytes()), set))
    }
}

impl HashKey {
    /// Parses lb's annotation form: `header:<name>`, `cookie:<name>`,
    /// `query:<name>` or `source-ip`.
    pub fn parse(text: &str) -> Option<HashKey> {
        match text.trim().split_once(':') {
            Some(("header", n)) => http::HeaderName::from_bytes(n.trim().as_bytes())
                .ok()
                .map(HashKey::Header),
            Some(("cookie", n)) if !n.trim().is_empty() => Some(HashKey::Cookie(Cookie {
                name: n.trim().into(),
                generate: None,
            })),
            Some(("query", n)) if !n.trim().is_empty() => Some(HashKey::Query(n.trim().into())),
            None if text.trim() == "source-ip" => Some(HashKey::SourceIp),
            _ => None,
        }
    }

    /// Whether reading the key needs the request's headers.
    pub fn reads_headers(&self) -> bool {
        matches!(self, HashKey::Header(_) | HashKey::Cookie(_))
    }

    /// The request's key, hashed; None when it has none (the pick is then random).
    pub fn of(&self, r: &super::Request<'_>) -> Option<u64> {
        match self {
            HashKey::Header(n) => r.headers.get(n).map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(Cookie { name, .. }) => r
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| stable_hash(v.as_bytes()))
                }),
            HashKey::SourceIp => r.peer.map(|ip| stable_hash(ip.to_string().as_bytes())),
            HashKey::Query(name) => super::path::split_query(r.path_and_query)
                .1
                .trim_start_matches('?')
                .split('&')
                .find_map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k == name).then(|| stable_hash(v.as_bytes()))
                }),
        }
    }
}

/// FNV-1a, 64 bits: the same key hashes the same on every node and every version of
/// lb (std's hashers promise neither).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix (FNV's low bits are weak for short keys).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Rendezvous (highest random weight) hashing: the candidate whose mix with `key`
/// is highest. A key stays on its endpoint while that endpoint exists; removing one
/// moves only its keys — the property Istio's ring hash and Maglev give.
pub fn rendezvous(
    key: u64,
    candidates: impl Iterator<Item = (usize, SocketAddr)>,
) -> Option<usize> {
    candidates
        .max_by_key(|(_, ep)| {
            let mut b = [0u8; 26];
            b[..8].copy_from_slice(&key.to_le_bytes());
            let ip = match ep.ip() {
                std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v) => v.octets(),
            };
            b[8..24].copy_from_slice(&ip);
            b[24..].copy_from_slice(&ep.port().to_le_bytes());
            stable_hash(&b)
        })
        .map(|(i, _)| i)
}

/// The destination a key lands in, by weight (lb's sticky subsets): the same key
/// always lands in the same one while the weights stay, and keys spread by weight.
pub fn by_weight<T>(key: u64, items: &[T], weight: impl Fn(&T) -> u32) -> Option<&T> {
    let total: u64 = items.iter().map(|d| u64::from(weight(d))).sum();
    if total == 0 {
        return items.first();
    }
    let mut n = key % total;
    for d in items {
        let w = u64::from(weight(d));
        if n < w {
            return Some(d);
        }
        n -= w;
    }
    items.last()
}

/// `fault`: delays and aborts injected for a share of the requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// The delay and the share of requests (0–100 %) that get it.
    pub delay: Option<(Duration, f64)>,
    /// The status answered instead of forwarding, and the share.
    pub abort: Option<(u16, f64)>,
}

/// A Go / Kubernetes duration (`10s`, `0.5s`, `250ms`, `1m30s`, `1h`), as Istio's
/// `timeout`, `perTryTimeout` and `fixedDelay` take them.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        let ms = |t| parse_duration(t).map(|d| d.as_millis());
        assert_eq!(ms("10s"), Some(10_000));
        assert_eq!(ms("0.5s"), Some(500));
        assert_eq!(ms("250ms"), Some(250));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("1h"), Some(3_600_000));
        for bad in ["", "10", "s", "1x", "1.2.3s", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_tried_while_there_is_one() {
        let eps: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.{i}:80").parse().expect("addr"))
            .collect();
        for _ in 0..100 {
            let next = another(&eps, &eps[..1]);
            assert_ne!(next, eps[0]);
            assert_eq!(another(&eps, &eps[..2]), eps[2]);
            assert!(eps.contains(&another(&eps, &eps)));
        }
    }

    #[test]
    fn keys_stay_on_their_endpoint_and_spread_by_weight() {
        let eps: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("127.0.0.{i}:80").parse().expect("addr"))
            .collect();
        let pick = |key: u64, eps: &[SocketAddr]| {
            rendezvous(key, eps.iter().copied().enumerate()).map(|i| eps[i])
        };
        let mut moved = 0;
        for user in 0..1000u32 {
            let key = stable_hash(format!("user-{user}").as_bytes());
            let before = pick(key, &eps).expect("one");
            assert_eq!(
                pick(key, &eps),
                Some(before),
                "the same key, the same endpoint"
            );
            // Without endpoint 4, only its keys move.
            let after = pick(key, &eps[..3]).expect("one");
            if before != eps[3] {
                assert_eq!(after, before);
            } else {
                moved += 1;
            }
        }
        assert!(
            (180..320).contains(&moved),
            "about a quarter lived on the 4th: {moved}"
        );
        let weights = [90u32, 10];
        let in_first = (0..10_000u32)
            .filter(|u| {
                let key = stable_hash(format!("user-{u}").as_bytes());
                std::ptr::eq(by_weight(key, &weights, |w| *w).expect("one"), &weights[0])
            })
            .count();
        assert!(
            (8_800..9_200).contains(&in_first),
            "90 % by weight: {in_first}"
        );
    }

    #[test]
    fn retry_on_reads_envoys_policies_and_codes() {
        let d = RetryOn::parse(ISTIO_DEFAULT_RETRY_ON).expect("parses");
        assert!(d.connect() && !d.no_answer());
        assert!(d.status(503, None) && !d.status(500, None) && !d.status(502, None));
        assert!(d.status(200, Some(14)), "gRPC unavailable");
        let g = RetryOn::parse("gateway-error").expect("parses");
        assert!(g.status(502, None) && g.status(504, None) && !g.status(500, None));
        assert!(g.connect() && g.no_answer());
        let x = RetryOn::parse("5xx,409").expect("parses");
        assert!(x.status(500, None) && x.status(409, None) && !x.status(404, None));
        let c = RetryOn::parse("connect-failure").expect("parses");
        assert!(c.connect() && !c.no_answer() && !c.on_status());
        assert_eq!(RetryOn::parse("5xx,bogus"), Err("bogus".into()));
        assert_eq!(RetryOn::parse("99"), Err("99".into()));
    }
}
