"""The SQLite journal in a queue directory."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from fspl_gateway.core.errors import QueueError
from fspl_gateway.gateway import journal as jr


def test_record_lookup_and_persistence(tmp_path: Path) -> None:
    with jr.Journal(str(tmp_path)) as j:
        assert j.lookup("pull", "s3:b/p", "fspl-a.fspl") is None
        j.record("pull", "s3:b/p", "fspl-a.fspl", state="fetched", size=12, tag="etag1",
                 sha256="ab" * 32, seq=7)
        j.record("push", "s3:b/p", "fspl-a.fspl", state="pushed", size=12)
        j.record("pull", "local:/x", "fspl-b.fspl", state="quarantined", detail="fspl-b.fspl")
    assert (tmp_path / ".fspl-gw" / "journal.sqlite").is_file()
    with jr.Journal(str(tmp_path)) as j:
        r = j.lookup("pull", "s3:b/p", "fspl-a.fspl")
        assert r is not None
        assert (r.size, r.tag, r.sha256, r.seq, r.state, r.remote_deleted) == \
            (12, "etag1", "ab" * 32, 7, "fetched", False)
        j.mark_remote_deleted("pull", "s3:b/p", "fspl-a.fspl")
        r2 = j.lookup("pull", "s3:b/p", "fspl-a.fspl")
        assert r2 is not None and r2.remote_deleted
        assert set(j.known("pull", "s3:b/p")) == {"fspl-a.fspl"}
        assert set(j.known("push", "s3:b/p")) == {"fspl-a.fspl"}
        assert set(j.known("pull", "local:/x")) == {"fspl-b.fspl"}
        j.record("pull", "s3:b/p", "fspl-a.fspl", state="already-local")  # replaces
        assert j.known("pull", "s3:b/p")["fspl-a.fspl"].state == "already-local"
        j.forget("pull", "s3:b/p", "fspl-a.fspl")
        assert j.lookup("pull", "s3:b/p", "fspl-a.fspl") is None
    assert jr.file_count(str(tmp_path)) == 2
    assert jr.file_count(str(tmp_path), "push") == 1


def test_wal_mode(tmp_path: Path) -> None:
    jr.Journal(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / ".fspl-gw" / "journal.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_any_byte_name_round_trips(tmp_path: Path) -> None:
    name = "fspl-\udcff\udc80é.fspl"  # undecodable bytes (surrogate escapes) and UTF-8
    with jr.Journal(str(tmp_path)) as j:
        j.record("pull", "r", name, state="fetched")
        assert list(j.known("pull", "r")) == [name]
        assert j.lookup("pull", "r", name) is not None


def test_runs_last_of_each_remote(tmp_path: Path) -> None:
    assert jr.last_runs(str(tmp_path)) == []
    assert not (tmp_path / ".fspl-gw").exists()  # reading creates nothing
    with jr.Journal(str(tmp_path)) as j:
        j.record_run("pull", "s3:b", 100.0, True, "sync: 1 fetched")
        j.record_run("pull", "s3:b", 200.0, False, "error: boom")
        j.record_run("push", "s3:b", 150.0, True, "push: 2 pushed")
        j.record_run("pull", "local:/x", 120.0, True, "sync: 0 fetched")
    runs = jr.last_runs(str(tmp_path))
    assert [(r.remote, r.direction, r.ok, r.summary) for r in runs] == [
        ("local:/x", "pull", True, "sync: 0 fetched"),
        ("s3:b", "pull", False, "error: boom"),
        ("s3:b", "push", True, "push: 2 pushed"),
    ]
    assert runs[1].started == 200.0 and runs[1].finished >= runs[1].started


def test_threads_share_one_journal(tmp_path: Path) -> None:
    with jr.Journal(str(tmp_path)) as j:
        def work(k: int) -> None:
            for i in range(50):
                j.record("pull", "r", f"fspl-{k}-{i}.fspl", state="fetched", seq=i)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(j.known("pull", "r")) == 400


def test_open_existing_and_errors(tmp_path: Path) -> None:
    assert jr.open_existing(str(tmp_path)) is None
    with pytest.raises(QueueError, match="no journal"):
        jr.Journal(str(tmp_path), create=False)
    d = tmp_path / ".fspl-gw"
    d.mkdir()
    (d / "journal.sqlite").write_bytes(b"this is not a database, not at all" * 100)
    with pytest.raises(QueueError, match="journal"):
        jr.Journal(str(tmp_path))


# -- every state the engines write is a declared JournalState -------------------------
def _spy_states(qdir: Path) -> None:
    """Log (direction, state) of every row the engines write into ``qdir``'s journal,
    also the ones a later row of the same run replaces (an SQLite trigger)."""
    jr.Journal(str(qdir)).close()
    db = sqlite3.connect(qdir / ".fspl-gw" / "journal.sqlite")
    db.executescript("""
        CREATE TABLE spy (direction TEXT, state TEXT);
        CREATE TRIGGER spy_ins AFTER INSERT ON files
            BEGIN INSERT INTO spy VALUES (NEW.direction, NEW.state); END;
        CREATE TRIGGER spy_upd AFTER UPDATE ON files
            BEGIN INSERT INTO spy VALUES (NEW.direction, NEW.state); END;
    """)
    db.close()


def _spied(qdir: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(qdir / ".fspl-gw" / "journal.sqlite")
    try:
        return set(db.execute("SELECT DISTINCT direction, state FROM spy").fetchall())
    finally:
        db.close()


def test_every_state_written_is_a_journal_state(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Pull and push with every outcome; each state they write (even one replaced later
    in the same run) must be a JournalState of its direction — and each JournalState
    must be written by some outcome."""
    import errno
    import os

    import fspl_gateway.gateway.pull as pull_mod
    from fspl_gateway.core import queue as q
    from fspl_gateway.core.errors import QueueError as QErr
    from fspl_gateway.core.seqfile import SeqFile
    from fspl_gateway.gateway.pull import SyncOptions, pull
    from fspl_gateway.gateway.push import PushOptions, push
    from fspl_gateway.transports.local import LocalTransport
    from tests.unit.test_sync import FAST, job_set, make_remote

    jobs = job_set(6)
    old, fetched, local, later, pushed, on_remote = sorted(jobs)
    remote = make_remote(tmp_path / "remote", {n: jobs[n] for n in (old, fetched, local)})
    (remote / "jobs" / "fspl-bad.fspl").write_bytes(b"*FILESPOOLER\x00\x01 not a header")
    queue = tmp_path / "queue"
    q.queue_init(str(queue))
    with SeqFile(str(queue / "nextseq")) as sf:
        sf.set(2)  # the job with seq 1 was processed already
    (queue / "jobs" / local).write_bytes(jobs[local])
    _spy_states(queue)
    t = LocalTransport(str(remote))
    sopts = SyncOptions(retry=FAST, progress=False, concurrency=1)
    res = pull(t, str(queue), sopts)
    assert (res.fetched, res.skipped, res.quarantined) == (1, 2, 1)
    # a local error while linking stops the run: what was not linked is retried
    (remote / "jobs" / later).write_bytes(jobs[later])
    real = pull_mod.move_noclobber

    def broken(src: str, dst: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), dst)

    monkeypatch.setattr(pull_mod, "move_noclobber", broken)
    with pytest.raises(QErr, match="cannot link"):
        pull(t, str(queue), sopts)
    monkeypatch.setattr(pull_mod, "move_noclobber", real)
    assert pull(t, str(queue), sopts).fetched == 1

    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    for n in (pushed, on_remote):
        (outbox / "jobs" / n).write_bytes(jobs[n])
    (remote / "jobs" / on_remote).write_bytes(jobs[on_remote])
    _spy_states(outbox)
    pres = push(t, str(outbox), PushOptions(retry=FAST, progress=False))
    assert (pres.pushed, pres.skipped) == (1, 1)

    written = _spied(queue) | _spied(outbox)
    assert {s for d, s in written if d == "pull"} <= jr.PULL_STATES
    assert {s for d, s in written if d == "push"} <= jr.PUSH_STATES
    assert {s for _, s in written} == set(jr.JournalState)
    assert jr.PULL_STATES | jr.PUSH_STATES == set(jr.JournalState)


