"""The transport conformance suite: every transport passes these same tests.

Parametrized over :data:`tests.transports.backends.BACKENDS`; for each name the fixture
``backend_<name>`` is looked up, and the whole row is skipped while a transport's
backend module is still a placeholder (the fixture does not exist yet).  Every backend
also runs wrapped in each of :data:`~tests.transports.backends.WRAPPERS` (``local+watch``
…): a wrapper must pass the same suite as what it wraps.

A backend is described by :class:`tests.transports.backends.Backend`.  Optional
``extra`` keys used here:

* ``put_stream(t, name, src, size)`` — place a big file from a stream (read-only
  backends: the big-file test needs it, else it is skipped);
* ``delete_missing_raises`` — True if ``delete`` of a missing name must raise
  RemoteNotFoundError (else it may also return quietly, as S3 does); the same holds for
  that name's entry in the answer of ``delete_many``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspl_gateway.core.errors import (
    IntegrityError,
    NotSupportedError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.transports.base import RemoteEntry, Transport, is_job_name
from tests.helpers import PatternReader, peak_rss_during
from tests.transports.backends import BACKENDS, WRAPPERS, Backend, wrapped

MiB = 1 << 20
#: Peak-RSS growth allowed while streaming the big file.
MAX_RSS_GROWTH = 64 * MiB

HOSTILE_NAMES = ["../x", "a/b", "/etc/passwd", "x\x00y", "a\nb", "\x1b[31mred", "tab\there",
                 "", ".", "..", "back\\slash", "x" * 256]


@pytest.fixture(params=[*BACKENDS, *(f"{b}+{w}" for w in WRAPPERS for b in BACKENDS)])
def backend(request: pytest.FixtureRequest) -> Backend:
    name, _, wrapper = request.param.partition("+")
    try:
        b = request.getfixturevalue(f"backend_{name}")
    except pytest.FixtureLookupError:
        pytest.skip(f"no conformance backend for {name!r} yet (fixture backend_{name} "
                    "is not defined)")
    assert isinstance(b, Backend)
    return wrapped(b, wrapper) if wrapper else b


@pytest.fixture
def remote(backend: Backend) -> Iterator[Transport]:
    t = backend.make()
    yield t
    t.close()


def _writable(backend: Backend) -> None:
    if backend.read_only:
        pytest.skip(f"{backend.name} is read-only (see test_read_only_refuses)")


def _listing(t: Transport) -> dict[str, RemoteEntry]:
    out: dict[str, RemoteEntry] = {}
    for e in t.list():
        assert isinstance(e, RemoteEntry)
        assert e.name not in out, f"{e.name!r} listed twice"
        out[e.name] = e
    return out


def _read(t: Transport, name: str) -> bytes:
    with t.open(name) as f:
        parts = []
        while True:
            b = f.read(MiB)
            if not b:
                return b"".join(parts)
            parts.append(b)


class HashSink:
    """A write-only destination that keeps only a sha256 and a count."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class FailingReader(PatternReader):
    """A PatternReader that raises after ``fail_after`` bytes."""

    def __init__(self, size: int, fail_after: int) -> None:
        super().__init__(size, seed=7)
        self.fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.fail_after:
            raise OSError("simulated source failure")
        return super().read(n if n is not None and n >= 0 else MiB)


def _pattern_sha(size: int, seed: int = 0) -> str:
    r = PatternReader(size, seed)
    h = hashlib.sha256()
    while True:
        b = r.read(MiB)
        if not b:
            return h.hexdigest()
        h.update(b)


# -- listing -------------------------------------------------------------------------
def test_list_empty(remote: Transport) -> None:
    assert _listing(remote) == {}


def test_list_several_names_verbatim_and_sizes(backend: Backend, remote: Transport) -> None:
    files = {
        "fspl-0001.fspl": b"",
        "fspl-0002.fspl": b"x",
        "fspl-\u00e9t\u00e9 \u00fc.fspl": b"hello",
        "README.txt": os.urandom(100_000),
        "notes with spaces": b"abc" * 1000,
    }
    for name, data in files.items():
        backend.put(remote, name, data)
    got = _listing(remote)
    assert set(got) == set(files), "list must return every name, verbatim (caller filters)"
    for name, data in files.items():
        assert got[name].size == len(data), name
    assert sorted(n for n in got if is_job_name(n)) == [
        "fspl-0001.fspl", "fspl-0002.fspl", "fspl-\u00e9t\u00e9 \u00fc.fspl"]


