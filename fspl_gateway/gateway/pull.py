"""Pull: move job files from a remote queue's ``jobs/`` into a local queue, safely.

For each remote file named ``fspl-*.fspl`` (names with ``/``, ``..``, NUL or control
characters are refused with a warning and never fetched; other names are ignored):

1. skip it if the journal already knows it (same size/tag): it was fetched before, so it
   is never downloaded twice; with ``after_fetch="delete"`` its remote copy is removed;
2. if it is big and the queue has a ``nextseq``, read just its header first: a seq below
   ``nextseq`` was already processed, so it is not downloaded at all;
3. download it to ``<queue>/.fspl-gw/staging/`` (same file system as ``jobs/``),
   retrying transient errors with exponential backoff and jitter (a local remote on the
   same file system is hard-linked there instead, with ``after_fetch="delete"``);
4. validate the header (through ``--decoder`` if given): a bad one is fetched once more,
   then set aside in ``<queue>/.fspl-gw/quarantine/`` with a ``.reason`` file, the remote
   left alone (exit 3);
5. seq below ``nextseq`` → already processed: dropped, remote cleaned up per policy;
6. make it durable (fsync), then link it into ``jobs/`` without clobbering and fsync
   ``jobs/``.  A name already there: same bytes → skipped (remote cleaned up), different
   bytes → quarantined (exit 3);
7. record it in the journal, then apply the remote clean-up policy (delete or keep).

Steps 1–5 run in parallel (``concurrency`` threads); steps 6–7 run for a batch of files
at once (:data:`BATCH`): their writeback is started together and each is fsynced before
any of them is linked into ``jobs/``, ``jobs/`` is fsynced once, the batch is journaled
in one transaction, and only then are the remote copies removed
(:meth:`Transport.delete_many`).  So a job appears in ``jobs/`` whole or not at all, and
a remote copy is removed only once the local one is durable and journaled.

One sync or push per directory at a time: ``<queue>/.fspl-gw/lock``.  A busy lock makes
:func:`pull` return a result with ``locked_out`` set (the CLI prints one info line and
exits 0); ``wait_lock`` waits up to that many seconds first and then raises
:class:`~fspl_gateway.core.errors.LockBusyError`.

A local write error (disk full, file size limit, read-only) aborts the run with a
QueueError: the staged file is removed, the remote untouched.  AuthError and
HostKeyError abort too; other per-file transport errors count as failed (exit 3).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fspl_gateway.core import seqfile
from fspl_gateway.core.errors import (
    AuthError,
    FsplError,
    HostKeyError,
    LockBusyError,
    NotSupportedError,
    PacketError,
    QueueError,
    RemoteNotFoundError,
    TransportError,
    UsageError,
)
from fspl_gateway.core.fsutil import atomic_write, fsync_dir, move_noclobber, tmp_name
from fspl_gateway.core.hashing import sha256_hex as sha256_path
from fspl_gateway.core.log import TRACE, log
from fspl_gateway.core.packet import Meta, read_header, read_header_file
from fspl_gateway.core.queue import OpenJob, jobs_dir, seqfile_path
from fspl_gateway.gateway.journal import Journal, gw_dir, open_existing
from fspl_gateway.transports.base import RemoteEntry, Transport, is_job_name, is_safe_name

#: A journal row for Journal.record_many: (name, state, size, tag, sha256, seq, detail).
_Row = tuple[str, str, "int | None", "str | None", "str | None", "int | None", "str | None"]

T = TypeVar("T")

LOCK_NAME = "lock"
STAGING = "staging"
QUARANTINE = "quarantine"
#: Remote files at least this big (or of unknown size) get their header read before the
#: download, so that an already-processed job is not downloaded at all.
PEEK_MIN = 1 << 20
#: Files linked into jobs/ per fsync of jobs/ (and per round of remote deletes).
BATCH = 128

_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


# -- shared by sync and push ----------------------------------------------------------
@dataclass
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 20.0


def with_retries(fn: Callable[[], T], what: str, policy: RetryPolicy,
                 stop: threading.Event | None = None) -> T:
    """Call ``fn``; on a transient TransportError (TransientError, IntegrityError) try
    again after an exponentially growing, jittered delay, at most ``policy.attempts``
    times in all.  The last error is re-raised."""
    attempt = 1
    while True:
        try:
            return fn()
        except TransportError as e:
            if not e.transient or attempt >= policy.attempts or (stop and stop.is_set()):
                raise
            delay = min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            log.debug("%s: %s; retrying in %.2f s (attempt %d of %d)", what, e, delay,
                      attempt + 1, policy.attempts)
            time.sleep(delay)
            attempt += 1


def is_local_disk_error(exc: BaseException) -> OSError | None:
    """The OSError (disk full, file too large, quota, read-only) behind ``exc``, if any,
    following ``__cause__``/``__context__`` (transports wrap OSErrors)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def take_run_lock(qdir: str, wait: float | None, what: str) -> int | None:
    """Lock ``<qdir>/.fspl-gw/lock``; return its descriptor, or None when busy and
    ``wait`` is None.  With ``wait`` set, busy after that long → LockBusyError."""
    d = gw_dir(qdir)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise QueueError(f"cannot create {d}: {e.strerror}") from None
    try:
        return seqfile.acquire_lock(os.path.join(d, LOCK_NAME), create=True,
                                    wait=wait or 0.0, what=f"{qdir} ({what})")
    except LockBusyError:
        if wait is None:
            return None
        raise LockBusyError(f"{qdir} is still locked by another fspl-gw sync/push after "
                            f"waiting {wait:g} s") from None


