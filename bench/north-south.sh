#!/usr/bin/env bash
# North-south benchmark: a client outside the node dials NodeIP:30785 and the node
# splits the connections 90/10 to two pods — lb's XDP path against kube-proxy's
# iptables DNAT rules (nf_tables backend, the rules kube-proxy writes for a NodePort
# with externalTrafficPolicy: Local, so neither side masquerades) and the pods dialled
# directly (routed by the node, no balancer). IPVS runs where the kernel has it
# (CONFIG_IP_VS); on a kernel without it the row says so.
#
# Topology: network namespaces this script creates (outside client — node — pods v0,
# v1 on the node's bridge), nothing routed off the machine (no namespace has a route
# out; the ClusterIP range is blackholed). wrk in the client's namespace on CPU 1, the
# pods' backends (`lb backend`) on CPU 0; the packets' softirq work runs on the CPU
# that sends them. Interleaved rounds (each row once per round), medians over rounds.
# Each row is checked before it is timed: 500 new connections through it, no failure,
# and the 90/10 split for the balancers. Everything started is stopped, everything
# created removed, also on failure.
#
# --remote: the pods run on another node, behind a second link of the node's: the
# node forwards every packet both ways — lb's XDP with SNAT (on both links), against
# kube-proxy's rules for externalTrafficPolicy: Cluster (DNAT and MASQUERADE, with
# conntrack). The veths are made NIC-like for every row (GRO on to receive native XDP
# redirects, transmit checksums in software as off a wire: tests/kernel/node.rs). A
# third measurement per row: the node's packet rate for new flows — SYNs from spoofed
# sources (`xtask syn-flood`, one CPU, the node's softirq work on the same CPU), each a
# new flow, counted as they reach the other node (where they are blackholed).
#
# Usage: sudo bench/north-south.sh [--remote] [--rounds N] [--seconds S] [--smoke] [--out FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=5
SECS=5
OUT=""
REMOTE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --remote) REMOTE=1; shift ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --smoke) ROUNDS=1; SECS=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

if [ -z "$OUT" ]; then
  if [ $REMOTE = 1 ]; then OUT=bench/north-south-remote.md; else OUT=bench/north-south.md; fi
fi
LB=${LB_BIN:-$PWD/target/release/lb}
XTASK=$PWD/target/release/xtask
[ -x "$LB" ] && [ -x "$XTASK" ] || { echo "build first: cargo build --release && cargo build --release -p xtask" >&2; exit 1; }
for tool in wrk iptables conntrack ip nsenter taskset python3 ethtool; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

ID=$$
OUTSIDE=lbb$ID-out NODE=lbb$ID-node OTHER=lbb$ID-other
PODS=(v0 v1)
CGROUP=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)/lb-bench-ns-$ID
PINS=/sys/fs/bpf/lb-bench-ns-$ID
WORK=$(mktemp -d /tmp/lb-bench-ns-XXXXXX)
NODE_IP=10.250.0.1 PORT=30785
# Where the pods are: on the node's bridge, or on the other node's.
POD_NET=10.244.$REMOTE POD_NODE=$([ $REMOTE = 1 ] && echo "$OTHER" || echo "$NODE")
PIDS=()
LB_PID=""

in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" -- "$@"; }

