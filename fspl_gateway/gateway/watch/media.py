"""The media watcher: export media mounted under the ``[watch]`` table's ``media_root``
are imported into the media queue.

A newly mounted volume under the root (``/media/STICK`` or ``/media/USER/STICK``) that
carries an export manifest (``MANIFEST.sha256`` + ``jobs/``, see
:mod:`fspl_gateway.mediafmt`) is imported (:func:`fspl_gateway.gateway.media.import_media`).
Mounting produces no inotify event on the mount point's parent, so the root is scanned
every ``media_interval`` seconds (and at once on any event in it).  A volume is
remembered (path, device, manifest size and mtime, in ``QueueLayout.media_seen`` under the
queue's ``.fspl-gw/``) while it stays mounted, so it is not imported again at every
scan; a changed manifest, or the volume mounted again later, is imported again (the
journal makes that cheap).
"""

from __future__ import annotations

import json
import os
import threading

from fspl_gateway.core.errors import FsplError, LockBusyError
from fspl_gateway.core.fsutil import atomic_write
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.queues import ensure_queue
from fspl_gateway.mediafmt.manifest import JOBS_DIR, MANIFEST_NAME

#: The volumes already imported, in the media queue's ``.fspl-gw/``.


def _media_candidates(root: str) -> list[str]:
    """Directories one or two levels below ``root`` that carry an export manifest."""
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
        self.seen_path = QueueLayout(self.queue).media_seen
        self.seen: dict[str, list[int]] = {}

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def notify(self, name: str) -> None:
        """Something appeared in the media root (any name): scan now."""
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
            d, name = os.path.split(self.seen_path)
            os.makedirs(d, exist_ok=True)
            with atomic_write(d, name, clobber=True) as f:
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
