#!/usr/bin/env python3
"""A three-replica cluster against a cluster of one, measured in the same run on this machine.

    scripts/cluster_bench.py [--rounds 3] [--seconds 10] [--paced-seconds 20] [--catchup-seconds 10]

Release build of `switch` and `loadgen`; every cluster is made fresh by `switch cluster init`
(loopback, its own data directories under target/cluster-bench) and stopped with SIGTERM.

1. Saturation: `loadgen max` against a cluster of one and a cluster of three, alternating,
   `--rounds` times; the median of each and their ratio.
2. Half of saturation: `loadgen constant` at half of each one's median saturation; p50/p99.
3. Catch-up: in a cluster of three with snapshots every 64 MiB of log, one follower is
   killed (SIGKILL) before `loadgen max` runs `--catchup-seconds`; it is started again after the
   load and the leader's next snapshot (which compacts the log it missed), and the time until it
   has applied everything the leader committed is measured (its own start and recovery
   included; it held only the founding state, so it catches up as an empty replica), with the
   snapshot bytes the leader sent it
   (switch_replica_snapshot_bytes_sent_total). `--catchup-only` runs this part alone.

`--switch PATH` (repeatable) alternates switch binaries instead of running the one built here
(for an A/B of two builds: `--switch A --switch B`): the saturation rounds run every binary's
cluster of one and of three in turn, with a ratio per binary, and `--paced` runs each rate
with each binary. Without it, the current tree is built and run.

`--paced R1,R2,...` instead runs only `loadgen constant` at each rate against a fresh cluster of
three, once for each `--cluster-line` set given with `--variants`, alternating (for an A/B of a
`[cluster]` setting: `--paced 40000,95000 --variants "messages_in_flight_max = 2" --variants
"messages_in_flight_max = 256" --rounds 2`).

The raw fdatasync of the same disk is probed before and after (scripts/fsync_probe.py). Every
loadgen run verifies every cent at the end; a failed verification fails this script. The
summary goes to stdout and target/cluster-bench/summary.json.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "cluster-bench")
SWITCH = os.path.join(ROOT, "target", "release", "switch")
LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
# Enough remembered requests for a saturated run of --seconds, reserved at start so that map
# growth does not weigh on one kind of run more than the other.
def extra(remembered):
    return f"\n[ledger]\ntransfers_remembered_max = {remembered}\npreallocate = true\n"


EXTRA = extra(6_000_000)
SNAPSHOTS_OFTEN = "\n[snapshot]\nevery_wal_bytes = 67108864\n"


def sh(args, **kw):
    return subprocess.run(args, check=True, **kw)


class Cluster:
    """`n` replicas from `switch cluster init`, as processes of this script."""

    def __init__(self, name, n, base_port, extra=EXTRA, cluster_lines="", switch=SWITCH):
        self.switch = switch
        self.dir = os.path.join(OUT, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        self.n = n
        self.client_ports = [base_port + i for i in range(n)]
        self.http_ports = [base_port + 40 + i for i in range(n)]
        init = subprocess.run(
            [self.switch, "cluster", "init", "--dir", self.dir, "--replicas", str(n),
             "--client-port", str(base_port), "--replica-port", str(base_port + 20),
             "--http-port", str(base_port + 40)],
            check=True, capture_output=True, text=True)
        words = init.stdout.split()
        self.fingerprint = words[words.index("--fingerprint") + 1]
        for i in range(1, n + 1):
            with open(self.config(i)) as f:
                text = f.read()
            if cluster_lines:
                text = text.replace("[cluster]\n", "[cluster]\n" + cluster_lines + "\n", 1)
            with open(self.config(i), "w") as f:
                f.write(text + extra)
        self.procs = {}

    def config(self, i):
        return os.path.join(self.dir, f"node{i}.toml")

    def start(self, i):
        log = open(os.path.join(self.dir, f"node{i}.log"), "a")
        self.procs[i] = subprocess.Popen([self.switch, "serve", "--config", self.config(i)],
                                         stdout=log, stderr=log)

    def start_all(self):
        for i in range(1, self.n + 1):
            self.start(i)
        return self.wait_leader()

    def status(self, i):
        url = f"http://127.0.0.1:{self.http_ports[i - 1]}/cluster"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return json.load(r)
        except OSError:
            return None

    def metric(self, i, name):
        url = f"http://127.0.0.1:{self.http_ports[i - 1]}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def wait_leader(self, limit=60):
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            for i in self.procs:
                s = self.status(i)
                if s and s["role"] == "leader":
                    return i
            time.sleep(0.1)
        raise SystemExit(f"{self.dir}: no leader within {limit} s")

    def targets(self):
        return ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        del self.procs[i]

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                raise SystemExit(f"{self.dir}: a replica did not stop within 120 s")
        self.procs = {}
        for i in range(1, self.n + 1):
            shutil.rmtree(os.path.join(self.dir, f"node{i}", "data"), ignore_errors=True)


def loadgen(cluster, name, *profile):
    out = os.path.join(OUT, name + "-report")
    cmd = [LOADGEN, "--target", cluster.targets(), "--fingerprint", cluster.fingerprint,
           "--quiet", "--out", out, *profile]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stdout.write(run.stdout + run.stderr)
        raise SystemExit(f"{name}: loadgen exit {run.returncode}")
    with open(os.path.join(out, "report.json")) as f:
        r = json.load(f)
    v = r["verification"]
    if not (v and v["passed"]):
        raise SystemExit(f"{name}: verification failed, see {out}")
    t = r["totals"]
    return {"rate": t["rate"], "p50_ms": t["p50_ms"], "p99_ms": t["p99_ms"],
            "max_ms": t["max_ms"], "saturation": r["profile"].get("saturation_rate")}


def probe(label):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fsync_probe.py"),
                          "--bytes", "12288", "--count", "5000",
                          "--dir", os.path.join(OUT, "probe")],
                         check=True, capture_output=True, text=True)
    line = run.stdout.strip().splitlines()[-1]
    print(f"fsync {label}: {line}", flush=True)
    return line


KINDS = {"one": (1, 24500), "three": (3, 24600)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--paced-seconds", type=int, default=20)
    ap.add_argument("--catchup-seconds", type=int, default=10)
    ap.add_argument("--catchup-only", action="store_true")
    ap.add_argument("--paced", help="rates (comma-separated): only paced runs of three")
    ap.add_argument("--variants", action="append", default=None,
                    help="lines for every replica's [cluster] section, one run each (--paced)")
    ap.add_argument("--catchup-remembered", type=int, default=6_000_000,
                    help="[ledger] transfers_remembered_max for the catch-up's cluster")
    ap.add_argument("--switch", action="append", default=None, metavar="PATH",
                    help="a switch binary to run (repeatable: alternated); default: build one")
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "-p", "switch", "-p", "loadgen"], cwd=ROOT)
    a.switches = a.switch or [SWITCH]
    os.makedirs(OUT, exist_ok=True)
    summary = {"cores": os.cpu_count(), "fsync_before": probe("before")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    summary["commit"] = commit

    if a.paced:
        paced_variants(a, summary)
    else:
        if not a.catchup_only:
            comparison(a, summary)
        catchup(a, summary)
    summary["fsync_after"] = probe("after")
    name = "paced.json" if a.paced else "catchup.json" if a.catchup_only else "summary.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {os.path.join(OUT, name)}")


def comparison(a, summary):
    """Saturation of one and of three, alternated, for each binary in turn (a ratio each);
    with a single binary, then half of each one's saturation."""
    several = len(a.switches) > 1
    sat = {b: {k: [] for k in KINDS} for b in a.switches}
    for r in range(a.rounds):
        for b in a.switches:
            label = f" [{b}]" if several else ""
            for kind, (n, port) in KINDS.items():
                c = Cluster(f"sat{r}-{kind}", n, port, switch=b)
                c.start_all()
                res = loadgen(c, f"sat{r}-{kind}", "max", "--duration", str(a.seconds))
                c.stop()
                sat[b][kind].append(res["saturation"])
                print(f"saturation {kind:5} round {r}{label}: {res['saturation']:.0f}/s "
                      f"(p99 {res['p99_ms']:.1f} ms)", flush=True)
    by_switch = {}
    for b in a.switches:
        med = {k: statistics.median(v) for k, v in sat[b].items()}
        by_switch[b] = {"each": sat[b], "median": med, "ratio": med["three"] / med["one"]}
        label = f" [{b}]" if several else ""
        print(f"saturation median{label}: one {med['one']:.0f}/s, three {med['three']:.0f}/s, "
              f"ratio {med['three'] / med['one']:.2f}", flush=True)
    if several:
        summary["saturation_by_switch"] = by_switch
        return
    summary["saturation"] = by_switch[a.switches[0]]
    med = summary["saturation"]["median"]

    paced = {}
    for kind, (n, port) in KINDS.items():
        rate = int(med[kind] / 2)
        c = Cluster(f"half-{kind}", n, port, switch=a.switches[0])
        c.start_all()
        paced[kind] = loadgen(c, f"half-{kind}", "constant", "--rate", str(rate),
                              "--duration", str(a.paced_seconds))
        c.stop()
        print(f"half of saturation {kind:5} at {rate}/s: p50 {paced[kind]['p50_ms']:.2f} ms, "
              f"p99 {paced[kind]['p99_ms']:.2f} ms", flush=True)
    summary["half"] = paced


