#!/bin/bash
# CPU seconds a PostgreSQL cluster has used so far: its live processes, and the backends
# that have exited (the postmaster's cutime and cstime). Read it before and after a run:
#   examples/pg-cpu.sh /tmp/tb-bench/data
set -euo pipefail
data=${1:?the data directory of the cluster}
postmaster=$(head -1 "$data/postmaster.pid")
ticks=0
for pid in $(pgrep -P "$postmaster") "$postmaster"; do
  read -r -a fields < <(sed 's/.*) //' "/proc/$pid/stat")
  ticks=$((ticks + fields[11] + fields[12]))
done
read -r -a fields < <(sed 's/.*) //' "/proc/$postmaster/stat")
ticks=$((ticks + fields[13] + fields[14]))
awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz }'
