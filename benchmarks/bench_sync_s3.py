#!/usr/bin/env python3
"""Pull jobs from S3 (a moto server on 127.0.0.1, the test fixture's): ``fspl-gw sync``
against ``rclone copy`` on the same server, same data, same run, same parallelism
(``--concurrency C`` and ``--transfers C``).  There is no aws CLI on the machine: rclone
is the comparison.

Three measurements:

* **small jobs on loopback**: ``--jobs`` jobs of ``--size`` bytes straight to moto;
* **small jobs on a slow link**: the same through the test TCP proxy's latency mode
  (``tests/fixtures/tcpproxy.py``, ``--latency-ms`` each way, default 25 ms);
* **one big job** (``--big-mib``, default 1024 MiB, a multipart object): wall time of
  both tools and the peak RSS of the fspl-gw process (flat memory).

Each round runs the tools in turn (fspl-gw, rclone, and with ``--compare-full`` also
fspl-gw with ``-o lean_get=false``, the boto3 call for every GET), A B A B, and each
row reports the median and range of the wall time and the median CPU time (user+sys of
the process tree, from ``getrusage(RUSAGE_CHILDREN)`` deltas: less disturbed by other
load than wall time).  moto's own CPU is not in it (it runs for the whole benchmark).

fspl-gw validates every header, verifies each object's checksum (ETag/MD5 here), makes
each file durable, journals it; with ``--after-fetch delete`` it then removes the
remote copies (DeleteObjects).  rclone copy only downloads (it checks the MD5 too).
rclone 1.60 refuses AWS_CA_BUNDLE for an http endpoint, so it runs without it
(``--config /dev/null`` and an on-the-fly ``:s3,…:`` remote).

moto's server (werkzeug) answers every request with ``Connection: close``: both tools
open one TCP connection per request here, keep-alive cannot show.

Usage: ``python benchmarks/bench_sync_s3.py [--jobs N] [--size B] [--rounds R]
[--concurrency C …] [--latency-ms MS] [--modes loopback slow] [--big-mib M]
[--big-rounds R] [--compare-full]``.  ``--modes`` picks the small-job settings;
``--big-mib 0`` skips the big job.  Prints Markdown tables.
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
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sync_local import ROOT, gw_cmd, header, make_jobs  # noqa: E402

sys.path.insert(0, ROOT)
from benchmarks.common import peak_rss  # noqa: E402
from fspl_gateway.core import queue as q  # noqa: E402
from tests.fixtures.s3server import REGION, S3Server, start_moto  # noqa: E402
from tests.fixtures.tcpproxy import TcpProxy  # noqa: E402


@dataclass
class Row:
    tool: str
    setting: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    baseline: Row | None = None
    #: the target: at most this ratio of wall times to the baseline
    target: float | None = None
    #: bytes moved per run (big job: the rate column is MB/s instead of jobs/s)
    size: int = 0

    def run(self, argv: Sequence[str], env: dict[str, str]) -> None:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(list(argv), capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(f"{self.tool} {self.setting} failed ({r.returncode}): "
                             f"{r.stderr.strip()[-2000:]}")
        self.wall.append(dt)
        self.cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        print(f"{self.tool} {self.setting}: {dt:.2f} s, CPU {self.cpu[-1]:.2f} s",
              file=sys.stderr, flush=True)  # progress


def table(rows: Sequence[Row], jobs: int | None) -> str:
    out = ["| tool | setting | seconds (median, range) | " + ("jobs/s" if jobs else "MB/s")
           + " | CPU s (median) | ratio (wall) | target met? |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.wall:
            out.append(f"| {r.tool} | {r.setting} | not run | | | | |")
            continue
        med = statistics.median(r.wall)
        rate = f"{jobs / med:.0f}" if jobs else f"{r.size / med / 1e6:.0f}"
        ratio = met = ""
        b = r.baseline
        if b is not None and b.wall:
            x = med / statistics.median(b.wall)
            ratio = f"{x:.2f}× {b.tool}"
            if r.target is not None:
                met = (f"yes (≤ {r.target:.2f}×)" if x <= r.target
                       else f"**no** (target ≤ {r.target:.2f}×)")
        out.append(f"| {r.tool} | {r.setting} | {med:.2f} ({min(r.wall):.2f}–"
                   f"{max(r.wall):.2f}) | {rate} | {statistics.median(r.cpu):.2f} | "
                   f"{ratio} | {met} |")
    return "\n".join(out)


def env_for(server: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
                "AWS_DEFAULT_REGION": REGION, "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost"})
    return env


def upload(client: Any, bucket: str, prefix: str, jobs: list[tuple[str, bytes]]) -> None:
    def put(job: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/jobs/{job[0]}", Body=job[1])

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(put, jobs))


def gw_sync(endpoint: str, bucket: str, prefix: str, qdir: str, concurrency: int,
            after: str = "delete", extra: Sequence[str] = ()) -> list[str]:
    return [*gw_cmd(), "-l", "warn", "sync", "-t", "s3", "-r", f"{bucket}/{prefix}",
            "-q", qdir, "-o", f"endpoint_url={endpoint}", "-o", "path_style=true", *extra,
            "--concurrency", str(concurrency), "--no-progress", "--after-fetch", after]


def rclone_copy(rclone: str, server: S3Server, endpoint: str, bucket: str, path: str,
                dst: str, transfers: int) -> list[str]:
    remote = (f":s3,provider=Other,endpoint='{endpoint}',access_key_id={server.access_key},"
              f"secret_access_key={server.secret_key},region={REGION}:{bucket}/{path}")
    return [rclone, "copy", remote, dst, "--config", "/dev/null",
            "--transfers", str(transfers)]


def count_objects(client: Any, bucket: str, prefix: str) -> int:
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=prefix):
        n += len(page.get("Contents", []) or [])
    return n


def small_jobs(a: argparse.Namespace, server: S3Server, endpoint: str, tmp: str,
               what: str) -> list[Row]:
    env = env_for(server)
    client = server.client()
    rclone = shutil.which("rclone")
    rows: list[Row] = []
    for c in a.concurrency:
        rc = Row("rclone copy", f"{what}: --transfers {c}")
        gw = {after: Row("fspl-gw sync", f"{what}: --concurrency {c} --after-fetch {after}",
                         baseline=rc, target=1.0) for after in ("delete", "keep")}
        full = Row("fspl-gw sync", f"{what}: --concurrency {c} --after-fetch delete "
                                   "-o lean_get=false (boto3 call per GET)", baseline=rc)
        for _ in range(a.rounds):
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            client.create_bucket(Bucket=bucket)
            jobs = make_jobs(a.jobs, a.size)
            runs: list[tuple[Row, str, Sequence[str]]] = [
                (gw["delete"], "delete", ()), (gw["keep"], "keep", ())]
            if a.compare_full:
                runs.append((full, "delete", ("-o", "lean_get=false")))
            for i, (row, after, extra) in enumerate(runs):
                prefix = f"gw{i}"
                upload(client, bucket, prefix, jobs)
                qdir = os.path.join(tmp, f"q-{bucket}-{i}")
                q.queue_init(qdir)
                row.run(gw_sync(endpoint, bucket, prefix, qdir, c, after, extra), env)
                assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs
                assert count_objects(client, bucket, f"{prefix}/") == (
                    0 if after == "delete" else a.jobs)
                if rclone and i == 0:  # rclone right after the first: A B A B
                    upload(client, bucket, "rc", jobs)
                    dst = os.path.join(tmp, f"rc-{bucket}")
                    rc.run(rclone_copy(rclone, server, endpoint, bucket, "rc/jobs", dst, c),
                           env)
                    assert len(os.listdir(dst)) == a.jobs
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        rows += [gw["delete"], gw["keep"], *([full] if a.compare_full else []), rc]
    return rows


def big_job(a: argparse.Namespace, server: S3Server, tmp: str) -> tuple[list[Row], str]:
    """One job of ``--big-mib`` MiB (multipart, uploaded streamed), pulled by both tools
    ``--big-rounds`` times (A B A B); the peak RSS of one more fspl-gw run."""
    from fspl_gateway.core.packet import Meta, encode_header

    env = env_for(server)
    client = server.client()
    rclone = shutil.which("rclone")
    bucket = f"bench-big-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    name = q.new_job_filename()
    head = encode_header(Meta(1, (1700000000, 0), "NOP"))
    size = a.big_mib << 20
    src = os.path.join(tmp, "big-src")
    with open(src, "wb") as f:
        f.write(head)
        block = os.urandom(1 << 20)
        left = size - len(head)
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    client.upload_file(src, bucket, f"big/jobs/{name}")
    os.unlink(src)
    c = a.concurrency[0]
    rc = Row("rclone copy", f"one {a.big_mib} MiB job: --transfers {c} (its default "
                            "multi-thread download)", size=size)
    gw = Row("fspl-gw sync", f"one {a.big_mib} MiB job: --concurrency {c} --after-fetch keep",
             baseline=rc, target=1 / 0.9, size=size)
    for r in range(a.big_rounds):
        qdir = os.path.join(tmp, f"qbig{r}")
        q.queue_init(qdir)
        gw.run(gw_sync(server.endpoint, bucket, "big", qdir, c, "keep"), env)
        assert os.path.getsize(os.path.join(qdir, "jobs", name)) == size
        shutil.rmtree(qdir)
        if rclone:
            dst = os.path.join(tmp, f"rcbig{r}")
            rc.run(rclone_copy(rclone, server, server.endpoint, bucket, "big/jobs", dst, c),
                   env)
            assert os.path.getsize(os.path.join(dst, name)) == size
            shutil.rmtree(dst)
    qdir = os.path.join(tmp, "qbig-rss")
    q.queue_init(qdir)
    rss = peak_rss(gw_sync(server.endpoint, bucket, "big", qdir, c, "keep"), env=env,
                   stderr=subprocess.DEVNULL)
    shutil.rmtree(qdir)
    baseline = peak_rss([sys.executable, "-c", "import fspl_gateway.cli.main, boto3"], env=env)
    return [gw, rc], (f"Peak RSS of the fspl-gw process pulling it: {rss / (1 << 20):.0f} MiB "
                      f"(the same interpreter only importing fspl-gw and boto3: "
                      f"{baseline / (1 << 20):.0f} MiB).")


def _ver(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16],
                    help="fspl-gw --concurrency and rclone --transfers (the same)")
    ap.add_argument("--modes", nargs="*", default=["loopback", "slow"],
                    choices=["loopback", "slow"], help="small-job settings to run")
    ap.add_argument("--latency-ms", type=float, default=25.0,
                    help="one-way latency of the slow link")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big job (0: skip)")
    ap.add_argument("--big-rounds", type=int, default=2)
    ap.add_argument("--compare-full", action="store_true",
                    help="also run fspl-gw with -o lean_get=false (boto3 call per GET)")
    a = ap.parse_args()
    server = start_moto()
    small: list[Row] = []
    big: list[Row] = []
    note = ""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            if "loopback" in a.modes:
                small += small_jobs(a, server, server.endpoint, tmp, "loopback")
            if "slow" in a.modes:
                assert server.port is not None
                with TcpProxy(server.port, delay=a.latency_ms / 1000) as proxy:
                    small += small_jobs(a, server, f"http://127.0.0.1:{proxy.port}", tmp,
                                        f"{a.latency_ms:g} ms each way")
            if a.big_mib:
                big, note = big_job(a, server, tmp)
    finally:
        server.stop()
    vers = {"boto3": _ver("boto3"), "moto": _ver("moto")}
    if small:
        print(header(f"### S3 (moto server on 127.0.0.1): {a.jobs} jobs of ~{a.size} B, "
                     f"{a.rounds} rounds", vers))
        print(table(small, a.jobs))
    if big:
        print()
        print(header(f"### S3: one {a.big_mib} MiB job, {a.big_rounds} rounds", vers))
        print(table(big, None))
        print()
        print(note)


if __name__ == "__main__":
    main()
