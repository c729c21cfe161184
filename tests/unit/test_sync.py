"""The pull engine (fspl_gateway.gateway.pull) against the real LocalTransport."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import (
    AuthError,
    IntegrityError,
    LockBusyError,
    QueueError,
    TransientError,
    UsageError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.core.packet import Meta, encode_header
from fspl_gateway.core.seqfile import SeqFile
from fspl_gateway.gateway import journal as jr
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.gateway.runframe import take_run_lock
from fspl_gateway.transports.base import RemoteEntry
from fspl_gateway.transports.local import LocalTransport

FAST = RetryPolicy(attempts=5, backoff=0.001, max_delay=0.01)


# -- helpers (imported by the other sync/push test files) -----------------------------
def make_job(seq: int, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = f"payload of job {seq}\n".encode() * 20
    return encode_header(Meta(seq, (1700000000 + seq, 0), "NOP")) + payload


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_remote(root: Path, jobs: dict[str, bytes]) -> Path:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    for name, data in jobs.items():
        (root / "jobs" / name).write_bytes(data)
    return root


def job_set(n: int, start: int = 1, size: int | None = None) -> dict[str, bytes]:
    out = {}
    for i in range(start, start + n):
        payload = None if size is None else os.urandom(size)
        out[f"fspl-{i:08d}-0000-4000-8000-000000000000.fspl"] = make_job(i, payload)
    return out


def local_jobs(qdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (qdir / "jobs").iterdir()}


def remote_jobs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "jobs").iterdir()}


class CountingTransport(LocalTransport):
    """The real LocalTransport, counting calls and injecting failures on request."""

    def __init__(self, location: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(location, options)
        self.calls: dict[str, int] = {}
        self.fail: dict[str, list[BaseException]] = {}
        self.extra_entries: list[RemoteEntry] = []
        self.mutex = threading.Lock()

    def _hit(self, what: str) -> None:
        with self.mutex:
            self.calls[what] = self.calls.get(what, 0) + 1
            pending = self.fail.get(what)
            exc = pending.pop(0) if pending else None
        if exc is not None:
            raise exc

    def list(self) -> Iterator[RemoteEntry]:
        self._hit("list")
        yield from super().list()
        yield from self.extra_entries

    def open(self, name: str) -> BinaryIO:
        self._hit("open")
        return super().open(name)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        self._hit("fetch")
        return super().fetch(name, dst, entry)

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self._hit("write_new")
        return super().write_new(name, src, size)

    def delete(self, name: str) -> None:
        self._hit("delete")
        super().delete(name)

    def cleanup_temporaries(self) -> int:
        self._hit("cleanup_temporaries")
        return super().cleanup_temporaries()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote", {})


@pytest.fixture
def aoq(tmp_path: Path) -> Path:
    """An append-only queue (no nextseq): only the journal prevents re-fetching."""
    path = tmp_path / "aoq"
    q.queue_init(str(path), append_only=True)
    return path


def opts(**kw: Any) -> SyncOptions:
    kw.setdefault("retry", FAST)
    kw.setdefault("progress", False)
    return SyncOptions(**kw)


# -- the basic move ------------------------------------------------------------------
def test_pull_moves_jobs_and_journals_them(remote: Path, queue: Path) -> None:
    src = job_set(5)
    make_remote(remote, src)
    res = pull(LocalTransport(str(remote)), queue, opts())
    assert (res.fetched, res.skipped, res.quarantined, res.failed) == (5, 0, 0, 0)
    assert res.exit_code == 0
    assert local_jobs(queue) == src
    assert remote_jobs(remote) == {}
    assert sorted(res.names) == sorted(src)
    assert os.listdir(queue / ".fspl-gw" / "staging") == []
    with jr.Journal(str(queue)) as j:
        known = j.known("pull", f"local:{remote}")
    assert set(known) == set(src)
    for name, data in src.items():
        rec = known[name]
        assert rec.state == "fetched" and rec.sha256 == sha(data)
        assert rec.size == len(data) and rec.remote_deleted
    assert [job.meta.seq for job in sorted(q.scan(str(queue)), key=lambda j: j.meta.seq)] \
        == [1, 2, 3, 4, 5]
    runs = jr.last_runs(str(queue))
    assert len(runs) == 1 and runs[0].ok and runs[0].summary.startswith("sync: 5 fetched")


def test_summary_line_format(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(2))
    res = pull(LocalTransport(str(remote)), queue, opts())
    s = res.summary()
    assert s.startswith(f"sync: 2 fetched, 0 skipped, 0 quarantined from local:{remote} in ")
    assert s.endswith((" s", " ms"))


def test_nothing_to_do(remote: Path, queue: Path) -> None:
    res = pull(LocalTransport(str(remote)), queue, opts())
    assert (res.fetched, res.exit_code) == (0, 0)


def test_not_a_queue(remote: Path, tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="not a queue directory"):
        pull(LocalTransport(str(remote)), tmp_path / "nope", opts())


def test_bad_options(remote: Path, queue: Path) -> None:
    t = LocalTransport(str(remote))
    with pytest.raises(UsageError):
        pull(t, queue, opts(after_fetch="move"))
    with pytest.raises(UsageError):
        pull(t, queue, opts(concurrency=0))


# -- names ---------------------------------------------------------------------------
def test_only_job_names_and_unsafe_names_refused(remote: Path, queue: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    src = job_set(2)
    make_remote(remote, src)
    (remote / "jobs" / "README.txt").write_bytes(b"not a job")
    (remote / "jobs" / "fspl-ctl\x01.fspl").write_bytes(make_job(9))
    t = CountingTransport(str(remote))
    t.extra_entries = [RemoteEntry("../fspl-x.fspl", 10), RemoteEntry("fspl-a/../b.fspl", 10),
                       RemoteEntry("fspl-nul\x00.fspl", 10)]
    res = pull(t, queue, opts())
    assert res.fetched == 2 and res.refused == 4
    assert t.calls["fetch"] == 2  # the refused ones were never fetched
    assert local_jobs(queue) == src
    assert sorted(os.listdir(remote / "jobs")) == sorted(["README.txt", "fspl-ctl\x01.fspl"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARN"]
    assert sum("unsafe name" in w for w in warnings) == 4
    assert res.exit_code == 0


# -- clash with a local name ---------------------------------------------------------
def test_same_name_same_bytes_is_skipped(remote: Path, queue: Path) -> None:
    src = job_set(2)
    make_remote(remote, src)
    name = next(iter(src))
    (queue / "jobs" / name).write_bytes(src[name])
    res = pull(LocalTransport(str(remote)), queue, opts())
    assert (res.fetched, res.skipped, res.quarantined) == (1, 1, 0)
    assert local_jobs(queue) == src
    assert remote_jobs(remote) == {}


def test_same_name_different_bytes_is_quarantined(remote: Path, queue: Path) -> None:
    src = job_set(2)
    make_remote(remote, src)
    name = next(iter(src))
    mine = make_job(77)
    (queue / "jobs" / name).write_bytes(mine)
    res = pull(LocalTransport(str(remote)), queue, opts())
    assert (res.fetched, res.quarantined, res.exit_code) == (1, 1, 3)
    assert (queue / "jobs" / name).read_bytes() == mine  # the local job is untouched
    qd = queue / ".fspl-gw" / "quarantine"
    assert (qd / name).read_bytes() == src[name]
    reason = (qd / (name + ".reason")).read_text()
    assert "different file" in reason and sha(src[name]) in reason
    assert remote_jobs(remote) == {name: src[name]}  # remote left alone


# -- bad headers ---------------------------------------------------------------------
def test_bad_header_fetched_twice_then_quarantined(remote: Path, queue: Path) -> None:
    good = job_set(1)
    bad = {"fspl-bad.fspl": b"*FILESPOOLER\x00\x01garbage" + b"x" * 100}
    make_remote(remote, {**good, **bad})
    t = CountingTransport(str(remote))
    res = pull(t, queue, opts())
    assert (res.fetched, res.quarantined, res.exit_code) == (1, 1, 3)
    assert t.calls["fetch"] == 3  # the good one once, the bad one twice
    qd = queue / ".fspl-gw" / "quarantine"
    assert (qd / "fspl-bad.fspl").read_bytes() == bad["fspl-bad.fspl"]
    assert "does not validate" in (qd / "fspl-bad.fspl.reason").read_text()
    assert remote_jobs(remote) == bad  # remote left alone
    assert local_jobs(queue) == good
    # next run: not downloaded again, still reported
    t2 = CountingTransport(str(remote))
    res2 = pull(t2, queue, opts())
    assert t2.calls.get("fetch", 0) == 0 and res2.quarantined == 1 and res2.exit_code == 3
    # the operator clears the quarantine: it is tried again
    (qd / "fspl-bad.fspl").unlink()
    t3 = CountingTransport(str(remote))
    res3 = pull(t3, queue, opts())
    assert t3.calls["fetch"] == 2 and res3.quarantined == 1


def test_header_bad_once_then_good_is_fetched(remote: Path, queue: Path) -> None:
    """A file caught mid-upload (bad header) is fetched again; grown past its listed
    size by then, it is not taken in this run (a fetch that does not match the listing
    is never linked) but by the next one, whole."""
    name = "fspl-late.fspl"
    data = make_job(1)
    (remote / "jobs" / name).write_bytes(data[:10])

    class Growing(CountingTransport):
        def fetch(self, n: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
            count = super().fetch(n, dst, None)
            (remote / "jobs" / name).write_bytes(data)  # the upload completes
            return count

    res = pull(Growing(str(remote)), queue, opts())
    assert (res.fetched, res.quarantined, res.unsettled) == (0, 0, 1)
    assert res.exit_code == 0 and local_jobs(queue) == {}
    res = pull(CountingTransport(str(remote)), queue, opts())
    assert (res.fetched, res.quarantined) == (1, 0)
    assert local_jobs(queue) == {name: data}


# -- already processed ---------------------------------------------------------------
def test_seq_below_nextseq_is_not_fetched_again(remote: Path, queue: Path) -> None:
    src = job_set(4)
    make_remote(remote, src)
    with SeqFile(q.seqfile_path(str(queue))) as s:
        s.set(3)  # jobs 1 and 2 were processed
    res = pull(LocalTransport(str(remote)), queue, opts())
    assert (res.fetched, res.skipped) == (2, 2)
    assert sorted(j.meta.seq for j in q.scan(str(queue))) == [3, 4]
    assert remote_jobs(remote) == {}  # cleaned up per policy
    with jr.Journal(str(queue)) as j:
        states = sorted(r.state for r in j.known("pull", f"local:{remote}").values())
    assert states == ["already-processed"] * 2 + ["fetched"] * 2


def test_big_old_job_is_not_downloaded(remote: Path, queue: Path) -> None:
    src = job_set(2, size=200_000)
    make_remote(remote, src)
    with SeqFile(q.seqfile_path(str(queue))) as s:
        s.set(2)
    t = CountingTransport(str(remote))
    res = pull(t, queue, opts(peek_min=100_000, after_fetch="keep"))
    assert (res.fetched, res.skipped) == (1, 1)
    assert t.calls["fetch"] == 1 and t.calls["open"] >= 2  # headers read, one download
    assert remote_jobs(remote) == src


# -- keep + journal ------------------------------------------------------------------
def test_keep_does_not_refetch_after_processing(remote: Path, aoq: Path) -> None:
    src = job_set(3)
    make_remote(remote, src)
    t = CountingTransport(str(remote))
    res = pull(t, aoq, opts(after_fetch="keep"))
    assert res.fetched == 3 and remote_jobs(remote) == src
    for p in (aoq / "jobs").iterdir():  # local processing removes them
        p.unlink()
    t2 = CountingTransport(str(remote))
    res2 = pull(t2, aoq, opts(after_fetch="keep"))
    assert (res2.fetched, res2.known) == (0, 3)
    assert t2.calls.get("fetch", 0) == 0 and t2.calls.get("open", 0) == 0
    assert local_jobs(aoq) == {}
    # a new remote job is still fetched
    new = job_set(1, start=10)
    make_remote(remote, new)
    res3 = pull(CountingTransport(str(remote)), aoq, opts(after_fetch="keep"))
    assert res3.fetched == 1 and local_jobs(aoq) == new


def test_journal_known_then_delete_policy_deletes_without_download(remote: Path,
                                                                   aoq: Path) -> None:
    src = job_set(3)
    make_remote(remote, src)
    pull(LocalTransport(str(remote)), aoq, opts(after_fetch="keep"))
    t = CountingTransport(str(remote))
    res = pull(t, aoq, opts(after_fetch="delete"))
    assert t.calls.get("fetch", 0) == 0 and t.calls["delete"] == 3
    assert res.skipped == 3 and remote_jobs(remote) == {}
    assert local_jobs(aoq) == src


def test_changed_remote_file_with_known_name_is_not_trusted(remote: Path, aoq: Path) -> None:
    src = job_set(1)
    make_remote(remote, src)
    pull(LocalTransport(str(remote)), aoq, opts(after_fetch="keep"))
    name = next(iter(src))
    other = make_job(5, b"a different payload of another size")
    (remote / "jobs" / name).write_bytes(other)
    res = pull(LocalTransport(str(remote)), aoq, opts(after_fetch="keep"))
    assert res.quarantined == 1  # downloaded again, and its bytes differ from the local one
    assert (aoq / "jobs" / name).read_bytes() == src[name]


# -- decoder -------------------------------------------------------------------------
def test_decoder(remote: Path, queue: Path) -> None:
    src = {n: base64.b64encode(d) for n, d in job_set(3).items()}
    src["fspl-undecodable.fspl"] = base64.b64encode(b"not a packet at all, sorry" * 4)
    make_remote(remote, src)
    res = pull(LocalTransport(str(remote)), queue, opts(decoder="base64 -d"))
    assert (res.fetched, res.quarantined) == (3, 1)
    got = local_jobs(queue)
    assert got == {n: d for n, d in src.items() if "undecodable" not in n}  # still encoded
    assert sorted(j.meta.seq for j in q.scan(str(queue), "base64 -d")) == [1, 2, 3]
    with SeqFile(q.seqfile_path(str(queue))) as s:
        s.set(4)
    more = {f"fspl-more-{i}.fspl": base64.b64encode(make_job(i)) for i in (1, 2, 5)}
    make_remote(remote, more)
    res2 = pull(LocalTransport(str(remote)), queue, opts(decoder="base64 -d"))
    assert (res2.skipped, res2.fetched) == (2, 1)  # seq 1 and 2 are below nextseq 4
    assert local_jobs(queue)["fspl-more-5.fspl"] == more["fspl-more-5.fspl"]
    assert "fspl-more-1.fspl" not in local_jobs(queue)


# -- dry run, max-jobs, concurrency ------------------------------------------------------
def test_dry_run_changes_nothing(remote: Path, queue: Path) -> None:
    src = job_set(3)
    make_remote(remote, src)
    t = CountingTransport(str(remote))
    res = pull(t, queue, opts(dry_run=True))
    assert sorted(res.names) == sorted(src) and res.fetched == 0
    assert t.calls.get("fetch", 0) == 0 and t.calls.get("delete", 0) == 0
    assert remote_jobs(remote) == src and local_jobs(queue) == {}
    assert not (queue / ".fspl-gw").exists()
    assert res.summary().startswith("sync (dry run): 3 to fetch")


def test_max_jobs(remote: Path, queue: Path) -> None:
    src = job_set(5)
    make_remote(remote, src)
    res = pull(LocalTransport(str(remote)), queue, opts(max_jobs=2))
    assert res.fetched == 2 and len(remote_jobs(remote)) == 3
    assert all(local_jobs(queue)[n] == src[n] for n in local_jobs(queue))


def test_concurrency(remote: Path, queue: Path) -> None:
    src = job_set(60, size=3000)
    make_remote(remote, src)
    res = pull(LocalTransport(str(remote)), queue, opts(concurrency=8))
    assert res.fetched == 60 and local_jobs(queue) == src and remote_jobs(remote) == {}
    assert res.bytes == sum(map(len, src.values()))


# -- retries and errors ----------------------------------------------------------------
def test_transient_errors_are_retried(remote: Path, queue: Path) -> None:
    src = job_set(1)
    make_remote(remote, src)
    t = CountingTransport(str(remote))
    t.fail = {"list": [TransientError("503")], "fetch": [TransientError("reset"),
                                                          IntegrityError("short read")],
              "delete": [TransientError("timeout")]}
    res = pull(t, queue, opts())
    assert res.fetched == 1 and res.exit_code == 0
    assert (t.calls["list"], t.calls["fetch"], t.calls["delete"]) == (2, 3, 2)
    assert local_jobs(queue) == src and remote_jobs(remote) == {}


def test_retries_are_bounded_and_the_run_goes_on(remote: Path, queue: Path) -> None:
    src = job_set(2)
    make_remote(remote, src)
    t = CountingTransport(str(remote))
    t.fail = {"fetch": [TransientError("down")] * 5}
    res = pull(t, queue, opts(concurrency=1))
    assert (res.fetched, res.failed, res.exit_code) == (1, 1, 3)
    assert t.calls["fetch"] == 6
    assert len(remote_jobs(remote)) == 1 and len(local_jobs(queue)) == 1
    assert os.listdir(queue / ".fspl-gw" / "staging") == []
    # the next run picks up the one that failed
    res2 = pull(LocalTransport(str(remote)), queue, opts())
    assert res2.fetched == 1 and local_jobs(queue) == src


def test_backoff_grows(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(1))
    t = CountingTransport(str(remote))
    t.fail = {"fetch": [TransientError("x")] * 3}
    t0 = time.monotonic()
    res = pull(t, queue, opts(retry=RetryPolicy(attempts=4, backoff=0.05, max_delay=1)))
    # delays 0.05, 0.1, 0.2, each jittered to at least half
    assert res.fetched == 1 and time.monotonic() - t0 >= 0.17


def test_auth_error_aborts(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(3))
    t = CountingTransport(str(remote))
    t.fail = {"fetch": [AuthError("token revoked")]}
    with pytest.raises(AuthError):
        pull(t, queue, opts(concurrency=1))
    assert t.calls["fetch"] == 1
    assert len(remote_jobs(remote)) == 3
    runs = jr.last_runs(str(queue))
    assert not runs[0].ok and "token revoked" in runs[0].summary


def test_remote_missing_is_an_error(tmp_path: Path, queue: Path) -> None:
    from fspl_gateway.core.errors import RemoteNotFoundError

    with pytest.raises(RemoteNotFoundError):
        pull(LocalTransport(str(tmp_path / "absent")), queue, opts())


# -- locking and clean-up ----------------------------------------------------------------
def test_second_run_is_locked_out(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(1))
    fd = take_run_lock(str(queue), None, "test")
    assert fd is not None
    try:
        res = pull(LocalTransport(str(remote)), queue, opts())
        assert res.locked_out and res.fetched == 0 and res.exit_code == 0
        t0 = time.monotonic()
        with pytest.raises(LockBusyError, match="still locked"):
            pull(LocalTransport(str(remote)), queue, opts(wait_lock=0.3))
        assert time.monotonic() - t0 >= 0.3
    finally:
        os.close(fd)
    assert pull(LocalTransport(str(remote)), queue, opts()).fetched == 1


def test_wait_lock_waits_for_the_other_run(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(1))
    fd = take_run_lock(str(queue), None, "test")
    assert fd is not None
    threading.Timer(0.3, os.close, (fd,)).start()
    res = pull(LocalTransport(str(remote)), queue, opts(wait_lock=5))
    assert res.fetched == 1


def test_stale_temporaries_are_cleaned(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(1))
    stale_remote = remote / "jobs" / f"{TMP_PREFIX}999999999-abc-fspl-x.fspl"
    stale_remote.write_bytes(b"half")
    os.utime(stale_remote, (time.time() - 7200, time.time() - 7200))
    staging = queue / ".fspl-gw" / "staging"
    staging.mkdir(parents=True)
    (staging / f"{TMP_PREFIX}1-dead-fspl-y.fspl").write_bytes(b"half")
    t = CountingTransport(str(remote))
    res = pull(t, queue, opts())
    assert res.fetched == 1 and t.calls["cleanup_temporaries"] == 1
    assert not stale_remote.exists() and os.listdir(staging) == []


# -- the CLI -------------------------------------------------------------------------
def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fspl-gw ARGS`` in a subprocess, with no config file of the user's."""
    cmd = [sys.executable, "-m", "fspl_gateway"]
    full_env = {**os.environ, "XDG_CONFIG_HOME": "/nonexistent-fspl-gw-test", **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env,
                          timeout=60)


