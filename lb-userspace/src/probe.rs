//! A test client: connects to an address many times (bounded in count and time) and
//! tallies which backend answered (the `x-backend` header of lb's test backend). Used
//! by `lb demo` and the kernel tests, from a process inside the attached cgroup.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

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
    pub host: Option<String>,
    /// Write one JSON line per attempt here.
    pub log: Option<std::path::PathBuf>,
    /// Stop as soon as this file exists (lets a test end a background probe cleanly).
    pub until_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub attempts: u64,
    pub failures: u64,
    pub by_backend: BTreeMap<String, u64>,
    /// Connections whose getpeername did not show the address dialled.
    pub peer_mismatches: u64,
    pub first_errors: Vec<String>,
}

#[derive(Serialize)]
struct LogLine<'a> {
    t_ms: u64,
    backend: &'a str,
    ok: bool,
    error: &'a str,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends one GET on `stream` and returns the answering backend's name.
fn request(stream: &mut TcpStream, host: &str, close: bool) -> Result<String, String> {
    let conn = if close { "connection: close\r\n" } else { "" };
    write!(stream, "GET /test HTTP/1.1\r\nhost: {host}\r\n{conn}\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| format!("read: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let (mut backend, mut length) = (String::new(), 0usize);
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
            match k.to_ascii_lowercase().as_str() {
                "x-backend" => backend = v.trim().to_string(),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(backend)
}

fn connect(to: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs the probe.
pub fn run(opts: &ProbeOptions) -> std::io::Result<Summary> {
    let mut log = match &opts.log {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => None,
    };
    let host = opts.host.clone().unwrap_or_else(|| opts.to.to_string());
    let started = Instant::now();
    let mut sum = Summary::default();
    let mut kept: Option<TcpStream> = None;
    let stop_requested = || opts.until_file.as_ref().is_some_and(|f| f.exists());
    while sum.attempts < opts.count && started.elapsed() < opts.limit && !stop_requested() {
        let t_ms = now_ms();
        sum.attempts += 1;
        let result = if opts.keep_alive {
            let stream = match kept.take() {
                Some(s) => Ok(s),
                None => connect(opts.to),
            };
            stream.and_then(|mut s| {
                let r = request(&mut s, &host, false);
                kept = Some(s);
                r
            })
        } else {
            connect(opts.to).and_then(|mut s| {
                if s.peer_addr().ok() != Some(opts.to) {
                    sum.peer_mismatches += 1;
                }
                request(&mut s, &host, true)
            })
        };
        let (backend, error) = match &result {
            Ok(b) => (b.as_str(), ""),
            Err(e) => ("", e.as_str()),
        };
        match &result {
            Ok(b) => *sum.by_backend.entry(b.clone()).or_default() += 1,
            Err(e) => {
                sum.failures += 1;
                if sum.first_errors.len() < 5 {
                    sum.first_errors.push(e.clone());
                }
            }
        }
        if let Some(w) = log.as_mut() {
            let line = LogLine {
                t_ms,
                backend,
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
    Ok(sum)
}
