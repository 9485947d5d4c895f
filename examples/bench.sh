#!/usr/bin/env bash
# Benchmark: GET /v1/token/{account} on tokenbroker against a bare hyper server that returns a
# fixed body of the same size, both measured in the same run, over the Unix socket and over
# loopback TCP, with oha at 64 connections. Prints throughput and p99 for each, and the ratios.
#
#   cargo install oha --locked       # once, ~4 min
#   examples/bench.sh                # DURATION=10s CONNECTIONS=64 ROUNDS=3 by default
#   BROKER_LOG=warn examples/bench.sh   # the broker without its per-token info log line
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
command -v oha >/dev/null || { echo "oha is missing: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet --bin tokenbroker --example bare_hyper
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
bare_port=$(free_port)

# The broker as shipped: dev mode (an account `demo` with a token), default info logging
# (every token served is logged, as in production), written to a file. BROKER_LOG sets
# another level, to measure what that log line costs.
RUST_LOG=${BROKER_LOG:-info} TOKENBROKER__SERVER__SOCKET="$work/tb.sock" TOKENBROKER__SERVER__HTTP="127.0.0.1:$broker_port" \
  target/release/tokenbroker serve --dev 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
for _ in $(seq 100); do [ -S "$work/tb.sock" ] && curl -sf --unix-socket "$work/tb.sock" http://localhost/healthz >/dev/null && break; sleep 0.1; done
size=$(curl -sf --unix-socket "$work/tb.sock" http://localhost/v1/token/demo | wc -c)

target/release/examples/bare_hyper "$work/bare.sock" "127.0.0.1:$bare_port" "$size" 2>/dev/null &
bare_pid=$!
pids+=($bare_pid)
for _ in $(seq 100); do [ -S "$work/bare.sock" ] && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks

measure() { # name, server pid, then oha arguments; prints "rps p99_ms cpu_us_per_request"
  local name=$1 pid=$2; shift 2
  local before after
  before=$(cpu_ticks "$pid")
  oha --no-tui --output-format json -z "$DURATION" -c "$CONNECTIONS" "$@" > "$work/$name.json"
  after=$(cpu_ticks "$pid")
  python3 - "$work/$name.json" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
assert set(codes) == {"200"}, f"non-200 answers: {codes}"
requests = sum(codes.values())
cpu_us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / requests
print(f'{r["summary"]["requestsPerSec"]:.0f} {r["latencyPercentiles"]["p99"] * 1000:.3f} {cpu_us:.2f}')
PY
}

# Warm both up (allocator arenas, page cache for the broker's log file, socket buffers) so
# that the first round measures the same thing as the others.
for url in "--unix-socket $work/bare.sock http://localhost/v1/token/demo" "--unix-socket $work/tb.sock http://localhost/v1/token/demo"; do
  # shellcheck disable=SC2086 # the arguments are meant to split
  oha --no-tui -z 2s -c "$CONNECTIONS" $url >/dev/null
done

echo "body ${size} bytes, ${CONNECTIONS} connections, ${DURATION} per run, ${ROUNDS} rounds, broker log level ${BROKER_LOG:-info}"
printf '%-6s %-5s %10s %10s %9s %9s %9s %9s %7s %7s %7s %11s\n' round via bare_rps broker_rps bare_p99 brok_p99 bare_cpu brok_cpu rps_x p99_x cpu_x healthz_rps
measure_bare() { # round via
  if [ "$2" = unix ]; then
    measure "bare-$2-$1" "$bare_pid" --unix-socket "$work/bare.sock" http://localhost/v1/token/demo
  else
    # The same request as the broker's, API key included: both parse the same bytes.
    measure "bare-$2-$1" "$bare_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$bare_port/v1/token/demo"
  fi
}

measure_broker() { # round via
  if [ "$2" = unix ]; then
    measure "broker-$2-$1" "$broker_pid" --unix-socket "$work/tb.sock" http://localhost/v1/token/demo
  else
    measure "broker-$2-$1" "$broker_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$broker_port/v1/token/demo"
  fi
}

for round in $(seq "$ROUNDS"); do
  for via in unix tcp; do
    # Odd rounds measure the bare server first, even rounds the broker, so that a machine
    # getting busier or quieter during a round favours neither.
    if [ $((round % 2)) = 1 ]; then
      bare=$(measure_bare "$round" "$via")
      broker=$(measure_broker "$round" "$via")
    else
      broker=$(measure_broker "$round" "$via")
      bare=$(measure_bare "$round" "$via")
    fi
    if [ "$via" = unix ]; then
      healthz=$(measure "healthz-$via-$round" "$broker_pid" --unix-socket "$work/tb.sock" http://localhost/healthz)
    else
      healthz=$(measure "healthz-$via-$round" "$broker_pid" "http://127.0.0.1:$broker_port/healthz")
    fi
    read -r bare_rps bare_p99 bare_cpu <<<"$bare"
    read -r broker_rps broker_p99 broker_cpu <<<"$broker"
    read -r healthz_rps _ _ <<<"$healthz"
    python3 -c "print('%-6s %-5s %10s %10s %9s %9s %9s %9s %7.2f %7.2f %7.2f %11s' % ('$round', '$via', $bare_rps, $broker_rps, $bare_p99, $broker_p99, $bare_cpu, $broker_cpu, $broker_rps / $bare_rps, $broker_p99 / $bare_p99, $bare_cpu / $broker_cpu, $healthz_rps))"
    echo "$via $bare_rps $broker_rps $bare_cpu $broker_cpu" >>"$work/ratios"
  done
done
python3 - "$work/ratios" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for via in ("unix", "tcp"):
    ratios = sorted(float(b) / float(a) for v, a, b, _, _ in rows if v == via)
    cpu = sorted(float(a) / float(b) for v, _, _, a, b in rows if v == via)
    print(f"{via}: rps_x median {statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}), "
          f"cpu_x median {statistics.median(cpu):.2f} (min {cpu[0]:.2f}, max {cpu[-1]:.2f}), {len(ratios)} rounds")
PY
echo "rps_x = broker throughput / bare throughput (higher is better); p99_x = broker p99 / bare p99"
echo "bare_cpu, brok_cpu = server CPU time (user + system) per request in microseconds; cpu_x = bare_cpu / brok_cpu"
echo "healthz_rps = the broker's /healthz (routing and listener, no token work, no log line) for comparison"
echo "issue #14's floors, as medians of at least 7 rounds: rps_x >= 0.85 and cpu_x >= 0.80 (broker CPU at most 1.25x bare)"
