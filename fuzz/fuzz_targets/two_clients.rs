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
/// The inputs before this one: a failure can depend on what earlier ones left in the
/// rigs (a pooled upstream connection), so a crash report names them too.
static HISTORY: std::sync::Mutex<std::collections::VecDeque<Vec<u8>>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const HISTORY_LEN: usize = 16;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let (lean, hyper) = RIGS.get_or_init(|| {
        // libFuzzer's main does not ignore SIGPIPE as a Rust main does: a write to a
        // connection lb has closed would kill the run instead of failing the write.
        // SAFETY: setting a signal's disposition to ignore, before any thread writes.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        (rig::Rig::start(true), rig::Rig::start(false))
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut failures = Vec::new();
    let a = rig::run_case(lean, "lean", "input", bytes, n, &mut failures);
    let b = rig::run_case(hyper, "hyper", "input", bytes, n, &mut failures);
    if a != b {
        failures.push(format!("the engines differ:\n  lean  {a:?}\n  hyper {b:?}"));
    }
    let mut history = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() {
        let earlier: Vec<String> = history
            .iter()
            .map(|b| format!("{:?}", String::from_utf8_lossy(b)))
            .collect();
        panic!(
            "{}\nthe {} inputs before it, oldest first:\n{}",
            failures.join("\n"),
            earlier.len(),
            earlier.join("\n")
        );
    }
    if history.len() == HISTORY_LEN {
        history.pop_front();
    }
    history.push_back(bytes.to_vec());
});
