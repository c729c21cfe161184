"""The push engine (fspl_gateway.gateway.push) against the real LocalTransport."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import AuthError, NotSupportedError, TransientError
from fspl_gateway.gateway import journal as jr
from fspl_gateway.gateway.push import PushOptions, push
from fspl_gateway.gateway.runframe import take_run_lock
from fspl_gateway.transports.base import Capabilities, RemoteEntry
from fspl_gateway.transports.local import LocalTransport
from tests.unit.test_sync import (
    FAST,
    CountingTransport,
    job_set,
    local_jobs,
    make_job,
    make_remote,
    remote_jobs,
    run_cli,
    sha,
)


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    path = tmp_path / "outbox"
    q.queue_init(str(path), append_only=True)
    return path


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote", {})


def fill(outbox: Path, jobs: dict[str, bytes]) -> None:
    for name, data in jobs.items():
        (outbox / "jobs" / name).write_bytes(data)


def probed(outbox: Path, t: LocalTransport) -> None:
    """Cache the capability probe's answer, so that write_new counts only jobs."""
    from fspl_gateway.core.layout import QueueLayout
    from fspl_gateway.gateway.probe import store_noclobber

    store_noclobber(QueueLayout(str(outbox)), t.describe(), True)


def opts(**kw: Any) -> PushOptions:
    kw.setdefault("retry", FAST)
    kw.setdefault("progress", False)
    return PushOptions(**kw)


def test_push_moves_jobs(outbox: Path, remote: Path) -> None:
    src = job_set(5)
    fill(outbox, src)
    res = push(LocalTransport(str(remote)), outbox, opts())
    assert (res.pushed, res.skipped, res.failed, res.exit_code) == (5, 0, 0, 0)
    assert remote_jobs(remote) == src and local_jobs(outbox) == {}
    with jr.Journal(str(outbox)) as j:
        known = j.known("push", f"local:{remote}")
    assert {n: r.sha256 for n, r in known.items()} == {n: sha(d) for n, d in src.items()}
    assert {r.seq for r in known.values()} == {1, 2, 3, 4, 5}
    assert res.summary().startswith(f"push: 5 pushed, 0 skipped, 0 failed to local:{remote}")
    assert jr.last_runs(str(outbox))[0].direction == "push"


def test_push_keep_does_not_push_twice(outbox: Path, remote: Path) -> None:
    src = job_set(3)
    fill(outbox, src)
    res = push(LocalTransport(str(remote)), outbox, opts(after_push="keep"))
    assert res.pushed == 3 and local_jobs(outbox) == src
    for p in (remote / "jobs").iterdir():  # the remote side consumed them
        p.unlink()
    t = CountingTransport(str(remote))
    res2 = push(t, outbox, opts(after_push="keep"))
    assert (res2.pushed, res2.known) == (0, 3) and t.calls.get("write_new", 0) == 0
    assert remote_jobs(remote) == {}


def test_push_existing_same_bytes_counts_as_pushed(outbox: Path, remote: Path) -> None:
    src = job_set(2)
    fill(outbox, src)
    make_remote(remote, src)
    res = push(LocalTransport(str(remote)), outbox, opts())
    assert (res.pushed, res.skipped, res.exit_code) == (0, 2, 0)
    assert local_jobs(outbox) == {}


def test_push_remote_exists_error_path(outbox: Path, remote: Path) -> None:
    """The name appears remotely after the listing: write_new refuses, bytes compared."""
    src = job_set(2)
    fill(outbox, src)
    a, b = sorted(src)
    make_remote(remote, {a: src[a], b: make_job(99)})

    class Blind(CountingTransport):
        def list(self) -> Iterator[RemoteEntry]:
            return iter(())

    t = Blind(str(remote))
    probed(outbox, t)
    res = push(t, outbox, opts())
    assert t.calls["write_new"] == 2
    assert (res.pushed, res.skipped, res.conflicts, res.exit_code) == (0, 1, 1, 3)
    assert local_jobs(outbox) == {b: src[b]}  # the conflicting one is kept
    assert remote_jobs(remote)[b] == make_job(99)  # and the remote one untouched


def test_push_conflict_from_listing(outbox: Path, remote: Path) -> None:
    src = job_set(1)
    fill(outbox, src)
    name = next(iter(src))
    make_remote(remote, {name: b"other bytes"})
    t = CountingTransport(str(remote))
    res = push(t, outbox, opts())
    assert res.conflicts == 1 and res.exit_code == 3
    assert t.calls.get("open", 0) == 0  # sizes differ: no need to read it back
    assert local_jobs(outbox) == src and remote_jobs(remote) == {name: b"other bytes"}