# -- reading -------------------------------------------------------------------------
def test_open_and_fetch_identical(backend: Backend, remote: Transport, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 12345)
    backend.put(remote, "fspl-r.fspl", data)
    assert _read(remote, "fspl-r.fspl") == data

    buf = io.BytesIO()
    entry = _listing(remote)["fspl-r.fspl"]
    assert remote.fetch("fspl-r.fspl", buf, entry) == len(data)
    assert buf.getvalue() == data

    # into a real unbuffered file (kernel-copy paths) and a buffered one
    for buffering in (0, -1):
        dst = tmp_path / f"out{buffering}"
        with open(dst, "wb", buffering=buffering) as f:
            assert remote.fetch("fspl-r.fspl", f) == len(data)
        assert dst.read_bytes() == data


def test_fetch_small(backend: Backend, remote: Transport) -> None:
    """Several small files in one call (SFTP: pipelined on one channel): each one's
    bytes, or its own error — missing, changed since the listing (more or fewer bytes
    than listed), an unsafe name — while the others are still taken; none of it
    over its listed size."""
    files = {f"fspl-s{i}.fspl.minisig": os.urandom(n) for i, n in enumerate((0, 1, 300, 4096))}
    files["fspl-grew.fspl.minisig"] = b"x" * 100
    files["fspl-shrank.fspl.minisig"] = b"y" * 100
    for name, data in files.items():
        backend.put(remote, name, data)
    listed = _listing(remote)
    entries = [listed[n] for n in files]
    entries[4] = RemoteEntry(entries[4].name, 60, entries[4].tag, entries[4].mtime)
    entries[5] = RemoteEntry(entries[5].name, 160, entries[5].tag, entries[5].mtime)
    entries += [RemoteEntry("fspl-missing.fspl.minisig", 10), RemoteEntry("../x", 10)]
    got = remote.fetch_small(entries)
    assert set(got) == {e.name for e in entries}
    for name in list(files)[:4]:
        assert got[name] == files[name], name
    for name in ("fspl-grew.fspl.minisig", "fspl-shrank.fspl.minisig"):
        assert isinstance(got[name], IntegrityError), (name, got[name])
    assert isinstance(got["fspl-missing.fspl.minisig"], RemoteNotFoundError)
    assert isinstance(got["../x"], TransportError)
    assert remote.fetch_small([]) == {}


def test_open_missing(remote: Transport) -> None:
    with pytest.raises(RemoteNotFoundError):
        remote.open("fspl-missing.fspl")
    with pytest.raises(RemoteNotFoundError):
        remote.fetch("fspl-missing.fspl", io.BytesIO())


# -- writing -------------------------------------------------------------------------
def test_write_new_then_list_and_read(backend: Backend, remote: Transport) -> None:
    _writable(backend)
    data = os.urandom(2 * MiB + 7)
    e = remote.write_new("fspl-w.fspl", io.BytesIO(data), len(data))
    assert isinstance(e, RemoteEntry) and e.name == "fspl-w.fspl"
    assert e.size in (None, len(data))
    got = _listing(remote)
    assert set(got) == {"fspl-w.fspl"}
    assert got["fspl-w.fspl"].size == len(data)
    assert _read(remote, "fspl-w.fspl") == data
    assert backend.raw_names(remote) == ["fspl-w.fspl"], "no temporaries may be left"

    # an empty file and a real file object as the source
    assert remote.write_new("fspl-empty.fspl", io.BytesIO(b""), 0).name == "fspl-empty.fspl"
    with tempfile.TemporaryFile() as src:
        src.write(data[:100_000])
        src.seek(0)
        remote.write_new("fspl-f.fspl", src, 100_000)
    assert _read(remote, "fspl-empty.fspl") == b""
    assert _read(remote, "fspl-f.fspl") == data[:100_000]


