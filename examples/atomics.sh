#!/usr/bin/env bash
# How much of the broker's user-space CPU, serving `GET /v1/token/demo` over the Unix socket,
# lands on atomic instructions (`lock`-prefixed, `xchg`): a sampled profile (perf, cpu-clock)
# of `serve --dev` under oha, each sample counted against the instruction before it (where a
# sample after an atomic lands), summed by function. Contended atomics (locks, shared
# counters, reference counts touched by both worker threads) show up here and not in
# instruction counts.
#
#   apt-get install linux-perf   # once (perf); cargo install oha --locked
#   examples/atomics.sh          # REQUESTS=400000, TOP=25
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-400000}
cargo build --release --quiet --bin tokenbroker
work=$(mktemp -d)
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
RUST_LOG=info TOKENBROKER__SERVER__SOCKET="$work/tb.sock" TOKENBROKER__SERVER__HTTP=127.0.0.1:0 \
  target/release/tokenbroker serve --dev 2>"$work/broker.log" >/dev/null &
pid=$!
for _ in $(seq 100); do curl -sf --unix-socket "$work/tb.sock" http://localhost/healthz >/dev/null 2>&1 && break; sleep 0.1; done
target=(--unix-socket "$work/tb.sock" http://localhost/v1/token/demo)
oha --no-tui -n 50000 -c 64 "${target[@]}" >/dev/null
perf record -e cpu-clock -F 4000 -p "$pid" -o "$work/perf.data" >/dev/null 2>&1 &
perf_pid=$!
sleep 0.3
oha --no-tui -n "$REQUESTS" -c 64 "${target[@]}" >/dev/null
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
perf annotate -i "$work/perf.data" --stdio --dsos=tokenbroker 2>/dev/null >"$work/annotated.txt"
python3 - "$work/annotated.txt" "$REQUESTS" "${TOP:-25}" <<'PY'
import collections, re, sys
path, requests, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = open(path).read().split("\n")
total = atomic = 0.0
by_function = collections.Counter()
samples, previous, function = 0, "", "?"
for i, line in enumerate(lines):
    header = re.search(r"Disassembly of \S+ for cpu-clock \((\d+) samples", line)
    if header:
        samples, previous = int(header.group(1)), ""
        for following in lines[i + 1 : i + 8]:
            name = re.search(r"[0-9a-f]{16} <(.*)>:", following)
            if name:
                function = name.group(1)
                break
        continue
    instruction = re.match(r"\s+([0-9.]+) :\s+[0-9a-f]+:\s+(.*)", line)
    if instruction:
        share = float(instruction.group(1)) / 100 * samples
        total += share
        if re.search(r"\block\b|xchg", previous):
            atomic += share
            by_function[function] += share
        previous = instruction.group(2)
per_1k = lambda s: s * 1000 / requests
print(f"samples in tokenbroker (user space): {per_1k(total):.2f} per 1000 requests, "
      f"after an atomic instruction: {per_1k(atomic):.2f} ({atomic / total:.0%}); one sample is 0.25 ms")
for function, share in by_function.most_common(top):
    print(f"{per_1k(share):6.3f}  {function[:120]}")
PY
