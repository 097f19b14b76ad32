#!/usr/bin/env bash
# The README's first command: installs what is missing, builds lb once (release) and
# runs `lb demo` — the seed's 90/10 split in the kernel, in its own cgroup, on loopback.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo build --release
exec ./target/release/lb demo "$@"
