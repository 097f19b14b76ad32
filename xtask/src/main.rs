//! Developer tasks: `cargo xtask bench` runs the side-by-side benchmarks (bench/);
//! `cargo xtask rebuild DIR [N]` times the daemon's per-change work (model + compile
//! of an already parsed configuration) N times, for profiling reloads;
//! `cargo xtask change-latency [SERVICES] [CHANGES]` runs the benchmark's
//! config-change row alone; `cargo xtask kube-latency [SERVICES] [CHANGES] [BURST]`
//! the same through the Kubernetes source; `cargo xtask bench-render` writes BENCHMARKS.md again
//! from bench/results.json (after editing bench/ANALYSIS.md); `cargo xtask syn-flood
//! ADDR:PORT SECONDS` sends SYNs from spoofed sources (bench/north-south.sh --remote).
mod bench;
mod synflood;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::main(&args[1..]),
        Some("bench-render") => bench::render_main(&args[1..]),
        // Internal: the paced client, re-executed inside a cgroup by the harness.
        Some("paced") => bench::paced::main(&args[1..]),
        Some("rebuild") => bench::control::rebuild_main(&args[1..]),
        Some("change-latency") => bench::control::change_main(&args[1..]),
        Some("kube-latency") => bench::kube::main(&args[1..]),
        // For bench/north-south.sh's packet-rate row.
        Some("syn-flood") => synflood::main(&args[1..]),
        other => anyhow::bail!(
            "unknown task {other:?}: try `cargo xtask bench [--smoke] [--rounds N] [--seconds S] [--access-log]`"
        ),
    }
}