def paced_variants(a, summary):
    rates = [int(r) for r in a.paced.split(",")]
    variants = a.variants or [""]
    runs = []
    for r in range(a.rounds):
        for rate in rates:
            for v in variants:
                for b in a.switches:
                    c = Cluster("paced", 3, 24600, cluster_lines=v, switch=b)
                    c.start_all()
                    res = loadgen(c, "paced", "constant", "--rate", str(rate),
                                  "--duration", str(a.paced_seconds))
                    c.stop()
                    runs.append({"round": r, "rate": rate, "variant": v, "switch": b, **res})
                    label = v or "defaults"
                    if len(a.switches) > 1:
                        label += f", {b}"
                    print(f"round {r} three at {rate}/s [{label}]: "
                          f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms", flush=True)
    summary["paced"] = runs


def catchup(a, summary):
    c = Cluster("catchup", 3, 24600, extra(a.catchup_remembered) + SNAPSHOTS_OFTEN,
                switch=a.switches[0])
    leader = c.start_all()
    lagging = next(i for i in range(1, 4) if i != leader)
    c.kill(lagging)
    load = loadgen(c, "catchup", "max", "--duration", str(a.catchup_seconds))
    target = c.status(leader)["committed"]
    # The leader snapshots once the load has passed (a due snapshot waits while it is busy)
    # and compacts its log behind it: the follower can then only catch up from the snapshot.
    loaded = time.time()
    while (c.metric(leader, "switch_snapshot_last_written_timestamp_seconds") or 0) < loaded:
        if time.time() - loaded > 300:
            raise SystemExit("catch-up: the leader wrote no snapshot within 300 s")
        time.sleep(0.2)
    sent_before = c.metric(leader, "switch_replica_snapshot_bytes_sent_total")
    started = time.monotonic()
    c.start(lagging)
    while True:
        s = c.status(lagging)
        if s and s["applied"] >= target:
            break
        if time.monotonic() - started > 300:
            raise SystemExit("catch-up: not caught up within 300 s")
        time.sleep(0.05)
    took = time.monotonic() - started
    sent = c.metric(leader, "switch_replica_snapshot_bytes_sent_total") - sent_before
    c.stop()
    summary["catchup"] = {"requests_missed": load["rate"] * a.catchup_seconds,
                          "entries": target, "seconds": took, "snapshot_bytes": sent}
    print(f"catch-up: a follower that missed {target} entries "
          f"({load['rate'] * a.catchup_seconds:.0f} requests) applied them all "
          f"{took:.2f} s after it started, from {sent / 1e6:.1f} MB of snapshot", flush=True)


if __name__ == "__main__":
    main()
