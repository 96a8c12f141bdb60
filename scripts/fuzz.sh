#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after the other (the machine has few cores).
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo +nightly install cargo-fuzz --locked`).
# Each target starts from its committed corpus in fuzz/corpus/<target>; new inputs found are
# written to a scratch directory, not to the committed corpus. With FUZZ_MERGE=1, the inputs
# that add coverage are merged into the committed corpus afterwards (libFuzzer -merge=1), ready
# to commit. A crash stops the script with a non-zero exit and leaves the input in
# fuzz/artifacts/<target>/; add it to the corpus once fixed, so that `cargo test` replays it.
#
# The targets are built without a sanitizer (`-s none`): the workspace forbids unsafe code,
# so what the fuzzer hunts is panics, overflows (debug assertions are on) and broken
# round-trips, and the uninstrumented build is several times faster to build and to run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -s none

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    printf '=== fuzz %s for %ss\n' "$target" "$seconds"
    status=0
    cargo +nightly fuzz run -s none "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        printf '=== %s: FAILED after %s executions (exit %s)\n' "$target" "${execs:-?}" "$status"
        exit "$status"
    fi
    printf '=== %s: %s executions, 0 crashes\n' "$target" "${execs:-?}"
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        cargo +nightly fuzz run -s none "$target" "corpus/$target" "$scratch/$target" -- \
            -merge=1 -max_len=65536 >"$log" 2>&1 || { tail -n 20 "$log"; exit 1; }
        printf '=== %s: corpus now %s files\n' "$target" "$(ls "corpus/$target" | wc -l)"
    fi
done
