//! Hostile and odd requests, from the request-smuggling literature (CL.TE, TE.CL,
//! TE.TE obfuscations, Connection-named framing headers, obs-fold, bare CR/LF, NUL,
//! duplicate and missing Host, absolute-form, bad chunks, pipelining after a body).
//! Whatever a case smuggles asks for a path under `/smuggled`: no backend may ever see
//! one. Legitimate second requests ask for `/second`.

/// A request whose head is left open: it swallows whatever the backend reads next (the
/// next client's request line becomes the value of `X-Swallow`).
pub const SWALLOW: &str = "GET /smuggled/hijack HTTP/1.1\r\nHost: svc\r\nX-Swallow: ";
/// A whole request, for desyncs that would run it.
pub const SMUGGLED: &str = "GET /smuggled/whole HTTP/1.1\r\nHost: svc\r\n\r\n";

pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn case(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name: name.into(),
        bytes: bytes.into(),
    }
}

/// `POST /` with `headers` and `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /test/v2/a HTTP/1.1\r\nHost: svc\r\n{headers}\r\n\r\n{body}").into_bytes()
}

/// Transfer-Encoding header names: the real one in several cases, and look-alikes a
/// lenient parser might take for it.
const TE_NAMES: [&str; 10] = [
    "Transfer-Encoding",
    "transfer-encoding",
    "TRANSFER-ENCODING",
    "Transfer-encoding",
    "Transfer-Encoding ",
    " Transfer-Encoding",
    "Transfer_Encoding",
    "X-Transfer-Encoding",
    "Transfer-Encoding\t",
    "Transfer\0-Encoding",
];

/// Transfer-Encoding values, plain and obfuscated.
const TE_VALUES: [&str; 22] = [
    "chunked",
    " chunked",
    "\tchunked",
    "Chunked",
    "CHUNKED",
    "chunked ",
    "chunked\t",
    "xchunked",
    "chunkedx",
    "chunk",
    "chunked, identity",
    "identity, chunked",
    "gzip, chunked",
    "chunked, chunked",
    "\"chunked\"",
    "chunked;q=1",
    "chunked\x0b",
    "chunked\x0c",
    "chunked\u{ff}",
    "",
    ",chunked",
    "chunked,",
];

pub fn all() -> Vec<Case> {
    let mut out = Vec::new();
    connection_named(&mut out);
    cl_te(&mut out);
    content_lengths(&mut out);
    heads(&mut out);
    hosts_and_targets(&mut out);
    chunks(&mut out);
    pipelines(&mut out);
    out
}

/// The hijack of issue 12 and its relatives: a framing header named by Connection.
fn connection_named(out: &mut Vec<Case>) {
    for named in [
        "content-length",
        "Content-Length",
        "CONTENT-LENGTH",
        "keep-alive, Content-Length",
        "close, content-length",
        "Content-Length, close",
        " content-length ",
        "transfer-encoding",
        "host",
        "x-a, Host",
    ] {
        out.push(case(
            format!("Connection: {named} over a body"),
            post(
                &format!("Connection: {named}\r\nContent-Length: {}", SWALLOW.len()),
                SWALLOW,
            ),
        ));
    }
    let body = format!("0\r\n\r\n{SMUGGLED}");
    out.push(case(
        "Connection: transfer-encoding over a chunked body",
        post(
            "Connection: transfer-encoding\r\nTransfer-Encoding: chunked",
            &body,
        ),
    ));
    out.push(case(
        "Connection: content-length over a chunked body",
        post(
            "Connection: content-length\r\nTransfer-Encoding: chunked",
            &body,
        ),
    ));
}

