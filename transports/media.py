"""The ``media`` transport: a USB stick, a CD, or an ISO image file.

``location`` is either

* a **directory** — the root of a mounted stick/CD (or any directory laid out the same
  way); read and written like the ``local`` transport, but stricter: nothing on the media
  is followed or trusted, and the option ``read_only=True`` (what ``import`` uses) makes
  ``write_new``/``delete`` raise NotSupportedError so a read-only mount is never written;
* an **ISO 9660 image file** — read *without mounting* through pycdlib.  Names are taken
  from Rock Ridge if the image has it, else Joliet, else plain ISO 9660 (``;1`` version
  suffix and a trailing dot removed).  An image is read-only: ``capabilities`` say so
  and ``write_new``/``delete`` raise NotSupportedError.  The image is re-read whenever
  the file changes (device, inode, size or mtime), checked on every ``list``.

Media layout (what :mod:`fspl_gateway.gateway.media` export writes)::

    <root>/jobs/fspl-*.fspl     the job files, byte-identical to the outbox
    <root>/MANIFEST.sha256      sha256sum format: "<64 hex>  jobs/<name>" per job,
                                relative to <root>, so `sha256sum -c MANIFEST.sha256`
                                works on the mounted stick/CD

Refused entries: a symlink, FIFO, device, socket (or a Rock Ridge symlink/special file
in an image) inside ``jobs/`` is **not listed** and is **reported**: a warning is logged
and the entry is recorded in :attr:`MediaTransport.refused` as ``(name, reason)`` for
the caller (``verify_manifest`` and import include them in their report); ``open`` of
such a name raises TransportError.  Subdirectories are ignored silently.

:func:`verify_manifest` (also :meth:`MediaTransport.verify_manifest`) re-hashes every
job on the media while streaming it and compares with the manifest.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from fspl_gateway.core.errors import (
    IntegrityError,
    NotSupportedError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.base import Capabilities, RemoteEntry, Transport, is_job_name
from fspl_gateway.transports.local import LocalTransport, open_regular_nofollow

log = get_logger(__name__)

MANIFEST_NAME = "MANIFEST.sha256"
JOBS_DIR = "jobs"
#: The longest manifest line we accept (a name is at most 255 bytes).
MAX_MANIFEST_LINE = 4096
_CHUNK = 1 << 20

_READ_ONLY = Capabilities(can_write=False, can_delete=False, atomic_noclobber=False)
_WRITABLE = Capabilities()


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


# -- ISO images ----------------------------------------------------------------------
@dataclass
class _IsoFile:
    name: str
    kind: str  # "rr_path" | "joliet_path" | "iso_path"
    path: str
    size: int
    mtime: float | None


class _IsoHandle:
    """One opened image (pycdlib object) plus the name map of its ``jobs/``."""

    def __init__(self, path: str) -> None:
        import pycdlib
        from pycdlib.pycdlibexception import PyCdlibException

        st = os.stat(path)
        self.key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(path)
        except PyCdlibException as e:
            raise TransportError(f"{path}: not a readable ISO 9660 image ({e})") from None
        except OSError as e:
            raise TransportError(f"{path}: cannot read the image ({e.strerror})") from None
        self.streams = 0
        self.stale = False
        #: pycdlib's streams seek the shared image file then read: one at a time.
        self.lock = threading.Lock()
        if self.iso.has_rock_ridge():
            self.kind = "rr_path"
        elif self.iso.has_joliet():
            self.kind = "joliet_path"
        else:
            self.kind = "iso_path"
        self.files: dict[str, _IsoFile] = {}
        self.refused: list[tuple[str, str]] = []
        self.has_jobs = False
        self.manifest: _IsoFile | None = None
        self._scan()

    def _name_of(self, rec: Any) -> str:
        if self.kind == "rr_path" and rec.rock_ridge is not None:
            return bytes(rec.rock_ridge.name()).decode("utf-8", "surrogateescape")
        ident = bytes(rec.file_identifier())
        if self.kind == "joliet_path":
            name = ident.decode("utf-16_be", "replace")
        else:
            name = ident.decode("ascii", "replace")
        name = name.split(";", 1)[0]
        if name.endswith(".") and self.kind == "iso_path":
            name = name[:-1]
        return name

    def _children(self, path: str) -> list[Any]:
        from pycdlib.pycdlibexception import PyCdlibException

        try:
            return [c for c in self.iso.list_children(**{self.kind: path})
                    if not (c.is_dot() or c.is_dotdot())]
        except PyCdlibException:
            return []

    def _entry(self, rec: Any, name: str, parent: str) -> _IsoFile | None:
        """An _IsoFile for a regular file, None otherwise (refused entries recorded)."""
        if rec.is_symlink():
            self.refused.append((name, "symbolic link"))
            return None
        if rec.is_dir():
            return None
        if self.kind == "rr_path" and rec.rock_ridge is not None:
            try:
                mode = rec.rock_ridge.get_file_mode()
            except Exception:  # no PX entry: treat as a plain file
                mode = stat.S_IFREG
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                self.refused.append((name, "special file"))
                return None
        size = rec.inode.data_length if rec.inode is not None else rec.data_length
        if self.kind == "joliet_path" or self.kind == "iso_path":
            # Plain ISO/Joliet lookups need the identifier as stored (with ";1").
            ident = bytes(rec.file_identifier())
            stored = (ident.decode("utf-16_be", "replace") if self.kind == "joliet_path"
                      else ident.decode("ascii", "replace"))
            path = f"{parent}/{stored}"
        else:
            path = f"{parent}/{name}"
        return _IsoFile(name, self.kind, path, int(size), None)

    def _scan(self) -> None:
        root = self._children("/")
        jobs_ident = None
        for rec in root:
            name = self._name_of(rec)
            if rec.is_dir() and name.lower() == JOBS_DIR:
                if jobs_ident is None or name == JOBS_DIR:
                    jobs_ident = rec
            elif not rec.is_dir() and name.upper() in (MANIFEST_NAME.upper(), "MANIFEST.SHA"):
                ent = self._entry(rec, MANIFEST_NAME, "")
                if ent is not None:
                    self.manifest = ent
        if jobs_ident is None:
            return
        self.has_jobs = True
        ident = bytes(jobs_ident.file_identifier())
        if self.kind == "rr_path":
            jobs_path = "/" + self._name_of(jobs_ident)
        elif self.kind == "joliet_path":
            jobs_path = "/" + ident.decode("utf-16_be", "replace")
        else:
            jobs_path = "/" + ident.decode("ascii", "replace")
        for rec in self._children(jobs_path):
            name = self._name_of(rec)
            ent = self._entry(rec, name, jobs_path)
            if ent is not None:
                self.files[name] = ent

    def open(self, f: _IsoFile) -> _IsoStream:
        from pycdlib.pycdlibexception import PyCdlibException

        with self.lock:
            try:
                raw = self.iso.open_file_from_iso(**{f.kind: f.path})
                raw.__enter__()
            except PyCdlibException as e:
                raise TransportError(f"{f.name}: cannot open it in the image ({e})") from None
            self.streams += 1
        return _IsoStream(self, raw)

    def release(self) -> None:
        with self.lock:
            self.streams -= 1
            done = self.stale and self.streams <= 0
        if done:
            self.close()

    def close(self) -> None:
        try:
            self.iso.close()
        except Exception:  # already closed
            pass


class _IsoStream(io.RawIOBase):
    """A readable stream of one file inside an image (pycdlib's PyCdlibIO, which seeks
    the image on every read, so several streams may be open at once)."""

    def __init__(self, handle: _IsoHandle, raw: Any) -> None:
        super().__init__()
        self._handle = handle
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        with self._handle.lock:
            return int(self._raw.readinto(b))

    def close(self) -> None:
        if not self.closed:
            try:
                with self._handle.lock:
                    self._raw.__exit__(None, None, None)
            finally:
                self._handle.release()
        super().close()


# -- the transport -------------------------------------------------------------------
class MediaTransport(Transport):
    """A stick/CD directory or an ISO image (see the module documentation).

    Options: ``read_only`` (bool; directory media only — an image is always read-only).
    """

    name = "media"

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        self.path = os.path.abspath(os.path.expanduser(location))
        if os.path.isdir(self.path):
            self.is_iso = False
        elif os.path.exists(self.path) or self.path.lower().endswith(".iso"):
            self.is_iso = True
        else:
            self.is_iso = False
        read_only = self.is_iso or _truthy(self.options.get("read_only", False))
        self.capabilities = _READ_ONLY if read_only else _WRITABLE  # type: ignore[misc]
        #: Entries in ``jobs/`` refused by the last ``list`` (name, reason).
        self.refused: list[tuple[str, str]] = []
        self._dir = None if self.is_iso else LocalTransport(self.path, self.options)
        self._iso: _IsoHandle | None = None
        self._old: list[_IsoHandle] = []
        self._lock = threading.RLock()  # the sync engine fetches from several threads

    # -- ISO handle ----------------------------------------------------------------
    def _image(self, refresh: bool = True) -> _IsoHandle:
        with self._lock:
            return self._image_locked(refresh)

    def _image_locked(self, refresh: bool) -> _IsoHandle:
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
            new = _IsoHandle(self.path)
            if self._iso is not None:
                with self._iso.lock:
                    self._iso.stale = True
                    idle = self._iso.streams <= 0
                if idle:
                    self._iso.close()
                else:
                    self._old.append(self._iso)
            self._iso = new
        return self._iso

    def _iso_file(self, name: str) -> tuple[_IsoHandle, _IsoFile]:
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
        n = 0
        with h.open(f) as src:
            while True:
                buf = src.read(_CHUNK)
                if not buf:
                    break
                dst.write(buf)
                n += len(buf)
        if n != f.size or (entry is not None and entry.size is not None and entry.size != n):
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

    def cleanup_temporaries(self) -> int:
        """Directory media that may be written: remove our stale temporaries (rule of
        the local transport).  Images and read-only media: nothing, never."""
        if self.is_iso or not self.capabilities.can_write:
            return 0
        return self._require_dir().cleanup_temporaries()

    def open_manifest(self) -> BinaryIO:
        """The media's MANIFEST.sha256 as a stream; RemoteNotFoundError if absent."""
        if self.is_iso:
            h = self._image(refresh=False)
            if h.manifest is None:
                raise RemoteNotFoundError(f"ISO image {self.path} has no {MANIFEST_NAME}")
            return h.open(h.manifest)  # type: ignore[return-value]
        path = os.path.join(self._require_dir().root, MANIFEST_NAME)
        return open_regular_nofollow(path, path)

    def verify_manifest(self) -> ManifestReport:
        """See :func:`verify_manifest`."""
        return verify_manifest(self)

    def close(self) -> None:
        for h in [*self._old, *([self._iso] if self._iso else [])]:
            h.close()
        self._old.clear()
        self._iso = None

    def describe(self) -> str:
        return f"media:{self.path}"


