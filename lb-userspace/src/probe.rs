//! A test client: connects to an address many times (bounded in count and time) and
//! tallies which backend answered (the `x-backend` header of lb's test backend). Used
//! by `lb demo` and the kernel tests, from a process inside the attached cgroup.
//! Also sends single requests of other shapes (HTTP/1.0, h2c, WebSocket, raw bytes,
//! a batch from a file) and reports what came back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What to do.
pub struct ProbeOptions {
    pub to: SocketAddr,
    /// At most this many connections (or requests with `keep_alive`).
    pub count: u64,
    /// Pause between connections.
    pub every: Duration,
    /// Stop after this long, whatever `count` says.
    pub limit: Duration,
    /// One connection, many requests (checks it stays on its backend).
    pub keep_alive: bool,
    /// Source address each connection binds to first (None: the kernel's choice).
    pub from: Option<std::net::Ipv4Addr>,
    /// Connection i's source port is `from_port + i` (None: the kernel's choice). Each
    /// is closed with a reset, leaving no TIME_WAIT: a second run with the same ports
    /// sends the same flows again.
    pub from_port: Option<u16>,
    /// A UDP datagram per attempt (each from a socket of its own) instead of a request.
    pub udp: bool,
    pub host: Option<String>,
    /// Request path and extra headers.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Write one JSON line per attempt here.
    pub log: Option<std::path::PathBuf>,
    /// Stop as soon as this file exists (lets a test end a background probe cleanly).
    pub until_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub attempts: u64,
    pub failures: u64,
    /// Failures that were ECONNREFUSED.
    pub refused: u64,
    /// Keep-alive requests sent again on a new connection because the reused one
    /// ended before any answer (as HTTP clients do for an idle connection the server
    /// closed; counted here, not in failures); with `udp`, datagrams sent again.
    pub retried: u64,
    pub by_backend: BTreeMap<String, u64>,
    /// Paths and Host headers the backends saw.
    pub paths_seen: BTreeMap<String, u64>,
    pub hosts_seen: BTreeMap<String, u64>,
    /// Connections whose getpeername did not show the address dialled.
    pub peer_mismatches: u64,
    /// Answered connections whose source port an earlier one of the run had, by
    /// backend: the same 4-tuple again (a port freed at once, when the server closes
    /// first, comes back once the kernel's choice of ports wraps). A load balancer
    /// that keeps flows by tuple meets a known flow, not a new one.
    pub reused_ports: BTreeMap<String, u64>,
    pub first_errors: Vec<String>,
    /// Latency of the successful attempts (connect included unless keep-alive), µs.
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Serialize)]
struct LogLine<'a> {
    t_ms: u64,
    /// The connection's source port.
    port: u16,
    backend: &'a str,
    ok: bool,
    error: &'a str,
}

/// One response as the probe saw it.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).cloned().unwrap_or_default()
    }
}

/// One request of a batch file (JSON lines).
#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub to: SocketAddr,
    pub host: String,
    pub path: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How an error before any byte of an answer starts.
const NO_ANSWER: &str = "no answer";

/// Reads one HTTP/1.x response (status line, headers, content-length body).
fn read_answer(reader: &mut impl BufRead) -> Result<Answer, String> {
    let mut status = String::new();
    match reader.read_line(&mut status) {
        Ok(0) => return Err(format!("{NO_ANSWER}: closed")),
        Ok(_) => {}
        Err(e) => return Err(format!("{NO_ANSWER}: {e}")),
    }
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("status line {status:?}"))?;
    let mut a = Answer {
        status: code,
        ..Default::default()
    };
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            a.headers
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if code != 101 && code != 304 && code != 204 {
        match a
            .headers
            .get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            Some(n) => {
                let mut body = vec![0; n];
                reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("body: {e}"))?;
                a.body = String::from_utf8_lossy(&body).into_owned();
            }
            None if a
                .headers
                .get("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                || !a.headers.contains_key("transfer-encoding") =>
            {
                let mut body = String::new();
                let _ = reader.read_to_string(&mut body);
                a.body = body;
            }
            None => {}
        }
    }
    Ok(a)
}

/// Sends one request on `stream` and reads the answer.
fn exchange(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    version: &str,
    close: bool,
) -> Result<Answer, String> {
    let mut req = format!("{method} {path} {version}\r\nhost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if close && version == "HTTP/1.1" {
        req.push_str("connection: close\r\n");
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("{NO_ANSWER}: write: {e}"))?;
    let mut reader = BufReader::new(stream);
    read_answer(&mut reader)
}