def test_no_clobber(backend: Backend, remote: Transport) -> None:
    _writable(backend)
    original = b"original bytes " * 1000
    backend.put(remote, "fspl-c.fspl", original)
    with pytest.raises(RemoteExistsError):
        remote.write_new("fspl-c.fspl", io.BytesIO(b"intruder"), 8)
    assert _read(remote, "fspl-c.fspl") == original

    remote.write_new("fspl-d.fspl", io.BytesIO(b"first"), 5)
    with pytest.raises(RemoteExistsError):
        remote.write_new("fspl-d.fspl", io.BytesIO(b"second!"), 7)
    assert _read(remote, "fspl-d.fspl") == b"first"
    assert backend.raw_names(remote) == ["fspl-c.fspl", "fspl-d.fspl"]


def test_short_source_leaves_nothing(backend: Backend, remote: Transport) -> None:
    _writable(backend)
    with pytest.raises(TransportError):
        remote.write_new("fspl-short.fspl", io.BytesIO(b"0123456789"), 20)
    assert not any(is_job_name(n) for n in backend.raw_names(remote))
    assert _listing(remote) == {}


def test_delete(backend: Backend, remote: Transport) -> None:
    _writable(backend)
    backend.put(remote, "fspl-del.fspl", b"bye")
    backend.put(remote, "fspl-keep.fspl", b"stay")
    remote.delete("fspl-del.fspl")
    assert set(_listing(remote)) == {"fspl-keep.fspl"}
    assert backend.raw_names(remote) == ["fspl-keep.fspl"]
    with pytest.raises(RemoteNotFoundError):
        remote.open("fspl-del.fspl")
    # missing: RemoteNotFoundError, or quietly where the store's delete is idempotent
    if backend.extra.get("delete_missing_raises"):
        with pytest.raises(RemoteNotFoundError):
            remote.delete("fspl-del.fspl")
    else:
        try:
            remote.delete("fspl-del.fspl")
        except RemoteNotFoundError:
            pass
    assert set(_listing(remote)) == {"fspl-keep.fspl"}


def test_delete_many(backend: Backend, remote: Transport) -> None:
    """One call removes several; a missing name is reported (or quietly ignored where
    the store's delete is idempotent); the others stay; an empty call does nothing."""
    _writable(backend)
    names = [f"fspl-many-{i:03d}.fspl" for i in range(5)]
    for n in names:
        backend.put(remote, n, n.encode())
    backend.put(remote, "fspl-keep.fspl", b"stay")
    assert remote.delete_many([]) == {}
    errors = remote.delete_many([*names, "fspl-missing.fspl"])
    assert set(errors) <= {"fspl-missing.fspl"}, errors
    if backend.extra.get("delete_missing_raises"):
        assert isinstance(errors.get("fspl-missing.fspl"), RemoteNotFoundError)
    else:
        assert all(isinstance(e, RemoteNotFoundError) for e in errors.values())
    assert set(_listing(remote)) == {"fspl-keep.fspl"}
    assert backend.raw_names(remote) == ["fspl-keep.fspl"]
    assert _read(remote, "fspl-keep.fspl") == b"stay"
    # a hostile name is refused without touching anything else
    errors = remote.delete_many(["../fspl-keep.fspl", "fspl-keep.fspl"])
    assert set(errors) == {"../fspl-keep.fspl"}
    assert isinstance(errors["../fspl-keep.fspl"], TransportError)
    assert backend.raw_names(remote) == []


