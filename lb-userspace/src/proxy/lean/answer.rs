//! The answer side of the lean path: an upstream's head turned into the client's, and
//! where its body ends.

use std::io::Write as _;

use super::head::{edited_lines, edits, line};
use crate::proxy::h1::ChunkScanner;
use crate::proxy::h1::connection::{is_hop_by_hop, named_by_connection, tokens};
use crate::proxy::h1::request::digits;
use crate::route::HeaderOps;

/// Header fields parsed per answer (hyper's client's bound): more is a 502.
const MAX_HEADERS: usize = 100;

/// How an answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An answer's head, read and turned into what the client gets.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    /// Bytes of the head (and of the interim answer, if it is one).
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) interim: bool,
    pub(super) framing: Framing,
    /// The upstream connection can carry another request.
    pub(super) reusable: bool,
    /// The client connection must close after it (asked to, or the body ends at close).
    pub(super) close_client: bool,
    /// The head for the client.
    pub(super) head: Vec<u8>,
}

/// The Date header's value for now, formatted once a second (as hyper's server does).
pub(super) fn with_date<T>(f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        f(text)
    })
}

/// Ok(None): the head is not complete yet. `ops`: the rule's edits of the answer's
/// headers. `date`: added as the Date header if the answer has none (RFC 9110 §6.6.1:
/// a proxy with a clock adds it; hyper's server does).
pub(super) fn parse_answer(
    bytes: &[u8],
    head_method: bool,
    client_close: bool,
    ops: &HeaderOps,
    date: &str,
) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed head");
    };
    // httparse reads any three digits; below 100 is no status (hyper's client and the
    // http crate refuse it) and would be relayed as `HTTP/1.1 2`, which no client reads
    // (found by fuzz/fuzz_targets/answer.rs).
    if status < 100 {
        return Err("malformed head");
    }
    if status == 101 {
        return Err("101 without an upgrade");
    }
    let mut answer = Answer {
        len,
        status,
        interim: (100..200).contains(&status),
        framing: Framing::Empty,
        reusable: version == 1,
        close_client: client_close,
        head: Vec::new(),
    };
    if answer.interim {
        return Ok(Some(answer));
    }
    let (mut length, mut coded, mut chunked, mut names_headers) = (None, false, false, false);
    let mut dated = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("repeated Content-Length");
            }
            length = Some(digits(h.value).ok_or("bad Content-Length")?);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // Chunked must be the last coding (RFC 9112 §6.3) of the list all the
            // field lines make together, in which empty elements do not count (RFC 9110
            // §5.3, §5.6.1): an empty Transfer-Encoding after `chunked` leaves it last
            // (found by fuzz/fuzz_targets/answer.rs; the client reads chunked there).
            if let Some(last) = tokens(h.value).last() {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if n.eq_ignore_ascii_case("date") {
            dated = true;
        } else if n.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    answer.reusable = false;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    names_headers = true;
                }
            }
        }
    }
    if coded && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    answer.framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if coded {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if answer.framing == Framing::UntilClose {
        answer.reusable = false;
        answer.close_client = true;
    }
    let reason = resp.reason.unwrap_or("");
    let mut out = Vec::with_capacity(len + 32);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for h in resp.headers.iter() {
        let n = h.name;
        // Transfer-Encoding stays: the body goes through as it was coded.
        let drop = (is_hop_by_hop(n) && !n.eq_ignore_ascii_case("transfer-encoding"))
            || (names_headers && named_by_connection(resp.headers, n))
            || edits(ops, n);
        if !drop {
            line(&mut out, n, h.value);
        }
    }
    // The rule's edits, then what hyper's server would add: a Date if none is left.
    edited_lines(&mut out, ops);
    dated = (dated && !edits(ops, "date"))
        || ops
            .set
            .iter()
            .chain(&ops.add)
            .any(|(n, _)| n == http::header::DATE);
    if !dated {
        line(&mut out, "date", date.as_bytes());
    }
    if answer.close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    answer.head = out;
    Ok(Some(answer))
}

/// Where a framed body ends in the bytes relayed: after so many more bytes, or where
/// the chunk scanner says.
pub(super) enum BodyEnd {
    Length(u64),
    Chunked(ChunkScanner),
}

impl BodyEnd {
    /// The end of a body of this framing; None: it ends when the upstream closes.
    pub(super) fn of(framing: Framing) -> Option<Self> {
        match framing {
            Framing::Empty => Some(BodyEnd::Length(0)),
            Framing::Length(n) => Some(BodyEnd::Length(n)),
            Framing::Chunked => Some(BodyEnd::Chunked(ChunkScanner::default())),
            Framing::UntilClose => None,
        }
    }

    /// How many of `bytes` belong to the body (all of them until its end).
    pub(super) fn take(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        match self {
            BodyEnd::Length(left) => {
                let k = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= k as u64;
                Ok(k)
            }
            BodyEnd::Chunked(scan) => scan.feed(bytes).map_err(|_| "bad chunked framing"),
        }
    }

    pub(super) fn done(&self) -> bool {
        match self {
            BodyEnd::Length(left) => *left == 0,
            BodyEnd::Chunked(scan) => scan.done(),
        }
    }
}

/// What the lean path makes of an upstream's bytes, for the answer fuzz target
/// (fuzz/fuzz_targets/answer.rs) — not an API. The body's end is found twice, once
/// from the bytes whole and once fed at `split`: where it ends must not depend on how
/// the bytes arrived.
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    pub interim: bool,
    /// The head for the client.
    pub head: Vec<u8>,
    /// Bytes of the upstream's head.
    pub head_len: usize,
    /// `empty`, `length`, `chunked` or `close`.
    pub framing: &'static str,
    /// Bytes after the head that belong to the body: Ok(Some(n)) the body ends there,
    /// Ok(None) it goes on past these bytes (or until the upstream closes).
    pub body: Result<Option<usize>, &'static str>,
}

pub fn relay_for_fuzzing(
    bytes: &[u8],
    head_method: bool,
    split: usize,
) -> Result<Option<Relayed>, &'static str> {
    let Some(a) = parse_answer(bytes, head_method, false, &HeaderOps::default(), "now")? else {
        return Ok(None);
    };
    let rest = &bytes[a.len..];
    let end = |pieces: &[&[u8]]| -> Result<Option<usize>, &'static str> {
        let Some(mut end) = BodyEnd::of(a.framing) else {
            return Ok(None);
        };
        let mut taken = 0;
        for p in pieces {
            if end.done() {
                break;
            }
            taken += end.take(p)?;
        }
        Ok(end.done().then_some(taken))
    };
    let whole = end(&[rest]);
    let (x, y) = rest.split_at(split.min(rest.len()));
    assert_eq!(
        whole,
        end(&[x, y]),
        "the body's end depends on where the bytes were split ({split})"
    );
    Ok(Some(Relayed {
        status: a.status,
        interim: a.interim,
        head: a.head,
        head_len: a.len,
        framing: match a.framing {
            Framing::Empty => "empty",
            Framing::Length(_) => "length",
            Framing::Chunked => "chunked",
            Framing::UntilClose => "close",
        },
        body: whole,
    }))
}
