"""Running a pipeline's queue (``process = [...]``): its jobs run (one at a time, by
:func:`fspl_gateway.core.process.queue_process`) at start — jobs that landed while the
gateway was down —, as soon as a job lands in ``jobs/`` (the runner is told by the file
watcher), and every ``rescan`` seconds as a safety net (NFS and other file systems
without inotify).  A failing job (``on_error = "retry"``) is retried with backoff."""

from __future__ import annotations

import threading
import time

from fspl_gateway.core.errors import FsplError, LockBusyError
from fspl_gateway.core.log import log
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.backoff import retry_delay


class QueueProcessor:
    """Runs one pipeline's queue when :attr:`next_run` has come or a job landed."""

    def __init__(self, pipe: pl.Pipeline, rescan: float, stop: threading.Event) -> None:
        self.pipe = pipe
        self.rescan = rescan
        self.stop = stop
        #: Failed runs in a row.
        self.failures = 0
        self.next_run = 0.0

    def run(self, dirty: bool) -> None:
        """Process the queue if it is time, or at once if a job landed (``dirty``)."""
        from fspl_gateway.core.process import ProcessOpts, QueueProcessOpts, queue_process

        p = self.pipe
        if time.monotonic() < self.next_run and not dirty:
            return
        proc = ProcessOpts(p.process[0], list(p.process[1:]), p.allow_job_params,
                           p.ignore_payload, p.timeout)
        # Sequence order: one job per call, so that a stop request is honoured between
        # jobs.  Timestamp order: one pass (a job left in place by on_error = "leave"
        # would run again at once in a one-job loop).
        one = p.order_by == "sequence"
        try:
            while not self.stop.is_set():
                n = queue_process(QueueProcessOpts(
                    p.queue, proc, p.decoder, p.on_error, p.order_by, p.never_delete,
                    1 if one else None, p.output_to, wait_lock=0.0))
                if n == 0 or not one:
                    break
        except LockBusyError:
            log.debug("pipeline %s: %s is locked by another process; later", p.name, p.queue)
            self.next_run = time.monotonic() + 1.0
            return
        except FsplError as e:
            self.failures += 1
            delay = retry_delay(self.failures)
            log.error("pipeline %s: %s; trying again in %.0f s (or when a job arrives)",
                      p.name, e, delay)
            self.next_run = time.monotonic() + delay
            return
        self.failures = 0
        self.next_run = time.monotonic() + self.rescan
