//! `mirror` / `mirrors`: a copy of a request sent to another destination, fire and
//! forget — as Envoy's request mirroring: the copy's Host gets `-shadow`, its answer is
//! read and thrown away, and nothing about it can slow or fail the real request: it
//! leaves after the real request was sent, on a task and a connection of its own,
//! bounded in time and in number.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Copies in flight at most; a copy past it is dropped (and counted).
const MAX_IN_FLIGHT: usize = 1024;
/// Answers read (and thrown away) at most per copy.
const MAX_ANSWER: usize = 64 * 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The Host a copy carries: Envoy's `-shadow` suffix on the host, before any port.
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// The copy's head: the request as the upstream gets it, with the shadow Host and
/// `connection: close` (the copy's connection is its own).
pub fn head<'a>(
    method: &str,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    let mut host = String::new();
    for (n, v) in headers {
        if n.eq_ignore_ascii_case("host") {
            host = String::from_utf8_lossy(v).into_owned();
        } else if !n.eq_ignore_ascii_case("connection") {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(
        format!("host: {}\r\nconnection: close\r\n\r\n", shadow_host(&host)).as_bytes(),
    );
    out
}

/// [`head`] from a head as the lean path wrote it (None if it does not parse).
pub fn head_from_wire(wire: &[u8]) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(wire).ok()?.is_complete().then_some(())?;
    let (method, path) = (req.method?, req.path?);
    Some(head(
        method,
        path,
        req.headers.iter().map(|h| (h.name, h.value)),
    ))
}

/// Sends a copy (`head`, `body`) to each of `eps`, each step within the proxy's connect
/// bound, counting the copies sent and dropped.
pub fn copies(shared: &super::Shared, eps: &[SocketAddr], head: &[u8], body: &[u8]) {
    let m = &shared.metrics;
    for ep in eps {
        let bound = shared.front.bounds.connect;
        if spawn(*ep, head.to_vec(), body.to_vec(), bound) {
            m.mirrored.inc();
        } else {
            m.mirror_dropped.inc();
        }
    }
}

/// Sends `head` and `body` to `ep` on a task of its own, each step within `bound`;
/// false: dropped, too many copies in flight.
fn spawn(ep: SocketAddr, head: Vec<u8>, body: Vec<u8>, bound: Duration) -> bool {
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    tokio::spawn(async move {
        let copy = async {
            let mut s = tokio::time::timeout(bound, tokio::net::TcpStream::connect(ep))
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(bound, async {
                s.write_all(&head).await?;
                s.write_all(&body).await
            })
            .await
            .ok()?
            .ok()?;
            // Read what comes back (bounded), so the upstream is not reset mid-answer.
            let mut sink = vec![0u8; 8192];
            let mut read = 0;
            while read < MAX_ANSWER {
                match tokio::time::timeout(bound, s.read(&mut sink)).await {
                    Ok(Ok(n)) if n > 0 => read += n,
                    _ => break,
                }
            }
            Some(())
        };
        let _ = copy.await;
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_says_shadow_and_closes() {
        assert_eq!(shadow_host("svc"), "svc-shadow");
        assert_eq!(shadow_host("svc:8080"), "svc-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        let wire = b"POST /a?b HTTP/1.1\r\nHost: svc:80\r\nconnection: keep-alive\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(
            String::from_utf8(head_from_wire(wire).expect("parses")).expect("utf-8"),
            "POST /a?b HTTP/1.1\r\nx-a: 1\r\ncontent-length: 2\r\nhost: svc-shadow:80\r\nconnection: close\r\n\r\n"
        );
    }
}