# -- manifest ------------------------------------------------------------------------
_LINE = re.compile(rb"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")


def _unescape(name: bytes) -> bytes:
    """sha256sum's escaping of names with a backslash or newline (line starts with ``\\``)."""
    out = bytearray()
    it = iter(name)
    for c in it:
        if c == 0x5C:
            nxt = next(it, None)
            out += b"\n" if nxt == ord("n") else b"\\" if nxt == 0x5C else bytes([c, nxt or 0])
        else:
            out.append(c)
    return bytes(out)


def parse_manifest(stream: BinaryIO) -> tuple[dict[str, str], list[str]]:
    """Read a sha256sum-format manifest as a stream.  Returns ({relative path: hex},
    [malformed lines]).  Paths are normalised (a leading ``./`` removed)."""
    entries: dict[str, str] = {}
    bad: list[str] = []
    buf = io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream
    lineno = 0
    while True:
        line = buf.readline(MAX_MANIFEST_LINE + 1)
        if not line:
            break
        lineno += 1
        if len(line) > MAX_MANIFEST_LINE:
            bad.append(f"line {lineno}: too long")
            # skip the rest of that line
            while line and not line.endswith(b"\n"):
                line = buf.readline(MAX_MANIFEST_LINE)
            continue
        line = line.rstrip(b"\r\n")
        if not line.strip() or line.startswith(b"#"):
            continue
        m = _LINE.match(line)
        if m is None:
            bad.append(f"line {lineno}: not '<sha256>  <path>'")
            continue
        raw = _unescape(m.group(3)) if m.group(1) else m.group(3)
        path = raw.decode("utf-8", "surrogateescape")
        while path.startswith("./"):
            path = path[2:]
        entries[path] = m.group(2).decode().lower()
    return entries, bad


