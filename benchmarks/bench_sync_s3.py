#!/usr/bin/env python3
"""Pull 1,000 small jobs (~2 KB) from S3 (a moto server on 127.0.0.1, the test fixture's):
``fspl-gw sync`` against ``rclone copy`` on the same server, same data, same run; and the
peak RSS of ``fspl-gw sync`` pulling one 1 GiB job (flat memory).

fspl-gw validates every header, verifies each object's checksum (ETag/MD5 here),
makes each file durable, journals it and then deletes the remote copies (DeleteObjects);
rclone copy only downloads (it checks the MD5 too).  rclone 1.60 refuses AWS_CA_BUNDLE
for an http endpoint, so it runs without it (``--config /dev/null`` and an on-the-fly
``:s3,…:`` remote).

Usage: ``python benchmarks/bench_sync_s3.py [--jobs N] [--size B] [--rounds R]
[--concurrency C …] [--big-mib M]``.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sync_local import ROOT, Row, gw_cmd, header, make_jobs, table, timed  # noqa: E402

sys.path.insert(0, ROOT)
from benchmarks.common import peak_rss  # noqa: E402
from fspl_gateway.core import queue as q  # noqa: E402
from tests.fixtures.s3server import REGION, S3Server, start_moto  # noqa: E402


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


def gw_sync(server: S3Server, bucket: str, prefix: str, qdir: str, concurrency: int,
            after: str = "delete") -> list[str]:
    return [*gw_cmd(), "-l", "warn", "sync", "-t", "s3", "-r", f"{bucket}/{prefix}",
            "-q", qdir, "-o", f"endpoint_url={server.endpoint}", "-o", "path_style=true",
            "--concurrency", str(concurrency), "--no-progress", "--after-fetch", after]


def count_objects(client: Any, bucket: str, prefix: str) -> int:
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=prefix):
        n += len(page.get("Contents", []) or [])
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--rclone-transfers", type=int, default=4,
                    help="rclone's --transfers (its default is 4)")
    ap.add_argument("--big-mib", type=int, default=1024,
                    help="Size of the big job for the memory test (0: skip it)")
    a = ap.parse_args()
    server = start_moto()
    env = env_for(server)
    rclone = shutil.which("rclone")
    client = server.client()
    rows: list[Row] = []
    rc_row = Row("rclone copy", f"--transfers {a.rclone_transfers}", [])
    base = f"rclone copy --transfers {a.rclone_transfers}"
    runs = [(c, "delete") for c in a.concurrency] + [(a.concurrency[0], "keep")]
    gw_rows = {(c, after): Row("fspl-gw sync", f"--concurrency {c} --after-fetch {after}"
                               + (" (moves: deletes the remote copies)" if after == "delete"
                                  else " (copies, like rclone copy)"),
                               [], baseline=base, target=1.0)
               for c, after in runs}
    big_note = ""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            for r in range(a.rounds):
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                client.create_bucket(Bucket=bucket)
                jobs = make_jobs(a.jobs, a.size)
                for c, after in runs:
                    prefix = f"gw{c}{after}"
                    upload(client, bucket, prefix, jobs)
                    qdir = os.path.join(tmp, f"q{r}-{prefix}")
                    q.queue_init(qdir)
                    gw_rows[c, after].times.append(timed(
                        gw_sync(server, bucket, prefix, qdir, c, after), env=env))
                    assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs
                    assert count_objects(client, bucket, f"{prefix}/") == (
                        0 if after == "delete" else a.jobs)
                if rclone:
                    upload(client, bucket, "rc", jobs)
                    dst = os.path.join(tmp, f"rc{r}")
                    remote = (f":s3,provider=Other,endpoint='{server.endpoint}',"
                              f"access_key_id={server.access_key},"
                              f"secret_access_key={server.secret_key},"
                              f"region={REGION}:{bucket}/rc/jobs")
                    rc_row.times.append(timed(
                        [rclone, "copy", remote, dst, "--config", "/dev/null",
                         "--transfers", str(a.rclone_transfers)], env=env))
                    assert len(os.listdir(dst)) == a.jobs
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp, exist_ok=True)
            if a.big_mib:
                big_note = big_job(server, client, env, tmp, a.big_mib)
    finally:
        server.stop()
    if not rclone:
        rc_row.note = "rclone not installed"
    rows = [*gw_rows.values(), rc_row]
    print(header(f"### S3 (moto server on 127.0.0.1): {a.jobs} jobs of ~{a.size} B, "
                 f"median of {a.rounds} rounds", {"boto3": _ver("boto3"),
                                                  "moto": _ver("moto")}))
    print(table(rows, a.jobs))
    if big_note:
        print()
        print(big_note)


def _ver(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def big_job(server: S3Server, client: Any, env: dict[str, str], tmp: str, mib: int) -> str:
    """Upload one job of ``mib`` MiB (multipart, streamed), pull it, return a line with
    the peak RSS of the fspl-gw process."""
    from fspl_gateway.core.packet import Meta, encode_header

    bucket = f"bench-big-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    name = q.new_job_filename()
    head = encode_header(Meta(1, (1700000000, 0), "NOP"))
    size = mib << 20
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
    qdir = os.path.join(tmp, "qbig")
    q.queue_init(qdir)
    rss = peak_rss(gw_sync(server, bucket, "big", qdir, 4), env=env,
                   stderr=subprocess.DEVNULL)
    got = os.path.getsize(os.path.join(qdir, "jobs", name))
    assert got == size, (got, size)
    baseline = peak_rss([sys.executable, "-c", "import fspl_gateway.cli.main, boto3"], env=env)
    return (f"One {mib} MiB job pulled over S3 (multipart object): peak RSS of the "
            f"fspl-gw process {rss / (1 << 20):.0f} MiB (the same interpreter only "
            f"importing fspl-gw and boto3: {baseline / (1 << 20):.0f} MiB).")


if __name__ == "__main__":
    main()
