"""``fspl-gw watch``: the gateway as a long-running service, driven by the config file's
``[pipelines.NAME]`` tables and its ``[watch]`` table (see :mod:`fspl_gateway.gateway.watch.pipelines`).

One thread per pipeline:

* a **pull** pipeline polls its remote every ``interval`` seconds (:func:`sync.pull`),
  and where the transport can wait for changes (:meth:`Transport.wait_for_change`:
  Dropbox's longpoll) a second thread waits on the remote and pulls as soon as it
  changes (that thread is a daemon, never joined: it cannot delay shutdown);
  a **push** pipeline pushes its outbox every ``interval`` seconds and as soon as a job
  lands in the outbox's ``jobs/``;
* a pipeline with ``process`` runs its queue's jobs (:func:`process.queue_process`, one
  job at a time) at start (jobs that landed while the gateway was down), whenever a job
  lands in ``jobs/`` (inotify through watchdog, which is imported only here) and every
  ``rescan`` seconds as a safety net (NFS and other file systems without inotify);
* a pipeline with ``workers = N`` keeps an ``fspl-gw workers --follow`` subprocess running.

A failing remote is logged and retried with exponential backoff (up to 32 intervals,
at most 10 minutes); it never stops the other pipelines.  A failing job (``on_error =
"retry"``) is retried with backoff too, not in a tight loop.

A watched media root: a newly mounted volume under it (``/media/STICK`` or
``/media/USER/STICK``) that carries an export manifest (``MANIFEST.sha256`` + ``jobs/``,
see :mod:`fspl_gateway.gateway.media`) is imported into the media queue.  Mounting produces no
inotify event on the mount point's parent, so the root is scanned every
``media_interval`` seconds (and at once on any event in it).  A volume is remembered
(path, device, manifest size and mtime, in ``<queue>/.fspl-gw/media-seen.json``) while
it stays mounted, so it is not imported again at every scan; a changed manifest, or the
volume mounted again later, is imported again (the journal makes that cheap).

Signals: SIGTERM/SIGINT stop gracefully — no new transfers or jobs start, the running
transfer or job finishes (at most ``grace`` seconds; then exit 1), exit 0.  A pull that is
interrupted is never half-moved: a transfer lands in the queue's staging area and is
linked into ``jobs/`` only when complete.  SIGHUP re-reads the config file: new pipelines
start, removed ones stop (after their running job), changed ones restart; a config file
with an error is logged and the running configuration kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import (
    ConfigError,
    FsplError,
    LockBusyError,
    QueueError,
)
from fspl_gateway.core.fsutil import atomic_write
from fspl_gateway.core.log import log
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.gateway.journal import Journal, gw_dir
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.stopaware import StopAwareTransport
from fspl_gateway.transports.base import Transport

#: Backoff of a failing remote: interval × 2^failures, at most this many intervals …
BACKOFF_INTERVALS = 32
#: … and at most this many seconds (unless the interval itself is longer).
BACKOFF_MAX = 600.0
#: A failing job is retried after this many seconds, doubling up to BACKOFF_MAX.
JOB_RETRY_FIRST = 5.0
MEDIA_SEEN = "media-seen.json"
#: After a change notification, the next wait starts at least this much later.
LONGPOLL_GAP = 0.1


def offers_longpoll(transport_name: str) -> bool:
    """True if the transport overrides :meth:`Transport.wait_for_change` (decided from
    the class, without connecting)."""
    from fspl_gateway.transports.base import load

    try:
        cls = load(transport_name)
    except FsplError:
        return False  # the pull reports it
    return getattr(cls, "wait_for_change", None) is not Transport.wait_for_change


def backoff(interval: float, failures: int) -> float:
    if failures <= 0:
        return interval
    cap = max(interval, min(BACKOFF_MAX, interval * BACKOFF_INTERVALS))
    return min(cap, interval * 2 ** failures)


_ensure_lock = threading.Lock()


def ensure_queue(qdir: str, append_only: bool) -> None:
    """Make ``qdir`` a queue if it is missing or an empty directory (a fresh volume);
    a non-empty directory without ``jobs/`` is an error.  (Pipelines and the media
    watcher may share a queue: one thread at a time.)"""
    with _ensure_lock:
        _ensure_queue(qdir, append_only)


def _ensure_queue(qdir: str, append_only: bool) -> None:
    if os.path.isdir(q.jobs_dir(qdir)):
        return
    if not os.path.exists(qdir):
        q.queue_init(qdir, append_only)
    else:
        try:
            extra = [n for n in os.listdir(qdir) if n != "lost+found"]
        except OSError as e:
            raise QueueError(f"cannot read {qdir}: {e.strerror}") from None
        if extra:
            raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it) and not empty")
        os.mkdir(q.jobs_dir(qdir))
        if not append_only:
            from fspl_gateway.core.seqfile import SeqFile

            SeqFile(q.seqfile_path(qdir)).close()
    log.info("created %squeue %s", "append-only " if append_only else "", qdir)


# -- one pipeline -----------------------------------------------------------------------
class PipelineRunner:
    """The thread of one pipeline (see the module doc)."""

    def __init__(self, pipe: pl.Pipeline, spec: RemoteSpec | None, settings: pl.WatchSettings,
                 log_level: str) -> None:
        self.pipe = pipe
        self.spec = spec
        self.settings = settings
        self.log_level = log_level
        self.stop = threading.Event()
        self.wake = threading.Event()
        #: Set by the file watcher when a job lands in the (outbox) queue's jobs/.
        self.dirty = threading.Event()
        #: Set by the longpoll thread when the remote may have changed.
        self.remote_changed = threading.Event()
        self.longpoll_thread: threading.Thread | None = None
        self.thread = threading.Thread(target=self._main, name=f"pipeline-{pipe.name}",
                                       daemon=True)
        self.transport: Transport | None = None
        self.remote_failures = 0
        self.next_poll = 0.0
        self.job_failures = 0
        self.next_process = 0.0
        self.workers_proc: subprocess.Popen[bytes] | None = None
        self.workers_failures = 0
        self.next_workers = 0.0
        self.ready = False

    # -- control ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()
        p = self.workers_proc
        if p is not None and p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def notify(self) -> None:
        self.dirty.set()
        self.wake.set()

    def alive(self) -> bool:
        return self.thread.is_alive()

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
            self.longpoll_thread = threading.Thread(
                target=self._longpoll_main, name=f"longpoll-{p.name}", daemon=True)
            self.longpoll_thread.start()
        try:
            while not self.stop.is_set():
                self.wake.clear()
                now = time.monotonic()
                dirty = self.dirty.is_set()
                self.dirty.clear()
                changed = self.remote_changed.is_set() and self.remote_failures == 0
                if self.spec is not None and (now >= self.next_poll or changed or
                                              (dirty and p.direction == "push")):
                    self.remote_changed.clear()
                    self._poll_remote()
                if self.stop.is_set():
                    break
                if p.process:
                    self._process(dirty)
                if p.workers:
                    self._supervise_workers()
                self._sleep()
        except Exception as e:  # noqa: BLE001 - a pipeline never takes the gateway down
            log.error("pipeline %s stopped on an unexpected error: %s", p.name, e)
        finally:
            self._stop_workers()
            if self.transport is not None:
                try:
                    self.transport.close()
                except Exception:  # noqa: BLE001
                    pass
            log.debug("pipeline %s stopped", p.name)

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

    def _sleep(self) -> None:
        now = time.monotonic()
        timeout = self.settings.rescan
        if self.spec is not None:
            timeout = min(timeout, max(0.0, self.next_poll - now))
        if self.pipe.process and self.next_process > now:
            timeout = min(timeout, self.next_process - now)
        if self.pipe.workers:
            timeout = min(timeout, 1.0)
        self.wake.wait(max(timeout, 0.01))

    # -- remote ----------------------------------------------------------------------
    def _transport(self) -> Transport:
        if self.transport is None:
            from fspl_gateway.transports.base import create

            assert self.spec is not None
            self.transport = StopAwareTransport(
                create(self.spec.transport, self.spec.location, self.spec.options), self.stop)
        return self.transport

    def _poll_remote(self) -> None:
        p = self.pipe
        started = time.time()
        try:
            t = self._transport()
            if p.direction == "pull":
                self._pull(t)
            else:
                self._push(t)
        except FsplError as e:
            self.remote_failures += 1
            delay = backoff(p.interval, self.remote_failures)
            log.error("pipeline %s: %s with remote %s failed: %s; retrying in %.0f s",
                      p.name, "sync" if p.direction == "pull" else "push", p.remote, e, delay)
            self._record_failure(started, e)
            self._drop_transport()
            self.next_poll = time.monotonic() + delay
            return
        except Exception as e:  # noqa: BLE001 - an SDK error we do not map: same policy
            self.remote_failures += 1
            delay = backoff(p.interval, self.remote_failures)
            log.error("pipeline %s: unexpected error with remote %s: %s: %s; retrying in "
                      "%.0f s", p.name, p.remote, type(e).__name__, e, delay)
            self._record_failure(started, e)
            self._drop_transport()
            self.next_poll = time.monotonic() + delay
            return
        if self.remote_failures:
            log.info("pipeline %s: remote %s is back", p.name, p.remote)
        self.remote_failures = 0
        self.next_poll = time.monotonic() + p.interval

    def _longpoll_main(self) -> None:
        """Wait on the remote (its own transport instance) and wake the pipeline when it
        may have changed; errors back off like polls do, and the interval polls go on."""
        from fspl_gateway.transports.base import create

        p = self.pipe
        assert self.spec is not None
        t: Transport | None = None
        failures = 0
        announced = False
        try:
            while not self.stop.is_set():
                try:
                    if t is None:
                        t = create(self.spec.transport, self.spec.location, self.spec.options)
                    changed = t.wait_for_change(max(p.interval, 1.0))
                except Exception as e:  # noqa: BLE001 - FsplError or an unmapped SDK error
                    failures += 1
                    delay = backoff(p.interval, failures)
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "pipeline %s: waiting for changes on remote %s failed: %s; "
                            "trying again in %.0f s (polling every %g s meanwhile)",
                            p.name, p.remote, e, delay, p.interval)
                    if t is not None:
                        with contextlib.suppress(Exception):
                            t.close()
                        t = None
                    self.stop.wait(delay)
                    continue
                if changed is None:
                    return
                if not announced:
                    log.info("pipeline %s: remote %s reports changes (longpoll): pulling "
                             "as soon as a job lands there, and every %g s", p.name,
                             p.remote, p.interval)
                    announced = True
                failures = 0
                if changed and not self.stop.is_set():
                    log.debug("pipeline %s: remote %s may have changed (longpoll)",
                              p.name, p.remote)
                    self.remote_changed.set()
                    self.wake.set()
                    self.stop.wait(LONGPOLL_GAP)
        finally:
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()

    def _drop_transport(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # noqa: BLE001
                pass
            self.transport = None

    def _record_failure(self, started: float, e: BaseException) -> None:
        """Record a failure the engines did not (e.g. the transport could not be made)
        in the queue's journal, for ``fspl-gw status``."""
        if self.transport is not None:
            return  # pull/push record their own failures
        assert self.spec is not None
        try:
            with Journal(self.pipe.queue) as j:
                j.record_run(self.pipe.direction, f"{self.spec.transport}:{self.spec.location}",
                             started, False, f"error: {e}")
        except FsplError:
            pass

    def _pull(self, t: Transport) -> None:
        from fspl_gateway.gateway.pull import RetryPolicy, SyncOptions, pull

        p = self.pipe
        opts = SyncOptions(after_fetch=p.after, decoder=p.decoder, concurrency=p.concurrency,
                           retry=RetryPolicy(attempts=p.retries), progress=False)
        res = pull(t, p.queue, opts)
        if res.locked_out:
            log.debug("pipeline %s: another sync/push holds %s; next time", p.name, p.queue)
            return
        level = logging.WARNING if res.exit_code else logging.INFO if res.fetched else logging.DEBUG
        log.log(level, "pipeline %s: %s", p.name, res.summary())
        if res.fetched:
            self.dirty.set()

    def _push(self, t: Transport) -> None:
        from fspl_gateway.gateway.pull import RetryPolicy
        from fspl_gateway.gateway.push import PushOptions, push

        p = self.pipe
        batch = max(8, p.concurrency * 2)
        while not self.stop.is_set():
            opts = PushOptions(after_push=p.after, decoder=p.decoder, max_jobs=batch,
                               concurrency=p.concurrency, retry=RetryPolicy(attempts=p.retries),
                               progress=False)
            res = push(t, p.queue, opts)
            if res.locked_out:
                return
            level = (logging.WARNING if res.exit_code else logging.INFO if res.pushed
                     else logging.DEBUG)
            log.log(level, "pipeline %s: %s", p.name, res.summary())
            if res.pushed < batch or res.exit_code or p.after == "keep":
                return

    # -- processing ------------------------------------------------------------------
    def _process(self, dirty: bool) -> None:
        from fspl_gateway.core.process import ProcessOpts, QueueProcessOpts, queue_process

        p = self.pipe
        now = time.monotonic()
        if now < self.next_process and not dirty:
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
            self.next_process = time.monotonic() + 1.0
            return
        except FsplError as e:
            self.job_failures += 1
            delay = min(BACKOFF_MAX, JOB_RETRY_FIRST * 2 ** (self.job_failures - 1))
            log.error("pipeline %s: %s; trying again in %.0f s (or when a job arrives)",
                      p.name, e, delay)
            self.next_process = time.monotonic() + delay
            return
        self.job_failures = 0
        self.next_process = time.monotonic() + self.settings.rescan

    # -- workers ---------------------------------------------------------------------
    def _workers_argv(self) -> list[str]:
        p = self.pipe
        argv = [sys.executable, "-m", "fspl_gateway", "-l", self.log_level, "workers",
                "-q", p.queue, "-n", str(p.workers), "--follow",
                "--grace", f"{self.settings.grace:g}", "--on-error", p.on_error,
                "--order-by", p.order_by, "--output-to", p.output_to]
        if p.key:
            argv += ["--key", p.key]
        if p.never_delete:
            argv.append("--never-delete")
        if p.allow_job_params:
            argv.append("--allow-job-params")
        if p.ignore_payload:
            argv.append("--ignore-payload")
        if p.timeout is not None:
            argv += ["--timeout", str(int(p.timeout))]
        return [*argv, "--", *p.command]

    def _supervise_workers(self) -> None:
        proc = self.workers_proc
        if proc is not None:
            rc = proc.poll()
            if rc is None:
                return
            self.workers_proc = None
            self.workers_failures += 1
            delay = min(BACKOFF_MAX, JOB_RETRY_FIRST * 2 ** (self.workers_failures - 1))
            log.error("pipeline %s: workers exited with status %s; restarting in %.0f s",
                      self.pipe.name, rc, delay)
            self.next_workers = time.monotonic() + delay
        if time.monotonic() < self.next_workers or self.stop.is_set():
            return
        try:
            self.workers_proc = subprocess.Popen(self._workers_argv(), stdin=subprocess.DEVNULL)
        except OSError as e:
            log.error("pipeline %s: cannot start workers: %s", self.pipe.name, e.strerror)
            self.next_workers = time.monotonic() + JOB_RETRY_FIRST

    def _stop_workers(self) -> None:
        proc = self.workers_proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.settings.grace + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers_proc = None


