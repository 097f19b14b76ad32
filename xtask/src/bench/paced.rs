//! A paced load generator (wrk2-style): a fixed offered rate over keep-alive
//! connections; each request's latency is measured from when it was *scheduled*, so a
//! stall is not hidden by the client waiting (coordinated omission).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `paced ADDR RATE CONNECTIONS SECONDS`: prints JSON {"requests", "errors", "p50_us", "p99_us"}.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [addr, rate, conns, seconds] = args else {
        anyhow::bail!("paced ADDR RATE CONNECTIONS SECONDS")
    };
    let (rate, conns, seconds): (f64, usize, f64) =
        (rate.parse()?, conns.parse()?, seconds.parse()?);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let end = Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || -> (Vec<u64>, u64) {
                let mut lat = Vec::new();
                let mut errors = 0;
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return (lat, 1);
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let start = Instant::now() + interval.mul_f64(i as f64 / conns as f64);
                let mut n = 0u32;
                loop {
                    if interval * n > end {
                        break;
                    }
                    let scheduled = start + interval * n;
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    n += 1;
                    if s.write_all(b"GET /test HTTP/1.1\r\nhost: bench\r\n\r\n")
                        .is_err()
                        || read_response(&mut reader).is_err()
                    {
                        errors += 1;
                        break;
                    }
                    lat.push(scheduled.elapsed().as_micros() as u64);
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({"requests": all.len(), "errors": errors, "p50_us": pct(0.50), "p99_us": pct(0.99)})
    );
    Ok(())
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    let mut len = 0usize;
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status {line:?}")));
    }
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
}
