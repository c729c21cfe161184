"""File-system helpers: the one safe-write path, and kernel-side copies.

Every write that another process may see goes through :class:`AtomicWriter`
(temp name in the target directory → write → flush → fsync → link or rename without
clobbering → fsync the directory).  Payload copies go through :func:`copy_fd`, which
lets the kernel move the bytes (copy_file_range, sendfile, splice) and only falls back
to a read/write loop when none of those applies.  :func:`flush_files` makes a batch of
files durable together.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from fspl_gateway.core.libc import libc_function

CHUNK = 1 << 20  # 1 MiB
#: Prefix of every temporary name we create; never matches ``fspl-*.fspl``.
TMP_PREFIX = ".fspl-gw-tmp-"

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename/link/unlink in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(hint: str = "") -> str:
    """A fresh temporary file name (no directory) that no reader will take for a job."""
    return f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}-{hint}"


def _renameat2_noreplace(src: str, dst: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 not available")
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def move_noclobber(src: str, dst: str, *, one_name: bool = False) -> None:
    """Move ``src`` to ``dst`` atomically; raise FileExistsError if ``dst`` exists.

    Hard link + unlink where the file system has links, else renameat2(RENAME_NOREPLACE),
    else (e.g. some FUSE mounts) an existence check followed by rename.

    ``one_name=True`` tries renameat2(RENAME_NOREPLACE) first, so that a crash never
    leaves the file under both names (a consumer could take ``dst`` while ``src`` is
    still there, and a recovery would then move it again); the file systems without it
    get the order above.
    """
    if one_name and _rename_noreplace_if_supported(src, dst):
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        if _rename_noreplace_if_supported(src, dst):
            return
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _rename_noreplace_if_supported(src: str, dst: str) -> bool:
    """renameat2(RENAME_NOREPLACE): True when done, False when the file system (or libc)
    lacks it; FileExistsError and other errors propagate."""
    try:
        _renameat2_noreplace(src, dst)
        return True
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    return False


class AtomicWriter:
    """Write a file that appears at its final name whole or not at all.

    Use as a context manager::

        with AtomicWriter(dirpath, "fspl-x.fspl") as w:
            w.file.write(b"...")
        # now dirpath/fspl-x.fspl exists, fsynced, and so is dirpath

    ``clobber=False`` (default) raises FileExistsError if the final name exists, and the
    temporary file is removed.  On any exception inside the block the temporary file is
    removed and nothing appears.
    """

    def __init__(self, dirpath: str, final_name: str, *, clobber: bool = False,
                 mode: int = 0o644) -> None:
        self.dirpath = dirpath
        self.final_name = final_name
        self.clobber = clobber
        self.tmp_path = os.path.join(dirpath, tmp_name(final_name))
        self.final_path = os.path.join(dirpath, final_name)
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=0)

    def fileno(self) -> int:
        return self.file.fileno()

    def commit(self) -> str:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            if self.clobber:
                os.rename(self.tmp_path, self.final_path)
            else:
                move_noclobber(self.tmp_path, self.final_path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.dirpath)
        return self.final_path

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def atomic_write(dirpath: str, final_name: str, *, clobber: bool = False) -> Iterator[BinaryIO]:
    """Context manager yielding a binary file; see :class:`AtomicWriter`."""
    w = AtomicWriter(dirpath, final_name, clobber=clobber)
    try:
        yield w.file
    except BaseException:
        w.abort()
        raise
    w.commit()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes from a raw descriptor (no buffering, so the descriptor's
    offset ends right after them); fewer only at end of file."""
    parts: list[bytes] = []
    while n > 0:
        b = os.read(fd, min(n, CHUNK))
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _kind(fd: int) -> int:
    return stat.S_IFMT(os.fstat(fd).st_mode)


#: With ``flush_behind``, start write-back after every this many bytes.
FLUSH_BEHIND = 32 << 20


