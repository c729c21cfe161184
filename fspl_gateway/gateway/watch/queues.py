"""A pipeline's queue (and the media queue) is created when it is missing."""

from __future__ import annotations

import os
import threading

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import QueueError
from fspl_gateway.core.log import log

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
