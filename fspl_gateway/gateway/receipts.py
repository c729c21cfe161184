"""Receipts: the sender learns what was delivered and what ran.

Off by default.  The receiver turns them on with ``fspl-gw sync --receipts``; the
sender reads them with ``fspl-gw receipts fetch`` (or ``push --after-push
keep-until-delivered|keep-until-ran``, which fetches them after pushing).

**The loop.**

1. ``sync --receipts`` marks the queue (``.fspl-gw/receipts.on``): from then on the queue
   processor (``queue-process``, ``workers``) appends each job's outcome to the queue's
   outcome log (:mod:`fspl_gateway.core.outcomes`).
2. After each sync, :func:`send` turns what happened since into receipts: a *delivered*
   receipt for each job the sync linked into ``jobs/`` (from the pull journal, so a run
   killed before this step is caught up by the next one) and a *ran* receipt for each
   outcome whose job came from this remote (matched by name in the pull journal, which
   also gives its sha256).  They are kept in ``.fspl-gw/receipts.sqlite`` until sent,
   batched into one file per run and written with no-clobber writes into ``receipts/``
   beside the remote's ``jobs/`` (:meth:`Transport.sibling`).  A batch is recorded
   before it is written and marked sent after: a kill between the two writes the same
   batch (same name, same bytes) again, never a new one.
3. :func:`fetch` (sender) lists the remote's ``receipts/``, verifies each batch (its
   minisign signature when trust keys are given; each receipt must name a job this
   outbox pushed to this remote, with the same sha256), records the receipts in the
   outbox's ``.fspl-gw/receipts.sqlite`` (a batch id seen before is a replay: refused,
   nothing counted twice), removes the batch from the remote, prunes the outbox jobs
   kept until their receipt, and runs the ``--on-failure`` hook once per failed job and
   once per stuck queue.

**The batch file** ``rcpt-<32 hex>.json`` (never ``fspl-*.fspl``), one JSON object::

    {"format": "fspl-gw-receipts", "version": 1, "batch": "<32 hex>",
     "queue": "<queue id>", "host": "<host name>", "created": 1700000000.0,
     "receipts": [
       {"kind": "delivered", "name": "fspl-….fspl", "seq": 7, "sha256": "…", "at": …},
       {"kind": "ran", "name": "fspl-….fspl", "seq": 7, "sha256": "…", "start": …,
        "end": …, "ok": false, "exit": 3, "status": "exit status 3",
        "output": {"bytes": 12, "sha256": "…", "head": "first KiB…"}}],
     "sender": "<key id>"}

Times are Unix seconds.  ``output`` (a ran receipt; only with ``--receipt-output
digest|head|both`` on the receiver, see :mod:`fspl_gateway.core.outcomes`) has ``bytes``
and ``sha256`` and/or ``head`` (the first KiB, made safe and redacted), and ``"partial":
true`` when a background process of the job still held its stdout.  ``sender``
(with trust) is the id of the key that signed every job of the batch: the receiver
batches each sender's receipts apart (also when routes put several senders' jobs into
one queue, or into several queues that each send), and a sender's fetch leaves a batch
that names none of its jobs on the remote for its owner.  A reader refuses another ``format``, a higher ``version`` and
any malformed field.  **Signed** (``--receipts-key`` on the receiver), a detached
minisign signature ``rcpt-<id>.json.minisig`` is written first; its trusted comment is
exactly ``fspl-gw-receipts v1 queue=<queue id> sha256=<sha256 of the batch file>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fspl_gateway.core import outcomes
from fspl_gateway.core.errors import (
    FsplError,
    QueueError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import atomic_write, fsync_dir
from fspl_gateway.core.hashing import sha256_hex
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.minisign import (
    PublicKey,
    SecretKey,
    Signature,
    SignatureError,
    sign_digest,
    verify_digest,
)
from fspl_gateway.core.outcomes import OutputMode
from fspl_gateway.gateway.journal import (
    Direction,
    FileRecord,
    JournalState,
    known_files,
    open_existing,
    signed_by,
)
from fspl_gateway.gateway.runframe import take_run_lock
from fspl_gateway.transports.base import Transport

FORMAT = "fspl-gw-receipts"
VERSION = 1
#: The directory beside the remote's ``jobs/`` that receipts travel in.
AREA = "receipts"
SIG_SUFFIX = ".minisig"
#: A batch file bigger than this is refused unread.
MAX_BATCH_BYTES = 4 << 20
#: Receipts per batch file.
BATCH_MAX = 2000
_NAME = re.compile(r"rcpt-([0-9a-f]{32})\.json")
_SHA = re.compile(r"[0-9a-f]{64}")
_QUEUE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}")
_KEY_ID = re.compile(r"[0-9A-F]{16}")
COMMENT_PREFIX = "fspl-gw-receipts v1"


class ReceiptError(FsplError):
    """A receipt batch that is malformed, unsigned, forged or replayed."""


class Kind(StrEnum):
    DELIVERED = "delivered"  # sync linked the job into the receiver's jobs/
    RAN = "ran"  # the receiver's queue processor ran it (ok or not)


class KeepUntil(StrEnum):
    """Which receipt lets ``push`` prune a kept outbox job."""

    DELIVERED = "delivered"
    RAN = "ran"  # ran successfully; a failed job stays in the outbox

    @classmethod
    def of_after_push(cls, after: str) -> KeepUntil | None:
        """``keep-until-delivered|keep-until-ran`` (``--after-push``) → its KeepUntil;
        any other value → None."""
        s = str(after)
        return cls(s.removeprefix("keep-until-")) if s.startswith("keep-until-") else None


@dataclass(frozen=True)
class Output:
    """What a ran receipt says of the job's output."""

    bytes: int
    sha256: str | None = None
    head: str | None = None
    #: The job's stdout was still open (a background process) when it was summed up.
    partial: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bytes": self.bytes}
        if self.partial:
            d["partial"] = True
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        if self.head is not None:
            d["head"] = self.head
        return d

    @classmethod
    def parse(cls, d: object) -> Output:
        """ReceiptError unless ``d`` is a well-formed output object."""
        if not isinstance(d, dict):
            raise ReceiptError("receipt field output is not an object")
        n, sha, head = d.get("bytes"), d.get("sha256"), d.get("head")
        partial = d.get("partial", False)
        if not isinstance(partial, bool):
            raise ReceiptError("receipt field output.partial is not true/false")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ReceiptError("bad output size in a receipt")
        if sha is not None and (not isinstance(sha, str) or not _SHA.fullmatch(sha)):
            raise ReceiptError("bad output sha256 in a receipt")
        if head is not None and (not isinstance(head, str)
                                 or len(head) > 8 * outcomes.HEAD_BYTES
                                 or outcomes.UNSAFE.search(head)):
            raise ReceiptError("bad output head in a receipt")
        return cls(n, sha, head, partial)