/// CL.TE, TE.CL and TE.TE over every Transfer-Encoding obfuscation.
fn cl_te(out: &mut Vec<Case>) {
    for name in TE_NAMES {
        for value in TE_VALUES {
            let te = format!("{name}: {value}");
            let body = format!("0\r\n\r\n{SWALLOW}");
            out.push(case(
                format!("CL.TE {te:?}"),
                post(&format!("Content-Length: {}\r\n{te}", body.len()), &body),
            ));
            let inner =
                "GPOST /smuggled/te-cl HTTP/1.1\r\nHost: svc\r\nContent-Length: 15\r\n\r\nx=1";
            let body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
            out.push(case(
                format!("TE.CL {te:?}"),
                post(&format!("{te}\r\nContent-Length: 4"), &body),
            ));
        }
    }
    for a in ["chunked", "Chunked", "identity", "x", ""] {
        for b in ["chunked", "identity", "x", "gzip", " chunked"] {
            let body = format!("0\r\n\r\n{SWALLOW}");
            out.push(case(
                format!("TE.TE {a:?} then {b:?}"),
                post(
                    &format!("Transfer-Encoding: {a}\r\nTransfer-Encoding: {b}"),
                    &body,
                ),
            ));
        }
    }
}

fn content_lengths(out: &mut Vec<Case>) {
    let n = SWALLOW.len();
    for (what, headers) in [
        (
            "repeated",
            format!("Content-Length: {n}\r\nContent-Length: {n}"),
        ),
        (
            "two values",
            format!("Content-Length: 0\r\nContent-Length: {n}"),
        ),
        (
            "two values, other order",
            format!("Content-Length: {n}\r\nContent-Length: 0"),
        ),
        ("a list", format!("Content-Length: {n}, {n}")),
        ("a plus sign", format!("Content-Length: +{n}")),
        ("negative", "Content-Length: -1".to_string()),
        ("hex", format!("Content-Length: 0x{n:x}")),
        ("leading zeros", format!("Content-Length: 000{n}")),
        (
            "overflowing",
            "Content-Length: 99999999999999999999".to_string(),
        ),
        ("a space inside", "Content-Length: 4 2".to_string()),
        ("empty", "Content-Length:".to_string()),
        ("obs-fold", format!("Content-Length: 0\r\n {n}")),
        ("shorter than the body", "Content-Length: 3".to_string()),
        (
            "longer than the body",
            format!("Content-Length: {}", n + 40),
        ),
        ("zero", "Content-Length: 0".to_string()),
    ] {
        out.push(case(
            format!("Content-Length {what}"),
            post(&headers, SWALLOW),
        ));
    }
}

