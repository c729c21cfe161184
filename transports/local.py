"""The ``local`` transport: the remote queue is a directory on a mounted file system.

``location`` is the remote queue directory (the one holding ``jobs/``): an NFS or SMB
mount, a Syncthing folder, an rclone mount, or just another directory.

* ``list`` — ``os.scandir`` of ``jobs/``: regular files only, symlinks are never followed
  (a symlink, directory, FIFO or device is not listed); size and mtime from ``lstat``.
* ``open`` — a raw unbuffered file (``O_NOFOLLOW``, ``O_NONBLOCK`` so that a FIFO cannot
  hang us, then checked to be a regular file).
* ``fetch`` — a kernel copy (:func:`fspl_gateway.core.fsutil.copy_fd` through
  :func:`~fspl_gateway.core.fsutil.copy_stream`) of at most the listed size + 1 byte, then
  the byte count is checked against the file's size when opened and the listed size: a
  mismatch is a :class:`~fspl_gateway.transports.base.ListingChangedError`.  A file that a
  process on this host still has open for writing (a read lease cannot be taken) is
  refused the same way.  Files do not appear atomically here (``cp`` writes the final
  name): the sync engine waits for them to settle (option ``settle``).
* ``write_new`` — :class:`fspl_gateway.core.fsutil.AtomicWriter` inside the remote ``jobs/``
  (temporary name → fsync → link/rename without clobbering → fsync the directory), so
  the file appears whole or not at all and never over an existing name.
* ``delete`` — unlink + fsync of ``jobs/``.  A missing file raises RemoteNotFoundError.
* ``delete_many`` — unlink each, then one fsync of ``jobs/`` for all of them.
* ``fetch_to_path(link=True)`` — when the remote file is on the same file system as the
  destination, owned by us and has no other name, the very inode that was opened and
  checked is hard-linked to the destination (``/proc/self/fd``) instead of copied; the
  size is checked as for a copy.  Otherwise (another file system, another owner, …) a
  kernel copy as ``fetch`` does (also for a file bigger than this process's
  RLIMIT_FSIZE: a link must not get round that limit).

Concurrency: on a local-disk file system (ext4, xfs, btrfs, tmpfs, …, per
``/proc/self/mountinfo``) each file costs a few short system calls, and more threads
only add contention: ``set_concurrency`` then answers 1.  Network and FUSE file systems
(NFS, SMB, sshfs, rclone mount) keep the caller's number, since there each call waits.

A subclass that overrides ``fetch`` or ``delete`` keeps them: the fast paths step aside
and the generic defaults (built on those two) are used.

Temporaries (``cleanup_temporaries``): our writers name temporaries
``fsutil.TMP_PREFIX + "<pid>-<random>-<final name>"``.  A leftover is removed when it is
a regular file and either

1. its last modification is older than ``tmp_max_age`` (option, default 1 hour), or
2. the writer pid in its name is not a live process *on this host* and the file has not
   been modified for ``tmp_grace`` (option, default 60 seconds).

Rule 2 clears the debris of a killed local writer quickly; the grace period protects a
writer on another host sharing the directory (NFS, Syncthing), whose pid means nothing
here but which keeps the mtime fresh while it writes.  Nothing else is ever touched.

Options (:data:`OPTIONS`): ``tmp_max_age`` and ``tmp_grace``, durations: a plain number
is seconds (``tmp_max_age`` was minutes in fspl-gw 0.1: write ``60m`` for the old ``60``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from fspl_gateway.core.errors import (
    IntegrityError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import (
    TMP_PREFIX,
    AtomicWriter,
    copy_stream,
    fsync_dir,
)
from fspl_gateway.core.hashing import MultiHasher, copy_hashing, feed_fd
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.base import (
    SETTLE_OPTION,
    Capabilities,
    ListingChangedError,
    RemoteEntry,
    Transport,
    check_listed_size,
    listed_size,
    new_local_file,
)
from fspl_gateway.transports.options import Option, OptionSchema, OptionType

log = get_logger(__name__)

DEFAULT_TMP_MAX_AGE_S = 3600.0
DEFAULT_TMP_GRACE_S = 60.0

#: The options of our temporaries (shared with directory media).
TMP_OPTIONS = OptionSchema(
    Option("tmp_max_age", OptionType.DURATION, default=DEFAULT_TMP_MAX_AGE_S,
           help="Remove a leftover temporary of ours untouched for this long."),
    Option("tmp_grace", OptionType.DURATION, default=DEFAULT_TMP_GRACE_S,
           help="Remove sooner a leftover whose writer process on this host is gone, once "
                "untouched for this long."),
)
OPTIONS = TMP_OPTIONS + OptionSchema(SETTLE_OPTION)
#: File systems on a local disk (or in memory): one thread is fastest there.
LOCAL_DISK_FS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "zfs", "bcachefs",
    "tmpfs", "ramfs", "vfat", "exfat", "ntfs3", "hfsplus", "overlay", "squashfs",
    "iso9660", "udf",
})


def fs_type(path: str) -> str | None:
    """The file system type of the mount holding ``path`` (from /proc/self/mountinfo),
    or None where that cannot be told."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, kind = mnt, right.split()[0]
    return kind


