"""The signature worker (gateway/sigworker): a forked process that reads and checks the
signatures of a one-thread sync ahead of it and deletes them behind it.  It is used,
and when it cannot be (other threads) or dies, the sync does the same work itself with
the same outcome; a kill -9 of the sync leaves no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core import minisign as ms
from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import FsplError, TransportError
from fspl_gateway.gateway import journal as jr
from fspl_gateway.gateway import sigworker, trust
from fspl_gateway.gateway.pull import pull
from fspl_gateway.gateway.runframe import BATCH
from fspl_gateway.transports.local import LocalTransport
from tests.helpers import FSPL_GW
from tests.trust.util import QID, job_name, opts, policy, reasons, signed

SIG = ".minisig"


@pytest.fixture(scope="module")
def key() -> ms.SecretKey:
    return ms.generate_keypair()


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory, key: ms.SecretKey) -> dict[str, bytes]:
    """2½ batches of signed jobs (file name → bytes) with three to refuse."""
    tmp = tmp_path_factory.mktemp("drop")
    stranger = ms.generate_keypair()
    files: dict[str, bytes] = {}
    for i in range(1, 2 * BATCH + 41):
        job, sig = signed(stranger if i == BATCH + 3 else key, i, tmp)
        if i == 2 * BATCH + 5:
            job = job[:-1] + bytes([job[-1] ^ 1])
        files[job_name(i)] = job
        if i != 2 * BATCH + 9:
            files[job_name(i) + SIG] = sig
    return files


REFUSED = {BATCH + 3: "unknown-key", 2 * BATCH + 5: "bad-signature", 2 * BATCH + 9: "unsigned"}


def _dirs(tmp_path: Path, drop: dict[str, bytes]) -> tuple[Path, Path]:
    """(the remote holding ``drop``, an empty queue)."""
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    for name, data in drop.items():
        (remote / "jobs" / name).write_bytes(data)
    qdir = tmp_path / "q"
    q.queue_init(str(qdir))
    return remote, qdir


def _sync(tmp_path: Path, drop: dict[str, bytes], key: ms.SecretKey) -> tuple[Any, Path, Path]:
    remote, qdir = _dirs(tmp_path, drop)
    res = pull(LocalTransport(str(remote)), qdir, opts(policy(key)))
    return res, remote, qdir


def _check_outcome(res: Any, remote: Path, qdir: Path, n: int) -> None:
    assert (res.fetched, res.quarantined) == (n - 3, 3), res.summary()
    got = reasons(qdir)
    for i, why in REFUSED.items():
        assert why in got[job_name(i)], (i, got)
    left = sorted(os.listdir(remote / "jobs"))
    assert left == sorted([job_name(i) for i in REFUSED]
                          + [job_name(i) + SIG for i, w in REFUSED.items() if w != "unsigned"])
    rec = jr.known_files(str(qdir), "pull", res.remote)
    taken = [r for r in rec.values() if r.state == jr.JournalState.FETCHED]
    assert len(taken) == n - 3 and all(r.remote_deleted for r in taken)
    assert len(os.listdir(qdir / "jobs")) == n - 3


def _spy_start(monkeypatch: pytest.MonkeyPatch, after: Any = None) -> list[Any]:
    started: list[Any] = []
    real = sigworker.SigWorker.start

    def start(*a: Any, **kw: Any) -> Any:
        w = real(*a, **kw)
        started.append(w)
        if w is not None and after is not None:
            after(w)
        return w

    monkeypatch.setattr(sigworker.SigWorker, "start", start)
    return started


def test_a_local_sync_uses_the_worker(tmp_path: Path, drop: dict[str, bytes],
                                      key: ms.SecretKey, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _spy_start(monkeypatch)
    res, remote, qdir = _sync(tmp_path, drop, key)
    assert len(started) == 1 and started[0] is not None
    assert not started[0].alive  # closed, and its child reaped
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0].pid, os.WNOHANG)
    _check_outcome(res, remote, qdir, len([n for n in drop if not n.endswith(SIG)]))


@pytest.mark.parametrize("when", ["at once", "after some answers"])
def test_a_worker_that_dies_changes_nothing(tmp_path: Path, drop: dict[str, bytes],
                                            key: ms.SecretKey, monkeypatch: pytest.MonkeyPatch,
                                            when: str) -> None:
    """kill -9 of the worker: the sync checks and deletes what it no longer answers."""
    if when == "at once":
        def after(w: Any) -> None:
            os.kill(w.pid, signal.SIGKILL)
    else:
        real_answer = sigworker.SigWorker.answer
        count = [0]

        def answer(self: Any, name: str) -> Any:
            count[0] += 1
            if count[0] == BATCH + 10:
                os.kill(self.pid, signal.SIGKILL)
            return real_answer(self, name)

        monkeypatch.setattr(sigworker.SigWorker, "answer", answer)
        after = None
    started = _spy_start(monkeypatch, after)
    res, remote, qdir = _sync(tmp_path, drop, key)
    assert started and started[0] is not None and not started[0].alive
    _check_outcome(res, remote, qdir, len([n for n in drop if not n.endswith(SIG)]))


def _sigs_deleted_by_the_sync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The signature files the sync's own process will delete (not its worker)."""
    parent = os.getpid()
    real_many = LocalTransport.delete_many
    out: list[str] = []

    def delete_many(self: Any, names: Any) -> Any:
        if os.getpid() == parent:
            out.extend(n for n in names if n.endswith(SIG))
        return real_many(self, names)

    monkeypatch.setattr(LocalTransport, "delete_many", delete_many)
    return out


