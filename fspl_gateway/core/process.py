"""Running jobs: one job (environment, parameters, payload on stdin, timeout, output)
and the queue-process loop (sequence/timestamp order, on-error policies).

The payload never passes through Python: the command's stdin *is* the job file's own
descriptor, positioned at the payload by the header read (or the decoder's stdout pipe).
"""

from __future__ import annotations

import contextvars
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


def _environ_copy() -> dict[bytes, bytes]:
    """Our environment as bytes.  ``dict(os.environb)`` re-encodes every entry through
    the mapping's methods (~2 µs each); its underlying dict already holds the bytes."""
    data = getattr(os.environb, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environb)


def build_env(meta: Meta, filename: str | None, queuedir: str | None) -> dict[bytes, bytes]:
    """The command's environment: ours plus the job's FSPL_* variables.

    A variable name that the OS cannot carry (``=`` or NUL in it, NUL in a value) or a
    ctime that cannot be shown as a date raises BadJobEnv, which fails that job without
    stopping the run.
    """
    env = _environ_copy()
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
    rc: int | JobResult | None = None
    stdout = output_fd if output is None else output.stdout(output_fd)
    try:
        if preexec is None and on_start is None and opts.timeout is None:
            rc = _spawn_wait(args, env, stdin, stdout, output_fd, opts.command, output)
        if rc is None:
            rc = _popen_wait(opts, meta, args, env, stdin, stdout, output_fd, preexec,
                             on_start, output)
    finally:
        if output is not None:
            output.started()  # (idempotent) our end of the tee's pipe is closed
    if isinstance(rc, JobResult):
        return rc
    if rc != 0:
        log.error("job %d: command exited abnormally (%s)", meta.seq, _describe(rc))
        return JobResult(False, _describe(rc), rc if rc > 0 else None)
    return JobResult(True, "exit status 0", 0)


def _popen_wait(opts: ProcessOpts, meta: Meta, args: list[bytes], env: Mapping[bytes, bytes],
                stdin: int | None, stdout: int | None, stderr: int | None,
                preexec: Callable[[], None] | None,
                on_start: Callable[[subprocess.Popen[bytes]], None] | None,
                output: outcomes.OutputCapture | None) -> int | JobResult:
    """Start the command with Popen (timeouts, a death signal, ``on_start``) and wait for
    it: its returncode, or the result of a job that timed out."""
    try:
        proc = subprocess.Popen(args, env=env, stdin=stdin, stdout=stdout,
                                stderr=stderr, close_fds=True, preexec_fn=preexec)
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
    return rc


#: Signals that Python sets to "ignore" at start-up and a command must get back at their
#: default (what Popen's ``restore_signals`` does; fspl's children get them so too).
_RESTORE_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                         if hasattr(signal, n))


#: The inheritable descriptors, listed once for a whole queue-process run (per thread:
#: a context variable) instead of once per job; None: list them for each command.
_FD_SNAPSHOT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "fspl_gw_fd_snapshot", default=None)


