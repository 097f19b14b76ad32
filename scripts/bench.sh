#!/usr/bin/env bash
# Side-by-side benchmarks: installs what is missing (incl. wrk, HAProxy, nginx), builds
# once (release), runs `cargo xtask bench` (5 interleaved rounds of 5 s per row and
# mode by default; pass --smoke for a few seconds per row, --access-log to log in lb)
# and writes bench/results.json and BENCHMARKS.md. Loopback only, bounded, cleans up.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo build --release
exec cargo xtask bench "$@"
