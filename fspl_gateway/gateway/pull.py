"""Pull: move job files from a remote queue's ``jobs/`` into a local queue, safely.

For each remote file named ``fspl-*.fspl`` (names with ``/``, ``..``, NUL or control
characters such as a newline, or bytes that are not UTF-8, are refused with one escaped
warning and never fetched; other names are ignored):

0. where the transport cannot guarantee that a file appears whole, wait until it has
   stopped changing (:mod:`~fspl_gateway.gateway.settle`: size and mtime unchanged for
   the settle interval; a file still changing is left for a later run);

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
   bytes → quarantined (exit 3).  In a sequence queue (one with ``nextseq``) no two files
   may claim one seq (fspl would stop there for good; conflict copies from Dropbox or
   Syncthing do that): a file whose seq another file in ``jobs/`` (or earlier in the
   batch) already has is dropped if it has the same bytes (journaled), else quarantined
   (exit 3);
7. record it in the journal, then apply the remote clean-up policy (delete or keep).

Steps 1–5 run in parallel (``concurrency`` threads); steps 6–7 run for a batch of files
at once (:data:`BATCH`): their writeback is started together and each is fsynced before
any of them is linked into ``jobs/``, ``jobs/`` is fsynced once, the batch is journaled
in one transaction, and only then are the remote copies removed
(:meth:`Transport.delete_many`).  So a job appears in ``jobs/`` whole or not at all, and
a remote copy is removed only once the local one is durable and journaled.

One sync or push per directory at a time: ``<queue>/.fspl-gw/lock``, taken by the run
frame (:mod:`~fspl_gateway.gateway.runframe`).  A busy lock makes :func:`pull` return a
result with ``locked_out`` set (the CLI prints one info line and exits 0); ``wait_lock``
waits up to that many seconds first and then raises
:class:`~fspl_gateway.core.errors.LockBusyError`.

A fetch never accepts more bytes than listed, and a fetch whose byte count differs from
the listing is never linked: the file changed since the listing (a writer is still at
it), so it is left for a later run (counted "still being written", exit 0).

A local write error (disk full, file size limit, read-only) aborts the run with a
QueueError: the staged file is removed, the remote untouched.  AuthError and
HostKeyError abort too; other per-file transport errors count as failed (exit 3).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fspl_gateway.core import seqfile
from fspl_gateway.core.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    AuthError,
    FsplError,
    HostKeyError,
    NotSupportedError,
    PacketError,
    QueueError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import (
    flush_files,
    fsync_dir,
    is_local_disk_error,
    move_noclobber,
    tmp_name,
)
from fspl_gateway.core.hashing import MultiHasher
from fspl_gateway.core.hashing import sha256_hex as sha256_path
from fspl_gateway.core.jobsig import HEAD_BYTES, VerifiedJob, head_meta
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import TRACE, log
from fspl_gateway.core.minisign import SIG_SUFFIX
from fspl_gateway.core.packet import Meta, read_header_file
from fspl_gateway.core.queue import OpenJob, is_job_filename, read_meta
from fspl_gateway.gateway.concurrency import ParallelMap
from fspl_gateway.gateway.journal import FileRow, Journal, JournalState, open_existing
from fspl_gateway.gateway.progress import Progress
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
from fspl_gateway.gateway.settle import wait_settled
from fspl_gateway.gateway.trust import (
    ReceiveGate,
    SignatureRead,
    TrustPolicy,
    TrustRefused,
    sig_name,
)
from fspl_gateway.transports.base import (
    ListingChangedError,
    RemoteEntry,
    Transport,
    check_listed_size,
    is_job_name,
    is_safe_name,
    show_name,
)

#: Remote files at least this big (or of unknown size) get their header read before the
#: download, so that an already-processed job is not downloaded at all.
PEEK_MIN = 1 << 20


# -- pull ----------------------------------------------------------------------------
class AfterFetch(StrEnum):
    """What becomes of the remote copy once a job is fetched (``--after-fetch``)."""

    DELETE = "delete"  # removed, like ``rclone move`` (the default)
    KEEP = "keep"  # left; the journal stops it being fetched again


@dataclass
class SyncOptions(RunOptions):
    after_fetch: AfterFetch = AfterFetch.DELETE
    peek_min: int = PEEK_MIN
    #: Only jobs a trusted key signed get in (:mod:`~fspl_gateway.gateway.trust`).
    trust: TrustPolicy | None = None
    #: Seconds a file must stay unchanged before it is fetched (``--settle``); None: the
    #: transport's (:meth:`Transport.settle_interval`: 0 where files appear whole).
    settle: float | None = None


@dataclass
class SyncResult(RunResult):
    fetched: int = 0
    #: Jobs left on the remote to wait for their signature (trust).
    waiting: int = 0
    #: Files left for a later run because they were still changing (being written).
    unsettled: int = 0

    @property
    def exit_code(self) -> int:
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
        if self.waiting:
            s += f", {self.waiting} waiting for a signature"
        if self.unsettled:
            s += f", {self.unsettled} still being written"
        return s + f" from {self.remote} in {fmt_seconds(self.seconds)}"


def _same_remote_file(size: int | None, tag: str | None, e: RemoteEntry) -> bool:
    if size is not None and e.size is not None and size != e.size:
        return False
    return not (tag is not None and e.tag is not None and tag != e.tag)


def pull(transport: Transport, queue_dir: str | os.PathLike[str],
         opts: SyncOptions | None = None) -> SyncResult:
    """Pull new jobs from ``transport`` into the queue ``queue_dir`` (see module doc)."""
    opts = opts or SyncOptions()
    check_options(opts.after_fetch, AfterFetch, opts.concurrency, opts.max_jobs,
                  opts.retry.attempts)
    qdir = os.fspath(queue_dir)
    if not os.path.isdir(QueueLayout(qdir).jobs):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    res = SyncResult(remote=transport.describe(), dry_run=opts.dry_run)
    return run_engine("pull", _Puller, transport, qdir, opts, res)


class _Puller:
    def __init__(self, transport: Transport, qdir: str, opts: SyncOptions,
                 journal: Journal | None, res: SyncResult) -> None:
        self.t = transport
        self.qdir = qdir
        self.layout = QueueLayout(qdir)
        self.jdir = self.layout.jobs
        self.staging = self.layout.staging
        self.qdir_q = self.layout.quarantine
        self.opts = opts
        self.journal = journal
        self.res = res
        self.remote = res.remote
        self.stop = threading.Event()
        self.mutex = threading.Lock()
        self.nextseq = seqfile.read_unlocked(self.layout.seqfile)
        self.can_delete = transport.capabilities.can_delete
        #: The run's parallel map (in :meth:`run`): its first error stops the run.
        self.par: ParallelMap | None = None
        self.gate = None if opts.trust is None else ReceiveGate(
            opts.trust, transport, self.remote, qdir,
            lambda f, what: opts.retry.call(f, what, self.stop))
        #: seq → name of the jobs in jobs/ (a sequence queue only; read when first needed).
        self.seq_index: dict[int, str] | None = None

    # -- planning ------------------------------------------------------------------
    def _list(self) -> list[RemoteEntry]:
        entries: list[RemoteEntry] = self.opts.retry.call(
            lambda: list(self.t.list()), f"listing {self.remote}", self.stop)
        if self.gate is not None:
            self.gate.index(entries)
        return entries

    def _plan(self, entries: list[RemoteEntry], known: dict[str, Any]
              ) -> tuple[list[RemoteEntry], list[tuple[RemoteEntry, Any]]]:
        """(to fetch, journal-known) among the listed entries."""
        todo: list[RemoteEntry] = []
        done: list[tuple[RemoteEntry, Any]] = []
        sig_names = None if self.gate is None else self.gate.sig_names
        for e in sorted(entries, key=lambda e: e.name):
            if not is_job_name(e.name):
                if sig_names is not None and e.name in sig_names:
                    continue  # a job's signature (trust)
                if not is_safe_name(e.name):
                    log.warning("refusing remote file with an unsafe name %s in %s (not "
                                "fetched; rename it on the remote)", show_name(e.name),
                                self.remote)
                    self.res.refused += 1
                else:
                    log.log(TRACE, "ignoring %s: not a job file name", e.name)
                continue
            rec = known.get(e.name)
            if rec is not None and _same_remote_file(rec.size, rec.tag, e):
                if rec.state == JournalState.RETRY:
                    todo.append(e)  # a killed run staged it but never linked it
                elif rec.state == JournalState.QUARANTINED and not os.path.exists(
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
            entries = self._list()
            known = j.known("pull", self.remote, names=[e.name for e in entries]
                            ) if j is not None else {}
        finally:
            if j is not None:
                j.close()
        todo, done = self._plan(entries, known)
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
        LINKING, detail = the staged path): in jobs/ with our bytes, or gone from both
        jobs/ and staging (linked, then processed and removed) → fetched; still staged
        only → not linked: fetch it again."""
        assert self.journal is not None
        rows: list[FileRow] = []
        for name, rec in self.journal.known("pull", self.remote,
                                            state=JournalState.LINKING).items():
            staged = rec.detail or ""
            in_jobs = os.path.exists(os.path.join(self.jdir, name))
            if in_jobs and _same_bytes(os.path.join(self.jdir, name), rec.size or 0,
                                       rec.sha256 or ""):
                state = JournalState.FETCHED
            elif not in_jobs and not (staged and os.path.exists(staged)):
                # linked, then run and removed by the queue's processor
                state = JournalState.FETCHED
            else:
                state = JournalState.RETRY
            log.debug("interrupted link of %s: %s", name, state)
            rows.append((name, state, rec.size, rec.tag, rec.sha256, rec.seq, None))
        self.journal.record_many("pull", self.remote, rows)

    def run(self) -> None:
        threads = threads_for(self.t, self.opts.concurrency, self.remote)
        try:
            if self.gate is not None and threads == 1:
                # One thread (a local disk): the signature worker reads and checks the
                # signatures ahead of the fetch, and deletes them behind it; forked now,
                # it gets ready while the remote is listed.  With more threads each fetch
                # thread reads its own, in parallel.
                self.gate.start_worker()
            elif self.gate is not None and threads > 1:
                # As many threads read the signatures ahead, beside the fetches: the
                # transport sizes its connections (HTTP pool, SFTP channels) for both.
                self.t.set_concurrency(2 * threads)
                self.gate.start_readers(threads)
            self._run(threads)
        finally:
            if self.gate is not None:
                left = self.gate.close()
                if left and (self.par is None or self.par.error is None):
                    self._cleanup_remote_many(left)  # what the worker could not delete
                self.res.waiting = self.gate.waiting
        if self.par is not None:
            self.par.raise_error()

    def _run(self, threads: int) -> None:
        self._recover_linking()
        self._clean_staging()
        clean_remote_temporaries(self.t, self.opts.retry, self.stop, self.remote)
        assert self.journal is not None
        entries = self._list()
        if self.gate is not None:  # the worker (if any) starts on the first jobs' signatures
            self.gate.prefetch(sorted((e for e in entries if e.name in self.gate.sigs),
                                      key=lambda e: e.name)[:2 * BATCH])
        todo, done = self._plan(entries, self.journal.known(
            "pull", self.remote, names=[e.name for e in entries if e.name.endswith(".fspl")]))
        todo = self._settled(todo)
        for e, rec in done:
            if rec.state == JournalState.QUARANTINED:
                log.warning("%s from %s is still quarantined (%s/%s); not fetched again",
                            e.name, self.remote, self.qdir_q, rec.detail)
                self.res.quarantined += 1
            elif self.opts.after_fetch == "delete" and self.can_delete:
                self.res.skipped += 1
            else:
                self.res.known += 1
        progress = Progress(self.opts.progress, len(todo), f"sync {self.remote}")
        self.par = par = ParallelMap(threads, self.stop, progress.advance)
        try:
            if done and self.opts.after_fetch == "delete" and self.can_delete:
                for i in range(0, len(done), BATCH * 8):
                    self._cleanup_remote_many([e.name for e, r in done[i:i + BATCH * 8]
                                               if r.state != JournalState.QUARANTINED])
            if self.gate is not None and self.opts.after_fetch == "delete" and self.can_delete:
                self._cleanup_remote_many(self._orphan_signatures({e.name for e in entries}))
            # Batches: download (parallel) → fsync them all, link them into jobs/, one
            # fsync of jobs/ → journal (one transaction) → delete the remote copies.
            # (Committing a batch in a second thread while the next one is fetched was
            # measured slower: the I/O thread waits for the GIL after every fsync and
            # unlink while the other thread computes.)
            for i in range(0, len(todo), BATCH):
                if self.gate is not None:
                    self.gate.prefetch(todo[i:i + 2 * BATCH])  # the worker's, if any
                staged = par.map(self._one, todo[i:i + BATCH])
                try:
                    clean = self._commit(staged)
                except BaseException as e:
                    par.fail(e)
                    break
                self._cleanup_remote_many(clean)
                if self.stop.is_set():
                    break
        finally:
            par.close()
            progress.close()

    def _orphan_signatures(self, listed: set[str]) -> list[str]:
        """The signature files whose job is gone from the remote and on record here as
        taken: a run ended between removing a job and its signature, or that removal
        failed.  They go as the job's own would have.  A signature whose job is not on
        record (not arrived yet: a sender writes the signature first) is left alone."""
        assert self.gate is not None and self.journal is not None
        gone = [job for job in self.gate.sigs if job not in listed]
        if not gone:
            return []
        taken = (JournalState.FETCHED, JournalState.ALREADY_LOCAL,
                 JournalState.ALREADY_PROCESSED)
        orphans = [sig_name(job) for job, rec in self.journal.known(
            "pull", self.remote, names=gone).items() if rec.state in taken]
        if orphans:
            log.info("removing %d signature file(s) from %s whose jobs were taken before",
                     len(orphans), self.remote)
        return orphans

    def _settled(self, todo: list[RemoteEntry]) -> list[RemoteEntry]:
        """The entries of ``todo`` that have stopped changing (waiting once for young
        ones: :func:`~fspl_gateway.gateway.settle.wait_settled`); the others are left for
        a later run."""
        settle = self.opts.settle if self.opts.settle is not None else self.t.settle_interval()
        if settle <= 0 or not todo:
            return todo
        ready, changing = wait_settled(todo, settle, self._list, self.stop)
        for e in changing:
            log.info("%s in %s is still changing (being written?); left for a later run",
                     e.name, self.remote)
        self.res.unsettled += len(changing)
        return ready

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
        except ListingChangedError as err:
            log.info("%s; left for a later run", err)
            self._count("unsettled")
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
        return self.opts.retry.call(peek, f"reading the header of {name}", self.stop)

    def _fetch_one(self, e: RemoteEntry) -> _Staged | None:
        """Download and validate one file into staging (fsynced)."""
        sig: SignatureRead | None = None
        if self.gate is not None:  # trust: never a byte of an unsigned job in jobs/
            assert self.journal is not None
            pre = self.gate.before_fetch(e, self.journal)
            if pre is None:
                return None
            if isinstance(pre, TrustRefused):
                path = os.path.join(self.staging, tmp_name(e.name[:64]))
                fetched = MultiHasher(("sha256",))
                self._stage(e, path, fetched)
                self._quarantine(path, e, fetched.hexdigest(), f"{pre.reason}: {pre}")
                return None
            sig = pre
        if (self.nextseq is not None and self.opts.decoder is None and sig is None
                and (e.size is None or e.size >= self.opts.peek_min)):
            seq = self._peek_seq(e.name)
            if seq is not None and seq < self.nextseq:
                self._already_processed(e, seq, None)
                self._cleanup_remote_many([e.name])
                return None
        for attempt in (1, 2):
            # One pass: the fetch itself hashes the file (and keeps its first bytes for
            # the header).  An age file is decrypted only after its ciphertext verified
            # (ReceiveGate.admit): no decryptor reads bytes a store writer made up.
            path = os.path.join(self.staging, tmp_name(e.name[:64]))
            fetched = MultiHasher(("sha256",), head=HEAD_BYTES)
            size = self._stage(e, path, fetched)
            sha, head = fetched.hexdigest(), fetched.head
            try:
                adm = None
                if sig is not None:
                    assert self.gate is not None and self.journal is not None
                    adm = self.gate.admit(path, e, sig, self.opts.decoder, fetched)
                    path, size, sha, head = adm.path, adm.size, adm.sha256, adm.head
                if adm is not None and adm.verified.meta is not None and not self.opts.decoder:
                    meta = adm.verified.meta  # a plain packet: read by the verification
                else:
                    meta = self._inspect(path, head)
                if adm is not None:
                    ReceiveGate.check_header(adm, meta)
            except TrustRefused as refused:
                self._quarantine(path, e, sha, f"{refused.reason}: {refused}")
                return None
            except PacketError as perr:
                if attempt == 1:
                    log.debug("%s: %s; fetching it again", e.name, perr)
                    os.unlink(path)
                    continue
                self._quarantine(path, e, sha, f"the header does not validate: {perr}")
                return None
            except OSError as err:
                self._unlink_quiet(path)
                raise QueueError(f"cannot read {path}: {err.strerror}") from None
            return _Staged(e, path, size, sha, meta, None if adm is None else adm.verified)
        return None

    def _commit(self, batch: list[_Staged | None]) -> list[str]:
        """Claim the signatures of a batch of staged files (trust), make them durable,
        link them into jobs/ (one fsync of jobs/), journal them (one transaction); return
        the names whose remote copy may now be cleaned up."""
        rows: list[FileRow] = []
        clean: list[str] = []
        keep: list[_Staged] = []
        for st in self._claim([st for st in batch if st is not None]):
            if self.nextseq is not None and st.meta.seq < self.nextseq:
                os.unlink(st.path)
                log.debug("%s has seq %d < nextseq %s: already processed, not fetched",
                          st.entry.name, st.meta.seq, self.nextseq)
                rows.append(self._row(st.entry, JournalState.ALREADY_PROCESSED, st.entry.size, st.sha,
                                      st.meta.seq))
                self._count("skipped")
                clean.append(st.entry.name)
                continue
            keep.append(st)
        try:
            flush_files([st.path for st in keep])
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
            (st.entry.name, JournalState.LINKING, st.size, st.entry.tag, st.sha, st.meta.seq, st.path)
            for st in keep])
        fetched: list[_Staged] = []
        # the older of two files with one seq is linked, the later one is the copy
        keep.sort(key=lambda st: (st.entry.mtime or 0.0, st.entry.name))
        for i, st in enumerate(keep):
            how, copy_of = self._seq_clash(st)
            if how is None:
                how = self._link(st)
            if how == "linked":
                fetched.append(st)
                if self.seq_index is not None:
                    self.seq_index[st.meta.seq] = st.entry.name
            elif how == "skipped":
                rows.append((st.entry.name, JournalState.ALREADY_LOCAL, st.size, st.entry.tag,
                             st.sha, st.meta.seq, copy_of))
                clean.append(st.entry.name)
            elif self.stop.is_set():
                # a local error stopped the run: what was not linked is fetched next time
                rows.append(self._row(st.entry, JournalState.RETRY, None, None, None))
                for rest in keep[i + 1:]:
                    self._unlink_quiet(rest.path)
                    rows.append(self._row(rest.entry, JournalState.RETRY, None, None, None))
                break
        if fetched:
            fsync_dir(self.jdir)
        for st in fetched:
            rows.append(self._row(st.entry, JournalState.FETCHED, st.size, st.sha, st.meta.seq))
            log.debug("fetched %s (%d bytes, seq %d) from %s", st.entry.name, st.size,
                      st.meta.seq, self.remote)
            self.res.fetched += 1
            self.res.bytes += st.size
            self.res.names.append(st.entry.name)
            clean.append(st.entry.name)
        assert self.journal is not None
        self.journal.record_many("pull", self.remote, rows)
        return clean

    def _claim(self, batch: list[_Staged]) -> list[_Staged]:
        """Trust: claim the signed (key, seq, sha256) of a batch in the journal (one
        transaction); a replay is quarantined.  The others, to be linked."""
        signed = [st for st in batch if st.verified is not None]
        if self.gate is None or not signed:
            return batch
        assert self.journal is not None
        refusals = self.gate.claim(self.journal, [(st.entry.name, st.verified)
                                                  for st in signed if st.verified is not None])
        refused = set()
        for st, r in zip(signed, refusals, strict=True):
            if r is not None:
                self._quarantine(st.path, st.entry, st.sha, f"{r.reason}: {r}")
                refused.add(id(st))
        return [st for st in batch if id(st) not in refused]

    def _jobs_by_seq(self) -> dict[int, str]:
        """seq → name of every job in jobs/ whose header can be read (one scan per run)."""
        if self.seq_index is None:
            self.seq_index = {}
            try:
                names = sorted(n for n in os.listdir(self.jdir) if is_job_filename(n))
            except OSError as err:
                raise QueueError(f"cannot read {self.jdir}: {err.strerror}") from None
            for n in names:
                try:
                    self.seq_index.setdefault(read_meta(self.qdir, n, self.opts.decoder).seq, n)
                except (FsplError, OSError):
                    continue  # unreadable or gone: fspl deals with it
        return self.seq_index

    def _seq_clash(self, st: _Staged) -> tuple[str | None, str | None]:
        """In a sequence queue, whether another file in jobs/ already claims ``st``'s seq:
        (None, None) if not; ("skipped", "copy of NAME") if that file has the same bytes
        (``st`` is a copy: dropped); ("quarantined", NAME) if not (``st`` quarantined)."""
        if self.nextseq is None:
            return None, None
        seq, name = st.meta.seq, st.entry.name
        other = self._jobs_by_seq().get(seq)
        if other is None or other == name:
            return None, None
        same = _same_bytes(os.path.join(self.jdir, other), st.size, st.sha)
        if same is None:  # processed and removed meanwhile
            del self._jobs_by_seq()[seq]
            return None, None
        if same:
            os.unlink(st.path)
            log.warning("%s from %s is a copy of %s (seq %d, same bytes): dropped", name,
                        self.remote, other, seq)
            self._count("skipped")
            return "skipped", f"copy of {other}"
        self._quarantine(st.path, st.entry, st.sha,
                         f"seq {seq} is already taken by {other} in jobs/ (a conflict copy?); "
                         "two files with one seq would stop the queue")
        return "quarantined", other

    def _row(self, e: RemoteEntry, state: JournalState, size: int | None, sha: str | None,
             seq: int | None) -> FileRow:
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
            assert self.par is not None
            self.par.fail(QueueError(f"cannot link {name} into {self.jdir}: {err.strerror}"))
            return None
        return "linked"

    def _already_processed(self, e: RemoteEntry, seq: int, sha: str | None) -> None:
        log.debug("%s has seq %d < nextseq %s: already processed, not fetched", e.name, seq,
                  self.nextseq)
        self._record(e, JournalState.ALREADY_PROCESSED, e.size, sha, seq)
        self._count("skipped")

    def _record(self, e: RemoteEntry, state: JournalState, size: int | None, sha: str | None,
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

    def _stage(self, e: RemoteEntry, path: str, hasher: MultiHasher | None = None) -> int:
        """Download ``e`` into the staging file ``path`` (not yet fsynced: :meth:`_commit`
        does that for a whole batch), feeding ``hasher`` as it goes; its size."""
        link = self.opts.after_fetch == "delete" and self.can_delete

        def fetch() -> int:
            return self.t.fetch_to_path(e.name, path, e, link=link, hasher=hasher)

        try:
            n = self.opts.retry.call(fetch, f"fetching {e.name}", self.stop)
            check_listed_size(f"{e.name} from {self.remote}", n, e)  # never link a changed one
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
        return n

    def _inspect(self, path: str, head: bytes) -> Meta:
        """The header of a staged file (from its first bytes, ``head``, taken while it
        was fetched; through ``--decoder`` if given); PacketError for a bad header."""
        if self.opts.decoder is not None:
            with OpenJob(path, self.opts.decoder) as j:
                return j.meta
        return head_meta(head, path)

    def _quarantine(self, path: str, e: RemoteEntry, sha: str, reason: str) -> None:
        try:
            target = quarantine(self.qdir, path, e.name, reason, origin=("from", self.remote),
                                details=[("sha256", sha)],
                                note="the remote file was left alone")
        except QueueError:
            self._unlink_quiet(path)
            raise
        assert target is not None  # a staged file does not vanish: we hold the lock
        self._record(e, JournalState.QUARANTINED, e.size, sha, None, detail=target)
        log.error("quarantined %s from %s: %s (kept as %s; the remote file is left alone)",
                  e.name, self.remote, reason, os.path.join(self.qdir_q, target))
        self._count("quarantined")

    def _cleanup_remote_many(self, names: list[str]) -> None:
        """Apply the remote clean-up policy to ``names`` (all journaled already): one
        :meth:`Transport.delete_many` call, retrying the names that failed transiently
        with backoff; the ones removed are marked in the journal (one transaction).  A
        name that cannot be removed stays: the next run removes it.  Their signature
        files go too (through the signature worker, if there is one)."""
        if not names or self.opts.after_fetch != "delete" or not self.can_delete:
            return
        pending = list(names)
        if self.gate is not None:
            pending += self.gate.delete_behind(self.gate.companions(names))
        deleted: list[str] = []
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
                    if fail.transient:
                        retry.append(n)
                    else:
                        # The job is safe locally and in the journal: the next run deletes it.
                        log.warning("fetched %s but could not delete it from %s: %s", n,
                                    self.remote, fail)
                if retry and not self.opts.retry.pause(
                        attempt, errors[retry[0]],
                        f"deleting {len(retry)} file(s) from {self.remote}", self.stop):
                    for n in retry:
                        log.warning("fetched %s but could not delete it from %s: %s", n,
                                    self.remote, errors[n])
                    retry = []
                attempt += 1
                pending = retry
        finally:
            jobs = [n for n in deleted if not n.endswith(SIG_SUFFIX)]  # signatures: not journaled
            if jobs:
                assert self.journal is not None
                self.journal.mark_remote_deleted_many("pull", self.remote, jobs)


@dataclass
class _Staged:
    entry: RemoteEntry
    path: str
    size: int
    sha: str
    meta: Meta
    #: The signature it passed (trust): claimed with its batch before it is linked.
    verified: VerifiedJob | None = None


def _same_bytes(path: str, size: int, sha: str) -> bool | None:
    """Whether ``path`` holds exactly these bytes; None if it does not exist (any more)."""
    try:
        if os.stat(path).st_size != size:
            return False
        return sha256_path(path) == sha
    except FileNotFoundError:
        return None
