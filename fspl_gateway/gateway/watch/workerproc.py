"""A ``workers = N`` pipeline: its pool (:func:`fspl_gateway.gateway.workers.run_workers`
with ``follow``) runs in a child process, restarted with backoff when it exits, stopped
with SIGTERM (then killed after the grace period).

The child is ``python -m fspl_gateway.gateway.watch.workerproc``, handed the pool's
:class:`~fspl_gateway.gateway.workers.WorkersOpts` and the log level pickled on its
stdin: the gateway starts the pool without going through the command line's spelling.
(A child process, not a thread or a fork of the gateway: the pool installs its own
signal handlers and forks its workers, which a multi-threaded process must not do.)
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

from fspl_gateway.core.log import log
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.backoff import JOB_RETRY_FIRST, retry_delay
from fspl_gateway.gateway.workers import WorkersOpts


def workers_opts(pipe: pl.Pipeline, grace: float) -> WorkersOpts:
    """The pool of a pipeline: ``workers`` processes running ``command`` on its queue,
    following new arrivals."""
    from fspl_gateway.core.process import ProcessOpts
    from fspl_gateway.gateway.workers import default_workdir

    proc = ProcessOpts(pipe.command[0], list(pipe.command[1:]), pipe.allow_job_params,
                       pipe.ignore_payload, pipe.timeout)
    return WorkersOpts(pipe.queue, pipe.workers, default_workdir(pipe.queue), proc,
                       key=pipe.key, order_by=pipe.order_by, on_error=pipe.on_error,
                       output_to=pipe.output_to, never_delete=pipe.never_delete,
                       follow=True, grace=grace)


class WorkersSupervisor:
    """Keeps one pipeline's pool running in a child process."""

    def __init__(self, pipe: pl.Pipeline, grace: float, log_level: str) -> None:
        self.pipe = pipe
        self.grace = grace
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        #: Exits in a row.
        self.failures = 0
        self.next_start = 0.0

    def supervise(self, stopping: bool) -> None:
        """Notice an exited pool; start one when due (not while ``stopping``)."""
        proc = self.proc
        if proc is not None:
            rc = proc.poll()
            if rc is None:
                return
            self.proc = None
            self.failures += 1
            delay = retry_delay(self.failures)
            log.error("pipeline %s: workers exited with status %s; restarting in %.0f s",
                      self.pipe.name, rc, delay)
            self.next_start = time.monotonic() + delay
        if time.monotonic() < self.next_start or stopping:
            return
        try:
            self.proc = start(workers_opts(self.pipe, self.grace), self.log_level)
        except OSError as e:
            log.error("pipeline %s: cannot start workers: %s", self.pipe.name, e.strerror)
            self.next_start = time.monotonic() + JOB_RETRY_FIRST

    def request_stop(self) -> None:
        """SIGTERM the pool: no new jobs, the running ones finish (see :meth:`stop`)."""
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop the pool and wait for it (its grace period and 5 s); then kill it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.grace + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None


def start(opts: WorkersOpts, log_level: str) -> subprocess.Popen[bytes]:
    """Start a pool in a child process (see the module documentation)."""
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(pickle.dumps((log_level, opts)))
        proc.stdin.close()
    except OSError:  # the child died at once; supervise() notices its exit
        pass
    return proc


def _child() -> int:
    from fspl_gateway.core.errors import FsplError
    from fspl_gateway.core.log import parse_level, setup
    from fspl_gateway.gateway.workers import run_workers

    level, opts = pickle.load(sys.stdin.buffer)
    devnull = os.open(os.devnull, os.O_RDONLY)  # the jobs inherit no pipe from us
    os.dup2(devnull, 0)
    os.close(devnull)
    setup(parse_level(level))
    try:
        code = run_workers(opts)
    except FsplError as e:
        log.error("%s", e)
        return 1
    if code:
        log.error("a worker stopped on an error (see above)")
    return code


if __name__ == "__main__":
    sys.exit(_child())