/// One datagram to `to` from a socket of its own (bound to `from` and `port` if
/// given), sent once more after half a second without an answer (as a DNS client
/// does: a datagram may be lost, e.g. while the way to its endpoint is resolved);
/// the reply (its text the backend's name), where it came from, the socket's port,
/// and whether it was sent again.
fn udp_exchange(
    from: Option<std::net::Ipv4Addr>,
    port: Option<u16>,
    to: SocketAddr,
) -> Result<(Answer, SocketAddr, u16, bool), String> {
    let err = |e: std::io::Error| format!("udp: {e}");
    let ip = from.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let sock = std::net::UdpSocket::bind((ip, port.unwrap_or(0))).map_err(err)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(err)?;
    let mut buf = [0u8; 512];
    let mut again = false;
    let (n, peer) = loop {
        sock.send_to(b"ping", to).map_err(err)?;
        match sock.recv_from(&mut buf) {
            Ok(got) => break got,
            Err(_) if !again => again = true,
            Err(e) => return Err(format!("{NO_ANSWER}: {e}")),
        }
    };
    let name = String::from_utf8_lossy(&buf[..n]).into_owned();
    let answer = Answer {
        status: 200,
        headers: [("x-backend".to_string(), name)].into(),
        body: String::new(),
    };
    let local = sock.local_addr().map_or(0, |a| a.port());
    Ok((answer, peer, local, again))
}

fn connect(to: SocketAddr) -> Result<TcpStream, String> {
    connect_from(None, None, to)
}

