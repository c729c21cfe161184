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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    return timed_cpu(cmd, env, timeout)[0]


def timed_cpu(cmd: Sequence[str], env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds: user + sys of the command's process tree) of one
    run of ``cmd`` (it must exit 0).  CPU time is disturbed less than wall time by other
    load on a shared machine."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed "
                         f"({r.returncode}): {r.stderr.strip()[-2000:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


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
    #: CPU seconds (user + sys of the process tree) per run, where measured.
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def add(self, wall_cpu: tuple[float, float]) -> None:
        self.times.append(wall_cpu[0])
        self.cpu.append(wall_cpu[1])


def rows_by_key(rows: Sequence[Row]) -> dict[str, Row]:
    """The rows by the key a :attr:`Row.baseline` names ("tool setting")."""
    return {f"{r.tool} {r.setting}": r for r in rows}


def table(rows: Sequence[Row], jobs: int) -> str:
    """A Markdown table of the rows (medians; the ratio of each row to its baseline by
    wall time, and by CPU time where measured)."""
    by_key = rows_by_key(rows)
    cpu = any(r.cpu for r in rows)
    out = ["| tool | setting | seconds (median) | jobs/s | ratio | target met? |"
           + (" CPU s (median) | CPU ratio |" if cpu else ""),
           "|---|---|---|---|---|---|" + ("---|---|" if cpu else "")]
    for r in rows:
        if not r.times:
            out.append(f"| {r.tool} | {r.setting} | {r.note or 'not run'} | | | |"
                       + (" | |" if cpu else ""))
            continue
        ratio = met = cpu_ratio = ""
        base = by_key.get(r.baseline or "")
        if base is not None and base.times:
            x = r.median / base.median
            ratio = f"{x:.2f}× {base.tool} {base.setting}"
            if r.target is not None:
                met = (f"yes (≤ {r.target:.2f}×)" if x <= r.target
                       else f"**no** (target ≤ {r.target:.2f}×)")
            if r.cpu and base.cpu:
                cpu_ratio = f"{statistics.median(r.cpu) / statistics.median(base.cpu):.2f}×"
        spread = f" ({min(r.times):.2f}–{max(r.times):.2f})" if len(r.times) > 1 else ""
        line = (f"| {r.tool} | {r.setting} | {r.median:.2f}{spread} | "
                f"{jobs / r.median:.0f} | {ratio} | {met} |")
        if cpu:
            line += (f" {statistics.median(r.cpu):.2f} |" if r.cpu else " |") + f" {cpu_ratio} |"
        out.append(line)
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


def big_job(path: str, mib: int) -> None:
    """A real packet with ``mib`` MiB of random payload, written streaming."""
    with open(path, "wb") as f:
        f.write(encode_header(Meta(1, (1700000000, 0), "NOP")))
        chunk = os.urandom(1 << 20)
        for i in range(mib):  # vary the chunks cheaply so that nothing dedups
            f.write(chunk[i % 4096:] + chunk[:i % 4096])


def run_big(tmp: str, rtmp: str, a: argparse.Namespace, where: str) -> list[Row]:
    """One job of ``a.big_mib`` MiB from a local remote in ``rtmp`` into a queue in
    ``tmp``, against ``cp`` and ``rclone copyto`` of the same file (see the module doc)."""
    rclone = shutil.which("rclone")
    src = os.path.join(rtmp, "big.fspl")
    big_job(src, a.big_mib)
    name = q.new_job_filename()
    rows = {k: Row(tool, where, []) for k, tool in (
        ("cp", "cp"), ("cps", "cp, then sync FILE (durable)"), ("rc", "rclone copyto"),
        ("gw", "fspl-gw sync"), ("gwk", "fspl-gw sync --after-fetch keep"))}
    for k in ("gw", "gwk"):
        rows[k].baseline, rows[k].target = f"cp {where}", 1 / 0.9
    if not rclone:
        rows["rc"].note = "rclone not installed"
    for r in range(a.rounds):
        _big_round(tmp, rtmp, src, name, r, rows, rclone)
    os.unlink(src)
    return [rows[k] for k in ("gw", "gwk", "cp", "cps", "rc")]


def _big_round(tmp: str, rtmp: str, src: str, name: str, r: int, rows: dict[str, Row],
               rclone: str | None) -> None:
    remote = os.path.join(rtmp, f"remote{r}")
    rjobs = os.path.join(remote, "jobs")
    os.makedirs(rjobs)
    out = os.path.join(tmp, f"out{r}")
    same_fs = os.stat(tmp).st_dev == os.stat(rtmp).st_dev

    def sync(qdir: str, *extra: str) -> list[str]:
        q.queue_init(qdir)
        return [*gw_cmd(), "-l", "warn", "sync", "-t", "local", "-r", remote, "-q", qdir,
                "--settle", "0", *extra]

    def gw_move() -> tuple[float, float]:
        qdir = os.path.join(tmp, f"qm{r}")
        if same_fs:  # the job's only name: the move may link it instead of copying
            os.rename(src, os.path.join(rjobs, name))
        else:
            os.link(src, os.path.join(rjobs, name))
        try:
            return timed_cpu(sync(qdir))
        finally:
            got = os.path.join(qdir, "jobs", name)
            if same_fs:
                os.rename(got if os.path.exists(got) else os.path.join(rjobs, name), src)
            shutil.rmtree(qdir)

    def gw_keep() -> tuple[float, float]:
        qdir = os.path.join(tmp, f"qk{r}")
        os.link(src, os.path.join(rjobs, name))
        try:
            return timed_cpu(sync(qdir, "--after-fetch", "keep"))
        finally:
            os.unlink(os.path.join(rjobs, name))
            shutil.rmtree(qdir)

    runs: list[tuple[str, Any]] = [
        ("gw", gw_move), ("cp", lambda: timed_cpu(["cp", src, out])),
        ("gwk", gw_keep), ("cps", lambda: timed_cpu(["sh", "-c", 'cp "$1" "$2" && sync "$2"',
                                                     "sh", src, out]))]
    if rclone:
        runs.append(("rc", lambda: timed_cpu([rclone, "copyto", "--config", "/dev/null",
                                              src, out])))
    if r % 2:
        runs.reverse()  # neither side always goes first
    for k, fn in runs:
        os.sync()  # every run starts with nothing dirty
        rows[k].add(fn())
        if os.path.exists(out):
            os.unlink(out)
    shutil.rmtree(remote)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--other-fs", default="/dev/shm",
                    help="A directory on another file system for the second setting "
                         "('' to skip it).")
    ap.add_argument("--big-mib", type=int, default=1024,
                    help="Size of the one big job of the second benchmark (0 skips it).")
    ap.add_argument("--skip-small", action="store_true", help="Only the big job.")
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
    big: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for where, d in settings:
            with tempfile.TemporaryDirectory(prefix="bench-sync-remote-", dir=d or tmp) as rt:
                if not a.skip_small:
                    run_setting(os.path.join(tmp, "x"), rt, a, where, rows)
                    shutil.rmtree(os.path.join(tmp, "x"), ignore_errors=True)
                if a.big_mib > 0:
                    big += run_big(tmp, rt, a, where)
    for r in order:
        if not r.times and r.tool.startswith("rclone"):
            r.note = "rclone not installed"
    if not a.skip_small:
        print(header(f"### Sync from a local directory: {a.jobs} jobs of ~{a.size} B, "
                     f"--concurrency {a.concurrency}, median of {a.rounds} rounds"))
        print(table(order, a.jobs) + "\n")
    if big:
        print(header(f"### One {a.big_mib} MiB job from a local directory, median of "
                     f"{a.rounds} interleaved rounds (MiB/s column: the job's size over the "
                     "time; target: fspl-gw ≥ 90 % of cp's speed)"))
        print(table(big, a.big_mib).replace("jobs/s", "MiB/s"))


if __name__ == "__main__":
    main()
