//! One request on hyper's path: route it (`decide`, shared with the lean path, on the
//! shared `route` code), then forward it to an endpoint, answer it locally (redirect,
//! direct response, 404, 503), or tunnel an `Upgrade`. Bodies stream both ways. Also
//! what both paths record per request (`record`: metrics, access log).

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use super::pool::UpstreamError;
use super::replay::Replayable;
use hyper_util::rt::TokioIo;

use super::access_log::Entry;
use super::balance::{Active, Answered};
use super::{Shared, h1};
use crate::route;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// The connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s IP as a header value (X-Forwarded-For), built once per connection.
    pub peer_ip: Option<HeaderValue>,
    /// The service address the client dialled (original-destination map).
    pub dialled: Option<SocketAddrV4>,
    /// The front end's verdict on each request head, on hyper's HTTP/1 path (the
    /// guard computes them from the bytes hyper reads); None on HTTP/2.
    pub verdicts: Option<Arc<super::guard::Verdicts>>,
    /// When the client stream last moved a byte, on hyper's path (the stream-idle
    /// bound); None on the lean path, which bounds each read and write itself.
    pub activity: Option<super::idle::Activity>,
}

/// Hop-by-hop headers are never forwarded (or a client's `Connection: close` would
/// close the pooled upstream connection).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them (keep-alive is HTTP/1.1's default): one pass
    // over the few headers present beats eight hashed removals.
    if !h.keys().any(|k| h1::connection::is_hop_by_hop(k.as_str())) {
        return;
    }
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &named {
        h.remove(n);
    }
    for n in h1::connection::HOP_BY_HOP {
        h.remove(n);
    }
}

fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// lb's answer to a request its front end refuses (the lean path writes the same
/// bytes, `Refusal::answer`); the connection closes after it.
pub(super) fn refusal(r: h1::Refusal, outcome: &mut Outcome<'_>) -> Response<Body> {
    outcome.refuse(r);
    let mut resp = local(
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST),
        r.body(),
    );
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(allow) = r.allow() {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// What the access log and metrics record about a request.
pub(super) struct Outcome<'t> {
    pub status: u16,
    pub flags: &'static str,
    pub upstream: Option<SocketAddr>,
    pub rule: Option<&'t route::Rule>,
    pub destination: Option<&'t route::Destination>,
    /// Why the front end refused the request (`lb_proxy_refused_total`).
    pub refusal: Option<h1::Refusal>,
    /// The Host (as looked up) when it named no VirtualService host and the dialled
    /// service's routes applied (counted per service for `lb status`).
    pub unknown_host: Option<String>,
}

impl Outcome<'_> {
    /// Records a refusal by the front end.
    pub(super) fn refuse(&mut self, r: h1::Refusal) {
        self.status = r.status();
        self.flags = r.flag();
        self.refusal = Some(r);
    }
}

impl Default for Outcome<'_> {
    fn default() -> Self {
        Outcome {
            status: 0,
            flags: "-",
            upstream: None,
            rule: None,
            destination: None,
            refusal: None,
            unknown_host: None,
        }
    }
}

/// The request as the access log names it.
pub(super) struct Logged<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub version: Version,
    /// When the request was read (only with the access log: a clock read otherwise).
    pub start: Option<Instant>,
}

/// Which of the proxy's engines answered a request.
pub(super) enum Engine {
    Lean,
    Hyper,
}

/// Counts a finished request in the metrics and writes its access-log line.
pub(super) fn record(
    shared: &Shared,
    table: &Arc<route::RouteTable>,
    conn: &ConnInfo,
    req: &Logged<'_>,
    outcome: &Outcome<'_>,
    engine: Engine,
) {
    let m = &shared.metrics;
    m.count(table, conn.dialled, outcome.destination, outcome.status);
    if let (Some(host), Some(d), Some(k)) = (&outcome.unknown_host, conn.dialled, &shared.kernel)
        && let Ok(mut k) = k.lock()
    {
        k.unknown_host(d, host);
    }
    if let Some(r) = outcome.refusal {
        m.refused(r);
    }
    match engine {
        Engine::Lean => m.lean.inc(),
        Engine::Hyper => m.hyper.inc(),
    };
    if let Some(log) = &shared.log {
        let route = outcome
            .rule
            .map_or("-", |r| r.name.as_deref().unwrap_or("default"));
        log.log(&Entry {
            method: req.method,
            path: req.path,
            version: req.version,
            status: outcome.status,
            flags: outcome.flags,
            upstream: outcome.upstream,
            duration_ms: req.start.map_or(0, |s| s.elapsed().as_millis()),
            route,
        });
    }
}