def test_cli_sync_quiet_under_cron(remote: Path, queue: Path) -> None:
    src = job_set(3)
    make_remote(remote, src)
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "sync: 3 fetched, 0 skipped, 0 quarantined from local:" in lines[0]
    assert r.stdout == ""
    assert local_jobs(queue) == src
    r = run_cli("-l", "warn", "sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    assert r.returncode == 0 and r.stderr == ""


def test_cli_sync_exit_codes(remote: Path, queue: Path, tmp_path: Path) -> None:
    make_remote(remote, {"fspl-bad.fspl": b"garbage" * 10})
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    assert r.returncode == 3 and "quarantined" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ")
    r = run_cli("sync", "-r", str(remote), "-q", str(queue), "--config",
                str(tmp_path / "none.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("sync", "-r", "/nowhere", "-q", str(queue))
    assert r.returncode == 2 and "--transport" in r.stderr
    r = run_cli("sync", "-t", "local", "-r", str(tmp_path / "gone"), "-q", str(queue))
    assert r.returncode == 1 and "Error: " in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue),
                "--after-fetch", "move")
    assert r.returncode == 2


def test_cli_sync_locked_exits_0_with_one_line(remote: Path, queue: Path) -> None:
    make_remote(remote, job_set(1))
    fd = take_run_lock(str(queue), None, "test")
    try:
        r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    finally:
        assert fd is not None
        os.close(fd)
    assert r.returncode == 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "nothing done" in lines[0]
    assert local_jobs(queue) == {}


def test_cli_sync_options(remote: Path, aoq: Path) -> None:
    src = job_set(4)
    make_remote(remote, src)
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(aoq), "--dry-run")
    assert r.returncode == 0 and r.stderr.count("would fetch") == 4 and local_jobs(aoq) == {}
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(aoq), "--max-jobs", "1",
                "--after-fetch", "keep", "--concurrency", "2", "--retries", "2",
                "--wait-lock", "1", "--no-progress", "-o", "tmp_grace=5")
    assert r.returncode == 0, r.stderr
    assert len(local_jobs(aoq)) == 1 and remote_jobs(remote) == src


