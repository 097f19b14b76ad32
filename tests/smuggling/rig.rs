//! Two clients through an lb proxy, in this process: an attacker's bytes on one
//! connection, then an innocent request on another, to a backend (hyper's server, a
//! strict and common parser) that records every request it parses. A request that
//! smuggles or hijacks shows in what the backend records: a request lb did not see
//! (more requests parsed than answers relayed), bytes the backend cannot parse, or an
//! innocent request arriving changed. Loopback only; no privileges (no kernel maps:
//! routing is by Host). Shared by the differential test and the fuzz target (fuzz/).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// A request as the backend parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the attacker's connection got: the status of each answer in order (0: an
/// answer that did not parse), and whether it ended in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answers {
    pub statuses: Vec<u16>,
    pub timed_out: bool,
}

/// lb's proxy and its backend, running on their own runtime (dropped with it: nothing
/// is left listening).
pub struct Rig {
    _rt: tokio::runtime::Runtime,
    pub proxy: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Backend connections that ended on a parse error: lb sent it bytes it could not
    /// read as requests.
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
    /// lb's Via marker (a request carrying it loops).
    pub via: String,
    /// Held: the proxy's table lives while the sender does.
    _table: tokio::sync::watch::Sender<Arc<lb::route::RouteTable>>,
    _dir: tempfile::TempDir,
}

/// Bound on one connection's exchange.
const PATIENCE: Duration = Duration::from_secs(3);

/// The routes: a 403 for `/admin` (the rule path normalisation must not let anyone
/// around), a rewrite for `/test/v2`, everything else to the backend.
fn config(backend_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [svc]
  addresses: [127.10.99.1]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {backend_port}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [svc]
  http:
  - match: [{{uri: {{prefix: /admin}}}}]
    directResponse: {{status: 403, body: {{string: "forbidden\n"}}}}
  - match: [{{uri: {{prefix: /test/v2}}}}]
    rewrite: {{uri: /test}}
    route: [{{destination: {{host: svc}}}}]
  - route: [{{destination: {{host: svc}}}}]
"#
    )
}

impl Rig {
    /// A proxy with the lean path on (`lean`) or hyper for every request.
    pub fn start(lean: bool) -> Rig {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let parse_errors = Arc::default();
        let backend = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let backend_port = backend.local_addr().expect("addr").port();
        rt.spawn(serve_backend(
            backend,
            seen.clone(),
            Arc::clone(&parse_errors),
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("svc.yaml"), config(backend_port)).expect("config");
        let model = lb::model::load_dir(dir.path()).expect("valid config").model;
        let plan = lb::compile::plan(model).expect("compiles");
        let (table, rx) = tokio::sync::watch::channel(plan.proxy);
        let opts = lb::proxy::ProxyOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            access_log: None,
            drain: Duration::from_secs(1),
            limits: lb::proxy::h1::Limits::default(),
            bounds: lb::proxy::bounds::Bounds::default(),
            lean,
        };
        let proxy = lb::proxy::Proxy::bind(&opts).expect("proxy binds");
        let addr = proxy.local_addr();
        let front = lb::proxy::Front::new(opts.limits, opts.bounds, lean, addr);
        let via = String::from_utf8_lossy(&front.via).into_owned();
        let shared = Arc::new(lb::proxy::Shared::new(rx, front));
        rt.spawn(proxy.serve(shared, opts.drain, std::future::pending()));
        Rig {
            _rt: rt,
            proxy: addr,
            seen,
            parse_errors,
            via,
            _table: table,
            _dir: dir,
        }
    }

