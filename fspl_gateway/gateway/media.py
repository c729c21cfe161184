"""Sneakernet: export an outbox queue to a USB stick or an ISO image, import it back.

The media layout (``jobs/`` + ``MANIFEST.sha256``) and the ISO images are
:mod:`fspl_gateway.mediafmt`'s; this module decides what goes onto a media and what
comes off it, and when a job may leave the outbox.

Functions (the CLI's ``fspl-gw export`` / ``import`` call these; every failure is an
:class:`~fspl_gateway.core.errors.FsplError` with a one-line message):

* :func:`export_dir` ``(outbox_queue_dir, dest_dir, *, keep=False) -> ExportResult``
* :func:`export_iso` ``(outbox_queue_dir, iso_path, *, keep=False, overwrite=False,
  volume_id="FSPL_JOBS") -> ExportResult``
* :func:`import_media` ``(source, queue_dir, *, good_only=False, require_manifest=True,
  opts: SyncOptions | None = None) -> ImportResult`` — ``source`` is a directory or an
  ISO file; a failed manifest check raises :class:`MediaCheckError` (a TransportError,
  exit code 1) and imports nothing.
* :func:`verify_manifest` ``(source) -> ManifestReport`` — a path or a MediaTransport.

Guarantees: a job leaves the outbox only after its copy on the media has been fsynced and
read back (page cache dropped first where the kernel allows) with the same sha256; an
export that fails midway (disk full, I/O error) removes nothing from the outbox; an ISO
image is written under a temporary name, read back through the media transport, and only
then renamed to its final name (never a half-written image); import never writes to the
media.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from fspl_gateway.core import layout
from fspl_gateway.core.errors import (
    IntegrityError,
    NotSupportedError,
    PacketError,
    QueueError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX, AtomicWriter, fsync_dir
from fspl_gateway.core.hashing import HashingWriter, copy_hashing, sha256_file
from fspl_gateway.core.log import get_logger
from fspl_gateway.core.minisign import SIG_SUFFIX
from fspl_gateway.core.packet import read_header_path
from fspl_gateway.gateway.journal import Journal, JournalState
from fspl_gateway.mediafmt.iso import ImageJob, write_image
from fspl_gateway.mediafmt.manifest import (
    JOBS_DIR,
    MANIFEST_NAME,
    MANIFEST_SIG_NAME,
    ManifestReport,
    format_manifest,
    job_digests,
    job_path,
    parse_manifest,
    read_manifest_file,
    write_manifest,
)
from fspl_gateway.transports.base import Capabilities, RemoteEntry, is_job_name
from fspl_gateway.transports.media import MediaTransport
from fspl_gateway.transports.wrapper import DelegatingTransport

log = get_logger(__name__)

__all__ = ["ExportResult", "ImportResult", "ManifestReport", "MediaCheckError", "export_dir",
           "export_iso", "import_media", "verify_manifest"]

_READ_ONLY = Capabilities(can_write=False, can_delete=False, atomic_noclobber=False)


@dataclass
class ExportResult:
    """What an export did."""

    #: Jobs newly written to the media.
    exported: int = 0
    #: Jobs already on the media with the same bytes (not rewritten).
    already_present: int = 0
    #: ``fspl-*.fspl`` files in the outbox whose header does not parse (left alone).
    skipped_bad: int = 0
    #: Jobs removed from the outbox (0 with keep=True).
    removed: int = 0
    #: Payload bytes written to the media.
    bytes: int = 0
    #: Names of the jobs now safely on the media (exported + already present).
    names: list[str] = field(default_factory=list)
    #: The manifest (directory media) or image (ISO) written.
    target: str = ""


@dataclass
class ImportResult:
    """What an import did: the manifest check and the sync engine's result."""

    report: ManifestReport
    #: Job names not imported because the manifest check failed for them.
    rejected: list[str]
    sync: Any = None


