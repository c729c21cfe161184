"""The ``media`` transport: a USB stick, a CD, or an ISO image file.

``location`` is either

* a **directory** — the root of a mounted stick/CD (or any directory laid out the same
  way); read and written like the ``local`` transport, but stricter: nothing on the media
  is followed or trusted, and the option ``read_only=True`` (what ``import`` uses) makes
  ``write_new``/``delete`` raise NotSupportedError so a read-only mount is never written;
* an **ISO 9660 image file** — read *without mounting* (:mod:`fspl_gateway.mediafmt.iso`:
  Rock Ridge names, else Joliet, else plain ISO 9660).  An image is read-only:
  ``capabilities`` say so and ``write_new``/``delete`` raise NotSupportedError.  The
  image is re-read whenever the file changes (device, inode, size or mtime), checked on
  every ``list``.

The media layout and ``MANIFEST.sha256`` are :mod:`fspl_gateway.mediafmt`'s (what
export writes).

Refused entries: a symlink, FIFO, device, socket (or a Rock Ridge symlink/special file
in an image) inside ``jobs/`` is **not listed** and is **reported**: a warning is logged
and the entry is recorded in :attr:`MediaTransport.refused` as ``(name, reason)`` for
the caller (``verify_manifest`` and import include them in their report); ``open`` of
such a name raises TransportError.  Subdirectories are ignored silently.

:meth:`MediaTransport.verify_manifest` re-hashes every job on the media while streaming
it and compares with the manifest (:func:`fspl_gateway.mediafmt.manifest.verify`).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from fspl_gateway.core.errors import (
    IntegrityError,
    NotSupportedError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import copy_stream
from fspl_gateway.core.log import get_logger
from fspl_gateway.mediafmt.iso import IsoFile, IsoImage
from fspl_gateway.mediafmt.manifest import (
    MANIFEST_NAME,
    MANIFEST_SIG_NAME,
    ManifestReport,
    verify,
)
from fspl_gateway.transports.base import (
    Capabilities,
    RemoteEntry,
    Transport,
    check_listed_size,
    is_job_name,
    listed_size,
)
from fspl_gateway.transports.local import TMP_OPTIONS as LOCAL_OPTIONS
from fspl_gateway.transports.local import LocalTransport, open_regular_nofollow
from fspl_gateway.transports.options import Option, OptionSchema, OptionType

log = get_logger(__name__)

_READ_ONLY = Capabilities(can_write=False, can_delete=False, atomic_noclobber=False)
_WRITABLE = Capabilities()


#: ``read_only`` plus the local transport's options (for a stick's temporaries).
OPTIONS = OptionSchema(
    Option("read_only", OptionType.BOOL, default=False,
           help="Directory media: refuse writes and deletes (import sets it); an ISO image "
                "is always read-only."),
) + LOCAL_OPTIONS


class MediaTransport(Transport):
    """A stick/CD directory or an ISO image (see the module documentation).

    Options (:data:`OPTIONS`): ``read_only`` (directory media only — an image is always
    read-only) and the local transport's ``tmp_max_age``/``tmp_grace``.
    """

    name = "media"
    options_schema = OPTIONS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        self.path = os.path.abspath(os.path.expanduser(location))
        if os.path.isdir(self.path):
            self.is_iso = False
        elif os.path.exists(self.path) or self.path.lower().endswith(".iso"):
            self.is_iso = True
        else:
            self.is_iso = False
        read_only = self.is_iso or bool(self.settings["read_only"])
        self.capabilities = _READ_ONLY if read_only else _WRITABLE  # type: ignore[misc]
        #: Entries in ``jobs/`` refused by the last ``list`` (name, reason).
        self.refused: list[tuple[str, str]] = []
        local_opts = {k: v for k, v in self.options.items() if k in LOCAL_OPTIONS}
        self._dir: LocalTransport | None = None
        if not self.is_iso:
            self._dir = LocalTransport.__new__(LocalTransport)
            self._dir.area = self.area  # jobs/, or receipts/ for a sibling
            self._dir.__init__(self.path, local_opts)  # type: ignore[misc]
        self._iso: IsoImage | None = None
        self._old: list[IsoImage] = []
        self._lock = threading.RLock()  # the sync engine fetches from several threads

    # -- ISO handle ----------------------------------------------------------------
    def _image(self, refresh: bool = True) -> IsoImage:
        with self._lock:
            return self._image_locked(refresh)

    def _image_locked(self, refresh: bool) -> IsoImage:
        if self._iso is not None and not refresh:
            return self._iso
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise RemoteNotFoundError(f"ISO image {self.path} does not exist") from None
        except OSError as e:
            raise TransportError(f"{self.path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
            raise TransportError(f"{self.path}: neither a directory nor an ISO image file")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._iso is None or self._iso.key != key:
            new = IsoImage(self.path)
            if self._iso is not None and not self._iso.retire():
                self._old.append(self._iso)  # closed with its last stream
            self._iso = new
        return self._iso

    def _iso_file(self, name: str) -> tuple[IsoImage, IsoFile]:
        h = self._image(refresh=False)
        f = h.files.get(name)
        if f is None:
            h = self._image(refresh=True)
            f = h.files.get(name)
        if f is None:
            if any(n == name for n, _ in h.refused):
                raise TransportError(f"{self.path}: jobs/{name} is a symlink or special "
                                     "file; refusing it")
            raise RemoteNotFoundError(f"{self.path}: no jobs/{name} in the image")
        return h, f

    # -- directory helpers ---------------------------------------------------------
    def _require_dir(self) -> LocalTransport:
        assert self._dir is not None
        if not os.path.isdir(self.path):
            raise RemoteNotFoundError(f"media directory {self.path} does not exist "
                                      "(is the stick mounted?)")
        return self._dir

    # -- interface -----------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        if self.is_iso:
            h = self._image()
            if not h.has_jobs:
                raise RemoteNotFoundError(f"ISO image {self.path} has no jobs/ directory")
            self.refused = list(h.refused)
            if h.problem:
                log.warning("%s", h.problem)
            for r in self.refused:
                log.warning("%s: refusing jobs/%s on the media: %s", self.path, *r)
            entries = [RemoteEntry(f.name, f.size, None, f.mtime) for f in h.files.values()]
        else:
            d = self._require_dir()
            d._require_jobs_dir()
            entries, refused = [], []
            try:
                with os.scandir(d.jobs_dir) as it:
                    for de in it:
                        try:
                            st = de.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        m = st.st_mode
                        if stat.S_ISREG(m):
                            entries.append(RemoteEntry(de.name, st.st_size, None, st.st_mtime))
                        elif stat.S_ISDIR(m):
                            continue
                        else:
                            why = ("symbolic link" if stat.S_ISLNK(m) else "FIFO" if stat.S_ISFIFO(m)
                                   else "device" if stat.S_ISBLK(m) or stat.S_ISCHR(m)
                                   else "special file")
                            refused.append((de.name, why))
                            log.warning("%s: refusing jobs/%s on the media: %s",
                                        self.path, de.name, why)
            except OSError as e:
                raise TransportError(f"listing {d.jobs_dir}: {e.strerror}") from None
            self.refused = refused
        yield from entries

    def open(self, name: str) -> BinaryIO:
        self.check_name(name)
        if self.is_iso:
            h, f = self._iso_file(name)
            return h.open(f)  # type: ignore[return-value]
        return self._require_dir().open(name)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        self.check_name(name)
        if not self.is_iso:
            return self._require_dir().fetch(name, dst, entry)
        h, f = self._iso_file(name)
        limit = listed_size(entry)
        with h.open(f) as src:
            n = copy_stream(src, dst, (f.size if limit is None else limit) + 1)  # type: ignore[arg-type]
        check_listed_size(name, n, entry)
        if n != f.size:
            raise IntegrityError(f"{name}: read {n} bytes from the image, expected {f.size}")
        return n

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.check_name(name)
        if self.is_iso:
            raise NotSupportedError(f"cannot write to an ISO image ({self.path}); "
                                    "use export to build a new one")
        self.require("can_write")
        return self._require_dir().write_new(name, src, size)

    def delete(self, name: str) -> None:
        self.check_name(name)
        if self.is_iso:
            raise NotSupportedError(f"cannot delete from an ISO image ({self.path})")
        self.require("can_delete")
        self._require_dir().delete(name)

    def make_area(self) -> None:
        """Directory media: create this instance's directory (``receipts/``); an image
        or read-only media cannot carry one (receipts travel on directory media only)."""
        if self.is_iso:
            raise NotSupportedError(f"cannot write to an ISO image ({self.path}); receipts "
                                    "travel on directory media (a USB stick) only")
        self.require("can_write")
        self._require_dir().make_area()

    def cleanup_temporaries(self) -> int:
        """Directory media that may be written: remove our stale temporaries (rule of
        the local transport).  Images and read-only media: nothing, never."""
        if self.is_iso or not self.capabilities.can_write:
            return 0
        return self._require_dir().cleanup_temporaries()

    @property
    def problem(self) -> str | None:
        """Why the job names on this media cannot be told (a plain ISO 9660 image
        without a manifest), or None."""
        return self._image(refresh=False).problem if self.is_iso else None

    def open_manifest(self) -> BinaryIO:
        """The media's MANIFEST.sha256 as a stream; RemoteNotFoundError if absent."""
        return self._open_root_file(MANIFEST_NAME)

    def open_manifest_signature(self) -> BinaryIO:
        """The media's MANIFEST.sha256.minisig (signed media); RemoteNotFoundError if
        absent."""
        return self._open_root_file(MANIFEST_SIG_NAME)

    def _open_root_file(self, name: str) -> BinaryIO:
        if self.is_iso:
            h = self._image(refresh=False)
            f = h.manifest if name == MANIFEST_NAME else h.manifest_sig
            if f is None:
                raise RemoteNotFoundError(f"ISO image {self.path} has no {name}")
            return h.open(f)  # type: ignore[return-value]
        path = os.path.join(self._require_dir().root, name)
        return open_regular_nofollow(path, path)

    def verify_manifest(self) -> ManifestReport:
        """Check every job on the media against its MANIFEST.sha256, streaming each one
        (see :func:`fspl_gateway.mediafmt.manifest.verify`)."""
        return verify(self, is_job_name)

    def close(self) -> None:
        for h in [*self._old, *([self._iso] if self._iso else [])]:
            h.close()
        self._old.clear()
        self._iso = None

    def describe(self) -> str:
        return f"media:{self.path}"