cleanup() {
  set +e
  stop_lb
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for ns in "$OUTSIDE" "$NODE" "$OTHER" "${PODS[@]/#/lbb$ID-}"; do ip netns del "$ns" 2>/dev/null; done
  rmdir "$CGROUP" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

stop_lb() {
  if [ -n "$LB_PID" ]; then
    kill "$LB_PID" 2>/dev/null; wait "$LB_PID" 2>/dev/null || true
    LB_PID=""
  fi
  "$LB" down --bpffs "$PINS" --cgroup "$CGROUP" >/dev/null 2>&1 || true
}

# --- topology ---
node_ns() {
  ip netns add "$1"
  in_ns "$1" ip link set lo up
  in_ns "$1" ip route add blackhole 10.96.0.0/16
  in_ns "$1" sysctl -qw net.ipv4.ip_forward=1
}
node_ns "$NODE"
if [ $REMOTE = 1 ]; then node_ns "$OTHER"; fi
in_ns "$POD_NODE" ip link add br0 type bridge
in_ns "$POD_NODE" ip addr add $POD_NET.1/24 dev br0
in_ns "$POD_NODE" ip link set br0 up
nic_like() { in_ns "$1" ethtool -K "$2" gro on tx off >/dev/null; }
if [ $REMOTE = 1 ]; then
  # The node's second link, to the other node (its pods' subnet behind it).
  ip link add lbr$ID type veth peer name lbs$ID
  ip link set lbr$ID netns "$NODE"
  ip link set lbs$ID netns "$OTHER"
  in_ns "$NODE" ip link set lbr$ID name peer0
  in_ns "$NODE" ip addr add 10.251.0.1/24 dev peer0
  in_ns "$NODE" ip link set peer0 up
  in_ns "$OTHER" ip link set lbs$ID name eth0
  in_ns "$OTHER" ip addr add 10.251.0.2/24 dev eth0
  in_ns "$OTHER" ip link set eth0 up
  in_ns "$NODE" ip route add $POD_NET.0/24 via 10.251.0.2
  # Only for the direct row: the clients' subnet through the node.
  in_ns "$OTHER" ip route add 10.250.0.0/24 via 10.251.0.1
  nic_like "$OTHER" eth0
fi
# Connection tracking on in the node for every row, as on a node whose kube-proxy or
# CNI has NAT rules (a nat table registers it; the iptables row adds its rules to it).
nat_base() { in_ns "$NODE" iptables -t nat -N LB-BENCH; in_ns "$NODE" iptables -t nat -A PREROUTING -j LB-BENCH; }
nat_base
ip netns add "$OUTSIDE"
ip link add lbx$ID type veth peer name lby$ID
ip link set lbx$ID netns "$NODE"
ip link set lby$ID netns "$OUTSIDE"
in_ns "$NODE" ip link set lbx$ID name ext0
in_ns "$NODE" ip addr add $NODE_IP/24 dev ext0
in_ns "$NODE" ip link set ext0 up
in_ns "$OUTSIDE" ip link set lby$ID name eth0
in_ns "$OUTSIDE" ip addr add 10.250.0.2/24 dev eth0
in_ns "$OUTSIDE" ip link set eth0 up
in_ns "$OUTSIDE" ip link set lo up
in_ns "$OUTSIDE" ip route add blackhole 10.96.0.0/16
# Only for the direct row: the pods' subnet through the node.
in_ns "$OUTSIDE" ip route add $POD_NET.0/24 via $NODE_IP
if [ $REMOTE = 1 ]; then nic_like "$OUTSIDE" eth0; fi
octet=3
for pod in "${PODS[@]}"; do
  ns=lbb$ID-$pod
  ip netns add "$ns"
  ip link add lbn$ID$octet type veth peer name lbp$ID$octet
  ip link set lbn$ID$octet netns "$POD_NODE"
  ip link set lbp$ID$octet netns "$ns"
  in_ns "$POD_NODE" ip link set lbn$ID$octet master br0 up
  in_ns "$ns" ip link set lbp$ID$octet name eth0
  in_ns "$ns" ip addr add $POD_NET.$octet/24 dev eth0
  in_ns "$ns" ip link set eth0 up
  in_ns "$ns" ip link set lo up
  # The clients' subnet (and the node's second link: its SNAT source) through
  # the pod's node; nothing else.
  in_ns "$ns" ip route add 10.250.0.0/15 via $POD_NET.1
  if [ $REMOTE = 1 ]; then nic_like "$ns" eth0; fi
  in_ns "$ns" ip route add blackhole 10.96.0.0/16
  # nsenter itself in the background (not the in_ns function's subshell): its pid is
  # the backend's (nsenter and taskset exec), so cleanup stops the backend.
  nsenter --net=/var/run/netns/"$ns" -- taskset -c 0 "$LB" backend --name "$pod" \
    --listen $POD_NET.$octet:11400 >/dev/null 2>&1 &
  PIDS+=($!)
  octet=$((octet + 1))
done
mkdir -p "$CGROUP" "$WORK/config"
cat >"$WORK/config/backend.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend-service, namespace: default}
spec:
  hosts: [backend-service]
  addresses: [$NODE_IP]
  ports: [{number: $PORT, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: $POD_NET.3, ports: {http: 11400}, labels: {version: v0}}
  - {address: $POD_NET.4, ports: {http: 11400}, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-dr, namespace: default}
spec:
  host: backend-service
  subsets: [{name: v0, labels: {version: v0}}, {name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-vs, namespace: default}
spec:
  hosts: [backend-service]
  http:
  - route:
    - {destination: {host: backend-service, subset: v0}, weight: 90}
    - {destination: {host: backend-service, subset: v1}, weight: 10}
EOF

IPVS=no
if [ -d /proc/sys/net/ipv4/vs ] || modprobe -q ip_vs 2>/dev/null; then IPVS=yes; fi

# --- rows: set up, target, tear down ---
setup() {
  case "$1" in
    lb-xdp-*)
      : >"$WORK/lb.log"
      nsenter --net=/var/run/netns/"$NODE" -- "$LB" run --no-keeper --config "$WORK/config" \
        --cgroup "$CGROUP" --bpffs "$PINS" --proxy-listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --access-log off --xdp-iface ext0 \
        $([ $REMOTE = 1 ] && echo --xdp-iface peer0) \
        --xdp-mode "${1#lb-xdp-}" 2>"$WORK/lb.log" &
      LB_PID=$!
      for _ in $(seq 200); do
        grep -q "configuration applied" "$WORK/lb.log" && break
        sleep 0.05
      done
      grep -q "configuration applied" "$WORK/lb.log" || { cat "$WORK/lb.log" >&2; exit 1; }
      ;;
    iptables)
      # kube-proxy's NodePort chains for a two-endpoint service, 90/10 by the
      # statistic match (its rules for weights it does not have: the ratio of a
      # Deployment's replicas).
      in_ns "$NODE" iptables-restore <<EOF
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-BENCH - [0:0]
:KUBE-SEP-V0 - [0:0]
:KUBE-SEP-V1 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m tcp --dport $PORT -j KUBE-SVC-BENCH
-A KUBE-SVC-BENCH -m statistic --mode random --probability 0.9 -j KUBE-SEP-V0
-A KUBE-SVC-BENCH -j KUBE-SEP-V1
-A KUBE-SEP-V0 -p tcp -m tcp -j DNAT --to-destination $POD_NET.3:11400
-A KUBE-SEP-V1 -p tcp -m tcp -j DNAT --to-destination $POD_NET.4:11400
COMMIT
EOF
      if [ $REMOTE = 1 ]; then
        # externalTrafficPolicy: Cluster: kube-proxy marks NodePort traffic and
        # masquerades it on the way out, so the other node's replies come back.
        in_ns "$NODE" iptables-restore --noflush <<EOF
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-I KUBE-NODEPORTS 1 -p tcp -m tcp --dport $PORT -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
EOF
      fi
      ;;
  esac
}
teardown() {
  case "$1" in
    lb-xdp-*)
      # What XDP dropped over the row's runs (a dropped SYN costs its client a
      # second): summed into the table's note.
      "$LB" status --json --bpffs "$PINS" --admin 127.0.0.1:9 | python3 -c '
import json, sys
c = json.load(sys.stdin)["counters"]
print(c["xdp_snat_exhausted"], c["xdp_no_neigh"])' >>"$WORK/drops"
      stop_lb
      ;;
    iptables)
      in_ns "$NODE" iptables -t nat -F
      in_ns "$NODE" iptables -t nat -X
      nat_base
      ;;
  esac
}
target() {
  case "$1" in
    direct) echo "$POD_NET.3:11400" ;;
    *) echo "$NODE_IP:$PORT" ;;
  esac
}
label() {
  case "$1" in
    direct) echo "direct to a pod (routed by the node, no balancer)" ;;
    lb-xdp-*) echo "lb XDP, ${1#lb-xdp-}" ;;
    iptables) echo "iptables DNAT$([ $REMOTE = 1 ] && echo " + MASQUERADE") (kube-proxy's NodePort rules, nf_tables)" ;;
  esac
}