def test_push_bad_header_is_quarantined(outbox: Path, remote: Path) -> None:
    src = job_set(1)
    fill(outbox, {**src, "fspl-bad.fspl": b"junk" * 10})
    res = push(LocalTransport(str(remote)), outbox, opts())
    assert (res.pushed, res.quarantined, res.exit_code) == (1, 1, 3)
    assert remote_jobs(remote) == src
    qd = outbox / ".fspl-gw" / "quarantine"
    assert (qd / "fspl-bad.fspl").read_bytes() == b"junk" * 10
    assert "does not validate" in (qd / "fspl-bad.fspl.reason").read_text()


def test_push_decoder(outbox: Path, remote: Path) -> None:
    src = {n: base64.b64encode(d) for n, d in job_set(2).items()}
    fill(outbox, src)
    res = push(LocalTransport(str(remote)), outbox, opts(decoder="base64 -d"))
    assert res.pushed == 2 and remote_jobs(remote) == src


def test_push_retries_and_verifies_size(outbox: Path, remote: Path) -> None:
    src = job_set(2)
    fill(outbox, src)

    class Liar(CountingTransport):
        lies = 1

        def write_new(self, name: str, f: BinaryIO, size: int) -> RemoteEntry:
            e = super().write_new(name, f, size)
            if self.lies:
                self.lies -= 1
                return RemoteEntry(name, size + 1)  # a wrong size: verified → retried
            return e

    t = Liar(str(remote))
    t.fail = {"write_new": [TransientError("503")], "list": [TransientError("reset")]}
    res = push(t, outbox, opts(concurrency=1))
    # 2 jobs + 1 transient failure + 1 retry after the size lie (RemoteExistsError → the
    # same bytes, written by our own earlier attempt: pushed, not skipped)
    assert t.calls["write_new"] == 4
    assert (res.pushed, res.skipped, res.exit_code) == (2, 0, 0)
    assert remote_jobs(remote) == src and local_jobs(outbox) == {}


def test_push_bounded_retries(outbox: Path, remote: Path) -> None:
    src = job_set(1)
    fill(outbox, src)
    t = CountingTransport(str(remote))
    probed(outbox, t)
    t.fail = {"write_new": [TransientError("down")] * 10}
    res = push(t, outbox, opts())
    assert (res.failed, res.exit_code) == (1, 3) and t.calls["write_new"] == 5
    assert local_jobs(outbox) == src and remote_jobs(remote) == {}


def test_push_auth_error_aborts(outbox: Path, remote: Path) -> None:
    fill(outbox, job_set(2))
    t = CountingTransport(str(remote))
    t.fail = {"write_new": [AuthError("denied")]}
    with pytest.raises(AuthError):
        push(t, outbox, opts(concurrency=1))
    assert len(local_jobs(outbox)) == 2


def test_push_read_only_transport(outbox: Path, remote: Path) -> None:
    class ReadOnly(LocalTransport):
        capabilities = Capabilities(can_write=False, can_delete=False)

    fill(outbox, job_set(1))
    with pytest.raises(NotSupportedError):
        push(ReadOnly(str(remote)), outbox, opts())


def test_push_dry_run_max_jobs_lock(outbox: Path, remote: Path) -> None:
    src = job_set(4)
    fill(outbox, src)
    t = CountingTransport(str(remote))
    res = push(t, outbox, opts(dry_run=True))
    assert sorted(res.names) == sorted(src) and t.calls.get("write_new", 0) == 0
    assert remote_jobs(remote) == {}
    res = push(LocalTransport(str(remote)), outbox, opts(max_jobs=3, concurrency=3))
    assert res.pushed == 3 and len(remote_jobs(remote)) == 3 and len(local_jobs(outbox)) == 1
    fd = take_run_lock(str(outbox), None, "test")
    assert fd is not None
    try:
        res = push(LocalTransport(str(remote)), outbox, opts())
        assert res.locked_out and res.exit_code == 0
    finally:
        os.close(fd)
    assert push(LocalTransport(str(remote)), outbox, opts()).pushed == 1
    assert remote_jobs(remote) == src


def test_push_then_pull_roundtrip(outbox: Path, remote: Path, queue: Path) -> None:
    from fspl_gateway.gateway.pull import SyncOptions, pull

    src = job_set(10, size=5000)
    fill(outbox, src)
    assert push(LocalTransport(str(remote)), outbox, opts()).pushed == 10
    res = pull(LocalTransport(str(remote)), queue, SyncOptions(retry=FAST, progress=False))
    assert res.fetched == 10 and local_jobs(queue) == src


def test_cli_push(outbox: Path, remote: Path) -> None:
    src = job_set(3)
    fill(outbox, src)
    r = run_cli("push", "-t", "local", "-r", str(remote), "-q", str(outbox),
                "--after-push", "keep")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "push: 3 pushed, 0 skipped, 0 failed to local:" in lines[0]
    assert remote_jobs(remote) == src and local_jobs(outbox) == src
    (remote / "jobs" / sorted(src)[0]).write_bytes(b"changed")
    r = run_cli("push", "-t", "local", "-r", str(remote), "-q", str(outbox))
    assert r.returncode == 0  # all three known as pushed: deleted locally, no conflict
    assert local_jobs(outbox) == {}