def format_manifest(entries: Mapping[str, str]) -> bytes:
    """sha256sum-format text for {relative path: hex}, sorted by path."""
    return b"".join(f"{h}  {p}\n".encode("utf-8", "surrogateescape")
                    for p, h in sorted(entries.items()))


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """Hash a stream in 1 MiB chunks; (hex, byte count)."""
    h = hashlib.sha256()
    n = 0
    while True:
        b = stream.read(_CHUNK)
        if not b:
            return h.hexdigest(), n
        h.update(b)
        n += len(b)


@dataclass
class ManifestReport:
    """What :func:`verify_manifest` found.  ``clean`` when everything matches."""

    manifest_found: bool = True
    ok: list[str] = field(default_factory=list)
    #: Job names whose bytes do not match the manifest (rot, tampering).
    mismatched: list[str] = field(default_factory=list)
    #: In the manifest but not (or not as a regular file) on the media.
    missing: list[str] = field(default_factory=list)
    #: Job files (``fspl-*.fspl``) on the media that the manifest does not list.
    extra: list[str] = field(default_factory=list)
    #: Symlinks / special files in ``jobs/`` (name, reason).
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: Files that could not be read (name, error).
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: Malformed manifest lines.
    malformed: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[str]:
        """Every job name that must not be imported."""
        return sorted({*self.mismatched, *self.extra, *(n for n, _ in self.unreadable),
                       *(n for n, _ in self.refused)})

    @property
    def clean(self) -> bool:
        return (self.manifest_found and not self.mismatched and not self.missing
                and not self.extra and not self.refused and not self.unreadable
                and not self.malformed)

    def summary(self) -> str:
        """One line for an error message or a log."""
        if not self.manifest_found:
            return f"no {MANIFEST_NAME} on the media"
        parts = [f"{len(self.ok)} ok"]
        for label, items in (("mismatched", self.mismatched), ("missing", self.missing),
                             ("not in manifest", self.extra),
                             ("unreadable", [n for n, _ in self.unreadable]),
                             ("refused (symlink/special)", [n for n, _ in self.refused]),
                             ("malformed manifest lines", self.malformed)):
            if items:
                shown = ", ".join(items[:10]) + (", …" if len(items) > 10 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        return "; ".join(parts)


def verify_manifest(t: MediaTransport) -> ManifestReport:
    """Check every file of the media's ``jobs/`` against ``MANIFEST.sha256``, streaming
    each one through sha256 (nothing held in memory).  Never raises for a bad file:
    mismatches, missing, extra, refused and unreadable files go into the report.  A
    media without ``jobs/`` raises RemoteNotFoundError."""
    listed = {e.name: e for e in t.list()}
    report = ManifestReport(refused=list(t.refused))
    try:
        with t.open_manifest() as mf:
            entries, report.malformed = parse_manifest(mf)
    except RemoteNotFoundError:
        report.manifest_found = False
        report.extra = sorted(n for n in listed if is_job_name(n))
        return report
    wanted: dict[str, str] = {}
    prefix = JOBS_DIR + "/"
    for path, digest in entries.items():
        if path.startswith(prefix) and "/" not in path[len(prefix):]:
            wanted[path[len(prefix):]] = digest
        else:
            log.debug("manifest entry outside jobs/ ignored: %s", path)
    refused_names = {n for n, _ in report.refused}
    for name in sorted(wanted):
        if name not in listed:
            if name not in refused_names:
                report.missing.append(name)
            continue
        try:
            with t.open(name) as f:
                digest, n = sha256_of(f)
        except (OSError, TransportError) as e:
            report.unreadable.append((name, str(e)))
            continue
        if digest != wanted[name]:
            report.mismatched.append(name)
            log.warning("%s: jobs/%s does not match the manifest", t.describe(), name)
        else:
            report.ok.append(name)
    report.extra = sorted(n for n in listed if n not in wanted and is_job_name(n))
    return report
