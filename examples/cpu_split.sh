#!/usr/bin/env bash
# Where the CPU goes per `GET /v1/token/demo`: user and system time of the server (from
# /proc/PID/stat), oha's own time, and the server's context switches, for the bare hyper
# baseline and for tokenbroker, the same REQUESTS each, twice in turn. Unlike bench.sh it
# runs a fixed number of requests, so the per-request figures are comparable directly.
#
#   cargo install oha --locked    # once
#   examples/cpu_split.sh         # REQUESTS=400000 VIA=unix by default; VIA=tcp for TCP
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-400000}
VIA=${VIA:-unix}
command -v oha >/dev/null || { echo "oha is missing: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet --bin tokenbroker --example bare_hyper
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
bare_port=$(free_port)
RUST_LOG=info TOKENBROKER__SERVER__SOCKET="$work/tb.sock" TOKENBROKER__SERVER__HTTP="127.0.0.1:$broker_port" \
  target/release/tokenbroker serve --dev 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
target/release/examples/bare_hyper "$work/bare.sock" "127.0.0.1:$bare_port" 142 2>/dev/null &
bare_pid=$!
pids+=($bare_pid)
for _ in $(seq 100); do curl -sf --unix-socket "$work/tb.sock" http://localhost/healthz >/dev/null 2>&1 && [ -S "$work/bare.sock" ] && break; sleep 0.1; done

# user and system clock ticks, then voluntary and involuntary switches over all threads
sample() {
  awk '{print $14, $15}' "/proc/$1/stat"
  cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {v+=$2} /^nonvoluntary_ctxt_switches/ {n+=$2} END {print v, n}'
}

run() { # name pid then oha's target
  local name=$1 pid=$2
  shift 2
  oha --no-tui -n 50000 -c 64 "$@" >/dev/null
  local before after started ended
  before=$(sample "$pid" | tr '\n' ' ')
  started=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/oha.time" oha --no-tui -n "$REQUESTS" -c 64 "$@" >/dev/null
  ended=$(date +%s.%N)
  after=$(sample "$pid" | tr '\n' ' ')
  python3 - "$name" "$REQUESTS" "$started" "$ended" "$(getconf CLK_TCK)" "$before" "$after" "$(cat "$work/oha.time")" <<'PY'
import sys
name, n, started, ended, tck = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
b = [int(x) for x in sys.argv[6].split()]; a = [int(x) for x in sys.argv[7].split()]
oha = sum(float(x) for x in sys.argv[8].split())
us = lambda seconds: seconds / n * 1e6
user, system = (a[0] - b[0]) / tck, (a[1] - b[1]) / tck
print(f"{name:6} {n / (ended - started):8.0f} rps  server user {us(user):5.2f} system {us(system):5.2f}"
      f"  oha {us(oha):5.2f} us/request  switches voluntary {a[2] - b[2]} involuntary {a[3] - b[3]}")
PY
}

for _ in 1 2; do
  if [ "$VIA" = tcp ]; then
    run bare "$bare_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$bare_port/v1/token/demo"
    run broker "$broker_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$broker_port/v1/token/demo"
  else
    run bare "$bare_pid" --unix-socket "$work/bare.sock" http://localhost/v1/token/demo
    run broker "$broker_pid" --unix-socket "$work/tb.sock" http://localhost/v1/token/demo
  fi
done