def _os_error(what: str, e: OSError) -> TransportError:
    """An OSError as a one-line TransportError (ENOSPC, EROFS, EACCES spelled out)."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on the remote file system"
    elif e.errno == errno.EROFS:
        reason = "the remote file system is read-only"
    elif e.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    return TransportError(f"{what}: {reason}")


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (EPERM counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_writer_pid(name: str) -> int | None:
    """The writer pid encoded in one of our temporary names, or None."""
    if not name.startswith(TMP_PREFIX):
        return None
    head = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def cleanup_tmp_dir(dirpath: str, *, max_age_s: float = DEFAULT_TMP_MAX_AGE_S,
                    grace_s: float = DEFAULT_TMP_GRACE_S, now: float | None = None) -> int:
    """Remove stale temporaries of ours in ``dirpath`` (the rule is in the module doc).
    Returns how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    try:
        it = os.scandir(dirpath)
    except FileNotFoundError:
        return 0
    with it:
        for de in it:
            if not de.name.startswith(TMP_PREFIX):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            idle = now - st.st_mtime
            pid = tmp_writer_pid(de.name)
            stale = idle > max_age_s or (
                pid is not None and idle >= grace_s and not pid_alive(pid))
            if not stale:
                continue
            try:
                os.unlink(de.path)
            except FileNotFoundError:
                continue
            log.info("removed stale temporary %s (idle %.0f s)", de.path, idle)
            removed += 1
    if removed:
        fsync_dir(dirpath)
    return removed


def open_regular_nofollow(path: str, what: str) -> BinaryIO:
    """Open ``path`` read-only as a raw unbuffered file, refusing symlinks, FIFOs,
    devices and directories; missing → RemoteNotFoundError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RemoteNotFoundError(f"{what}: no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TransportError(f"{what}: is a symbolic link; refusing to follow it") from None
        raise _os_error(what, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TransportError(f"{what}: not a regular file; refusing it")
        # O_NONBLOCK (so that opening a FIFO does not hang) stays: it changes nothing
        # for a regular file.
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def open_for_writing(fd: int) -> bool | None:
    """Whether some process on this host has the file of ``fd`` open for writing (a read
    lease cannot be taken then); None where that cannot be told (not our file, a network
    file system, leases off)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return True if e.errno == errno.EAGAIN else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def _refuse_if_being_written(fd: int, name: str) -> None:
    if open_for_writing(fd):
        raise ListingChangedError(f"{name}: still open for writing by a process on this "
                                  "host; not taken")


