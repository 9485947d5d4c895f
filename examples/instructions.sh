#!/usr/bin/env bash
# User-space instructions per `GET /v1/token/demo` over the Unix socket, for tokenbroker and
# for the bare hyper baseline (examples/bare_hyper.rs), counted by valgrind's callgrind.
# Unlike throughput, the count is repeatable on a busy machine: it is the figure to compare
# when changing the token path. It leaves out the kernel (both servers make the same
# syscalls per request) and waiting on shared memory.
#
# Valgrind runs one thread at a time; without `--fair-sched=yes` sled's I/O threads, which
# spin, starve the others (the store took two minutes to open, and a run did not finish).
#
#   apt-get install valgrind    # once
#   cargo install oha --locked  # once
#   examples/instructions.sh    # REQUESTS=10000 by default; prints both counts and the ratio
#   VIA=tcp examples/instructions.sh          # over loopback TCP (the broker with its API key)
#   BROKER=/tmp/tb-before examples/instructions.sh   # another build of the broker
#   KEEP_DUMPS=DIR examples/instructions.sh   # also keeps the callgrind dumps in DIR, e.g.
#     callgrind_annotate --inclusive=yes DIR/broker.out.* | grep Event::dispatch
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-10000}
VIA=${VIA:-unix}
command -v valgrind >/dev/null || { echo "valgrind is missing" >&2; exit 1; }
command -v oha >/dev/null || { echo "oha is missing: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet --bin tokenbroker --example bare_hyper
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
bare_port=$(free_port)

TOKENBROKER__SERVER__SOCKET="$work/tb.sock" TOKENBROKER__SERVER__HTTP="127.0.0.1:$broker_port" \
  valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/broker.out" \
  "${BROKER:-target/release/tokenbroker}" serve --dev 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
for _ in $(seq 300); do curl -sf --unix-socket "$work/tb.sock" http://localhost/healthz >/dev/null 2>&1 && break; sleep 0.1; done
size=$(curl -sf --unix-socket "$work/tb.sock" http://localhost/v1/token/demo | wc -c)

valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/bare.out" \
  target/release/examples/bare_hyper "$work/bare.sock" "127.0.0.1:$bare_port" "$size" 2>/dev/null &
bare_pid=$!
pids+=($bare_pid)
for _ in $(seq 300); do curl -sf --unix-socket "$work/bare.sock" http://localhost/ >/dev/null 2>&1 && break; sleep 0.1; done

count() { # name pid then oha's target: instructions per request over REQUESTS requests, after a warm-up
  local name=$1 pid=$2
  shift 2
  oha --no-tui -n 500 -c 8 "$@" >/dev/null
  callgrind_control --zero "$pid" >/dev/null 2>&1
  oha --no-tui -n "$REQUESTS" -c 8 "$@" >"$work/$name.oha"
  grep -q "\[200\] $REQUESTS responses" "$work/$name.oha" || { echo "$name: not all answers were 200" >&2; exit 1; }
  callgrind_control --dump "$pid" >/dev/null 2>&1
  local dump
  for _ in $(seq 50); do dump=$(ls "$work/$name.out".* 2>/dev/null | head -1) && [ -n "$dump" ] && break; sleep 0.1; done
  sleep 0.5 # let callgrind finish writing the dump
  awk -v n="$REQUESTS" '/^(summary|totals):/ { printf "%d\n", $2 / n; exit }' "$dump"
}

if [ "$VIA" = tcp ]; then
  # The same request as the broker's, API key included: both parse the same bytes.
  bare=$(count bare "$bare_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$bare_port/v1/token/demo")
  broker=$(count broker "$broker_pid" -H 'Authorization: Bearer dev' "http://127.0.0.1:$broker_port/v1/token/demo")
else
  bare=$(count bare "$bare_pid" --unix-socket "$work/bare.sock" http://localhost/v1/token/demo)
  broker=$(count broker "$broker_pid" --unix-socket "$work/tb.sock" http://localhost/v1/token/demo)
fi
if [ -n "${KEEP_DUMPS:-}" ]; then mkdir -p "$KEEP_DUMPS" && cp "$work"/*.out.* "$KEEP_DUMPS"/; fi
python3 -c "print(f'user-space instructions per request over $VIA: bare {$bare}, broker {$broker}, bare/broker {$bare / $broker:.2f}')"