/// Handles one request; never fails (errors become 4xx/5xx answers).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Timed only for the access log (a clock read per request otherwise).
    let start = shared.log.as_ref().map(|_| Instant::now());
    let table = shared.table.borrow().clone();
    let (method, version) = (req.method().clone(), req.version());
    // Only kept when the access log is on (a refcount, not a copy).
    let path_log = shared
        .log
        .as_ref()
        .and_then(|_| req.uri().path_and_query().cloned());
    let (resp, outcome) = route_request(&shared, &table, &conn, req).await;
    let logged = Logged {
        method: method.as_str(),
        path: path_log.as_ref().map_or("/", |p| p.as_str()),
        version,
        start,
    };
    record(&shared, &table, &conn, &logged, &outcome, Engine::Hyper);
    Ok(resp)
}

/// A request routed to an endpoint, ready to send.
struct Forward<'t> {
    up: Request<Incoming>,
    endpoint: SocketAddr,
    /// The destination's endpoints (a connect retry goes to another).
    endpoints: &'t [SocketAddr],
    destination: &'t route::Destination,
    /// The fault's delay, if this request drew it.
    delay: Option<std::time::Duration>,
    rule: &'t route::Rule,
    /// The client side of an `Upgrade` request, if it is one.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A generated hash cookie for the answer.
    set_cookie: Option<String>,
    /// The destination's policy at the port the request goes to.
    dest_policy: &'t route::policy::DestinationPolicy,
    /// The in-flight counts of `endpoints`, and `endpoint`'s index there.
    in_flight: &'t [std::sync::atomic::AtomicU32],
    index: usize,
}

/// Where routing sends a request: upstream, or answered by the proxy itself.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing would allocate per request"
)]
enum Routed<'t> {
    Forward(Forward<'t>),
    Answer(Response<Body>),
}

fn done<'t>(resp: Response<Body>, mut o: Outcome<'t>) -> (Response<Body>, Outcome<'t>) {
    o.status = resp.status().as_u16();
    (resp, o)
}

