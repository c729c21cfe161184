#!/usr/bin/env python3
"""Pull 1,000 small jobs (~2 KB, real packets) from a local-directory remote into a local
queue: ``fspl-gw sync`` against ``rclone move`` (Debian's rclone), same machine, same run.

Each tool gets a freshly built remote (same files) and an empty destination; the time is
the wall clock of the whole command, process start included.  fspl-gw does more per file
than rclone (validates each header, makes each file and the jobs/ directory durable,
records each in its journal); rclone moves the bytes (``--config /dev/null``, default 4
transfers; on the same file system it renames, copies nothing and fsyncs nothing).

Two settings: the remote beside the queue (same file system), and the remote in another
file system (``--other-fs``, default /dev/shm), where both tools have to copy.

Usage: ``python benchmarks/bench_sync_local.py [--jobs N] [--size BYTES] [--rounds R]``.
Prints a Markdown table (median of R rounds) with the date, machine and versions.

This module also holds the helpers of ``bench_sync_s3.py`` and ``bench_sync_sftp.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fspl_gateway.core import queue as q  # noqa: E402
from fspl_gateway.core.packet import Meta, encode_header  # noqa: E402


# -- shared helpers ------------------------------------------------------------------
def make_jobs(n: int, size: int) -> list[tuple[str, bytes]]:
    """``n`` real job files (name, bytes): a header and ``size`` random payload bytes."""
    return [(q.new_job_filename(),
             encode_header(Meta(i, (1700000000 + i, 0), "NOP")) + os.urandom(size))
            for i in range(1, n + 1)]


def write_jobs(jobs_dir: str, jobs: Sequence[tuple[str, bytes]]) -> None:
    os.makedirs(jobs_dir, exist_ok=True)
    for name, data in jobs:
        with open(os.path.join(jobs_dir, name), "wb") as f:
            f.write(data)


def build_remote(root: str, n: int, size: int) -> None:
    write_jobs(os.path.join(root, "jobs"), make_jobs(n, size))


def gw_cmd() -> list[str]:
    return [sys.executable, "-m", "fspl_gateway"]


def timed(cmd: Sequence[str], env: Mapping[str, str] | None = None,
          timeout: float | None = None) -> float:
    """Wall-clock seconds of one run of ``cmd`` (it must exit 0)."""
    t0 = time.perf_counter()
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed "
                         f"({r.returncode}): {r.stderr.strip()[-2000:]}")
    return dt


def versions(extra: Mapping[str, str] | None = None) -> str:
    from importlib.metadata import version

    parts = [f"fspl-gateway {version('fspl-gateway')}",
             f"Python {platform.python_version()}"]
    rclone = shutil.which("rclone")
    if rclone:
        out = subprocess.run([rclone, "version"], capture_output=True, text=True).stdout
        parts.append(out.splitlines()[0] if out else "rclone ?")
    for k, v in (extra or {}).items():
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def header(title: str, extra_versions: Mapping[str, str] | None = None) -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{title}\n\n"
            f"{datetime.date.today().isoformat()}; {os.cpu_count()} cores ({cpu}), "
            f"{platform.system()} {platform.release()}; {versions(extra_versions)}\n")


@dataclass
class Row:
    tool: str
    setting: str
    times: list[float]
    #: The row this one is compared with (its median is the 1.00 of the ratio).
    baseline: str | None = None
    #: The target ratio (fspl-gw time / baseline time) and its wording.
    target: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def table(rows: Sequence[Row], jobs: int) -> str:
    by_key = {f"{r.tool} {r.setting}": r for r in rows}
    out = ["| tool | setting | seconds (median) | jobs/s | ratio | target met? |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if not r.times:
            out.append(f"| {r.tool} | {r.setting} | {r.note or 'not run'} | | | |")
            continue
        ratio = met = ""
        base = by_key.get(r.baseline or "")
        if base is not None and base.times:
            x = r.median / base.median
            ratio = f"{x:.2f}× {base.tool} {base.setting}"
            if r.target is not None:
                met = (f"yes (≤ {r.target:.2f}×)" if x <= r.target
                       else f"**no** (target ≤ {r.target:.2f}×)")
        spread = f" ({min(r.times):.2f}–{max(r.times):.2f})" if len(r.times) > 1 else ""
        out.append(f"| {r.tool} | {r.setting} | {r.median:.2f}{spread} | "
                   f"{jobs / r.median:.0f} | {ratio} | {met} |")
    return "\n".join(out)


# -- this benchmark --------------------------------------------------------------------
def run_setting(tmp: str, rtmp: str, a: argparse.Namespace, where: str,
                rows: dict[str, Row]) -> None:
    rclone = shutil.which("rclone")
    gw, rc = rows[f"gw {where}"], rows[f"rc {where}"]
    for r in range(a.rounds):
        base = os.path.join(tmp, f"r{r}")
        rbase = os.path.join(rtmp, f"r{r}")
        os.makedirs(base)
        src_gw, src_rc = os.path.join(rbase, "remote-gw"), os.path.join(rbase, "remote-rc")
        build_remote(src_gw, a.jobs, a.size)
        shutil.copytree(src_gw, src_rc)
        os.sync()  # both tools start from files already on disk
        qdir = os.path.join(base, "queue")
        q.queue_init(qdir)
        # --settle 0: the jobs were written elsewhere and renamed in whole (the writer
        # guideline); rclone does not wait for growing files either
        gw.times.append(timed([*gw_cmd(), "-l", "warn", "sync", "-t", "local", "-r", src_gw,
                               "-q", qdir, "--concurrency", str(a.concurrency),
                               "--settle", "0"]))
        assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs
        assert os.listdir(os.path.join(src_gw, "jobs")) == []
        if rclone:
            dst = os.path.join(base, "rclone-dst")
            rc.times.append(timed([rclone, "move", os.path.join(src_rc, "jobs"), dst,
                                   "--config", "/dev/null", "--transfers",
                                   str(a.concurrency)]))
            assert len(os.listdir(dst)) == a.jobs
        shutil.rmtree(base)
        shutil.rmtree(rbase)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--other-fs", default="/dev/shm",
                    help="A directory on another file system for the second setting "
                         "('' to skip it).")
    a = ap.parse_args()
    settings = [("same file system", None)]
    if a.other_fs:
        settings.append((f"remote in {a.other_fs} (another file system)", a.other_fs))
    rows: dict[str, Row] = {}
    order: list[Row] = []
    for where, _d in settings:
        rc = Row("rclone move", where, [])
        gw = Row("fspl-gw sync", where, [], baseline=f"rclone move {where}", target=1.0)
        rows[f"gw {where}"], rows[f"rc {where}"] = gw, rc
        order += [gw, rc]
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for where, d in settings:
            with tempfile.TemporaryDirectory(prefix="bench-sync-remote-", dir=d or tmp) as rt:
                run_setting(os.path.join(tmp, "x"), rt, a, where, rows)
                shutil.rmtree(os.path.join(tmp, "x"), ignore_errors=True)
    for r in order:
        if not r.times and r.tool.startswith("rclone"):
            r.note = "rclone not installed"
    print(header(f"### Sync from a local directory: {a.jobs} jobs of ~{a.size} B, "
                 f"--concurrency {a.concurrency}, median of {a.rounds} rounds"))
    print(table(order, a.jobs))


if __name__ == "__main__":
    main()
