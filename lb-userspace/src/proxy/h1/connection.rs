//! The `Connection` header and the hop-by-hop set (RFC 9110 §7.6.1): headers that
//! describe one connection and are never forwarded.

/// Hop-by-hop by definition. Transfer-Encoding is among them: lb writes the framing
/// of what it forwards itself.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a `Connection` header may not name: they frame or route the message for
/// every recipient, and a proxy honouring the option would strip them while still
/// forwarding what they frame.
pub const PROTECTED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// The comma-separated tokens of a list header (empty elements skipped, RFC 9110 §5.6.1).
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a Connection header of `headers` names `name`.
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// What a request's Connection headers say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Names other headers (they are hop-by-hop too).
    pub names_headers: bool,
    /// Names a [`PROTECTED`] header.
    pub names_protected: bool,
}

impl Options {
    pub fn add(&mut self, value: &[u8]) {
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if PROTECTED
                .iter()
                .any(|p| t.eq_ignore_ascii_case(p.as_bytes()))
            {
                self.names_protected = true;
            } else {
                self.names_headers = true;
            }
        }
    }
}
