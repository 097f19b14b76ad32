# Sourced by lb's scripts: installs what is missing (idempotent), then puts cargo on PATH.
set -euo pipefail
LB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$LB_ROOT"
if [ "$(id -u)" -ne 0 ]; then
  echo "lb needs root: it loads eBPF programs and attaches them to a cgroup (run with sudo)" >&2
  exit 1
fi
bash "$LB_ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