/// Connects to `to`, bound to `from` and `port` first if given (a given port is
/// closed with a reset).
fn connect_from(
    from: Option<std::net::Ipv4Addr>,
    port: Option<u16>,
    to: SocketAddr,
) -> Result<TcpStream, String> {
    let err = |e: std::io::Error| format!("connect: {e}");
    let s = if from.is_none() && port.is_none() {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(err)?
    } else {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(err)?;
        if port.is_some() {
            sock.set_reuse_address(true).map_err(err)?;
            sock.set_linger(Some(Duration::ZERO)).map_err(err)?;
        }
        let ip = from.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        sock.bind(&SocketAddr::from((ip, port.unwrap_or(0))).into())
            .map_err(err)?;
        sock.connect_timeout(&to.into(), Duration::from_secs(2))
            .map_err(err)?;
        sock.into()
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs the probe loop.
pub fn run(opts: &ProbeOptions) -> std::io::Result<Summary> {
    let mut log = match &opts.log {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => None,
    };
    let host = opts.host.clone().unwrap_or_else(|| opts.to.to_string());
    let started = Instant::now();
    let mut sum = Summary::default();
    let mut kept: Option<TcpStream> = None;
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut ports_used = std::collections::HashSet::new();
    let stop_requested = || opts.until_file.as_ref().is_some_and(|f| f.exists());
    while sum.attempts < opts.count && started.elapsed() < opts.limit && !stop_requested() {
        let t_ms = now_ms();
        let port = (opts.from_port).map(|p| p.wrapping_add(sum.attempts as u16));
        let mut local_port = port.unwrap_or(0);
        let began = Instant::now();
        sum.attempts += 1;
        let result = if opts.udp {
            udp_exchange(opts.from, port, opts.to).map(|(a, from, local, again)| {
                local_port = local;
                sum.retried += u64::from(again);
                if from != opts.to {
                    sum.peer_mismatches += 1;
                }
                a
            })
        } else if opts.keep_alive {
            let send = |s: &mut TcpStream| {
                exchange(
                    s,
                    "GET",
                    &opts.path,
                    &host,
                    &opts.headers,
                    "HTTP/1.1",
                    false,
                )
            };
            let reused = kept.is_some();
            let mut r = kept
                .take()
                .map_or_else(|| connect_from(opts.from, port, opts.to), Ok)
                .and_then(|mut s| send(&mut s).map(|a| (a, s)));
            if reused && matches!(&r, Err(e) if e.starts_with(NO_ANSWER)) {
                sum.retried += 1;
                r = connect_from(opts.from, port, opts.to)
                    .and_then(|mut s| send(&mut s).map(|a| (a, s)));
            }
            r.map(|(a, s)| {
                // A connection that failed, or that the server closes, is not reused.
                if !a.header("connection").eq_ignore_ascii_case("close") {
                    kept = Some(s);
                }
                a
            })
        } else {
            connect_from(opts.from, port, opts.to).and_then(|mut s| {
                local_port = s.local_addr().map_or(0, |a| a.port());
                if s.peer_addr().ok() != Some(opts.to) {
                    sum.peer_mismatches += 1;
                }
                exchange(
                    &mut s,
                    "GET",
                    &opts.path,
                    &host,
                    &opts.headers,
                    "HTTP/1.1",
                    true,
                )
            })
        };
        let result = result.and_then(|a| {
            if a.status == 200 {
                Ok(a)
            } else {
                Err(format!("status {}", a.status))
            }
        });
        let backend = match &result {
            Ok(a) => {
                latencies_us.push(began.elapsed().as_micros() as u64);
                let b = a.header("x-backend");
                *sum.by_backend.entry(b.clone()).or_default() += 1;
                if local_port != 0 && !ports_used.insert(local_port) {
                    *sum.reused_ports.entry(b.clone()).or_default() += 1;
                }
                *sum.paths_seen.entry(a.header("x-path")).or_default() += 1;
                *sum.hosts_seen.entry(a.header("x-host")).or_default() += 1;
                b
            }
            Err(e) => {
                sum.failures += 1;
                if e.contains("refused") {
                    sum.refused += 1;
                }
                if sum.first_errors.len() < 5 {
                    sum.first_errors.push(e.clone());
                }
                String::new()
            }
        };
        if let Some(w) = log.as_mut() {
            let error = result.as_ref().err().map_or("", String::as_str);
            let line = LogLine {
                t_ms,
                port: local_port,
                backend: &backend,
                ok: result.is_ok(),
                error,
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
        }
        if !opts.every.is_zero() {
            std::thread::sleep(opts.every);
        }
    }
    if let Some(mut w) = log {
        w.flush()?;
    }
    latencies_us.sort_unstable();
    let at = |q: usize| {
        latencies_us
            .get((latencies_us.len() * q / 100).min(latencies_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (sum.p50_us, sum.p99_us) = (at(50), at(99));
    sum.max_us = latencies_us.last().copied().unwrap_or(0);
    Ok(sum)
}

/// Sends every request of a JSON-lines file, each on a new connection; one answer per
/// request (an error becomes status 0 with the message as body).
pub fn batch(file: &std::path::Path) -> std::io::Result<Vec<Answer>> {
    let text = std::fs::read_to_string(file)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: BatchRequest = serde_json::from_str(line).map_err(std::io::Error::other)?;
        let headers: Vec<(String, String)> = r.headers.into_iter().collect();
        let a = connect(r.to).and_then(|mut s| {
            exchange(
                &mut s, &r.method, &r.path, &r.host, &headers, "HTTP/1.1", true,
            )
        });
        out.push(a.unwrap_or_else(|e| Answer {
            status: 0,
            body: e,
            ..Default::default()
        }));
    }
    Ok(out)
}

/// One HTTP/1.0 request (no keep-alive, no Host required by the protocol).
pub fn http10(to: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
    let mut s = connect(to)?;
    exchange(&mut s, "GET", path, host, &[], "HTTP/1.0", true)
}

/// Raw bytes in, the status line's code out (0 if the connection closed first);
/// `half_close`: the write side is shut down after the bytes.
pub fn raw(to: SocketAddr, bytes: &[u8], half_close: bool) -> Result<Answer, String> {
    let mut s = connect(to)?;
    s.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    if half_close {
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
    }
    let mut reader = BufReader::new(s);
    Ok(read_answer(&mut reader).unwrap_or_default())
}

/// Raw bytes in (several pipelined requests, say), every answer until the connection
/// closes out.
pub fn raw_all(to: SocketAddr, bytes: &[u8]) -> Result<Vec<Answer>, String> {
    let mut s = connect(to)?;
    s.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut answers = Vec::new();
    while let Ok(a) = read_answer(&mut reader) {
        answers.push(a);
    }
    Ok(answers)
}

/// A WebSocket handshake and one echoed text frame through whatever is at `to`.
pub fn websocket(to: SocketAddr, host: &str, message: &str) -> Result<Answer, String> {
    let mut s = connect(to)?;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let headers = vec![
        ("connection".to_string(), "Upgrade".to_string()),
        ("upgrade".to_string(), "websocket".to_string()),
        ("sec-websocket-version".to_string(), "13".to_string()),
        ("sec-websocket-key".to_string(), key.to_string()),
    ];
    let mut a = exchange(&mut s, "GET", "/ws", host, &headers, "HTTP/1.1", false)?;
    if a.status != 101 {
        return Err(format!("handshake answered {}", a.status));
    }
    if a.header("sec-websocket-accept") != crate::backend::websocket_accept(key) {
        return Err(format!(
            "bad sec-websocket-accept {:?}",
            a.header("sec-websocket-accept")
        ));
    }
    // A masked client text frame (payload < 126 bytes).
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | message.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).map_err(|e| format!("ws write: {e}"))?;
    let mut head = [0u8; 2];
    s.read_exact(&mut head)
        .map_err(|e| format!("ws read: {e}"))?;
    let mut payload = vec![0; usize::from(head[1] & 0x7f)];
    s.read_exact(&mut payload)
        .map_err(|e| format!("ws read: {e}"))?;
    a.body = String::from_utf8_lossy(&payload).into_owned();
    Ok(a)
}

/// One request over HTTP/2 with prior knowledge (h2c).
pub fn h2c(to: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(format!("http://{host}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("h2 request: {e}"))?;
        let mut a = Answer {
            status: resp.status().as_u16(),
            ..Default::default()
        };
        for (k, v) in resp.headers() {
            a.headers
                .insert(k.to_string(), v.to_str().unwrap_or("").to_string());
        }
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| format!("h2 body: {e}"))?;
        a.body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        Ok(a)
    })
}
