#!/usr/bin/env bash
# The README's second command (and what CI runs): installs what is missing, builds once
# (release), then runs every test: pure, validation and kernel tests (root, serial),
# the demo, and a smoke run of the benchmark harness (a second per row) so it cannot rot.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo fmt --all -- --check
cargo build --release
cargo clippy --release --all-targets -- -D warnings
# Kernel tests share kernel state: --test-threads=1 (they also lock a mutex).
cargo test --release -- --test-threads=1
./target/release/lb demo --connections 500
cargo xtask bench --smoke --out target/bench-smoke/results.json
echo "bench smoke: $(grep -c '' target/bench-smoke/results.md) lines in target/bench-smoke/results.md"
