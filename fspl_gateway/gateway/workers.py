"""``fspl-gw workers``: one supervisor, N worker processes, each with its own queue.

A worker loops: when its queue is empty it runs a dispersal pass on the incoming queue
(waiting briefly for the incoming lock, never failing on contention), then processes its
own queue (by sequence number; its numbers are not contiguous).  Without ``--follow`` a
worker stops when it is idle and the incoming queue has nothing it could take; with it,
it polls for new arrivals.

Stopping: SIGTERM or SIGINT to the supervisor → workers take no new jobs and finish the
one that is running; after ``--grace`` seconds the supervisor kills what is left.  A job
whose command was killed stays in its worker queue and runs again on the next start:
each worker writes ``.fspl-gw/running`` (the job's file name) before running a job and
removes it after, and a worker that finds it on start logs a warning and appends the
name to ``.fspl-gw/rerun.log``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import JobFailedError, LockBusyError
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.outcomes import log_path_if_enabled
from fspl_gateway.core.process import (
    OnError,
    OrderBy,
    OutputTo,
    ProcessOpts,
    QueueProcessOpts,
    die_with_parent,
    queue_process,
)
from fspl_gateway.core.seqfile import acquire_lock
from fspl_gateway.gateway.disperse import (
    DisperseOpts,
    disperse,
    ensure_worker_queue,
    pending,
    wait_interval,
)


@dataclass
class WorkersOpts:
    incoming: str
    n: int
    workdir: str
    proc: ProcessOpts
    key: str | None = None
    order_by: OrderBy = OrderBy.SEQUENCE
    on_error: OnError = OnError.RETRY
    output_to: OutputTo = OutputTo.PASSBOTH
    never_delete: bool = False
    follow: bool = False
    poll: float = 0.5
    grace: float = 30.0
    lock_wait: float = 2.0
    worker_paths: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        if not self.worker_paths:
            self.worker_paths = [os.path.join(self.workdir, f"worker-{i}")
                                 for i in range(1, self.n + 1)]
        return self.worker_paths


def _layout(worker: str) -> QueueLayout:
    """The worker queue's layout, with its ``.fspl-gw/`` created."""
    lay = QueueLayout(worker)
    os.makedirs(lay.gw, exist_ok=True)
    return lay


def default_workdir(incoming: str) -> str:
    """Where the worker queues of ``incoming`` live unless told: ``INCOMING.workers``."""
    return incoming.rstrip("/") + ".workers"


def _check_interrupted(worker: str) -> None:
    lay = _layout(worker)
    marker = lay.running
    try:
        with open(marker) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return
    log.warning("%s: job %s was running when this worker stopped; it will run again",
                worker, name)
    with open(lay.rerun_log, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {name}\n")
        f.flush()
        os.fsync(f.fileno())
    os.unlink(marker)


def _run_one(opts: WorkersOpts, worker: str) -> bool:
    """Run the worker's lowest-seq job, if it has one; return whether it had one."""
    jobs = sorted(q.scan(worker), key=lambda j: j.meta.seq)
    if not jobs:
        return False
    marker = _layout(worker).running
    # Advisory only (read after a crash of this process, not of the machine): no fsync.
    with open(marker, "wb") as f:
        f.write(jobs[0].filename.encode("utf-8", "surrogateescape"))
    try:
        queue_process(QueueProcessOpts(worker, opts.proc, None, opts.on_error, OrderBy.SEQ_SORTED,
                                       opts.never_delete, 1, opts.output_to, wait_lock=5.0,
                                       # receipts: outcomes go to the incoming queue's log
                                       outcome_log=log_path_if_enabled(opts.incoming)))
    finally:
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass
    return True


def worker_loop(opts: WorkersOpts, index: int, stop: list[bool]) -> int:
    """The body of worker ``index`` (0-based). Returns its exit code."""
    me = opts.paths()[index]
    ensure_worker_queue(me)
    # One worker per worker queue, also across runs (a previous run's worker that is still
    # finishing its job after a SIGTERM holds this until it exits).
    lock_fd = acquire_lock(_layout(me).worker_lock, create=True,
                           wait=opts.grace + 5, what=f"worker queue {me}")
    try:
        return _loop(opts, me, stop)
    finally:
        os.close(lock_fd)


def _loop(opts: WorkersOpts, me: str, stop: list[bool]) -> int:
    _check_interrupted(me)
    dopts = DisperseOpts(opts.incoming, opts.paths(), per_worker=1, order_by=opts.order_by,
                         on_error=opts.on_error, never_delete=opts.never_delete, key=opts.key,
                         wait_lock=opts.lock_wait, max_moves=1, only=[me], cache={})
    while not stop[0]:
        try:
            if _run_one(opts, me):
                continue
        except JobFailedError as e:
            log.error("%s: %s", me, e)
            return 1
        try:
            res = disperse(dopts)
        except LockBusyError:
            continue  # contention with another worker: just try again
        except JobFailedError as e:
            log.error("%s", e)
            return 1
        if res.moved or res.nops or res.fails or res.recovered:
            continue
        if not opts.follow:
            return 0
        wait_interval(opts.poll, stop)
    return 0


def _child(opts: WorkersOpts, index: int, parent: int) -> None:
    stop = [False]
    # SIGTERM (a stop, not a kill) if the supervisor dies, even by kill -9, so that no
    # orphaned worker goes on beside the next run's workers
    die_with_parent(signal.SIGTERM, parent)

    def on_signal(_sig: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 1
    try:
        code = worker_loop(opts, index, stop)
    except Exception as e:  # noqa: BLE001 - report and exit non-zero, never a traceback
        log.error("worker %d: %s", index + 1, e)
    finally:
        os._exit(code)


def run_workers(opts: WorkersOpts) -> int:
    """Start the workers and supervise them; return the exit code (0 all fine).

    Without ``--follow`` the pool runs in rounds: when every worker has exited cleanly
    but a worker queue still holds a job (a hand-off completed by another worker's
    recovery after its owner had already gone idle and exited), another round starts.
    """
    for p in opts.paths():
        ensure_worker_queue(p)
    stopping = [False]
    procs: list[multiprocessing.process.BaseProcess] = []

    def on_signal(_sig: int, _frame: object) -> None:
        if not stopping[0]:
            log.info("stopping: workers finish their running job (grace %s s)", opts.grace)
        stopping[0] = True
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_int = signal.signal(signal.SIGINT, on_signal)
    try:
        while True:
            codes = _round(opts, procs, stopping)
            if stopping[0] or any(c != 0 for c in codes):
                break
            if not any(pending(w) for w in opts.paths()):
                break
            log.debug("worker queues still hold jobs; starting another round")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    return 0 if all(c == 0 for c in codes) else 1


def _round(opts: WorkersOpts, procs: list[multiprocessing.process.BaseProcess],
           stopping: list[bool]) -> list[int | None]:
    ctx = multiprocessing.get_context("fork")
    me = os.getpid()
    procs[:] = [ctx.Process(target=_child, args=(opts, i, me), name=f"fspl-gw-worker-{i + 1}")
                for i in range(opts.n)]
    for p in procs:
        p.start()
    deadline: float | None = None
    while any(p.is_alive() for p in procs):
        if stopping[0] and deadline is None:
            deadline = time.monotonic() + opts.grace
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.is_alive():
                    log.warning("killing %s after the grace period", p.name)
                    p.kill()
            break
        for p in procs:
            p.join(timeout=0.05)
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]