def test_known_restricted_to_listed_names_and_to_a_state(tmp_path: Path) -> None:
    """A run asks only for what the remote lists (chunked past SQLite's parameter
    limit) and for its interrupted links, not for the remote's whole history."""
    S = jr.JournalState
    n = jr._IN_CHUNK * 2 + 5
    with jr.Journal(str(tmp_path)) as j:
        j.record_many("pull", "r", [(f"fspl-{i}.fspl", S.LINKING if i % 100 == 0 else S.FETCHED,
                                     i, None, None, i, None) for i in range(n)])
        j.record("push", "r", "fspl-1.fspl", state=S.PUSHED)
        j.record("pull", "other", "fspl-2.fspl", state=S.FETCHED)
        assert len(j.known("pull", "r")) == n
        listed = [f"fspl-{i}.fspl" for i in range(0, n + 50, 2)]  # some never recorded
        got = j.known("pull", "r", names=listed)
        assert sorted(got) == sorted(f"fspl-{i}.fspl" for i in range(0, n, 2))
        assert got["fspl-4.fspl"].size == 4 and got["fspl-4.fspl"].direction == "pull"
        assert j.known("pull", "r", names=[]) == {}
        linking = j.known("pull", "r", state=S.LINKING)
        assert sorted(linking) == sorted(f"fspl-{i}.fspl" for i in range(0, n, 100))
        assert set(j.known("pull", "r", names=listed, state=S.LINKING)) == {
            f"fspl-{i}.fspl" for i in range(0, n, 100)}


