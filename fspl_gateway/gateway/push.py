"""Push: send the jobs of a local outbox queue to a remote queue's ``jobs/``.

The mirror image of :mod:`fspl_gateway.gateway.pull`.  For each ``fspl-*.fspl`` in
``<outbox>/jobs/`` (oldest first):

1. a job the journal already knows as pushed is not pushed again (``after_push="keep"``);
2. its header is validated (through ``--decoder`` if given); a bad one is moved to
   ``<outbox>/.fspl-gw/quarantine/`` with a ``.reason`` file (exit 3), never sent;
3. it is written with :meth:`Transport.write_new` (whole or not at all, never over an
   existing name), retrying transient errors with backoff; a name already on the remote
   is compared: the same bytes count as already pushed, different bytes are reported and
   the local job is kept (exit 3);
   On a store that cannot refuse to overwrite (declared, or found by the capability
   probe, :mod:`fspl_gateway.gateway.probe`, cached per remote) push warns once and
   checks each name just before writing it (a narrow race with another writer of the
   same name remains; job names are unique per sender, so only two senders pushing one
   name could meet there);
4. it is verified: the size the remote reports, and its checksum where the tag is a
   plain MD5 or SHA-256 of the content;
5. it is recorded in the journal, then removed from the outbox (``after_push="delete"``)
   or kept.  Removals are batched (:data:`~fspl_gateway.gateway.runframe.BATCH` unlinks, then one
   fsync of ``jobs/``): a job is only removed once it is pushed and journaled, and one
   whose removal a crash undid is removed by the next run (the journal knows it).

Locking, dry run, concurrency, retries and exit codes as for sync.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fspl_gateway.core.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    AuthError,
    HostKeyError,
    IntegrityError,
    PacketError,
    QueueError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import fsync_dir
from fspl_gateway.core.hashing import hash_fd, sha256_stream
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import TRACE, log
from fspl_gateway.core.packet import read_header_fd
from fspl_gateway.core.queue import OpenJob, is_job_filename
from fspl_gateway.gateway.concurrency import ParallelMap
from fspl_gateway.gateway.journal import Journal, JournalState, open_existing
from fspl_gateway.gateway.probe import verify_capabilities
from fspl_gateway.gateway.progress import Progress
from fspl_gateway.gateway.pull import sha256_path
from fspl_gateway.gateway.quarantine import quarantine
from fspl_gateway.gateway.runframe import (
    BATCH,
    RunOptions,
    RunResult,
    check_options,
    clean_remote_temporaries,
    fmt_seconds,
    run_engine,
    threads_for,
)
from fspl_gateway.gateway.trust import Outgoing, SignPolicy
from fspl_gateway.transports.base import RemoteEntry, Transport, is_safe_name


class AfterPush(StrEnum):
    """What becomes of the local job once it is on the remote (``--after-push``)."""

    DELETE = "delete"  # removed from the outbox (the default)
    KEEP = "keep"  # left; the journal stops it being pushed again
    #: Kept until a receipt says it was delivered / ran (then ``fspl-gw receipts`` prunes
    #: it); pushed like ``keep``.
    KEEP_UNTIL_DELIVERED = "keep-until-delivered"
    KEEP_UNTIL_RAN = "keep-until-ran"


@dataclass
class PushOptions(RunOptions):
    after_push: AfterPush = AfterPush.DELETE
    #: Sign (and encrypt) each job (:mod:`~fspl_gateway.gateway.trust`).
    sign: SignPolicy | None = None


@dataclass
class PushResult(RunResult):
    """``skipped``: already on the remote with the same bytes; ``known``: kept jobs the
    journal already knew as pushed."""

    pushed: int = 0
    #: Already on the remote with different bytes (local job kept).
    conflicts: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.conflicts or self.quarantined or self.failed else EXIT_OK

    def summary(self) -> str:
        if self.dry_run:
            return (f"push (dry run): {len(self.names)} to push, {self.known} known "
                    f"to {self.remote}")
        s = f"push: {self.pushed} pushed, {self.skipped} skipped, {self.failed} failed"
        if self.conflicts:
            s += f", {self.conflicts} conflicting"
        if self.quarantined:
            s += f", {self.quarantined} quarantined"
        if self.refused:
            s += f", {self.refused} refused"
        return s + f" to {self.remote} in {fmt_seconds(self.seconds)}"


def push(transport: Transport, outbox_dir: str | os.PathLike[str],
         opts: PushOptions | None = None) -> PushResult:
    """Push the jobs of ``outbox_dir`` to ``transport`` (see the module doc)."""
    opts = opts or PushOptions()
    check_options(opts.after_push, AfterPush, opts.concurrency, opts.max_jobs,
                  opts.retry.attempts)
    qdir = os.fspath(outbox_dir)
    if not os.path.isdir(QueueLayout(qdir).jobs):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    res = PushResult(remote=transport.describe(), dry_run=opts.dry_run)
    if not opts.dry_run:
        transport.require("can_write")
    return run_engine("push", _Pusher, transport, qdir, opts, res)


class _Pusher:
    def __init__(self, transport: Transport, qdir: str, opts: PushOptions,
                 journal: Journal | None, res: PushResult) -> None:
        self.t = transport
        self.qdir = qdir
        self.layout = QueueLayout(qdir)
        self.jdir = self.layout.jobs
        self.opts = opts
        self.journal = journal
        self.res = res
        self.remote = res.remote
        self.stop = threading.Event()
        self.mutex = threading.Lock()
        self.listing: dict[str, RemoteEntry] = {}
        #: Pushed (journaled) jobs still to be removed from the outbox.
        self._remove: list[str] = []
        #: The store may overwrite on create: check each name just before writing it.
        self.overwriting = False

    def _count(self, what: str, n: int = 1) -> None:
        with self.mutex:
            setattr(self.res, what, getattr(self.res, what) + n)

    def _local_names(self) -> list[str]:
        out: list[tuple[float, str]] = []
        try:
            with os.scandir(self.jdir) as it:
                for de in it:
                    if not is_job_filename(de.name):
                        log.log(TRACE, "ignoring %s: not a job file name", de.name)
                        continue
                    if not is_safe_name(de.name):
                        log.warning("not pushing %r: unsafe file name", de.name)
                        self.res.refused += 1
                        continue
                    try:
                        st = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append((st.st_mtime, de.name))
        except OSError as e:
            raise QueueError(f"cannot read {self.jdir}: {e.strerror}") from None
        return [n for _, n in sorted(out)]

    def _plan(self, known: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(to push, known as pushed).  A known job whose bytes changed since is pushed
        again (and then meets its old self on the remote: a conflict)."""
        todo: list[str] = []
        done: list[str] = []
        for name in self._local_names():
            rec = known.get(name)
            if rec is not None and rec.state in (JournalState.PUSHED,
                                                 JournalState.ALREADY_REMOTE):
                try:
                    same = sha256_path(os.path.join(self.jdir, name)) == rec.sha256
                except FileNotFoundError:
                    continue
                if same:
                    done.append(name)
                    continue
            todo.append(name)
        if self.opts.max_jobs is not None:
            todo = todo[:self.opts.max_jobs]
        return todo, done

    def dry_run(self) -> None:
        j = open_existing(self.qdir)
        try:
            known = j.known("push", self.remote) if j is not None else {}
        finally:
            if j is not None:
                j.close()
        todo, done = self._plan(known)
        self.res.known = len(done)
        for name in todo:
            log.info("would push %s", name)
            self.res.names.append(name)

    def run(self) -> None:
        clean_remote_temporaries(self.t, self.opts.retry, self.stop, self.remote)
        assert self.journal is not None
        todo, done = self._plan(self.journal.known("push", self.remote))
        if self.opts.after_push == "delete":
            for name in done:  # pushed and verified before (e.g. with keep): remove now
                self._cleanup_local(os.path.join(self.jdir, name))
            self.res.skipped += len(done)
        else:
            self.res.known = len(done)
        if todo and not verify_capabilities(self.t, self.layout):
            self.overwriting = True
            log.warning("%s may overwrite an existing job on create; push checks each name "
                        "just before writing it", self.remote)
        if todo:
            self.listing = {e.name: e for e in self.opts.retry.call(
                lambda: list(self.t.list()), f"listing {self.remote}", self.stop)}
        progress = Progress(self.opts.progress, len(todo), f"push {self.remote}")
        threads = threads_for(self.t, self.opts.concurrency, self.remote)
        try:
            with ParallelMap(threads, self.stop, progress.advance) as par:
                par.map(self._one, todo)
            par.raise_error()
        finally:
            progress.close()
            self._remove_pushed(force=True)

    def _one(self, name: str) -> None:
        try:
            self._push_one(name)
        except (AuthError, HostKeyError):
            raise
        except TransportError as err:
            log.error("cannot push %s to %s: %s", name, self.remote, err)
            self._count("failed")

    def _push_one(self, name: str) -> None:
        path = os.path.join(self.jdir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            log.debug("%s vanished from %s before it was pushed", name, self.jdir)
            return
        except OSError as e:
            raise QueueError(f"cannot open {path}: {e.strerror}") from None
        f = os.fdopen(fd, "rb", buffering=0)
        try:
            try:
                seq = self._validate(fd, path)
            except PacketError as perr:
                f.close()
                self._quarantine(name, f"the header does not validate: {perr}")
                return
            local_sha = None
            out = None
            if self.opts.sign is not None:  # what travels: encrypted, signed
                out = Outgoing(self.opts.sign, self.qdir, name, path, seq)
                if out.encrypted:
                    local_sha = _digests(fd)[1]  # the journal knows the local job by it
                    f.close()
                    fd = os.open(out.path, os.O_RDONLY | os.O_CLOEXEC)
                    f = os.fdopen(fd, "rb", buffering=0)
            size, sha, md5 = _digests(fd)
            listed = self.listing.get(name)
            if listed is None and self.overwriting and self._on_remote(name):
                listed = RemoteEntry(name=name)
            if listed is not None:
                try:
                    self._exists(name, size, sha, listed.size, local_sha=local_sha)
                    return
                except RemoteNotFoundError:
                    pass  # removed remotely since the listing: write it

            attempts = 0

            def write() -> RemoteEntry:
                nonlocal attempts
                attempts += 1
                f.seek(0)
                entry = self.t.write_new(name, f, size)
                if entry.size is not None and entry.size != size:
                    raise IntegrityError(f"{name}: the remote has {entry.size} bytes after "
                                         f"the write, expected {size}")
                return entry

            try:
                if out is not None:  # the signature first: a receiver finds both
                    out.send_signature(self.t, lambda c, what: self.opts.retry.call(
                        c, what, self.stop))
                entry = self.opts.retry.call(write, f"writing {name}", self.stop)
            except RemoteExistsError:
                # after a failed attempt the name may be our own write whose answer was
                # lost: the same bytes then count as pushed
                self._exists(name, size, sha, None, ours=attempts > 1, seq=seq,
                             local_sha=local_sha)
                return
        finally:
            f.close()
        tag = (entry.tag or "").strip('"').lower()
        if tag and tag in (sha, md5):
            log.log(TRACE, "%s: checksum verified (%s)", name, tag)
        assert self.journal is not None
        self.journal.record("push", self.remote, name, state=JournalState.PUSHED, size=size,
                            tag=entry.tag, sha256=local_sha or sha, seq=seq)
        if out is not None:
            out.done()
        log.debug("pushed %s (%d bytes, seq %s) to %s", name, size, seq, self.remote)
        with self.mutex:
            self.res.pushed += 1
            self.res.bytes += size
            self.res.names.append(name)
        self._cleanup_local(path)

    def _validate(self, fd: int, path: str) -> int:
        if self.opts.decoder is None:
            os.lseek(fd, 0, os.SEEK_SET)
            return read_header_fd(fd)[0].seq
        with OpenJob(path, self.opts.decoder) as j:
            return j.meta.seq

    def _on_remote(self, name: str) -> bool:
        """Whether ``name`` is on the remote now (the check before writing to a store
        that may overwrite)."""
        def probe() -> bool:
            try:
                self.t.open(name).close()
                return True
            except RemoteNotFoundError:
                return False
        return self.opts.retry.call(probe, f"checking {name}", self.stop)

    def _remote_sha256(self, name: str) -> str:
        def read() -> str:
            with self.t.open(name) as s:
                return sha256_stream(s)[0]
        return self.opts.retry.call(read, f"reading {name} back", self.stop)

    def _exists(self, name: str, size: int, sha: str, remote_size: int | None, *,
                ours: bool = False, seq: int | None = None,
                local_sha: str | None = None) -> None:
        """``name`` is already on the remote: the same bytes → already pushed (by us,
        ``ours``: an earlier attempt of this run whose answer was lost).  ``local_sha``:
        the local job's, when what was sent is its encrypted copy."""
        same = remote_size in (None, size) and self._remote_sha256(name) == sha
        if not same:
            log.error("%s is already on %s with different content; the local job is kept "
                      "in %s", name, self.remote, self.jdir)
            self._count("conflicts")
            return
        assert self.journal is not None
        if ours:
            log.debug("%s: an earlier attempt had written it to %s", name, self.remote)
            self.journal.record("push", self.remote, name, state=JournalState.PUSHED,
                                size=size, sha256=local_sha or sha, seq=seq)
            with self.mutex:
                self.res.pushed += 1
                self.res.bytes += size
                self.res.names.append(name)
        else:
            log.debug("%s is already on %s with the same bytes", name, self.remote)
            self.journal.record("push", self.remote, name, state=JournalState.ALREADY_REMOTE,
                                size=size, sha256=local_sha or sha)
            self._count("skipped")
        self._cleanup_local(os.path.join(self.jdir, name))

    def _cleanup_local(self, path: str) -> None:
        """Queue a pushed, journaled job for removal (see :meth:`_remove_pushed`)."""
        if self.opts.after_push != "delete":
            return
        with self.mutex:
            self._remove.append(path)
            full = len(self._remove) >= BATCH
        if full:
            self._remove_pushed()

    def _remove_pushed(self, force: bool = False) -> None:
        """Unlink the queued jobs, then one fsync of jobs/ for all of them."""
        with self.mutex:
            if not self._remove or (not force and len(self._remove) < BATCH):
                return
            paths, self._remove = self._remove, []
        removed = 0
        for path in paths:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("pushed %s but could not remove it: %s", path, e.strerror)
        if removed:
            fsync_dir(self.jdir)

    def _quarantine(self, name: str, reason: str) -> None:
        target = quarantine(self.qdir, os.path.join(self.jdir, name), name, reason,
                            origin=("to", self.remote), note="it was not pushed")
        if target is None:
            return  # gone from the outbox meanwhile
        log.error("quarantined %s: %s (moved to %s; not pushed)", name, reason,
                  os.path.join(self.layout.quarantine, target))
        self._count("quarantined")


def _digests(fd: int) -> tuple[int, str, str]:
    """(size, sha256, md5) of a whole file, read with pread (offset untouched)."""
    size, (sha, md5) = hash_fd(fd, ("sha256", "md5"))
    return size, sha, md5
