#!/usr/bin/env python3
"""The disk's raw durable-append latency, for comparison with the write-ahead log's.

    scripts/fsync_probe.py [--bytes N] [--count N] [--preallocated | --fallocate |
                            --fallocate-keep-size] [--dir DIR]

Appends N bytes (default 4096) and calls fdatasync, --count times (default 2000), in a scratch
file under DIR (default target/), and prints the rate, the p50, p90 and p99 latency, and the
CPU time (user and kernel) each append and sync cost the probe. With
--preallocated the file is first filled with zeros and synced, so each append overwrites
blocks that already exist and fdatasync has no file size or allocation to record. With
--fallocate (posix_fallocate) or --fallocate-keep-size (fallocate with FALLOC_FL_KEEP_SIZE)
the space is reserved without being written.
"""
import argparse
import ctypes
import os
import resource
import time

FALLOC_FL_KEEP_SIZE = 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bytes", type=int, default=4096)
    p.add_argument("--count", type=int, default=2000)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--preallocated", action="store_true")
    mode.add_argument("--fallocate", action="store_true")
    mode.add_argument("--fallocate-keep-size", action="store_true")
    p.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "..", "target"))
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, "fsync_probe.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buf = b"x" * a.bytes
        total = a.bytes * a.count
        if a.preallocated:
            os.write(fd, b"\0" * total)
        elif a.fallocate:
            os.posix_fallocate(fd, 0, total)
        elif a.fallocate_keep_size:
            libc = ctypes.CDLL(None, use_errno=True)
            off = ctypes.c_long
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, off(0), off(total)) != 0:
                raise OSError(ctypes.get_errno(), "fallocate")
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        lat = []
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(a.count):
            t = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    # The CPU each append and fdatasync costs this process, most of it in the kernel: what a
    # log that syncs every request spends per request before any work of its own.
    cpu = lambda r: r.ru_utime + r.ru_stime
    cpu_us = (cpu(cpu1) - cpu(cpu0)) / a.count * 1e6
    q = lambda f: lat[min(len(lat) - 1, int(len(lat) * f))] * 1e3
    kind = (
        "preallocated" if a.preallocated
        else "fallocate" if a.fallocate
        else "fallocate keep-size" if a.fallocate_keep_size
        else "growing"
    )
    print(
        f"raw fdatasync ({kind}, {a.bytes} B)/s={a.count / elapsed:.0f} "
        f"p50={q(0.5):.3f}ms p90={q(0.9):.3f}ms p99={q(0.99):.3f}ms "
        f"p99.9={q(0.999):.3f}ms max={lat[-1] * 1e3:.3f}ms "
        f"cpu={cpu_us:.1f}us/sync"
    )


if __name__ == "__main__":
    main()
