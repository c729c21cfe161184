#!/usr/bin/env python3
"""Scale: does the time per job stay flat from 1,000 to 100,000 jobs?

For each size N, on the local file system:

1. a local-directory remote with N small jobs (real packets: a NOP header and
   ``--size`` payload bytes, written with our own packet writer, not N ``fspl prepare``
   forks);
2. ``fspl-gw sync -t local`` of all of them into a fresh queue (``--settle 0``);
3. ``fspl-gw queue-ls`` and ``fspl-gw status`` of that queue (N pending jobs);
4. ``fspl-gw queue-process`` of that queue (NOP jobs: what is measured is the queue
   machinery — scan, sequence file with its fsync per job, unlink — not fork/exec).

With ``--fspl`` (the default) the real ``fspl queue-ls`` and ``fspl queue-process`` run
on a copy of the same queue, interleaved with ours, as the yardstick.

Each command is measured in a fresh wrapper process: wall clock, CPU (user+sys of the
command's process tree) and peak RSS (the largest process of the tree).  The table gives
time per job at each N and the ratio per-job(N_max) / per-job(N_min); the target is
≤ 1.2×.  Per-job times include the one start-up of each command (~0.1 s for fspl-gw),
which flatters the small N; so each command also runs on an empty queue (N = 0) and the
"marginal" columns give (t(N) − t(0)) / N, the cost of a job without the start-up.  The
CPU figures show the same with less noise from the other users of a shared machine.

Usage::

    python benchmarks/bench_scale.py [--n 1000 --n 100000] [--size 200] [--no-fspl]
                                     [--skip sync,status,...] [--dir DIR] [--repeat 3]

Sizes up to 10,000 and the empty queue are run ``--repeat`` times (best of); larger ones
once.

Defaults: N = 1,000 and 100,000, 200-byte payloads, fspl compared.  ``--dir``: where
the queues go (default: a temporary directory under /var/tmp, a real disk: fsync costs
what it costs).  The 100,000 fsyncs of sync and of each queue-process dominate: about
7 minutes on 2 cores when an fsync takes ~1 ms, much longer on a busy disk;
``--dir /dev/shm`` (tmpfs) measures the algorithmic cost alone in about 5 minutes.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_sync_local import header  # noqa: E402
from fspl_gateway.core import queue as q  # noqa: E402
from fspl_gateway.core.packet import Meta, encode_header  # noqa: E402

#: Runs argv[1:] and prints (wall, user+sys of the tree, peak RSS in bytes) as JSON.
_MEASURE = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
                  "rss": ru.ru_maxrss * 1024}))
"""

TASKS = ("sync", "queue-ls", "status", "queue-process")
#: Jobs of the second sync, into the queue whose journal holds the first N.
MORE = 1000


@dataclass
class M:
    wall: float
    cpu: float
    rss: int


def measure(argv: Sequence[str]) -> M:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    d = json.loads(out)
    if d["rc"] != 0:
        raise SystemExit(f"{' '.join(argv[:3])} … failed with exit status {d['rc']}")
    return M(d["wall"], d["cpu"], d["rss"])


def gw() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "fspl-gw")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "fspl_gateway"]


def write_remote(root: str, n: int, size: int, first: int = 1) -> None:
    """N job files under ``root/jobs``, seqs from ``first`` (no fsync: they only have
    to exist)."""
    jdir = os.path.join(root, "jobs")
    os.makedirs(jdir)
    payload = b"x" * size
    for i in range(first, first + n):
        fd = os.open(os.path.join(jdir, q.new_job_filename()),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, encode_header(Meta(i, (1700000000 + i, 0), "NOP")) + payload)
        finally:
            os.close(fd)


def run_size(base: str, n: int, a: argparse.Namespace, fspl: str | None,
             res: dict[tuple[str, str, int], M]) -> None:
    remote, queue, fq = (os.path.join(base, x) for x in ("remote", "queue", "fspl-queue"))
    write_remote(remote, n, a.size)
    q.queue_init(queue)
    os.sync()
    g = gw()
    if "sync" in a.tasks:
        res[("fspl-gw", "sync", n)] = measure(
            [*g, "-l", "warn", "sync", "-t", "local", "-r", remote, "-q", queue,
             "--settle", "0", "--no-progress"])
        assert len(os.listdir(os.path.join(queue, "jobs"))) == n
    else:  # the queue straight from the remote's files
        os.rmdir(os.path.join(queue, "jobs"))
        os.rename(os.path.join(remote, "jobs"), os.path.join(queue, "jobs"))
    if fspl:
        shutil.copytree(queue, fq, ignore=shutil.ignore_patterns(".fspl-gw"))
    os.sync()
    for task, argv in (("queue-ls", ["queue-ls", "-q"]), ("status", ["status", "-q"])):
        if task not in a.tasks:
            continue
        res[("fspl-gw", task, n)] = measure([*g, *argv, queue])
        if fspl and task == "queue-ls":
            res[("fspl", task, n)] = measure([fspl, *argv, fq])
    if "queue-process" in a.tasks:
        # interleaved: ours, then fspl's on its copy
        res[("fspl-gw", "queue-process", n)] = measure([*g, "queue-process", "-q", queue,
                                                        "true"])
        assert not os.listdir(os.path.join(queue, "jobs"))
        if fspl:
            res[("fspl", "queue-process", n)] = measure([fspl, "queue-process", "-q", fq,
                                                         "true"])
            assert not os.listdir(os.path.join(fq, "jobs"))
    if "sync" in a.tasks:
        # the journal now remembers N files of this remote: a later sync of a few more
        # must not pay for that history
        more = os.path.join(base, "remote-more")
        write_remote(more, MORE, a.size, first=n + 1)
        os.rename(os.path.join(more, "jobs"), os.path.join(remote, "jobs"))
        os.sync()
        before = len(os.listdir(os.path.join(queue, "jobs")))
        res[("fspl-gw", "sync-more", n)] = measure(
            [*g, "-l", "warn", "sync", "-t", "local", "-r", remote, "-q", queue,
             "--settle", "0", "--no-progress"])
        assert len(os.listdir(os.path.join(queue, "jobs"))) == before + MORE


