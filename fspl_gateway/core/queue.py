"""A queue directory: ``nextseq`` (+ ``.lock``) and ``jobs/``.

Only names ``fspl-*.fspl`` in ``jobs/`` are jobs; anything else there is ignored, and so
is a job file whose header does not decode (logged, skipped: a scan never fails because
of one bad file).  Other names in the queue directory are free for tools (our journal,
quarantine, …): :mod:`fspl_gateway.core.layout` names every path.

Paths are handled as ``str`` with Python's surrogate-escape, so any byte-string file name
survives; the FSPL_JOB_* variables are built with :func:`os.fsencode` of them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from fspl_gateway.core.errors import PacketError, QueueError
from fspl_gateway.core.fsutil import AtomicWriter, copy_fd
from fspl_gateway.core.layout import jobs_dir, seqfile_path
from fspl_gateway.core.log import TRACE, log
from fspl_gateway.core.packet import Meta, read_header_fd, read_header_path


def is_job_filename(name: str) -> bool:
    """fspl's rule: starts with ``fspl-`` and ends with ``.fspl``."""
    return name.startswith("fspl-") and name.endswith(".fspl")


def new_job_filename() -> str:
    import uuid  # only writers need it: keep it off the start-up path of readers

    return f"fspl-{uuid.uuid4()}.fspl"


def queue_init(qdir: str, append_only: bool = False) -> None:
    """Create ``qdir`` and ``qdir/jobs`` (both must not exist yet, as with fspl), and the
    sequence file starting at 1 unless ``append_only``."""
    from fspl_gateway.core.seqfile import SeqFile

    try:
        os.mkdir(qdir)
        os.mkdir(jobs_dir(qdir))
    except OSError as e:
        raise QueueError(f"cannot create queue {qdir}: {e.strerror}") from None
    if not append_only:
        SeqFile(seqfile_path(qdir)).close()


def queue_write(qdir: str, src_fd: int) -> str:
    """Copy a packet from ``src_fd`` into the queue under a fresh ``fspl-<uuid>.fspl``
    name; it appears whole (temp name → fsync → rename → fsync dir).  No lock needed."""
    jdir = jobs_dir(qdir)
    if not os.path.isdir(jdir):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    name = new_job_filename()
    with AtomicWriter(jdir, name) as w:
        n = copy_fd(src_fd, w.fileno(), flush_behind=True)
    log.debug("wrote %d bytes to %s", n, os.path.join(jdir, name))
    return name


@dataclass(frozen=True, slots=True)
class Job:
    filename: str
    meta: Meta


def getshell() -> str:
    return os.environ.get("SHELL") or "/bin/sh"


class OpenJob:
    """A job file opened for reading, with its header consumed.

    ``fd`` is positioned at the first payload byte: the job file itself, or the read end
    of the decoder's stdout when a decoder is used.  ``close()`` closes it and kills and
    reaps the decoder.
    """

    def __init__(self, path: str, decoder: str | None = None) -> None:
        self.path = path
        self.decoder_proc: subprocess.Popen[bytes] | None = None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if decoder is None:
            self.fd = fd
        else:
            try:
                self.decoder_proc = subprocess.Popen([getshell(), "-c", decoder], stdin=fd,
                                                     stdout=subprocess.PIPE)
            finally:
                os.close(fd)
            assert self.decoder_proc.stdout is not None
            self.fd = self.decoder_proc.stdout.fileno()
        try:
            self.meta, self.header_len = read_header_fd(self.fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        p = self.decoder_proc
        if p is not None:
            self.decoder_proc = None
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> OpenJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_job(qdir: str, filename: str, decoder: str | None = None) -> OpenJob:
    return OpenJob(os.path.join(jobs_dir(qdir), filename), decoder)


def _list_entries(qdir: str) -> list[tuple[str, int]]:
    """(name, inode) of every entry in jobs/ (the inode comes free with readdir)."""
    try:
        with os.scandir(jobs_dir(qdir)) as it:
            return [(e.name, e.inode()) for e in it]
    except FileNotFoundError:
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)") from None
    except OSError as e:
        raise QueueError(f"cannot read {jobs_dir(qdir)}: {e.strerror}") from None


def _list_names(qdir: str) -> list[str]:
    try:
        with os.scandir(jobs_dir(qdir)) as it:
            return [e.name for e in it]
    except FileNotFoundError:
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)") from None
    except OSError as e:
        raise QueueError(f"cannot read {jobs_dir(qdir)}: {e.strerror}") from None


def read_meta(qdir: str, filename: str, decoder: str | None = None) -> Meta:
    return _read_meta_path(os.path.join(jobs_dir(qdir), filename), decoder)


def _read_meta_path(path: str, decoder: str | None) -> Meta:
    if decoder is None:
        return read_header_path(path)
    with OpenJob(path, decoder) as j:
        return j.meta


#: A header cache for long-running scanners: (file name, inode) → Meta.  Job files are
#: complete and never change once they carry an ``fspl-*.fspl`` name, so a cached header
#: stays right for as long as that name points at that inode.
HeaderCache = dict[tuple[str, int], Meta]


def scan(qdir: str, decoder: str | None = None, cache: HeaderCache | None = None) -> Iterator[Job]:
    """Every readable job in directory order.  Non-job names are skipped silently, job
    files that cannot be read or decoded are logged and skipped.  With ``cache``, headers
    already read are not read again (and the cache drops names that are gone)."""
    entries = _list_entries(qdir)
    jdir = jobs_dir(qdir) + "/"
    if cache is not None:
        live = set(entries)
        for k in [k for k in cache if k not in live]:
            del cache[k]
    for name, ino in entries:
        if not is_job_filename(name):
            log.log(TRACE, "ignoring %s: not a job file name", name)
            continue
        if cache is not None and (name, ino) in cache:
            yield Job(name, cache[(name, ino)])
            continue
        try:
            meta = _read_meta_path(jdir + name, decoder)
            if cache is not None:
                cache[(name, ino)] = meta
        except PacketError as e:
            log.warning("skipping %s/jobs/%s: %s", qdir, name, e)
            continue
        except FileNotFoundError:
            continue  # processed/removed by someone else since the listing
        except OSError as e:
            log.warning("skipping %s/jobs/%s: %s", qdir, name, e.strerror)
            continue
        yield Job(name, meta)


def scan_map(qdir: str, decoder: str | None = None,
             cache: HeaderCache | None = None) -> dict[int, Job]:
    """seq → job; two jobs with one seq is an error (as in fspl)."""
    out: dict[int, Job] = {}
    for job in scan(qdir, decoder, cache):
        prev = out.get(job.meta.seq)
        if prev is not None:
            raise QueueError(f"two jobs have sequence number {job.meta.seq}: "
                             f"{prev.filename} and {job.filename}")
        out[job.meta.seq] = job
    return out


def find_job(qdir: str, seq: int, decoder: str | None = None) -> Job:
    job = scan_map(qdir, decoder).get(seq)
    if job is None:
        raise QueueError(f"job {seq} not found in {qdir}")
    return job


def pending_count(qdir: str) -> int:
    """Number of job file names in ``jobs/`` (no header reads)."""
    return sum(1 for n in _list_names(qdir) if is_job_filename(n))


__all__ = ["Job", "OpenJob", "find_job", "is_job_filename", "jobs_dir",
           "new_job_filename", "open_job", "pending_count", "queue_init", "queue_write",
           "read_meta", "scan", "scan_map", "seqfile_path"]
