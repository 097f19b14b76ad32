//! HTTP/1 message rules, decided once for both of the proxy's engines. A request head
//! gets one verdict ([`check`]): how its body is framed, which authority it is routed
//! by, which headers are hop-by-hop — or why it is refused. The lean path acts on the
//! verdict directly; on hyper's path the guard (proxy/guard.rs) computes the same
//! verdict from the bytes hyper reads, and the handler obeys it. Whatever the client
//! sent, the upstream gets framing lb wrote itself from the verdict (never a client's
//! Content-Length or Transfer-Encoding line), so the bytes lb forwards on a pooled
//! connection always end where the upstream will think they end.
//!
//! Pure: no I/O, tested without sockets.

pub mod chunked;
pub mod connection;
pub mod request;

pub use chunked::ChunkScanner;
pub use request::{Body, Checked, Head, Target, check};

/// Bounds on a request head (`--max-request-headers`, `--max-request-headers-kb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Header fields per request head (Envoy's and hyper's default: 100).
    pub headers: usize,
    /// Bytes of a request head: request line and header fields.
    pub head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            headers: 100,
            head_bytes: 64 * 1024,
        }
    }
}

/// Why lb refuses a request itself: nothing of it reaches a backend, and the client
/// connection closes after the answer (what follows on it cannot be trusted to start
/// where a request starts). Logged with Envoy's flag `DPE` (downstream protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request line or a header field does not parse (RFC 9112 §2-5: bare CR,
    /// obs-fold, NUL, a space before the colon, ...).
    #[error("malformed request head")]
    Malformed,
    /// The head is larger than `Limits::head_bytes`.
    #[error("request head too large")]
    HeadTooLarge,
    /// More header fields than `Limits::headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The request target is over 65,534 bytes (the most hyper's URI holds).
    #[error("request target too long")]
    TargetTooLong,
    /// An HTTP/1.1 request without a Host header (RFC 9112 §3.2: 400).
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// More than one Host header (RFC 9112 §3.2: 400).
    #[error("more than one Host header")]
    DuplicateHost,
    /// A Host (or absolute-form authority) that is not `host[:port]`.
    #[error("invalid Host")]
    BadHost,
    /// Neither origin-form (`/path`), absolute-form (`http://host/path`) nor
    /// `OPTIONS *` (`GET test`, `GET *`, a non-http scheme).
    #[error("invalid request target")]
    BadTarget,
    /// A `#fragment` in the request target (clients never send one).
    #[error("fragment in request target")]
    Fragment,
    /// A target byte hyper's URI parser refuses, or invalid UTF-8.
    #[error("invalid character in request target")]
    TargetChar,
    /// CONNECT: no rule of an Istio VirtualService routes a tunnel.
    #[error("CONNECT is not served")]
    Connect,
    /// Content-Length repeated (even with the same value) or as a list.
    #[error("more than one Content-Length")]
    DuplicateLength,
    /// Content-Length that is not 1-18 digits.
    #[error("invalid Content-Length")]
    BadLength,
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3: a smuggling attempt).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndCoding,
    /// Transfer-Encoding on an HTTP/1.0 request (RFC 9112 §6.1: faulty framing).
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    CodingInHttp10,
    /// Transfer-Encoding whose last coding is not `chunked`, or `chunked` twice.
    #[error("invalid Transfer-Encoding")]
    BadCoding,
    /// A transfer coding other than `chunked` before it (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented")]
    UnsupportedCoding,
    /// `Connection` names a header that frames or routes the message
    /// (`content-length`, `transfer-encoding`, `host`): RFC 9110 §7.6.1 forbids it,
    /// and honouring it would strip the framing of a body lb forwards.
    #[error("Connection names a framing or routing header")]
    ConnectionNamesFraming,
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1: 417).
    #[error("unsupported expectation")]
    Expectation,
    /// The chunked body does not follow RFC 9112 §7.1 (a size that overflows, a bare
    /// LF, a missing CRLF, ...).
    #[error("malformed chunked body")]
    BadChunk,
    /// The client ended the connection before the body its framing announced.
    #[error("request body cut short")]
    Incomplete,
    /// The request carries lb's own `Via` marker: it went round to this proxy again.
    #[error("request loops through this proxy")]
    Loop,
    /// The path does not normalise: `%00` (Istio refuses it with 400).
    #[error("invalid path")]
    BadPath,
    /// The head was not complete within `Bounds::head` (408).
    #[error("request head not received in time")]
    HeadTimeout,
    /// The body stopped moving for `Bounds::stream_idle` before it ended (408).
    #[error("request body stalled")]
    BodyTimeout,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => 431,
            Refusal::TargetTooLong => 414,
            Refusal::Connect => 405,
            Refusal::UnsupportedCoding => 501,
            Refusal::Expectation => 417,
            Refusal::Loop => 508,
            Refusal::HeadTimeout | Refusal::BodyTimeout => 408,
            _ => 400,
        }
    }

    /// The access log's response flag (Envoy's): a timeout on the client's side is
    /// `SI` (stream idle), anything else a downstream protocol error.
    pub fn flag(self) -> &'static str {
        match self {
            Refusal::HeadTimeout | Refusal::BodyTimeout => "SI",
            _ => "DPE",
        }
    }

    /// The answer's body (both engines).
    pub fn body(self) -> String {
        format!("{self}\n")
    }

    /// The `Allow` header a 405 carries.
    pub fn allow(self) -> Option<&'static str> {
        (self == Refusal::Connect).then_some(ALLOW)
    }

    /// The whole answer as the lean path writes it (hyper's path builds the same from
    /// `status`, `body` and `allow`).
    pub fn answer(self, date: &str) -> Vec<u8> {
        let status = http::StatusCode::from_u16(self.status()).expect("valid status");
        let body = self.body();
        let allow = self
            .allow()
            .map(|a| format!("allow: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{allow}connection: close\r\ndate: {date}\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
        )
        .into_bytes()
    }
}

/// What a 405 says lb serves.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";