def test_deletions_the_worker_cannot_do_are_done_by_the_sync(
        tmp_path: Path, drop: dict[str, bytes], key: ms.SecretKey,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every deletion the worker is asked for fails there (an error of the whole call):
    the sync deletes those signature files itself, with the same outcome."""
    parent = os.getpid()
    real = trust.ReceiveGate._delete_sigs

    def delete_sigs(self: Any, names: Any) -> Any:
        if os.getpid() != parent:
            raise TransportError("the disk went away (test)")
        return real(self, names)

    monkeypatch.setattr(trust.ReceiveGate, "_delete_sigs", delete_sigs)
    in_parent = _sigs_deleted_by_the_sync(monkeypatch)
    started = _spy_start(monkeypatch)
    res, remote, qdir = _sync(tmp_path, drop, key)
    assert started and started[0] is not None
    n = len([n for n in drop if not n.endswith(SIG)])
    assert len(in_parent) == n - 3  # every signature of a fetched job, by the sync
    _check_outcome(res, remote, qdir, n)


def test_the_worker_deletes_the_signatures(tmp_path: Path, drop: dict[str, bytes],
                                           key: ms.SecretKey,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker deletes the signatures behind the run (in its threads, whose waits for
    the disk overlap); the sync's own process deletes none."""
    in_parent = _sigs_deleted_by_the_sync(monkeypatch)
    res, remote, qdir = _sync(tmp_path, drop, key)
    assert in_parent == []
    _check_outcome(res, remote, qdir, len([n for n in drop if not n.endswith(SIG)]))


def test_an_unused_worker_is_not_waited_for(tmp_path: Path, key: ms.SecretKey,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote with nothing signed on it: the worker, forked before the listing, is
    never asked anything, and the run does not wait for it to finish loading its keys."""
    monkeypatch.setattr(trust, "load_verifier", lambda: time.sleep(60))
    started = _spy_start(monkeypatch)
    remote, qdir = _dirs(tmp_path, {})
    t0 = time.monotonic()
    res = pull(LocalTransport(str(remote)), qdir, opts(policy(key)))
    assert time.monotonic() - t0 < 30 and res.fetched == 0
    assert len(started) == 1 and started[0] is not None and not started[0].alive
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0].pid, os.WNOHANG)


def test_a_failing_run_ends_its_worker(tmp_path: Path, key: ms.SecretKey,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is forked before the remote is listed; a run that then fails (no
    remote queue) ends and reaps it all the same."""
    started = _spy_start(monkeypatch)
    qdir = tmp_path / "q"
    q.queue_init(str(qdir))
    with pytest.raises(FsplError):
        pull(LocalTransport(str(tmp_path / "nowhere")), qdir, opts(policy(key)))
    assert len(started) == 1 and started[0] is not None and not started[0].alive
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0].pid, os.WNOHANG)


def test_no_fork_while_other_threads_run(tmp_path: Path, drop: dict[str, bytes],
                                         key: ms.SecretKey, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _spy_start(monkeypatch)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        res, remote, qdir = _sync(tmp_path, drop, key)
    finally:
        stop.set()
        t.join()
    assert started == [None]
    _check_outcome(res, remote, qdir, len([n for n in drop if not n.endswith(SIG)]))


def test_kill_9_of_the_sync_leaves_no_worker(tmp_path: Path, drop: dict[str, bytes],
                                             key: ms.SecretKey) -> None:
    remote, qdir = _dirs(tmp_path, drop)
    argv = [*FSPL_GW, "-l", "warn", "sync", "-r", str(remote), "-t", "local", "-q", str(qdir),
            "--settle", "0", "--signature-wait", "0", "--trust", key.public_key.to_base64(),
            "--queue-id", QID]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(qdir / "jobs")) < 5:
        time.sleep(0.002)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rest = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True)
        if not rest.stdout.strip():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"processes left in the killed sync's session: {rest.stdout}")
    r = subprocess.run(argv, capture_output=True, timeout=120)
    assert r.returncode == 3, r.stderr  # the three refusals
    n = len([n for n in drop if not n.endswith(SIG)])
    assert len(os.listdir(qdir / "jobs")) == n - 3
    assert os.listdir(qdir / ".fspl-gw" / "staging") == []
