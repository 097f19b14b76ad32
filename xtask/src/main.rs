//! Developer tasks. `cargo xtask` is reserved for the benchmark harness (see the
//! benchmarks issue); today it only prints where things are.
fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    anyhow::bail!(
        "unknown task {task:?}: the benchmark harness is not built yet; use scripts/demo.sh and scripts/test.sh"
    )
}
