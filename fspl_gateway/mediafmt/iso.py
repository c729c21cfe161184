"""ISO 9660 images of the media layout, through pycdlib (imported here only, on demand).

Reading (:class:`IsoImage`), *without mounting*: names are taken from Rock Ridge if the
image has it, else Joliet, else plain ISO 9660 (``;1`` version suffix and a trailing dot
removed; the 8.3 names there are no job names, so each file is matched to the manifest by
its sha256 to recover its name; without a manifest :attr:`IsoImage.problem` says why
the names are lost).
A corrupt image is a one-line TransportError, never pycdlib's ValueError/struct.error.  A Rock Ridge symlink or special file in ``jobs/`` is not listed but recorded
in :attr:`IsoImage.refused`; subdirectories are ignored.

Writing (:func:`write_image`): ISO 9660 interchange level 3 + Rock Ridge 1.09 + Joliet.
The plain ISO 9660 names are generated (``/JOBS/J0000001.FSP;1``, ``/MANIFEST.SHA;1``);
the real names are carried by Rock Ridge and Joliet.  A name that Joliet cannot hold
(over 64 characters, or ``*/:;?\\``) is in Rock Ridge only.  Job files are streamed from
their paths, each opened only while it is copied (thousands of jobs do not exhaust file
descriptors), never held in memory.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from fspl_gateway.core.errors import TransportError
from fspl_gateway.core.log import get_logger
from fspl_gateway.mediafmt.manifest import JOBS_DIR, MANIFEST_NAME

log = get_logger(__name__)

CHUNK = 1 << 20
_JOLIET_BAD = set('*/:;?\\')


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}" if not isinstance(e, TransportError) else text


# -- reading --------------------------------------------------------------------------------
@dataclass
class IsoFile:
    """One regular file of an image: its name, how to look it up, its size."""

    name: str
    kind: str  # "rr_path" | "joliet_path" | "iso_path"
    path: str
    size: int
    mtime: float | None


class IsoImage:
    """One opened image (a pycdlib object) and the name map of its ``jobs/``.

    Streams of several files may be open at once (the sync engine fetches from several
    threads): pycdlib's streams seek the shared image file, so reads take turns.  An
    image replaced on disk is :meth:`retire`\\ d: closed once its last stream is."""

    def __init__(self, path: str) -> None:
        import pycdlib
        from pycdlib.pycdlibexception import PyCdlibException

        st = os.stat(path)
        #: (device, inode, size, mtime): a different key means a different image.
        self.key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.path = path
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(path)
        except OSError as e:
            raise TransportError(f"{path}: cannot read the image ({e.strerror})") from None
        except (PyCdlibException, Exception) as e:  # noqa: BLE001 - corrupt images raise
            # ValueError, struct.error, IndexError … from deep inside pycdlib
            raise TransportError(f"{path}: not a readable ISO 9660 image "
                                 f"({_one_line(e)})") from None
        self._streams = 0
        self._stale = False
        self.lock = threading.Lock()
        if self.iso.has_rock_ridge():
            self.kind = "rr_path"
        elif self.iso.has_joliet():
            self.kind = "joliet_path"
        else:
            self.kind = "iso_path"
        #: The regular files of ``jobs/`` by name.
        self.files: dict[str, IsoFile] = {}
        #: Entries of ``jobs/`` refused (name, reason).
        self.refused: list[tuple[str, str]] = []
        self.has_jobs = False
        self.manifest: IsoFile | None = None
        #: Why the job names of this image cannot be told (a plain ISO 9660 image without
        #: a manifest), or None.
        self.problem: str | None = None
        try:
            self._scan()
            if self.kind == "iso_path":
                self._recover_plain_names()
        except TransportError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt directory record, as above
            self.close()
            raise TransportError(f"{path}: corrupt ISO 9660 image ({_one_line(e)})") from None

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

    def _entry(self, rec: Any, name: str, parent: str) -> IsoFile | None:
        """An IsoFile for a regular file, None otherwise (refused entries recorded)."""
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
        return IsoFile(name, self.kind, path, int(size), None)

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

    def _recover_plain_names(self) -> None:
        """A plain ISO 9660 image (no Rock Ridge, no Joliet: ``genisoimage`` without
        ``-R``/``-J``) holds 8.3 names (``FSPL_108.FSP``) that are no job names.  Recover
        each one by matching its sha256 to the manifest; without a manifest the names are
        lost: TransportError saying so."""
        from fspl_gateway.core.hashing import sha256_stream
        from fspl_gateway.core.queue import is_job_filename
        from fspl_gateway.mediafmt.manifest import job_digests, parse_manifest

        short = [n for n in self.files if not is_job_filename(n)]
        if not short:
            return
        why = (f"{self.path} is a plain ISO 9660 image without Rock Ridge or Joliet names, "
               f"so its job names were shortened (e.g. {short[0]})")
        if self.manifest is None:
            self.problem = (f"{why} and it has no {MANIFEST_NAME} to recover them from; "
                            "make the image with Rock Ridge (genisoimage -R, xorriso -as "
                            "mkisofs -R) or with the manifest")
            return
        with self.open(self.manifest) as mf:
            entries, _ = parse_manifest(cast(BinaryIO, mf))
        by_digest: dict[str, list[str]] = {}
        for name, digest in sorted(job_digests(entries).items()):
            if name not in self.files:
                by_digest.setdefault(digest, []).append(name)
        lost: list[str] = []
        for name in short:
            f = self.files[name]
            with self.open(f) as s:
                digest = sha256_stream(cast(BinaryIO, s))[0]
            names = by_digest.get(digest)
            if not names:
                lost.append(name)
                continue
            real = names.pop(0)
            del self.files[name]
            self.files[real] = IsoFile(real, f.kind, f.path, f.size, f.mtime)
        log.warning("%s; %d of %d recovered by matching their sha256 to the manifest%s",
                    why, len(short) - len(lost), len(short),
                    f" (not: {', '.join(sorted(lost))})" if lost else "")

    def open(self, f: IsoFile) -> IsoStream:
        """A readable stream of one file of this image."""
        from pycdlib.pycdlibexception import PyCdlibException

        with self.lock:
            try:
                raw = self.iso.open_file_from_iso(**{f.kind: f.path})
                raw.__enter__()
            except (PyCdlibException, Exception) as e:  # noqa: BLE001 - corrupt records
                raise TransportError(f"{f.name}: cannot open it in the image "
                                     f"({_one_line(e)})") from None
            self._streams += 1
        return IsoStream(self, raw)

    def _release(self) -> None:
        with self.lock:
            self._streams -= 1
            done = self._stale and self._streams <= 0
        if done:
            self.close()

    def retire(self) -> bool:
        """This image was replaced: close it now if no stream is open (True), else when
        the last one closes (False)."""
        with self.lock:
            self._stale = True
            idle = self._streams <= 0
        if idle:
            self.close()
        return idle

    def close(self) -> None:
        try:
            self.iso.close()
        except Exception:  # already closed
            pass


class IsoStream(io.RawIOBase):
    """A readable stream of one file inside an image (pycdlib's PyCdlibIO, which seeks
    the image on every read, so several streams may be open at once)."""

    def __init__(self, image: IsoImage, raw: Any) -> None:
        super().__init__()
        self._image = image
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        with self._image.lock:
            try:
                return int(self._raw.readinto(b))
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 - pycdlib on a corrupt image
                raise TransportError(f"{self._image.path}: corrupt ISO 9660 image "
                                     f"({_one_line(e)})") from None

    def close(self) -> None:
        if not self.closed:
            try:
                with self._image.lock:
                    self._raw.__exit__(None, None, None)
            finally:
                self._image._release()
        super().close()


# -- writing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageJob:
    """A job file to put into an image's ``jobs/``."""

    name: str
    path: str
    size: int