# -- helpers -------------------------------------------------------------------------
@dataclass
class _Job:
    name: str
    path: str
    size: int
    ident: tuple[int, int, int, int]  # dev, ino, size, mtime_ns
    seq: int | None = None


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _outbox_jobs(outbox: str) -> tuple[list[_Job], int]:
    """The outbox's valid jobs (sorted by name) and the count of unparsable ones."""
    jobs_dir = layout.jobs_dir(outbox)
    if not os.path.isdir(jobs_dir):
        raise QueueError(f"{outbox} is not a queue directory (no jobs/)")
    jobs: list[_Job] = []
    bad = 0
    with os.scandir(jobs_dir) as it:
        for de in it:
            if not is_job_name(de.name):
                continue
            st = de.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                log.warning("outbox: %s is not a regular file; not exported", de.path)
                continue
            try:
                meta = read_header_path(de.path)
            except PacketError as e:
                log.warning("outbox: %s has a bad header (%s); not exported", de.path, e)
                bad += 1
                continue
            jobs.append(_Job(de.name, de.path, st.st_size, _ident(st), meta.seq))
    jobs.sort(key=lambda j: j.name)
    return jobs, bad


def _hash_file(path: str, *, drop_cache: bool = False) -> str:
    """sha256 of a file on the media or in the outbox (never through a symlink)."""
    return sha256_file(path, follow_symlinks=False, drop_cache=drop_cache)[0]


def _copy_hash(src_path: str, dst_fd: int) -> tuple[str, int]:
    """Copy a file (never through a symlink) into ``dst_fd`` while hashing it."""
    fd = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return copy_hashing(fd, dst_fd)
    finally:
        os.close(fd)


def _media_error(what: str, e: OSError) -> TransportError:
    if e.errno == errno.ENOSPC or e.errno == errno.EFBIG:
        return TransportError(f"{what}: the media is full; nothing was removed from the outbox")
    if e.errno == errno.EROFS:
        return TransportError(f"{what}: the media is mounted read-only")
    return TransportError(f"{what}: {e.strerror or e}")


def _remove_from_outbox(jobs: list[_Job]) -> int:
    """Unlink exported jobs that are still the very file we exported; fsync the dir."""
    removed = 0
    dirs: set[str] = set()
    for j in jobs:
        try:
            st = os.lstat(j.path)
        except FileNotFoundError:
            continue
        if _ident(st) != j.ident:
            log.warning("outbox: %s changed during export; left in place", j.path)
            continue
        os.unlink(j.path)
        dirs.add(os.path.dirname(j.path))
        removed += 1
    for d in dirs:
        fsync_dir(d)
    return removed


