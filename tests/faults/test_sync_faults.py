"""Faults for sync and push: kill -9 at random moments, a full disk, a corrupt remote file.

The kill trials run the real command as a subprocess on a local-directory remote; after
every kill no partial ``fspl-*.fspl`` is visible (each visible job equals its source),
nothing is lost (each source job is on one side or the other), and a final rerun
completes with exactly the source set.  Trial counts: ``FSPL_GW_FAULT_TRIALS`` kills per
engine (default 20).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.fsutil import TMP_PREFIX
from tests.unit.test_sync import job_set, make_remote, remote_jobs, run_cli

KILLS = int(os.environ.get("FSPL_GW_FAULT_TRIALS", "20"))
KILLS_PER_SETUP = 5
N_JOBS = 200  # more than one commit batch (sync.BATCH)
JOB_SIZE = 75_000


def cli_cmd() -> list[str]:
    return [sys.executable, "-m", "fspl_gateway"]


def job_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if q.is_job_filename(p.name)}


def kill_midway(args: list[str], started: Path, rng: random.Random) -> int | None:
    """Start ``fspl-gw ARGS``; once ``started`` exists (the run has begun writing), wait a
    random moment and SIGKILL it.  Returns its exit code if it finished first."""
    existed = started.exists()  # left by an earlier run: allow for interpreter start-up
    p = subprocess.Popen([*cli_cmd(), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not started.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.12) + (0.15 if existed else 0.0))
    rc = p.poll()
    if rc is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return None
    return rc


@pytest.mark.slow
def test_kill9_sync(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("FSPL_GW_FAULT_SEED", "sync"))
    kills = mid = 0
    setup = 0
    shm = Path("/dev/shm")
    while kills < KILLS:
        setup += 1
        base = tmp_path / f"s{setup}"
        src = job_set(N_JOBS, size=JOB_SIZE)
        # every other setup: the remote on another file system (copy path) instead of
        # the same one (hard-link path), so both are killed mid-way
        rbase = base
        if setup % 2 == 0 and shm.is_dir() and os.access(shm, os.W_OK):
            rbase = Path(tempfile.mkdtemp(dir=shm, prefix="fspl-gw-fault-"))
        remote = make_remote(rbase / "remote", src)
        base.mkdir(exist_ok=True)
        qdir = base / "queue"
        q.queue_init(str(qdir))
        args = ["sync", "-t", "local", "-r", str(remote), "-q", str(qdir), "--concurrency",
                str(rng.choice([1, 4]))]
        for _ in range(KILLS_PER_SETUP):
            rc = kill_midway(args, qdir / ".fspl-gw" / "staging", rng)
            kills += rc is None
            local = job_files(qdir / "jobs")
            for name, data in local.items():  # no partial job, nothing foreign
                assert src.get(name) == data, f"partial or foreign job {name} after kill"
            left = remote_jobs(remote)
            assert set(local) | set(left) == set(src), "a job was lost"
            mid += rc is None and bool(left)  # killed before the run was over
            for name, data in left.items():
                assert src[name] == data  # the remote copies are untouched
            if rc is not None:
                break
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert job_files(qdir / "jobs") == src  # exactly the source set, each once
        assert os.listdir(qdir / "jobs") == list(job_files(qdir / "jobs"))  # no debris
        assert remote_jobs(remote) == {}
        assert os.listdir(qdir / ".fspl-gw" / "staging") == []
        shutil.rmtree(base)
        if rbase != base:
            shutil.rmtree(rbase)
    assert mid >= KILLS // 2, f"only {mid} of {kills} kills landed mid-transfer"


@pytest.mark.slow
def test_kill9_push(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("FSPL_GW_FAULT_SEED", "push"))
    kills = mid = 0
    setup = 0
    while kills < KILLS:
        setup += 1
        base = tmp_path / f"p{setup}"
        src = job_set(N_JOBS, size=JOB_SIZE)
        outbox = base / "outbox"
        base.mkdir()
        q.queue_init(str(outbox), append_only=True)
        for name, data in src.items():
            (outbox / "jobs" / name).write_bytes(data)
        remote = make_remote(base / "remote", {})
        args = ["push", "-t", "local", "-r", str(remote), "-q", str(outbox), "--concurrency",
                str(rng.choice([1, 4])), "-o", "tmp_grace=0"]
        for _ in range(KILLS_PER_SETUP):
            rc = kill_midway(args, outbox / ".fspl-gw" / "journal.sqlite", rng)
            kills += rc is None
            pushed = job_files(remote / "jobs")
            for name, data in pushed.items():
                assert src.get(name) == data, f"partial or foreign job {name} on the remote"
            local = job_files(outbox / "jobs")
            for name, data in local.items():
                assert src[name] == data
            assert set(local) | set(pushed) == set(src), "a job was lost"
            mid += rc is None and bool(local)  # killed before the run was over
            if rc is not None:
                break
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert remote_jobs(remote) == src  # exactly the source set; no temporaries left
        assert job_files(outbox / "jobs") == {}
        shutil.rmtree(base)
    assert mid >= KILLS // 2, f"only {mid} of {kills} kills landed mid-transfer"


def _disk_full_checks(remote: Path, qdir: Path, src: dict[str, bytes], big: str) -> None:
    assert remote_jobs(remote)[big] == src[big]  # the remote copy is untouched
    local = {p.name: p.read_bytes() for p in (qdir / "jobs").iterdir()}
    assert big not in local
    for name, data in local.items():  # anything that did land is whole
        assert src[name] == data
    assert set(local) | set(remote_jobs(remote)) == set(src)
    assert os.listdir(qdir / ".fspl-gw" / "staging") == []


def test_file_size_limit_is_a_clean_error(tmp_path: Path) -> None:
    src = job_set(3, size=1000)
    big = "fspl-00000000-big.fspl"
    src[big] = job_set(1, start=9, size=2_000_000).popitem()[1]
    remote = make_remote(tmp_path / "remote", src)
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))\n"
        "from fspl_gateway.cli.main import main\n"
        "main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, "sync", "-t", "local", "-r", str(remote),
                        "-q", str(qdir), "--concurrency", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("Error: ") and "File too large" in err[-1]
    assert "Traceback" not in r.stderr
    _disk_full_checks(remote, qdir, src, big)
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(qdir))
    assert r.returncode == 0 and job_files(qdir / "jobs") == src


def test_full_tmpfs_is_a_clean_error(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {m.stderr.decode().strip()}")
    try:
        src = job_set(2, size=1000)
        big = "fspl-00000000-big.fspl"
        src[big] = job_set(1, start=9, size=3_000_000).popitem()[1]
        remote = make_remote(tmp_path / "remote", src)
        qdir = mnt / "queue"
        q.queue_init(str(qdir))
        r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(qdir),
                    "--concurrency", "1")
        assert r.returncode == 1, r.stderr
        assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
        _disk_full_checks(remote, qdir, src, big)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_corrupt_remote_file_is_quarantined(tmp_path: Path) -> None:
    src = job_set(3)
    name = sorted(src)[1]
    corrupt = bytearray(src[name])
    corrupt[20] ^= 0xFF  # inside the metadata-length field: the header CRC fails
    src[name] = bytes(corrupt)
    remote = make_remote(tmp_path / "remote", src)
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(qdir))
    assert r.returncode == 3, r.stderr
    assert "quarantined" in r.stderr and "CRC" in r.stderr
    assert remote_jobs(remote) == {name: src[name]}  # untouched
    assert (qdir / ".fspl-gw" / "quarantine" / name).read_bytes() == src[name]
    assert name not in os.listdir(qdir / "jobs") and len(os.listdir(qdir / "jobs")) == 2
    assert not any(n.startswith(TMP_PREFIX) for n in os.listdir(qdir / "jobs"))