class _LazyFile(io.RawIOBase):
    """A read-only file object for pycdlib's add_fp that holds a descriptor only while
    pycdlib copies from it."""

    mode = "rb"

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size
        self._f: io.FileIO | None = None
        self._pos = 0

    def _file(self) -> io.FileIO:
        if self._f is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._f = io.FileIO(fd, "rb")
            self._f.seek(self._pos)
        return self._f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = base + offset
        if self._f is not None:
            self._f.seek(self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        n = self._file().readinto(b) or 0
        self._pos += n
        if n == 0 or self._pos >= self.size:
            self._release()
        return n

    def _release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def close(self) -> None:
        self._release()
        super().close()


def joliet_ok(name: str) -> bool:
    """Whether Joliet can carry ``name`` (else it is in Rock Ridge only)."""
    return len(name) <= 64 and not (set(name) & _JOLIET_BAD)


def write_image(dst: BinaryIO, jobs: Sequence[ImageJob], manifest: bytes, *,
                volume_id: str = "FSPL_JOBS", where: str = "the image") -> None:
    """Write an image holding ``jobs/<name>`` for each job and ``MANIFEST.sha256`` with
    the bytes ``manifest`` to the raw (unbuffered) file ``dst``.  Not fsynced.  A
    pycdlib failure is a TransportError naming ``where``; an I/O error is raised as it
    is (OSError)."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    lazies: list[_LazyFile] = []
    try:
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09",
                vol_ident=volume_id[:32], app_ident_str="fspl-gateway")
        iso.add_directory(iso_path="/JOBS", rr_name=JOBS_DIR, joliet_path="/" + JOBS_DIR)
        for i, j in enumerate(jobs, 1):
            lz = _LazyFile(j.path, j.size)
            lazies.append(lz)
            jp = f"/{JOBS_DIR}/{j.name}" if joliet_ok(j.name) else None
            if jp is None:
                log.info("%s: name too long or not allowed for Joliet; Rock Ridge only", j.name)
            iso.add_fp(cast(BinaryIO, lz), j.size, iso_path=f"/JOBS/J{i:07d}.FSP;1",
                       rr_name=j.name, joliet_path=jp, file_mode=0o100444)
        iso.add_fp(io.BytesIO(manifest), len(manifest), iso_path="/MANIFEST.SHA;1",
                   rr_name=MANIFEST_NAME, joliet_path="/" + MANIFEST_NAME, file_mode=0o100444)
        bw = io.BufferedWriter(cast(io.RawIOBase, dst), buffer_size=CHUNK)
        iso.write_fp(bw, blocksize=CHUNK)
        bw.flush()
        bw.detach()
    except PyCdlibException as e:
        raise TransportError(f"building {where}: {e}") from None
    finally:
        for lz in lazies:
            lz.close()
        try:
            iso.close()
        except PyCdlibException:
            pass