# -- export to a directory -----------------------------------------------------------
def export_dir(outbox_queue_dir: str, dest_dir: str, *, keep: bool = False,
               sign: Any = None) -> ExportResult:
    """Copy every valid job of the outbox queue to ``dest_dir/jobs/`` and (re)write
    ``dest_dir/MANIFEST.sha256`` covering every job on the media.

    ``dest_dir`` must exist (the mount point of the stick: we refuse to create it, so an
    unmounted stick is not silently replaced by a directory on the root disk); its
    ``jobs/`` is created if needed.  A job already on the media with the same bytes is
    not rewritten; one with different bytes is an error raised before anything is
    written.  With ``sign`` (a :class:`~fspl_gateway.gateway.trust.SignPolicy`) each job
    gets its ``.minisig`` beside it and the manifest its ``MANIFEST.sha256.minisig``
    (:func:`~fspl_gateway.gateway.trust.sign_manifest`).  Jobs leave the outbox (unless ``keep``) only after the manifest is written
    and every copy has been read back from the media and matched.
    """
    dest = os.path.abspath(dest_dir)
    if not os.path.isdir(dest):
        raise RemoteNotFoundError(f"destination {dest} does not exist or is not a "
                                  "directory (is the stick mounted?)")
    _refuse_symlinked_target(dest)
    jobs, bad = _outbox_jobs(outbox_queue_dir)
    res = ExportResult(skipped_bad=bad, target=os.path.join(dest, MANIFEST_NAME))
    mjobs = os.path.join(dest, JOBS_DIR)
    try:
        if not os.path.isdir(mjobs):
            if os.path.lexists(mjobs):
                raise TransportError(f"{mjobs} exists and is not a directory")
            os.mkdir(mjobs)
            fsync_dir(dest)
    except OSError as e:
        raise _media_error(f"creating {mjobs}", e) from None

    # 1. Conflicts first: nothing is written if any name clashes with other bytes.
    digests: dict[str, str] = {}
    todo: list[_Job] = []
    for j in jobs:
        target = os.path.join(mjobs, j.name)
        if not os.path.lexists(target):
            todo.append(j)
            continue
        st = os.lstat(target)
        if not stat.S_ISREG(st.st_mode):
            raise RemoteExistsError(f"{target} exists and is not a regular file")
        src_hex = _hash_file(j.path)
        dst_hex = _hash_file(target)
        if src_hex != dst_hex:
            raise RemoteExistsError(f"{target} already exists on the media with different "
                                    "bytes; nothing exported")
        digests[j.name] = src_hex
        res.already_present += 1

    # 2. Copy, fsync (AtomicWriter), read back from the device.
    for j in todo:
        what = f"exporting {j.name} to {mjobs}"
        try:
            w = AtomicWriter(mjobs, j.name)
        except OSError as e:
            raise _media_error(what, e) from None
        try:
            hexd, n = _copy_hash(j.path, w.fileno())
            w.commit()
        except FileExistsError:
            w.abort()
            raise RemoteExistsError(f"{what}: the name appeared meanwhile") from None
        except OSError as e:
            w.abort()
            raise _media_error(what, e) from None
        except BaseException:
            w.abort()
            raise
        final = os.path.join(mjobs, j.name)
        back, m = sha256_file(final, follow_symlinks=False, drop_cache=True)
        if back != hexd or m != n:
            os.unlink(final)
            fsync_dir(mjobs)
            raise IntegrityError(f"{what}: read back different bytes; the media may be "
                                 "failing (the bad copy was removed, the outbox is intact)")
        digests[j.name] = hexd
        res.exported += 1
        res.bytes += n

    # 3. The manifest: every job file on the media (signed, and each job, with ``sign``).
    if sign is not None:
        _sign_jobs(jobs, mjobs, sign)
    _write_dir_manifest(dest, digests)
    if sign is not None:
        from fspl_gateway.gateway import trust

        mpath = os.path.join(dest, MANIFEST_NAME)
        try:
            with open(mpath, "rb") as mf:
                msig = trust.sign_manifest(mf.read(), sign)
            with AtomicWriter(dest, MANIFEST_SIG_NAME, clobber=True) as w:
                w.file.write(msig)
        except OSError as e:
            raise _media_error(f"signing {mpath}", e) from None
    res.names = [j.name for j in jobs]
    # 4. The push journal (before the outbox loses them): receipts that come back on a
    # stick mounted here (``receipts fetch -t media -r DEST``) are matched against it.
    with Journal(outbox_queue_dir) as jn:
        jn.record_many("push", MediaTransport(dest).describe(),
                       [(j.name, JournalState.PUSHED, j.size, None, digests[j.name], j.seq,
                         None) for j in jobs])
    if not keep:
        res.removed = _remove_from_outbox(jobs)
    return res


def _sign_jobs(jobs: list[_Job], mjobs: str, sign: Any) -> None:
    """Each exported job's signature beside it on the media (signing the media's copy)."""
    from fspl_gateway.core.jobsig import sign_job
    from fspl_gateway.gateway import trust

    for j in jobs:
        try:
            sig = sign_job(os.path.join(mjobs, j.name), sign.key, sign.queue_id)
            trust.write_signature(mjobs, j.name, sig)
        except OSError as e:
            raise _media_error(f"signing {j.name} in {mjobs}", e) from None


