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

**The job's output** (:class:`OutputCapture`).  ``<queue>/.fspl-gw/receipts.output``
(beside the log; written by ``sync --receipts --receipt-output MODE``) says what of each
job's output its line carries, under ``"output"``: ``digest`` its sha256 and size,
``head`` its size and first :data:`HEAD_BYTES` bytes, ``both`` all three.  "Output" is

* ``--output-to saveboth``: the saved ``jobs/<file>.out`` (stdout and stderr as saved),
  read after the job;
* ``--output-to passboth``: the job's **stdout**, teed: the command writes into a pipe, a
  thread copies each chunk to our stdout unchanged and hashes it on the way (streamed,
  never held whole); stderr is left alone (inherited, as without receipts).  If our
  stdout is gone (EPIPE), the read end is closed, so the command gets the EPIPE/SIGPIPE
  it would have got writing there itself.  What a background process of the job writes
  after the job exited is passed on but counted only for :data:`LINGER` seconds (then
  ``"partial": true``).

The head is made safe to travel: decoded as UTF-8 (undecodable bytes and control
characters but newline and tab written as ``\\xNN``), then passed through the one
redaction function (:func:`fspl_gateway.core.redact.redact`); the digest and size are
of the raw bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from fspl_gateway.core.fsutil import write_all
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.redact import redact

VERSION = 1
#: The most of a job's output a receipt carries (``head``).
HEAD_BYTES = 1024
#: After the job exited, how long the tee waits for the end of its stdout.
LINGER = 2.0
_CHUNK = 1 << 16


class OutputMode(StrEnum):
    """What of a job's output its ran receipt carries (``--receipt-output``)."""

    NONE = "none"
    DIGEST = "digest"  # sha256 and size
    HEAD = "head"  # size and the first HEAD_BYTES bytes
    BOTH = "both"


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


# -- the job's output --------------------------------------------------------------------
def output_mode(log_path: str) -> OutputMode:
    """The output mode of the queue whose outcome log is ``log_path`` (the file
    :attr:`QueueLayout.receipt_output` beside it); NONE when absent or unreadable."""
    path = os.path.join(os.path.dirname(log_path), os.path.basename(
        QueueLayout("").receipt_output))
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return OutputMode(f.read().strip())
    except (OSError, ValueError):
        return OutputMode.NONE


#: The characters a head never carries raw (control characters but newline and tab).
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def safe_text(data: bytes) -> str:
    """``data`` as text that is safe to show and to carry (see the module doc)."""
    text = data.decode("utf-8", "backslashreplace")
    return redact(UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}", text))


class OutputCapture:
    """The digest and/or head of one job's output (see the module doc).  Used by the
    executor (:func:`fspl_gateway.core.process.run_job`): :meth:`stdout` gives the
    command's stdout, :meth:`started` is called once the command was started (or could
    not be); then :meth:`fields` gives what goes into the outcome line or receipt."""

    def __init__(self, mode: OutputMode, saved: str | None = None) -> None:
        self.mode = mode
        #: Output saved to this file (saveboth): it is read after the job.
        self.saved = saved
        self._h = hashlib.sha256()
        self._head = bytearray()
        self._n = 0
        self._lock = threading.Lock()
        self._w: int | None = None
        self._thread: threading.Thread | None = None

    def stdout(self, output_fd: int | None) -> int | None:
        """The command's stdout: ``output_fd`` when output goes to a file, else the
        write end of the tee's pipe."""
        if output_fd is not None or self.saved is not None:
            return output_fd
        r, self._w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._tee, args=(r,), name="output-tee",
                                        daemon=True)
        self._thread.start()
        return self._w

    def started(self) -> None:
        """The command has its copy of the pipe: close ours (its end is our EOF)."""
        if self._w is not None:
            os.close(self._w)
            self._w = None

    def _take(self, chunk: bytes) -> None:
        with self._lock:
            self._h.update(chunk)
            if len(self._head) < HEAD_BYTES:
                self._head += chunk[:HEAD_BYTES - len(self._head)]
            self._n += len(chunk)

    def _tee(self, r: int) -> None:
        try:
            while True:
                try:
                    chunk = os.read(r, _CHUNK)
                except InterruptedError:
                    continue
                if not chunk:
                    return
                self._take(chunk)
                try:
                    write_all(1, chunk)
                except OSError as e:
                    if e.errno != errno.EPIPE:
                        log.warning("passing a job's output on: %s", e.strerror)
                    return  # the command now gets EPIPE, as it would writing there
        except OSError as e:
            log.warning("reading a job's output: %s", e.strerror)
        finally:
            os.close(r)

    def _read_saved(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            while chunk := os.read(fd, _CHUNK):
                self._take(chunk)
        except OSError as e:
            log.warning("reading %s: %s", path, e.strerror)
        finally:
            os.close(fd)

    def fields(self) -> dict[str, Any]:
        """``{"output": {...}}`` for the outcome line ({} when nothing ran)."""
        self.started()
        partial = False
        if self._thread is not None:
            self._thread.join(LINGER)
            partial = self._thread.is_alive()  # a background process holds its stdout
        elif self.saved is not None:
            self._read_saved(self.saved)
        else:
            return {}
        with self._lock:
            out: dict[str, Any] = {"bytes": self._n}
            if partial:
                out["partial"] = True
            if self.mode in (OutputMode.DIGEST, OutputMode.BOTH):
                out["sha256"] = self._h.copy().hexdigest()
            if self.mode in (OutputMode.HEAD, OutputMode.BOTH):
                out["head"] = safe_text(bytes(self._head))
        return {"output": out}


def capture(log_path: str | None, saved: str | None = None) -> OutputCapture | None:
    """A capture for one job of the queue whose outcome log is ``log_path`` (None: no
    receipts, or no output wanted in them)."""
    if log_path is None:
        return None
    mode = output_mode(log_path)
    return None if mode == OutputMode.NONE else OutputCapture(mode, saved)