# -- over the real remote servers (the conformance backends) ---------------------------
@pytest.mark.parametrize("backend_name", ["s3", "sftp", "dropbox"])
def test_push_then_pull_over_a_server(backend_name: str, request: pytest.FixtureRequest,
                                      tmp_path: Path, queue: Path) -> None:
    from fspl_gateway.gateway.push import PushOptions, push

    try:
        backend = request.getfixturevalue(f"backend_{backend_name}")
    except pytest.FixtureLookupError:
        pytest.skip(f"no {backend_name} backend fixture")
    t = backend.make()
    try:
        outbox = tmp_path / "outbox"
        q.queue_init(str(outbox), append_only=True)
        src = job_set(6, size=3000)
        for name, data in src.items():
            (outbox / "jobs" / name).write_bytes(data)
        backend.put(t, "README.txt", b"not a job")
        pres = push(t, outbox, PushOptions(retry=FAST, progress=False, concurrency=3))
        assert pres.pushed == 6 and pres.exit_code == 0 and local_jobs(outbox) == {}
        assert sorted(n for n in backend.raw_names(t) if q.is_job_filename(n)) == sorted(src)
        again = next(iter(src))
        (outbox / "jobs" / again).write_bytes(src[again])  # pushed twice: same bytes
        assert push(t, outbox, PushOptions(retry=FAST, progress=False)).skipped == 1
        res = pull(t, queue, opts(concurrency=3))
        assert (res.fetched, res.exit_code) == (6, 0)
        assert local_jobs(queue) == src
        assert [n for n in backend.raw_names(t) if q.is_job_filename(n)] == []
        assert "README.txt" in backend.raw_names(t)
    finally:
        t.close()