def fmt_us(sec: float, n: int) -> str:
    return f"{sec / n * 1e6:.0f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append", help="a queue size (repeatable)")
    ap.add_argument("--size", type=int, default=200, help="payload bytes per job")
    ap.add_argument("--no-fspl", action="store_true", help="do not run the real fspl")
    ap.add_argument("--skip", default="", help=f"comma-separated tasks to skip: {TASKS}")
    ap.add_argument("--dir", default=None, help="where the queues go (default /var/tmp)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs (best of) for each N up to 10,000 and for N = 0")
    a = ap.parse_args()
    sizes = sorted(a.n or [1000, 100_000])
    if sizes[0] < 1:
        ap.error("--n must be at least 1")
    a.tasks = [t for t in TASKS if t not in a.skip.split(",")]
    fspl = None if a.no_fspl else shutil.which("fspl")
    res: dict[tuple[str, str, int], M] = {}
    for n in [0, *sizes]:
        for _ in range(a.repeat if n <= 10_000 else 1):
            with tempfile.TemporaryDirectory(prefix="bench-scale-",
                                             dir=a.dir or "/var/tmp") as base:
                print(f"N = {n:,} …", file=sys.stderr, flush=True)
                one: dict[tuple[str, str, int], M] = {}
                run_size(base, n, a, fspl, one)
            for k, v in one.items():  # best of the repeats
                old = res.get(k)
                res[k] = v if old is None else M(min(old.wall, v.wall), min(old.cpu, v.cpu),
                                                 max(old.rss, v.rss))
            for (tool, task, m), v in res.items():
                if m == n:
                    print(f"  {tool} {task}: {v.wall:.2f} s wall, {v.cpu:.2f} s CPU, "
                          f"peak RSS {v.rss / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    lo, hi = sizes[0], sizes[-1]
    print(header(f"### Scale: {lo:,} and {hi:,} jobs of {a.size} B payload"))
    cols = ["tool", "task"]
    for n in sizes:
        cols += [f"per job at {n:,} (wall / CPU)"]
    cols += [f"ratio {hi:,}/{lo:,} (wall / CPU)", "target ≤ 1.2×"]
    for n in sizes:
        cols += [f"marginal per job at {n:,} (wall / CPU)"]
    cols += ["marginal ratio (wall / CPU)", "start-up (N = 0)", f"peak RSS at {hi:,}"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for tool in ("fspl-gw", "fspl"):
        for task in TASKS:
            ms = [res.get((tool, task, n)) for n in sizes]
            if any(m is None for m in ms):
                continue
            row = [tool, task]
            row += [f"{fmt_us(m.wall, n)} / {fmt_us(m.cpu, n)}"
                    for m, n in zip(ms, sizes, strict=True) if m is not None]
            m_lo, m_hi = res[(tool, task, lo)], res[(tool, task, hi)]
            rw = (m_hi.wall / hi) / (m_lo.wall / lo)
            rc = (m_hi.cpu / hi) / (m_lo.cpu / lo)
            row += [f"{rw:.2f}× / {rc:.2f}×",
                    ("yes" if rw <= 1.2 else "**no**") if tool == "fspl-gw" else ""]
            z = res[(tool, task, 0)]
            marg = {n: ((res[(tool, task, n)].wall - z.wall) / n,
                        (res[(tool, task, n)].cpu - z.cpu) / n) for n in sizes}
            row += [f"{marg[n][0] * 1e6:.0f} µs / {marg[n][1] * 1e6:.0f} µs" for n in sizes]
            mw = marg[hi][0] / marg[lo][0] if marg[lo][0] > 0 else float("nan")
            mc = marg[hi][1] / marg[lo][1] if marg[lo][1] > 0 else float("nan")
            row += [f"{mw:.2f}× / {mc:.2f}×", f"{z.wall:.2f} s / {z.cpu:.2f} s",
                    f"{m_hi.rss / 2**20:.0f} MiB"]
            print("| " + " | ".join(row) + " |")
    if all(("fspl-gw", "sync-more", n) in res for n in [0, *sizes]):
        print()
        print(f"Journal history: a sync of {MORE:,} more jobs of the same remote into the "
              "queue afterwards (the journal then holds N + 1,000 rows):")
        print()
        print("| N before | wall | CPU | per job (wall / CPU) |")
        print("|---|---|---|---|")
        for n in [0, *sizes]:
            m = res[("fspl-gw", "sync-more", n)]
            print(f"| {n:,} | {m.wall:.2f} s | {m.cpu:.2f} s | {fmt_us(m.wall, MORE)} / "
                  f"{fmt_us(m.cpu, MORE)} |")


if __name__ == "__main__":
    main()