    /// Sends `bytes` on a new connection, half-closes it, and reads every answer until
    /// lb closes. Returns the answers and what the backend parsed meanwhile.
    pub fn attack(&self, bytes: &[u8]) -> (Answers, Vec<Seen>) {
        let before = self.seen_count();
        let answers = match TcpStream::connect(self.proxy) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(PATIENCE));
                // lb may refuse and close before reading everything: not a failure.
                let _ = s.write_all(bytes);
                let _ = s.shutdown(Shutdown::Write);
                let (got, timed_out) = read_until_closed(&mut s);
                Answers {
                    statuses: statuses(&got),
                    timed_out,
                }
            }
            Err(e) => panic!("connect to lb: {e}"),
        };
        (answers, self.seen_since(before))
    }

    /// An innocent request (another connection, a cookie of its own) after whatever
    /// came before: Ok if it reached the backend exactly as sent and its own answer
    /// came back; Err says what went wrong.
    pub fn innocent(&self, n: u64) -> Result<(), String> {
        let before = self.seen_count();
        let mut s = TcpStream::connect(self.proxy).map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_read_timeout(Some(PATIENCE));
        let req = format!(
            "GET /innocent?n={n} HTTP/1.1\r\nHost: svc\r\nX-Innocent: {n}\r\nCookie: victim={n}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let started = std::time::Instant::now();
        let (got, timed_out, error) = read_until_closed_or_error(&mut s);
        let text = String::from_utf8_lossy(&got).into_owned();
        let want_body = format!("ok GET /innocent?n={n}");
        if timed_out || !text.starts_with("HTTP/1.1 200 ") || !text.ends_with(&want_body) {
            return Err(format!(
                "the innocent request got {text:?} (timed out: {timed_out}, error: {error:?}, after {:?})",
                started.elapsed()
            ));
        }
        let seen = self.seen_since(before);
        let [one] = seen.as_slice() else {
            return Err(format!(
                "the backend parsed {} requests: {seen:?}",
                seen.len()
            ));
        };
        let header = |name: &str| -> Vec<&str> {
            one.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let n = n.to_string();
        let cookie = format!("victim={n}");
        let intact = one.method == "GET"
            && one.path == format!("/innocent?n={n}")
            && header("x-innocent") == [n.as_str()]
            && header("cookie") == [cookie.as_str()]
            && header("host") == ["svc"]
            && one.body.is_empty()
            && one.headers.iter().all(|(k, _)| {
                ["host", "x-innocent", "cookie", "x-forwarded-for", "via"].contains(&k.as_str())
            });
        if intact {
            Ok(())
        } else {
            Err(format!("the innocent request arrived changed: {one:?}"))
        }
    }

    /// Backend connections so far that ended on bytes the backend could not parse.
    pub fn parse_errors(&self) -> u64 {
        self.parse_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn seen_count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    fn seen_since(&self, from: usize) -> Vec<Seen> {
        // Requests lb forwards are answered before lb closes the attacker's
        // connection; give a straggler (a body still in flight) a moment.
        std::thread::sleep(Duration::from_millis(2));
        self.seen.lock().expect("lock")[from..].to_vec()
    }
}

/// Reads until the peer closes, errs, or PATIENCE passes (true: timed out).
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let (got, timed_out, _) = read_until_closed_or_error(s);
    (got, timed_out)
}

/// [`read_until_closed`], with the read error that ended it, if one did.
fn read_until_closed_or_error(s: &mut TcpStream) -> (Vec<u8>, bool, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let start = std::time::Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A signal (libFuzzer's timer in the fuzz target): read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (got, true, None);
            }
            Err(e) => return (got, false, Some(e)),
        }
        if start.elapsed() > PATIENCE {
            return (got, true, None);
        }
    }
}

/// The status of each answer in `bytes` (every answer here carries Content-Length).
fn statuses(mut bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
            out.push(0);
            break;
        };
        out.push(resp.code.unwrap_or(0));
        let body = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        bytes = bytes.get(len + body..).unwrap_or(&[]);
    }
    out
}

async fn serve_backend(
    listener: tokio::net::TcpListener,
    seen: Arc<Mutex<Vec<Seen>>>,
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        let parse_errors = parse_errors.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map_or_else(|| parts.uri.to_string(), |p| p.to_string());
                        let answer = format!("ok {} {path}", parts.method);
                        // A request whose body never came whole was cut off by lb (it
                        // answered the client itself): not a request the backend acts on.
                        if let Ok(body) = body.collect().await {
                            seen.lock().expect("lock").push(Seen {
                                method: parts.method.to_string(),
                                path,
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body: body.to_bytes().to_vec(),
                            });
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(answer),
                        )))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            // lb adds X-Forwarded-For and Via to requests of up to its 100 fields:
            // the backend takes a few more than lb (as any backend behind a proxy must).
            let served = hyper::server::conn::http1::Builder::new()
                .max_headers(128)
                .serve_connection(io, svc)
                .await;
            if served.is_err_and(|e| e.is_parse() || e.is_parse_too_large()) {
                parse_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
}

/// The path a backend that decodes unreserved escapes and backslashes acts on (what
/// Istio's BASE normalisation promises to match): an independent decoder, not lb's.
fn as_a_backend_reads(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let mut decoded = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => {
                decoded.push(v);
                i += 3;
            }
            (b'\\', _) => {
                decoded.push(b'/');
                i += 1;
            }
            (c, _) => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).into_owned();
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/").trim_start_matches('/'))
}

/// What one engine did with one case.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub answers: Answers,
    /// (method, path, body) of each request the backend parsed.
    pub reached: Vec<(String, String, Vec<u8>)>,
}

/// Runs `bytes` then an innocent request (number `n`) through `rig`; pushes what
/// broke to `failures`: lb not ending the connection, the backend parsing a request lb
/// did not relay or bytes it cannot parse, a path around the `/admin` rule, the
/// innocent request changed.
pub fn run_case(
    rig: &Rig,
    engine: &str,
    name: &str,
    bytes: &[u8],
    n: u64,
    failures: &mut Vec<String>,
) -> Verdict {
    let errors_before = rig.parse_errors();
    let (answers, seen) = rig.attack(bytes);
    let relayed = answers.statuses.iter().filter(|s| **s == 200).count();
    let mut fail = |what: String| failures.push(format!("{engine} / {name}: {what}"));
    if answers.timed_out {
        fail(format!(
            "lb did not end the connection in time ({:?})",
            answers.statuses
        ));
    }
    if seen.len() != relayed {
        fail(format!(
            "the backend parsed {} request(s), lb relayed {relayed} answer(s) {:?}: {seen:?}",
            seen.len(),
            answers.statuses
        ));
    }
    for s in &seen {
        if as_a_backend_reads(&s.path).starts_with("/admin") {
            fail(format!(
                "{} reached the backend around the /admin rule",
                s.path
            ));
        }
    }
    if let Err(e) = rig.innocent(n) {
        fail(e);
    }
    if rig.parse_errors() != errors_before {
        fail("the backend got bytes it could not parse".into());
    }
    Verdict {
        answers,
        reached: seen
            .into_iter()
            .map(|s: Seen| (s.method, s.path, s.body))
            .collect(),
    }
}