def test_fetch_to_path(backend: Backend, remote: Transport, tmp_path: Path) -> None:
    """A new local file with the remote bytes, with or without ``link``; a missing name
    leaves no file behind; an existing destination is never overwritten."""
    data = os.urandom(300_000)
    backend.put(remote, "fspl-ftp.fspl", data)
    entry = _listing(remote)["fspl-ftp.fspl"]
    for i, link in enumerate((False, True)):
        dst = tmp_path / f"got{i}"
        assert remote.fetch_to_path("fspl-ftp.fspl", str(dst), entry, link=link) == len(data)
        assert dst.read_bytes() == data
    assert _read(remote, "fspl-ftp.fspl") == data  # the remote copy is still there
    with pytest.raises(RemoteNotFoundError):
        remote.fetch_to_path("fspl-nope.fspl", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    (tmp_path / "taken").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        remote.fetch_to_path("fspl-ftp.fspl", str(tmp_path / "taken"), entry, link=True)
    assert (tmp_path / "taken").read_bytes() == b"mine"


def test_fetch_to_path_hashes_while_it_fetches(backend: Backend, remote: Transport,
                                                tmp_path: Path) -> None:
    """With a hasher, every transport feeds it the file's bytes as it fetches them (the
    base path through a HashingWriter, the local one while copying or after linking):
    digests, size and first bytes without reading the file again; a retried fetch starts
    the hasher over."""
    import hashlib

    from fspl_gateway.core.hashing import MultiHasher

    data = os.urandom(5 << 20)
    backend.put(remote, "fspl-hash.fspl", data)
    entry = _listing(remote)["fspl-hash.fspl"]
    want = (hashlib.sha256(data).hexdigest(), hashlib.blake2b(data).hexdigest())
    for i, link in enumerate((False, True, False)):
        h = MultiHasher(("sha256", "blake2b"), head=1000)
        if i == 2:
            h.update(b"left over from a failed attempt")
        dst = tmp_path / f"h{i}"
        assert remote.fetch_to_path("fspl-hash.fspl", str(dst), entry, link=link,
                                    hasher=h) == len(data)
        assert (h.hexdigest("sha256"), h.hexdigest("blake2b")) == want
        assert (h.size, h.head) == (len(data), data[:1000])
        assert dst.read_bytes() == data
    assert _read(remote, "fspl-hash.fspl") == data


def test_set_concurrency(remote: Transport) -> None:
    for n in (1, 4, 16):
        got = remote.set_concurrency(n)
        assert isinstance(got, int) and 1 <= got <= n


# -- hostile names -------------------------------------------------------------------
@pytest.mark.parametrize("op", ["write_new", "open", "delete"])
def test_hostile_names_refused(backend: Backend, remote: Transport, op: str) -> None:
    backend.put(remote, "fspl-bystander.fspl", b"safe")
    for bad in HOSTILE_NAMES:
        with pytest.raises(TransportError) as ei:
            if op == "write_new":
                remote.write_new(bad, io.BytesIO(b"evil"), 4)
            elif op == "open":
                remote.open(bad).close()
            else:
                remote.delete(bad)
        # the name check (base.check_name) must come first: exactly TransportError,
        # not "not found", "exists" or "not supported"
        assert type(ei.value) is TransportError, (bad, ei.value)
        assert "unsafe" in str(ei.value)
    assert backend.raw_names(remote) == ["fspl-bystander.fspl"]
    assert _read(remote, "fspl-bystander.fspl") == b"safe"


# -- big file, flat memory -----------------------------------------------------------
def test_big_file_flat_memory(backend: Backend, remote: Transport) -> None:
    size = backend.big_size
    name = "fspl-big.fspl"
    if backend.read_only:
        put_stream = backend.extra.get("put_stream")
        if put_stream is None:
            pytest.skip(f"{backend.name}: read-only and no put_stream to place a big file")
        put_stream(remote, name, PatternReader(size), size)  # type: ignore[operator]
    else:
        entry, growth = peak_rss_during(lambda: remote.write_new(name, PatternReader(size), size))
        assert entry.name == name
        assert growth < MAX_RSS_GROWTH, f"write_new of {size} bytes grew RSS by {growth}"
    assert _listing(remote)[name].size == size

    sink = HashSink()
    n, growth = peak_rss_during(lambda: remote.fetch(name, sink))  # type: ignore[arg-type]
    assert growth < MAX_RSS_GROWTH, f"fetch of {size} bytes grew RSS by {growth}"
    assert n == size == sink.n
    assert sink.h.hexdigest() == _pattern_sha(size)
    if not backend.read_only:
        remote.delete(name)


# -- partial writes ------------------------------------------------------------------
def test_partial_write_never_visible(backend: Backend, remote: Transport) -> None:
    _writable(backend)
    size = min(backend.big_size, 64 * MiB)
    src = FailingReader(size, fail_after=8 * MiB)
    with pytest.raises(Exception) as ei:  # noqa: B017 - the source's own error may surface
        remote.write_new("fspl-partial.fspl", src, size)
    assert "simulated" in str(ei.value) or isinstance(ei.value, TransportError)
    raw = backend.raw_names(remote)
    assert "fspl-partial.fspl" not in raw
    assert not any(is_job_name(n) for n in raw), raw
    assert _listing(remote) == {} or not any(is_job_name(n) for n in _listing(remote))
    remote.cleanup_temporaries()  # must not fail; may or may not remove anything yet
    # and the name is still free for a real write
    remote.write_new("fspl-partial.fspl", io.BytesIO(b"whole"), 5)
    assert _read(remote, "fspl-partial.fspl") == b"whole"


# -- capabilities --------------------------------------------------------------------
def test_read_only_refuses(backend: Backend, remote: Transport) -> None:
    if not backend.read_only:
        assert remote.capabilities.can_write and remote.capabilities.can_delete
        return
    assert not remote.capabilities.can_write and not remote.capabilities.can_delete
    backend.put(remote, "fspl-ro.fspl", b"read only")
    with pytest.raises(NotSupportedError):
        remote.write_new("fspl-new.fspl", io.BytesIO(b"x"), 1)
    with pytest.raises(NotSupportedError):
        remote.write_new("fspl-ro.fspl", io.BytesIO(b"x"), 1)
    with pytest.raises(NotSupportedError):
        remote.delete("fspl-ro.fspl")
    with pytest.raises(NotSupportedError):
        remote.delete_many(["fspl-ro.fspl"])
    assert backend.raw_names(remote) == ["fspl-ro.fspl"]
    assert _read(remote, "fspl-ro.fspl") == b"read only"
    assert remote.cleanup_temporaries() == 0


# -- hostile remotes (issue 12) ------------------------------------------------------
# What a remote holds must never hurt the receiver: each test below checks the
# transport's bound and, through the sync engine (gateway.pull), its safe behaviour.
# Directory-backed remotes (extra "jobs_dir": the remote's jobs/ on this machine) also
# get names that are not UTF-8, symlinks and special files.

def _job(seq: int, payload: bytes | None = None) -> bytes:
    from fspl_gateway.core.packet import Meta, encode_header

    if payload is None:
        payload = f"payload of job {seq}\n".encode() * 50
    return encode_header(Meta(seq, (1700000000 + seq, 0), "NOP")) + payload


def _queue(tmp_path: Path, name: str = "q") -> Path:
    from fspl_gateway.core.queue import queue_init

    q = tmp_path / name
    queue_init(str(q))  # a sequence queue (nextseq 1)
    return q


def _pull(t: Transport, q: Path, **kw: object) -> object:
    from fspl_gateway.gateway.pull import SyncOptions, pull
    from fspl_gateway.gateway.retry import RetryPolicy

    kw.setdefault("settle", 0.0)
    opts = SyncOptions(retry=RetryPolicy(attempts=2, backoff=0.01), progress=False,
                       **kw)  # type: ignore[arg-type]
    return pull(t, q, opts)


def _jobs_dir(backend: Backend, t: Transport) -> str:
    from fspl_gateway.transports.wrapper import DelegatingTransport

    f = backend.extra.get("jobs_dir")
    if f is None:
        pytest.skip(f"{backend.name}: no directory on this machine to plant files in")
    inner = t.inner if isinstance(t, DelegatingTransport) else t
    return str(f(inner))  # type: ignore[operator]


def _replace(backend: Backend, t: Transport, name: str, data: bytes) -> None:
    """Put other bytes under ``name`` behind the transport's back."""
    if backend.read_only:
        pytest.skip(f"{backend.name}: a file cannot be replaced there")
    t.delete(name)
    backend.put(t, name, data)


def _local_names(q: Path) -> list[str]:
    return sorted(os.listdir(q / "jobs"))


def test_hostile_bigger_than_listed(backend: Backend, remote: Transport,
                                    tmp_path: Path) -> None:
    """A file swapped for a bigger one after the listing: the fetch reads at most one
    byte more than listed and fails; sync links nothing, keeps the remote copy and takes
    the file whole on the next run."""
    from fspl_gateway.core.errors import IntegrityError

    small, big = _job(1), _job(1, os.urandom(3 * MiB))
    backend.put(remote, "fspl-big.fspl", small)
    entry = _listing(remote)["fspl-big.fspl"]
    _replace(backend, remote, "fspl-big.fspl", big)
    sink = HashSink()
    with pytest.raises(IntegrityError):
        remote.fetch("fspl-big.fspl", sink, entry)  # type: ignore[arg-type]
    assert sink.n <= len(small) + 1, f"accepted {sink.n} bytes, {len(small)} listed"
    with pytest.raises(IntegrityError):
        remote.fetch_to_path("fspl-big.fspl", str(tmp_path / "got"), entry)
    assert not (tmp_path / "got").exists()

    # the engine: listed small, grown before the fetch → not linked, not quarantined
    q = _queue(tmp_path)
    real_list = remote.list
    stale = [entry]
    remote.list = lambda: iter(stale)  # type: ignore[method-assign]
    res = _pull(remote, q)
    assert (res.fetched, res.quarantined, res.unsettled) == (0, 0, 1)  # type: ignore[attr-defined]
    assert res.exit_code == 0 and _local_names(q) == []  # type: ignore[attr-defined]
    remote.list = real_list  # type: ignore[method-assign]
    res = _pull(remote, q)
    assert res.fetched == 1 and (q / "jobs" / "fspl-big.fspl").read_bytes() == big  # type: ignore[attr-defined]


def test_hostile_grows_after_listing(backend: Backend, remote: Transport,
                                     tmp_path: Path) -> None:
    """A file still being written under its final name (``cp``, ``scp``, old rclone):
    appended to after the listing.  The fetch does not take the longer file; on
    transports without atomic appearance sync waits for it to settle."""
    from fspl_gateway.core.errors import IntegrityError

    data = _job(1, os.urandom(200_000))
    d = _jobs_dir(backend, remote)
    with open(os.path.join(d, "fspl-grow.fspl"), "xb") as f:
        f.write(data[:50_000])
        f.flush()
        entry = _listing(remote)["fspl-grow.fspl"]
        f.write(data[50_000:100_000])
        f.flush()
        with pytest.raises(IntegrityError):
            remote.fetch("fspl-grow.fspl", HashSink(), entry)  # type: ignore[arg-type]
        if not remote.capabilities.atomic_appearance:
            # a young file is looked at again after the settle interval: grown meanwhile
            # → left for a later run
            real_list = remote.list
            calls = []

            def growing_list() -> Iterator[RemoteEntry]:
                calls.append(1)
                if len(calls) == 2:  # the second look, after the wait
                    f.write(data[100_000:150_000])
                    f.flush()
                return real_list()

            remote.list = growing_list  # type: ignore[method-assign]
            q = _queue(tmp_path)
            res = _pull(remote, q, settle=0.3)
            remote.list = real_list  # type: ignore[method-assign]
            assert len(calls) == 2
            assert (res.fetched, res.unsettled) == (0, 1)  # type: ignore[attr-defined]
            assert res.exit_code == 0 and _local_names(q) == []  # type: ignore[attr-defined]
        f.write(data[f.tell():])
    q2 = _queue(tmp_path, "q2")
    res = _pull(remote, q2)
    assert res.fetched == 1 and (q2 / "jobs" / "fspl-grow.fspl").read_bytes() == data  # type: ignore[attr-defined]


def test_hostile_swapped_for_endless_or_special(backend: Backend, remote: Transport,
                                                tmp_path: Path) -> None:
    """After the listing the file becomes a symlink to /dev/zero, or a FIFO: the fetch
    fails within the listed size (+1), never hangs, never fills the disk."""
    d = _jobs_dir(backend, remote)
    data = _job(1)
    backend.put(remote, "fspl-z.fspl", data)
    entry = _listing(remote)["fspl-z.fspl"]
    os.unlink(os.path.join(d, "fspl-z.fspl"))
    os.symlink("/dev/zero", os.path.join(d, "fspl-z.fspl"))
    sink = HashSink()
    with pytest.raises(TransportError):
        remote.fetch("fspl-z.fspl", sink, entry)  # type: ignore[arg-type]
    assert sink.n <= len(data) + 1
    if not backend.extra.get("fifo_hangs_server"):  # sftp-server blocks opening a FIFO
        os.unlink(os.path.join(d, "fspl-z.fspl"))
        os.mkfifo(os.path.join(d, "fspl-z.fspl"))
        with pytest.raises(TransportError):
            remote.fetch("fspl-z.fspl", HashSink(), entry)  # type: ignore[arg-type]


def test_hostile_symlinks_and_special_files_not_taken(backend: Backend, remote: Transport,
                                                      tmp_path: Path) -> None:
    """Symlinks (to a job outside, to /dev/zero), a FIFO and a directory named like jobs
    are not listed and not fetched; the regular job next to them is."""
    d = _jobs_dir(backend, remote)
    outside = tmp_path / "outside.fspl"
    outside.write_bytes(_job(2))
    os.symlink(outside, os.path.join(d, "fspl-link.fspl"))
    os.symlink("/dev/zero", os.path.join(d, "fspl-zero.fspl"))
    os.mkfifo(os.path.join(d, "fspl-fifo.fspl"))
    os.mkdir(os.path.join(d, "fspl-dir.fspl"))
    backend.put(remote, "fspl-ok.fspl", _job(1))
    assert set(_listing(remote)) == {"fspl-ok.fspl"}
    q = _queue(tmp_path)
    res = _pull(remote, q)
    assert res.fetched == 1 and _local_names(q) == ["fspl-ok.fspl"]  # type: ignore[attr-defined]
    assert outside.read_bytes() == _job(2)


def test_hostile_names_not_utf8_or_with_newline(backend: Backend, remote: Transport,
                                                tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A job name that is not UTF-8, or holds a newline: refused with one escaped
    warning, no traceback, every other job fetched — on every run."""
    d = _jobs_dir(backend, remote)
    with open(os.path.join(os.fsencode(d), b"fspl-\xff\xfe.fspl"), "xb") as f:
        f.write(_job(1))
    backend.put(remote, "fspl-a\nb.fspl", _job(1))
    backend.put(remote, "fspl-ok.fspl", _job(1))
    names = set(_listing(remote))
    assert "fspl-a\nb.fspl" in names and len(names) == 3
    q = _queue(tmp_path)
    for _ in range(2):
        caplog.clear()
        res = _pull(remote, q)
        assert (res.refused, res.failed) == (2, 0)  # type: ignore[attr-defined]
        assert _local_names(q) == ["fspl-ok.fspl"]
        text = caplog.text
        assert "fspl-\\xff\\xfe.fspl" in text and "fspl-a\\nb.fspl" in text
        assert "\n" not in "".join(r.getMessage() for r in caplog.records)


def test_hostile_two_files_with_one_seq(backend: Backend, remote: Transport,
                                        tmp_path: Path) -> None:
    """Conflict copies (Dropbox's "(… conflicted copy …)", Syncthing's ".sync-conflict-")
    claim a seq another job has: same bytes → dropped (journaled), different bytes →
    quarantined (exit 3); never two files with one seq in jobs/."""
    from fspl_gateway.gateway.status import queue_status

    job1 = _job(1)
    backend.put(remote, "fspl-one.fspl", job1)
    backend.put(remote, "fspl-one (A's conflicted copy 2024-01-01).fspl", job1)
    backend.put(remote, "fspl-two.fspl", _job(2))
    backend.put(remote, "fspl-two.sync-conflict-20240101-000000-ABCDEFG.fspl",
                _job(2, b"other bytes"))
    q = _queue(tmp_path)
    res = _pull(remote, q)
    jobs = _local_names(q)
    assert len(jobs) == 2, jobs
    assert res.quarantined == 1 and res.exit_code == 3  # type: ignore[attr-defined]
    reason = [p for p in os.listdir(q / ".fspl-gw" / "quarantine") if p.endswith(".reason")]
    assert len(reason) == 1
    assert "seq 2 is already taken" in (q / ".fspl-gw" / "quarantine" / reason[0]).read_text()
    st = queue_status(str(q))
    assert not st.blocked and sorted(st.pending_seqs) == [1, 2]