/// Malformed heads: line endings, NUL, folding, versions, sizes, expectations.
fn heads(out: &mut Vec<Case>) {
    let raw: [(&str, Vec<u8>); 22] = [
        ("bare LF line ends", b"GET /a HTTP/1.1\nHost: svc\n\n".to_vec()),
        ("bare CR in a value", b"GET /a HTTP/1.1\r\nHost: svc\r\nX: a\rb\r\n\r\n".to_vec()),
        ("bare CR line end", b"GET /a HTTP/1.1\rHost: svc\r\n\r\n".to_vec()),
        ("NUL in a name", b"GET /a HTTP/1.1\r\nHost: svc\r\nX\0: a\r\n\r\n".to_vec()),
        ("NUL in a value", b"GET /a HTTP/1.1\r\nHost: svc\r\nX: a\0b\r\n\r\n".to_vec()),
        ("NUL in the path", b"GET /a\0b HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("obs-fold on Transfer-Encoding", format!("POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n{SMUGGLED}").into_bytes()),
        ("obs-fold on Host", b"GET /a HTTP/1.1\r\nHost: svc\r\n\tevil\r\n\r\n".to_vec()),
        ("space before the colon", b"GET /a HTTP/1.1\r\nHost : svc\r\n\r\n".to_vec()),
        ("HTTP/1.0 with a body, kept alive", b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhelloGET /second HTTP/1.0\r\n\r\n".to_vec()),
        ("HTTP/1.0 chunked", format!("POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}").into_bytes()),
        ("HTTP/0.9", b"GET /a\r\n\r\n".to_vec()),
        ("HTTP/1.2", b"GET /a HTTP/1.2\r\nHost: svc\r\n\r\n".to_vec()),
        ("HTTP/2.0 in a request line", b"GET /a HTTP/2.0\r\nHost: svc\r\n\r\n".to_vec()),
        ("lower-case version", b"GET /a http/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("two spaces in the request line", b"GET  /a HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec()),
        ("Expect: 100-continue with a body", b"POST /a HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("an unknown expectation", b"POST /a HTTP/1.1\r\nHost: svc\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("101 header fields", format!("GET /a HTTP/1.1\r\nHost: svc\r\n{}\r\n", (0..100).map(|i| format!("x-{i}: v\r\n")).collect::<String>()).into_bytes()),
        ("100 header fields", format!("GET /a HTTP/1.1\r\nHost: svc\r\n{}\r\n", (0..99).map(|i| format!("x-{i}: v\r\n")).collect::<String>()).into_bytes()),
        ("a 100 KiB header", format!("GET /a HTTP/1.1\r\nHost: svc\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024)).into_bytes()),
        ("Upgrade declined, then smuggled", format!("GET /a HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{SMUGGLED}").into_bytes()),
    ];
    for (name, bytes) in raw {
        out.push(case(name, bytes));
    }
}

fn hosts_and_targets(out: &mut Vec<Case>) {
    let heads: [(&str, &str); 33] = [
        ("no Host in HTTP/1.1", "GET /a HTTP/1.1\r\n\r\n"),
        (
            "two Hosts, the same",
            "GET /a HTTP/1.1\r\nHost: svc\r\nHost: svc\r\n\r\n",
        ),
        (
            "two Hosts, different",
            "GET /a HTTP/1.1\r\nHost: svc\r\nHost: evil\r\n\r\n",
        ),
        ("an empty Host", "GET /a HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "Host with userinfo",
            "GET /a HTTP/1.1\r\nHost: evil@svc\r\n\r\n",
        ),
        ("Host with a path", "GET /a HTTP/1.1\r\nHost: svc/x\r\n\r\n"),
        (
            "Host with a bad port",
            "GET /a HTTP/1.1\r\nHost: svc:80x\r\n\r\n",
        ),
        (
            "Host with a port",
            "GET /a HTTP/1.1\r\nHost: svc:80\r\n\r\n",
        ),
        (
            "absolute-form, Host differs",
            "GET http://svc/a HTTP/1.1\r\nHost: evil\r\n\r\n",
        ),
        (
            "absolute-form to another host",
            "GET http://evil/a HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "absolute-form https",
            "GET https://svc/a HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "absolute-form with userinfo",
            "GET http://u@svc/a HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "absolute-form without path",
            "GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        ("HTTP/1.0 without Host", "GET /a HTTP/1.0\r\n\r\n"),
        (
            "HTTP/1.0 with two Hosts",
            "GET /a HTTP/1.0\r\nHost: svc\r\nHost: evil\r\n\r\n",
        ),
        (
            "a relative target",
            "GET test HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        ("GET *", "GET * HTTP/1.1\r\nHost: svc\r\n\r\n"),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n"),
        (
            "CONNECT to a port",
            "CONNECT 127.0.0.9:22 HTTP/1.1\r\nHost: 127.0.0.9:22\r\n\r\n",
        ),
        (
            "CONNECT to the service",
            "CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n",
        ),
        ("a fragment", "GET /a#x HTTP/1.1\r\nHost: svc\r\n\r\n"),
        ("a < in the path", "GET /a<b HTTP/1.1\r\nHost: svc\r\n\r\n"),
        ("//x", "GET //x HTTP/1.1\r\nHost: svc\r\n\r\n"),
        (
            "%2e%2e to /admin",
            "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        ("%61dmin", "GET /%61dmin HTTP/1.1\r\nHost: svc\r\n\r\n"),
        (
            ".. to /admin",
            "GET /public/../admin/x HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        ("./admin", "GET /./admin HTTP/1.1\r\nHost: svc\r\n\r\n"),
        (
            ".%2e to /admin",
            "GET /x/.%2E/admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "backslash to /admin",
            "GET /x\\..\\admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "%41DMIN stays upper case",
            "GET /%41DMIN HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "%00 in the path",
            "GET /a%00b HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "rewrite after %2e%2e",
            "GET /x/%2e%2e/test/v2/b HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
        (
            "absolute-form to /admin",
            "GET http://svc/x/%2e%2e/admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        ),
    ];
    for (name, head) in heads {
        out.push(case(name, head));
    }
    out.push(case(
        "a 70,000-byte target",
        format!("GET /{} HTTP/1.1\r\nHost: svc\r\n\r\n", "a".repeat(70_000)),
    ));
}

fn chunks(out: &mut Vec<Case>) {
    let te = "Transfer-Encoding: chunked";
    for (name, body) in [
        ("a valid body", "5\r\nhello\r\n0\r\n\r\n".to_string()),
        (
            "a size past 64 bits",
            format!("10000000000000000\r\nx\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a size of 18 hex digits",
            format!("ffffffffffffffffff\r\nx\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a negative size",
            format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        ("a 0x size", format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "spaces before an extension",
            "5 ;e=1\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        (
            "LF in an extension",
            format!("5;a\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a bare LF after the size",
            format!("5\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "data not ended by CRLF",
            format!("5\r\nhelloXX\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "data ended by a bare LF",
            format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a valid trailer",
            "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n".to_string(),
        ),
        (
            "a Content-Length trailer",
            format!("0\r\nContent-Length: {}\r\n\r\n{SWALLOW}", SWALLOW.len()),
        ),
        (
            "a 17 KiB extension",
            format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(17 * 1024)),
        ),
        ("the end with bare LFs", format!("0\n\n{SMUGGLED}")),
        ("a chunk larger than sent", "ff\r\nhello".to_string()),
        ("a body cut short", "5\r\nhel".to_string()),
        (
            "then a second request",
            "0\r\n\r\nGET /second HTTP/1.1\r\nHost: svc\r\n\r\n".to_string(),
        ),
    ] {
        out.push(case(format!("chunked: {name}"), post(te, &body)));
    }
}

fn pipelines(out: &mut Vec<Case>) {
    let second = "GET /second HTTP/1.1\r\nHost: svc\r\n\r\n";
    for (name, bytes) in [
        (
            "after a Content-Length body",
            format!("POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello{second}"),
        ),
        (
            "three requests",
            format!("GET /a HTTP/1.1\r\nHost: svc\r\n\r\n{second}{second}"),
        ),
        (
            "after Connection: close",
            format!("GET /a HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n{SMUGGLED}"),
        ),
        (
            "after a refused request",
            format!("GET /a HTTP/1.1\r\n\r\n{SMUGGLED}"),
        ),
        (
            "after a 404",
            format!("GET /a HTTP/1.1\r\nHost: nowhere\r\n\r\n{second}"),
        ),
        (
            "after a 403",
            format!("GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n{second}"),
        ),
        (
            "leading empty lines",
            "\r\n\r\nGET /a HTTP/1.1\r\nHost: svc\r\n\r\n".to_string(),
        ),
        // Found by the two_clients fuzz smoke (session 17): HTTP/2's preface after an
        // HTTP/1.1 request. hyper ends the connection without an answer; the lean
        // path answered 400.
        (
            "an HTTP/2 preface after a request",
            format!("GET /a HTTP/1.1\r\nHost: svc\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{second}"),
        ),
        (
            "a body with a request inside",
            format!(
                "POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
    ] {
        out.push(case(format!("pipelined: {name}"), bytes));
    }
}
