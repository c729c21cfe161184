#!/usr/bin/env python3
"""SFTP from a real OpenSSH sshd on 127.0.0.1 (the test fixture's, ``internal-sftp``):
``fspl-gw sync`` on both data paths (``ssh=openssh``: the system ssh; ``ssh=paramiko``)
against ``rclone copy --sftp-disable-hashcheck`` with the same parallelism, same server,
same data, in one run, interleaved (A B A B …).

Modes:

* ``small`` (default): ``--jobs`` jobs of ``--size`` bytes (1,000 × 2,000 B);
* ``big``: one job of ``--big-size`` bytes (1 GiB), also against OpenSSH's own ``sftp``
  (``get`` in batch mode) and ``scp``;
* ``--delay S`` (either mode): every connection goes through the latency proxy of the
  tests (``tests/fixtures/tcpproxy.py``, S seconds each way, e.g. 0.025).

fspl-gw validates every job header (and its sha256), checks sizes, makes each file
durable, journals it and deletes the remote copies; rclone only copies.  Each row gives
the best and the median wall time over ``--rounds`` rounds and the client's CPU time
(user+sys of the process tree, ``RUSAGE_CHILDREN`` deltas; the server's CPU is not in
it), which load on a shared machine disturbs less than wall time.  The ratio compares
best times.

Usage: ``python benchmarks/bench_sync_sftp.py [--mode small|big] [--delay S] [--jobs N]
[--size B] [--big-size B] [--rounds R] [--concurrency C …] [--paths openssh paramiko]
[--rclone-transfers T] [--no-native]``.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sync_local import ROOT, gw_cmd, header, make_jobs, write_jobs  # noqa: E402

sys.path.insert(0, ROOT)
from fspl_gateway.core import queue as q  # noqa: E402
from fspl_gateway.core.packet import Meta, encode_header  # noqa: E402
from tests.fixtures.sshd import make_sshd  # noqa: E402
from tests.fixtures.tcpproxy import TcpProxy  # noqa: E402


@dataclass
class Row:
    tool: str
    setting: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    baseline: bool = False


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: Sequence[str], env: dict[str, str], row: Row, timeout: float = 3600) -> None:
    c0, t0 = _cpu(), time.perf_counter()
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    row.wall.append(time.perf_counter() - t0)
    row.cpu.append(_cpu() - c0)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} {' '.join(cmd[1:3])} failed ({r.returncode}): "
                         f"{r.stderr.strip()[-2000:]}")


def _ver(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return (r.stdout or r.stderr).splitlines()[0].strip() if (r.stdout or r.stderr) else "?"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("small", "big"), default="small")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="latency proxy: seconds each way (0: direct)")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--big-size", type=int, default=1 << 30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4])
    ap.add_argument("--paths", nargs="+", default=["openssh", "paramiko"],
                    choices=("openssh", "paramiko"))
    ap.add_argument("--rclone-transfers", type=int, default=4)
    ap.add_argument("--no-native", action="store_true",
                    help="big mode: skip OpenSSH's sftp and scp")
    a = ap.parse_args()
    rclone = shutil.which("rclone")
    big = a.mode == "big"
    njobs = 1 if big else a.jobs
    rows: list[tuple[Row, Callable[[int], None]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        os.chmod(tmp, 0o755)
        keys = Path(tmp) / "sshd"
        keys.mkdir()
        s = make_sshd(keys)
        s.start()
        proxy = TcpProxy(s.port, delay=a.delay) if a.delay else None
        port = proxy.port if proxy else s.port
        known = keys / "known_hosts-bench"
        known.write_text("".join(f"[{s.host}]:{p} {t} {b}\n" for p in {s.port, port}
                                 for t, b in s.host_keys))
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(keys)  # no ~/.ssh of the developer's
        ssh_opts = ["-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=yes", "-i", s.identity_file, "-F", "none"]
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        big_name = q.new_job_filename()
        if big:
            with open(data_dir / big_name, "wb") as f:  # a real job: header + payload
                f.write(encode_header(Meta(1, (1700000000, 0), "NOP")))
                for _ in range(a.big_size >> 20):
                    f.write(os.urandom(1 << 20))
        jobs = [] if big else make_jobs(a.jobs, a.size)

        def remote(tag: str) -> str:
            d = os.path.join(tmp, f"r-{tag}")
            os.makedirs(os.path.join(d, "jobs"))
            if big:
                os.link(data_dir / big_name, os.path.join(d, "jobs", big_name))
            else:
                write_jobs(os.path.join(d, "jobs"), jobs)
            return d

        def gw(path: str, c: int) -> tuple[Row, Callable[[int], None]]:
            row = Row("fspl-gw sync", f"ssh={path} --concurrency {c}")

            def run(r: int) -> None:
                d = remote(f"gw-{path}-{c}-{r}")
                qdir = os.path.join(tmp, f"q-{path}-{c}-{r}")
                q.queue_init(qdir)
                timed([*gw_cmd(), "-l", "warn", "sync", "-t", "sftp", "-r",
                       f"{s.user}@{s.host}:{port}{d}", "-q", qdir,
                       "-o", f"identity_file={s.identity_file}", "-o", f"known_hosts={known}",
                       "-o", "ssh_config=none", "-o", "allow_agent=false", "-o", f"ssh={path}",
                       "--concurrency", str(c), "--no-progress", "--settle", "0"], env, row)
                assert len(os.listdir(os.path.join(qdir, "jobs"))) == njobs
                assert os.listdir(os.path.join(d, "jobs")) == []
                shutil.rmtree(d)
                shutil.rmtree(qdir)
            return row, run

        for c in a.concurrency:
            for path in a.paths:
                rows.append(gw(path, c))
        if rclone:
            rc = Row("rclone copy", f"--transfers {a.rclone_transfers} "
                     "--sftp-disable-hashcheck", baseline=True)

            def run_rclone(r: int) -> None:
                d = remote(f"rc-{r}")
                dst = os.path.join(tmp, f"rcdst-{r}")
                spec = (f":sftp,host={s.host},port={port},user={s.user},"
                        f"key_file='{s.identity_file}',known_hosts_file='{known}':{d}/jobs")
                timed([rclone, "copy", spec, dst, "--config", "/dev/null", "--transfers",
                       str(a.rclone_transfers), "--sftp-disable-hashcheck"], env, rc)
                assert len(os.listdir(dst)) == njobs
                shutil.rmtree(d)
                shutil.rmtree(dst)
            rows.append((rc, run_rclone))
        if big and not a.no_native:
            sftp_row = Row("OpenSSH sftp", "get (batch mode)", baseline=True)
            scp_row = Row("OpenSSH scp", "", baseline=True)

            def run_sftp(r: int) -> None:
                d = remote(f"sftp-{r}")
                out = os.path.join(tmp, f"sftp-out-{r}")
                batch = os.path.join(tmp, "batch")
                Path(batch).write_text(f'get "{d}/jobs/{big_name}" "{out}"\n')
                timed(["sftp", "-q", "-b", batch, "-P", str(port), *ssh_opts,
                       f"{s.user}@{s.host}"], env, sftp_row)
                os.unlink(out)
                shutil.rmtree(d)

            def run_scp(r: int) -> None:
                d = remote(f"scp-{r}")
                out = os.path.join(tmp, f"scp-out-{r}")
                timed(["scp", "-q", "-P", str(port), *ssh_opts,
                       f"{s.user}@{s.host}:{d}/jobs/{big_name}", out], env, scp_row)
                os.unlink(out)
                shutil.rmtree(d)
            rows += [(sftp_row, run_sftp), (scp_row, run_scp)]
        try:
            for r in range(a.rounds):
                for _row, run in rows:  # interleaved: A B C A B C …
                    run(r)
        finally:
            if proxy:
                proxy.close()
            s.stop()
    base = [row for row, _ in rows if row.baseline]
    best_base = min(base, key=lambda b: min(b.wall)) if base else None
    where = f"through the latency proxy ({a.delay * 1000:g} ms each way)" if a.delay else \
        "on 127.0.0.1"
    what = (f"one job of {_gib(a.big_size)}" if big else
            f"{a.jobs} jobs of ~{a.size} B")
    print(header(f"### SFTP {where}: {what}, {a.rounds} rounds interleaved",
                 {"paramiko": _ver("paramiko"), "ssh": _tool_version(["ssh", "-V"])}))
    print()
    target = "≥ 90% of the speed of the fastest other tool" if big else "≤ 1.00× rclone"
    print("| tool | setting | best s | median s | client CPU s (best) | ratio (best) | "
          f"target: {target} |")
    print("|---|---|---|---|---|---|---|")
    for row, _ in rows:
        ratio = met = ""
        if best_base is not None and not row.baseline:
            x = min(row.wall) / min(best_base.wall)
            ratio = f"{x:.2f}× {best_base.tool}"
            ok = x <= (1 / 0.9 if big else 1.0)
            met = "yes" if ok else "**no**"
        print(f"| {row.tool} | {row.setting} | {min(row.wall):.2f} | "
              f"{statistics.median(row.wall):.2f} | {min(row.cpu):.2f} | {ratio} | {met} |")


if __name__ == "__main__":
    main()
