use super::*;

fn verdict(head: &str) -> Result<Checked<'_>, Refusal> {
    let mut storage = [httparse::EMPTY_HEADER; 16];
    let limits = Limits {
        headers: 16,
        head_bytes: 4096,
    };
    match check(head.as_bytes(), &mut storage, &limits, b"lb-test")? {
        Some(h) => {
            assert_eq!(h.len, head.len(), "the whole head is consumed");
            Ok(h.checked)
        }
        None => panic!("incomplete head: {head:?}"),
    }
}

fn refused(head: &str) -> Refusal {
    verdict(head).expect_err(head)
}

#[test]
fn framing_is_content_length_chunked_or_none() {
    let c = verdict("POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 47\r\n\r\n").expect("ok");
    assert_eq!(c.body, Body::Length(47));
    let c =
        verdict("POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: Chunked\r\n\r\n").expect("ok");
    assert_eq!(c.body, Body::Chunked);
    let c = verdict("GET /a HTTP/1.1\r\nHost: svc\r\n\r\n").expect("ok");
    assert_eq!((c.body, c.close), (Body::None, false));
    let c = verdict("GET /a HTTP/1.0\r\n\r\n").expect("HTTP/1.0 needs no Host");
    assert_eq!((c.authority, c.close), (None, true));
    let c = verdict("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("ok");
    assert!(!c.close);
}

#[test]
fn connection_naming_a_framing_or_routing_header_is_refused() {
    for named in [
        "content-length",
        "Content-Length",
        "keep-alive, Content-Length",
        "close, content-length",
        "CONTENT-LENGTH",
        "transfer-encoding",
        "host",
        "x-a, Host",
    ] {
        let head = format!(
            "POST /test/v2/a HTTP/1.1\r\nHost: svc\r\nConnection: {named}\r\nContent-Length: 47\r\n\r\n"
        );
        assert_eq!(refused(&head), Refusal::ConnectionNamesFraming, "{named}");
    }
    let c = verdict("GET / HTTP/1.1\r\nHost: svc\r\nConnection: close, X-Secret\r\n\r\n")
        .expect("other names are fine");
    assert!(c.connection.names_headers && c.close);
}

#[test]
fn conflicting_or_obfuscated_framing_is_refused() {
    let cases = [
        (
            "Content-Length: 4\r\nTransfer-Encoding: chunked",
            Refusal::LengthAndCoding,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 4",
            Refusal::LengthAndCoding,
        ),
        (
            "Content-Length: 4\r\nContent-Length: 4",
            Refusal::DuplicateLength,
        ),
        (
            "Content-Length: 4\r\nContent-Length: 5",
            Refusal::DuplicateLength,
        ),
        ("Content-Length: 4, 4", Refusal::BadLength),
        ("Content-Length: +4", Refusal::BadLength),
        ("Content-Length: 0x4", Refusal::BadLength),
        ("Content-Length: 1234567890123456789", Refusal::BadLength),
        ("Content-Length:", Refusal::BadLength),
        ("Transfer-Encoding: chunked, chunked", Refusal::BadCoding),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            Refusal::BadCoding,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
            Refusal::BadCoding,
        ),
        ("Transfer-Encoding: xchunked", Refusal::BadCoding),
        ("Transfer-Encoding: chunked, identity", Refusal::BadCoding),
        ("Transfer-Encoding: chunked;q=1", Refusal::BadCoding),
        ("Transfer-Encoding: \"chunked\"", Refusal::BadCoding),
        ("Transfer-Encoding:", Refusal::BadCoding),
        (
            "Transfer-Encoding: gzip, chunked",
            Refusal::UnsupportedCoding,
        ),
        ("Expect: 100-continue, x", Refusal::Expectation),
    ];
    for (headers, want) in cases {
        let head = format!("POST / HTTP/1.1\r\nHost: svc\r\n{headers}\r\n\r\n");
        assert_eq!(refused(&head), want, "{headers}");
    }
    assert_eq!(
        refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Refusal::CodingInHttp10
    );
    for malformed in [
        "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: svc\r\n Transfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: svc\rX: y\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: s\0vc\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: svc\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: svc\r\n\r\n",
    ] {
        assert_eq!(refused(malformed), Refusal::Malformed, "{malformed:?}");
    }
}