/// Routes and forwards one request. Only the send is awaited: routing (`prepare`) and
/// the answer (`finish`) are plain functions, so the future hyper moves into place
/// per request holds little more than the upstream send (`handle`'s future: 3.2 KB
/// with everything in one async fn, 2.3 KB after the split in session 6; memmove
/// showed in the profile). The traffic policy's waits (delay, timeouts, the connect
/// retries) are here too; connecting stays boxed (`Pool::sender`).
async fn route_request<'t>(
    shared: &Shared,
    table: &'t route::RouteTable,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> (Response<Body>, Outcome<'t>) {
    let mut outcome = Outcome::default();
    let fwd = match prepare(shared, table, conn, req, &mut outcome) {
        Routed::Forward(f) => f,
        Routed::Answer(resp) => return done(resp, outcome),
    };
    let Forward {
        up,
        mut endpoint,
        endpoints,
        destination,
        delay,
        rule,
        client_upgrade,
        set_cookie,
        dest_policy,
        in_flight,
        index,
    } = fwd;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
        outcome.flags = "DI";
    }
    let upgrade = client_upgrade.is_some();
    let policy = &rule.policy;
    let health = &shared.client.endpoints;
    let track = dest_policy.balance == route::policy::Balance::LeastRequest && endpoints.len() > 1;
    let send = async {
        // The destination's connectionPool bounds, held until the answer's head.
        let admitted = shared
            .client
            .breakers
            .admit(destination, dest_policy)
            .await?;
        let retry = &policy.retry;
        // Kept for a retry: the head, and the body while it fits (an upgrade's
        // connection is the client's from its 101 on: never sent twice).
        let (mut req, replay) = Replayable::first(up, retry.attempts > 0 && !upgrade);
        let mut previous = Vec::new();
        let mut _retrying = None;
        loop {
            let s = connect(
                shared,
                endpoints,
                policy,
                dest_policy,
                &mut endpoint,
                &mut previous,
                upgrade,
                &admitted,
                &mut outcome,
            )
            .await?;
            // In flight until the answer's head (LEAST_REQUEST compares these).
            let active = track.then(|| Active::begin(in_flight, endpoints, endpoint, index));
            let one = shared
                .client
                .send(endpoint, s, req, upgrade, &dest_policy.pool);
            let sent = match retry.per_try {
                Some(t) => tokio::time::timeout(t, one)
                    .await
                    .unwrap_or(Err(UpstreamError::TryTimeout(endpoint))),
                None => one.await,
            };
            drop(active);
            if let Some(o) = &dest_policy.outlier {
                let a = match &sent {
                    Ok(resp) => Answered::Status(resp.status().as_u16()),
                    Err(_) => Answered::Nothing,
                };
                health.report(o, endpoints, endpoint, a);
            }
            let again = match &sent {
                Ok(resp) => retry.on.status(resp.status().as_u16(), None),
                Err(UpstreamError::Http(_) | UpstreamError::TryTimeout(_)) => retry.on.no_answer(),
                Err(_) => false,
            };
            if !again {
                break sent;
            }
            if previous.len() >= retry.attempts as usize {
                outcome.flags = "URX";
                break sent;
            }
            // Sent again only whole, and within the destination's maxRetries.
            let Some(next) = replay.as_ref().and_then(Replayable::again) else {
                break sent;
            };
            let Some(ticket) = super::limits::may_retry(&admitted) else {
                break sent;
            };
            _retrying = ticket;
            shared.metrics.retries.inc();
            previous.push(endpoint);
            endpoint = route::policy::another(endpoints, &previous);
            req = next;
        }
    };
    let send = async {
        let sent = match &conn.activity {
            Some(a) => a.within(shared.front.bounds.stream_idle, send).await,
            None => Some(send.await),
        };
        // Here the route timeout bounds the wait for the answer's head (each try's
        // per-try timeout is inside).
        sent.ok_or(TimedOut::Stream)
    };
    let sent = match policy.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .unwrap_or(Err(TimedOut::Route)),
        None => send.await,
    };
    outcome.upstream = Some(endpoint);
    let sent = match sent {
        Ok(sent) => Some(sent),
        Err(TimedOut::Route) => {
            outcome.flags = "UT";
            return done(
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
                outcome,
            );
        }
        Err(TimedOut::Stream) => None,
    };
    let Some(sent) = sent else {
        // No byte moved for the bound: the client's body stalled, or the upstream
        // said nothing.
        let in_body = conn.verdicts.as_ref().is_some_and(|v| v.in_body());
        if in_body {
            return done(refusal(h1::Refusal::BodyTimeout, &mut outcome), outcome);
        }
        outcome.flags = "UT";
        return done(
            local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
            outcome,
        );
    };
    let mut resp = finish(
        sent,
        conn,
        endpoint,
        rule,
        destination,
        client_upgrade,
        &mut outcome,
    );
    if let Some(v) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    done(resp, outcome)
}

/// Which bound ended the wait for an answer.
enum TimedOut {
    /// Nothing moved for the stream-idle bound.
    Stream,
    /// The rule's timeout (or per-try timeout) passed.
    Route,
}

/// A sender to `endpoint`, or — when the connect fails and the rule's retry policy
/// retries connect failures — to another of `endpoints` (which `endpoint` then names;
/// `previous` holds the endpoints tried so far, the retries spent).
/// The request is not sent yet, so any request can go elsewhere.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument distinct"
)]
async fn connect(
    shared: &Shared,
    endpoints: &[SocketAddr],
    policy: &route::policy::Policy,
    dest_policy: &route::policy::DestinationPolicy,
    endpoint: &mut SocketAddr,
    previous: &mut Vec<SocketAddr>,
    upgrade: bool,
    admitted: &Option<super::limits::Admitted>,
    outcome: &mut Outcome<'_>,
) -> Result<super::pool::Sender, super::pool::UpstreamError> {
    use super::pool::UpstreamError::{Connect, Timeout};
    let retry = &policy.retry;
    let mut _retrying = None;
    loop {
        let pool = &dest_policy.pool;
        let sender = shared.client.sender(*endpoint, upgrade, pool).await;
        if let (Err(Connect(..) | Timeout(_)), Some(o)) = (&sender, &dest_policy.outlier) {
            shared
                .client
                .endpoints
                .report(o, endpoints, *endpoint, Answered::Nothing);
        }
        match sender {
            Err(Connect(..) | Timeout(_))
                if retry.on.connect()
                    && previous.len() < retry.attempts as usize
                    && let Some(ticket) = super::limits::may_retry(admitted) =>
            {
                _retrying = ticket;
                shared.metrics.retries.inc();
                previous.push(*endpoint);
                *endpoint = route::policy::another(endpoints, previous);
            }
            Err(e @ (Connect(..) | Timeout(_))) if retry.on.connect() && retry.attempts > 0 => {
                outcome.flags = "URX";
                return Err(e);
            }
            other => return other,
        }
    }
}

