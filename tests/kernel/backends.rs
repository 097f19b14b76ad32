//! Backends that fail (issue 16; without retries and outlier detection, which are the
//! traffic-policy issue's): a backend gone (its port refuses), one that resets the
//! connection mid-answer, one that never answers, one that is slow. Each request ends
//! within its bound, with the answer and the access-log flag Envoy would give, and the
//! healthy backend keeps serving meanwhile.

use std::time::Duration;

use crate::harness::{Env, wait_for};
use crate::proxy::seed;

/// The seed's header rule, v1 moved to 127.0.0.9, where nothing listens.
fn config(svc: &str, port: u16) -> String {
    let config = seed("c-header", svc, port);
    assert!(config.contains("address: 127.0.0.3"), "the seed's v1");
    config.replace("address: 127.0.0.3", "address: 127.0.0.9")
}

#[test]
fn failing_backends_end_within_their_bounds_with_envoys_flags() {
    let (svc, port) = ("127.10.30.1", 30000);
    let mut env = Env::new("backends");
    env.backend("v0", &[format!("127.0.0.2:{port}").parse().expect("addr")]);
    env.write_config("config.yaml", &config(svc, port));
    env.start_daemon_with(
        false,
        &["--stream-idle-timeout", "1s", "--connect-timeout", "1s"],
    );
    let to = format!("{svc}:{port}");
    let healthy = env.spawn_client(
        "healthy",
        &[
            "--to",
            &to,
            "--count",
            "100000",
            "--every-ms",
            "2",
            "--for-ms",
            "30000",
        ],
    );
    // (what, path, header, the answer's start, the flag, the bound)
    let cases = [
        (
            "gone",
            "/test",
            "hellotest: true\r\n",
            "HTTP/1.1 502 ",
            // Istio's default policy tried twice more (Envoy's URX: retries used up).
            "UF,URX",
            1.0,
        ),
        ("reset mid-answer", "/reset", "", "HTTP/1.1 200 ", "UC", 1.0),
        ("never answers", "/hang", "", "HTTP/1.1 504 ", "UT", 2.0),
        (
            "slow (0.5 s, under the 1 s bound)",
            "/slow",
            "",
            "HTTP/1.1 200 ",
            "-",
            2.0,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, path, header, want, _, bound) in &cases {
        for _ in 0..5 {
            let (got, took) = env.get_once("HTTP/1.1", path, header);
            eprintln!("{what}: {:?} in {took:?}", got.lines().next().unwrap_or(""));
            if !got.starts_with(want) || took > Duration::from_secs_f64(*bound) {
                wrong.push(format!("{what}: {:?} in {took:?}", got.lines().next()));
            }
        }
    }
    let s = healthy.stop();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(s["failures"], 0, "the healthy backend kept serving: {s}");
    // The access log says why each ended, as Envoy's response flags do.
    let log_path = env.work.join("access.log");
    wait_for(Duration::from_secs(5), "the access log flushed", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.matches("GET /slow").count() == 5)
    });
    let log = std::fs::read_to_string(&log_path).expect("access log");
    for (what, path, header, want, flag, _) in &cases {
        let status = &want["HTTP/1.1 ".len()..];
        let line = format!("\"GET {path} HTTP/1.1\" {status}{flag} ");
        let n = log
            .lines()
            .filter(|l| l.contains(&line) && (header.is_empty() || l.contains("127.0.0.9")))
            .count();
        assert_eq!(n, 5, "{what}: want 5 lines with {line:?}:\n{log}");
    }
}
