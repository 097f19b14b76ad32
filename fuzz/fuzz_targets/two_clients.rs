//! The differential test's shape, fuzzed: any bytes as the attacker's connection to
//! both engines, each followed by an innocent request on another connection. A crash
//! is an innocent request that arrived changed, a request the backend parsed that lb
//! did not relay, bytes the backend could not parse, a path around the `/admin` rule,
//! or the two engines disagreeing (tests/smuggling/rig.rs says how each is seen).
#![no_main]

#[path = "../../tests/smuggling/rig.rs"]
#[expect(
    dead_code,
    reason = "the fuzz target does not read every field the tests do"
)]
mod rig;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static RIGS: OnceLock<(rig::Rig, rig::Rig)> = OnceLock::new();
static N: AtomicU64 = AtomicU64::new(0);

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let (lean, hyper) = RIGS.get_or_init(|| (rig::Rig::start(true), rig::Rig::start(false)));
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut failures = Vec::new();
    let a = rig::run_case(lean, "lean", "input", bytes, n, &mut failures);
    let b = rig::run_case(hyper, "hyper", "input", bytes, n, &mut failures);
    if a != b {
        failures.push(format!("the engines differ:\n  lean  {a:?}\n  hyper {b:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});
