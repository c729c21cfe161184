"""``MANIFEST.sha256``: one ``<64 hex>  <path>`` line per job (sha256sum's format, paths
relative to the media root, so that ``sha256sum -c MANIFEST.sha256`` works on a mounted
stick or CD); and the check of a media against it (:func:`verify`).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from fspl_gateway.core.errors import RemoteNotFoundError, TransportError
from fspl_gateway.core.fsutil import AtomicWriter, write_all
from fspl_gateway.core.hashing import sha256_stream
from fspl_gateway.core.log import get_logger

log = get_logger(__name__)

MANIFEST_NAME = "MANIFEST.sha256"
#: The manifest's detached minisign signature (signed media).
MANIFEST_SIG_NAME = MANIFEST_NAME + ".minisig"
JOBS_DIR = "jobs"
#: The longest manifest line we accept (a name is at most 255 bytes).
MAX_MANIFEST_LINE = 4096

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


def job_path(name: str) -> str:
    """A job's path in the manifest: ``jobs/<name>``."""
    return f"{JOBS_DIR}/{name}"


def job_digests(entries: Mapping[str, str]) -> dict[str, str]:
    """{job name: hex} for the manifest entries directly in ``jobs/`` (others ignored)."""
    prefix = JOBS_DIR + "/"
    out: dict[str, str] = {}
    for path, digest in entries.items():
        if path.startswith(prefix) and "/" not in path[len(prefix):]:
            out[path[len(prefix):]] = digest
        else:
            log.debug("manifest entry outside jobs/ ignored: %s", path)
    return out


def read_manifest_file(path: str) -> tuple[dict[str, str], list[str]]:
    """:func:`parse_manifest` of the file ``path`` (a symlink is refused: OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with io.FileIO(fd, "rb") as f:
        return parse_manifest(f)


def write_manifest(root: str, entries: Mapping[str, str]) -> None:
    """Write ``root/MANIFEST.sha256`` for {relative path: hex}, replacing it atomically
    (temporary name, fsync, rename, fsync of ``root``).  OSError as raised."""
    with AtomicWriter(root, MANIFEST_NAME, clobber=True) as w:
        write_all(w.fileno(), format_manifest(entries))


# -- checking a media ----------------------------------------------------------------------
class _Named(Protocol):
    @property
    def name(self) -> str: ...


class MediaReader(Protocol):
    """What :func:`verify` reads a media through (the ``media`` transport is one)."""

    #: Entries in ``jobs/`` refused by the last ``list`` (name, reason).
    refused: list[tuple[str, str]]

    def list(self) -> Iterable[_Named]: ...

    def open(self, name: str) -> BinaryIO: ...

    def open_manifest(self) -> BinaryIO: ...

    def describe(self) -> str: ...


@dataclass
class ManifestReport:
    """What :func:`verify` found.  ``clean`` when everything matches."""

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


def verify(media: MediaReader, is_job: Callable[[str], bool]) -> ManifestReport:
    """Check every file of the media's ``jobs/`` against ``MANIFEST.sha256``, streaming
    each one through sha256 (nothing held in memory).  Never raises for a bad file:
    mismatches, missing, extra, refused and unreadable files go into the report.  A
    media without ``jobs/`` raises RemoteNotFoundError.  ``is_job`` tells the names
    that would be imported (an unlisted one is reported as extra)."""
    listed = {e.name for e in media.list()}
    report = ManifestReport(refused=list(media.refused))
    try:
        with media.open_manifest() as mf:
            entries, report.malformed = parse_manifest(mf)
    except RemoteNotFoundError:
        report.manifest_found = False
        report.extra = sorted(n for n in listed if is_job(n))
        return report
    wanted = job_digests(entries)
    refused_names = {n for n, _ in report.refused}
    for name in sorted(wanted):
        if name not in listed:
            if name not in refused_names:
                report.missing.append(name)
            continue
        try:
            with media.open(name) as f:
                digest, _ = sha256_stream(f)
        except (OSError, TransportError) as e:
            report.unreadable.append((name, str(e)))
            continue
        if digest != wanted[name]:
            report.mismatched.append(name)
            log.warning("%s: jobs/%s does not match the manifest", media.describe(), name)
        else:
            report.ok.append(name)
    report.extra = sorted(n for n in listed if n not in wanted and is_job(n))
    return report
