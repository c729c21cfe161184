#!/usr/bin/env python3
"""Pull 1,000 small jobs (~2 KB, real packets) from a local-directory remote into a local
queue: ``fspl-gw sync`` against ``rclone move`` (Debian's rclone), same machine, same run.

Each tool gets a freshly built remote (same files) and an empty destination; the time is
the wall clock of the whole command, process start included.  fspl-gw does more per file
than rclone (validates each header, fsyncs each file and the jobs/ directory, records each
in its journal); rclone moves the bytes (``--config /dev/null``, default 4 transfers).

Usage: ``python benchmarks/bench_sync_local.py [--jobs N] [--size BYTES] [--rounds R]``.
Prints Markdown table rows (median of R rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from fspl_gateway import queue as q
from fspl_gateway.packet import Meta, encode_header


def build_remote(root: str, n: int, size: int) -> None:
    jobs = os.path.join(root, "jobs")
    os.makedirs(jobs)
    for i in range(1, n + 1):
        data = encode_header(Meta(i, (1700000000 + i, 0), "NOP")) + os.urandom(size)
        with open(os.path.join(jobs, q.new_job_filename()), "wb") as f:
            f.write(data)


def gw_cmd() -> list[str]:
    try:
        import fspl_gateway.cli  # noqa: F401

        return [sys.executable, "-m", "fspl_gateway"]
    except ImportError:
        return [sys.executable, "-m", "fspl_gateway.cli_sync"]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--remote-dir", default=None,
                    help="Put the remotes here (e.g. /dev/shm: another file system, so that "
                         "rclone has to copy instead of rename); default: beside the queue.")
    a = ap.parse_args()
    rclone = shutil.which("rclone")
    results: dict[str, list[float]] = {"fspl-gw sync": [], "rclone move": []}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, \
            tempfile.TemporaryDirectory(prefix="bench-sync-remote-", dir=a.remote_dir) as rtmp:
        for r in range(a.rounds):
            base = os.path.join(tmp, f"r{r}")
            os.makedirs(base)
            rbase = os.path.join(rtmp, f"r{r}")
            src_gw, src_rc = os.path.join(rbase, "remote-gw"), os.path.join(rbase, "remote-rc")
            build_remote(src_gw, a.jobs, a.size)
            shutil.copytree(src_gw, src_rc)
            qdir = os.path.join(base, "queue")
            q.queue_init(qdir)
            results["fspl-gw sync"].append(timed(
                [*gw_cmd(), "-l", "warn", "sync", "-t", "local", "-r", src_gw, "-q", qdir,
                 "--concurrency", str(a.concurrency)]))
            assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs
            assert os.listdir(os.path.join(src_gw, "jobs")) == []
            if rclone:
                dst = os.path.join(base, "rclone-dst")
                results["rclone move"].append(timed(
                    [rclone, "move", os.path.join(src_rc, "jobs"), dst, "--config", "/dev/null",
                     "--transfers", str(a.concurrency)]))
                assert len(os.listdir(dst)) == a.jobs
            shutil.rmtree(base)
            shutil.rmtree(rbase)
    where = "same file system" if a.remote_dir is None else f"remote in {a.remote_dir}"
    print(f"| tool | jobs | size | remote | median s ({a.rounds} rounds) | jobs/s |")
    print("|---|---|---|---|---|---|")
    for tool, times in results.items():
        if not times:
            print(f"| {tool} | {a.jobs} | {a.size} B | {where} | not installed | |")
            continue
        m = statistics.median(times)
        print(f"| {tool} | {a.jobs} | {a.size} B | {where} | {m:.2f} | {a.jobs / m:.0f} |")


if __name__ == "__main__":
    main()