# 500 new connections from outside: no failure, and the split for the balancers. From
# an address of the client's own for each check: a hash pick is a function of the
# client's port, and a client address with thousands of TIME_WAITs from the rows
# before gets ports from the kernel that are no fair sample of it (bench/ANALYSIS.md,
# session 16).
CHECKS=0
check() {
  local row=$1
  local json from=10.250.0.$((100 + CHECKS))
  CHECKS=$((CHECKS + 1))
  in_ns "$OUTSIDE" ip addr add $from/24 dev eth0
  json=$(in_ns "$OUTSIDE" "$LB" probe --to "$(target "$row")" --count 500 --from $from --json)
  ROW=$row python3 -c '
import json, os, sys
s = json.loads(sys.stdin.read())
row = os.environ["ROW"]
assert s["failures"] == 0, f"{row}: {s}"
if row != "direct":
    v1 = s["by_backend"].get("v1", 0) / 5
    assert abs(v1 - 10) <= 5, f"{row}: v1 got {v1} %: {s}"
' <<<"$json" || {
    # What lb held when its split was off (one run was, unexplained:
    # bench/ANALYSIS.md, session 16).
    if [ "${row#lb-xdp-}" != "$row" ]; then
      "$LB" status --bpffs "$PINS" --admin 127.0.0.1:9 >&2 || true
      for m in "$PINS"/*/LB_SERVICES "$PINS"/*/LB_SLOTS; do bpftool map dump pinned "$m" >&2 || true; done
    fi
    exit 1
  }
  if [ "${row#lb-xdp-}" != "$row" ]; then
    # The mode asked for is the mode that ran, and XDP carried the connections
    # (handshake, request, close: 4 packets each at least).
    "$LB" status --json --bpffs "$PINS" --admin 127.0.0.1:9 | ROW=$row REMOTE=$REMOTE python3 -c '
