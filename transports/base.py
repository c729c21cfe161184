"""The transport interface and registry.

A transport knows how to do five things with one remote queue's ``jobs/`` directory and
nothing else (retries, journal, validation and policy live once, in sync/push):

* :meth:`Transport.list` — the names there, with size and a checksum/version tag where
  the remote keeps one;
* :meth:`Transport.open` — read one as a stream (never the whole file in memory);
* :meth:`Transport.fetch` — copy one into a local file object (default: via ``open``),
  verifying the remote's checksum where it has one;
* :meth:`Transport.write_new` — write a new one so that it appears whole or not at all,
  and never over an existing name (:class:`~fspl_gateway.core.errors.RemoteExistsError`);
* :meth:`Transport.delete` — remove one.

Optional fast paths (each has a default built on the five above, so a transport only
overrides what its remote does better):

* :meth:`Transport.fetch_to_path` — copy one into a new local file (the local transport
  hard-links it when the remote is on the same file system and the caller allows it);
* :meth:`Transport.delete_many` — remove several (one directory fsync, one DeleteObjects
  request, pipelined SFTP requests …);
* :meth:`Transport.set_concurrency` — the caller will use this many threads at once
  (size a connection pool to it).

Other directories beside ``jobs/``: :meth:`Transport.sibling` ``(area)`` gives a transport
of the same kind, location and options whose five operations address ``<location>/<area>/``
instead (receipts travel in ``receipts/``); :meth:`Transport.make_area` creates that
directory where the remote has directories.  A transport supports it by deriving its
paths from :attr:`Transport.area` (default ``"jobs"``) instead of the literal ``jobs``.

Optional notification (no default built on the five; the caller polls instead):

* :meth:`Transport.wait_for_change` — block until the remote's ``jobs/`` may have
  changed or a timeout passes (Dropbox's longpoll); ``None`` means "not supported".

:attr:`Transport.capabilities` says what it cannot do (a CD image cannot write or delete).

Errors: raise the classes of :mod:`fspl_gateway.core.errors` — ``TransientError`` for what a
retry may fix (connection dropped, 5xx, throttling), ``RemoteNotFoundError``,
``RemoteExistsError``, ``IntegrityError``, ``AuthError``, ``HostKeyError``,
``NotSupportedError``, and ``TransportError`` for the rest.  Never log secrets.

Options: a transport declares them as :attr:`Transport.options_schema` (an
:class:`~fspl_gateway.transports.options.OptionSchema`); the base class parses what it is
given through that one parser (unknown keys and bad values are ConfigError, exit 2) and
hands the subclass :attr:`Transport.settings` (every option, typed, defaults filled in)
and :attr:`Transport.options` (the options the caller set, typed).  A transport that
declares no schema gets its options as given.

Registration: an entry point in the group ``fspl_gateway.transports`` whose name is the
transport name (``local``, ``s3``, …) and whose object is the Transport subclass.  The
module is imported only when that transport is used, so SDKs never load for core
commands.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar, cast

from fspl_gateway.core.errors import (
    ConfigError,
    IntegrityError,
    NotSupportedError,
    TransportError,
)
from fspl_gateway.core.hashing import HashingWriter, MultiHasher
from fspl_gateway.core.layout import JOBS
from fspl_gateway.transports.options import Option, OptionSchema, OptionType, OptionValues

ENTRY_POINT_GROUP = "fspl_gateway.transports"

#: Default of the ``settle`` option (seconds).
DEFAULT_SETTLE_S = 5.0
#: The ``settle`` option of the transports whose files do not appear atomically.
SETTLE_OPTION = Option(
    "settle", OptionType.DURATION, default=DEFAULT_SETTLE_S, minimum=0.0,
    env=("FSPL_GW_SETTLE",),
    help="Fetch a file only once its size and mtime have stayed unchanged this long "
         "(a writer may still be filling it under its final name); 0 turns this off.")


@dataclass(frozen=True)
class RemoteEntry:
    """One file in a remote ``jobs/`` directory."""

    name: str
    size: int | None = None
    #: A checksum or version tag if the remote has one (ETag, sha256, content_hash, …).
    tag: str | None = None
    #: Modification time (seconds since the epoch) if known.
    mtime: float | None = None


@dataclass(frozen=True)
class Capabilities:
    can_write: bool = True
    can_delete: bool = True
    #: ``write_new`` refuses to overwrite atomically (not by a racy check).
    atomic_noclobber: bool = True
    #: A file appears in a listing only whole (S3 and Dropbox objects; a medium written
    #: elsewhere).  False where a writer may create the final name first and fill it
    #: afterwards (a directory, SFTP: ``cp``, ``scp``, rclone < 1.63): the sync engine
    #: then fetches a file only once it has stopped changing
    #: (:meth:`Transport.settle_interval`, :mod:`fspl_gateway.gateway.settle`).
    atomic_appearance: bool = True
    #: :meth:`Transport.fetch_small` takes many small files in a few round trips (SFTP:
    #: pipelined on one channel), so a caller should hand it a batch rather than read
    #: them one by one in parallel.
    batch_reads: bool = False


class Transport(abc.ABC):
    """Base class of every transport.

    ``location`` is the transport-specific address of the remote queue directory (the
    directory that holds ``jobs/``); ``options`` are transport-specific settings from the
    config file or flags (strings, ints, bools), parsed through :attr:`options_schema`.
    """

    name: ClassVar[str] = "?"
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The options this transport takes (None: not declared, options passed as given).
    options_schema: ClassVar[OptionSchema | None] = None

    #: The directory beside ``jobs/`` that this instance addresses (see :meth:`sibling`).
    area: str = JOBS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        self.location = location
        raw = dict(options or {})
        self._raw_options = dict(raw)
        schema = type(self).options_schema
        if schema is None:
            #: Every option with its value (given, else environment, else default).
            self.settings = OptionValues(raw, raw)
        else:
            self.settings = schema.parse(raw, self.name)
        #: The options the caller set (parsed when a schema is declared).
        self.options: dict[str, Any] = self.settings.given_options()

    # -- the interface -------------------------------------------------------------
    @abc.abstractmethod
    def list(self) -> Iterator[RemoteEntry]:
        """Every file in the remote ``jobs/`` (all names; the caller filters)."""

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A readable binary stream of one remote file. The caller closes it."""

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        """Copy one remote file into ``dst``; return the byte count.

        Transports override this to use their SDK's fast path and to verify the
        remote's checksum (raise IntegrityError on mismatch).  Never more than the
        listed size (``entry.size``) is accepted: a fetch reads at most one byte more and
        then raises IntegrityError (:func:`check_not_more`), as it does for fewer bytes.
        """
        limit = listed_size(entry)
        with self.open(name) as src:
            n = 0
            while True:
                buf = src.read(1 << 20 if limit is None else min(1 << 20, limit + 1 - n))
                if not buf:
                    break
                dst.write(buf)
                n += len(buf)
                check_not_more(name, n, limit)
        check_listed_size(name, n, entry)
        return n

    @abc.abstractmethod
    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        """Create ``name`` from ``src`` (``size`` bytes); whole or not at all; never over
        an existing name (raise RemoteExistsError). Returns the new entry (with its tag
        where the remote gives one)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``. A missing file raises RemoteNotFoundError where the remote
        tells so cheaply; stores whose delete is idempotent (S3) may return quietly."""

    # -- optional fast paths -----------------------------------------------------------
    def fetch_to_path(self, name: str, path: str, entry: RemoteEntry | None = None, *,
                      link: bool = False, hasher: MultiHasher | None = None) -> int:
        """Copy one remote file into a new local file ``path`` (created here, never over
        an existing file); return the byte count.  The file is *not* fsynced: the caller
        makes it durable.  On any error ``path`` is removed again, so a retry can call
        this once more.

        ``hasher`` (:class:`~fspl_gateway.core.hashing.MultiHasher`), if given, is reset
        and then fed every byte of the file, in order, while it is fetched: the caller
        gets its digests (and first bytes) without reading the file a second time.

        ``link=True`` allows a transport whose remote lives on the same local file system
        to hard-link the remote file to ``path`` instead of copying it; the caller allows
        that only when it removes the remote name soon after (``after_fetch=delete``),
        so that the two names do not share one inode for long.  Default: :meth:`fetch`
        (through a :class:`~fspl_gateway.core.hashing.HashingWriter` when hashing).
        """
        if hasher is not None:
            hasher.reset()
        with new_local_file(path) as fd, os.fdopen(fd, "wb", buffering=0, closefd=False) as f:
            dst = f if hasher is None else cast(BinaryIO, HashingWriter(f, hasher))
            return self.fetch(name, dst, entry)

    def fetch_small(self, entries: Sequence[RemoteEntry]) -> dict[str, bytes | TransportError]:
        """Take several small whole files (signatures: a few hundred bytes each), each no
        more than its listed size: name → its bytes, or the error :meth:`fetch` would
        raise for it (RemoteNotFoundError, ListingChangedError …).  An error of the whole
        call (the connection is lost) may be raised instead; a caller then reads them
        again.  Default: :meth:`fetch` of each into memory; a transport with
        ``capabilities.batch_reads`` takes them together."""
        out: dict[str, bytes | TransportError] = {}
        for e in entries:
            buf = io.BytesIO()
            try:
                self.fetch(e.name, buf, e)
            except NotSupportedError:
                raise
            except TransportError as err:
                out[e.name] = err
                continue
            out[e.name] = buf.getvalue()
        return out

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        """Remove several files; return the error of each name that could not be removed
        (RemoteNotFoundError for a missing one, where :meth:`delete` would raise it).  An
        error of the whole call (authentication, connection lost before anything was
        done) may be raised instead; a caller then treats every name as not removed.
        Default: :meth:`delete` for each name."""
        errors: dict[str, TransportError] = {}
        for name in names:
            try:
                self.delete(name)
            except NotSupportedError:
                raise
            except TransportError as e:
                errors[name] = e
        return errors

    def default_concurrency(self) -> int:
        """Parallel transfers when the user sets none (``--concurrency``): what wins on
        this kind of store over loopback and slow links alike.  Default: 4."""
        return 4

    def set_concurrency(self, n: int) -> int:
        """The caller means to use this transport from up to ``n`` threads at once; the
        answer is how many it should use (at most ``n``).  A transport may size its
        connection pool to that, or answer fewer where threads do not help (a directory
        on a local disk).  Default: ``n``."""
        return n

    def wait_for_change(self, timeout: float) -> bool | None:
        """Block up to about ``timeout`` seconds until the remote ``jobs/`` may have
        changed: True then (also when the transport cannot tell, e.g. on its first call
        or after its change cursor was reset: the caller lists once more), False when the
        time ran out without a change.  A transport may round ``timeout`` to its remote's
        bounds.  Default: None, "not supported" — the caller polls at its interval."""
        return None

    def sibling(self, area: str) -> Transport:
        """A new transport of this kind, location and options addressing the directory
        ``area`` beside ``jobs/`` (``receipts``) instead of ``jobs/``.  The caller closes
        it.  Works for every transport that derives its paths from :attr:`area`."""
        if not _AREA.fullmatch(area):
            raise TransportError(f"refusing remote area name {area!r}")
        cls = type(self)
        other = cls.__new__(cls)
        other.area = area  # read by __init__ to derive the paths
        other.__init__(self.location, self._raw_options)  # type: ignore[misc]
        return other

    def make_area(self) -> None:  # noqa: B027 - a no-op where there are no directories
        """Create this instance's directory (:attr:`area`) if the remote has directories
        and it is missing.  Default: nothing (object stores)."""

    def settle_interval(self) -> float:
        """Seconds a listed file's size and mtime must stay unchanged before it may be
        fetched: 0 where files appear whole (:attr:`Capabilities.atomic_appearance`),
        else the ``settle`` option (:data:`SETTLE_OPTION`)."""
        if self.capabilities.atomic_appearance:
            return 0.0
        try:
            return float(self.settings["settle"])
        except KeyError:
            return DEFAULT_SETTLE_S

    def cleanup_temporaries(self) -> int:
        """Remove leftovers of our own interrupted writes; return how many. Optional."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections."""

    def describe(self) -> str:
        """A human-readable remote address, without secrets, for logs and messages."""
        return f"{self.name}:{self.location}"

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> None:
        """Refuse a name that is not one plain file name (``/``, ``..``, NUL, control
        characters, empty).  Every ``write_new``/``open``/``delete`` calls this first."""
        if not is_safe_name(name):
            raise TransportError(f"refusing unsafe file name {name!r}")

    def safe_names(self, names: Sequence[str]) -> tuple[builtins.list[str],
                                                         dict[str, TransportError]]:
        """Split ``names`` into the safe ones and the error of each unsafe one (for
        ``delete_many``)."""
        ok: builtins.list[str] = []
        errors: dict[str, TransportError] = {}
        for name in names:
            try:
                self.check_name(name)
            except TransportError as e:
                errors[name] = e
                continue
            ok.append(name)
        return ok, errors

    def require(self, what: str) -> None:
        """Raise NotSupportedError if this transport lacks capability ``what``."""
        if not getattr(self.capabilities, what):
            raise NotSupportedError(f"the {self.name} transport cannot {what.removeprefix('can_')}")

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def new_local_file(path: str) -> Iterator[int]:
    """A descriptor of the new file ``path`` (never over an existing one), closed at the
    end; the file is removed again if the block raises (a fetch can then be retried)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        yield fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


_AREA = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


def is_safe_name(name: str) -> bool:
    """True for one plain file name: no ``/``, not ``.``/``..``, no NUL or control
    characters (newline, escape …), valid UTF-8 (a name read from a remote with other
    bytes carries surrogate escapes: refused), not empty, at most 255 bytes."""
    if not name or name in (".", "..") or _UNSAFE_CHARS.search(name):
        return False
    try:
        return len(name.encode("utf-8")) <= 255
    except UnicodeError:
        return False


def show_name(name: str) -> str:
    """A remote name for a message, on one line and printable: quoted, control characters
    and bytes that are not UTF-8 escaped (``'fspl-\\xff.fspl'``, ``'a\\nb'``)."""
    try:
        name.encode("utf-8")
    except UnicodeError:
        return repr(name.encode("utf-8", "surrogateescape"))[1:]
    return repr(name)


class ListingChangedError(IntegrityError):
    """A file's bytes do not match its listing: it changed since (still being written,
    replaced).  Not retried with that listing: a later run lists it afresh."""

    transient = False


def listed_size(entry: RemoteEntry | None) -> int | None:
    """The size a listing gave for a file (None: unknown)."""
    return None if entry is None else entry.size


def check_not_more(name: str, n: int, limit: int | None) -> None:
    """Raise IntegrityError once a fetch has read more than the listed ``limit`` bytes:
    every fetch reads at most one byte more than listed (a file swapped for an endless
    one must not fill the disk)."""
    if limit is not None and n > limit:
        raise ListingChangedError(f"{name}: more bytes than the {limit} listed; it changed since "
                             "the listing (still being written?); not taken")


def check_listed_size(name: str, n: int, entry: RemoteEntry | None) -> None:
    """Raise IntegrityError if a finished fetch of ``n`` bytes does not match the listing."""
    limit = listed_size(entry)
    check_not_more(name, n, limit)
    if limit is not None and n != limit:
        raise ListingChangedError(f"{name}: read {n} bytes, the listing said {limit}; it changed "
                             "since the listing; not taken")


def is_job_name(name: str) -> bool:
    """A safe name that fspl would take as a job: ``fspl-*.fspl``."""
    return name.startswith("fspl-") and name.endswith(".fspl") and len(name) >= 10 and is_safe_name(name)


def available() -> dict[str, str]:
    """Transport names → ``module:object`` for every registered transport (no import)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> type[Transport]:
    """Import and return the Transport class registered as ``name``."""
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        names = ", ".join(sorted(available())) or "none"
        raise ConfigError(f"unknown transport {name!r} (available: {names})")
    try:
        cls = eps[0].load()
    except ImportError as e:
        raise ConfigError(
            f"transport {name!r} needs a package that is not installed ({e.name or e}); "
            f"install fspl-gateway[{name}]"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ConfigError(f"transport {name!r} does not name a Transport class")
    return cls


def create(name: str, location: str, options: Mapping[str, Any] | None = None) -> Transport:
    """Instantiate the transport ``name`` for ``location``."""
    return load(name)(location, options)
