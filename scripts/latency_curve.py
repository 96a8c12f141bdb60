#!/usr/bin/env python3
"""The switch's latency curve beside the disk's: authorizations at a series of even rates.

    scripts/latency_curve.py [--rates 1000,5000,20000,50000,100000] [--half-saturation R]
                             [--timer-from R] [--duration S] [--loadgen PATH] [--out DIR]
                             [--spawn-config F]

For each rate: the disk's raw fdatasync (scripts/fsync_probe.py, growing file, 4096 B, as the
log appends) measured right before, then `loadgen --spawn --pacing thread constant` at that
rate for S seconds (default 10), festival mix, every answer verified. From `--timer-from R`
(default 50000) on, loadgen paces with its millisecond timer instead: a pacing thread sends
frames of one request, and at those rates their per-frame cost, not the switch's latency,
would be measured. `--half-saturation R`
adds a point at R (half of `loadgen max`'s figure measured the same hour). Prints one
Markdown row per point: authorize p50 / p99 / p99.9, fdatasync p50 / p99, the margin
p99 - fdatasync p99, the switch's CPU per request and, beside it, the CPU the probe spent
per append and fdatasync (the floor for a log that syncs each request alone); then, per
point, the switch's threads: CPU, time waiting for a CPU and times scheduled, per request.
Exits 1 if a run failed its verification.
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def fsync_probe(count):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "fsync_probe.py"), "--count", str(count)],
        check=True, capture_output=True, text=True,
    ).stdout
    got = dict(re.findall(r"(p50|p99)=([0-9.]+)ms", out))
    cpu = float(re.search(r"cpu=([0-9.]+)us/sync", out).group(1))
    return float(got["p50"]), float(got["p99"]), cpu


def run_point(loadgen, rate, pacing, duration, out, spawn_config):
    cmd = [loadgen, "--spawn", "--pacing", pacing, "--quiet", "--out", out]
    if spawn_config:
        cmd += ["--spawn-config", spawn_config]
    cmd += ["constant", "--rate", str(rate), "--duration", str(duration)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(out, "report.json")
    if not os.path.exists(path):
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"loadgen at {rate}/s wrote no report (exit {done.returncode})")
    with open(path) as f:
        report = json.load(f)
    auth = next(o for o in report["ops"] if o["op"] == "authorize")
    return auth, report["self_cost"], report["verification"]["passed"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rates", default="1000,5000,20000,50000,100000")
    p.add_argument("--half-saturation", type=int)
    p.add_argument("--timer-from", type=int, default=50000)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--probe-count", type=int, default=1000)
    p.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "loadgen"))
    p.add_argument("--out", default=os.path.join(ROOT, "target", "latency-curve"))
    p.add_argument("--spawn-config")
    a = p.parse_args()
    rates = [int(r) for r in a.rates.split(",") if r]
    if a.half_saturation:
        rates.append(a.half_saturation)
    print("| rate/s | pacing | authorize p50 ms | p99 ms | p99.9 ms | fdatasync p50 / p99 ms "
          "| p99 - fdatasync p99 ms | switch CPU µs/request | fdatasync CPU µs/sync | verified |")
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|:-:|")
    failed = False
    threads = []
    for rate in rates:
        sync_p50, sync_p99, sync_cpu = fsync_probe(a.probe_count)
        pacing = "timer" if rate >= a.timer_from else "thread"
        auth, cost, passed = run_point(
            a.loadgen, rate, pacing, a.duration, os.path.join(a.out, str(rate)), a.spawn_config)
        failed |= not passed
        print(f"| {rate:,} | {pacing} | {auth['p50_ms']:.2f} | {auth['p99_ms']:.2f} | "
              f"{auth['p999_ms']:.2f} | {sync_p50:.2f} / {sync_p99:.2f} | "
              f"{auth['p99_ms'] - sync_p99:+.2f} | {cost['switch_cpu_us_per_request']:.1f} | "
              f"{sync_cpu:.1f} | "
              f"{'yes' if passed else 'NO'} |", flush=True)
        threads.append((rate, cost.get("switch_threads", [])))
    print("\nThe switch's threads, per request: µs on a CPU / µs waiting for one / times scheduled")
    for rate, ts in threads:
        cells = ", ".join(f"{t['name']} {t['cpu_us_per_request']:.1f} / "
                          f"{t['waiting_us_per_request']:.1f} / {t['scheduled_per_request']:.2f}"
                          for t in ts)
        print(f"- {rate:,}/s: {cells}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
