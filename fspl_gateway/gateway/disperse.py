"""Parallel processing: dispersal of one incoming queue into per-worker queues, and a
supervisor that runs N workers.

Filespooler runs a queue one job at a time; its manual shows how to get parallelism by
hand (a queue-process on the incoming queue whose command hard-links each job into a
worker queue).  That recipe races and can hand a job out twice after a crash.  Here the
hand-off is crash-safe and happens under the incoming queue's own lock:

1. link (or, across file systems, copy + fsync under a temporary name) the job into the
   worker's hand-off area ``<worker>/.fspl-gw/handoff/`` — from now on it *is* handed out;
2. unlink it from ``<incoming>/jobs/`` and fsync;
3. advance the incoming ``nextseq`` (sequence order);
4. rename it from the hand-off area into ``<worker>/jobs/`` and fsync.

Workers never look at the hand-off area, so a job is never run before step 4, and a crash
at any point leaves a state that :func:`recover` (run first in every pass) completes:
a job found both in the hand-off area and in ``incoming/jobs/`` is the *same* hand-off,
never a second one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import JobFailedError, QueueError
from fspl_gateway.core.fsutil import AtomicWriter, copy_fd, fsync_dir, move_noclobber, tmp_name
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.packet import ENV_PREFIX, Command, Meta
from fspl_gateway.core.process import OnError, OrderBy
from fspl_gateway.core.seqfile import SeqFile


def handoff_dir(worker: str) -> str:
    """``<worker>/.fspl-gw/handoff``."""
    return QueueLayout(worker).handoff


def _names(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if q.is_job_filename(e.name)]
    except FileNotFoundError:
        return []


def pending(worker: str) -> list[str]:
    """Job file names waiting in a worker queue (jobs/ and the hand-off area)."""
    return _names(q.jobs_dir(worker)) + _names(handoff_dir(worker))


def job_key(meta: Meta, key: str | None) -> bytes | None:
    """The value of FSPL_SET_<key> in a job (None when unset or no key is used)."""
    if key is None or not isinstance(meta.cmd, Command):
        return None
    want = key.encode().removeprefix(ENV_PREFIX)
    for k, v in meta.cmd.env:
        if k == want:
            return v
    return None


@dataclass
class DisperseOpts:
    incoming: str
    workers: list[str]
    per_worker: int = 1
    order_by: OrderBy = OrderBy.SEQUENCE
    on_error: OnError = OnError.RETRY
    never_delete: bool = False
    key: str | None = None
    wait_lock: float = 0.0
    max_moves: int | None = None
    #: Only hand jobs to these workers (default: all).  Key owners always get their keys.
    only: list[str] | None = None
    #: Header cache of the incoming queue, kept across passes by long-running callers.
    cache: q.HeaderCache | None = None


@dataclass
class DisperseResult:
    moved: list[tuple[str, str]] = field(default_factory=list)  # (filename, worker)
    nops: int = 0
    fails: int = 0
    recovered: int = 0


#: Test hook: ``FSPL_GW_FAULT_PAUSE=disperse-deliver`` makes a pass stop (sleep) at the
#: final hand-off step, so a fault test can kill it there (tests/faults).
FAULT_ENV = "FSPL_GW_FAULT_PAUSE"


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        marker = os.environ.get(FAULT_ENV + "_FILE")
        if marker:
            with open(marker, "w") as f:
                f.write(name)
        time.sleep(3600)


def _finalize(worker: str, name: str) -> None:
    """Step 4: hand-off area → worker jobs/ (atomic, no clobber, and never under both
    names at once: a worker could run the job from jobs/ while a recovery still saw it
    in the hand-off area and delivered it again)."""
    jdir = q.jobs_dir(worker)
    _fault_point("disperse-deliver")
    move_noclobber(os.path.join(handoff_dir(worker), name), os.path.join(jdir, name),
                   one_name=True)
    fsync_dir(jdir)
    fsync_dir(handoff_dir(worker))


def _already_delivered(worker: str, name: str) -> bool | None:
    """Whether the staged ``name`` is already in the worker's ``jobs/``: True (the same
    file — same inode or same bytes: a move whose last half was interrupted), False (not
    there), None (a *different* job of that name is there)."""
    staged = os.path.join(handoff_dir(worker), name)
    there = os.path.join(q.jobs_dir(worker), name)
    try:
        st_there = os.stat(there)
        st_staged = os.stat(staged)
    except FileNotFoundError:
        return False
    if os.path.samestat(st_there, st_staged):
        return True
    if st_there.st_size != st_staged.st_size:
        return None
    from fspl_gateway.core.hashing import sha256_hex

    return True if sha256_hex(there) == sha256_hex(staged) else None


def _stage(incoming: str, name: str, worker: str) -> None:
    """Step 1: put the job into the worker's hand-off area, durably."""
    hdir = handoff_dir(worker)
    os.makedirs(hdir, exist_ok=True)
    src = os.path.join(q.jobs_dir(incoming), name)
    try:
        os.link(src, os.path.join(hdir, name))
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        # Another file system (or no hard links): copy under a temporary name first.
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with AtomicWriter(hdir, name) as w:
                copy_fd(fd, w.fileno())
        finally:
            os.close(fd)
    fsync_dir(hdir)


def _unlink_incoming(incoming: str, name: str) -> None:
    try:
        os.unlink(os.path.join(q.jobs_dir(incoming), name))
    except FileNotFoundError:
        return
    fsync_dir(q.jobs_dir(incoming))