class LocalTransport(Transport):
    """A remote queue that is a directory (see the module documentation)."""

    name = "local"
    options_schema = OPTIONS
    #: ``cp`` and other writers fill the final name: see ``settle``.
    capabilities = Capabilities(atomic_appearance=False)

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        self.root = os.path.abspath(os.path.expanduser(location))
        self.jobs_dir = os.path.join(self.root, self.area)
        self.tmp_max_age_s: float = self.settings["tmp_max_age"]
        self.tmp_grace_s: float = self.settings["tmp_grace"]
        self._same_dev: dict[str, bool] = {}

    # -- helpers -------------------------------------------------------------------
    def _require_jobs_dir(self) -> None:
        try:
            st = os.lstat(self.jobs_dir)
        except FileNotFoundError:
            if not os.path.isdir(self.root):
                raise RemoteNotFoundError(
                    f"remote queue directory {self.root} does not exist "
                    "(is the share mounted?)") from None
            raise RemoteNotFoundError(
                f"remote queue directory {self.root} has no {self.area}/ directory") from None
        except OSError as e:
            raise _os_error(f"{self.jobs_dir}", e) from None
        if not stat.S_ISDIR(st.st_mode):
            raise TransportError(f"{self.jobs_dir} is not a directory (symlinks are not followed)")

    def _path(self, name: str) -> str:
        self.check_name(name)
        return os.path.join(self.jobs_dir, name)

    def make_area(self) -> None:
        try:
            os.makedirs(self.jobs_dir, exist_ok=True)
        except OSError as e:
            raise _os_error(f"creating {self.jobs_dir}", e) from None

    # -- interface -----------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        self._require_jobs_dir()
        try:
            with os.scandir(self.jobs_dir) as it:
                entries = []
                for de in it:
                    try:
                        st = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        log.debug("not a regular file, ignored: %s", de.path)
                        continue
                    entries.append(RemoteEntry(de.name, st.st_size, None, st.st_mtime))
        except OSError as e:
            raise _os_error(f"listing {self.jobs_dir}", e) from None
        yield from entries

    def open(self, name: str) -> BinaryIO:
        path = self._path(name)
        self._require_jobs_dir()
        return open_regular_nofollow(path, path)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        with self.open(name) as src:
            return self._copy(name, src, entry, lambda count: copy_stream(src, dst, count))

    def set_concurrency(self, n: int) -> int:
        kind = fs_type(self.root)
        return 1 if kind in LOCAL_DISK_FS else n

    def fetch_to_path(self, name: str, path: str, entry: RemoteEntry | None = None, *,
                      link: bool = False, hasher: MultiHasher | None = None) -> int:
        if type(self).fetch is not LocalTransport.fetch:
            return super().fetch_to_path(name, path, entry, hasher=hasher)
        if hasher is not None:
            hasher.reset()
        if link and self._same_fs(path):
            n = self._link_to(name, path, entry, hasher)
            if n is not None:
                return n
        if hasher is None:
            return super().fetch_to_path(name, path, entry)
        with new_local_file(path) as fd, self.open(name) as src:
            return self._copy(name, src, entry, lambda count: copy_hashing(
                src.fileno(), fd, hasher, count=count)[1])

    def _copy(self, name: str, src: BinaryIO, entry: RemoteEntry | None,
              copy: Callable[[int], int]) -> int:
        """Copy the opened remote file with ``copy(at most this many bytes)`` (a kernel
        copy, or one that hashes as it goes), refusing a file
        still being written or one that changed since the listing."""
        _refuse_if_being_written(src.fileno(), name)
        expect = os.fstat(src.fileno()).st_size
        limit = listed_size(entry)
        try:  # never more than listed (or than the file had when opened) + 1 byte
            n = copy((expect if limit is None else limit) + 1)
        except OSError as e:
            raise _os_error(f"copying {self.jobs_dir}/{name}", e) from None
        check_listed_size(name, n, entry)
        if n != expect:
            raise ListingChangedError(f"{name}: copied {n} bytes, file had {expect} "
                                      f"(listed {limit}); it changed while being read")
        return n

    def _same_fs(self, path: str) -> bool:
        """Whether ``path``'s directory is on the remote's file system (remembered)."""
        d = os.path.dirname(path)
        same = self._same_dev.get(d)
        if same is None:
            try:
                same = os.stat(d).st_dev == os.stat(self.jobs_dir).st_dev
            except OSError:
                same = False
            self._same_dev[d] = same
        return same

    def _link_to(self, name: str, path: str, entry: RemoteEntry | None,
                 hasher: MultiHasher | None = None) -> int | None:
        """Hard-link the remote file to ``path`` (then feed the linked inode to
        ``hasher``: one read of it); None where that cannot be done (the caller copies
        instead)."""
        with self.open(name) as src:
            st = os.fstat(src.fileno())
            if st.st_uid != os.geteuid() or st.st_nlink != 1:
                return None  # another owner's file, or another name shares the inode
            _refuse_if_being_written(src.fileno(), name)  # a writer would write into ours
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY and st.st_size > limit:
                return None  # this process may not make such a file: no way round it
            if entry is not None and entry.size is not None and entry.size != st.st_size:
                raise ListingChangedError(f"{name}: the file has {st.st_size} bytes, listed "
                                     f"{entry.size}; it changed since the listing")
            try:
                # The inode that was opened and checked, not whatever the name is now:
                # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N (os.link uses linkat with
                # that flag only when given a dir_fd; plain link() would not follow).
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.link(str(src.fileno()), path, src_dir_fd=proc, follow_symlinks=True)
                finally:
                    os.close(proc)
            except FileExistsError:
                raise
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                               errno.ENOENT, errno.EOPNOTSUPP, errno.ENOSYS, errno.EROFS):
                    log.debug("cannot hard-link %s (%s); copying it", name, e.strerror)
                    return None
                raise
            if hasher is not None:
                try:
                    n = feed_fd(src.fileno(), hasher)
                    if n != st.st_size:
                        raise ListingChangedError(f"{name}: read {n} bytes, the file had "
                                                  f"{st.st_size}; it changed while read")
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    raise
        return st.st_size

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        path = self._path(name)
        self._require_jobs_dir()
        if os.path.lexists(path):
            raise RemoteExistsError(f"{path} already exists; not overwriting it")
        try:
            w = AtomicWriter(self.jobs_dir, name)
        except OSError as e:
            raise _os_error(f"writing {path}", e) from None
        try:
            n = copy_stream(src, w.file, size)
            if n != size:
                raise IntegrityError(f"{name}: the source gave {n} bytes, expected {size}")
            w.commit()
        except FileExistsError:
            w.abort()
            raise RemoteExistsError(f"{path} already exists; not overwriting it") from None
        except OSError as e:
            w.abort()
            raise _os_error(f"writing {path}", e) from None
        except BaseException:
            w.abort()
            raise
        st = os.lstat(path)
        return RemoteEntry(name, st.st_size, None, st.st_mtime)

    def delete(self, name: str) -> None:
        path = self._path(name)
        self._require_jobs_dir()
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise RemoteNotFoundError(f"{path}: no such file") from None
        except OSError as e:
            raise _os_error(f"deleting {path}", e) from None
        fsync_dir(self.jobs_dir)

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        if type(self).delete is not LocalTransport.delete:
            return super().delete_many(names)
        errors: dict[str, TransportError] = {}
        if not names:
            return errors
        self._require_jobs_dir()
        removed = 0
        for name in names:
            try:
                path = self._path(name)
                os.unlink(path)
                removed += 1
            except TransportError as e:
                errors[name] = e
            except FileNotFoundError:
                errors[name] = RemoteNotFoundError(f"{self.jobs_dir}/{name}: no such file")
            except OSError as e:
                errors[name] = _os_error(f"deleting {self.jobs_dir}/{name}", e)
        if removed:
            try:
                fsync_dir(self.jobs_dir)
            except OSError as e:
                raise _os_error(f"syncing {self.jobs_dir}", e) from None
        return errors

    def cleanup_temporaries(self) -> int:
        self._require_jobs_dir()
        return cleanup_tmp_dir(self.jobs_dir, max_age_s=self.tmp_max_age_s,
                               grace_s=self.tmp_grace_s)

    def describe(self) -> str:
        return f"local:{self.root}"
