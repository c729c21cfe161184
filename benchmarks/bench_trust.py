#!/usr/bin/env python3
"""What trust costs, compared in the same run:

(a) **verification overhead**: ``fspl-gw sync -t local`` of 1,000 small jobs (~2 KB, real
    packets) without trust, against the same jobs each with its ``.minisig`` synced with
    ``--trust KEY --queue-id ID`` (every job read, its BLAKE2b prehash and sha256 taken,
    its signature and trusted comment checked, its (key, seq, sha256) claimed in the
    journal; the signatures listed, read and deleted from the remote too).  Target: the
    signed sync takes at most 1.10× the unsigned one.
(b) **decryption speed**: one big job encrypted with age (X25519) and signed.  Timed:
    ``age -d -i FILE -o OUT`` (OUT on the same disk, not fsynced); the same followed by
    ``sync OUT`` (the durability a receiver needs before the remote copy is deleted);
    ``sync --trust KEY --decoder 'age -d -i FILE'`` of the job kept encrypted (fetched,
    verified, its header read through the decoder, fsynced, linked);
    and ``sync --trust KEY --identity FILE`` (the same, plus the decryption at the
    boundary: the verified ciphertext decrypted in staging, its plaintext hashed, checked
    and fsynced instead).  **Decryption's cost in a sync** is the last minus the one
    before, paired per round; target: at most 1.25× age's time (≥ 80 % of its speed).
    The whole sync against bare ``age -d`` is shown too (it also fetches, verifies and
    fsyncs, which age does not).

The two sides of each comparison run interleaved (A, B, A, B …), each from freshly built
inputs on disk (``os.sync()`` before the timed runs), and the medians are reported: the
machine may be shared.  For (a), the signed sync's time over the unsigned one's of the
same round is also given per round (median and quartiles), which a slow drift of the
machine's speed disturbs less than the ratio of the two medians.

Usage: ``python benchmarks/bench_trust.py [--jobs N] [--size BYTES] [--rounds R]
[--big-mib MIB] [--skip-small] [--skip-big] [--base DIR]``.  Prints Markdown tables with
the date, machine and versions, wall and CPU time (user + sys of the process tree, which
other load disturbs less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

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
    rows_by_key,
    table,
    timed_cpu,
    write_jobs,
)

from fspl_gateway.core import queue as q  # noqa: E402
from fspl_gateway.core.jobsig import sign_job  # noqa: E402
from fspl_gateway.core.minisign import generate_keypair  # noqa: E402

QID = "bench-site"
MiB = 1 << 20


class Remote:
    """Where part (a)'s remotes live: ``make(tag, files)`` puts the files of one remote
    there and gives the ``sync`` arguments that reach it; ``left(tag)`` counts what a
    sync left there.  A local directory here; S3 and SFTP below."""

    name = "local"
    env: dict[str, str] | None = None

    def __init__(self, tmp: str, latency: float = 0.0) -> None:
        self.tmp = tmp
        #: The TCP proxy adding ``latency`` seconds each way (network remotes), if any.
        self.proxy: Any = None

    def _through_proxy(self, port: int, latency: float) -> int:
        """The port to reach ``port`` on: itself, or a proxy adding ``latency`` each way."""
        if not latency:
            return port
        from tests.fixtures.tcpproxy import TcpProxy
        self.proxy = TcpProxy(port, delay=latency)
        return int(self.proxy.port)

    def make(self, tag: str, files: list[tuple[str, bytes]]) -> list[str]:
        return ["-t", "local", "-r", self._write(tag, files)]

    def _write(self, tag: str, files: list[tuple[str, bytes]]) -> str:
        """The files written into ``<tag>/jobs`` here; the remote's directory."""
        write_jobs(os.path.join(self.tmp, tag, "jobs"), files)
        return os.path.join(self.tmp, tag)

    def left(self, tag: str) -> int:
        return len(os.listdir(os.path.join(self.tmp, tag, "jobs")))

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()


