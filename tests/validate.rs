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
