#!/usr/bin/env bash
# Two builds of the broker side by side: CPU time per `GET /v1/token/demo` and throughput,
# measured in alternating 4 s runs of oha (64 connections) against each, so that both see
# the same machine load. For judging a change to the token path on a noisy machine.
#
#   cargo build --release --bin tokenbroker && cp target/release/tokenbroker /tmp/tb-after
#   (in a worktree of the commit before) the same, copied to /tmp/tb-before
#   examples/ab.sh                   # over the Unix socket; R=6 rounds, D=4s per run
#   VIA=tcp examples/ab.sh           # over loopback TCP, with the dev API key
#   BEFORE=path AFTER=path examples/ab.sh
set -euo pipefail
command -v oha >/dev/null || { echo "oha is missing: cargo install oha --locked" >&2; exit 1; }
w=$(mktemp -d)
start() { # name binary port
  RUST_LOG=info TOKENBROKER__SERVER__SOCKET="$w/$1.sock" TOKENBROKER__SERVER__HTTP="127.0.0.1:$3" "$2" serve --dev >"$w/$1.out" 2>"$w/$1.log" &
  echo $!
}
pa=$(start a "${BEFORE:-/tmp/tb-before}" 18801); pb=$(start b "${AFTER:-/tmp/tb-after}" 18802)
trap 'kill $pa $pb; rm -rf $w' EXIT
for s in a b; do for _ in $(seq 100); do curl -sf --unix-socket "$w/$s.sock" http://localhost/healthz >/dev/null 2>&1 && break; sleep 0.1; done; done
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
run() { # name pid
  local b=$(ticks $2)
  local target=(--unix-socket "$w/$1.sock" http://localhost/v1/token/demo)
  if [ "${VIA:-unix}" = tcp ]; then port=18801; [ $1 = b ] && port=18802; target=(-H "Authorization: Bearer dev" "http://127.0.0.1:$port/v1/token/demo"); fi
  local n=$(oha --no-tui --output-format json -z ${D:-4s} -c 64 "${target[@]}" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(r["statusCodeDistribution"].values()), int(r["summary"]["requestsPerSec"]))')
  local a=$(ticks $2)
  set -- $n
  python3 -c "print(f'{$a-$b} ticks, {$1} req, {($a-$b)/100*1e6/$1:.2f} us/req, {$2} rps')"
}
for p in a b; do oha --no-tui -z 2s -c 64 --unix-socket "$w/$p.sock" http://localhost/v1/token/demo >/dev/null; done
for r in $(seq ${R:-6}); do
  if [ $((r % 2)) = 1 ]; then echo "before $(run a $pa)"; echo "after  $(run b $pb)"; else echo "after  $(run b $pb)"; echo "before $(run a $pa)"; fi
done
