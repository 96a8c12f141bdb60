#!/usr/bin/env python3
"""How long the switch takes to start serving: on a fresh data directory, then after kill -9.

    scripts/start_time.py [--prepare-segments] [--restarts N] [--switch PATH]

Writes a configuration into a scratch directory under target/ (loopback, ports chosen by the
OS, the default log segments, `[wal] prepare_segments` as asked), starts `switch serve` on a
fresh data directory, waits for "switch is serving", kills it with SIGKILL, and starts it again
N times (default 2) on the same directory. For each start it prints the time from spawn to
serving and the recovery time the switch logged (`elapsed_ms`). Build the switch first:
`cargo build --release -p switch`.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import time

SERVING = "switch is serving"
LIMIT_S = 60


def start(switch, config):
    """Starts the switch, returns (seconds to serving, recovery ms logged), and kills it."""
    began = time.monotonic()
    process = subprocess.Popen(
        [switch, "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    recovery_ms = None
    try:
        for line in process.stderr:
            found = re.search(r"recovered from the snapshot.*elapsed_ms=(\d+)", line)
            if found:
                recovery_ms = int(found.group(1))
            if SERVING in line:
                return time.monotonic() - began, recovery_ms
            if time.monotonic() - began > LIMIT_S:
                break
        raise SystemExit(f"the switch did not start serving within {LIMIT_S} s")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-segments", action="store_true")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--switch", default="target/release/switch")
    args = parser.parse_args()
    scratch = os.path.abspath("target/start_time")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    config = os.path.join(scratch, "switch.toml")
    with open(config, "w") as out:
        out.write(
            f'[server]\nlisten = "127.0.0.1:0"\ndata_dir = "{scratch}/data"\n\n'
            '[metrics]\nlisten = "127.0.0.1:0"\n\n'
            f"[wal]\nprepare_segments = {str(args.prepare_segments).lower()}\n"
        )
    for i in range(args.restarts + 1):
        seconds, recovery_ms = start(args.switch, config)
        what = "fresh start" if i == 0 else f"restart {i} after kill -9"
        print(f"{what}: serving after {seconds:.3f} s, recovery {recovery_ms} ms")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
