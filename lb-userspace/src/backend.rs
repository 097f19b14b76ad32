//! A small HTTP/1.1 backend for `lb demo` and the tests: answers every request with
//! its own name, and echoes what it received (method, path, Host) in headers, so a
//! client can tell which backend served it. Keep-alive aware; request bodies are read
//! (content-length) and ignored. `GET /__requests` tells how many requests it served;
//! an `Upgrade: websocket` request gets a real handshake and an echo of each frame;
//! paths starting with `/slow` are answered after 500 ms, `/hang` never (the backend
//! reads until the client closes), `/reset` with half an answer and then a reset,
//! `/status/<code>` with that status. `lb backend` also answers each UDP datagram
//! to its address with its name ([`serve_udp`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `name` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) {
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, served) = (name.clone(), served.clone());
        tokio::spawn(async move {
            let _ = connection(stream, &name, &served).await;
        });
    }
}

/// Answers every datagram to `socket` with `name`, until the task is dropped.
pub async fn serve_udp(socket: tokio::net::UdpSocket, name: String) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(name.as_bytes(), from).await;
        }
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455).
pub fn websocket_accept(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

async fn connection(mut stream: TcpStream, name: &str, served: &AtomicU64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 256 * 1024 {
                return Ok(());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut parts = head.split("\r\n").next().unwrap_or("").split_whitespace();
        let (method, path, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let header = |n: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(n)
                    .then(|| v.trim().to_string())
            })
        };
        // Skip a content-length body.
        let mut body_left = header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let take = body_left.min(buf.len());
        buf.drain(..take);
        body_left -= take;
        while body_left > 0 {
            let n = stream.read(&mut chunk[..body_left.min(4096)]).await?;
            if n == 0 {
                return Ok(());
            }
            body_left -= n;
        }
        if path == "/__requests" {
            let body = format!("{}\n", served.load(Ordering::Relaxed));
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return stream.write_all(resp.as_bytes()).await;
        }
        served.fetch_add(1, Ordering::Relaxed);
        if path.starts_with("/slow") {
            // A slow answer, for drain tests.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        if path.starts_with("/reset") {
            // Half an answer, then RST (SO_LINGER 0 makes the close a reset).
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                .await?;
            stream.set_zero_linger()?;
            return Ok(());
        }
        if let Some(code) = path
            .strip_prefix("/status/")
            .and_then(|c| c.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        {
            // That status, for retry tests (as httpbin's /status/<code>).
            let resp =
                format!("HTTP/1.1 {code} Status\r\ncontent-length: 0\r\nx-backend: {name}\r\n\r\n");
            stream.write_all(resp.as_bytes()).await?;
            continue;
        }
        if path.starts_with("/hang") {
            // No answer at all, for timeout tests.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            let accept = websocket_accept(&header("sec-websocket-key").unwrap_or_default());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\nx-backend: {name}\r\n\r\n"
            );
            stream.write_all(resp.as_bytes()).await?;
            return echo_frames(stream, buf).await;
        }
        let host = header("host").unwrap_or_default();
        let close = version == "HTTP/1.0"
            || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\nx-method: {method}\r\nx-path: {path}\r\nx-host: {host}\r\nx-forwarded-for: {}\r\n{}{}\r\n{body}",
            body.len(),
            header("x-forwarded-for").unwrap_or_default(),
            echo_x_headers(&head),
            if close { "connection: close\r\n" } else { "" },
        );
        stream.write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// The request's own `x-` headers (but X-Forwarded-For, echoed as such) as
/// `x-req-<name>: <values joined by ", ">`, so tests see what a proxy sent on.
fn echo_x_headers(head: &str) -> String {
    let mut seen: Vec<(String, Vec<&str>)> = Vec::new();
    for (k, v) in head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')) {
        let k = k.trim().to_ascii_lowercase();
        if !k.starts_with("x-") || k == "x-forwarded-for" {
            continue;
        }
        match seen.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v.trim()),
            None => seen.push((k, vec![v.trim()])),
        }
    }
    seen.iter()
        .map(|(k, vs)| format!("x-req-{k}: {}\r\n", vs.join(", ")))
        .collect()
}

/// Echoes small masked client frames back unmasked (server frames carry no mask).
async fn echo_frames(mut stream: TcpStream, mut buf: Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 2 {
            let len = usize::from(buf[1] & 0x7f);
            let masked = buf[1] & 0x80 != 0;
            let need = 2 + if masked { 4 } else { 0 } + len;
            if len >= 126 || buf.len() < need {
                break;
            }
            let mask: Vec<u8> = if masked {
                buf[2..6].to_vec()
            } else {
                vec![0; 4]
            };
            let start = need - len;
            let payload: Vec<u8> = buf[start..need]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            let mut out = vec![buf[0], len as u8];
            out.extend(payload);
            stream.write_all(&out).await?;
            buf.drain(..need);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
