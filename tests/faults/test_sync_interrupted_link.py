"""A sync killed between linking jobs into jobs/ and journaling them: the next run must
neither lose a job nor fetch one twice — also when the queue's processor ran and removed
the linked job in between (a timestamp-ordered queue has no nextseq to catch that).

The killed run's state is built by hand (journal intent "linking" + files where the
crash left them), so each crash point is tested deterministically; the random kill -9
trials are in test_sync_faults.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.gateway.journal import Journal
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.transports.local import LocalTransport
from tests.unit.test_sync import job_set, local_jobs, make_remote, remote_jobs


@pytest.mark.parametrize("crash", ["linked-then-processed", "staged-not-linked",
                                   "linked-not-journaled", "linked-staging-left"])
def test_interrupted_link_is_settled_exactly_once(tmp_path: Path, crash: str) -> None:
    src = job_set(3)
    remote = make_remote(tmp_path / "remote", src)
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir), append_only=True)  # no nextseq: nothing else protects us
    t = LocalTransport(str(remote))
    name = sorted(src)[0]
    data = src[name]
    staging = qdir / ".fspl-gw" / "staging"
    staging.mkdir(parents=True)
    staged = staging / ".fspl-gw-tmp-999999-abcdef-x"
    if crash in ("staged-not-linked", "linked-staging-left"):
        staged.write_bytes(data)
    if crash in ("linked-not-journaled", "linked-staging-left"):
        (qdir / "jobs" / name).write_bytes(data)
    with Journal(str(qdir)) as j:
        j.record("pull", t.describe(), name, state="linking", size=len(data), tag=None,
                 sha256=hashlib.sha256(data).hexdigest(), seq=1, detail=str(staged))
    res = pull(t, str(qdir), SyncOptions(concurrency=1))
    assert res.exit_code == 0
    got = local_jobs(qdir)
    if crash == "linked-then-processed":
        assert name not in got  # it ran already: not fetched again
    else:
        assert got[name] == data  # present exactly once with the right bytes
    assert set(got) | ({name} if crash == "linked-then-processed" else set()) == set(src)
    assert remote_jobs(remote) == {}  # every remote copy cleaned up
    assert list(staging.iterdir()) == []
    # and a second run changes nothing
    again = pull(t, str(qdir), SyncOptions(concurrency=1))
    assert again.fetched == 0 and local_jobs(qdir) == got


def test_death_after_linking_then_processing_does_not_fetch_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real engine dies right after linking a batch into jobs/ (before journaling
    it); the processor then runs and removes those jobs; the next sync must not bring
    them back."""
    import fspl_gateway.gateway.pull as sync_mod

    src = job_set(5)
    remote = make_remote(tmp_path / "remote", src)
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir), append_only=True)
    t = LocalTransport(str(remote))
    real = sync_mod.fsync_dir

    def die(path: str) -> None:
        if str(path) == str(qdir / "jobs"):
            raise KeyboardInterrupt("killed after linking")
        real(path)

    monkeypatch.setattr(sync_mod, "fsync_dir", die)
    with pytest.raises(KeyboardInterrupt):
        pull(t, str(qdir), SyncOptions(concurrency=1))
    monkeypatch.setattr(sync_mod, "fsync_dir", real)
    linked = local_jobs(qdir)
    assert linked == src  # all linked, none journaled as fetched, remote untouched
    assert remote_jobs(remote) == src
    for name in linked:  # the queue's processor runs them and removes them
        (qdir / "jobs" / name).unlink()
    res = pull(t, str(qdir), SyncOptions(concurrency=1))
    assert res.fetched == 0 and local_jobs(qdir) == {}
    assert remote_jobs(remote) == {}
