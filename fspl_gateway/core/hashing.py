"""Streaming digests: the one place where the package hashes a file, a stream, or what
it copies.

Nothing is held in memory: files are read in :data:`CHUNK` pieces into one reusable
buffer.  Digests are lowercase hex; sizes are byte counts.

* :func:`hash_fd` — several digests of a whole file by ``pread`` (the descriptor's
  offset is left alone), e.g. ``hash_fd(fd, ("sha256", "md5"))``;
* :func:`sha256_file` / :func:`sha256_hex` — sha256 of a path (optionally without
  following a symlink, optionally after dropping its cached pages so that a copy just
  written is read back from the device);
* :func:`sha256_stream` — sha256 of a readable file object, to its end;
* :func:`copy_hashing` — copy one descriptor into another while hashing;
* :class:`HashingWriter` — a write-only file object that hashes what it passes on.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

from fspl_gateway.core.fsutil import write_all

CHUNK = 1 << 20


def _new(algorithm: str) -> Any:
    # Data checksums, not security: also on FIPS builds where md5 is otherwise refused.
    return hashlib.new(algorithm, usedforsecurity=False)


def hash_fd(fd: int, algorithms: Sequence[str] = ("sha256",), *,
            offset: int = 0) -> tuple[int, list[str]]:
    """Digests of the file ``fd`` from ``offset`` to its end, read with ``pread`` (the
    descriptor's own offset is untouched): (bytes read, [hex digest per algorithm])."""
    hs = [_new(a) for a in algorithms]
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    n = 0
    while True:
        k = os.preadv(fd, [buf], offset + n)
        if not k:
            return n, [h.hexdigest() for h in hs]
        for h in hs:
            h.update(view[:k])
        n += k


def sha256_file(path: str, *, follow_symlinks: bool = True,
                drop_cache: bool = False) -> tuple[str, int]:
    """sha256 of the file at ``path``: (hex, bytes).  ``follow_symlinks=False`` refuses a
    symlink (OSError ELOOP); ``drop_cache`` first asks the kernel to forget the file's
    cached pages, so that a just-written copy is read back from the device."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        if drop_cache:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
        n, (hexd,) = hash_fd(fd)
    finally:
        os.close(fd)
    return hexd, n


def sha256_hex(path: str) -> str:
    """sha256 of the file at ``path`` (hex)."""
    return sha256_file(path)[0]


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """sha256 of what ``stream`` yields until its end: (hex, bytes)."""
    h = _new("sha256")
    n = 0
    if isinstance(stream, io.RawIOBase | io.BufferedIOBase):  # readinto's contract holds
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            k = stream.readinto(buf)
            if not k:
                return h.hexdigest(), n
            h.update(view[:k])
            n += k
    while True:
        b = stream.read(CHUNK)
        if not b:
            return h.hexdigest(), n
        h.update(b)
        n += len(b)


def copy_hashing(src_fd: int, dst_fd: int) -> tuple[str, int]:
    """Copy ``src_fd`` (from its offset to its end) to ``dst_fd`` while hashing it:
    (sha256 hex, bytes)."""
    h = _new("sha256")
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    n = 0
    while True:
        k = os.readv(src_fd, [buf])
        if not k:
            return h.hexdigest(), n
        h.update(view[:k])
        write_all(dst_fd, view[:k])
        n += k


class HashingWriter:
    """A write-only file object that passes what is written to it on to ``dst`` and
    hashes it."""

    def __init__(self, dst: BinaryIO, algorithm: str = "sha256") -> None:
        self.dst = dst
        self._h = _new(algorithm)
        #: Bytes written so far.
        self.size = 0

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = self.dst.write(view)
        n = len(view) if n is None else n
        self._h.update(view[:n])  # only what was passed on: a short write is retried
        self.size += n
        return n

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())

    def flush(self) -> None:
        self.dst.flush()

    def writable(self) -> bool:
        return True
