"""The file watcher: inotify (through watchdog, imported only here) on the pipelines'
``jobs/`` directories and the media root.  A new name there is passed to the targets
watching that directory (:class:`Target`), which decide whether it matters."""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from fspl_gateway.core.log import log


class Target(Protocol):
    """What the watcher wakes: a pipeline runner or the media watcher."""

    def notify(self, name: str) -> None: ...


class FileWatcher:
    """Calls ``notify(name)`` of every target of a directory when ``name`` is created
    or moved into it (or closed after writing)."""

    def __init__(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.targets: dict[str, list[Target]] = {}
        self.lock = threading.Lock()
        #: Watched directory → watchdog's watch handle.
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
            t.notify(name)

    def set_targets(self, targets: dict[str, list[Target]]) -> None:
        """Watch exactly these directories (absolute paths) for these targets."""
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
