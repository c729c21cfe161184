"""The gateway journal: an SQLite database inside a queue (or outbox) directory.

``<queue>/.fspl-gw/journal.sqlite`` (WAL mode) holds

* ``files`` — one row per file the sync/push engines handled, keyed by direction
  (``pull``/``push``), remote (``Transport.describe()``, never secrets) and file name:
  the remote's size and tag, the sha256 of the bytes, the job's seq, the time and a state
  (a :class:`JournalState`).  Pull uses it so that a file it already
  fetched is never downloaded again (``--after-fetch keep``, or a crash between linking
  the job in and deleting the remote copy); push so that a kept job is not pushed twice.
* ``signers`` — with trust (:mod:`~fspl_gateway.gateway.trust`): who signed each job
  fetched, by (key id, seq), with the sha256 that was signed, the remote and the name: a
  (key, seq) seen again with other bytes is a replay; ``fspl-gw status`` shows key ids;
* ``signature_waits`` — when a job without its signature was first seen (it waits out
  the signature wait before it is quarantined as unsigned);
* ``runs`` — the last run of each (direction, remote): start and end time, whether it
  succeeded, and its summary line.  :func:`last_runs` reads it for ``fspl-gw status``.

File names are stored as UTF-8 bytes with surrogate escapes (BLOB), so any name that the
file system or a remote gives survives the round trip.

Commits are per row, or per batch (:meth:`Journal.record_many`,
:meth:`Journal.mark_remote_deleted_many`: one transaction), with ``synchronous=NORMAL``:
a killed process loses nothing it committed; a power cut may lose the last rows, which only costs a re-download that the
engines recognise (same bytes already in ``jobs/``, or seq already processed).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fspl_gateway.core.errors import QueueError
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.redact import redact


class JournalState(StrEnum):
    """The state of a file in the journal, stored as its string value (the values are
    the on-disk format: never change one, or old journals stop reading right)."""

    # -- pull ------------------------------------------------------------------------
    #: Linked into jobs/.
    FETCHED = "fetched"
    #: An identical file was already in jobs/.
    ALREADY_LOCAL = "already-local"
    #: Its seq is below the queue's nextseq: already processed, not linked.
    ALREADY_PROCESSED = "already-processed"
    #: Set aside in the quarantine (detail: its name there).
    QUARANTINED = "quarantined"
    #: Durable in staging and about to be linked into jobs/ (detail: the staged path);
    #: the intent a killed run leaves for the next one to settle.
    LINKING = "linking"
    #: Not linked (a run stopped or was killed first): fetched again by the next run.
    RETRY = "retry"
    # -- push ------------------------------------------------------------------------
    #: Written to the remote and verified.
    PUSHED = "pushed"
    #: The same bytes were already on the remote.
    ALREADY_REMOTE = "already-remote"


#: The states a pull writes, and a push.
PULL_STATES = frozenset({JournalState.FETCHED, JournalState.ALREADY_LOCAL,
                         JournalState.ALREADY_PROCESSED, JournalState.QUARANTINED,
                         JournalState.LINKING, JournalState.RETRY})
PUSH_STATES = frozenset({JournalState.PUSHED, JournalState.ALREADY_REMOTE})

#: A row for :meth:`Journal.record_many`: (name, state, size, tag, sha256, seq, detail).
FileRow = tuple[str, JournalState, "int | None", "str | None", "str | None", "int | None",
                "str | None"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    direction TEXT NOT NULL,
    remote TEXT NOT NULL,
    name BLOB NOT NULL,
    size INTEGER,
    tag TEXT,
    sha256 TEXT,
    seq INTEGER,
    time REAL NOT NULL,
    state TEXT NOT NULL,
    remote_deleted INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    PRIMARY KEY (direction, remote, name)
);
CREATE TABLE IF NOT EXISTS runs (
    direction TEXT NOT NULL,
    remote TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    ok INTEGER NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (direction, remote)
);
CREATE TABLE IF NOT EXISTS signers (
    key_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    remote TEXT NOT NULL,
    name BLOB NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE TABLE IF NOT EXISTS signature_waits (
    remote TEXT NOT NULL,
    name BLOB NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (remote, name)
);
"""


