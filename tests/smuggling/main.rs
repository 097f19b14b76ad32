//! Proof that request smuggling through lb's proxy is gone (issue 12): every request
//! of a hostile corpus goes to both engines (the lean path, and hyper for everything),
//! each through a pooled upstream connection, followed by an innocent request from
//! another connection. The innocent request always arrives intact, the backend never
//! parses a request lb did not relay, and both engines give the same verdict. Then the
//! cases found by hand, each with its expected answer. In-process, loopback only.

mod corpus;
mod rig;

use rig::{Rig, run_case};

#[test]
fn both_engines_agree_and_the_innocent_request_always_arrives_intact() {
    let cases = corpus::all();
    assert!(cases.len() >= 300, "the corpus has {} cases", cases.len());
    let (lean, hyper) = (Rig::start(true), Rig::start(false));
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let n = i as u64;
        let a = run_case(&lean, "lean", &c.name, &c.bytes, n, &mut failures);
        let b = run_case(&hyper, "hyper", &c.name, &c.bytes, n, &mut failures);
        if a != b {
            failures.push(format!(
                "{}: the engines differ:\n  lean  {a:?}\n  hyper {b:?}",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) over {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// What the cases of issue 12 must get, from both engines.
#[test]
fn the_cases_found_by_hand_get_their_answers() {
    let te = "Transfer-Encoding: chunked";
    let hijack = |conn: &str| {
        format!(
            "POST /test/v2/a HTTP/1.1\r\nHost: svc\r\nConnection: {conn}\r\nContent-Length: {}\r\n\r\n{}",
            corpus::SWALLOW.len(),
            corpus::SWALLOW
        )
    };
    let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    for lean in [true, false] {
        let rig = Rig::start(lean);
        let via = format!(
            "GET /a HTTP/1.1\r\nHost: svc\r\nVia: 1.1 proxy, 1.1 {}\r\n\r\n",
            rig.via
        );
        let cases: Vec<(&str, String, Vec<u16>, Vec<&str>)> = vec![
            ("the hijack", hijack("content-length"), vec![400], vec![]),
            (
                "keep-alive, Content-Length",
                hijack("keep-alive, Content-Length"),
                vec![400],
                vec![],
            ),
            (
                "close, content-length",
                hijack("close, content-length"),
                vec![400],
                vec![],
            ),
            ("upper case", hijack("CONTENT-LENGTH"), vec![400], vec![]),
            (
                "two Hosts",
                "GET /a HTTP/1.1\r\nHost: svc\r\nHost: evil\r\n\r\n".into(),
                vec![400],
                vec![],
            ),
            (
                "no Host",
                "GET /a HTTP/1.1\r\n\r\n".into(),
                vec![400],
                vec![],
            ),
            (
                "CONNECT",
                "CONNECT 127.0.0.9:22 HTTP/1.1\r\nHost: 127.0.0.9:22\r\n\r\n".into(),
                vec![405],
                vec![],
            ),
            (
                "an overflowing chunk size",
                format!(
                    "POST /a HTTP/1.1\r\nHost: svc\r\n{te}\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"
                ),
                vec![400],
                vec![],
            ),
            (
                "GET test",
                "GET test HTTP/1.1\r\nHost: svc\r\n\r\n".into(),
                vec![400],
                vec![],
            ),
            (
                "OPTIONS *",
                "OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n".into(),
                vec![200],
                vec!["*"],
            ),
            (
                "/public/%2e%2e/admin",
                "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: svc\r\n\r\n".into(),
                vec![403],
                vec![],
            ),
            (
                "/%61dmin",
                "GET /%61dmin HTTP/1.1\r\nHost: svc\r\n\r\n".into(),
                vec![403],
                vec![],
            ),
            (
                "normalised before the rewrite",
                "GET /x/%2e%2e/test/v2/%62 HTTP/1.1\r\nHost: svc\r\n\r\n".into(),
                vec![200],
                vec!["/test/b"],
            ),
            (
                "absolute-form routes by its authority",
                "GET http://svc/test/v2/c HTTP/1.1\r\nHost: evil\r\n\r\n".into(),
                vec![200],
                vec!["/test/c"],
            ),
            (
                "101 header fields",
                format!("GET /a HTTP/1.1\r\nHost: svc\r\n{many}\r\n"),
                vec![431],
                vec![],
            ),
            ("lb's own Via marker", via, vec![508], vec![]),
        ];
        for (what, bytes, statuses, paths) in cases {
            let (answers, seen) = rig.attack(bytes.as_bytes());
            let reached: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
            assert_eq!(
                (&answers.statuses, &reached, answers.timed_out),
                (&statuses, &paths, false),
                "lean={lean} {what}"
            );
            rig.innocent(7)
                .unwrap_or_else(|e| panic!("lean={lean} after {what}: {e}"));
        }
        // The absolute-form target's authority replaced Host; lb marked its hop.
        let (_, seen) = rig.attack(b"GET http://svc/a HTTP/1.1\r\nHost: evil\r\n\r\n");
        let header = |n: &str| {
            seen[0]
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("host").as_deref(), Some("svc"), "lean={lean}");
        assert_eq!(
            header("via"),
            Some(format!("1.1 {}", rig.via)),
            "lean={lean}"
        );
    }
}
