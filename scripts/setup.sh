#!/usr/bin/env bash
# Installs what lb needs to build and test, idempotently: apt packages, the pinned
# Rust toolchain (rust-toolchain.toml) and bpf-linker built against LLVM 22.
# Safe to run again: every step checks first.
set -euo pipefail

TOOLCHAIN=1.98.0
BPF_LINKER_VERSION=0.13.0
APT_PACKAGES=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev libxml2-dev bpftool
              iproute2 curl ca-certificates build-essential pkg-config util-linux
              wrk haproxy nginx-light iptables ethtool conntrack)

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # HAProxy and nginx are only benchmark peers: never let their packages start a
  # service (a policy-rc.d that says no, removed again if we added it).
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  if ! apt-cache policy llvm-22-dev 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $SUDO apt-get update -qq
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  }
  if [ -n "$added_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

if ! command -v rustup >/dev/null 2>&1; then
  log "rustup: installing"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
  log "rustup: installing toolchain $TOOLCHAIN"
  rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt
fi
have_comp() { rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q "^$1"; }
for c in rust-src clippy rustfmt; do
  have_comp "$c" || rustup component add --toolchain "$TOOLCHAIN" "$c"
done

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "bpf-linker $BPF_LINKER_VERSION: building against LLVM 22 (a few minutes, once)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo "+$TOOLCHAIN" install bpf-linker --version "$BPF_LINKER_VERSION" \
    --locked --no-default-features --features llvm-22,llvm-link-static
fi
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "cargo-fuzz $CARGO_FUZZ_VERSION: installing (the two-client fuzz target's smoke run)"
  cargo "+$TOOLCHAIN" install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# The deployment files are validated offline against Kubernetes' schemas (test.sh).
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "kubernetes-validate: installing (PyPI)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate
fi
if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl is missing: install it (with kustomize) to render deploy/ (test.sh checks the manifests)"
fi
log "ready: $(rustc "+$TOOLCHAIN" --version), $(bpf-linker --version), $(bpftool version | head -1)"