class S3Remote(Remote):
    """A bucket on the test fixture's moto server (real HTTP on 127.0.0.1)."""

    name = "s3"

    def __init__(self, tmp: str, latency: float = 0.0) -> None:
        from bench_sync_s3 import env_for, upload

        from tests.fixtures.s3server import start_moto
        super().__init__(tmp)
        self.server = start_moto()
        assert self.server.port is not None  # moto on 127.0.0.1
        self.endpoint = f"http://127.0.0.1:{self._through_proxy(self.server.port, latency)}"
        self.env = env_for(self.server)
        self.client = self.server.client()
        self.bucket = "bench-trust"
        self.client.create_bucket(Bucket=self.bucket)
        self._upload = upload

    def make(self, tag: str, files: list[tuple[str, bytes]]) -> list[str]:
        self._upload(self.client, self.bucket, tag, files)
        return ["-t", "s3", "-r", f"{self.bucket}/{tag}", "-o",
                f"endpoint_url={self.endpoint}", "-o", "path_style=true"]

    def left(self, tag: str) -> int:
        from bench_sync_s3 import count_objects
        return count_objects(self.client, self.bucket, f"{tag}/")

    def close(self) -> None:
        super().close()
        self.server.stop()


class SftpRemote(Remote):
    """A directory served by the test fixture's OpenSSH sshd (internal-sftp) on
    127.0.0.1, reached through paramiko."""

    name = "sftp"

    def __init__(self, tmp: str, latency: float = 0.0) -> None:
        from pathlib import Path

        from tests.fixtures.sshd import make_sshd
        super().__init__(tmp)
        keys = Path(tmp) / "sshd"
        keys.mkdir(parents=True)
        self.sshd = make_sshd(keys)
        self.sshd.start()
        s = self.sshd
        self.port = self._through_proxy(s.port, latency)
        self.known = keys / "known_hosts-bench"
        self.known.write_text("".join(f"[{s.host}]:{self.port} {t} {b}\n"
                                      for t, b in s.host_keys))
        self.env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        self.env["HOME"] = str(keys)  # no ~/.ssh of the developer's

    def make(self, tag: str, files: list[tuple[str, bytes]]) -> list[str]:
        s = self.sshd
        return ["-t", "sftp", "-r", f"{s.user}@{s.host}:{self.port}"
                f"{self._write(tag, files)}", "-o", f"identity_file={s.identity_file}",
                "-o", f"known_hosts={self.known}", "-o", "ssh_config=none",
                "-o", "allow_agent=false"]

    def close(self) -> None:
        super().close()
        self.sshd.stop()


REMOTES: dict[str, type[Remote]] = {"local": Remote, "s3": S3Remote, "sftp": SftpRemote}


def _sync(where: list[str], qdir: str, *extra: str) -> list[str]:
    return [*gw_cmd(), "-l", "warn", "sync", *where, "-q", qdir, "--settle", "0",
            "--no-progress", *extra]


