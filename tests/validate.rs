//! `lb validate` on malformed configurations: each folder of tests/validate holds a
//! `config.yaml` and `expected.txt` (the exact output and exit code). Runs without
//! privileges. `UPDATE_EXPECTED=1` rewrites the expectations (review the diff).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn malformed_configs_get_one_line_errors() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/validate");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/validate")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 15,
        "at least 15 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["validate", "."])
            .current_dir(case)
            .env("LB_LOG", "off")
            .output()
            .expect("run lb validate");
        let got = format!(
            "{}{}exit: {}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code().unwrap_or(-1)
        );
        let expected_path = case.join("expected.txt");
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            std::fs::write(&expected_path, &got).expect("write expected");
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_bundled_example_is_valid() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("validate")
        .arg(&config)
        .output()
        .expect("run lb validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "no warnings expected: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `lb explain --json` prints the documented object for one request (no privileges).
#[test]
fn explain_prints_the_documented_json() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/routing");
    let run = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_lb"))
            .arg("explain")
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg("--json")
            .env("LB_LOG", "off")
            .output()
            .expect("run lb explain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let e = run(&["--host", "api.wilsontest.com", "--path", "/test/v2/x?q=1"]);
    assert_eq!(
        e,
        serde_json::json!({
            "virtual_service": "default/backend-vs", "rule": 2, "route_name": "v2-rewrite", "datapath": "proxy", "action": "route",
            "destinations": [{"host": "backend-service.default.svc.cluster.local", "subset": "v0", "port": 10500, "weight": 1, "endpoints": 1}],
            "request": {"method": "GET", "path": "/test/x?q=1", "host": "api.wilsontest.com"},
            "response": null,
            "policy": {"timeout_ms": null, "retries": 2, "per_try_timeout_ms": null,
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503",
                "delay_ms": null, "delay_percent": null, "abort_status": null, "abort_percent": null,
                "mirrors": []}
        })
    );
    let e = run(&["--host", "backend-service", "--path", "/old?q=1"]);
    assert_eq!(
        (
            e["action"].as_str(),
            e["response"]["status"].as_u64(),
            e["response"]["headers"]["location"].as_str()
        ),
        (
            Some("redirect"),
            Some(301),
            Some("http://backend-service/new?q=1")
        )
    );
    // Without --to, an unknown Host is no_route; with --to the dialled service applies.
    let e = run(&["--host", "legacy.internal", "--path", "/test"]);
    assert_eq!(
        (e["action"].as_str(), e["response"]["status"].as_u64()),
        (Some("no_route"), Some(404))
    );
    let e = run(&[
        "--host",
        "legacy.internal",
        "--path",
        "/test",
        "--to",
        "127.10.5.1:10500",
        "--header",
        "hellotest: true",
    ]);
    assert_eq!(
        (e["rule"].as_u64(), e["destinations"][0]["subset"].as_str()),
        (Some(0), Some("v1"))
    );
}
