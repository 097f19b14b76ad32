//! The access log, one line per request in the Istio sidecar's shape (the seed's):
//! `[2026-01-28T08:24:55.670Z] "GET /test HTTP/1.1" 200 - upstream=10.244.0.55:10000 duration=0ms route=default`
//! Buffered; flushed every second and when full.

use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

/// Where the log goes.
pub enum Target {
    Stdout,
    File(std::path::PathBuf),
}

pub struct AccessLog {
    out: Mutex<std::io::BufWriter<Box<dyn Write + Send>>>,
}

/// One request's line.
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub version: http::Version,
    pub status: u16,
    /// Response flags: `-`, `NR` (no route), `UH` (no healthy upstream), `UF` (upstream
    /// connection failure), `DR`/`RD` (direct response / redirect, lb's own).
    pub flags: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub duration_ms: u128,
    pub route: &'a str,
}

impl AccessLog {
    pub fn open(target: &Target) -> std::io::Result<Self> {
        let w: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        Ok(Self {
            out: Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, w)),
        })
    }

    pub fn log(&self, e: &Entry<'_>) {
        let now = humantime::format_rfc3339_millis(SystemTime::now());
        let upstream = e
            .upstream
            .map_or_else(|| "-".to_string(), |u| u.to_string());
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(
                out,
                "[{now}] \"{} {} {:?}\" {} {} upstream={upstream} duration={}ms route={}",
                e.method, e.path, e.version, e.status, e.flags, e.duration_ms, e.route
            );
        }
    }

    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}
