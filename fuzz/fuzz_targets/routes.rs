//! The route matcher and rewriter, fuzzed: any bytes as a request (method, Host, path,
//! headers) against the shared routing table (tests/routing/config.yaml: host, header,
//! prefix, regex and rewrite rules), under each path normalisation. A crash is a panic,
//! or one of:
//! - normalising twice gives another path than normalising once: a backend that
//!   normalises again would act on a path no rule was matched against (the class of
//!   `/public/%2e%2e/admin`);
//! - the normalised path selects another rule when sent again;
//! - a path lb forwards would not be read back whole from the request line, or does
//!   not start with `/`;
//! - a request forwarded to an address that is not an endpoint of a configured service.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use lb::route::decide::Forced;
use lb::route::path::{self, Normalization};
use lb::route::{Request, RouteTable, Verdict};

const MODES: [Normalization; 4] = [
    Normalization::None,
    Normalization::Base,
    Normalization::MergeSlashes,
    Normalization::DecodeAndMergeSlashes,
];

static TABLES: OnceLock<Vec<std::sync::Arc<RouteTable>>> = OnceLock::new();

fn tables() -> &'static [std::sync::Arc<RouteTable>] {
    TABLES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/routing");
        MODES
            .iter()
            .map(|&normalization| {
                let opts = lb::model::Options {
                    normalization,
                    ..Default::default()
                };
                let v = lb::model::load_dir_with(&dir, &mut Default::default(), &opts)
                    .expect("the shared routing table loads");
                lb::compile::plan(v.model).expect("and compiles").proxy
            })
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((&flags, bytes)) = bytes.split_first() else {
        return;
    };
    let mode = usize::from(flags & 3);
    let table = &tables()[mode];
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let authority = lines.next().unwrap_or("");
    let path_and_query = lines.next().unwrap_or("/");
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(n.trim()),
            HeaderValue::try_from(v.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let dialled = (flags & 4 == 4).then(|| "127.10.5.1:10500".parse().expect("addr"));
    let r = Request {
        method,
        scheme: "http",
        path_and_query,
        authority,
        headers: &headers,
        dialled,
        peer: None,
    };
    let Ok(sel) = table.select(&r) else {
        assert!(
            path_and_query.to_ascii_lowercase().contains("%00"),
            "only an encoded NUL makes a path fail to normalise: {path_and_query:?}"
        );
        return;
    };
    if MODES[mode] != Normalization::None {
        assert_eq!(
            path::normalize(&sel.path, MODES[mode]).as_deref(),
            Ok(sel.path.as_str()),
            "normalising twice differs from once ({:?}, {path_and_query:?})",
            MODES[mode]
        );
        let again = format!("{}{}", sel.path, sel.query);
        let resent = table
            .select(&Request {
                path_and_query: &again,
                ..r
            })
            .expect("a normalised path normalises");
        assert_eq!(
            resent.rule.map(|(i, _)| i),
            sel.rule.map(|(i, _)| i),
            "the normalised path {again:?} selects another rule"
        );
    }
    // One decision per destination, as `lb explain` makes them.
    for d in 0..4 {
        let Verdict::Upstream(t) = lb::route::decide(table, &sel, &r, true, &mut Forced(d)) else {
            continue;
        };
        let std::net::SocketAddr::V4(endpoint) = t.endpoint else {
            panic!("forwarded to an IPv6 endpoint: {}", t.endpoint);
        };
        assert!(
            table.endpoints.contains_key(&endpoint),
            "forwarded outside the services"
        );
        if MODES[mode] != Normalization::None && path_and_query.starts_with('/') {
            assert!(t.path.starts_with('/'), "forwarded path {:?}", t.path);
        }
        let line = format!("GET {} HTTP/1.1\r\n\r\n", t.path);
        let mut h = [httparse::EMPTY_HEADER; 1];
        let mut req = httparse::Request::new(&mut h);
        if path_and_query.bytes().all(|b| b.is_ascii_graphic()) && !path_and_query.is_empty() {
            assert!(
                matches!(
                    req.parse(line.as_bytes()),
                    Ok(httparse::Status::Complete(_))
                ) && req.path == Some(t.path.as_str()),
                "the forwarded path {:?} (from {path_and_query:?}) is no request target",
                t.path
            );
        }
    }
});
