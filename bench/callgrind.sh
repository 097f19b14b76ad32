#!/usr/bin/env bash
# User-space instructions per request of the proxy, for two Hosts of the benchmark
# configuration (default: the plain split and the split with a timeout, retries and
# LEAST_REQUEST): each is served by a daemon under valgrind's callgrind, once for N and
# once for 3N keep-alive requests sent straight to the proxy listener; the difference
# over 2N is what one request costs, startup excluded. Exact where wall-clock CPU per
# request moves ±10-15 % between rounds on this machine (shared/PERF-NOTES.md).
#
#   sudo bench/callgrind.sh [HOST_A HOST_B [N]]
#
# Loopback only; its own cgroup, bpffs folder and ports; cleans up on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
a=${1:-split-svc} b=${2:-policy-svc} n=${3:-1000}
lb=$PWD/target/release/lb
[ -x "$lb" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
work=$(mktemp -d /tmp/lb-callgrind.XXXXXX)
cg=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/lb-callgrind-$$
bpffs=/sys/fs/bpf/lb-callgrind-$$
backend=
cleanup() {
  [ -n "$backend" ] && kill "$backend" 2>/dev/null || true
  "$lb" down --bpffs "$bpffs" --cgroup "$cg" >/dev/null 2>&1 || true
  rmdir "$cg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/cfg" "$cg"
sed -e 's/{{PORT}}/20480/g; s/{{PORT2}}/20490/g; s/{{LOCAL_V0}}/127.0.0.4/g; s/{{LOCAL_V1}}/127.0.0.5/g' \
  bench/lb/config.yaml >"$work/cfg/config.yaml"
"$lb" backend --listen v0=127.0.0.4:20480 --listen v1=127.0.0.5:20480 \
  --listen v0=127.0.0.4:20490 >"$work/backend.log" 2>&1 &
backend=$!

# Instructions of one daemon's life serving $2 requests for Host $1.
run() {
  local log=$work/daemon-$1-$2.log out=$work/out-$1-$2
  valgrind --tool=callgrind --callgrind-out-file="$out" "$lb" run --no-keeper \
    --config "$work/cfg" --cgroup "$cg" --bpffs "$bpffs" --proxy-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --access-log off >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do grep -q "configuration applied" "$log" && break; sleep 0.5; done
  local port
  port=$(grep -o "proxy=127.0.0.1:[0-9]*" "$log" | head -1 | cut -d: -f2)
  "$lb" probe --to "127.0.0.1:$port" --host "$1" --keep-alive --count "$2" --json \
    | grep -q '"failures":0' || { echo "$1: requests failed" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^totals:/ {print $2}' "$out"
}

per_request() {
  local small big
  small=$(run "$1" "$n")
  big=$(run "$1" $((3 * n)))
  echo $(((big - small) / (2 * n)))
}
ia=$(per_request "$a")
ib=$(per_request "$b")
echo "$a: $ia instructions/request; $b: $ib ($(awk -v a="$ia" -v b="$ib" 'BEGIN {printf "%.3f", b / a}') x)"
