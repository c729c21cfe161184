"""One pipeline's thread: it drives the pipeline's remote (:mod:`.remote`), the
processing of its queue (:mod:`.processing`) and its workers pool (:mod:`.workerproc`),
and sleeps until one of them is due or something happens (a job lands in the queue, the
remote reports a change, a stop request)."""

from __future__ import annotations

import threading
import time

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import FsplError
from fspl_gateway.core.log import log
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.processing import QueueProcessor
from fspl_gateway.gateway.watch.queues import ensure_queue
from fspl_gateway.gateway.watch.remote import LongPoller, RemotePoller, offers_longpoll
from fspl_gateway.gateway.watch.workerproc import WorkersSupervisor


class PipelineRunner:
    """The thread of one pipeline (see the module doc)."""

    def __init__(self, pipe: pl.Pipeline, spec: RemoteSpec | None, settings: pl.WatchSettings,
                 log_level: str) -> None:
        self.pipe = pipe
        self.spec = spec
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        #: Set by the file watcher when a job lands in the (outbox) queue's jobs/.
        self.dirty = threading.Event()
        #: Set by the longpoll thread when the remote may have changed.
        self.remote_changed = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"pipeline-{pipe.name}",
                                       daemon=True)
        self.remote = RemotePoller(pipe, spec, self.stop) if spec is not None else None
        self.longpoll: LongPoller | None = None
        self.processor = (QueueProcessor(pipe, settings.rescan, self.stop) if pipe.process
                          else None)
        self.workers = (WorkersSupervisor(pipe, settings.grace, log_level) if pipe.workers
                        else None)
        #: The queue exists (the file watcher may watch its jobs/).
        self.ready = False

    # -- control ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()
        if self.workers is not None:
            self.workers.request_stop()

    def notify(self, name: str | None = None) -> None:
        """A file ``name`` landed in the queue's jobs/ (None: perhaps some did)."""
        if name is None or q.is_job_filename(name):
            self.dirty.set()
            self.wake.set()

    def _remote_changed(self) -> None:
        self.remote_changed.set()
        self.wake.set()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def describe(self) -> str:
        p = self.pipe
        parts: list[str] = []
        if p.remote:
            arrow = "→" if p.direction == "push" else "←"
            parts.append(f"{p.queue} {arrow} remote {p.remote} every {p.interval:g} s")
        else:
            parts.append(p.queue)
        if p.process:
            parts.append(f"processing with {' '.join(p.process)}")
        if p.workers:
            parts.append(f"{p.workers} workers running {' '.join(p.command)}")
        return ", ".join(parts)

    # -- the loop --------------------------------------------------------------------
    def _main(self) -> None:
        p = self.pipe
        try:
            ensure_queue(p.queue, append_only=p.direction == "push")
            self.ready = True
        except FsplError as e:
            log.error("pipeline %s: %s; not started", p.name, e)
            return
        log.info("pipeline %s: %s", p.name, self.describe())
        if self.spec is not None and p.direction == "pull" and \
                offers_longpoll(self.spec.transport):
            self.longpoll = LongPoller(p, self.spec, self.stop, self._remote_changed)
            self.longpoll.start()
        try:
            while not self.stop.is_set():
                self.wake.clear()
                now = time.monotonic()
                dirty = self.dirty.is_set()
                self.dirty.clear()
                if self.remote is not None:
                    changed = self.remote_changed.is_set() and self.remote.failures == 0
                    if now >= self.remote.next_poll or changed or (dirty and p.direction == "push"):
                        self.remote_changed.clear()
                        if self.remote.poll():
                            self.dirty.set()
                if self.stop.is_set():
                    break
                if self.processor is not None:
                    self.processor.run(dirty)
                if self.workers is not None:
                    self.workers.supervise(self.stop.is_set())
                self._sleep()
        except Exception as e:  # noqa: BLE001 - a pipeline never takes the gateway down
            log.error("pipeline %s stopped on an unexpected error: %s", p.name, e)
        finally:
            if self.workers is not None:
                self.workers.stop()
            if self.remote is not None:
                self.remote.close()
            log.debug("pipeline %s stopped", p.name)

    def _sleep(self) -> None:
        now = time.monotonic()
        timeout = self.settings.rescan
        if self.remote is not None:
            timeout = min(timeout, max(0.0, self.remote.next_poll - now))
        if self.processor is not None and self.processor.next_run > now:
            timeout = min(timeout, self.processor.next_run - now)
        if self.workers is not None:
            timeout = min(timeout, 1.0)
        self.wake.wait(max(timeout, 0.01))
