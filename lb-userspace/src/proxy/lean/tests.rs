use super::answer::Framing;
use super::head::upstream_head;
use super::parse_answer;
use crate::route::{Action, Edits, HeaderOps, Rule};
use crate::route::{Destination, Target};
use http::{HeaderName, HeaderValue};

const DATE: &str = "now";
static NO_EDITS: HeaderOps = HeaderOps {
    set: Vec::new(),
    add: Vec::new(),
    remove: Vec::new(),
};

fn edits(
    set: &[(&'static str, &'static str)],
    add: &[(&'static str, &'static str)],
    remove: &[&'static str],
) -> HeaderOps {
    let pair = |(n, v): &(&'static str, &'static str)| {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    };
    HeaderOps {
        set: set.iter().map(pair).collect(),
        add: add.iter().map(pair).collect(),
        remove: remove.iter().map(|n| HeaderName::from_static(n)).collect(),
    }
}

/// The destination `svc` with no endpoints (the helpers name their own).
fn svc() -> Destination {
    Destination::new("svc".into(), None, "(all)".into(), Default::default())
}

fn rule() -> Rule {
    Rule {
        name: None,
        matches: Vec::new(),
        action: Action::Direct {
            status: 200,
            body: None,
        },
        edits: Default::default(),
        policy: Default::default(),
        sticky: None,
        mirrors: Vec::new(),
    }
}

#[test]
fn upstream_head_drops_hop_by_hop_and_sets_host_and_forwarded_for() {
    let text = b"GET /test/v2?q=1 HTTP/1.1\r\nHost: svc:80\r\nConnection: close, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\nTE: trailers\r\n\r\n";
    let rule = rule();
    assert_eq!(
        head_for(text, &rule, "/test?q=1", None, Some(b"127.0.0.9")),
        "GET /test?q=1 HTTP/1.1\r\nHost: svc:80\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.9\r\nvia: 1.1 lb-t\r\n\r\n"
    );
    assert_eq!(
        head_for(text, &rule, "/test?q=1", Some("rewritten"), None),
        "GET /test?q=1 HTTP/1.1\r\nhost: rewritten\r\nAccept: */*\r\nvia: 1.1 lb-t\r\n\r\n"
    );
}

#[test]
fn the_upstream_frames_a_body_by_lbs_own_content_length() {
    let text = b"POST /a HTTP/1.1\r\nContent-Length: 012\r\nHost: svc\r\nX-Secret: s\r\nConnection: X-Secret\r\n\r\n";
    assert_eq!(
        head_for(text, &rule(), "/a", None, None),
        "POST /a HTTP/1.1\r\nHost: svc\r\ncontent-length: 12\r\nvia: 1.1 lb-t\r\n\r\n"
    );
}

/// The head `upstream_head` builds for the GET `text` under `rule`.
fn head_for(
    text: &[u8],
    rule: &Rule,
    path: &str,
    host: Option<&str>,
    peer_ip: Option<&[u8]>,
) -> String {
    let mut storage = [httparse::EMPTY_HEADER; 8];
    let head = crate::proxy::h1::check(text, &mut storage, &Default::default(), b"")
        .expect("valid")
        .expect("complete");
    let destination = svc();
    let target = Target {
        rule,
        destination: &destination,
        endpoint: "127.0.0.1:1".parse().expect("addr"),
        path: path.into(),
        host: host.map(Into::into),
        endpoints: &[],
        in_flight: &[],
        index: 0,
        delay: None,
        policy: &destination.policy,
        mirrors: Vec::new(),
        set_cookie: None,
    };
    let up = upstream_head(&target, head.headers, &head.checked, peer_ip, b"1.1 lb-t");
    String::from_utf8_lossy(&up).into_owned()
}

#[test]
fn the_rules_edits_come_last_on_both_heads() {
    let text =
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Set: original\r\nX-Added: mine\r\nX-Removed: r\r\n\r\n";
    let mut rule = rule();
    let request = edits(
        &[("x-set", "s"), ("x-forwarded-for", "fixed")],
        &[("x-added", "a")],
        &["x-removed", "host"],
    );
    rule.edits = Edits::new(request, HeaderOps::default());
    assert_eq!(
        head_for(text, &rule, "/", None, Some(b"127.0.0.9")),
        "GET / HTTP/1.1\r\nX-Added: mine\r\nx-set: s\r\nx-forwarded-for: fixed\r\nx-added: a\r\nvia: 1.1 lb-t\r\n\r\n"
    );
    let ops = edits(&[("x-resp", "1")], &[], &["x-backend", "date"]);
    let a = parse_answer(
        b"HTTP/1.1 200 OK\r\nX-Backend: v1\r\nX-Resp: 0\r\nDate: then\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
        &ops,
        DATE,
    )
    .expect("valid")
    .expect("complete");
    assert_eq!(
        String::from_utf8_lossy(&a.head),
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-resp: 1\r\ndate: now\r\n\r\n",
        "a removed Date comes back as the proxy's, as hyper's server does"
    );
}

#[test]
fn answers_are_framed_and_their_heads_cleaned() {
    let parse = |text: &[u8], head_method: bool, close: bool| {
        parse_answer(text, head_method, close, &NO_EDITS, DATE)
            .expect("valid")
            .expect("complete")
    };
    let text = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nDate: then\r\nKeep-Alive: timeout=5\r\n\r\nabc";
    let a = parse(text, false, false);
    assert_eq!(
        (a.framing, a.reusable, a.close_client, a.len),
        (Framing::Length(3), true, false, text.len() - 3)
    );
    assert_eq!(
        String::from_utf8_lossy(&a.head),
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nDate: then\r\n\r\n",
        "the upstream's Date stays"
    );
    let a = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        false,
        true,
    );
    assert_eq!((a.framing, a.reusable), (Framing::Chunked, false));
    assert_eq!(
        String::from_utf8_lossy(&a.head),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ndate: now\r\nconnection: close\r\n\r\n"
    );
    let a = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTransfer-Encoding: \r\n\r\n",
        false,
        false,
    );
    assert_eq!(
        a.framing,
        Framing::Chunked,
        "an empty field line adds no coding"
    );
    let a = parse(b"HTTP/1.0 200 OK\r\n\r\nbody until close", false, false);
    assert_eq!(
        (a.framing, a.reusable, a.close_client),
        (Framing::UntilClose, false, true)
    );
    assert_eq!(
        String::from_utf8_lossy(&a.head),
        "HTTP/1.1 200 OK\r\ndate: now\r\nconnection: close\r\n\r\n"
    );
    let a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false);
    assert_eq!(a.framing, Framing::Empty, "the answer to HEAD has no body");
    let a = parse(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false);
    assert_eq!((a.framing, a.reusable), (Framing::Empty, true));
    let a = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        false,
        false,
    );
    assert!(a.interim && a.len == 25);
    assert_eq!(
        parse_answer(
            b"HTTP/1.1 200 OK\r\nContent-Le",
            false,
            false,
            &NO_EDITS,
            DATE
        ),
        Ok(None)
    );
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        // Found by the answer fuzz target: relayed as `HTTP/1.1 2`.
        b"HTTP/1.1 002 OK\r\n\r\n",
    ] {
        assert!(
            parse_answer(bad, false, false, &NO_EDITS, DATE).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// A scripted upstream on loopback: connection `i` answers its requests with
/// `script[i].0` in turn (each answer in two writes, so the relay sees it split),
/// then closes if `script[i].1`. Returns its address and the request bodies it got.
async fn upstream(
    script: Vec<(Vec<&'static [u8]>, bool)>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let got = bodies.clone();
    tokio::spawn(async move {
        for (answers, close) in script {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            for answer in answers {
                let mut chunk = [0u8; 1024];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let n = s.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse::<usize>().expect("length"));
                while buf.len() < end + len {
                    let n = s.read(&mut chunk).await.expect("read body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                got.lock().expect("lock").push(buf[end..end + len].to_vec());
                buf.drain(..end + len);
                let (a, b) = answer.split_at(answer.len() / 2);
                s.write_all(a).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b).await.expect("write");
            }
            if !close {
                // Kept open (pooled on lb's side) until the test ends.
                std::mem::forget(s);
            }
        }
    });
    (addr, bodies)
}

fn send(endpoint: std::net::SocketAddr, method: &str, body: &[u8]) -> super::Send<'static> {
    send_with(
        endpoint,
        method,
        body,
        crate::route::policy::Policy {
            retry: crate::route::policy::Retry::none(),
            ..Default::default()
        },
        &[],
    )
}

/// [`send`] under `policy`, with more endpoints for its retries.
fn send_with(
    endpoint: std::net::SocketAddr,
    method: &str,
    body: &[u8],
    policy: crate::route::policy::Policy,
    others: &[std::net::SocketAddr],
) -> super::Send<'static> {
    let head = format!(
        "{method} / HTTP/1.1\r\nhost: svc\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    super::Send {
        endpoint,
        head: head.into_bytes(),
        body_len: body.len() as u64,
        head_method: false,
        replayable: body.is_empty() && method == "GET",
        close: false,
        answer_edits: &NO_EDITS,
        // Leaked: a few bytes per test, for the 'static the helpers return.
        policy: Box::leak(Box::new(policy)),
        endpoints: Box::leak([&[endpoint][..], others].concat().into_boxed_slice()),
        destination: Box::leak(Box::new(svc())),
        dest_policy: Box::leak(Box::default()),
        in_flight: &[],
        index: 0,
        delay: None,
        mirrors: Vec::new(),
    }
}

/// Runs one exchange; returns (its result, what the client received, status).
async fn exchange_once(
    pool: &crate::proxy::pool::Pool,
    send: &super::Send<'_>,
    client_body: &[u8],
) -> (Result<bool, super::LeanError>, String, u16) {
    exchange_within(pool, send, client_body, std::time::Duration::from_secs(10)).await
}

/// [`exchange_once`] with `idle` as the stream-idle bound.
async fn exchange_within(
    pool: &crate::proxy::pool::Pool,
    send: &super::Send<'_>,
    client_body: &[u8],
    idle: std::time::Duration,
) -> (Result<bool, super::LeanError>, String, u16) {
    let (r, got, status, _) = exchange_tried(pool, send, client_body, idle).await;
    (r, got, status)
}

/// [`exchange_within`], also saying how the tries went.
async fn exchange_tried(
    pool: &crate::proxy::pool::Pool,
    send: &super::Send<'_>,
    client_body: &[u8],
    idle: std::time::Duration,
) -> (Result<bool, super::LeanError>, String, u16, super::Tried) {
    use tokio::io::AsyncReadExt as _;
    let (mut proxy_side, mut client_side) = tokio::io::duplex(1 << 16);
    let mut buf = bytes::BytesMut::from(client_body);
    let mut status = 0;
    let mut tried = super::Tried::default();
    let clock = super::Clock {
        idle,
        route: None,
        try_ends: None,
    };
    let r = super::exchange(
        &mut proxy_side,
        &mut buf,
        pool,
        send,
        clock,
        &mut status,
        &mut tried,
        || false,
    )
    .await;
    assert!(buf.is_empty(), "the body was consumed");
    // The client's side stays open while the exchange runs (a stalled body is the
    // client keeping its connection without sending).
    drop(proxy_side);
    let mut got = String::new();
    client_side
        .read_to_string(&mut got)
        .await
        .expect("read client side");
    (r, got, status, tried)
}

#[tokio::test]
async fn retries_go_to_another_endpoint_with_the_body_sent_again() {
    let unavailable: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy";
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // Istio's default policy: a 503 is tried again, on the other endpoint.
    let (busy, busy_got) = upstream(vec![(vec![unavailable], false)]).await;
    let (good, good_got) = upstream(vec![(vec![ok], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let idle = std::time::Duration::from_secs(10);
    let post = send_with(busy, "POST", b"payload", Default::default(), &[good]);
    let (r, got, status, tried) = exchange_tried(&pool, &post, b"payload", idle).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    assert_eq!((status, got.ends_with("\r\n\r\nok")), (200, true), "{got}");
    assert_eq!(
        (tried.retries, tried.endpoint, tried.exhausted),
        (1, Some(good), false)
    );
    assert_eq!(
        busy_got.lock().expect("lock").as_slice(),
        [b"payload".to_vec()]
    );
    assert_eq!(
        good_got.lock().expect("lock").as_slice(),
        [b"payload".to_vec()],
        "the body sent again"
    );
    // Retries used up: the last answer goes to the client, flagged exhausted.
    let (only, _) = upstream(vec![(vec![unavailable], false); 3]).await;
    let get = send_with(only, "GET", b"", Default::default(), &[]);
    let (r, got, status, tried) = exchange_tried(&pool, &get, b"", idle).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    assert_eq!((status, got.ends_with("busy")), (503, true), "{got}");
    assert_eq!((tried.retries, tried.exhausted), (2, true));
}

#[tokio::test]
async fn max_requests_per_connection_1_opens_a_connection_per_request() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // Each scripted connection answers one request and stays open: a second request
    // on the first connection would never be answered.
    let (addr, bodies) = upstream(vec![(vec![ok], false), (vec![ok], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let mut get = send(addr, "GET", b"");
    let mut dest = svc();
    std::sync::Arc::make_mut(&mut dest.policy).pool.max_requests = Some(1);
    get.dest_policy = Box::leak(Box::new(dest.policy.clone()));
    get.destination = Box::leak(Box::new(dest));
    for _ in 0..2 {
        let (r, got, status) = exchange_once(&pool, &get, b"").await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!((status, got.ends_with("ok")), (200, true));
        assert!(
            pool.take_raw(addr).is_none(),
            "not kept for another request"
        );
    }
    assert_eq!(bodies.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn a_connection_idle_past_idle_timeout_is_not_used_again() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // Each scripted connection answers one request, then stays open and silent.
    let (addr, bodies) = upstream(vec![(vec![ok], false), (vec![ok], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let mut get = send(addr, "GET", b"");
    let mut dest = svc();
    std::sync::Arc::make_mut(&mut dest.policy).pool.idle_timeout =
        Some(std::time::Duration::from_millis(50));
    get.dest_policy = Box::leak(Box::new(dest.policy.clone()));
    get.destination = Box::leak(Box::new(dest));
    for _ in 0..2 {
        let (r, got, status) = exchange_once(&pool, &get, b"").await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!((status, got.ends_with("ok")), (200, true), "{got}");
        // Kept, but past its idle timeout when the next request looks.
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    }
    assert_eq!(
        bodies.lock().expect("lock").len(),
        2,
        "a new connection each time"
    );
}

#[tokio::test]
async fn the_sweep_closes_connections_idle_past_idle_timeout() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _) = upstream(vec![(vec![ok], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let mut get = send(addr, "GET", b"");
    let mut dest = svc();
    let timeout = Some(std::time::Duration::from_millis(50));
    std::sync::Arc::make_mut(&mut dest.policy).pool.idle_timeout = timeout;
    get.dest_policy = Box::leak(Box::new(dest.policy.clone()));
    get.destination = Box::leak(Box::new(dest));
    let (r, _, status) = exchange_once(&pool, &get, b"").await;
    assert!(matches!(r, Ok(true)) && status == 200, "{r:?}");
    assert_eq!(pool.idle_count(), 1, "kept idle");
    // Within its timeout the sweep keeps it; past it, closes it (no request needed).
    pool.sweep();
    assert_eq!(pool.idle_count(), 1, "still within its timeout");
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    pool.sweep();
    assert_eq!(pool.idle_count(), 0, "swept");
}

#[tokio::test]
async fn connect_failures_are_retried_and_a_500_is_not_by_default() {
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let failing: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
    let (broken, _) = upstream(vec![(vec![failing], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let idle = std::time::Duration::from_secs(10);
    let get = send_with(refusing, "GET", b"", Default::default(), &[broken]);
    let (r, _, status, tried) = exchange_tried(&pool, &get, b"", idle).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    assert_eq!(
        (status, tried.retries),
        (500, 1),
        "refused, then a 500 kept"
    );
    // With retryOn 5xx and a body past the replay bound, the 500 is not tried again.
    let big = vec![b'x'; super::retry::REPLAY_LIMIT as usize + 1];
    let (broken, _) = upstream(vec![(vec![failing], false)]).await;
    let policy = crate::route::policy::Policy {
        retry: crate::route::policy::Retry {
            attempts: 3,
            per_try: None,
            on: crate::route::policy::RetryOn::parse("5xx").expect("parses"),
        },
        ..Default::default()
    };
    let post = send_with(broken, "POST", &big, policy, &[]);
    let (r, _, status, tried) = exchange_tried(&pool, &post, &big, idle).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    assert_eq!(
        (status, tried.retries),
        (500, 0),
        "a body not kept is not sent again"
    );
}

#[tokio::test]
async fn relays_chunked_and_until_close_answers_and_pools_only_clean_ends() {
    let chunked: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: then\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let unframed: &[u8] = b"HTTP/1.1 200 OK\r\ndate: then\r\n\r\nuntil the end";
    let (addr, _) = upstream(vec![(vec![chunked, unframed], true)]).await;
    let pool = crate::proxy::pool::Pool::default();
    let (r, got, status) = exchange_once(&pool, &send(addr, "GET", b""), b"").await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    assert_eq!(status, 200);
    assert_eq!(got.as_bytes(), chunked, "relayed as it came");
    // The chunked answer ended cleanly: its socket was pooled and carries the next.
    let (r, got, _) = exchange_once(&pool, &send(addr, "GET", b""), b"").await;
    assert!(
        matches!(r, Ok(false)),
        "an answer ending at close closes the client"
    );
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: then\r\nconnection: close\r\n\r\nuntil the end"
    );
    assert!(
        pool.take_raw(addr).is_none(),
        "a socket at its end is not pooled"
    );
}

#[tokio::test]
async fn a_pooled_socket_the_upstream_closed_is_replaced() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, bodies) =
        upstream(vec![(vec![ok], true), (vec![ok], true), (vec![ok], false)]).await;
    let pool = crate::proxy::pool::Pool::default();
    for (method, body) in [("GET", &b""[..]), ("GET", b""), ("POST", b"payload")] {
        // Each answer's socket is pooled; the upstream closes it right after, as an
        // idle timeout would: a GET is sent again on a new socket, a POST (not
        // replayable) finds the closed one before sending.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let (r, got, status) = exchange_once(&pool, &send(addr, method, body), body).await;
        assert!(matches!(r, Ok(true)), "{method}: {r:?}");
        assert_eq!((status, got.ends_with("\r\n\r\nok")), (200, true), "{got}");
    }
    let bodies = bodies.lock().expect("lock").clone();
    assert_eq!(bodies.last().map(Vec::as_slice), Some(&b"payload"[..]));
    assert_eq!(bodies.len(), 3, "each request reached the upstream once");
}

#[tokio::test]
async fn an_upstream_that_refuses_leaves_the_client_untouched() {
    // Bound, then dropped: nothing listens on the port.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let pool = crate::proxy::pool::Pool::default();
    let (r, got, status) = exchange_once(&pool, &send(addr, "GET", b""), b"").await;
    assert!(matches!(r, Err(super::LeanError::Connect(_))), "{r:?}");
    assert_eq!((status, got.as_str()), (0, ""), "the caller answers 502");
}

/// A table routing every request for Host `svc` to `endpoint`.
fn table_to(endpoint: std::net::SocketAddr) -> std::sync::Arc<crate::route::RouteTable> {
    use crate::route::{Destination, RouteTable, VirtualHost};
    let mut t = RouteTable::default();
    t.hosts.insert("svc".into(), 0);
    let std::net::SocketAddr::V4(v4) = endpoint else {
        panic!("an IPv4 endpoint: {endpoint}");
    };
    t.endpoints.insert(v4, 1);
    let mut r = rule();
    r.action = Action::Route {
        destinations: vec![Destination {
            port: Some(endpoint.port()),
            endpoints: [(endpoint.port(), [endpoint].into())].into_iter().collect(),
            ..svc()
        }],
        rewrite: None,
    };
    t.vhosts.push(std::sync::Arc::new(VirtualHost {
        name: "default/svc".into(),
        rules: vec![r],
        proxy_reason: None,
    }));
    std::sync::Arc::new(t)
}

#[tokio::test]
async fn a_keep_alive_connection_routes_each_request_by_the_table_of_its_time() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ok_a: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ndate: then\r\n\r\na";
    let ok_b: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ndate: then\r\n\r\nb";
    // The old endpoint would answer a second request too: a stale table shows as "a".
    let (a, _) = upstream(vec![(vec![ok_a, ok_a], false)]).await;
    let (b, _) = upstream(vec![(vec![ok_b], false)]).await;
    let (tx, rx) = tokio::sync::watch::channel(table_to(a));
    let front = crate::proxy::Front::new(Default::default(), Default::default(), true, a);
    let shared = crate::proxy::Shared::new(rx, front);
    let conn = client_conn();
    let (_stop_tx, mut stopping) = tokio::sync::watch::channel(false);
    let (proxy_side, mut client) = tokio::io::duplex(1 << 16);
    let mut buf = bytes::BytesMut::from(&b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n"[..]);
    let serving = async {
        let mut proxy_side = proxy_side;
        let mut admitted = shared.conns.admit().expect("room");
        let head_due = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let serving = super::serve(
            &mut proxy_side,
            &mut buf,
            &shared,
            &conn,
            &mut stopping,
            &mut admitted,
            head_due,
        );
        let next = serving.await;
        assert!(matches!(next, super::Next::Closed), "closed as asked");
        // As the caller does: dropping the connection closes it.
        drop(proxy_side);
    };
    let talking = async {
        let mut got = vec![0u8; 256];
        let n = client.read(&mut got).await.expect("first answer");
        assert!(
            got[..n].ends_with(b"\r\n\r\na"),
            "{:?}",
            String::from_utf8_lossy(&got[..n])
        );
        // The configuration changes while the connection is idle.
        tx.send_replace(table_to(b));
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
            .await
            .expect("second request");
        let mut rest = String::new();
        client
            .read_to_string(&mut rest)
            .await
            .expect("second answer");
        rest
    };
    let ((), rest) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(serving, talking)
    })
    .await
    .expect("both requests answered");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("connection: close\r\n\r\nb"),
        "{rest}"
    );
}

/// An upstream that accepts, reads what comes, and never answers.
async fn silent_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_body_and_a_silent_upstream_end_at_the_stream_idle_bound() {
    let idle = std::time::Duration::from_millis(150);
    let addr = silent_upstream().await;
    let pool = crate::proxy::pool::Pool::default();
    // 10 bytes announced, 3 sent, then nothing.
    let stalled = send(addr, "POST", b"0123456789");
    let (r, got, status) = exchange_within(&pool, &stalled, b"012", idle).await;
    assert!(matches!(r, Err(super::LeanError::ClientStalled)), "{r:?}");
    assert_eq!((status, got.as_str()), (0, ""), "the caller answers 408");
    // The whole request sent; the upstream never answers.
    let (r, got, status) = exchange_within(&pool, &send(addr, "GET", b""), b"", idle).await;
    assert!(
        matches!(r, Err(super::LeanError::UpstreamSilent(_))),
        "{r:?}"
    );
    assert_eq!((status, got.as_str()), (0, ""), "the caller answers 504");
}

/// A head not whole within the head bound of its first byte gets 408; a connection
/// with no head begun closes quietly at the idle bound; a head that begins after more
/// than the head bound of idleness is served (the bounds are separate).
#[tokio::test]
async fn a_head_not_whole_in_time_gets_408_and_an_idle_connection_closes() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let bounds = crate::proxy::bounds::Bounds {
        idle: Duration::from_millis(400),
        head: Duration::from_millis(150),
        stream_idle: Duration::from_millis(100),
        ..Default::default()
    };
    let addr = silent_upstream().await;
    let front = crate::proxy::Front::new(Default::default(), bounds, true, addr);
    let (_tx, rx) = tokio::sync::watch::channel(table_to(addr));
    let shared = crate::proxy::Shared::new(rx, front);
    let conn = client_conn();
    let whole = &b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n"[..];
    for (sent, after, want_next, want_answer) in [
        (
            &whole[..23],
            0,
            "Linger",
            "HTTP/1.1 408 Request Timeout\r\n",
        ),
        (b"", 0, "Closed", ""),
        // Idle 250 ms (more than the head bound), then a whole head: it is served
        // (here by the silent upstream's 504 at the stream-idle bound).
        (whole, 250, "Linger", "HTTP/1.1 504 Gateway Timeout\r\n"),
    ] {
        let (_stop_tx, mut stopping) = tokio::sync::watch::channel(false);
        let (mut proxy_side, mut client) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            client.write_all(sent).await.expect("write");
            client
        });
        let mut admitted = shared.conns.admit().expect("room");
        let head_due = tokio::time::Instant::now() + bounds.head;
        let mut buf = bytes::BytesMut::new();
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::serve(
                &mut proxy_side,
                &mut buf,
                &shared,
                &conn,
                &mut stopping,
                &mut admitted,
                head_due,
            ),
        )
        .await
        .expect("the bound ended the wait");
        let mut client = writer.await.expect("writer");
        let next = match next {
            super::Next::Linger => "Linger",
            super::Next::Closed => "Closed",
            super::Next::Hyper => "Hyper",
        };
        drop(proxy_side);
        let mut got = String::new();
        client.read_to_string(&mut got).await.expect("read");
        assert_eq!(
            (next, got.starts_with(want_answer), got.is_empty()),
            (want_next, true, want_answer.is_empty()),
            "{got}"
        );
    }
}

/// A client connection as the accept loop describes one (no kernel maps here).
fn client_conn() -> crate::proxy::forward::ConnInfo {
    crate::proxy::forward::ConnInfo {
        peer: "127.0.0.1:5".parse().expect("addr"),
        peer_ip: None,
        dialled: None,
        verdicts: None,
        activity: None,
    }
}