class Progress:
    """A rich progress bar on stderr when it is a terminal (rich imported only then);
    otherwise a no-op."""

    def __init__(self, enabled: bool | None, total: int, description: str) -> None:
        if enabled is None:
            enabled = (sys.stderr.isatty() and log.getEffectiveLevel() <= logging.INFO
                       and total > 0)
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._bar = RichProgress(console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task(description, total=total)
        self._bar.start()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def run_parallel(items: Iterable[T], fn: Callable[[T], None], concurrency: int,
                 stop: threading.Event, progress: Progress) -> None:
    """Run ``fn`` on each item with up to ``concurrency`` threads.  The first exception
    sets ``stop`` (items not yet started are skipped) and is re-raised at the end."""
    errors: list[BaseException] = []

    def one(item: T) -> None:
        if stop.is_set():
            return
        try:
            fn(item)
        except BaseException as e:
            stop.set()
            errors.append(e)
        finally:
            progress.advance()

    if concurrency <= 1:
        for item in items:
            one(item)
            if stop.is_set():
                break
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fspl-gw") as ex:
            for _ in ex.map(one, items):
                pass
    if errors:
        raise errors[0]


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"


# -- pull ----------------------------------------------------------------------------
@dataclass
class SyncOptions:
    #: "delete" (default, like ``rclone move``) or "keep" the remote copy once fetched.
    after_fetch: str = "delete"
    #: Shell command that decodes a job file (stdin) to a packet (stdout).
    decoder: str | None = None
    dry_run: bool = False
    #: Fetch at most this many new jobs in this run.
    max_jobs: int | None = None
    #: Parallel transfers (threads).
    concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: None: a busy lock returns at once (locked_out); else wait that many seconds.
    wait_lock: float | None = None
    #: None: a progress bar when stderr is a terminal.
    progress: bool | None = None
    peek_min: int = PEEK_MIN


@dataclass
class RunResult:
    """What one pull or push run did (the counters both engines share)."""

    remote: str
    skipped: int = 0
    quarantined: int = 0
    failed: int = 0
    refused: int = 0
    #: Files the journal already knew (nothing done).
    known: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    locked_out: bool = False
    #: Names moved (or, in a dry run, that would be).
    names: list[str] = field(default_factory=list)


@dataclass
class SyncResult(RunResult):
    fetched: int = 0

    @property
    def exit_code(self) -> int:
        from fspl_gateway.core.errors import EXIT_OK, EXIT_PARTIAL

        return EXIT_PARTIAL if self.quarantined or self.failed else EXIT_OK

    def summary(self) -> str:
        if self.dry_run:
            return (f"sync (dry run): {len(self.names)} to fetch, {self.known} known "
                    f"from {self.remote}")
        s = (f"sync: {self.fetched} fetched, {self.skipped} skipped, "
             f"{self.quarantined} quarantined")
        if self.failed:
            s += f", {self.failed} failed"
        if self.refused:
            s += f", {self.refused} refused"
        return s + f" from {self.remote} in {fmt_seconds(self.seconds)}"


def _check_options(after: str, concurrency: int, max_jobs: int | None, attempts: int) -> None:
    if after not in ("delete", "keep"):
        raise UsageError(f"bad clean-up policy {after!r} (delete or keep)")
    if concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    if max_jobs is not None and max_jobs < 0:
        raise UsageError("max-jobs must not be negative")
    if attempts < 1:
        raise UsageError("retries must be at least 1")


def _same_remote_file(size: int | None, tag: str | None, e: RemoteEntry) -> bool:
    if size is not None and e.size is not None and size != e.size:
        return False
    return not (tag is not None and e.tag is not None and tag != e.tag)


def pull(transport: Transport, queue_dir: str | os.PathLike[str],
         opts: SyncOptions | None = None) -> SyncResult:
    """Pull new jobs from ``transport`` into the queue ``queue_dir`` (see module doc)."""
    opts = opts or SyncOptions()
    _check_options(opts.after_fetch, opts.concurrency, opts.max_jobs, opts.retry.attempts)
    qdir = os.fspath(queue_dir)
    if not os.path.isdir(jobs_dir(qdir)):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    res = SyncResult(remote=transport.describe(), dry_run=opts.dry_run)
    return run_engine("pull", _Puller, transport, qdir, opts, res)


def run_engine(direction: str, engine: Any, transport: Transport, qdir: str, opts: Any,
               res: Any) -> Any:
    """The frame shared by pull and push: dry run without lock or journal; otherwise
    the per-queue run lock (busy → ``res.locked_out``), the journal, the engine's
    ``run()``, and the run's outcome recorded in the journal (also when it fails)."""
    t0 = time.monotonic()
    if opts.dry_run:
        engine(transport, qdir, opts, None, res).dry_run()
        res.seconds = time.monotonic() - t0
        return res
    lock_fd = take_run_lock(qdir, opts.wait_lock, "another fspl-gw sync or push")
    if lock_fd is None:
        res.locked_out = True
        return res
    journal: Journal | None = None
    started = time.time()
    try:
        journal = Journal(qdir)
        try:
            engine(transport, qdir, opts, journal, res).run()
        except FsplError as e:
            res.seconds = time.monotonic() - t0
            journal.record_run(direction, res.remote, started, False, f"error: {e}")
            raise
        res.seconds = time.monotonic() - t0
        journal.record_run(direction, res.remote, started, res.exit_code == 0, res.summary())
    finally:
        if journal is not None:
            journal.close()
        os.close(lock_fd)
    return res


class _Puller:
    def __init__(self, transport: Transport, qdir: str, opts: SyncOptions,
                 journal: Journal | None, res: SyncResult) -> None:
        self.t = transport
        self.qdir = qdir
        self.jdir = jobs_dir(qdir)
        self.staging = os.path.join(gw_dir(qdir), STAGING)
        self.qdir_q = os.path.join(gw_dir(qdir), QUARANTINE)
        self.opts = opts
        self.journal = journal
        self.res = res
        self.remote = res.remote
        self.stop = threading.Event()
        self.mutex = threading.Lock()
        self.nextseq = seqfile.read_unlocked(seqfile_path(qdir))
        self.can_delete = transport.capabilities.can_delete
        self.error: BaseException | None = None

    # -- planning ------------------------------------------------------------------
    def _list(self) -> list[RemoteEntry]:
        return with_retries(lambda: list(self.t.list()), f"listing {self.remote}",
                            self.opts.retry)

    def _plan(self, entries: list[RemoteEntry], known: dict[str, Any]
              ) -> tuple[list[RemoteEntry], list[tuple[RemoteEntry, Any]]]:
        """(to fetch, journal-known) among the listed entries."""
        todo: list[RemoteEntry] = []
        done: list[tuple[RemoteEntry, Any]] = []
        for e in sorted(entries, key=lambda e: e.name):
            if not is_job_name(e.name):
                if not is_safe_name(e.name):
                    log.warning("refusing remote file with an unsafe name %r in %s",
                                e.name, self.remote)
                    self.res.refused += 1
                else:
                    log.log(TRACE, "ignoring %s: not a job file name", e.name)
                continue
            rec = known.get(e.name)
            if rec is not None and _same_remote_file(rec.size, rec.tag, e):
                if rec.state == "retry":
                    todo.append(e)  # a killed run staged it but never linked it
                elif rec.state == "quarantined" and not os.path.exists(
                        os.path.join(self.qdir_q, rec.detail or "")):
                    todo.append(e)  # the operator cleared the quarantine: try again
                else:
                    done.append((e, rec))
                continue
            todo.append(e)
        if self.opts.max_jobs is not None:
            todo = todo[:self.opts.max_jobs]
        return todo, done

    def dry_run(self) -> None:
        j = open_existing(self.qdir)
        try:
            known = j.known("pull", self.remote) if j is not None else {}
        finally:
            if j is not None:
                j.close()
        todo, done = self._plan(self._list(), known)
        self.res.known = len(done)
        for e in todo:
            log.info("would fetch %s (%s bytes)", e.name, "?" if e.size is None else e.size)
            self.res.names.append(e.name)

    def _clean_staging(self) -> None:
        for d in (self.staging, self.qdir_q):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise QueueError(f"cannot create {d}: {e.strerror}") from None
        n = 0
        with os.scandir(self.staging) as it:
            for de in it:  # we hold the lock: anything here is a dead run's leftover
                try:
                    os.unlink(de.path)
                    n += 1
                except FileNotFoundError:
                    pass
        if n:
            log.debug("removed %d stale staging file(s) from %s", n, self.staging)

    def _recover_linking(self) -> None:
        """Settle the files a killed run was linking into jobs/ (journal state
        "linking", detail = the staged path): in jobs/ with our bytes, or gone from both
        jobs/ and staging (linked, then processed and removed) → fetched; still staged
        only → not linked: fetch it again."""
        assert self.journal is not None
        rows: list[_Row] = []
        for name, rec in self.journal.known("pull", self.remote).items():
            if rec.state != "linking":
                continue
            staged = rec.detail or ""
            in_jobs = os.path.exists(os.path.join(self.jdir, name))
            if in_jobs and _same_bytes(os.path.join(self.jdir, name), rec.size or 0,
                                       rec.sha256 or ""):
                state = "fetched"
            elif not in_jobs and not (staged and os.path.exists(staged)):
                state = "fetched"  # linked, then run and removed by the queue's processor
            else:
                state = "retry"
            log.debug("interrupted link of %s: %s", name, state)
            rows.append((name, state, rec.size, rec.tag, rec.sha256, rec.seq, None))
        self.journal.record_many("pull", self.remote, rows)

    def run(self) -> None:
        self._recover_linking()
        self._clean_staging()
        try:
            n = with_retries(self.t.cleanup_temporaries, "cleaning up remote temporaries",
                             self.opts.retry)
            if n:
                log.debug("removed %d stale remote temporaries in %s", n, self.remote)
        except NotSupportedError:
            pass
        assert self.journal is not None
        todo, done = self._plan(self._list(), self.journal.known("pull", self.remote))
        for e, rec in done:
            if rec.state == "quarantined":
                log.warning("%s from %s is still quarantined (%s/%s); not fetched again",
                            e.name, self.remote, self.qdir_q, rec.detail)
                self.res.quarantined += 1
            elif self.opts.after_fetch == "delete" and self.can_delete:
                self.res.skipped += 1
            else:
                self.res.known += 1
        progress = Progress(self.opts.progress, len(todo), f"sync {self.remote}")
        threads = max(1, min(self.opts.concurrency,
                             self.t.set_concurrency(self.opts.concurrency)))
        if threads < self.opts.concurrency:
            log.debug("%s: %d thread(s) (the transport gains nothing from more)",
                      self.remote, threads)
        pool = (ThreadPoolExecutor(threads, thread_name_prefix="fspl-gw")
                if threads > 1 else None)
        try:
            if done and self.opts.after_fetch == "delete" and self.can_delete:
                for i in range(0, len(done), BATCH * 8):
                    self._cleanup_remote_many([e.name for e, r in done[i:i + BATCH * 8]
                                               if r.state != "quarantined"])
            # Batches: download (parallel) → fsync them all, link them into jobs/, one
            # fsync of jobs/ → journal (one transaction) → delete the remote copies.
            for i in range(0, len(todo), BATCH):
                staged = self._map(pool, self._one, todo[i:i + BATCH], progress)
                try:
                    clean = self._commit(staged)
                except BaseException as e:
                    with self.mutex:
                        if self.error is None:
                            self.error = e
                    self.stop.set()
                    break
                self._cleanup_remote_many(clean)
                if self.stop.is_set():
                    break
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            progress.close()
        if self.error is not None:
            raise self.error

    def _map(self, pool: ThreadPoolExecutor | None, fn: Callable[[Any], T],
             items: list[Any], progress: Progress | None = None) -> list[T]:
        """``fn`` over ``items`` (in the pool if any); the results of those that did not
        raise.  The first exception stops the run (kept in ``self.error``)."""
        def one(item: Any) -> tuple[bool, Any]:
            if self.stop.is_set():
                return False, None
            try:
                return True, fn(item)
            except BaseException as e:
                with self.mutex:
                    if self.error is None:
                        self.error = e
                self.stop.set()
                return False, None
            finally:
                if progress is not None:
                    progress.advance()

        out = pool.map(one, items) if pool is not None else map(one, items)
        return [r for ok, r in out if ok]

    # -- one file ------------------------------------------------------------------
    def _count(self, what: str, n: int = 1) -> None:
        with self.mutex:
            setattr(self.res, what, getattr(self.res, what) + n)

    def _one(self, e: RemoteEntry) -> _Staged | None:
        try:
            return self._fetch_one(e)
        except (AuthError, HostKeyError):
            raise
        except RemoteNotFoundError as err:
            log.debug("%s vanished from %s before it was fetched: %s", e.name, self.remote, err)
        except TransportError as err:
            log.error("cannot fetch %s from %s: %s", e.name, self.remote, err)
            self._count("failed")
        return None

    def _peek_seq(self, name: str) -> int | None:
        def peek() -> int | None:
            with self.t.open(name) as s:
                try:
                    meta, _ = read_header_file(s)
                except PacketError:
                    return None
            return meta.seq
        return with_retries(peek, f"reading the header of {name}", self.opts.retry, self.stop)

    def _fetch_one(self, e: RemoteEntry) -> _Staged | None:
        """Download and validate one file into staging (fsynced)."""
        if (self.nextseq is not None and self.opts.decoder is None
                and (e.size is None or e.size >= self.opts.peek_min)):
            seq = self._peek_seq(e.name)
            if seq is not None and seq < self.nextseq:
                self._already_processed(e, seq, None)
                self._cleanup_remote_many([e.name])
                return None
        for attempt in (1, 2):
            path, size = self._stage(e)
            try:
                sha, meta = self._inspect(path)
            except PacketError as perr:
                sha = sha256_path(path)
                if attempt == 1:
                    log.debug("%s: %s; fetching it again", e.name, perr)
                    os.unlink(path)
                    continue
                self._quarantine(path, e, sha, f"the header does not validate: {perr}")
                return None
            except OSError as err:
                self._unlink_quiet(path)
                raise QueueError(f"cannot read {path}: {err.strerror}") from None
            return _Staged(e, path, size, sha, meta)
        return None

    def _commit(self, batch: list[_Staged | None]) -> list[str]:
        """Make a batch of staged files durable, link them into jobs/ (one fsync of
        jobs/), journal them (one transaction); return the names whose remote copy may
        now be cleaned up."""
        rows: list[_Row] = []
        clean: list[str] = []
        keep: list[_Staged] = []
        for st in batch:
            if st is None:
                continue
            if self.nextseq is not None and st.meta.seq < self.nextseq:
                os.unlink(st.path)
                log.debug("%s has seq %d < nextseq %s: already processed, not fetched",
                          st.entry.name, st.meta.seq, self.nextseq)
                rows.append(self._row(st.entry, "already-processed", st.entry.size, st.sha,
                                      st.meta.seq))
                self._count("skipped")
                clean.append(st.entry.name)
                continue
            keep.append(st)
        try:
            _flush_files([st.path for st in keep])
        except OSError as err:
            for st in keep:
                self._unlink_quiet(st.path)
            raise QueueError(f"cannot make the fetched files durable in {self.staging}: "
                             f"{err.strerror}; nothing was changed remotely") from None
        # Intent first: should we die between linking a file into jobs/ and journaling
        # it, the next run must know it was linked (and perhaps already processed and
        # removed by the queue's processor), so that it is never fetched twice.
        assert self.journal is not None
        self.journal.record_many("pull", self.remote, [
            (st.entry.name, "linking", st.size, st.entry.tag, st.sha, st.meta.seq, st.path)
            for st in keep])
        fetched: list[_Staged] = []
        for i, st in enumerate(keep):
            how = self._link(st)
            if how == "linked":
                fetched.append(st)
            elif how == "skipped":
                rows.append(self._row(st.entry, "already-local", st.size, st.sha,
                                      st.meta.seq))
                clean.append(st.entry.name)
            elif self.stop.is_set():
                # a local error stopped the run: what was not linked is fetched next time
                rows.append(self._row(st.entry, "retry", None, None, None))
                for rest in keep[i + 1:]:
                    self._unlink_quiet(rest.path)
                    rows.append(self._row(rest.entry, "retry", None, None, None))
                break
        if fetched:
            fsync_dir(self.jdir)
        for st in fetched:
            rows.append(self._row(st.entry, "fetched", st.size, st.sha, st.meta.seq))
            log.debug("fetched %s (%d bytes, seq %d) from %s", st.entry.name, st.size,
                      st.meta.seq, self.remote)
            self.res.fetched += 1
            self.res.bytes += st.size
            self.res.names.append(st.entry.name)
            clean.append(st.entry.name)
        assert self.journal is not None
        self.journal.record_many("pull", self.remote, rows)
        return clean

    def _row(self, e: RemoteEntry, state: str, size: int | None, sha: str | None,
             seq: int | None) -> _Row:
        return (e.name, state, size, e.tag, sha, seq, None)

    def _link(self, st: _Staged) -> str | None:
        """Move a durable staged file to jobs/ without clobbering: "linked", "skipped"
        (the same bytes are already there: the caller journals it and cleans up the
        remote copy) or None (quarantined because different bytes are there, or a local
        error that stops the run)."""
        name, path = st.entry.name, st.path
        dst = os.path.join(self.jdir, name)
        try:
            try:
                move_noclobber(path, dst)
            except FileExistsError:
                if _same_bytes(dst, st.size, st.sha) is not None:
                    raise
                move_noclobber(path, dst)  # it was processed and removed meanwhile
        except FileExistsError:
            if _same_bytes(dst, st.size, st.sha):
                os.unlink(path)
                log.debug("%s is already in %s with the same bytes; skipped", name, self.jdir)
                self._count("skipped")
                return "skipped"
            self._quarantine(path, st.entry, st.sha,
                             f"a different file named {name} is already in {self.jdir}")
            return None
        except OSError as err:
            self._unlink_quiet(path)
            if self.error is None:
                self.error = QueueError(f"cannot link {name} into {self.jdir}: {err.strerror}")
            self.stop.set()
            return None
        return "linked"

    def _already_processed(self, e: RemoteEntry, seq: int, sha: str | None) -> None:
        log.debug("%s has seq %d < nextseq %s: already processed, not fetched", e.name, seq,
                  self.nextseq)
        self._record(e, "already-processed", e.size, sha, seq)
        self._count("skipped")

    def _record(self, e: RemoteEntry, state: str, size: int | None, sha: str | None,
                seq: int | None, detail: str | None = None) -> None:
        assert self.journal is not None
        self.journal.record("pull", self.remote, e.name, state=state, size=size, tag=e.tag,
                            sha256=sha, seq=seq, detail=detail)

    @staticmethod
    def _unlink_quiet(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def _stage(self, e: RemoteEntry) -> tuple[str, int]:
        """Download ``e`` into the staging directory (not yet fsynced: :meth:`_commit`
        does that for a whole batch); (path, size)."""
        path = os.path.join(self.staging, tmp_name(e.name[:64]))
        link = self.opts.after_fetch == "delete" and self.can_delete

        def fetch() -> int:
            return self.t.fetch_to_path(e.name, path, e, link=link)

        try:
            n = with_retries(fetch, f"fetching {e.name}", self.opts.retry, self.stop)
        except BaseException as exc:
            self._unlink_quiet(path)
            disk = is_local_disk_error(exc)
            if disk is not None:
                raise QueueError(f"cannot write {e.name} into {self.staging}: "
                                 f"{os.strerror(disk.errno or 0)}; nothing was changed "
                                 "remotely") from None
            if isinstance(exc, OSError):
                raise QueueError(f"cannot write {e.name} into {self.staging}: "
                                 f"{exc.strerror}") from None
            raise
        return path, n

    def _inspect(self, path: str) -> tuple[str, Meta]:
        """(sha256, header) of a staged file, read once; PacketError for a bad header."""
        if self.opts.decoder is not None:
            sha = sha256_path(path)
            with OpenJob(path, self.opts.decoder) as j:
                return sha, j.meta
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            h = hashlib.sha256()
            first = b""
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                if not first:
                    first = b
                h.update(b)
            pos = 0

            def rd(n: int) -> bytes:  # the header, from the first chunk (or the file)
                nonlocal pos
                if pos + n <= len(first):
                    out = first[pos:pos + n]
                else:
                    parts = []
                    want, off = n, pos
                    while want > 0:
                        piece = os.pread(fd, want, off)
                        if not piece:
                            break
                        parts.append(piece)
                        want -= len(piece)
                        off += len(piece)
                    out = b"".join(parts)
                pos += len(out)
                return out

            meta, _ = read_header(rd)
            return h.hexdigest(), meta
        finally:
            os.close(fd)

    def _quarantine(self, path: str, e: RemoteEntry, sha: str, reason: str) -> None:
        target = e.name
        for i in range(1, 1000):
            try:
                move_noclobber(path, os.path.join(self.qdir_q, target))
                break
            except FileExistsError:
                target = f"{e.name}.{i}"
        else:  # pragma: no cover - a thousand quarantined copies of one name
            self._unlink_quiet(path)
            raise QueueError(f"too many quarantined copies of {e.name} in {self.qdir_q}")
        text = (f"{e.name}\nfrom: {self.remote}\n"
                f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
                f"sha256: {sha}\nreason: {reason}\n"
                "the remote file was left alone\n")
        with atomic_write(self.qdir_q, target + ".reason", clobber=True) as w:
            w.write(text.encode("utf-8", "surrogateescape"))
        fsync_dir(self.qdir_q)
        self._record(e, "quarantined", e.size, sha, None, detail=target)
        log.error("quarantined %s from %s: %s (kept as %s; the remote file is left alone)",
                  e.name, self.remote, reason, os.path.join(self.qdir_q, target))
        self._count("quarantined")

    def _cleanup_remote_many(self, names: list[str]) -> None:
        """Apply the remote clean-up policy to ``names`` (all journaled already): one
        :meth:`Transport.delete_many` call, retrying the names that failed transiently
        with backoff; the ones removed are marked in the journal (one transaction).  A
        name that cannot be removed stays: the next run removes it."""
        if not names or self.opts.after_fetch != "delete" or not self.can_delete:
            return
        pending = list(names)
        deleted: list[str] = []
        policy = self.opts.retry
        attempt = 1
        try:
            while pending:
                try:
                    errors = self.t.delete_many(pending)
                except NotSupportedError:
                    self.can_delete = False
                    return
                except (AuthError, HostKeyError):
                    raise
                except TransportError as err:
                    errors = {n: err for n in pending}
                deleted += [n for n in pending if n not in errors
                            or isinstance(errors[n], RemoteNotFoundError)]
                retry: list[str] = []
                for n, fail in errors.items():
                    if isinstance(fail, RemoteNotFoundError):
                        continue
                    if isinstance(fail, AuthError | HostKeyError):
                        raise fail
                    if isinstance(fail, NotSupportedError):
                        self.can_delete = False
                        return
                    if fail.transient and attempt < policy.attempts and not self.stop.is_set():
                        retry.append(n)
                    else:
                        # The job is safe locally and in the journal: the next run deletes it.
                        log.warning("fetched %s but could not delete it from %s: %s", n,
                                    self.remote, fail)
                if retry:
                    delay = min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1))
                    delay *= random.uniform(0.5, 1.0)
                    log.debug("deleting %d file(s) from %s: %s; retrying in %.2f s "
                              "(attempt %d of %d)", len(retry), self.remote,
                              errors[retry[0]], delay, attempt + 1, policy.attempts)
                    time.sleep(delay)
                    attempt += 1
                pending = retry
        finally:
            if deleted:
                assert self.journal is not None
                self.journal.mark_remote_deleted_many("pull", self.remote, deleted)