# -- (a) -------------------------------------------------------------------------------
def _variants(a: argparse.Namespace) -> list[tuple[str, dict[str, str] | None]]:
    """("" and this checkout), plus (" (base)", the environment running ``--base``)."""
    out: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if a.base:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(a.base)}
        where = subprocess.run([sys.executable, "-c", "import fspl_gateway; print(fspl_gateway.__file__)"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(os.path.abspath(a.base)):
            raise SystemExit(f"--base {a.base}: Python imports {where} instead")
        out.append((" (base)", env))
    return out


def bench_small(tmp: str, a: argparse.Namespace, pub: str, key: object,
                remote: Remote) -> list[Row]:
    rows: list[Row] = []
    pairs = []
    where = "" if remote.name == "local" else f" -t {remote.name}"
    # Context: what deleting the signature files costs on this disk by itself (one C
    # loop of unlink, no Python), which a signed sync must do and an unsigned one not.
    rm = Row("find -delete", f"the {a.jobs} signature files alone", [],
             baseline=f"fspl-gw sync{where} {a.jobs} unsigned jobs")
    for label, env in _variants(a):
        plain = Row(f"fspl-gw{label} sync{where}", f"{a.jobs} unsigned jobs", [])
        signed = Row(f"fspl-gw{label} sync{where} --trust", f"{a.jobs} signed jobs", [],
                     baseline=f"{plain.tool} {plain.setting}", target=1.10)
        rows += [plain, signed]
        if remote.env is not None:  # the server's credentials, and --base's PYTHONPATH
            env = {**remote.env, **({} if env is None else {"PYTHONPATH": env["PYTHONPATH"]})}
        pairs.append((plain, signed, env))
    for r in range(a.rounds):
        base = os.path.join(tmp, f"small{r}")
        os.makedirs(base)
        jobs = make_jobs(a.jobs, a.size)
        signed_files = []
        for name, data in jobs:
            path = os.path.join(base, name)
            with open(path, "wb") as f:
                f.write(data)
            signed_files += [(name, data), (name + ".minisig",
                                            sign_job(path, key, QID))]  # type: ignore[arg-type]
            os.unlink(path)
        runs = []
        for v, (plain, signed, env) in enumerate(pairs):
            tag_a, tag_b = f"r{r}-a{v}", f"r{r}-b{v}"
            qa, qb = os.path.join(base, f"qa{v}"), os.path.join(base, f"qb{v}")
            q.queue_init(qa)
            q.queue_init(qb)
            runs += [(plain, _sync(remote.make(tag_a, jobs), qa, "--concurrency",
                                   str(a.concurrency)), qa, env, tag_a),
                     (signed, _sync(remote.make(tag_b, signed_files), qb, "--concurrency",
                                    str(a.concurrency), "--trust", pub, "--queue-id", QID),
                      qb, env, tag_b)]
        if remote.name == "local":
            sigs = os.path.join(base, "sigs")
            write_jobs(sigs, [f for f in signed_files if f[0].endswith(".minisig")])
            runs.append((rm, ["find", sigs, "-name", "*.minisig", "-delete"], "", None, ""))
        os.sync()
        if r % 2:
            runs.reverse()  # neither side always goes first
        for row, cmd, qdir, env, _ in runs:
            row.add(timed_cpu(cmd, env))
            assert not qdir or len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs, row.tool
        for *_, tag in runs:
            assert not tag or remote.left(tag) == 0, "the signatures leave with their jobs"
        shutil.rmtree(base)
    return rows + ([rm] if rm.times else [])


def paired(rows: list[Row]) -> str:
    """Per round, each signed sync's time over the unsigned one's of the same round (they
    ran back to back, on the same machine state): the median and quartiles of those
    ratios, which slow drifts of a shared machine disturb less than the ratio of the two
    medians."""
    out = []
    by_key = rows_by_key(rows)
    for r in rows:
        base = by_key.get(r.baseline or "")
        if r.target is None or base is None or len(r.times) != len(base.times) or not r.times:
            continue
        ratios = [s / u for s, u in zip(r.times, base.times, strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out.append(f"- {r.tool} ÷ {base.tool}, per round: median {statistics.median(ratios):.2f}× "
                   f"(quartiles {q[0]:.2f}–{q[2]:.2f}, {len(ratios)} rounds)")
    return "\n".join(out)


def mount_of(path: str) -> str:
    """The file system holding ``path`` and its mount options (from /proc/mounts)."""
    best = ("", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, point, kind, options, *_ = line.split()
                if (path == point or path.startswith(point.rstrip("/") + "/")) \
                        and len(point) >= len(best[0]):
                    best = (point, f"{kind} ({options}) on {dev}")
    except OSError:
        pass
    return best[1]


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
    age_sync = Row("age -d -o FILE; sync FILE", size, [])
    variants = []
    for label, env in _variants(a):
        kept = Row(f"fspl-gw{label} sync --trust", f"{size}, kept encrypted", [])
        whole = Row(f"fspl-gw{label} sync --trust --identity", size, [],
                    baseline=f"{age.tool} {age.setting}", target=1.25)
        added = Row(f"decryption in the sync{label}",
                    f"{size} (--identity minus kept encrypted)", [],
                    baseline=f"{age.tool} {age.setting}", target=1.25)
        variants.append((kept, whole, added, env))
    for r in range(a.rounds):
        out = os.path.join(base, f"age-out{r}")
        runs: list[tuple[Row, list[str], dict[str, str] | None, str, str]] = [
            (age, ["age", "-d", "-i", ident, "-o", out, enc], None, "", ""),
            (age_sync, ["sh", "-c", 'age -d -i "$1" -o "$2" "$3" && sync "$2"', "sh", ident,
                        out + "s", enc], None, "", "")]
        for kept, whole, _, env in variants:
            for row, extra in ((kept, ["--decoder", f"age -d -i {ident}"]),
                               (whole, ["--identity", ident])):
                n = len(runs)
                remote, qdir = os.path.join(base, f"remote{r}-{n}"), os.path.join(base, f"q{r}-{n}")
                jobs = os.path.join(remote, "jobs")
                os.makedirs(jobs)
                os.link(enc, os.path.join(jobs, name))  # the same bytes, copied by the sync
                with open(os.path.join(jobs, name + ".minisig"), "wb") as f:
                    f.write(sig)
                q.queue_init(qdir)
                runs.append((row, _sync(["-t", "local", "-r", remote], qdir, "--trust", pub, "--queue-id", QID, *extra),
                             env, qdir, remote))
        if r % 2:
            runs.reverse()
        for row, cmd, env_, _, _ in runs:
            os.sync()  # nothing dirty from the previous run
            row.add(timed_cpu(cmd, env_))
        for kept, whole, added, _ in variants:
            added.times.append(whole.times[-1] - kept.times[-1])
            added.cpu.append(whole.cpu[-1] - kept.cpu[-1])
        wholes = {id(v[1]) for v in variants}
        for row, _, _, qdir, remote in runs:
            if qdir:
                got = os.listdir(os.path.join(qdir, "jobs"))
                assert got == [name], got
                want = os.path.getsize(out if id(row) in wholes else enc)
                assert os.path.getsize(os.path.join(qdir, "jobs", name)) == want
                shutil.rmtree(qdir)
                shutil.rmtree(remote)
        os.unlink(out)
        os.unlink(out + "s")
    return [age, age_sync] + [row for v in variants for row in v[:3]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--transports", nargs="+", default=["local"], choices=sorted(REMOTES),
                    help="Where part (a)'s remotes are: a local directory (the default), "
                         "a bucket on a moto server, an sshd's directory.")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="s3 and sftp: reach the server through a TCP proxy that adds this "
                         "latency each way (the test fixture's), as over a real network.")
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
        os.chdir(tmp)  # not a checkout: `python -m` puts the working directory first
        print(f"Inputs and queues on {mount_of(os.path.realpath(tmp))}.\n")
        for name in [] if a.skip_small else a.transports:
            remote = REMOTES[name](os.path.join(tmp, f"remote-{name}"),
                                   a.latency_ms / 1000 if name != "local" else 0.0)
            try:
                rows = bench_small(tmp, a, pub, key, remote)
            finally:
                remote.close()
            link = f", {a.latency_ms:g} ms each way" if a.latency_ms and name != "local" else ""
            print(f"Verification overhead ({name}{link}): {a.jobs} jobs of ~{a.size} B, "
                  f"--concurrency {a.concurrency}\n")
            print(table(rows, a.jobs) + "\n")
            print(paired(rows) + "\n")
        if not a.skip_big:
            rows = bench_big(tmp, a, pub, key)
            print(f"Decryption: one {a.big_mib} MiB job (age X25519), plaintext written "
                  "to the same disk; jobs/s column = MiB/s\n")
            print(table(rows, a.big_mib).replace("jobs/s", "MiB/s") + "\n")


if __name__ == "__main__":
    main()
