"""The sequence file: one decimal number and a newline, guarded by ``<path>.lock``.

Used by the sender (``prepare``: the next seq to hand out) and by a queue
(``nextseq``: the next seq to run).  The lock is an exclusive ``flock`` on the sibling
``.lock`` file, taken without blocking as fspl does (busy → LockBusyError), or waiting up
to ``wait`` seconds when asked (our ``--wait-lock``).  Updates go to ``<path>.temp``,
are flushed and fsynced, then renamed over the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from fspl_gateway.core.errors import LockBusyError, SeqFileError


def lock_path(path: str) -> str:
    """The lock file of the sequence file ``path``: ``<path>.lock``."""
    return path + ".lock"


def acquire_lock(lock_path: str, *, create: bool, wait: float = 0.0, what: str = "") -> int:
    """Open and exclusively flock ``lock_path``; return the descriptor (close to unlock).

    ``create=False`` and a missing lock file → SeqFileError (an append-only queue has no
    lock file).  Busy → wait up to ``wait`` seconds, then LockBusyError.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except FileNotFoundError:
        raise SeqFileError(
            f"cannot open lock file {lock_path}: no such file "
            "(not a queue directory, or an append-only queue)") from None
    except OSError as e:
        raise SeqFileError(f"cannot open lock file {lock_path}: {e.strerror}") from None
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise SeqFileError(f"cannot lock {lock_path}: {e.strerror}") from None
        if time.monotonic() >= deadline:
            os.close(fd)
            hint = "" if wait else " (use --wait-lock SECONDS to wait for it)"
            raise LockBusyError(f"{what or lock_path} is locked by another process{hint}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


class SeqFile:
    """An open, locked sequence file.  Use as a context manager."""

    def __init__(self, path: str, *, create_lock: bool = True, wait: float = 0.0) -> None:
        self.path = path
        self._lock_fd: int | None = acquire_lock(lock_path(path), create=create_lock,
                                                 wait=wait, what=path)
        try:
            self.next = self._read()
        except BaseException:
            self.close()
            raise

    def _read(self) -> int:
        try:
            with open(self.path, "rb") as f:
                line = f.readline(64)
        except FileNotFoundError:
            self._write(1)
            return 1
        except OSError as e:
            raise SeqFileError(f"cannot read {self.path}: {e.strerror}") from None
        text = line.strip()
        if not text.isdigit() or int(text) >= 1 << 64:
            raise SeqFileError(f"{self.path} does not hold a sequence number: {line[:40]!r}")
        return int(text)

    def _write(self, value: int) -> None:
        tmp = self.path + ".temp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"%d\n" % value)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as e:
            raise SeqFileError(f"cannot write {self.path}: {e.strerror}") from None

    def set(self, value: int) -> int:
        """Store ``value``; return the previous value."""
        if not 0 <= value < 1 << 64:
            raise SeqFileError(f"sequence number {value} out of range")
        prev = self.next
        self._write(value)
        self.next = value
        return prev

    def increment(self) -> int:
        """Advance by one; return the value before (the one just handed out/processed).

        After 2⁶⁴−1 comes 0, as with fspl (a u64 that wraps): refusing to advance would
        leave a processed job in place to run again on every queue-process."""
        return self.set((self.next + 1) % (1 << 64))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SeqFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_unlocked(path: str) -> int | None:
    """The number in a sequence file without taking its lock (for status and sync's
    "already processed" check); None if the file is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            text = f.readline(64).strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= 1 << 64:
        return None
    return int(text)
