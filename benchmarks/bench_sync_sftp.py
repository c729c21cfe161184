#!/usr/bin/env python3
"""Pull 1,000 small jobs (~2 KB) over SFTP from a real OpenSSH sshd on 127.0.0.1 (the
test fixture's, ``internal-sftp``): ``fspl-gw sync`` against ``rclone copy`` on the same
server, same data, same run.

rclone runs twice: with its defaults (for each file it runs ``md5sum`` on the server
through an extra SSH session to check the copy) and with ``--sftp-disable-hashcheck``
(size only).  fspl-gw validates every job header, checks the size, makes each file
durable, journals it and deletes the remote copies (pipelined SFTP REMOVEs).

Usage: ``python benchmarks/bench_sync_sftp.py [--jobs N] [--size B] [--rounds R]
[--concurrency C …] [--skip-rclone-default]``.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sync_local import ROOT, Row, gw_cmd, header, make_jobs, table, timed, write_jobs  # noqa: E402

sys.path.insert(0, ROOT)
from fspl_gateway.core import queue as q  # noqa: E402
from tests.fixtures.sshd import SSHD, make_sshd  # noqa: E402


def _ver(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def gw_sync(s: SSHD, path: str, qdir: str, concurrency: int, env: dict[str, str]) -> float:
    return timed([*gw_cmd(), "-l", "warn", "sync", "-t", "sftp", "-r",
                  f"{s.user}@{s.host}:{s.port}{path}", "-q", qdir,
                  "-o", f"identity_file={s.identity_file}", "-o", f"known_hosts={s.known_hosts}",
                  "-o", "ssh_config=none", "-o", "allow_agent=false",
                  "--concurrency", str(concurrency), "--no-progress", "--settle", "0"], env=env)


def rclone_copy(s: SSHD, path: str, dst: str, transfers: int, env: dict[str, str],
                fast: bool) -> float:
    remote = (f":sftp,host={s.host},port={s.port},user={s.user},"
              f"key_file='{s.identity_file}',known_hosts_file='{s.known_hosts}':{path}/jobs")
    cmd = [shutil.which("rclone") or "rclone", "copy", remote, dst, "--config", "/dev/null",
           "--transfers", str(transfers)]
    if fast:
        cmd.append("--sftp-disable-hashcheck")
    return timed(cmd, env=env, timeout=1800)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4])
    ap.add_argument("--rclone-transfers", type=int, default=4)
    ap.add_argument("--skip-rclone-default", action="store_true",
                    help="Do not run rclone with its defaults (md5sum per file: slow)")
    a = ap.parse_args()
    rclone = shutil.which("rclone")
    fast_key = f"rclone copy --transfers {a.rclone_transfers} --sftp-disable-hashcheck"
    rows = [Row("fspl-gw sync", f"--concurrency {c}", [], baseline=fast_key, target=1.0)
            for c in a.concurrency]
    rc_fast = Row("rclone copy", f"--transfers {a.rclone_transfers} --sftp-disable-hashcheck",
                  [])
    rc_def = Row("rclone copy", f"--transfers {a.rclone_transfers} (defaults: md5sum per "
                 "file)", [])
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        os.chmod(tmp, 0o755)
        keys = Path(tmp) / "sshd"
        keys.mkdir()
        s = make_sshd(keys)
        s.start()
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(keys)  # no ~/.ssh of the developer's
        try:
            for r in range(a.rounds):
                jobs = make_jobs(a.jobs, a.size)
                for row, c in zip(rows, a.concurrency, strict=True):
                    remote = os.path.join(tmp, f"gw{r}-{c}")
                    write_jobs(os.path.join(remote, "jobs"), jobs)
                    qdir = os.path.join(tmp, f"q{r}-{c}")
                    q.queue_init(qdir)
                    row.times.append(gw_sync(s, remote, qdir, c, env))
                    assert len(os.listdir(os.path.join(qdir, "jobs"))) == a.jobs
                    assert os.listdir(os.path.join(remote, "jobs")) == []
                if rclone:
                    for row, fast in ((rc_fast, True), (rc_def, False)):
                        if not fast and (a.skip_rclone_default or r > 0):
                            continue  # one round of the slow setting is plenty
                        remote = os.path.join(tmp, f"rc{r}-{fast}")
                        write_jobs(os.path.join(remote, "jobs"), jobs)
                        dst = os.path.join(tmp, f"rcdst{r}-{fast}")
                        row.times.append(rclone_copy(s, remote, dst, a.rclone_transfers,
                                                     env, fast))
                        assert len(os.listdir(dst)) == a.jobs
        finally:
            s.stop()
    if not rclone:
        rc_fast.note = rc_def.note = "rclone not installed"
    elif not rc_def.times:
        rc_def.note = "skipped"
    # fspl-gw against rclone's defaults too
    extra = [Row(r.tool, r.setting + " (vs rclone defaults)", r.times, baseline=(
        f"rclone copy {rc_def.setting}"), target=1.0) for r in rows if rc_def.times]
    print(header(f"### SFTP (OpenSSH sshd, internal-sftp, on 127.0.0.1): {a.jobs} jobs of "
                 f"~{a.size} B, median of {a.rounds} rounds (rclone defaults: 1 round)",
                 {"paramiko": _ver("paramiko")}))
    print(table([*rows, *extra, rc_fast, rc_def], a.jobs))


if __name__ == "__main__":
    main()