/// Where routing sends a request: to an endpoint, or answered by the proxy.
pub(super) enum Decision<'t> {
    Upstream(route::Target<'t>),
    /// 404 (no route), 503 (no endpoint), a fault's abort, a redirect or a direct
    /// response.
    Local(route::Local<'t>),
    /// A path that does not normalise (400).
    Refused(h1::Refusal),
}

/// Selects the rule for a request and decides with the shared decision
/// ([`route::decide`], also `lb explain`'s), noting in `outcome` what the access log
/// and metrics record; local answers become responses. `host_as_sent`: the request's
/// Host header is `r.authority`.
pub(super) fn decide<'t>(
    table: &'t route::RouteTable,
    r: &route::Request<'_>,
    host_as_sent: bool,
    endpoints: &super::balance::Endpoints,
    outcome: &mut Outcome<'t>,
) -> Decision<'t> {
    let Ok(sel) = table.select(r) else {
        outcome.refuse(h1::Refusal::BadPath);
        return Decision::Refused(h1::Refusal::BadPath);
    };
    outcome.unknown_host = sel.by_dialled_service.then(|| route::host_key(r.authority));
    let mut pick = super::balance::Live(endpoints);
    match route::decide(table, &sel, r, host_as_sent, &mut pick) {
        route::Verdict::Upstream(t) => {
            outcome.rule = Some(t.rule);
            outcome.destination = Some(t.destination);
            outcome.upstream = Some(t.endpoint);
            Decision::Upstream(t)
        }
        route::Verdict::Local(l) => {
            outcome.rule = l.rule;
            outcome.destination = l.destination;
            outcome.flags = l.flag;
            Decision::Local(l)
        }
    }
}

/// lb's own answer as a response.
fn local_answer(l: &route::Local<'_>) -> Response<Body> {
    let status = StatusCode::from_u16(l.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = local(status, Bytes::copy_from_slice(l.body.as_bytes()));
    if let Some(loc) = &l.location
        && let Ok(v) = HeaderValue::from_str(loc)
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if l.flag == "DR"
        && let Some(rule) = l.rule
    {
        rule.edits.response().apply(resp.headers_mut());
    }
    resp
}

/// Routes `req` ([`decide`]) and builds the upstream request; or the local answer
/// (400, 404, 503, redirect, direct response).
fn prepare<'t>(
    shared: &Shared,
    table: &'t route::RouteTable,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    outcome: &mut Outcome<'t>,
) -> Routed<'t> {
    // The front end's verdict on this head (proxy/guard.rs), as the lean path has it.
    if let Some(v) = &conn.verdicts
        && let Err(r) = v.next()
    {
        return Routed::Answer(refusal(r, outcome));
    }
    // Borrowed from the request: no allocation on the hot path. An absolute-form
    // target's (or h2's) authority routes, and replaces Host (RFC 9112 §3.2.2).
    let host_header = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let authority: &str = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or(host_header)
        .unwrap_or("");
    let path_and_query: &str = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let host_as_sent = host_header == Some(authority);
    let r = route::Request {
        method: req.method().as_str(),
        scheme,
        path_and_query,
        authority,
        headers: req.headers(),
        dialled: conn.dialled,
        peer: Some(conn.peer.ip()),
    };
    let target = match decide(table, &r, host_as_sent, &shared.client.endpoints, outcome) {
        Decision::Upstream(t) => t,
        Decision::Local(l) => return Routed::Answer(local_answer(&l)),
        Decision::Refused(r) => return Routed::Answer(refusal(r, outcome)),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| req.version() == Version::HTTP_11);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(host) = &target.host
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, v);
    }
    append_forwarded_for(&mut headers, conn);
    target.destination.edits.request().apply(&mut headers);
    target.rule.edits.request().apply(&mut headers);
    // After the rule's edits: no rule removes the loop marker.
    headers.append(header::VIA, shared.front.via_header.clone());
    mirror(
        shared,
        &target,
        &parts.method,
        &headers,
        &body,
        upgrade.is_some(),
    );
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
    // Origin-form: the pool talks to the endpoint directly, no absolute URI needed.
    let Ok(uri) = http::Uri::try_from(target.path) else {
        return Routed::Answer(local(StatusCode::BAD_REQUEST, "bad path\n"));
    };
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;
    Routed::Forward(Forward {
        up,
        endpoint: target.endpoint,
        endpoints: target.endpoints,
        destination: target.destination,
        delay: target.delay,
        rule: target.rule,
        client_upgrade,
        set_cookie: target.set_cookie,
        dest_policy: target.policy,
        in_flight: target.in_flight,
        index: target.index,
    })
}