def _flush_files(paths: list[str]) -> None:
    """Make each file's bytes durable: start the writeback of all of them first
    (sync_file_range where there is one), so that the syncs mostly wait for I/O already
    under way and share one journal commit instead of paying for one each.

    fdatasync: the data and what is needed to read it back (size, blocks); the new
    directory entry in jobs/ is made durable by the fsync of jobs/ after the links."""
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
        if len(fds) > 1:
            _start_writeback(fds)
        for fd in fds:
            os.fdatasync(fd)
    finally:
        for fd in fds:
            os.close(fd)


_sfr: Any = None


def _start_writeback(fds: list[int]) -> None:
    """Ask the kernel to start writing these files back now (no waiting, no durability
    by itself: the fsync after it gives that).  Quietly nothing where unavailable."""
    global _sfr
    if _sfr is None:
        _sfr = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _sfr = fn
            except (OSError, AttributeError):
                pass
    if _sfr:
        for fd in fds:
            _sfr(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; errors show up in the fsync


@dataclass
class _Staged:
    entry: RemoteEntry
    path: str
    size: int
    sha: str
    meta: Meta


def _same_bytes(path: str, size: int, sha: str) -> bool | None:
    """Whether ``path`` holds exactly these bytes; None if it does not exist (any more)."""
    try:
        if os.stat(path).st_size != size:
            return False
        return sha256_path(path) == sha
    except FileNotFoundError:
        return None
