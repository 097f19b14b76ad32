//! Runs wrk (Debian's) and reads its report.

use std::path::Path;

use super::procs::{CLIENT_CPU, pinned};

/// One wrk run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub non_2xx: u64,
    /// wrk's own CPU time (user + system), µs: where connect4 and the client's half of
    /// sk_msg land, and the bound in close mode (the client's CPU is the busy one).
    #[serde(default)]
    pub client_cpu_us: u64,
}

/// `wrk -t1 -c50 -dS --latency [-H 'Connection: close'] URL`, pinned to the client CPU,
/// inside `cgroup` when the balancer steers at connect().
pub fn run(
    url: &str,
    seconds: u64,
    close: bool,
    cgroup: Option<&Path>,
) -> anyhow::Result<WrkResult> {
    let mut args: Vec<String> = ["-t1", "-c50", &format!("-d{seconds}s"), "--latency"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if close {
        args.extend(["-H".to_string(), "Connection: close".to_string()]);
    }
    args.push(url.to_string());
    let mut cmd = pinned(CLIENT_CPU, "wrk", &args);
    if let Some(cg) = cgroup {
        lb::datapath::cgroup::spawn_into(&mut cmd, cg);
    }
    // wrk is the only child reaped while it runs (taskset execs it): the children's
    // rusage grows by exactly its CPU time.
    let before = children_cpu_us();
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running wrk (apt install wrk): {e}"))?;
    let client_cpu_us = children_cpu_us().saturating_sub(before);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = parse(&String::from_utf8_lossy(&out.stdout))?;
    r.client_cpu_us = client_cpu_us;
    Ok(r)
}

/// User + system CPU time of every child reaped so far, µs.
fn children_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn duration_us(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => f64::NAN,
    }
}

pub fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => r.p50_us = duration_us(v),
            ["99%", v] => r.p99_us = duration_us(v),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors = rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        r.requests > 0 && r.rps > 0.0,
        "could not read wrk's report:\n{text}"
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 1s test @ http://x/test\n  1 threads and 50 connections\n  Latency Distribution\n     50%  712.00us\n     75%    1.00ms\n     99%    1.60ms\n  20000 requests in 1.00s, 2.47MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 5\nRequests/sec:  20000.00\n";
        let r = super::parse(text).expect("parses");
        assert_eq!((r.requests, r.errors, r.non_2xx), (20000, 3, 5));
        assert!((r.p50_us - 712.0).abs() < 1e-9 && (r.p99_us - 1600.0).abs() < 1e-9);
    }
}