/// The answer to the client from the upstream's: a 101 joins the two upgraded
/// connections; otherwise the response goes back with hop-by-hop headers removed and
/// the rule's header edits.
fn finish<'t>(
    sent: Result<Response<Incoming>, super::pool::UpstreamError>,
    conn: &ConnInfo,
    endpoint: SocketAddr,
    rule: &'t route::Rule,
    destination: &route::Destination,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    outcome: &mut Outcome<'t>,
) -> Response<Body> {
    let upgrading = client_upgrade.is_some();
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("upstream {endpoint}: {e}");
            // The request's own body broke on the way: the client's fault.
            if let Some(why) = conn.verdicts.as_ref().and_then(|v| v.body_broke()) {
                return refusal(why, outcome);
            }
            if let UpstreamError::TryTimeout(_) = e {
                // As the lean path: the last try's timeout, whatever came before.
                outcome.flags = "UT";
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n");
            }
            if let UpstreamError::Overflow(_) | UpstreamError::Breaker(_) = e {
                outcome.flags = "UO";
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connections overflow\n",
                );
            }
            // Retries used up on connect failures: Envoy's URX beside UF.
            outcome.flags = if outcome.flags == "URX" {
                "UF,URX"
            } else {
                "UF"
            };
            return local(StatusCode::BAD_GATEWAY, "upstream connect error\n");
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    destination.edits.response().apply(&mut parts.headers);
    rule.edits.response().apply(&mut parts.headers);
    // A declined upgrade: the guard stopped following the stream at its head (a
    // tunnel might have followed), so the connection ends here.
    if upgrading {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if parts.status.is_informational() {
        parts.status = StatusCode::BAD_GATEWAY;
    }
    Response::from_parts(parts, body.boxed())
}

/// The copies a `mirror` rule asks for, on hyper's path: only of a request without a
/// body (hyper's streams its body once; the lean path keeps bodies up to 64 KiB).
fn mirror(
    shared: &Shared,
    target: &route::Target<'_>,
    method: &http::Method,
    headers: &HeaderMap,
    body: &Incoming,
    upgrade: bool,
) {
    use hyper::body::Body as _;
    if target.mirrors.is_empty() {
        return;
    }
    let m = &shared.metrics;
    if upgrade || !body.is_end_stream() {
        m.mirror_dropped.inc_by(target.mirrors.len() as u64);
        return;
    }
    // Host is in `headers` already (the client's, or the one `target.host` set).
    let named = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let head = super::mirror::head(method.as_str(), &target.path, named);
    super::mirror::copies(shared, &target.mirrors, &head, &[]);
}

fn append_forwarded_for(h: &mut HeaderMap, conn: &ConnInfo) {
    let name = HeaderName::from_static("x-forwarded-for");
    let value = match h.get(&name).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip())).ok(),
        // The client's own address, formatted once per connection.
        None => conn.peer_ip.clone(),
    };
    if let Some(v) = value {
        h.insert(name, v);
    }
}