def copy_fd(src: int, dst: int, count: int | None = None, *, flush_behind: bool = False) -> int:
    """Copy from ``src``'s current offset to ``dst`` until EOF (or ``count`` bytes).

    The kernel moves the bytes where it can: copy_file_range (file→file), sendfile
    (file→anything), splice (a pipe on either side); otherwise a 1 MiB read/write loop.
    Returns the number of bytes copied.

    ``flush_behind`` (for a regular-file destination that will be fsynced): every
    :data:`FLUSH_BEHIND` bytes, ask the kernel to start writing back what was copied
    (``POSIX_FADV_DONTNEED`` starts asynchronous write-back of dirty pages), so the disk
    works while we copy and the final fsync has little left to wait for; the pages also
    leave the cache instead of crowding it.
    """
    sk, dk = _kind(src), _kind(dst)
    total = 0
    remaining = count
    flush_from = os.lseek(dst, 0, os.SEEK_CUR) if flush_behind and dk == stat.S_IFREG else -1
    flushed = 0

    def want() -> int:
        return CHUNK * 8 if remaining is None else min(CHUNK * 8, remaining)

    method = "loop"
    if sk == stat.S_IFREG and dk == stat.S_IFREG:
        method = "cfr"
    elif sk == stat.S_IFREG:
        method = "sendfile"
    elif sk == stat.S_IFIFO or dk == stat.S_IFIFO:
        method = "splice"
    while remaining is None or remaining > 0:
        try:
            if method == "cfr":
                n = os.copy_file_range(src, dst, want())
            elif method == "sendfile":
                n = os.sendfile(dst, src, None, want())
            elif method == "splice":
                n = os.splice(src, dst, want())
            else:
                buf = os.read(src, min(CHUNK, want()))
                n = len(buf)
                if n:
                    write_all(dst, buf)
        except OSError as e:
            if method != "loop" and e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                                 errno.EOPNOTSUPP, errno.EBADF):
                method = "sendfile" if method == "cfr" else "loop"
                continue
            raise
        if n == 0:
            break
        total += n
        if remaining is not None:
            remaining -= n
        if flush_from >= 0 and total - flushed >= FLUSH_BEHIND:
            os.posix_fadvise(dst, flush_from + flushed, total - flushed, os.POSIX_FADV_DONTNEED)
            flushed = total
    return total


def copy_stream(src: BinaryIO, dst: BinaryIO, count: int | None = None) -> int:
    """Copy between Python file objects, using :func:`copy_fd` when both are unbuffered
    OS files (a buffered reader may hold read-ahead bytes its descriptor has passed)."""
    if isinstance(src, io.FileIO) and isinstance(dst, io.FileIO | io.BufferedWriter):
        sfd, dfd = src.fileno(), dst.fileno()
        dst.flush()
        return copy_fd(sfd, dfd, count)
    total = 0
    while count is None or total < count:
        n = CHUNK if count is None else min(CHUNK, count - total)
        buf = src.read(n)
        if not buf:
            break
        dst.write(buf)
        total += len(buf)
    return total


def flush_files(paths: list[str]) -> None:
    """Make each file's bytes durable: start the writeback of all of them first
    (:func:`start_writeback`), so that the syncs mostly wait for I/O already under way
    and share one journal commit instead of paying for one each.

    fdatasync: the data and what is needed to read it back (size, blocks); a new
    directory entry for a file is made durable by an fsync of its directory
    (:func:`fsync_dir`)."""
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
        if len(fds) > 1:
            start_writeback(fds)
        for fd in fds:
            os.fdatasync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def start_writeback(fds: list[int]) -> None:
    """Ask the kernel to start writing these files back now (sync_file_range; no
    waiting, no durability by itself: an fsync after it gives that).  Quietly nothing
    where unavailable."""
    import ctypes

    sfr = libc_function("sync_file_range",
                        [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if sfr is not None:
        for fd in fds:
            sfr(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; errors show up in the fsync


#: errnos that mean the local disk cannot take more (full, file too large, quota,
#: read-only).
DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


def is_local_disk_error(exc: BaseException) -> OSError | None:
    """The OSError (disk full, file too large, quota, read-only) behind ``exc``, if any,
    following ``__cause__``/``__context__`` (transports wrap OSErrors)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None