# -- media ------------------------------------------------------------------------------
def _media_candidates(root: str) -> list[str]:
    """Directories one or two levels below ``root`` that carry an export manifest."""
    from fspl_gateway.mediafmt.manifest import JOBS_DIR, MANIFEST_NAME

    out: list[str] = []

    def subdirs(d: str) -> list[str]:
        try:
            with os.scandir(d) as it:
                return sorted(e.path for e in it if e.is_dir(follow_symlinks=False)
                              and not e.name.startswith("."))
        except OSError:
            return []

    for d1 in subdirs(root):
        for d in (d1, *subdirs(d1)):
            if (os.path.isfile(os.path.join(d, MANIFEST_NAME))
                    and os.path.isdir(os.path.join(d, JOBS_DIR))):
                out.append(d)
    return out


def _media_key(path: str) -> list[int] | None:
    from fspl_gateway.mediafmt.manifest import MANIFEST_NAME

    try:
        st = os.stat(path)
        mf = os.stat(os.path.join(path, MANIFEST_NAME))
    except OSError:
        return None
    return [st.st_dev, st.st_ino, mf.st_size, mf.st_mtime_ns]


class MediaWatcher:
    """Imports export media that appear under the media root (see the module doc)."""

    def __init__(self, settings: pl.WatchSettings) -> None:
        assert settings.media_root and settings.media_queue
        self.root = settings.media_root
        self.queue = settings.media_queue
        self.interval = settings.media_interval
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._main, name="media", daemon=True)
        self.seen_path = os.path.join(gw_dir(self.queue), MEDIA_SEEN)
        self.seen: dict[str, list[int]] = {}

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def notify(self) -> None:
        self.wake.set()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _load(self) -> None:
        try:
            with open(self.seen_path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):
                self.seen = {str(k): list(v) for k, v in data.items() if isinstance(v, list)}
        except (OSError, ValueError):
            self.seen = {}

    def _save(self) -> None:
        try:
            os.makedirs(gw_dir(self.queue), exist_ok=True)
            with atomic_write(gw_dir(self.queue), MEDIA_SEEN, clobber=True) as f:
                f.write(json.dumps(self.seen, indent=1, sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot save %s: %s", self.seen_path, e.strerror)

    def _main(self) -> None:
        try:
            ensure_queue(self.queue, append_only=False)
        except FsplError as e:
            log.error("media import: %s; not watching %s", e, self.root)
            return
        self._load()
        log.info("watching %s for export media to import into %s", self.root, self.queue)
        while not self.stop.is_set():
            self.wake.clear()
            try:
                self.scan()
            except Exception as e:  # noqa: BLE001 - keep watching
                log.error("media import: %s", e)
            self.wake.wait(self.interval)

    def scan(self) -> None:
        from fspl_gateway.gateway.media import import_media
        from fspl_gateway.gateway.pull import SyncOptions

        present = _media_candidates(self.root)
        changed = False
        for path in [p for p in self.seen if p not in present]:
            del self.seen[path]  # unmounted: import it again if it comes back
            changed = True
        for path in present:
            if self.stop.is_set():
                break
            key = _media_key(path)
            if key is None or self.seen.get(path, [])[:4] == key:
                continue
            log.info("media: importing %s into %s", path, self.queue)
            try:
                res = import_media(path, self.queue,
                                   opts=SyncOptions(progress=False, wait_lock=30.0))
            except LockBusyError as e:
                log.warning("media: %s; trying again at the next scan", e)
                continue
            except FsplError as e:
                log.error("media: %s not imported: %s", path, e)
                self.seen[path] = [*key, 0]  # not again until it changes or is re-mounted
                changed = True
                continue
            log.info("media: %s: %s", path, res.sync.summary())
            self.seen[path] = [*key, 1]
            changed = True
        if changed:
            self._save()


# -- the file watcher ---------------------------------------------------------------------
class _Watcher:
    """watchdog (inotify) on the queues' jobs/ and the media root."""

    def __init__(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.targets: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        self.watches: dict[str, Any] = {}
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in ("created", "moved", "closed"):
                    return
                path = event.dest_path if event.event_type == "moved" else event.src_path
                path = os.fsdecode(path)
                watcher.dispatch(os.path.dirname(path), os.path.basename(path))

        self.handler = Handler()
        self.observer = Observer()
        self.observer.daemon = True
        self.observer.start()

    def dispatch(self, d: str, name: str) -> None:
        with self.lock:
            targets = list(self.targets.get(d, ()))
        for t in targets:
            if isinstance(t, MediaWatcher) or q.is_job_filename(name):
                t.notify()

    def set_targets(self, targets: dict[str, list[Any]]) -> None:
        with self.lock:
            self.targets = targets
        for d in [d for d in self.watches if d not in targets]:
            try:
                self.observer.unschedule(self.watches.pop(d))
            except (KeyError, ValueError, OSError):
                pass
        for d in targets:
            if d in self.watches or not os.path.isdir(d):
                continue
            try:
                self.watches[d] = self.observer.schedule(self.handler, d, recursive=False)
                log.debug("watching %s", d)
            except OSError as e:
                log.warning("cannot watch %s (%s); relying on rescans", d, e.strerror)

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


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
        self.watcher: _Watcher | None = None
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
        targets: dict[str, list[Any]] = {}
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
            self.watcher = _Watcher()
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


__all__ = ["Gateway", "MediaWatcher", "PipelineRunner", "StopAwareTransport", "backoff",
           "ensure_queue", "run"]