import json, os, sys
s = json.load(sys.stdin)
assert s["xdp"][0]["mode"] == os.environ["ROW"].removeprefix("lb-xdp-"), s["xdp"]
# Packets, not new flows: a client port reused with the same pick is no new flow.
packets = sum(x["xdp_packets_total"] for x in s["services"][0]["subsets"])
assert packets >= 4 * 500, s
# On another node, XDP forwarded the flows itself (a few fewer new flows than
# connections: the client reuses a port now and then, which with the same pick is
# the same flow).
if os.environ["REMOTE"] == "1":
    assert s["counters"]["xdp_remote_flows"] >= 450, s["counters"]
'
  fi
}

busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# One timed run: "req/s p99_us machine_cpu_us_per_req" (a non-2xx answer fails it).
run() {
  local row=$1 mode=$2
  local hdr=()
  [ "$mode" = close ] && hdr=(-H "Connection: close")
  local b0 b1 out
  b0=$(busy)
  out=$(in_ns "$OUTSIDE" taskset -c 1 wrk -t1 -c50 -d"${SECS}s" --latency "${hdr[@]}" \
    "http://$(target "$row")/")
  b1=$(busy)
  HZ=$(getconf CLK_TCK) B=$((b1 - b0)) python3 -c '
import os, re, sys
out = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
p99 = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
assert not non2xx, out
cpu = int(os.environ["B"]) / int(os.environ["HZ"]) * 1e6 / max(n, 1)
print(f"{rps:.0f} {p99:.0f} {cpu:.1f}")
' <<<"$out"
}

# The node's rate for new flows (--remote): SYNs from spoofed sources for one
# second, counted as they arrive at the other node (blackholed there, so no pod
# answers): "forwarded/s sent/s". One second, and the node's connection tracking
# table emptied before and after: a flood fills it (262,144 entries here; iptables'
# row forwards ~70,000 a second), a full table slows and drops new flows (the rate
# measured is then the table's, not the rules'), and it drops new connections of
# whatever runs next.
rx_packets() { in_ns "$OTHER" awk '$1 == "eth0:" { print $3 }' /proc/net/dev; }
syn_run() {
  local row=$1 r0 r1 out ip
  for ip in $POD_NET.3 $POD_NET.4; do in_ns "$OTHER" ip route add blackhole $ip/32; done
  in_ns "$NODE" conntrack -F 2>/dev/null
  r0=$(rx_packets)
  out=$(in_ns "$OUTSIDE" taskset -c 1 "$XTASK" syn-flood "$(target "$row")" 1)
  sleep 0.2
  r1=$(rx_packets)
  in_ns "$NODE" conntrack -F 2>/dev/null
  for ip in $POD_NET.3 $POD_NET.4; do in_ns "$OTHER" ip route del blackhole $ip/32; done
  R=$((r1 - r0)) python3 -c '
import json, os, sys
s = json.load(sys.stdin)
secs, received, sent = s["seconds"], int(os.environ["R"]), s["sent"]
print(f"{received / secs:.0f} {sent / secs:.0f}")
' <<<"$out"
}

