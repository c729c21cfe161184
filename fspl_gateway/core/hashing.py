"""Streaming digests: the one place where the package hashes a file, a stream, or what
it copies.

Nothing is held in memory: files are read in :data:`CHUNK` pieces into one reusable
buffer.  Digests are lowercase hex; sizes are byte counts.

* :class:`MultiHasher` — several digests of one stream at once (``update``), keeping its
  first bytes (a job's header); the fetch paths of the transports fill one while they write
  (:meth:`Transport.fetch_to_path`), so a fetched file is never read a second time;
* :func:`hash_fd` / :func:`feed_fd` — digests of a whole file by ``pread`` (the
  descriptor's offset is left alone), e.g. ``hash_fd(fd, ("sha256", "md5"))``;
* :func:`sha256_file` / :func:`sha256_hex` — sha256 of a path (optionally without
  following a symlink, optionally after dropping its cached pages so that a copy just
  written is read back from the device);
* :func:`sha256_stream` — sha256 of a readable file object, to its end;
* :func:`copy_hashing` — copy one descriptor into another while hashing (a big file is
  hashed in a second thread while the first one reads and writes, hashlib releasing the
  GIL);
* :class:`HashingWriter` — a write-only file object that hashes what it passes on.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import stat
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

from fspl_gateway.core.fsutil import write_all

CHUNK = 1 << 20
#: A copy at least this big hashes in a second thread (below, a thread costs more than
#: it saves).
THREAD_MIN = 4 << 20
#: Buffers in flight between the copying and the hashing thread (memory: RING × CHUNK).
RING = 3


def _new(algorithm: str) -> Any:
    # Data checksums, not security: also on FIPS builds where md5 is otherwise refused.
    return hashlib.new(algorithm, usedforsecurity=False)


class MultiHasher:
    """Several digests of one stream, fed in order by :meth:`update`; also keeps the
    stream's first ``head`` bytes.  :meth:`reset`
    starts over (a fetch that is retried from its first byte)."""

    def __init__(self, algorithms: Sequence[str] = ("sha256",), *, head: int = 0) -> None:
        if not algorithms:
            raise ValueError("MultiHasher needs at least one algorithm")
        self.algorithms = tuple(algorithms)
        self.head_max = head
        self.reset()

    def reset(self) -> None:
        self._hs = [_new(a) for a in self.algorithms]
        self._head = bytearray()
        self._head_bytes: bytes | None = None
        #: Bytes hashed so far.
        self.size = 0

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        for h in self._hs:
            h.update(view)
        if len(self._head) < self.head_max:
            self._head += view[:self.head_max - len(self._head)]
        self.size += len(view)

    @property
    def head(self) -> bytes:
        """The first ``head`` bytes of the stream (fewer if it is shorter)."""
        if self._head_bytes is None or len(self._head_bytes) != len(self._head):
            self._head_bytes = bytes(self._head)
        return self._head_bytes

    def hexdigest(self, algorithm: str | None = None) -> str:
        """The hex digest of ``algorithm`` (default: the first one)."""
        return str(self._hs[self._index(algorithm)].hexdigest())

    def digest(self, algorithm: str | None = None) -> bytes:
        return bytes(self._hs[self._index(algorithm)].digest())

    def _index(self, algorithm: str | None) -> int:
        return 0 if algorithm is None else self.algorithms.index(algorithm)


def feed_fd(fd: int, sink: Any, *, offset: int = 0) -> int:
    """Feed the file ``fd`` from ``offset`` to its end to ``sink.update`` (a
    :class:`MultiHasher`, a hashlib object) by ``pread`` through one reused buffer (the
    descriptor's own offset is untouched); the bytes read.  A big file
    (:data:`THREAD_MIN`) is fed from a second thread while this one reads ahead."""
    size = _buffer_size(fd, offset)
    pump = HashThread(sink) if size >= CHUNK and _big(fd) else None
    buf = bytearray(size) if pump is None else None
    n = 0
    try:
        while True:
            b = buf if pump is None else pump.free_buffer()
            assert b is not None
            k = os.preadv(fd, [b], offset + n)
            if not k:
                if pump is not None:
                    pump.give_back(b)
                return n
            if pump is None:
                sink.update(memoryview(b)[:k])
            else:
                pump.hash(b, k)
            n += k
    finally:
        if pump is not None:
            pump.finish()


def _big(fd: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size >= THREAD_MIN


def _buffer_size(fd: int, offset: int = 0) -> int:
    """A read buffer for the file ``fd``: :data:`CHUNK`, or less for a small file (a
    1 MiB buffer per 2 KB job would cost more than reading it)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return CHUNK
    if not stat.S_ISREG(st.st_mode):
        return CHUNK
    return max(1, min(CHUNK, st.st_size - offset + 1))


def hash_fd(fd: int, algorithms: Sequence[str] = ("sha256",), *,
            offset: int = 0) -> tuple[int, list[str]]:
    """Digests of the file ``fd`` from ``offset`` to its end, read with ``pread`` (the
    descriptor's own offset is untouched): (bytes read, [hex digest per algorithm])."""
    h = MultiHasher(algorithms)
    n = feed_fd(fd, h, offset=offset)
    return n, [h.hexdigest(a) for a in algorithms]


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


def copy_hashing(src_fd: int, dst_fd: int, hasher: MultiHasher | None = None, *,
                 count: int | None = None) -> tuple[str, int]:
    """Copy ``src_fd`` (from its offset to its end, or ``count`` bytes) to ``dst_fd``
    while feeding ``hasher`` (default: a new sha256 one): (hex digest of its first
    algorithm, bytes).

    A big regular source file (:data:`THREAD_MIN`) is hashed in a second thread while
    this one reads and writes (at most :data:`RING` buffers in flight).  (Starting the
    writeback every few MiB as the copy goes, so that the final fsync is short, was
    measured: no faster for a 1 GiB copy, and it slowed a decryption from 6.3 to 8.2 s,
    the writer waiting for the disk; the caller's one fsync at the end it is.)"""
    h = MultiHasher() if hasher is None else hasher
    big = _big(src_fd)
    if count is not None and count < THREAD_MIN:
        big = False
    pump = HashThread(h) if big else None
    bufs = [bytearray(_buffer_size(src_fd))] if pump is None else pump.buffers()
    n = 0
    try:
        while count is None or n < count:
            buf = bufs[0] if pump is None else pump.free_buffer()
            view = memoryview(buf)
            want = CHUNK if count is None else min(CHUNK, count - n)
            k = os.readv(src_fd, [view[:want]])
            if not k:
                break
            write_all(dst_fd, view[:k])
            if pump is None:
                h.update(view[:k])
            else:
                pump.hash(buf, k)
            n += k
    finally:
        if pump is not None:
            pump.finish()
    return h.hexdigest(), n


class HashThread:
    """Hashes the buffers handed to it in a second thread (a ring of :data:`RING`
    buffers of ``size`` bytes: take one with :meth:`free_buffer`, fill it, hand it over
    with :meth:`hash`); :meth:`finish` waits for it and re-raises what the hasher
    raised."""

    def __init__(self, h: Any, size: int = CHUNK) -> None:
        self.h = h
        self.error: BaseException | None = None
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._bufs = [bytearray(size) for _ in range(RING)]
        for b in self._bufs:
            self._free.put(b)
        self._t = threading.Thread(target=self._run, name="fspl-gw-hash", daemon=True)
        self._t.start()

    def buffers(self) -> list[bytearray]:
        return self._bufs

    def free_buffer(self) -> bytearray:
        if self.error is not None:
            raise self.error
        return self._free.get()

    def hash(self, buf: bytearray, k: int) -> None:
        self._full.put((buf, k))

    def give_back(self, buf: bytearray) -> None:
        """Return a buffer taken with :meth:`free_buffer` but not used."""
        self._free.put(buf)

    def _run(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, k = item
            if self.error is None:
                try:
                    self.h.update(memoryview(buf)[:k])
                except BaseException as e:  # handed to the copying thread
                    self.error = e
            self._free.put(buf)

    def finish(self) -> None:
        self._full.put(None)
        self._t.join()
        if self.error is not None:
            raise self.error


class HashingWriter:
    """A write-only file object that passes what is written to it on to ``dst`` and
    hashes it (one algorithm by name, or a :class:`MultiHasher`)."""

    def __init__(self, dst: BinaryIO, algorithm: str | MultiHasher = "sha256") -> None:
        self.dst = dst
        self.hasher = MultiHasher((algorithm,)) if isinstance(algorithm, str) else algorithm

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self.hasher.size

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = self.dst.write(view)
        n = len(view) if n is None else n
        self.hasher.update(view[:n])  # only what was passed on: a short write is retried
        return n

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def flush(self) -> None:
        self.dst.flush()

    def writable(self) -> bool:
        return True