#: Names per ``IN (…)`` query (SQLite allows 32,766 parameters since 3.32; 999 before).
_IN_CHUNK = 900
#: Claims per INSERT (six parameters each).
_CLAIM_CHUNK = 150


def _in_chunks(keys: Sequence[bytes]) -> Iterator[tuple[str, Sequence[bytes]]]:
    """``keys`` a chunk at a time, each with its ``(?,?,…)`` for an ``IN`` clause."""
    for i in range(0, len(keys), _IN_CHUNK):
        chunk = keys[i:i + _IN_CHUNK]
        yield f"({','.join('?' * len(chunk))})", chunk


def _by_remote(claims: Sequence[tuple[str, int, str, str, str]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for _, _, _, remote, name in claims:
        out.setdefault(remote, []).append(_key(name))
    return out


def journal_path(qdir: str) -> str:
    return QueueLayout(qdir).journal


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _unkey(b: bytes | str) -> str:
    return b if isinstance(b, str) else b.decode("utf-8", "surrogateescape")


class Direction(StrEnum):
    """Which way a run moves jobs; the journal keys its rows by it."""

    PULL = "pull"  # remote → local queue (``fspl-gw sync``)
    PUSH = "push"  # local outbox → remote (``fspl-gw push``)


@dataclass(frozen=True)
class FileRecord:
    direction: str
    remote: str
    name: str
    size: int | None
    tag: str | None
    sha256: str | None
    seq: int | None
    time: float
    #: A :class:`JournalState` value (a plain str if a newer version wrote one we do
    #: not know).
    state: str
    remote_deleted: bool
    detail: str | None


@dataclass(frozen=True)
class RunRecord:
    """The last sync (``pull``) or push of one remote."""

    direction: str
    remote: str
    started: float
    finished: float
    ok: bool
    summary: str


class Journal:
    """An open journal.  Thread-safe (one connection behind a lock)."""

    def __init__(self, qdir: str, *, create: bool = True) -> None:
        self.path = journal_path(qdir)
        self._lock = threading.Lock()
        if create:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        elif not os.path.exists(self.path):
            raise QueueError(f"no journal in {qdir}")
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
            if create:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise QueueError(f"cannot open journal {self.path}: {e}") from None

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise QueueError(f"journal {self.path}: {e}") from None

    # -- files ---------------------------------------------------------------------
    def lookup(self, direction: str, remote: str, name: str) -> FileRecord | None:
        rows = self._exec("SELECT direction, remote, name, size, tag, sha256, seq, time, state,"
                          " remote_deleted, detail FROM files"
                          " WHERE direction=? AND remote=? AND name=?",
                          (direction, remote, _key(name)))
        return _file_record(rows[0]) if rows else None

    def known(self, direction: str, remote: str, *, names: Iterable[str] | None = None,
              state: str | None = None) -> dict[str, FileRecord]:
        """The files recorded for one (direction, remote), by name: every one, or only
        those among ``names`` (what a listing shows: the journal keeps the whole history
        of a remote, and a run must not pay for all of it), or only those in ``state``."""
        sql = ("SELECT direction, remote, name, size, tag, sha256, seq, time, state,"
               " remote_deleted, detail FROM files WHERE direction=? AND remote=?")
        if state is not None:
            sql += " AND state=?"
        base: tuple[object, ...] = (direction, remote) if state is None else (
            direction, remote, state)
        if names is None:
            rows = self._exec(sql, base)
        else:
            keys = [_key(n) for n in names]
            rows = []
            for marks, chunk in _in_chunks(keys):  # by primary key, a chunk at a time
                rows += self._exec(f"{sql} AND name IN {marks}", (*base, *chunk))
        return {r.name: r for r in map(_file_record, rows)}

    def record(self, direction: str, remote: str, name: str, *, state: JournalState,
               size: int | None = None, tag: str | None = None, sha256: str | None = None,
               seq: int | None = None, detail: str | None = None) -> None:
        self._exec("INSERT OR REPLACE INTO files (direction, remote, name, size, tag, sha256,"
                   " seq, time, state, remote_deleted, detail)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                   (direction, remote, _key(name), size, tag, sha256, seq, time.time(), state,
                    redact(detail) if detail else detail))

    def _exec_many(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        """``sql`` for each of ``rows`` in one transaction (all or nothing)."""
        if not rows:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise QueueError(f"journal {self.path}: {e}") from None

    def record_many(self, direction: str, remote: str,
                    rows: Iterable[FileRow]) -> None:
        """Several :meth:`record` calls in one transaction; each row is (name, state,
        size, tag, sha256, seq, detail)."""
        now = time.time()
        self._exec_many("INSERT OR REPLACE INTO files (direction, remote, name, size, tag,"
                        " sha256, seq, time, state, remote_deleted, detail)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                        [(direction, remote, _key(n), size, tag, sha, seq, now, state, detail)
                         for n, state, size, tag, sha, seq, detail in rows])

    def mark_remote_deleted_many(self, direction: str, remote: str,
                                 names: Iterable[str]) -> None:
        self._exec_many("UPDATE files SET remote_deleted=1 WHERE direction=? AND remote=?"
                        " AND name=?", [(direction, remote, _key(n)) for n in names])

    def mark_remote_deleted(self, direction: str, remote: str, name: str) -> None:
        self._exec("UPDATE files SET remote_deleted=1 WHERE direction=? AND remote=? AND name=?",
                   (direction, remote, _key(name)))

    def forget(self, direction: str, remote: str, name: str) -> None:
        self._exec("DELETE FROM files WHERE direction=? AND remote=? AND name=?",
                   (direction, remote, _key(name)))

    # -- signers (trust) -------------------------------------------------------------
    def claim_signed_many(self, claims: Sequence[tuple[str, int, str, str, str]]
                          ) -> list[str | None]:
        """Record that each key id signed its seq as that sha256 — (key id, seq, sha256,
        remote, name) — in order and in one transaction, the first claim of a (key, seq)
        winning, each name's signature wait forgotten (:meth:`forget_wait`); per claim the
        sha256 already on record when it differs (a replay with other bytes), else None.
        The statement is atomic: of two claims at once, the second sees the first."""
        out: list[str | None] = []
        if not claims:
            return out
        now = time.time()
        with self._lock:
            try:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    # First claim wins: a (key, seq) already there keeps its row (the
                    # no-op update makes RETURNING give it), and one statement per part
                    # both claims and reads what is on record.
                    held: dict[tuple[str, int], str] = {}
                    for i in range(0, len(claims), _CLAIM_CHUNK):
                        part = claims[i:i + _CLAIM_CHUNK]
                        held.update(((k, s), h) for k, s, h in db.execute(
                            "INSERT INTO signers (key_id, seq, sha256, remote, name, time) VALUES "
                            f"{', '.join(['(?, ?, ?, ?, ?, ?)'] * len(part))} ON CONFLICT"
                            " (key_id, seq) DO UPDATE SET key_id=key_id"
                            " RETURNING key_id, seq, sha256",
                            [v for k, seq, sha, remote, name in part
                             for v in (k, seq, sha, remote, _key(name), now)]))
                    for key_id, seq, sha256, _, _ in claims:
                        other = held.get((key_id, seq))
                        out.append(None if other is None or other == sha256 else str(other))
                    for remote, names in _by_remote(claims).items():
                        for marks, chunk in _in_chunks(names):
                            db.execute("DELETE FROM signature_waits WHERE remote=? AND name IN"
                                       f" {marks}", (remote, *chunk))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as e:
                raise QueueError(f"journal {self.path}: {e}") from None
        return out

    def signers(self) -> list[tuple[str, int, int, float]]:
        """(key id, jobs, last seq, last time) per signing key, by key id; empty for a
        journal older than trust."""
        try:
            rows = self._exec("SELECT key_id, COUNT(*), MAX(seq), MAX(time) FROM signers"
                              " GROUP BY key_id ORDER BY key_id")
        except QueueError:
            return []  # no signers table: written before trust existed
        return [(str(k), int(n), int(s), float(t)) for k, n, s, t in rows]  # type: ignore[call-overload, arg-type]

    def first_seen(self, remote: str, name: str, now: float) -> float:
        """When ``name`` was first seen without its signature (``now`` if never)."""
        self._exec("INSERT OR IGNORE INTO signature_waits (remote, name, first_seen)"
                   " VALUES (?, ?, ?)", (remote, _key(name), now))
        rows = self._exec("SELECT first_seen FROM signature_waits WHERE remote=? AND name=?",
                          (remote, _key(name)))
        return float(rows[0][0])  # type: ignore[arg-type]

    def forget_wait(self, remote: str, name: str) -> None:
        self._exec("DELETE FROM signature_waits WHERE remote=? AND name=?",
                   (remote, _key(name)))

    # -- runs ----------------------------------------------------------------------
    def record_run(self, direction: str, remote: str, started: float, ok: bool,
                   summary: str) -> None:
        self._exec("INSERT OR REPLACE INTO runs (direction, remote, started, finished, ok,"
                   " summary) VALUES (?, ?, ?, ?, ?, ?)",
                   (direction, remote, started, time.time(), int(ok), redact(summary)))

    def runs(self) -> list[RunRecord]:
        rows = self._exec("SELECT direction, remote, started, finished, ok, summary FROM runs"
                          " ORDER BY remote, direction")
        return [RunRecord(str(d), str(r), float(s), float(f), bool(o), str(m))  # type: ignore[arg-type]
                for d, r, s, f, o, m in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_record(r: tuple[object, ...]) -> FileRecord:
    d, rem, name, size, tag, sha, seq, t, state, deleted, detail = r
    return FileRecord(str(d), str(rem), _unkey(name), size, tag, sha, seq,  # type: ignore[arg-type]
                      float(t), str(state), bool(deleted), detail)  # type: ignore[arg-type]


def open_existing(qdir: str) -> Journal | None:
    """The journal of ``qdir`` if it has one (nothing is created), else None."""
    if not os.path.exists(journal_path(qdir)):
        return None
    return Journal(qdir, create=False)


def last_runs(qdir: str) -> list[RunRecord]:
    """The last sync/push of each remote recorded in ``qdir`` (empty if none).  For the
    status command; never creates anything."""
    j = open_existing(qdir)
    if j is None:
        return []
    try:
        return j.runs()
    finally:
        j.close()


def known_files(qdir: str, direction: str, remote: str) -> dict[str, FileRecord]:
    """Every file of ``qdir``'s journal for one (direction, remote), by name (empty if
    there is no journal; nothing is created)."""
    j = open_existing(qdir)
    if j is None:
        return {}
    try:
        return j.known(direction, remote)
    finally:
        j.close()


def signers(qdir: str) -> list[tuple[str, int, int, float]]:
    """:meth:`Journal.signers` of ``qdir`` (empty without a journal); never creates one."""
    j = open_existing(qdir)
    if j is None:
        return []
    try:
        return j.signers()
    finally:
        j.close()


def signed_by(qdir: str) -> dict[str, str]:
    """Job name → the key id that signed it (trust; empty without a journal or signers);
    never creates a journal.  For receipts: whose job it was."""
    j = open_existing(qdir)
    if j is None:
        return {}
    try:
        rows = j._exec("SELECT name, key_id FROM signers")
    except QueueError:
        return {}  # no signers table: written before trust existed
    finally:
        j.close()
    return {_unkey(n): str(k) for n, k in rows}  # type: ignore[arg-type]


def file_count(qdir: str, direction: str | None = None) -> int:
    """How many files the journal of ``qdir`` remembers (optionally one direction)."""
    j = open_existing(qdir)
    if j is None:
        return 0
    try:
        if direction is None:
            rows = j._exec("SELECT COUNT(*) FROM files")
        else:
            rows = j._exec("SELECT COUNT(*) FROM files WHERE direction=?", (direction,))
        return int(rows[0][0])  # type: ignore[call-overload]
    finally:
        j.close()