ROWS=(direct lb-xdp-native lb-xdp-generic iptables)
MODES=(close keepalive)
[ $REMOTE = 1 ] && MODES+=(syn)
declare -A RESULTS
for ((r = 1; r <= ROUNDS; r++)); do
  for row in "${ROWS[@]}"; do
    setup "$row"
    if [ "$r" = 1 ]; then check "$row"; fi
    for mode in "${MODES[@]}"; do
      if [ "$mode" = syn ]; then
        RESULTS[$row.syn]+="$(syn_run "$row");"
      else
        RESULTS[$row.$mode]+="$(run "$row" "$mode");"
      fi
    done
    teardown "$row"
  done
  echo "round $r of $ROUNDS done" >&2
done

{
  if [ $REMOTE = 1 ]; then
    echo "## North-south to another node's pods: NodePort from outside, pods behind the node's second link (bench/north-south.sh --remote)"
  else
    echo "## North-south: NodePort from outside the node (bench/north-south.sh)"
  fi
  echo
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores, kernel $(uname -r)), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $ROUNDS interleaved round(s) of $SECS s per row and mode, medians; × iptables: the median of per-round ratios (their range); \`wrk -t1 -c50\` in the client's namespace on CPU 1, the pods' backends on CPU 0; machine CPU = both CPUs' busy time (/proc/stat) per request. IPVS: $( [ "$IPVS" = yes ] && echo "available but not measured yet" || echo "not in this kernel (CONFIG_IP_VS unset), no row")."
  echo
  echo "| row | new connections/s (close) | × iptables | p99 µs | machine CPU µs/conn | keep-alive req/s | × iptables | p99 µs | machine CPU µs/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  # One table row: a row's label, then for each of its runs (environment names
  # after the label) the median of each field, the per-round ratio to iptables' after
  # the first.
  table_row() {
    LABEL="$(label "$1")" python3 -c '
import os, statistics as st, sys
def rows(v): return [list(map(float, x.split())) for x in v.split(";") if x]
def med(v, i): return st.median(r[i] for r in rows(v))
def ratio(v, base):
    # Per round: the two rows of a round ran seconds apart, free of the drift
    # between rounds. The median, and the range over the rounds.
    r = [a[0] / b[0] for a, b in zip(rows(v), rows(base))]
    return f"{st.median(r):.2f} ({min(r):.2f}–{max(r):.2f})" if len(r) > 1 else f"{r[0]:.2f}"
e = os.environ
cells = [e["LABEL"]]
for k in sys.argv[1:]:
    fields = len(rows(e[k])[0])
    cells += [f"{med(e[k], 0):.0f}", ratio(e[k], e["BASE_" + k])]
    cells += [f"{med(e[k], i):.{0 if i == 1 or fields == 2 else 1}f}" for i in range(1, fields)]
print("| " + " | ".join(cells) + " |")
' "${@:2}"
  }
  for row in "${ROWS[@]}"; do
    CLOSE=${RESULTS[$row.close]} KEEP=${RESULTS[$row.keepalive]} \
      BASE_CLOSE=${RESULTS[iptables.close]} BASE_KEEP=${RESULTS[iptables.keepalive]} \
      table_row "$row" CLOSE KEEP
  done
  if [ $REMOTE = 1 ]; then
    echo
    echo "The node's rate for new flows: SYNs from spoofed sources for 1 s per round (each a new flow; \`xtask syn-flood\` on CPU 1, the node's work on the same CPU; the node's connection tracking table emptied before each), counted where they reach the other node."
    echo
    echo "| row | SYNs forwarded/s | × iptables | sent/s |"
    echo "|---|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
      SYN=${RESULTS[$row.syn]} BASE_SYN=${RESULTS[iptables.syn]} table_row "$row" SYN
    done
  fi
  echo
  read -r exhausted unresolved < <(awk '{ a += $1; b += $2 } END { print a + 0, b + 0 }' "$WORK/drops")
  echo "lb XDP's drops over all its runs: new flows with no SNAT port free $exhausted, packets whose next hop was not resolved yet $unresolved."
} >"$OUT"
cat "$OUT"
