#!/usr/bin/env python3
"""An overload festival with the switch and loadgen on one core each, as BENCHMARKS.md runs it.

    scripts/overload_festival.py [--rounds 1] [--preallocate] [-- FESTIVAL OPTIONS...]

Release build of `switch` and `loadgen` (built first). Each round starts a fresh `switch serve`
pinned to core 0 (`taskset -c 0`) with one network thread, a route for loadgen's cards (62 to
participant 2) and its data under target/overload-festival, and runs loadgen pinned to core 1:

    loadgen --target 127.0.0.1:P --fingerprint F --quiet --out DIR festival FESTIVAL OPTIONS

FESTIVAL OPTIONS default to `--overload 1.5 --decay-secs 0.5 --tail-secs 6` (a peak half again
above the calibrated saturation that ends sharply, then quiet seconds). `--preallocate` sets
`[ledger] preallocate = true`, as production does. The raw fdatasync of the same disk is probed
before the first round (scripts/fsync_probe.py). Each round prints loadgen's peak and
verification lines; a failed verification fails the script. Reports go to
target/overload-festival/round-N.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "overload-festival")
SWITCH = os.path.join(ROOT, "target", "release", "switch")
LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
DEFAULT_FESTIVAL = ["--overload", "1.5", "--decay-secs", "0.5", "--tail-secs", "6"]
QUIC_PORT, HTTP_PORT = 24700, 24740


def config(data_dir, preallocate):
    text = f"""[server]
listen = "127.0.0.1:{QUIC_PORT}"
data_dir = "{data_dir}"
io_threads = 1

[metrics]
listen = "127.0.0.1:{HTTP_PORT}"

[[routes]]
prefix = "62"
issuer = 2
"""
    if preallocate:
        text += "\n[ledger]\npreallocate = true\n"
    return text


def start_switch(round_dir, preallocate):
    data_dir = os.path.join(round_dir, "data")
    path = os.path.join(round_dir, "switch.toml")
    with open(path, "w") as f:
        f.write(config(data_dir, preallocate))
    log_path = os.path.join(round_dir, "switch.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["taskset", "-c", "0", SWITCH, "serve", "--config", path],
                                stdout=log, stderr=subprocess.STDOUT)
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            sys.exit(f"the switch stopped at start; see {log_path}")
        with open(log_path) as f:
            for line in f:
                if line.startswith("ready "):
                    fields = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
                    if "fingerprint" not in fields:
                        proc.kill()
                        sys.exit(f"the switch's ready line names no fingerprint: {line.strip()}")
                    return proc, fields["fingerprint"]
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the switch was not ready within 120 s; see {log_path}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--preallocate", action="store_true")
    ap.add_argument("festival", nargs="*", help="festival options (after --)")
    a = ap.parse_args()
    festival = a.festival or DEFAULT_FESTIVAL
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "switch", "-p", "loadgen"],
                   cwd=ROOT, check=True)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    probe = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fsync_probe.py"),
                            "--dir", OUT], capture_output=True, text=True, check=True)
    print("fsync before:", probe.stdout.strip().splitlines()[-1], flush=True)
    failed = False
    for n in range(1, a.rounds + 1):
        round_dir = os.path.join(OUT, f"round-{n}")
        os.makedirs(round_dir)
        proc, fingerprint = start_switch(round_dir, a.preallocate)
        try:
            run = subprocess.run(
                ["taskset", "-c", "1", LOADGEN, "--target", f"127.0.0.1:{QUIC_PORT}",
                 "--fingerprint", fingerprint, "--quiet", "--out", round_dir, "festival"]
                + festival,
                capture_output=True, text=True)
        finally:
            stop(proc)
        with open(os.path.join(round_dir, "loadgen.txt"), "w") as f:
            f.write(run.stdout + run.stderr)
        lines = [l for l in run.stdout.splitlines()
                 if l.startswith(("calibration", "peak", "  quiet", "verification", "goodput"))]
        print(f"round {n} ({time.strftime('%H:%M:%S')}):", *lines, sep="\n  ", flush=True)
        if run.returncode != 0 or "verification PASSED" not in run.stdout:
            failed = True
            print(f"  loadgen exited {run.returncode}; see {round_dir}/loadgen.txt", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
