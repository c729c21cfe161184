"""The outcome log: what ran in a queue, for the gateway's execution receipts.

When a queue has receipts on (the gateway writes ``<queue>/.fspl-gw/receipts.on``,
:attr:`~fspl_gateway.core.layout.QueueLayout.receipts_marker`), the queue processor
appends one JSON line per job it ran to ``<queue>/.fspl-gw/outcomes.jsonl``::

    {"v": 1, "name": "fspl-….fspl", "seq": 7, "start": 1700000000.1, "end": 1700000001.2,
     "ok": false, "exit": 3, "status": "exit status 3"}

``exit`` is the command's exit status (null for NOP, a Fail packet, a signal or a
timeout; ``status`` says which).  The gateway (``fspl-gw sync --receipts``) turns the
lines into receipts and empties the log (:func:`take`).  Appends and the take hold an
exclusive ``flock`` on the log, so a line is never half read or lost between the two.
Core knows nothing of the gateway: the marker file is the only switch.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from typing import Any

from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log

VERSION = 1


def log_path_if_enabled(queuedir: str) -> str | None:
    """The outcome log of ``queuedir`` if its receipts are on, else None."""
    lay = QueueLayout(queuedir)
    return lay.outcomes if os.path.exists(lay.receipts_marker) else None


def append(path: str, record: dict[str, Any]) -> None:
    """Append one outcome line (flushed and fsynced; a failure is logged, never raised:
    a receipt must not fail the job)."""
    line = (json.dumps({"v": VERSION, **record}, separators=(",", ":"),
                       ensure_ascii=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        log.warning("cannot record the outcome of %s in %s: %s", record.get("name"), path,
                    e.strerror)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    except OSError as e:
        log.warning("cannot record the outcome of %s in %s: %s", record.get("name"), path,
                    e.strerror)
    finally:
        os.close(fd)


def take(path: str, consume: Callable[[list[dict[str, Any]]], None]) -> int:
    """Read every outcome line, hand them to ``consume`` (which must make them durable
    elsewhere and may be called with an empty list), then empty the log; all under the
    log's lock.  A crash after ``consume`` and before the log is emptied hands the same
    lines over again next time: ``consume`` must be idempotent.  Returns the count."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        consume([])
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        records: list[dict[str, Any]] = []
        for raw in data.splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                log.warning("ignoring a damaged line in %s", path)
                continue
            if isinstance(rec, dict) and rec.get("v") == VERSION:
                records.append(rec)
        consume(records)
        os.ftruncate(fd, 0)
        os.fsync(fd)
        return len(records)
    finally:
        os.close(fd)