def test_signer_claims_first_wins_in_and_across_batches(tmp_path: Path) -> None:
    """(key, seq) is claimed by its first sha256: a later claim with other bytes — in the
    same batch, past a statement's chunk, or in a later run — gets the one on record; the
    same bytes again are no replay.  Claimed names stop waiting for a signature."""
    a, b = "aa" * 32, "bb" * 32
    n = jr._CLAIM_CHUNK + 7
    with jr.Journal(str(tmp_path)) as j:
        j.first_seen("r1", "fspl-1.fspl", 100.0)
        j.first_seen("r2", "fspl-2.fspl", 100.0)
        j.first_seen("r1", "fspl-w.fspl", 100.0)
        claims = [("K1", i, a, "r1", f"fspl-{i}.fspl") for i in range(n)]
        claims += [("K1", 3, b, "r1", "fspl-3b.fspl"),  # a replay inside the batch
                   ("K2", 3, b, "r2", "fspl-2.fspl"),  # another key: its own seq 3
                   ("K1", 5, a, "r1", "fspl-5c.fspl")]  # a copy: same bytes
        got = j.claim_signed_many(claims)
        assert got[:n] == [None] * n
        assert got[n:] == [a, None, None]
        assert j.claim_signed_many([("K1", n - 1, b, "r1", "x"), ("K2", 3, b, "r2", "y"),
                                    ("K2", 4, a, "r2", "z")]) == [a, None, None]
        assert [(k, c, s) for k, c, s, _ in j.signers()] == [("K1", n, n - 1), ("K2", 2, 4)]
        # the claimed names' waits are forgotten, the others kept
        assert j.first_seen("r1", "fspl-1.fspl", 200.0) == 200.0
        assert j.first_seen("r2", "fspl-2.fspl", 200.0) == 200.0
        assert j.first_seen("r1", "fspl-w.fspl", 200.0) == 100.0