@dataclass(frozen=True)
class Receipt:
    kind: str
    name: str
    seq: int
    sha256: str
    #: Delivered: when it was linked; ran: when it ended.
    at: float
    start: float | None = None
    end: float | None = None
    ok: bool | None = None
    exit: int | None = None
    status: str | None = None
    output: Output | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "seq": self.seq,
                             "sha256": self.sha256}
        if self.kind == Kind.DELIVERED:
            d["at"] = self.at
        else:
            d.update(start=self.start, end=self.end, ok=self.ok, exit=self.exit,
                     status=self.status)
            if self.output is not None:
                d["output"] = self.output.to_json()
        return d


@dataclass(frozen=True)
class Batch:
    batch: str
    queue: str
    host: str
    created: float
    receipts: tuple[Receipt, ...]
    #: The key id that signed the jobs of this batch (trust), else None.
    sender: str | None = None

    @property
    def file_name(self) -> str:
        return batch_name(self.batch)


def batch_name(batch_id: str) -> str:
    return f"rcpt-{batch_id}.json"


def is_batch_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


# -- the format ---------------------------------------------------------------------------
def encode_batch(b: Batch) -> bytes:
    d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "batch": b.batch,
                         "queue": b.queue, "host": b.host, "created": b.created,
                         "receipts": [r.to_json() for r in b.receipts]}
    if b.sender is not None:
        d["sender"] = b.sender
    return (json.dumps(d, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def _num(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReceiptError(f"receipt field {what} is not a number")
    return float(v)


def _decode_receipt(d: object) -> Receipt:
    if not isinstance(d, dict):
        raise ReceiptError("a receipt is not an object")
    kind, name, seq, sha = d.get("kind"), d.get("name"), d.get("seq"), d.get("sha256")
    if kind not in (Kind.DELIVERED, Kind.RAN):
        raise ReceiptError(f"unknown receipt kind {kind!r}")
    if not isinstance(name, str) or not name.startswith("fspl-") or "/" in name:
        raise ReceiptError(f"bad job name in a receipt: {name!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ReceiptError(f"bad seq in a receipt: {seq!r}")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise ReceiptError("bad sha256 in a receipt")
    if kind == Kind.DELIVERED:
        return Receipt(Kind.DELIVERED, name, seq, sha, _num(d.get("at"), "at"))
    ok, ex, status = d.get("ok"), d.get("exit"), d.get("status")
    if not isinstance(ok, bool):
        raise ReceiptError("receipt field ok is not true/false")
    if ex is not None and (isinstance(ex, bool) or not isinstance(ex, int)):
        raise ReceiptError("receipt field exit is not an integer")
    if status is not None and not isinstance(status, str):
        raise ReceiptError("receipt field status is not a string")
    start, end = _num(d.get("start"), "start"), _num(d.get("end"), "end")
    out = d.get("output")
    return Receipt(Kind.RAN, name, seq, sha, end, start, end, ok, ex,
                   None if status is None else status[:200],
                   None if out is None else Output.parse(out))


def decode_batch(data: bytes) -> Batch:
    """Parse a batch file; ReceiptError for anything but a well-formed v1 batch."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ReceiptError("not JSON") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ReceiptError("not a receipt batch")
    if d.get("version") != VERSION:
        raise ReceiptError(f"receipt batch version {d.get('version')!r} is not supported")
    bid, queue, host, rs = d.get("batch"), d.get("queue"), d.get("host"), d.get("receipts")
    if not isinstance(bid, str) or not re.fullmatch(r"[0-9a-f]{32}", bid):
        raise ReceiptError("bad batch id")
    if not isinstance(queue, str) or not _QUEUE_ID.fullmatch(queue):
        raise ReceiptError("bad queue id")
    if not isinstance(host, str) or not isinstance(rs, list):
        raise ReceiptError("bad host or receipts")
    sender = d.get("sender")
    if sender is not None and (not isinstance(sender, str) or not _KEY_ID.fullmatch(sender)):
        raise ReceiptError("bad sender key id")
    return Batch(bid, queue, host[:255], _num(d.get("created"), "created"),
                 tuple(_decode_receipt(r) for r in rs), sender)


def trusted_comment(queue: str, sha: str) -> str:
    return f"{COMMENT_PREFIX} queue={queue} sha256={sha}"


def sign_batch(key: SecretKey, data: bytes, queue: str) -> bytes:
    """The detached minisign signature of a batch file (prehashed, minisign's format)."""
    digest = hashlib.blake2b(data, digest_size=64).digest()
    sig = sign_digest(key, digest, trusted_comment(queue, hashlib.sha256(data).hexdigest()),
                      "fspl-gw receipts signature")
    return sig.to_bytes()


def verify_batch(data: bytes, sig_data: bytes, keys: Sequence[PublicKey]) -> Batch:
    """Check a batch against its signature (by one of ``keys``, binding this file's
    sha256 and the queue the batch names); return the batch."""
    try:
        sig = Signature.parse(sig_data)
        verify_digest(sig, hashlib.blake2b(data, digest_size=64).digest(), keys)
    except SignatureError as e:
        raise ReceiptError(f"signature: {e}") from None
    b = decode_batch(data)
    want = trusted_comment(b.queue, hashlib.sha256(data).hexdigest())
    if sig.trusted_comment != want:
        raise ReceiptError(f"the signature binds {sig.trusted_comment!r}, not this batch")
    return b


# -- the receipts database (receiver: to send; sender: received) ---------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS out_items (
    remote TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    seq INTEGER NOT NULL, at REAL NOT NULL, start REAL NOT NULL DEFAULT 0, end_ REAL,
    ok INTEGER, exit INTEGER, status TEXT, batch TEXT, output TEXT, sender TEXT,
    PRIMARY KEY (remote, kind, name, sha256, start));
CREATE TABLE IF NOT EXISTS out_batches (
    id TEXT PRIMARY KEY, remote TEXT NOT NULL, body BLOB NOT NULL, sig BLOB,
    created REAL NOT NULL, sent REAL);
CREATE TABLE IF NOT EXISTS in_receipts (
    remote TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    seq INTEGER NOT NULL, at REAL NOT NULL, start REAL NOT NULL DEFAULT 0, end_ REAL,
    ok INTEGER, exit INTEGER, status TEXT, batch TEXT NOT NULL, queue TEXT,
    received REAL NOT NULL, output TEXT,
    PRIMARY KEY (remote, kind, name, sha256, start));
CREATE TABLE IF NOT EXISTS in_batches (
    remote TEXT NOT NULL, id TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (remote, id));
CREATE TABLE IF NOT EXISTS alerts (
    remote TEXT NOT NULL, key TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (remote, key));
"""
#: Columns added since the first version of the schema (added to an older database).
_ADDED = (("out_items", "output TEXT"), ("out_items", "sender TEXT"),
          ("in_receipts", "output TEXT"))


class ReceiptsDB:
    """``<queue>/.fspl-gw/receipts.sqlite`` (WAL; one transaction per step)."""

    def __init__(self, qdir: str, *, create: bool = True) -> None:
        self.path = QueueLayout(qdir).receipts_db
        self._lock = threading.Lock()
        if not create and not os.path.exists(self.path):
            raise QueueError(f"no receipts in {qdir}")
        try:
            if create:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                      check_same_thread=False)
            if create:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(_SCHEMA)
            for table, col in _ADDED:  # also for status reading an older database
                try:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
                except sqlite3.OperationalError:
                    pass  # there already (or no such table)
            self.db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as e:
            raise QueueError(f"cannot open {self.path}: {e}") from None

    def q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: {e}") from None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (all or nothing)."""
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: {e}") from None

    def close(self) -> None:
        self.db.close()


def _item_row(remote: str, r: Receipt) -> tuple[object, ...]:
    return (remote, r.kind, r.name, r.sha256, r.seq, r.at, r.start or 0.0, r.end,
            None if r.ok is None else int(r.ok), r.exit, r.status,
            None if r.output is None else json.dumps(r.output.to_json()))


def _row_receipt(row: Sequence[Any]) -> Receipt:
    kind, name, sha, seq, at, start, end, ok, ex, status, out = row
    output = None
    if out:
        try:
            output = Output.parse(json.loads(out))
        except (ValueError, ReceiptError):
            pass
    return Receipt(kind, name, seq, sha, at, start if kind == Kind.RAN else None, end,
                   None if ok is None else bool(ok), ex, status, output)


_ITEM_COLS = "kind, name, sha256, seq, at, start, end_, ok, exit, status, output"
#: INSERT of an out item: :func:`_item_row` and the sender.
_INSERT_OUT = ("INSERT OR IGNORE INTO out_items (remote, kind, name, sha256, seq, at, start,"
               " end_, ok, exit, status, output, sender) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")


@contextmanager
def locked_db(qdir: str, wait: float) -> Iterator[ReceiptsDB]:
    """The receipts database of ``qdir`` under the queue's run lock (one sync, push or
    receipts step at a time)."""
    lock_fd = take_run_lock(qdir, wait, "receipts")
    assert lock_fd is not None
    try:
        db = ReceiptsDB(qdir)
        try:
            yield db
        finally:
            db.close()
    finally:
        os.close(lock_fd)


# -- receiver ------------------------------------------------------------------------------
@dataclass
class SendOptions:
    #: The queue id named in receipts (and bound by their signature); default: the host
    #: name and the queue directory's name.
    queue_id: str | None = None
    #: Sign with this minisign secret key.
    sign_key: SecretKey | None = None
    wait_lock: float = 60.0
    #: What of each job's output its ran receipt carries (None: leave the queue's
    #: setting as it is; see :mod:`fspl_gateway.core.outcomes`).
    output: OutputMode | None = None


@dataclass
class SendResult:
    receipts: int = 0
    batches: int = 0


def enable(qdir: str, output: OutputMode | None = None) -> float:
    """Turn receipts on for the queue ``qdir`` (idempotent); return since when they are
    on (jobs delivered before are not receipted).  ``output``: set what of each job's
    output its ran receipt carries (``receipts.output``, read by the queue processor;
    None leaves it as it is)."""
    lay = QueueLayout(qdir)
    if not os.path.isdir(lay.jobs):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    if output is not None:
        _set_output_mode(lay, output)
    try:
        with open(lay.receipts_marker, "rb") as f:
            return float(f.read().decode().strip() or 0)
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return 0.0
    now = time.time()
    os.makedirs(lay.gw, exist_ok=True)
    with atomic_write(lay.gw, os.path.basename(lay.receipts_marker), clobber=True) as f:
        f.write(f"{now:.3f}\n".encode())
    return now


def _set_output_mode(lay: QueueLayout, mode: OutputMode) -> None:
    path = lay.receipt_output
    if outcomes.output_mode(lay.outcomes) == mode and (mode == OutputMode.NONE
                                                       or os.path.exists(path)):
        return
    os.makedirs(lay.gw, exist_ok=True)
    if mode == OutputMode.NONE:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    with atomic_write(lay.gw, os.path.basename(path), clobber=True) as f:
        f.write(f"{mode}\n".encode())


def default_queue_id(qdir: str) -> str:
    base = os.path.basename(os.path.abspath(qdir)) or "queue"
    qid = f"{socket.gethostname()}:{base}"
    return re.sub(r"[^A-Za-z0-9._:@+/-]", "_", qid)[:128]


def _pull_rows(qdir: str) -> dict[str, dict[str, FileRecord]]:
    """The pull journal: remote → name → record (of every remote recorded)."""
    j = open_existing(qdir)
    if j is None:
        return {}
    try:
        remotes = {r.remote for r in j.runs() if r.direction == Direction.PULL}
        return {rem: j.known(Direction.PULL, rem) for rem in remotes}
    finally:
        j.close()


def send(transport: Transport, qdir: str, opts: SendOptions | None = None) -> SendResult:
    """Receiver: receipt what was delivered from and ran for ``transport``'s jobs and
    write the pending batches to its ``receipts/`` (see the module doc)."""
    opts = opts or SendOptions()
    qid = opts.queue_id or default_queue_id(qdir)
    if not _QUEUE_ID.fullmatch(qid):
        raise ReceiptError(f"bad queue id {qid!r} (letters, digits and ._:@+/- only)")
    since = enable(qdir, opts.output)
    remote = transport.describe()
    res = SendResult()
    with locked_db(qdir, opts.wait_lock) as db:
        pulled = _pull_rows(qdir)
        senders = signed_by(qdir)
        _collect_delivered(db, pulled.get(remote, {}), remote, since, senders)
        outcomes.take(QueueLayout(qdir).outcomes,
                      lambda recs: _collect_ran(db, pulled, recs, senders))
        _make_batches(db, remote, qid, opts.sign_key)
        rows = db.q("SELECT id, body, sig FROM out_batches WHERE remote=? AND sent IS NULL"
                    " ORDER BY created", (remote,))
        if rows:
            rt = transport.sibling(AREA)
            try:
                rt.make_area()
                for bid, body, sig in rows:
                    _upload(rt, batch_name(bid), body, sig)
                    db.q("UPDATE out_batches SET sent=? WHERE id=?", (time.time(), bid))
                    res.batches += 1
                    res.receipts += len(json.loads(body)["receipts"])
            finally:
                rt.close()
    if res.batches:
        log.info("receipts: %d receipt(s) in %d batch(es) sent to %s", res.receipts,
                 res.batches, remote)
    return res


def _collect_delivered(db: ReceiptsDB, rows: dict[str, FileRecord], remote: str,
                       since: float, senders: dict[str, str]) -> None:
    items = [(*_item_row(remote, Receipt(Kind.DELIVERED, rec.name, rec.seq, rec.sha256,
                                         round(rec.time, 3))), senders.get(rec.name))
             for rec in rows.values()
             if rec.state == JournalState.FETCHED and rec.sha256 and rec.seq is not None
             and rec.time >= since]
    with db.tx() as c:
        c.executemany(_INSERT_OUT, items)


def _outcome_output(o: dict[str, Any]) -> Output | None:
    try:
        return None if o.get("output") is None else Output.parse(o["output"])
    except ReceiptError as e:
        log.warning("outcome of %s: %s; its receipt goes without it", o.get("name"), e)
        return None


def _collect_ran(db: ReceiptsDB, pulled: dict[str, dict[str, FileRecord]],
                 recs: list[dict[str, Any]], senders: dict[str, str]) -> None:
    """Outcome lines → ran receipts of the remote each job came from (idempotent)."""
    items: list[tuple[object, ...]] = []
    for o in recs:
        name = o.get("name")
        for remote, rows in pulled.items():
            rec = rows.get(name) if isinstance(name, str) else None
            if rec is None or not rec.sha256 or rec.seq is None or rec.seq != o.get("seq"):
                continue
            try:
                r = Receipt(Kind.RAN, rec.name, rec.seq, rec.sha256, float(o["end"]),
                            float(o["start"]), float(o["end"]), bool(o["ok"]),
                            o.get("exit") if isinstance(o.get("exit"), int) else None,
                            str(o.get("status") or "")[:200], _outcome_output(o))
            except (KeyError, TypeError, ValueError):
                continue
            items.append((*_item_row(remote, r), senders.get(rec.name)))
            break
        else:
            log.debug("outcome of %s: not a job from a remote; no receipt", name)
    with db.tx() as c:
        c.executemany(_INSERT_OUT, items)


def _make_batches(db: ReceiptsDB, remote: str, qid: str, key: SecretKey | None) -> None:
    """Pending items → batches, one sender's apart (recorded, with their bytes, before
    any is written)."""
    while True:
        first = db.q("SELECT sender FROM out_items WHERE remote=? AND batch IS NULL"
                     " ORDER BY at LIMIT 1", (remote,))
        if not first:
            return
        sender = first[0][0]
        rows = db.q(f"SELECT rowid, {_ITEM_COLS} FROM out_items WHERE remote=? AND batch IS"
                    " NULL AND sender IS ? ORDER BY at LIMIT ?", (remote, sender, BATCH_MAX))
        b, body, sig = _build(tuple(_row_receipt(r[1:]) for r in rows), qid, key,
                              sender if isinstance(sender, str) else None)
        with db.tx() as c:
            c.execute("INSERT INTO out_batches (id, remote, body, sig, created) VALUES"
                      " (?,?,?,?,?)", (b.batch, remote, body, sig, b.created))
            c.executemany("UPDATE out_items SET batch=? WHERE rowid=?",
                          [(b.batch, r[0]) for r in rows])


def _build(receipts: tuple[Receipt, ...], qid: str, key: SecretKey | None,
           sender: str | None = None) -> tuple[Batch, bytes, bytes | None]:
    """A new batch of ``receipts``: (batch, its file's bytes, its signature or None)."""
    b = Batch(uuid.uuid4().hex, qid, socket.gethostname()[:255], round(time.time(), 3),
              receipts, sender)
    body = encode_batch(b)
    return b, body, (sign_batch(key, body, qid) if key is not None else None)


def write_batch(transport: Transport, receipts: Sequence[Receipt], qid: str,
                key: SecretKey | None = None) -> Batch:
    """Write ``receipts`` at once as one batch into ``transport``'s ``receipts/``, for a
    receiver that runs jobs straight from the remote (multi-host workers: the job stays
    on the remote until its receipt is written, so a crash before runs it, and receipts
    it, again).  Raises TransportError."""
    if not _QUEUE_ID.fullmatch(qid):
        raise ReceiptError(f"bad queue id {qid!r} (letters, digits and ._:@+/- only)")
    b, body, sig = _build(tuple(receipts), qid, key)
    rt = transport.sibling(AREA)
    try:
        rt.make_area()
        _upload(rt, b.file_name, body, sig)
    finally:
        rt.close()
    return b


def _upload(rt: Transport, name: str, body: bytes, sig: bytes | None) -> None:
    import io

    parts = ([(name + SIG_SUFFIX, sig)] if sig is not None else []) + [(name, body)]
    for n, data in parts:
        try:
            rt.write_new(n, io.BytesIO(data), len(data))
        except RemoteExistsError:
            log.debug("%s is already in %s (our earlier attempt)", n, rt.describe())


# -- sender --------------------------------------------------------------------------------
@dataclass
class FetchOptions:
    #: Verify signatures with these keys (trust on: an unsigned batch is refused).
    trust_keys: list[PublicKey] = field(default_factory=list)
    #: Receipts must name this queue id (None: any).
    expect_queue: str | None = None
    #: Prune outbox jobs confirmed this far (None: prune nothing).
    keep_until: KeepUntil | None = None
    #: Shell command run once per failed job and once per stuck queue.
    on_failure: str | None = None
    #: A queue stuck behind a failing job this long (seconds) raises an alert.
    stuck_after: float = 3600.0
    wait_lock: float = 60.0


@dataclass
class FetchResult:
    batches: int = 0
    receipts: int = 0
    refused: int = 0
    pruned: int = 0
    alerts: int = 0
    #: Batches left on the remote for another sender (they name none of our jobs).
    others: int = 0

    def summary(self, remote: str) -> str:
        s = (f"receipts: {self.receipts} received in {self.batches} batch(es) from {remote}"
             f", {self.pruned} pruned")
        if self.refused:
            s += f", {self.refused} refused"
        if self.others:
            s += f", {self.others} batch(es) of other senders left"
        if self.alerts:
            s += f", {self.alerts} alert(s)"
        return s


def _read_bounded(rt: Transport, name: str) -> bytes:
    with rt.open(name) as f:
        data = f.read(MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        raise ReceiptError(f"{name} is larger than {MAX_BATCH_BYTES} bytes")
    return data


def fetch(transport: Transport, outbox: str, opts: FetchOptions | None = None) -> FetchResult:
    """Sender: read, verify, record and remove the remote's receipts; prune and alert
    (see the module doc)."""
    opts = opts or FetchOptions()
    remote = transport.describe()
    res = FetchResult()
    with locked_db(outbox, opts.wait_lock) as db:
        pushed = known_files(outbox, Direction.PUSH, remote)
        rt = transport.sibling(AREA)
        try:
            try:
                names = {e.name for e in rt.list()}
            except RemoteNotFoundError:
                names = set()
            for name in sorted(n for n in names if is_batch_name(n)):
                _fetch_one(rt, name, names, remote, pushed, db, opts, res)
        finally:
            rt.close()
        if opts.keep_until is not None:
            res.pruned = _prune(outbox, remote, pushed, db, opts.keep_until)
        if opts.on_failure:
            res.alerts = _alert(db, outbox, remote, opts)
    return res


def _fetch_one(rt: Transport, name: str, names: set[str], remote: str,
               pushed: dict[str, FileRecord], db: ReceiptsDB, opts: FetchOptions,
               res: FetchResult) -> None:
    sig_name = name + SIG_SUFFIX
    try:
        data = _read_bounded(rt, name)
        if opts.trust_keys:
            if sig_name not in names:
                raise ReceiptError("unsigned (trust keys are configured)")
            b = verify_batch(data, _read_bounded(rt, sig_name), opts.trust_keys)
        else:
            b = decode_batch(data)
        if b.file_name != name:
            raise ReceiptError(f"names batch {b.batch}, not the one its file name says")
        if opts.expect_queue is not None and b.queue != opts.expect_queue:
            raise ReceiptError(f"from queue {b.queue!r}, not {opts.expect_queue!r}")
    except RemoteNotFoundError:
        return  # removed meanwhile
    except ReceiptError as e:
        log.error("refusing receipt batch %s from %s: %s (left on the remote)", name,
                  remote, e)
        res.refused += 1
        return
    if b.receipts and not any(r.name in pushed for r in b.receipts):
        # another sender's (e.g. routed to another queue of the receiver): left for it
        log.debug("receipt batch %s from %s names no job this outbox pushed; left for its"
                  " sender%s", name, remote, f" (key {b.sender})" if b.sender else "")
        res.others += 1
        return
    if db.q("SELECT 1 FROM in_batches WHERE remote=? AND id=?", (remote, b.batch)):
        log.warning("receipt batch %s from %s was received before (a replay or a resend);"
                    " not counted again", name, remote)
    else:
        ok: list[Receipt] = []
        for r in b.receipts:
            rec = pushed.get(r.name)
            if rec is None or rec.sha256 != r.sha256:
                log.warning("refusing a %s receipt for %s from %s: not a job this outbox "
                            "pushed there with that sha256", r.kind, r.name, remote)
                res.refused += 1
                continue
            ok.append(r)
        now = time.time()
        with db.tx() as c:
            c.executemany("INSERT OR IGNORE INTO in_receipts (remote, kind, name, sha256, seq,"
                          " at, start, end_, ok, exit, status, output, batch, queue,"
                          " received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                          [(*_item_row(remote, r), b.batch, b.queue, now) for r in ok])
            c.execute("INSERT INTO in_batches (remote, id, received) VALUES (?,?,?)",
                      (remote, b.batch, now))
        res.batches += 1
        res.receipts += len(ok)
    for n in ([sig_name] if sig_name in names else []) + [name]:
        try:
            rt.delete(n)
        except RemoteNotFoundError:
            pass
        except TransportError as e:
            log.warning("received %s but could not remove it from %s: %s", n, remote, e)


def confirmed(db: ReceiptsDB, remote: str, until: KeepUntil) -> set[tuple[str, str]]:
    """(name, sha256) of the jobs confirmed as far as ``until``."""
    if until == KeepUntil.DELIVERED:
        rows = db.q("SELECT DISTINCT name, sha256 FROM in_receipts WHERE remote=?", (remote,))
    else:
        rows = db.q("SELECT DISTINCT name, sha256 FROM in_receipts WHERE remote=? AND"
                    " kind='ran' AND ok=1", (remote,))
    return {(n, s) for n, s in rows}


def _prune(outbox: str, remote: str, pushed: dict[str, FileRecord], db: ReceiptsDB,
           until: KeepUntil) -> int:
    """Remove the outbox jobs whose receipt came (exactly those: same name, sha256 the
    push journal recorded and the file still has)."""
    jdir = QueueLayout(outbox).jobs
    n = 0
    for name, sha in confirmed(db, remote, until):
        rec = pushed.get(name)
        path = os.path.join(jdir, name)
        if rec is None or rec.sha256 != sha or not os.path.exists(path):
            continue
        try:
            if sha256_hex(path) != sha:
                continue  # another job under the same name since
            os.unlink(path)
            n += 1
        except FileNotFoundError:
            continue
    if n:
        fsync_dir(jdir)
        log.info("receipts: pruned %d confirmed job(s) from %s", n, jdir)
    return n


# -- sender status and alerts -----------------------------------------------------------------
@dataclass
class FailedJob:
    name: str
    seq: int
    exit: int | None
    status: str | None
    #: When it first failed.
    since: float
    #: What its receipt says of its output (bytes, sha256, head), if anything.
    output: dict[str, Any] | None = None


@dataclass
class RemoteReceipts:
    """What the receipts of one remote say (sender side)."""

    remote: str
    pushed: int = 0
    delivered: int = 0
    ran: int = 0
    failed: list[FailedJob] = field(default_factory=list)
    #: Pushed, no receipt that it ran: the oldest one (by push time).
    unconfirmed: int = 0
    oldest_unconfirmed: str | None = None
    oldest_unconfirmed_age_seconds: float | None = None
    #: Delivered jobs wait behind a failed one with a lower seq.
    stuck: bool = False
    stuck_behind: str | None = None
    stuck_seconds: float | None = None
    last_receipt: float | None = None


def remote_receipts(qdir: str, now: float | None = None) -> list[RemoteReceipts]:
    """Per remote this outbox pushed to with receipts recorded (read-only; empty when
    the outbox has no receipts database)."""
    now = time.time() if now is None else now
    if not os.path.exists(QueueLayout(qdir).receipts_db):
        return []
    db = ReceiptsDB(qdir, create=False)
    try:
        remotes = [r for (r,) in db.q("SELECT DISTINCT remote FROM in_batches ORDER BY remote")]
        return [_remote_status(db, r, known_files(qdir, Direction.PUSH, r), now)
                for r in remotes]
    finally:
        db.close()


def _remote_status(db: ReceiptsDB, remote: str, pushed: dict[str, FileRecord],
                   now: float) -> RemoteReceipts:
    st = RemoteReceipts(remote)
    jobs = {(r.name, r.sha256): r for r in pushed.values()
            if r.state in (JournalState.PUSHED, JournalState.ALREADY_REMOTE) and r.sha256}
    st.pushed = len(jobs)
    rows = db.q(f"SELECT {_ITEM_COLS} FROM in_receipts WHERE remote=? ORDER BY at", (remote,))
    delivered: set[tuple[str, str]] = set()
    latest: dict[tuple[str, str], Receipt] = {}
    first_fail: dict[tuple[str, str], float] = {}
    for row in rows:
        r = _row_receipt(row)
        k = (r.name, r.sha256)
        delivered.add(k)
        st.last_receipt = max(st.last_receipt or 0.0, r.at)
        if r.kind == Kind.RAN:
            latest[k] = r
            if not r.ok:
                first_fail.setdefault(k, r.at)
    st.delivered = len(delivered)
    st.ran = sum(1 for r in latest.values() if r.ok)
    failed = sorted((r for r in latest.values() if not r.ok), key=lambda r: r.seq)
    st.failed = [FailedJob(r.name, r.seq, r.exit, r.status, first_fail[(r.name, r.sha256)],
                           None if r.output is None else r.output.to_json())
                 for r in failed]
    waiting = [rec for k, rec in jobs.items() if k not in latest]
    st.unconfirmed = len(waiting)
    if waiting:
        oldest = min(waiting, key=lambda rec: rec.time)
        st.oldest_unconfirmed = oldest.name
        st.oldest_unconfirmed_age_seconds = round(max(0.0, now - oldest.time), 3)
    for f in st.failed:
        behind = [rec for k, rec in jobs.items() if k in delivered and k not in latest
                  and rec.seq is not None and rec.seq > f.seq]
        if behind:
            st.stuck, st.stuck_behind = True, f.name
            st.stuck_seconds = round(max(0.0, now - f.since), 3)
            break
    return st


def _alert(db: ReceiptsDB, outbox: str, remote: str, opts: FetchOptions) -> int:
    """Run the hook once per failed job and once per stuck episode; remembered in the
    database (a hook that fails is tried again next time)."""
    assert opts.on_failure is not None
    st = _remote_status(db, remote, known_files(outbox, Direction.PUSH, remote), time.time())
    events: list[tuple[str, dict[str, str]]] = []
    for f in st.failed:
        events.append((f"failed:{f.name}:{f.since}", {
            "FSPL_GW_ALERT": "failed", "FSPL_GW_JOB": f.name, "FSPL_GW_SEQ": str(f.seq),
            "FSPL_GW_EXIT": "" if f.exit is None else str(f.exit),
            "FSPL_GW_STATUS": f.status or "",
            "FSPL_GW_OUTPUT_SHA256": str((f.output or {}).get("sha256") or ""),
            "FSPL_GW_OUTPUT_HEAD": str((f.output or {}).get("head") or "")}))
    if st.stuck and st.stuck_seconds is not None and st.stuck_seconds >= opts.stuck_after:
        f = next(x for x in st.failed if x.name == st.stuck_behind)
        events.append((f"stuck:{f.name}:{f.since}", {
            "FSPL_GW_ALERT": "stuck", "FSPL_GW_JOB": f.name, "FSPL_GW_SEQ": str(f.seq),
            "FSPL_GW_STUCK_SECONDS": str(int(st.stuck_seconds))}))
    n = 0
    for key, env in events:
        if db.q("SELECT 1 FROM alerts WHERE remote=? AND key=?", (remote, key)):
            continue
        env = {**os.environ, **env, "FSPL_GW_REMOTE": remote}
        rc = subprocess.run(["/bin/sh", "-c", opts.on_failure], env=env,
                            stdin=subprocess.DEVNULL, check=False).returncode
        if rc != 0:
            log.warning("the --on-failure command exited %d; it runs again next time", rc)
            continue
        db.q("INSERT OR IGNORE INTO alerts (remote, key, time) VALUES (?,?,?)",
             (remote, key, time.time()))
        n += 1
    return n


def pending_out(qdir: str) -> int:
    """Receiver: receipts recorded but not yet sent (for tests and status)."""
    if not os.path.exists(QueueLayout(qdir).receipts_db):
        return 0
    db = ReceiptsDB(qdir, create=False)
    try:
        rows = db.q("SELECT COUNT(*) FROM out_items i LEFT JOIN out_batches b ON i.batch=b.id"
                    " WHERE b.sent IS NULL")
        return int(rows[0][0])
    finally:
        db.close()


def load_trust_keys(specs: Iterable[str]) -> list[PublicKey]:
    from fspl_gateway.core.minisign import load_public_key

    return [load_public_key(s) for s in specs]
