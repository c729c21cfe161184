"""Pull: move job files from a remote queue's ``jobs/`` into a local queue, safely.

For each remote file named ``fspl-*.fspl`` (names with ``/``, ``..``, NUL or control
characters are refused with a warning and never fetched; other names are ignored):

1. skip it if the journal already knows it (same size/tag): it was fetched before, so it
   is never downloaded twice; with ``after_fetch="delete"`` its remote copy is removed;
2. if it is big and the queue has a ``nextseq``, read just its header first: a seq below
   ``nextseq`` was already processed, so it is not downloaded at all;
3. download it to ``<queue>/.fspl-gw/staging/`` (same file system as ``jobs/``),
   retrying transient errors with exponential backoff and jitter, then fsync it;
4. validate the header (through ``--decoder`` if given): a bad one is fetched once more,
   then set aside in ``<queue>/.fspl-gw/quarantine/`` with a ``.reason`` file, the remote
   left alone (exit 3);
5. seq below ``nextseq`` → already processed: dropped, remote cleaned up per policy;
6. link it into ``jobs/`` without clobbering and fsync ``jobs/``.  A name already there:
   same bytes → skipped (remote cleaned up), different bytes → quarantined (exit 3);
7. record it in the journal, then apply the remote clean-up policy (delete or keep).

One sync or push per directory at a time: ``<queue>/.fspl-gw/lock``.  A busy lock makes
:func:`pull` return a result with ``locked_out`` set (the CLI prints one info line and
exits 0); ``wait_lock`` waits up to that many seconds first and then raises
:class:`~fspl_gateway.errors.LockBusyError`.

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

from fspl_gateway import seqfile
from fspl_gateway.errors import (
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
from fspl_gateway.fsutil import atomic_write, fsync_dir, move_noclobber, tmp_name
from fspl_gateway.journal import Journal, gw_dir, open_existing
from fspl_gateway.log import TRACE, log
from fspl_gateway.packet import Meta, read_header_file, read_header_path
from fspl_gateway.queue import OpenJob, jobs_dir, seqfile_path
from fspl_gateway.transports.base import RemoteEntry, Transport, is_job_name, is_safe_name

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


def sha256_path(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


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
class SyncResult:
    remote: str
    fetched: int = 0
    skipped: int = 0
    quarantined: int = 0
    failed: int = 0
    refused: int = 0
    #: Jobs the journal already knew (kept remotely; nothing done).
    known: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    locked_out: bool = False
    #: Names linked into jobs/ (or, in a dry run, that would be fetched).
    names: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        from fspl_gateway.errors import EXIT_OK, EXIT_PARTIAL

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
    t0 = time.monotonic()
    if opts.dry_run:
        _Puller(transport, qdir, opts, None, res).dry_run()
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
            _Puller(transport, qdir, opts, journal, res).run()
        except FsplError as e:
            res.seconds = time.monotonic() - t0
            journal.record_run("pull", res.remote, started, False, f"error: {e}")
            raise
        res.seconds = time.monotonic() - t0
        journal.record_run("pull", res.remote, started, res.exit_code == 0, res.summary())
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
                if rec.state == "quarantined" and not os.path.exists(
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

    def run(self) -> None:
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
        pool = (ThreadPoolExecutor(self.opts.concurrency, thread_name_prefix="fspl-gw")
                if self.opts.concurrency > 1 else None)
        try:
            if done and self.opts.after_fetch == "delete" and self.can_delete:
                self._map(pool, self._cleanup_remote, [e.name for e, r in done
                                                       if r.state != "quarantined"])
            # Batches: download (parallel) → link them all, one fsync of jobs/ → journal →
            # delete the remote copies (parallel).
            for i in range(0, len(todo), BATCH):
                staged = self._map(pool, self._one, todo[i:i + BATCH], progress)
                self._map(pool, self._cleanup_remote, self._commit(staged))
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
                self._cleanup_remote(e.name)
                return None
        for attempt in (1, 2):
            path, size, sha = self._stage(e)
            try:
                return _Staged(e, path, size, sha, self._validate(path))
            except PacketError as perr:
                if attempt == 1:
                    log.debug("%s: %s; fetching it again", e.name, perr)
                    os.unlink(path)
                    continue
                self._quarantine(path, e, sha, f"the header does not validate: {perr}")
        return None

    def _commit(self, batch: list[_Staged | None]) -> list[str]:
        """Link a batch of staged files into jobs/ (one fsync of jobs/), journal them;
        return the names whose remote copy may now be cleaned up."""
        fetched: list[_Staged] = []
        clean: list[str] = []
        for st in batch:
            if st is None:
                continue
            if self.nextseq is not None and st.meta.seq < self.nextseq:
                os.unlink(st.path)
                self._already_processed(st.entry, st.meta.seq, st.sha)
                clean.append(st.entry.name)
                continue
            if self._link(st):
                fetched.append(st)
            elif self.stop.is_set():
                break
        if fetched:
            fsync_dir(self.jdir)
        for st in fetched:
            self._record(st.entry, "fetched", st.size, st.sha, st.meta.seq)
            log.debug("fetched %s (%d bytes, seq %d) from %s", st.entry.name, st.size,
                      st.meta.seq, self.remote)
            self.res.fetched += 1
            self.res.bytes += st.size
            self.res.names.append(st.entry.name)
            clean.append(st.entry.name)
        return clean

    def _link(self, st: _Staged) -> bool:
        """Move a staged file to jobs/ without clobbering: True if it was linked.  An
        existing name with the same bytes is skipped (and its remote copy cleaned up),
        one with different bytes quarantined."""
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
                self._record(st.entry, "already-local", st.size, st.sha, st.meta.seq)
                self._count("skipped")
                self._cleanup_remote(name)
            else:
                self._quarantine(path, st.entry, st.sha,
                                 f"a different file named {name} is already in {self.jdir}")
            return False
        except OSError as err:
            self._unlink_quiet(path)
            if self.error is None:
                self.error = QueueError(f"cannot link {name} into {self.jdir}: {err.strerror}")
            self.stop.set()
            return False
        return True

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

    def _stage(self, e: RemoteEntry) -> tuple[str, int, str]:
        """Download ``e`` into the staging directory, fsynced; (path, size, sha256)."""
        path = os.path.join(self.staging, tmp_name(e.name[:64]))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise QueueError(f"cannot create a file in {self.staging}: {err.strerror}") from None
        f = os.fdopen(fd, "wb", buffering=0)

        def fetch() -> int:
            f.seek(0)
            f.truncate(0)
            return self.t.fetch(e.name, f, e)  # type: ignore[arg-type]

        try:
            try:
                n = with_retries(fetch, f"fetching {e.name}", self.opts.retry, self.stop)
                os.fsync(fd)
            finally:
                f.close()
            sha = sha256_path(path)
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
        return path, n, sha

    def _validate(self, path: str) -> Meta:
        if self.opts.decoder is None:
            return read_header_path(path)
        with OpenJob(path, self.opts.decoder) as j:
            return j.meta

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

    def _cleanup_remote(self, name: str) -> None:
        if self.opts.after_fetch != "delete" or not self.can_delete:
            return
        try:
            with_retries(lambda: self.t.delete(name), f"deleting {name}", self.opts.retry,
                         self.stop)
        except RemoteNotFoundError:
            pass
        except NotSupportedError:
            self.can_delete = False
            return
        except (AuthError, HostKeyError):
            raise
        except TransportError as err:
            # The job is safe locally and in the journal: the next run deletes it.
            log.warning("fetched %s but could not delete it from %s: %s", name, self.remote,
                        err)
            return
        assert self.journal is not None
        self.journal.mark_remote_deleted("pull", self.remote, name)


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
