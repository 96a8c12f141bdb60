#!/usr/bin/env bash
# Crash under load, the long run: the real `switch` binary is driven by a pipelining client,
# killed with SIGKILL at random moments with requests in flight, restarted on the same data
# directory, and after every restart checked against a journal of every answer it gave
# (every acknowledged operation present with the same result, nothing half-applied, no orphan
# hold, money conserved). What is checked, and how, is in switch/tests/chaos/main.rs; CI
# runs the same test with 3 cycles as part of `cargo test --workspace`.
#
# Usage: scripts/chaos.sh [CYCLES] [REPORT]
#        scripts/chaos.sh --cluster [KILLS] [REPORT]
# With --cluster: three replicas (real processes) under load, the leader killed with SIGKILL
# KILLS times (default 100) and restarted; every acknowledged authorization must hold at the
# end and the replicas' ledgers must be the same (switch/tests/cluster.rs). The report gives
# each failover's time, from the kill to the next acknowledged answer.
#   CYCLES  kill -9 cycles (default 100)
#   REPORT  the JSON report (default target/chaos-report.json)
# The test also reads CHAOS_SECONDS (wall-clock bound; 3600 here), CHAOS_KILL_MS (the kill
# comes 1/10 to all of this many ms after load starts; default 1000), CHAOS_WORKERS
# (concurrent flows, default 24), CHAOS_SAMPLE (older operations re-checked per cycle,
# default 2000; all are checked at the end) and CHAOS_SEED.
#
# Exit status 0 only if nothing acknowledged was lost and nothing mismatched.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--cluster" ]; then
    kills="${2:-100}"
    report="${3:-target/chaos-cluster-report.json}"
    mkdir -p "$(dirname "$report")"
    report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
    export CLUSTER_KILLS="$kills" CLUSTER_REPORT="$report"
    echo "chaos.sh --cluster: $kills leader kills, release build; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    status=0
    cargo test --release -p switch --test cluster a_cluster_rides_through -- --nocapture --test-threads=1 || status=$?
    echo "chaos.sh --cluster: report in $report"
    exit "$status"
fi

cycles="${1:-100}"
report="${2:-target/chaos-report.json}"
mkdir -p "$(dirname "$report")"
# The test runs in switch/; give it an absolute path.
report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"

export CHAOS_CYCLES="$cycles"
export CHAOS_REPORT="$report"
export CHAOS_SECONDS="${CHAOS_SECONDS:-3600}"

load="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "chaos.sh: $cycles cycles, release build; $(nproc) cores, load average $load"
status=0
cargo test --release -p switch --test chaos -- --nocapture --test-threads=1 || status=$?
echo "chaos.sh: report in $report"
exit "$status"
