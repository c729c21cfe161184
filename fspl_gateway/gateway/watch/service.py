"""The gateway service of ``fspl-gw watch``: runs the config file's pipelines (a
:class:`~.runner.PipelineRunner` each) and the media watcher until SIGTERM/SIGINT,
re-reads the config on SIGHUP (new pipelines start, removed ones stop after their
running job, changed ones restart; a config with an error is logged and the running
configuration kept), keeps the file watcher's targets current and writes the metrics
file.  See :mod:`fspl_gateway.gateway.watch` for the whole service."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import ConfigError, FsplError
from fspl_gateway.core.log import log
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.inotify import FileWatcher, Target
from fspl_gateway.gateway.watch.media import MediaWatcher
from fspl_gateway.gateway.watch.runner import PipelineRunner


# -- the gateway --------------------------------------------------------------------------
class Gateway:
    """``fspl-gw watch``: runs the pipelines of a config file until SIGTERM/SIGINT."""

    def __init__(self, config_file: str | None, log_level: str = "info") -> None:
        self.config_file = config_file
        self.log_level = log_level
        self.cfg: pl.WatchConfig | None = None
        self.runners: dict[str, PipelineRunner] = {}
        #: Runners being stopped (reload), and the pipeline to start once each is gone.
        self.retiring: list[tuple[PipelineRunner, PipelineRunner | None]] = []
        self.media: MediaWatcher | None = None
        self.watcher: FileWatcher | None = None
        self.stopping = False
        self.reload_requested = False
        self.next_metrics = 0.0

    # -- signals -----------------------------------------------------------------------
    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("%s: stopping (running transfers and jobs finish first)",
                     signal.Signals(signum).name)
        self.stopping = True
        for r in self._all_runners():
            r.request_stop()
        if self.media is not None:
            self.media.request_stop()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reload_requested = True

    def _all_runners(self) -> list[PipelineRunner]:
        out = list(self.runners.values())
        for old, new in self.retiring:
            out.append(old)
            if new is not None:
                out.append(new)
        return out

    # -- config ------------------------------------------------------------------------
    def _spec(self, cfg: pl.WatchConfig, pipe: pl.Pipeline) -> RemoteSpec | None:
        return pl.remote_spec(cfg, pipe.remote) if pipe.remote else None

    def _runner(self, cfg: pl.WatchConfig, pipe: pl.Pipeline) -> PipelineRunner:
        return PipelineRunner(pipe, self._spec(cfg, pipe), cfg.watch, self.log_level)

    def _same(self, old: PipelineRunner, cfg: pl.WatchConfig, pipe: pl.Pipeline) -> bool:
        return (old.pipe == pipe and old.settings == cfg.watch
                and old.spec == self._spec(cfg, pipe))

    def apply(self, cfg: pl.WatchConfig) -> None:
        """Start, keep, restart or stop pipelines to match ``cfg``."""
        old = self.runners
        new: dict[str, PipelineRunner] = {}
        for name, pipe in cfg.pipelines.items():
            cur = old.get(name)
            if cur is not None and self._same(cur, cfg, pipe):
                new[name] = cur
                continue
            fresh = self._runner(cfg, pipe)
            new[name] = fresh
            if cur is not None:
                log.info("pipeline %s changed: restarting it", name)
                cur.request_stop()
                self.retiring.append((cur, fresh))
            else:
                fresh.start()
        for name, cur in old.items():
            if name not in cfg.pipelines:
                log.info("pipeline %s removed: stopping it", name)
                cur.request_stop()
                self.retiring.append((cur, None))
        self.runners = new
        media_same = (self.media is not None and self.cfg is not None
                      and self.cfg.watch.media_root == cfg.watch.media_root
                      and self.cfg.watch.media_queue == cfg.watch.media_queue
                      and self.cfg.watch.media_interval == cfg.watch.media_interval)
        if not media_same:
            if self.media is not None:
                self.media.request_stop()
                self.media = None
            if cfg.watch.media_root:
                self.media = MediaWatcher(cfg.watch)
                self.media.start()
        self.cfg = cfg
        self._update_watches()
        if not cfg.pipelines and not cfg.watch.media_root:
            log.warning("config file %s has no [pipelines.NAME] and no [watch] media_root: "
                        "nothing to do", cfg.path)

    def _update_watches(self) -> None:
        if self.watcher is None:
            return
        targets: dict[str, list[Target]] = {}
        for r in self.runners.values():
            targets.setdefault(os.path.abspath(q.jobs_dir(r.pipe.queue)), []).append(r)
        for _old, fresh in self.retiring:
            if fresh is not None:
                targets.setdefault(os.path.abspath(q.jobs_dir(fresh.pipe.queue)), []).append(fresh)
        if self.media is not None:
            targets.setdefault(os.path.abspath(self.media.root), []).append(self.media)
        self.watcher.set_targets(targets)

    def reload(self) -> None:
        self.reload_requested = False
        log.info("SIGHUP: reloading %s", self.config_file or "the config file")
        try:
            cfg = pl.load(self.config_file)
        except FsplError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        self.apply(cfg)

    # -- metrics -----------------------------------------------------------------------
    def _metrics(self) -> None:
        cfg = self.cfg
        if cfg is None or not cfg.watch.metrics_file:
            return
        now = time.monotonic()
        if now < self.next_metrics:
            return
        self.next_metrics = now + cfg.watch.metrics_interval
        from fspl_gateway.gateway.status import collect, write_metrics

        try:
            write_metrics(cfg.watch.metrics_file, collect(pl.status_targets(cfg)))
        except FsplError as e:
            log.warning("%s", e)

    # -- run ---------------------------------------------------------------------------
    def run(self) -> int:
        cfg = pl.load(self.config_file)
        if cfg.path is None:
            raise ConfigError("fspl-gw watch needs a config file with [pipelines.NAME] "
                              "tables: give --config FILE")
        old = {s: signal.signal(s, self._on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.watcher = FileWatcher()
        except Exception as e:  # noqa: BLE001 - watchdog missing or inotify limit reached
            log.warning("no file watching (%s); queues are rescanned every %g s", e,
                        cfg.watch.rescan)
        try:
            self.apply(cfg)
            while not self.stopping:
                if self.reload_requested:
                    self.reload()
                self._retire()
                self._update_watches_if_needed()
                self._metrics()
                time.sleep(0.1)
            return self._shutdown()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _update_watches_if_needed(self) -> None:
        # A queue created by its runner after the first apply() can be watched now.
        if self.watcher is None:
            return
        missing = [r for r in self.runners.values()
                   if r.ready and os.path.abspath(q.jobs_dir(r.pipe.queue)) not in self.watcher.watches]
        if missing:
            self._update_watches()
            for r in missing:
                r.notify()  # files may have landed before the watch existed

    def _retire(self) -> None:
        keep: list[tuple[PipelineRunner, PipelineRunner | None]] = []
        for old, fresh in self.retiring:
            if old.alive():
                keep.append((old, fresh))
            elif fresh is not None and not self.stopping:
                fresh.start()
        if len(keep) != len(self.retiring):
            self.retiring = keep
            self._update_watches()

    def _shutdown(self) -> int:
        grace = self.cfg.watch.grace if self.cfg is not None else 30.0
        deadline = time.monotonic() + grace
        everything: list[Any] = [r for r in self._all_runners() if r.thread.ident is not None]
        if self.media is not None:
            everything.append(self.media)
        for x in everything:
            x.request_stop()
        for x in everything:
            x.thread.join(max(0.0, deadline - time.monotonic()))
        if self.watcher is not None:
            self.watcher.close()
        left = [x.thread.name for x in everything if x.alive()]
        if left:
            log.error("still busy after the %g s grace period: %s; exiting anyway", grace,
                      ", ".join(left))
            return 1
        if self.cfg is not None and self.cfg.watch.metrics_file:
            self.next_metrics = 0.0
            self._metrics()
        log.info("stopped")
        return 0


def run(config_file: str | None, log_level: str = "info") -> int:
    return Gateway(config_file, log_level).run()


__all__ = ["Gateway", "run"]
