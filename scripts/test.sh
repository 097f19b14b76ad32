#!/usr/bin/env bash
# The README's second command (and what CI runs): installs what is missing, builds once
# (release), then runs every test: pure, validation, smuggling and kernel tests (root,
# serial), a fuzz smoke run, the deployment manifests validated, the demo, and a smoke
# run of the benchmark harness (a second per row) so it cannot rot.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo fmt --all -- --check
cargo build --release
cargo clippy --release --all-targets -- -D warnings
# The eBPF crate, linted for its own target (RUSTC_BOOTSTRAP for -Z build-std, as
# build.rs builds it).
RUSTC_BOOTSTRAP=1 cargo clippy -p lb-ebpf --target bpfel-unknown-none -Z build-std=core \
  --release --target-dir target/ebpf-lint -- -D warnings
# Kernel tests share kernel state: --test-threads=1 (they also lock a mutex).
cargo test --release -- --test-threads=1
# Fuzz smoke runs, each from its checked-in seeds
# into a scratch corpus; a crash, a stack overflow or a run past the time or memory
# limit fails. RELIABILITY.md has the longer runs. Targets: two_clients (tests/smuggling's shape), config (loader, model,
# compiler), routes (matcher and rewriter), answer (the lean path's answer framing).
fuzz_corpus="$(mktemp -d)"
trap 'rm -rf "$fuzz_corpus" "$fuzz_corpus.log"' EXIT
fuzz_smoke() { # target seeds seconds max_len timeout
  rm -rf "${fuzz_corpus:?}"/*
  if ! cargo fuzz run --sanitizer none "$1" "$fuzz_corpus" "fuzz/$2" -- -max_total_time="$3" \
      -max_len="$4" -timeout="$5" -rss_limit_mb=2048 >"$fuzz_corpus.log" 2>&1; then
    cat "$fuzz_corpus.log"
    exit 1
  fi
  echo "fuzz smoke $1: $(grep -E '^Done [0-9]+ runs' "$fuzz_corpus.log")"
}
fuzz_smoke two_clients seeds 30 4096 20
fuzz_smoke config seeds-config 20 8192 10
fuzz_smoke routes seeds-routes 15 1024 10
fuzz_smoke answer seeds-answer 15 2048 10
# The deployment files and `lb crds` as the cluster would take them: rendered by
# kustomize, validated offline against Kubernetes' schemas (strict: no unknown field).
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed to render deploy/" >&2; exit 1; }
kubectl kustomize deploy/ > target/deploy.yaml
./target/release/lb crds > target/crds.yaml
kubernetes-validate --strict --quiet target/deploy.yaml target/crds.yaml tests/kubernetes/seed.yaml
echo "manifests: deploy/ ($(grep -c '^kind:' target/deploy.yaml) objects) and lb crds valid"
./target/release/lb demo --connections 500
cargo xtask bench --smoke --out target/bench-smoke/results.json
echo "bench smoke: $(grep -c '' target/bench-smoke/results.md) lines in target/bench-smoke/results.md"
# The north-south harness once each way (pods on the node, on another node), a
# second per row: its topologies, checks and cleanup.
mkdir -p target/bench-smoke
bench/north-south.sh --smoke --out target/bench-smoke/north-south.md
bench/north-south.sh --remote --smoke --out target/bench-smoke/north-south-remote.md
