"""The run frame shared by the pull and push engines.

One run of either engine: check its options, take the queue's run lock
(``<queue>/.fspl-gw/lock``: one sync or push per queue directory at a time), open the
journal, run the engine, and record the run's outcome in the journal — also when it
fails.  A dry run takes no lock and writes nothing.

A busy lock makes the run return at once with ``locked_out`` set (the CLI prints one
info line and exits 0); with ``wait_lock`` the run waits up to that many seconds and then
raises :class:`~fspl_gateway.core.errors.LockBusyError`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from fspl_gateway.core import seqfile
from fspl_gateway.core.errors import (
    FsplError,
    LockBusyError,
    QueueError,
    TransportError,
    UsageError,
)
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.gateway.journal import Journal
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.transports.base import Transport

#: Files linked into (or removed from) jobs/ per fsync of jobs/, and per round of remote
#: deletes.
BATCH = 128


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"


@dataclass
class RunOptions:
    """What every sync and push run takes (:class:`~fspl_gateway.gateway.pull.SyncOptions`
    and :class:`~fspl_gateway.gateway.push.PushOptions` add their own)."""

    #: Shell command that decodes a job file (stdin) to a packet (stdout).
    decoder: str | None = None
    dry_run: bool = False
    #: Move at most this many new jobs in this run.
    max_jobs: int | None = None
    #: Parallel transfers (threads); None: the transport's default
    #: (:meth:`~fspl_gateway.transports.base.Transport.default_concurrency`).
    concurrency: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: None: a busy lock returns at once (locked_out); else wait that many seconds.
    wait_lock: float | None = None
    #: None: a progress bar when stderr is a terminal.
    progress: bool | None = None


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

    @property
    def exit_code(self) -> int:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError


class Engine(Protocol):
    def run(self) -> None: ...

    def dry_run(self) -> None: ...


OptT = TypeVar("OptT", bound=RunOptions)
ResT = TypeVar("ResT", bound=RunResult)
#: An engine class: (transport, queue dir, options, journal (None in a dry run), result).
EngineFactory = Callable[[Transport, str, OptT, "Journal | None", ResT], Engine]


def clean_remote_temporaries(t: Transport, retry: RetryPolicy, stop: threading.Event,
                             remote: str) -> None:
    """The optional housekeeping step of every run: remove stale remote temporaries.
    It never blocks the main job: any failure (a store that does not list multipart
    uploads, a least-privilege key denied it, a server error after the retries) is one
    warning, and the run goes on."""
    try:
        n = retry.call(t.cleanup_temporaries, "cleaning up remote temporaries", stop)
    except TransportError as e:
        log.warning("skipped the clean-up of stale temporaries on %s: %s", remote, e)
        return
    if n:
        log.debug("removed %d stale remote temporaries in %s", n, remote)


def threads_for(t: Transport, concurrency: int | None, remote: str) -> int:
    """How many threads a run uses: ``concurrency`` (None: the transport's default), or
    fewer where the transport gains nothing from more."""
    n = concurrency or t.default_concurrency()
    threads = max(1, min(n, t.set_concurrency(n)))
    if threads < n:
        log.debug("%s: %d thread(s) (the transport gains nothing from more)", remote, threads)
    return threads


def check_options(cleanup: str, policies: type[StrEnum], concurrency: int | None,
                  max_jobs: int | None, attempts: int) -> None:
    """UsageError for options that no run can use."""
    if cleanup not in set(policies):
        raise UsageError(f"bad clean-up policy {cleanup!r} ({' or '.join(policies)})")
    if concurrency is not None and concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    if max_jobs is not None and max_jobs < 0:
        raise UsageError("max-jobs must not be negative")
    if attempts < 1:
        raise UsageError("retries must be at least 1")


def take_run_lock(qdir: str, wait: float | None, what: str) -> int | None:
    """Lock ``<qdir>/.fspl-gw/lock``; return its descriptor, or None when busy and
    ``wait`` is None.  With ``wait`` set, busy after that long → LockBusyError."""
    lay = QueueLayout(qdir)
    try:
        os.makedirs(lay.gw, exist_ok=True)
    except OSError as e:
        raise QueueError(f"cannot create {lay.gw}: {e.strerror}") from None
    try:
        return seqfile.acquire_lock(lay.run_lock, create=True, wait=wait or 0.0,
                                    what=f"{qdir} ({what})")
    except LockBusyError:
        if wait is None:
            return None
        raise LockBusyError(f"{qdir} is still locked by another fspl-gw sync/push after "
                            f"waiting {wait:g} s") from None


def run_engine(direction: str, engine: EngineFactory[OptT, ResT], transport: Transport, qdir: str,
               opts: OptT, res: ResT) -> ResT:
    """Dry run without lock or journal; otherwise the run lock (busy →
    ``res.locked_out``), the journal, the engine's ``run()``, and the run's outcome
    recorded in the journal (also when it fails)."""
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
