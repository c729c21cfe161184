"""Running jobs: one job (environment, parameters, payload on stdin, timeout, output)
and the queue-process loop (sequence/timestamp order, on-error policies).

The payload never passes through Python: the command's stdin *is* the job file's own
descriptor, positioned at the payload by the header read (or the decoder's stdout pipe).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fspl_gateway.core import outcomes
from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import FsplError, JobFailedError, PacketError
from fspl_gateway.core.libc import libc_function
from fspl_gateway.core.log import log
from fspl_gateway.core.packet import Command, Meta, read_header_fd
from fspl_gateway.core.seqfile import SeqFile


class OnError(StrEnum):
    """What happens to a job whose command failed (fspl's ``--on-error``)."""

    DELETE = "delete"  # remove the job, advance nextseq
    LEAVE = "leave"  # leave the job in place, advance nextseq
    RETRY = "retry"  # leave the job and nextseq; stop with an error (the default)


class OrderBy(StrEnum):
    """The order in which jobs run (fspl's ``--order-by``)."""

    SEQUENCE = "sequence"  # strictly by seq, from nextseq, no gaps (the default)
    TIMESTAMP = "timestamp"  # every job, by creation time; nextseq left alone
    #: Internal, not a command-line value: every job by seq, nextseq left alone (worker
    #: queues, whose sequence numbers are not contiguous).
    SEQ_SORTED = "seq-sorted"


class OutputTo(StrEnum):
    """Where a job's stdout and stderr go (fspl's ``--output-to``)."""

    PASSBOTH = "passboth"  # to ours (the default)
    SAVEBOTH = "saveboth"  # to ``jobs/<file>.out``


@dataclass
class ProcessOpts:
    command: str
    params: list[str] = field(default_factory=list)
    allow_job_params: bool = False
    ignore_payload: bool = False
    timeout: float | None = None


@dataclass
class QueueProcessOpts:
    queuedir: str
    proc: ProcessOpts
    decoder: str | None = None
    on_error: OnError = OnError.RETRY
    order_by: OrderBy = OrderBy.SEQUENCE
    never_delete: bool = False
    maxjobs: int | None = None
    output_to: OutputTo = OutputTo.PASSBOTH
    wait_lock: float = 0.0
    #: Append each job's outcome to this log (:mod:`~fspl_gateway.core.outcomes`);
    #: None: the queue's own log if its receipts are on.
    outcome_log: str | None = None


@dataclass
class JobResult:
    success: bool
    status: str  # human-readable: "NOP", "Fail packet", "exit status 3", "killed by signal 9", …
    #: The command's exit status (None: nothing ran, a signal, a timeout).
    exit_code: int | None = None


class BadJobEnv(FsplError):
    pass


def build_env(meta: Meta, filename: str | None, queuedir: str | None) -> dict[bytes, bytes]:
    """The command's environment: ours plus the job's FSPL_* variables.

    A variable name that the OS cannot carry (``=`` or NUL in it, NUL in a value) or a
    ctime that cannot be shown as a date raises BadJobEnv, which fails that job without
    stopping the run.
    """
    env = dict(os.environb)
    fn = os.fsencode(filename) if filename is not None else None
    qd = os.fsencode(queuedir) if queuedir is not None else None
    try:
        variables = meta.env_vars(fn, qd)
    except PacketError as e:  # a ctime fspl cannot show either (it panics on it)
        raise BadJobEnv(f"job {meta.seq}: {e}") from None
    for k, v in variables:
        if b"=" in k or b"\0" in k or b"\0" in v or not k:
            raise BadJobEnv(f"job {meta.seq}: cannot set environment variable {k!r} "
                            "(names may not contain '=' or NUL, values may not contain NUL)")
        env[k] = v
    return env


_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    import ctypes

    return libc_function("prctl", [ctypes.c_int] + [ctypes.c_ulong] * 4)


def die_with_parent(sig: int, parent: int) -> bool:
    """The one "die with the parent" mechanism: ask the kernel to send ``sig`` to this
    process when the thread that started it dies — also by kill -9 — so that nothing
    orphaned goes on (Linux ``PR_SET_PDEATHSIG``; it survives exec).  ``parent`` is the
    pid that started us: if it is gone already (it died before the request took
    effect), this process exits at once (status 1; no handler of ``sig`` runs).

    Call it in the child: a forked worker, or a command before its exec (:func:`run_job`
    with ``kill_on_parent_death``).  Returns False where the OS has no such request
    (nothing done)."""
    prctl = _prctl()
    if prctl is None:
        return False
    _request_death_signal(prctl, sig, parent)
    return True


def _request_death_signal(prctl: Any, sig: int, parent: int) -> None:
    """The request itself, with prctl already looked up: all that a forked child runs
    before exec (no import, no lookup)."""
    prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _describe(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"


def run_job(opts: ProcessOpts, meta: Meta, payload_fd: int | None, *,
            filename: str | None = None, queuedir: str | None = None,
            output_fd: int | None = None, extra_env: Mapping[bytes, bytes] | None = None,
            kill_on_parent_death: bool = False,
            on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
            output: outcomes.OutputCapture | None = None) -> JobResult:
    """Run one job whose header is ``meta``; ``payload_fd`` is positioned at the payload.

    NOP succeeds and Fail fails without running anything.  A command that cannot be
    started raises FsplError (as fspl: that is an error of the run, not of the job).
    ``extra_env``: more variables for the command (ours, not the job's);
    ``kill_on_parent_death``: the command is killed (SIGKILL) if this process dies
    (:func:`die_with_parent`); ``on_start`` is called with the started process (e.g.
    to kill it from another thread); ``output``: digest/head of the job's output for
    its receipt (:class:`~fspl_gateway.core.outcomes.OutputCapture`: stdout teed when it
    is not ``output_fd``).
    """
    if meta.cmd == "NOP":
        return JobResult(True, "NOP")
    if meta.cmd == "Fail":
        return JobResult(False, "Fail packet")
    assert isinstance(meta.cmd, Command)
    args = [os.fsencode(opts.command), *(os.fsencode(p) for p in opts.params)]
    if opts.allow_job_params:
        args.extend(meta.cmd.params)
    elif meta.cmd.params:
        log.warning("job %d: parameters in the job ignored (no --allow-job-params)", meta.seq)
    try:
        env = build_env(meta, filename, queuedir)
    except BadJobEnv as e:
        log.error("%s", e)
        return JobResult(False, str(e))
    if extra_env:
        env.update(extra_env)
    stdin = None if opts.ignore_payload else payload_fd
    preexec: Callable[[], None] | None = None
    prctl = _prctl() if kill_on_parent_death else None
    if prctl is not None:
        preexec = functools.partial(_request_death_signal, prctl, signal.SIGKILL, os.getpid())

    log.debug("running job %d: %r", meta.seq, args)
    try:
        proc = subprocess.Popen(args, env=env, stdin=stdin, stdout=output_fd if output is None
                                else output.stdout(output_fd),
                                stderr=output_fd, close_fds=True, preexec_fn=preexec)
    except OSError as e:
        raise FsplError(f"cannot run {opts.command!r}: {e.strerror}") from None
    finally:
        if output is not None:
            output.started()
    try:
        if on_start is not None:
            on_start(proc)
        rc = proc.wait(timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        log.error("job %d: command timed out after %s s; killing it", meta.seq, opts.timeout)
        proc.kill()
        try:
            rc = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return JobResult(False, "timed out (did not die after SIGKILL)")
        return JobResult(False, f"timed out after {opts.timeout} s")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        log.error("job %d: command exited abnormally (%s)", meta.seq, _describe(rc))
        return JobResult(False, _describe(rc), rc if rc > 0 else None)
    return JobResult(True, "exit status 0", 0)


def stdin_process(opts: ProcessOpts, fd: int = 0) -> None:
    """stdin-process: the packet arrives on ``fd``; its payload goes on to the command."""
    meta, _ = read_header_fd(fd)
    res = run_job(opts, meta, fd)
    if not res.success:
        raise JobFailedError(f"job {meta.seq} failed: {res.status}")


def _select(opts: QueueProcessOpts) -> list[q.Job] | dict[int, q.Job]:
    if opts.order_by == OrderBy.SEQUENCE:
        return q.scan_map(opts.queuedir, opts.decoder)
    jobs = list(q.scan(opts.queuedir, opts.decoder))
    if opts.order_by == OrderBy.SEQ_SORTED:
        jobs.sort(key=lambda j: j.meta.seq)
    else:
        jobs.sort(key=lambda j: j.meta.ctime)
    return jobs


def queue_process(opts: QueueProcessOpts) -> int:
    """Process the queue; return the number of jobs run.

    Sequence order: only the job whose seq equals nextseq runs; success (or failure under
    delete/leave) advances nextseq.  Timestamp order: every job by ctime; nextseq is left
    alone (but locked).  "seq-sorted" (internal, for worker queues whose sequence numbers
    are not contiguous): every job by seq, nextseq left alone.  Failure under retry raises JobFailedError, leaving the job.
    """
    by_seq = opts.order_by == OrderBy.SEQUENCE
    done = 0
    limit = opts.maxjobs
    outcome_log = opts.outcome_log or outcomes.log_path_if_enabled(opts.queuedir)
    with SeqFile(q.seqfile_path(opts.queuedir), create_lock=False,
                 wait=opts.wait_lock) as seqf:
        selected = _select(opts)
        ts_iter = iter(selected) if isinstance(selected, list) else None
        while True:
            if by_seq:
                assert isinstance(selected, dict)
                job = selected.pop(seqf.next, None)
            else:
                assert ts_iter is not None
                job = next(ts_iter, None)
            if job is None:
                break
            if limit is not None and done >= limit:
                log.debug("stopping: --maxjobs %d reached", limit)
                break
            done += 1
            start = time.time()
            cap = outcomes.capture(outcome_log, os.path.join(
                q.jobs_dir(opts.queuedir), job.filename + ".out")
                if opts.output_to == OutputTo.SAVEBOTH else None)
            res = _run_queued(opts, job, cap)
            if outcome_log is not None:
                outcomes.append(outcome_log, {
                    "name": job.filename, "seq": job.meta.seq, "start": round(start, 3),
                    "end": round(time.time(), 3), "ok": res.success, "exit": res.exit_code,
                    "status": res.status, **(cap.fields() if cap is not None else {})})
            if res.success or opts.on_error in (OnError.DELETE, OnError.LEAVE):
                if by_seq:
                    seqf.increment()
                if (res.success or opts.on_error == OnError.DELETE) and not opts.never_delete:
                    path = os.path.join(q.jobs_dir(opts.queuedir), job.filename)
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            else:
                raise JobFailedError(
                    f"job {job.meta.seq} ({job.filename}) failed: {res.status}; "
                    "it stays in the queue (--on-error retry)")
    return done


def _run_queued(opts: QueueProcessOpts, job: q.Job,
                cap: outcomes.OutputCapture | None = None) -> JobResult:
    out_fd = None
    if opts.output_to == OutputTo.SAVEBOTH:
        out_path = os.path.join(q.jobs_dir(opts.queuedir), job.filename + ".out")
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if job.meta.cmd in ("NOP", "Fail"):
            # Nothing to run and no payload to hand over: the header read by the scan is
            # all there is (job files never change once named fspl-*.fspl).
            return run_job(opts.proc, job.meta, None)
        with q.open_job(opts.queuedir, job.filename, opts.decoder) as oj:
            return run_job(opts.proc, oj.meta, oj.fd, filename=job.filename,
                           queuedir=opts.queuedir, output_fd=out_fd, output=cap)
    finally:
        if out_fd is not None:
            os.close(out_fd)