def _refuse_symlinked_target(dest: str) -> None:
    """Refuse a stick whose root, ``jobs/`` or manifest is a symlink (or the manifest not
    a regular file), before anything is written: the export would write wherever the
    link points on this host, as import refuses to read through one."""
    for path, what in ((dest, "the destination"), (os.path.join(dest, JOBS_DIR), JOBS_DIR),
                       (os.path.join(dest, MANIFEST_NAME), MANIFEST_NAME)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _media_error(f"checking {path}", e) from None
        if stat.S_ISLNK(st.st_mode):
            raise TransportError(f"{path}: {what} is a symbolic link; refusing to export "
                                 "through it (nothing written)")
        if path.endswith(MANIFEST_NAME) and not stat.S_ISREG(st.st_mode):
            raise TransportError(f"{path} is not a regular file; refusing to export "
                                 "(nothing written)")


def _write_dir_manifest(dest: str, fresh: dict[str, str]) -> None:
    mjobs = os.path.join(dest, JOBS_DIR)
    old: dict[str, str] = {}
    mpath = os.path.join(dest, MANIFEST_NAME)
    if os.path.lexists(mpath):
        if not stat.S_ISREG(os.lstat(mpath).st_mode):
            raise TransportError(f"{mpath} is not a regular file; refusing to replace it")
        old, malformed = read_manifest_file(mpath)
        if malformed:
            log.warning("%s: %d malformed lines dropped", mpath, len(malformed))
    entries: dict[str, str] = {}
    with os.scandir(mjobs) as it:
        for de in it:
            if not is_job_name(de.name) or de.name.startswith(TMP_PREFIX):
                continue
            if not de.is_file(follow_symlinks=False):
                log.warning("media: %s is not a regular file; left out of the manifest", de.path)
                continue
            rel = job_path(de.name)
            if de.name in fresh:
                entries[rel] = fresh[de.name]
            elif rel in old:
                entries[rel] = old[rel]
            else:
                log.warning("media: %s was not in the manifest; adding its current hash",
                            de.path)
                entries[rel] = _hash_file(de.path)
    try:
        write_manifest(dest, entries)
    except OSError as e:
        raise _media_error(f"writing {mpath}", e) from None


# -- export to an ISO image ----------------------------------------------------------
def export_iso(outbox_queue_dir: str, iso_path: str, *, keep: bool = False,
               overwrite: bool = False, volume_id: str = "FSPL_JOBS",
               sign: Any = None) -> ExportResult:
    """Build an ISO 9660 image (Rock Ridge 1.09 + Joliet) holding every valid job of the
    outbox under ``jobs/`` plus ``MANIFEST.sha256``; with ``sign`` (a
    :class:`~fspl_gateway.gateway.trust.SignPolicy`) also each job's ``.minisig`` and
    ``MANIFEST.sha256.minisig``, as :func:`export_dir` writes them on a stick.

    The image is written under a temporary name next to ``iso_path``, fsynced, read back
    through :class:`MediaTransport` (every job hashed against the manifest), and only then
    renamed to ``iso_path`` (without replacing an existing file unless ``overwrite``).
    Job files are streamed into pycdlib, never held in memory.  Jobs leave the outbox
    (unless ``keep``) after that verification.
    """
    iso_path = os.path.abspath(iso_path)
    out_dir = os.path.dirname(iso_path)
    if not os.path.isdir(out_dir):
        raise RemoteNotFoundError(f"directory {out_dir} does not exist")
    if os.path.lexists(iso_path) and not overwrite:
        raise RemoteExistsError(f"{iso_path} already exists; not overwriting it")
    jobs, bad = _outbox_jobs(outbox_queue_dir)
    res = ExportResult(skipped_bad=bad, target=iso_path)

    digests = {job_path(j.name): _hash_file(j.path) for j in jobs}
    manifest = format_manifest(digests)
    sigs: dict[str, bytes] = {}
    msig: bytes | None = None
    if sign is not None:
        from fspl_gateway.core.jobsig import sign_job
        from fspl_gateway.gateway import trust

        # the outbox's files are signed: the image's copies are checked against their
        # sha256 below, and the signature binds that sha256
        sigs = {j.name: sign_job(j.path, sign.key, sign.queue_id) for j in jobs}
        msig = trust.sign_manifest(manifest, sign)

    w: AtomicWriter | None = None
    try:
        w = AtomicWriter(out_dir, os.path.basename(iso_path), clobber=overwrite)
        write_image(w.file, [ImageJob(j.name, j.path, j.size) for j in jobs], manifest,
                    volume_id=volume_id, where=iso_path, signatures=sigs, manifest_sig=msig)
        res.bytes = sum(j.size for j in jobs)
        os.fsync(w.fileno())
        try:
            os.posix_fadvise(w.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        _verify_image(w.tmp_path, digests, sigs, msig)
        w.commit()
    except FileExistsError:
        if w is not None:
            w.abort()
        raise RemoteExistsError(f"{iso_path} appeared meanwhile; not overwriting it") from None
    except OSError as e:
        if w is not None:
            w.abort()
        raise _media_error(f"writing {iso_path}", e) from None
    except BaseException:
        if w is not None:
            w.abort()
        raise
    res.exported = len(jobs)
    res.names = [j.name for j in jobs]
    if not keep:
        res.removed = _remove_from_outbox(jobs)
    return res


def _verify_image(path: str, digests: dict[str, str], sigs: dict[str, bytes],
                  msig: bytes | None) -> None:
    """Read a freshly written image back: the manifest must be ours and every job must
    match it, with nothing missing or extra; so must the signatures of a signed one."""
    from fspl_gateway.gateway.trust import MAX_SIG_BYTES, sig_name

    def read(s: BinaryIO) -> bytes:
        with s:
            return s.read(MAX_SIG_BYTES + 1)

    with MediaTransport(path) as t:
        assert isinstance(t, MediaTransport)
        report = t.verify_manifest()
        with t.open_manifest() as mf:
            entries, _ = parse_manifest(mf)
        sigs_ok = all(read(t.open(sig_name(n))) == b for n, b in sigs.items()) and (
            msig is None or read(t.open_manifest_signature()) == msig)
    if (entries != digests or not report.clean or len(report.ok) != len(digests)
            or not sigs_ok):
        raise IntegrityError(f"the image read back does not match what was written "
                             f"({report.summary()}); nothing was removed from the outbox")


# -- verify / import -----------------------------------------------------------------
def verify_manifest(source: str | MediaTransport) -> ManifestReport:
    """Check the jobs of a media (a directory, an ISO file, or a MediaTransport) against
    its MANIFEST.sha256, streaming every file; see :class:`ManifestReport`."""
    if isinstance(source, MediaTransport):
        return source.verify_manifest()
    with MediaTransport(source, {"read_only": True}) as t:
        assert isinstance(t, MediaTransport)
        return t.verify_manifest()


class MediaCheckError(TransportError):
    """The media failed its manifest check; nothing was imported.  ``report`` has the
    details."""

    def __init__(self, message: str, report: ManifestReport) -> None:
        super().__init__(message)
        self.report = report


class _CheckedMedia(DelegatingTransport):
    """What import hands the sync engine: the media, read-only, showing only the jobs
    that passed the manifest check, and re-checking each one's sha256 while it is
    fetched (a stick that rots between the check and the copy gives IntegrityError)."""

    def __init__(self, media: MediaTransport, digests: dict[str, str] | None,
                 allowed: set[str]) -> None:
        super().__init__(media)
        self.digests = digests
        self.allowed = allowed

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return _READ_ONLY

    def list(self) -> Iterator[RemoteEntry]:
        return iter([e for e in self.inner.list() if e.name in self.allowed])

    def before(self, op: str, name: str) -> None:
        self.check_name(name)
        if op == "write_new":
            raise NotSupportedError("import never writes to the media")
        if op == "delete":
            raise NotSupportedError("import never deletes from the media")
        if name not in self.allowed:
            raise RemoteNotFoundError(f"{name} did not pass the manifest check")

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        if self.digests is None or (name.endswith(SIG_SUFFIX) and name not in self.digests):
            # no manifest, or a job's signature (not in the manifest: it checks itself)
            return super().fetch(name, dst, entry)
        self.before("fetch", name)
        tee = HashingWriter(dst)
        n = self.inner.fetch(name, tee, entry)  # type: ignore[arg-type]
        if tee.hexdigest() != self.digests[name]:
            raise IntegrityError(f"{name}: bytes read from the media no longer match "
                                 "the manifest (failing media?)")
        return n


def _check_signed_media(source: str, digests: dict[str, str] | None, allowed: set[str],
                        policy: Any, media: MediaTransport) -> set[str]:
    """With trust: the manifest must carry a trusted signature (a directory or an ISO
    image alike), and be the one the jobs were checked against (``digests``); returns
    the signature files of the allowed jobs, which the import then reads."""
    from fspl_gateway.gateway import trust

    def refuse(why: str) -> MediaCheckError:
        return MediaCheckError(f"{source}: {why}; nothing imported", ManifestReport())

    if digests is None:
        raise refuse(f"trust needs a signed {MANIFEST_NAME}")
    with media.open_manifest() as mf:
        manifest = mf.read(trust.MAX_MANIFEST_BYTES + 1)
    if len(manifest) > trust.MAX_MANIFEST_BYTES:
        raise refuse(f"{MANIFEST_NAME} is over {trust.MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        with media.open_manifest_signature() as sf:
            sig: bytes | None = sf.read(trust.MAX_SIG_BYTES + 1)
    except RemoteNotFoundError:
        sig = None
    try:
        kid = trust.verify_manifest_signature(manifest, sig, policy)
    except trust.TrustRefused as r:
        raise refuse(f"{r.reason}: {r}") from None
    if job_digests(parse_manifest(io.BytesIO(manifest))[0]) != digests:
        raise refuse(f"{MANIFEST_NAME} changed while it was read")
    log.info("%s: manifest signed by %s", source, kid)
    return {trust.sig_name(n) for n in allowed}


def import_media(source: str, queue_dir: str, *, good_only: bool = False,
                 require_manifest: bool = True, opts: Any = None) -> ImportResult:
    """Import the jobs of a media (directory or ISO image) into the local queue
    ``queue_dir``; never writes to the media.

    The manifest is verified first, streaming every job through sha256.  A mismatched,
    unlisted, unreadable or refused (symlink/special) job, a malformed manifest line, or
    a missing manifest when ``require_manifest`` makes the whole import fail with
    :class:`MediaCheckError` naming the bad files and nothing is imported — unless
    ``good_only``, which imports the jobs that matched and lists the rest in
    :attr:`ImportResult.rejected`.  Without a manifest and with
    ``require_manifest=False`` every job is imported unchecked.

    The jobs are then pulled by :func:`fspl_gateway.gateway.pull.pull` (``opts``: a
    :class:`~fspl_gateway.gateway.pull.SyncOptions`; its ``after_fetch`` is forced to ``keep``),
    each job's sha256 being checked again as it is copied.
    """
    import dataclasses

    from fspl_gateway.gateway import pull as sync

    media = MediaTransport(source, {"read_only": True})
    try:
        report = media.verify_manifest()
        listed_jobs = {e.name for e in media.list() if is_job_name(e.name)}
        if not listed_jobs and media.problem:
            raise TransportError(media.problem)  # not "0 fetched", exit 0
        digests: dict[str, str] | None
        if not report.manifest_found:
            if require_manifest:
                raise MediaCheckError(f"{source}: no {MANIFEST_NAME} on the media; nothing "
                                      "imported (allow unchecked media to import anyway)",
                                      report)
            log.warning("%s: no %s; importing %d jobs unchecked", source, MANIFEST_NAME,
                        len(listed_jobs))
            digests, allowed, rejected = None, listed_jobs, []
        else:
            with media.open_manifest() as mf:
                entries, _ = parse_manifest(mf)
            digests = job_digests(entries)
            allowed = {n for n in report.ok if is_job_name(n)}
            rejected = report.bad
            if not report.clean and not good_only:
                offer = (f"import the {len(allowed)} good job"
                         f"{'' if len(allowed) == 1 else 's'} only with --good-only"
                         if allowed else "no job on it passed the check")
                raise MediaCheckError(
                    f"{source}: manifest check failed ({report.summary()}); nothing "
                    f"imported ({offer})", report)
            if rejected:
                log.warning("%s: not importing %d bad jobs: %s", source, len(rejected),
                            ", ".join(rejected))
        o = opts if opts is not None else sync.SyncOptions()
        o = dataclasses.replace(o, after_fetch=sync.AfterFetch.KEEP)
        if o.trust is not None:
            allowed = allowed | _check_signed_media(source, digests, allowed, o.trust, media)
        checked = _CheckedMedia(media, digests, allowed)
        res = sync.pull(checked, queue_dir, o)
        return ImportResult(report=report, rejected=rejected, sync=res)
    finally:
        media.close()