def recover(incoming: str, workers: list[str], seqf: SeqFile | None) -> int:
    """Complete hand-offs interrupted by a crash (see the module doc).  Must run under the
    incoming queue's lock.  Returns how many were completed."""
    done = 0
    for w in workers:
        for name in _names(handoff_dir(w)):
            path = os.path.join(handoff_dir(w), name)
            try:
                meta = _meta_of(path)
            except Exception as e:  # noqa: BLE001 - a bad staged file must not stop recovery
                log.error("hand-off %s unreadable (%s); leaving it", path, e)
                continue
            delivered = _already_delivered(w, name)
            if delivered is None:
                log.error("hand-off %s: %s/jobs holds a different job of that name; "
                          "leaving both for a human", path, w)
                continue
            _unlink_incoming(incoming, name)
            if seqf is not None and seqf.next == meta.seq:
                seqf.increment()
            if delivered:
                # moved, but the hand-off name was left behind: never deliver it twice
                os.unlink(path)
                fsync_dir(handoff_dir(w))
            else:
                _finalize(w, name)
            log.warning("completed an interrupted hand-off of job %d (%s) to %s",
                        meta.seq, name, w)
            done += 1
    return done


def _meta_of(path: str) -> Meta:
    from fspl_gateway.core.packet import read_header_path

    return read_header_path(path)


def _candidates(incoming: str, order_by: str, seqf: SeqFile,
                cache: q.HeaderCache | None) -> Iterator[q.Job]:
    if order_by == "sequence":
        jobs = q.scan_map(incoming, cache=cache)
        while True:
            job = jobs.pop(seqf.next, None)
            if job is None:
                return
            yield job
    else:
        yield from sorted(q.scan(incoming, cache=cache), key=lambda j: j.meta.ctime)


def disperse_locked(opts: DisperseOpts, seqf: SeqFile) -> DisperseResult:
    """One dispersal pass; the caller holds the incoming lock (``seqf``)."""
    by_seq = opts.order_by == "sequence"
    res = DisperseResult()
    res.recovered = recover(opts.incoming, opts.workers, seqf if by_seq else None)
    allowed = opts.only if opts.only is not None else opts.workers
    room = {w: opts.per_worker - len(pending(w)) for w in opts.workers}
    owners: dict[bytes, str] = {}
    if opts.key:
        for w in opts.workers:
            for name in pending(w):
                path = os.path.join(q.jobs_dir(w), name)
                if not os.path.exists(path):
                    path = os.path.join(handoff_dir(w), name)
                try:
                    k = job_key(_meta_of(path), opts.key)
                except Exception:  # noqa: BLE001 - vanished/unreadable: no key claim
                    continue
                if k is not None:
                    owners[k] = w
    for job in _candidates(opts.incoming, opts.order_by, seqf, opts.cache):
        if opts.max_moves is not None and len(res.moved) >= opts.max_moves:
            break
        if job.meta.cmd in ("NOP", "Fail"):
            if job.meta.cmd == "Fail":
                res.fails += 1
                if opts.on_error == "retry":
                    raise JobFailedError(f"job {job.meta.seq} ({job.filename}) is a Fail packet; "
                                         "it stays in the incoming queue (--on-error retry)")
            else:
                res.nops += 1
            if by_seq:
                seqf.increment()
            if (job.meta.cmd == "NOP" or opts.on_error == "delete") and not opts.never_delete:
                _unlink_incoming(opts.incoming, job.filename)
            continue
        k = job_key(job.meta, opts.key)
        target = owners.get(k) if k is not None else None
        if target is None:
            free = [w for w in allowed if room[w] > 0]
            if not free:
                if by_seq:
                    break  # the next job must wait for a free worker
                continue
            target = max(free, key=lambda w: room[w])
        _stage(opts.incoming, job.filename, target)
        _unlink_incoming(opts.incoming, job.filename)
        if by_seq:
            seqf.increment()
        _finalize(target, job.filename)
        room[target] -= 1
        if k is not None:
            owners[k] = target
        res.moved.append((job.filename, target))
        log.debug("handed job %d (%s) to %s", job.meta.seq, job.filename, target)
    return res


def disperse(opts: DisperseOpts) -> DisperseResult:
    """One pass of ``fspl-gw disperse``: lock the incoming queue, hand out jobs."""
    for w in opts.workers:
        if not os.path.isdir(q.jobs_dir(w)):
            raise QueueError(f"{w} is not a queue directory (no jobs/ in it)")
    if opts.order_by not in (OrderBy.SEQUENCE, OrderBy.TIMESTAMP):
        raise QueueError(f"unknown order {opts.order_by!r}")
    with SeqFile(q.seqfile_path(opts.incoming), create_lock=False, wait=opts.wait_lock) as seqf:
        return disperse_locked(opts, seqf)


def ensure_worker_queue(path: str) -> None:
    """Make the worker queue ``path`` unless it is there, whole or not at all: it is made
    under a temporary name beside it and renamed into place, so that a run killed
    meanwhile leaves no half-made queue (a directory without its ``jobs/``, which the next
    run could neither use nor create).  An empty directory in its place — what such a
    kill left before — is replaced."""
    if os.path.isdir(q.jobs_dir(path)):
        return
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise QueueError(f"cannot create {parent}: {e.strerror}") from None
    tmp = os.path.join(parent, tmp_name(os.path.basename(path)))
    q.queue_init(tmp)
    fsync_dir(tmp)
    try:
        os.rename(tmp, path)  # replaces an empty directory, refuses any other
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(q.jobs_dir(path)):  # else made meanwhile by another process
            raise QueueError(f"cannot create worker queue {path}: {e.strerror}") from None
        return
    fsync_dir(parent)


def wait_interval(seconds: float, stop: list[bool]) -> None:
    end = time.monotonic() + seconds
    while not stop[0] and time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