#[test]
fn host_is_exactly_one_and_absolute_form_replaces_it() {
    assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), Refusal::MissingHost);
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Refusal::DuplicateHost
    );
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
        Refusal::DuplicateHost
    );
    for bad in ["a b", "user@svc", "svc/x", "svc:80x", "[::1", "svc:123456"] {
        let head = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(refused(&head), Refusal::BadHost, "{bad}");
    }
    for good in [
        "svc",
        "svc:80",
        "127.0.0.1:10000",
        "[::1]:80",
        "Api.Example.COM.",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert_eq!(verdict(&head).expect(good).authority, Some(good));
    }
    let c = verdict("GET http://real/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n").expect("absolute");
    assert_eq!(
        (c.target, c.authority, c.host),
        (
            Target::Absolute {
                authority: "real",
                path_and_query: "/x?q=1"
            },
            Some("real"),
            Some("other")
        )
    );
    let c = verdict("GET HTTP://real HTTP/1.1\r\nHost: real\r\n\r\n").expect("no path");
    assert_eq!(c.target.path_and_query(), "/");
    assert_eq!(
        refused("GET http://u@real/ HTTP/1.1\r\nHost: real\r\n\r\n"),
        Refusal::BadHost
    );
    assert_eq!(
        refused("GET http://real/ HTTP/1.1\r\n\r\n"),
        Refusal::MissingHost,
        "absolute-form still needs a Host in HTTP/1.1"
    );
}

#[test]
fn targets_are_origin_absolute_or_options_asterisk() {
    for (head, want) in [
        ("GET test HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::BadTarget),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::BadTarget),
        (
            "GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            Refusal::BadTarget,
        ),
        (
            "GET http://a?x HTTP/1.1\r\nHost: a\r\n\r\n",
            Refusal::BadTarget,
        ),
        ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::Fragment),
        (
            "GET /a?q#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            Refusal::Fragment,
        ),
        ("GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::TargetChar),
        ("GET /a`b HTTP/1.1\r\nHost: a\r\n\r\n", Refusal::TargetChar),
        (
            "GET /a?\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            Refusal::TargetChar,
        ),
        (
            "CONNECT 127.0.0.9:22 HTTP/1.1\r\nHost: 127.0.0.9:22\r\n\r\n",
            Refusal::Connect,
        ),
    ] {
        assert_eq!(refused(head), want, "{head:?}");
    }
    let c = verdict("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").expect("OPTIONS *");
    assert_eq!(c.target, Target::Asterisk);
    for ok in ["/a{\"b\"}", "/a?b={c}&`", "/caf\u{e9}", "//x", "/a%2Fb"] {
        let head = format!("GET {ok} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(verdict(&head).expect(ok).target, Target::Origin(ok));
    }
}

#[test]
fn limits_and_loops() {
    let many: String = (0..17).map(|i| format!("x-{i}: v\r\n")).collect();
    assert_eq!(
        refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
        Refusal::TooManyHeaders
    );
    let mut storage = [httparse::EMPTY_HEADER; 4];
    let limits = Limits {
        headers: 4,
        head_bytes: 32,
    };
    assert!(
        matches!(
            check(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut storage, &limits, b""),
            Ok(None)
        ),
        "partial"
    );
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
    assert!(matches!(
        check(long.as_bytes(), &mut storage, &limits, b""),
        Err(Refusal::HeadTooLarge)
    ));
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred, 1.1 lb-test\r\n\r\n"),
        Refusal::Loop
    );
    verdict("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 lb-other, 1.1 lb-test-2\r\n\r\n")
        .expect("another lb's marker is no loop");
}

#[test]
fn refusals_answer_alike_and_close() {
    let a = String::from_utf8(Refusal::Connect.answer("now")).expect("utf-8");
    assert!(a.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{a}");
    assert!(
        a.contains("\r\nallow: GET,") && a.contains("\r\nconnection: close\r\n"),
        "{a}"
    );
    assert!(a.ends_with("\r\n\r\nCONNECT is not served\n"), "{a}");
    assert_eq!(Refusal::TooManyHeaders.status(), 431);
}

/// Found by the two-client fuzz target: a bad expectation beside a bad Content-Length
/// got 417 from the lean path and hyper's own 400 on hyper's path. Broken framing is
/// ranked first, whatever the header order, so both engines answer 400.
#[test]
fn broken_framing_outranks_an_expectation_or_a_loop() {
    for head in [
        "OPTIONS * HTTP/1.1\r\nHost: svc\r\nExpect: \u{fb}100-continue\r\nContent-Length: -\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: svc\r\nVia: 1.1 lb-test\r\nContent-Length: 1, 2\r\n\r\n",
        "POST /a HTTP/1.1\r\nExpect: nope\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        assert_eq!(refused(head).status(), 400, "{head:?}");
    }
    assert_eq!(
        refused("GET /a HTTP/1.1\r\nHost: svc\r\nExpect: nope\r\n\r\n"),
        Refusal::Expectation
    );
    assert_eq!(
        refused("GET /a HTTP/1.1\r\nVia: 1.1 lb-test\r\nHost: svc\r\n\r\n"),
        Refusal::Loop
    );
}