def _inherited_fds() -> list[int] | None:
    """Our descriptors above 2 that a command would inherit (not close-on-exec): none,
    normally — Python opens everything close-on-exec — but one handed to us by our own
    parent would be.  None: they cannot be listed (no /proc)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    out = []
    for n in names:
        fd = int(n)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    out.append(fd)
            except OSError:
                pass  # the listing's own descriptor, closed by now
    return out


def _spawn_wait(args: list[bytes], env: Mapping[bytes, bytes], stdin: int | None,
                stdout: int | None, stderr: int | None, command: str,
                output: outcomes.OutputCapture | None) -> int | None:
    """Start the command with ``posix_spawn`` (one vfork-style clone, none of Popen's
    Python-level set-up: about half the CPU per job) and wait for it; return its status as
    Popen's ``returncode`` (negative: killed by that signal).  The child is what Popen
    would start: the same argv, environment (PATH searched as Popen searches it), stdin
    and output descriptors, signals at their defaults, every other descriptor closed.
    None: this path cannot give that here (the caller uses Popen)."""
    inherited = _FD_SNAPSHOT.get()
    if inherited is None:
        inherited = _inherited_fds()
    if inherited is None or (stdin == 0 and not os.get_inheritable(0)):
        return None
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited
                                      if fd not in (stdin, stdout, stderr)]
    if stdin is not None and stdin != 0:
        actions.append((os.POSIX_SPAWN_DUP2, stdin, 0))
    if stdout is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdout, 1))
    if stderr is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
    for fd in (stdin, stdout, stderr):
        if fd is not None and fd > 2 and fd in inherited:
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    path = env.get(b"PATH") if b"/" not in args[0] else None
    if path is not None and path != os.environb.get(b"PATH"):
        return None  # posix_spawnp searches our own PATH, not the command's
    try:
        if b"/" in args[0]:
            pid = os.posix_spawn(args[0], args, env, file_actions=actions,
                                 setsigdef=_RESTORE_SIGNALS)
        else:
            pid = os.posix_spawnp(args[0], args, env, file_actions=actions,
                                  setsigdef=_RESTORE_SIGNALS)
    except OSError as e:
        raise FsplError(f"cannot run {command!r}: {e.strerror}") from None
    finally:
        if output is not None:
            output.started()
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status)


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
    are not contiguous): every job by seq, nextseq left alone.  Failure under retry raises
    JobFailedError, leaving the job.

    Per job, as fspl: one header read by the scan (the whole directory is listed once),
    one more for a command's payload offset, the command, then the sequence file written
    (temp file, fsync, rename: one fsync per job, as fspl's) and the job unlinked.
    """
    by_seq = opts.order_by == OrderBy.SEQUENCE
    jdir = q.jobs_dir(opts.queuedir) + "/"
    outcome_log = opts.outcome_log or outcomes.log_path_if_enabled(opts.queuedir)
    token = _FD_SNAPSHOT.set(_inherited_fds())
    try:
        return _process_loop(opts, by_seq, jdir, outcome_log)
    finally:
        _FD_SNAPSHOT.reset(token)


def _process_loop(opts: QueueProcessOpts, by_seq: bool, jdir: str,
                  outcome_log: str | None) -> int:
    done = 0
    limit = opts.maxjobs
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
            start = time.time() if outcome_log is not None else 0.0
            cap = outcomes.capture(outcome_log, jdir + job.filename + ".out"
                                   if opts.output_to == OutputTo.SAVEBOTH else None)
            res = _run_queued(opts, job, jdir, cap)
            if outcome_log is not None:
                outcomes.append(outcome_log, {
                    "name": job.filename, "seq": job.meta.seq, "start": round(start, 3),
                    "end": round(time.time(), 3), "ok": res.success, "exit": res.exit_code,
                    "status": res.status, **(cap.fields() if cap is not None else {})})
            if res.success or opts.on_error in (OnError.DELETE, OnError.LEAVE):
                if by_seq:
                    seqf.increment()
                if (res.success or opts.on_error == OnError.DELETE) and not opts.never_delete:
                    try:
                        os.unlink(jdir + job.filename)
                    except FileNotFoundError:
                        pass
            else:
                raise JobFailedError(
                    f"job {job.meta.seq} ({job.filename}) failed: {res.status}; "
                    "it stays in the queue (--on-error retry)")
    return done


def _run_queued(opts: QueueProcessOpts, job: q.Job, jdir: str,
                cap: outcomes.OutputCapture | None = None) -> JobResult:
    """Run one job of the queue (``jdir``: its jobs/ directory with a trailing slash)."""
    out_fd = None
    if opts.output_to == OutputTo.SAVEBOTH:
        out_path = jdir + job.filename + ".out"
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if job.meta.cmd in ("NOP", "Fail"):
            # Nothing to run and no payload to hand over: the header read by the scan is
            # all there is (job files never change once named fspl-*.fspl).
            return run_job(opts.proc, job.meta, None)
        with q.OpenJob(jdir + job.filename, opts.decoder) as oj:
            return run_job(opts.proc, oj.meta, oj.fd, filename=job.filename,
                           queuedir=opts.queuedir, output_fd=out_fd, output=cap)
    finally:
        if out_fd is not None:
            os.close(out_fd)
