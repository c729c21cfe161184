#!/usr/bin/env python3
"""What trust costs, compared in the same run:

(a) **verification overhead**: ``fspl-gw sync -t local`` of 1,000 small jobs (~2 KB, real
    packets) without trust, against the same jobs each with its ``.minisig`` synced with
    ``--trust KEY --queue-id ID`` (every job read, its BLAKE2b prehash and sha256 taken,
    its signature and trusted comment checked, its (key, seq, sha256) claimed in the
    journal; the signatures listed, read and deleted from the remote too).  Target: the
    signed sync takes at most 1.10× the unsigned one.
(b) **decryption speed**: one big job encrypted with age (X25519) and signed, synced with
    ``--trust KEY --identity FILE`` (fetched into staging, verified, decrypted through
    ``age -d`` into staging, its header checked, fsynced, linked), against ``age -d -i FILE
    -o OUT`` of the same file, OUT on the same disk (both write the plaintext to disk;
    age does not fsync it, we do).  Target: our time at most 1.25× age's (≥ 80 % of its
    speed).

The two sides of each comparison run interleaved (A, B, A, B …), each from freshly built
inputs on disk (``os.sync()`` before the timed runs), and the medians are reported: the
machine may be shared.

Usage: ``python benchmarks/bench_trust.py [--jobs N] [--size BYTES] [--rounds R]
[--big-mib MIB] [--skip-small] [--skip-big] [--base DIR]``.  Prints Markdown tables with
the date, machine and versions, wall and CPU time (user + sys of the process tree, which
other load disturbs less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_sync_local import (  # noqa: E402
    Row,
    big_job,
    gw_cmd,
    header,
    make_jobs,
    table,
    timed_cpu,
    write_jobs,
)

from fspl_gateway.core import queue as q  # noqa: E402
from fspl_gateway.core.jobsig import sign_job  # noqa: E402
from fspl_gateway.core.minisign import generate_keypair  # noqa: E402

QID = "bench-site"
MiB = 1 << 20


def _sync(remote: str, qdir: str, *extra: str) -> list[str]:
    return [*gw_cmd(), "-l", "warn", "sync", "-t", "local", "-r", remote, "-q", qdir, "--settle", "0", *extra]


# -- (a) -------------------------------------------------------------------------------
def _variants(a: argparse.Namespace) -> list[tuple[str, dict[str, str] | None]]:
    """("" and this checkout), plus (" (base)", the environment running ``--base``)."""
    out: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if a.base:
        out.append((" (base)", {**os.environ, "PYTHONPATH": os.path.abspath(a.base)}))
    return out


def bench_small(tmp: str, a: argparse.Namespace, pub: str, key: object) -> list[Row]:
    rows: list[Row] = []
    pairs = []
    for label, env in _variants(a):
        plain = Row(f"fspl-gw{label} sync", f"{a.jobs} unsigned jobs", [])
        signed = Row(f"fspl-gw{label} sync --trust", f"{a.jobs} signed jobs", [],
                     baseline=f"{plain.tool} {plain.setting}", target=1.10)
        rows += [plain, signed]
        pairs.append((plain, signed, env))
    for r in range(a.rounds):
        base = os.path.join(tmp, f"small{r}")
        jobs = make_jobs(a.jobs, a.size)
        runs = []
        for v, (plain, signed, env) in enumerate(pairs):
            rem_a, rem_b = os.path.join(base, f"remote-a{v}"), os.path.join(base, f"remote-b{v}")
            write_jobs(os.path.join(rem_a, "jobs"), jobs)
            write_jobs(os.path.join(rem_b, "jobs"), jobs)
            jb = os.path.join(rem_b, "jobs")
            for name, _ in jobs:
                with open(os.path.join(jb, name + ".minisig"), "wb") as f:
                    f.write(sign_job(os.path.join(jb, name), key, QID))  # type: ignore[arg-type]
            qa, qb = os.path.join(base, f"qa{v}"), os.path.join(base, f"qb{v}")
            q.queue_init(qa)
            q.queue_init(qb)
            runs += [(plain, _sync(rem_a, qa, "--concurrency", str(a.concurrency)), qa, env, jb),
                     (signed, _sync(rem_b, qb, "--concurrency", str(a.concurrency),
                                    "--trust", pub, "--queue-id", QID), qb, env, jb)]
        os.sync()
        if r % 2:
            runs.reverse()  # neither side always goes first
        for row, cmd, qdir, env, _ in runs:
            row.add(timed_cpu(cmd, env))
            assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs, row.tool
        for *_, jb in runs:
            assert os.listdir(jb) == [], "the signatures leave the remote with their jobs"
        shutil.rmtree(base)
    return rows


# -- (b) -------------------------------------------------------------------------------
def bench_big(tmp: str, a: argparse.Namespace, pub: str, key: object) -> list[Row]:
    base = os.path.join(tmp, "big")
    os.makedirs(base)
    ident = os.path.join(base, "age.key")
    subprocess.run(["age-keygen", "-o", ident], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", ident], check=True, capture_output=True,
                               text=True).stdout.strip()
    plain_path, enc = os.path.join(base, "plain"), os.path.join(base, "job.age")
    big_job(plain_path, a.big_mib)
    subprocess.run(["age", "-r", recipient, "-o", enc, plain_path], check=True)
    os.unlink(plain_path)
    name = q.new_job_filename()
    sig = sign_job(enc, key, QID, seq=1)  # type: ignore[arg-type]
    size = f"{a.big_mib} MiB job"
    age = Row("age -d -o FILE", size, [])
    gws = [(Row(f"fspl-gw{label} sync --trust --identity", size, [],
                baseline=f"{age.tool} {age.setting}", target=1.25), env)
           for label, env in _variants(a)]
    for r in range(a.rounds):
        out = os.path.join(base, f"age-out{r}")
        runs: list[tuple[Row, list[str], dict[str, str] | None, str, str]] = [
            (age, ["age", "-d", "-i", ident, "-o", out, enc], None, "", "")]
        for v, (gw, env) in enumerate(gws):
            remote, qdir = os.path.join(base, f"remote{r}-{v}"), os.path.join(base, f"q{r}-{v}")
            jobs = os.path.join(remote, "jobs")
            os.makedirs(jobs)
            os.link(enc, os.path.join(jobs, name))  # the same bytes, nothing copied
            with open(os.path.join(jobs, name + ".minisig"), "wb") as f:
                f.write(sig)
            q.queue_init(qdir)
            runs.append((gw, _sync(remote, qdir, "--trust", pub, "--queue-id", QID,
                                   "--identity", ident), env, qdir, remote))
        if r % 2:
            runs.reverse()
        for row, cmd, env, _, _ in runs:
            os.sync()  # nothing dirty from the previous run
            row.add(timed_cpu(cmd, env))
        for *_, qdir, remote in runs:
            if qdir:
                got = os.listdir(os.path.join(qdir, "jobs"))
                assert got == [name], got
                assert os.path.getsize(os.path.join(qdir, "jobs", name)) == os.path.getsize(out)
                shutil.rmtree(qdir)
                shutil.rmtree(remote)
        os.unlink(out)
    return [age] + [gw for gw, _ in gws]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--dir", default=None, help="Where to build the inputs (default: $TMPDIR).")
    ap.add_argument("--base", default=None,
                    help="A checkout of another version (e.g. `git archive` of the base "
                         "commit, with fspl_gateway/transports linked to ../transports): its "
                         "fspl-gw runs too, interleaved, as the rows marked (base).")
    a = ap.parse_args()
    key = generate_keypair()
    pub = key.public_key.to_base64()
    age_v = subprocess.run(["age", "--version"], capture_output=True, text=True).stdout.strip()
    print(header(f"### Trust: median of {a.rounds} interleaved rounds",
                 {"age": age_v}))
    with tempfile.TemporaryDirectory(prefix="bench-trust-", dir=a.dir) as tmp:
        if not a.skip_small:
            rows = bench_small(tmp, a, pub, key)
            print(f"Verification overhead: {a.jobs} jobs of ~{a.size} B, "
                  f"--concurrency {a.concurrency}\n")
            print(table(rows, a.jobs) + "\n")
        if not a.skip_big:
            rows = bench_big(tmp, a, pub, key)
            print(f"Decryption: one {a.big_mib} MiB job (age X25519), plaintext written "
                  "to the same disk; jobs/s column = MiB/s\n")
            print(table(rows, a.big_mib).replace("jobs/s", "MiB/s") + "\n")


if __name__ == "__main__":
    main()
