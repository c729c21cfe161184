"""The local transport's fast paths: hard-link instead of copy, one directory fsync for
many deletes, one thread on a local disk; and how the pull engine uses them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import IntegrityError
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.transports import local as local_mod
from fspl_gateway.transports.base import RemoteEntry
from fspl_gateway.transports.local import LocalTransport, fs_type
from tests.unit.test_sync import job_set, local_jobs, make_remote, remote_jobs


def _opts(**kw: Any) -> SyncOptions:
    kw.setdefault("retry", RetryPolicy(attempts=3, backoff=0.001, max_delay=0.01))
    kw.setdefault("progress", False)
    return SyncOptions(**kw)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote", {"fspl-a.fspl": b"a" * 5000})


def test_link_shares_the_checked_inode(remote: Path, tmp_path: Path) -> None:
    t = LocalTransport(str(remote))
    src = remote / "jobs" / "fspl-a.fspl"
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "l"), None, link=True) == 5000
    assert os.stat(tmp_path / "l").st_ino == src.stat().st_ino
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "c"), None, link=False) == 5000
    assert os.stat(tmp_path / "c").st_ino != src.stat().st_ino
    # now the remote file has two names: never linked again (copied)
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "c2"), None, link=True) == 5000
    assert os.stat(tmp_path / "c2").st_ino != src.stat().st_ino
    assert (tmp_path / "c2").read_bytes() == b"a" * 5000


def test_link_checks_the_listed_size(remote: Path, tmp_path: Path) -> None:
    t = LocalTransport(str(remote))
    with pytest.raises(IntegrityError, match="changed since the listing"):
        t.fetch_to_path("fspl-a.fspl", str(tmp_path / "x"),
                        RemoteEntry("fspl-a.fspl", 4999), link=True)
    assert not (tmp_path / "x").exists()


def test_a_subclass_fetch_is_not_bypassed(remote: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    class Wrapped(LocalTransport):
        def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
            calls.append(name)
            return super().fetch(name, dst, entry)

    t = Wrapped(str(remote))
    t.fetch_to_path("fspl-a.fspl", str(tmp_path / "x"), None, link=True)
    assert calls == ["fspl-a.fspl"]
    assert os.stat(tmp_path / "x").st_ino != (remote / "jobs" / "fspl-a.fspl").stat().st_ino


def test_across_file_systems_it_copies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as d:
        r = make_remote(Path(d) / "remote", {"fspl-b.fspl": b"b" * 100})
        t = LocalTransport(str(r))
        assert t.fetch_to_path("fspl-b.fspl", str(tmp_path / "x"), None, link=True) == 100
        assert (tmp_path / "x").read_bytes() == b"b" * 100
        assert (r / "jobs" / "fspl-b.fspl").exists()


def test_delete_many_fsyncs_the_directory_once(remote: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_remote(remote, {f"fspl-{i}.fspl": b"x" for i in range(20)})
    synced: list[str] = []
    real = local_mod.fsync_dir
    monkeypatch.setattr(local_mod, "fsync_dir", lambda p: (synced.append(str(p)), real(p)))
    t = LocalTransport(str(remote))
    assert t.delete_many([f"fspl-{i}.fspl" for i in range(20)]) == {}
    assert synced == [str(remote / "jobs")]
    assert sorted(os.listdir(remote / "jobs")) == ["fspl-a.fspl"]
    assert t.delete_many(["fspl-0.fspl"])["fspl-0.fspl"].__class__.__name__ == \
        "RemoteNotFoundError"
    assert synced == [str(remote / "jobs")]  # nothing removed: no fsync


def test_one_thread_on_a_local_disk(remote: Path) -> None:
    t = LocalTransport(str(remote))
    kind = fs_type(str(remote))
    if kind not in local_mod.LOCAL_DISK_FS:
        pytest.skip(f"the test directory is on {kind}")
    assert t.set_concurrency(8) == 1


def test_fs_type_reads_mountinfo() -> None:
    assert fs_type("/proc/self") == "proc"
    assert fs_type("/") not in (None, "proc")


# -- the pull engine -------------------------------------------------------------------
def test_pull_links_and_leaves_one_name(remote: Path, tmp_path: Path) -> None:
    src = job_set(300, size=500)  # more than one batch
    make_remote(remote, src)
    (remote / "jobs" / "fspl-a.fspl").unlink()
    inodes = {n: (remote / "jobs" / n).stat().st_ino for n in src}
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    res = pull(LocalTransport(str(remote)), qdir, _opts())
    assert res.fetched == 300 and local_jobs(qdir) == src and remote_jobs(remote) == {}
    for n, ino in inodes.items():
        st = (qdir / "jobs" / n).stat()
        assert st.st_ino == ino and st.st_nlink == 1  # linked, not copied
    assert os.listdir(qdir / ".fspl-gw" / "staging") == []
    from fspl_gateway.gateway import journal as jr

    with jr.Journal(str(qdir)) as j:
        recs = j.known("pull", f"local:{remote}")
    assert len(recs) == 300
    assert all(r.state == "fetched" and r.remote_deleted and r.sha256 for r in recs.values())


def test_pull_keep_copies(remote: Path, tmp_path: Path) -> None:
    src = job_set(5)
    make_remote(remote, src)
    (remote / "jobs" / "fspl-a.fspl").unlink()
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    res = pull(LocalTransport(str(remote)), qdir, _opts(after_fetch="keep"))
    assert res.fetched == 5 and remote_jobs(remote) == src
    for n in src:  # the queue's job never shares the kept remote file's inode
        assert (qdir / "jobs" / n).stat().st_ino != (remote / "jobs" / n).stat().st_ino


def test_pull_deletes_in_batches(remote: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = job_set(200, size=100)
    make_remote(remote, src)
    (remote / "jobs" / "fspl-a.fspl").unlink()
    batches: list[int] = []
    real = LocalTransport.delete_many

    def counting(self: LocalTransport, names: list[str]) -> Any:
        batches.append(len(names))
        return real(self, names)

    monkeypatch.setattr(LocalTransport, "delete_many", counting)
    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    res = pull(LocalTransport(str(remote)), qdir, _opts())
    assert res.fetched == 200 and remote_jobs(remote) == {}
    assert sum(batches) == 200 and len(batches) == 2  # one call per batch of 128
