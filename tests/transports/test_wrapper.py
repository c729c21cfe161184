"""The delegating wrapper (fspl_gateway.transports.wrapper): every public method and
attribute of Transport reaches the inner transport, and the fast paths survive wrapping
(the watch gateway's stop-aware wrapper, media import's checked media)."""

from __future__ import annotations

import inspect
import io
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import NotSupportedError, RemoteNotFoundError, TransportError
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.gateway.watch.stopaware import StopAwareTransport
from fspl_gateway.transports.base import Capabilities, RemoteEntry, Transport
from fspl_gateway.transports.local import LocalTransport
from fspl_gateway.transports.wrapper import DelegatingTransport
from tests.unit.test_sync import job_set, local_jobs, make_remote, remote_jobs

#: Public members of Transport that are helpers computed from forwarded ones, not
#: forwarded themselves (each is checked for that below).
HELPERS = {"check_name", "require", "safe_names"}

#: An argument for each parameter name of a Transport method.
ARGS: dict[str, Any] = {
    "name": "fspl-a.fspl", "dst": io.BytesIO(), "src": io.BytesIO(b""), "size": 0,
    "entry": RemoteEntry("fspl-a.fspl", 0), "path": "/nonexistent/fspl-a.fspl",
    "link": True, "names": ["fspl-a.fspl", "fspl-b.fspl"], "n": 7, "timeout": 0.25,
    "area": "receipts", "hasher": None,
    "entries": [RemoteEntry("fspl-a.fspl.minisig", 0), RemoteEntry("fspl-b.fspl.minisig", 0)],
}


class _Minimal(Transport):
    def list(self) -> Any:
        return iter(())

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


def public_members() -> list[str]:
    """Every public method and attribute of a Transport: the class's and the ones its
    ``__init__`` sets."""
    names = {n for n in dir(Transport) if not n.startswith("_")}
    names |= {n for n in vars(_Minimal("loc", {})) if not n.startswith("_")}
    return sorted(names)


def _methods() -> list[str]:
    return [n for n in public_members() if n not in HELPERS
            and inspect.isfunction(inspect.getattr_static(Transport, n, None))]


def _attributes() -> list[str]:
    return [n for n in public_members() if n not in HELPERS and n not in _methods()]


def _recorder() -> Transport:
    """A Transport whose every public method records its call and returns a sentinel
    of its own, with attributes of its own: built from Transport itself, so a method
    added to Transport is recorded here without editing this test."""
    calls: list[tuple[str, dict[str, Any]]] = []
    sentinels = {n: object() for n in _methods()}

    def make(n: str) -> Any:
        sig = inspect.signature(getattr(Transport, n))

        def method(self: Transport, *args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            calls.append((n, {k: v for k, v in bound.arguments.items() if k != "self"}))
            return sentinels[n]
        return method

    body: dict[str, Any] = {n: make(n) for n in _methods()}
    body["name"] = "recorder"
    body["capabilities"] = Capabilities(can_write=False, can_delete=True,
                                        atomic_noclobber=False)
    cls = type("Recorder", (Transport,), body)
    t = cls("recorder-location", {"opt": 1})
    t.calls = calls  # type: ignore[attr-defined]
    t.sentinels = sentinels  # type: ignore[attr-defined]
    return t


def test_the_member_list_is_complete() -> None:
    """The enumeration below sees what a caller of a Transport uses."""
    members = public_members()
    for n in ("list", "open", "fetch", "fetch_to_path", "write_new", "delete", "delete_many",
              "set_concurrency", "wait_for_change", "cleanup_temporaries", "close",
              "describe", "capabilities", "name", "location", "options"):
        assert n in members, n
    assert set(_methods()) | set(_attributes()) | HELPERS == set(members)


@pytest.mark.parametrize("method", _methods())
@pytest.mark.parametrize("wrapper", ["plain", "watch"])
def test_every_method_reaches_the_inner_transport(method: str, wrapper: str) -> None:
    inner = _recorder()
    t = (DelegatingTransport(inner) if wrapper == "plain"
         else StopAwareTransport(inner, threading.Event()))
    sig = inspect.signature(getattr(Transport, method))
    args = {p: ARGS[p] for p in list(sig.parameters)[1:]}
    got = getattr(t, method)(**args)
    calls = inner.calls  # type: ignore[attr-defined]
    assert [c[0] for c in calls] == [method], \
        f"{type(t).__name__}.{method} did not reach the inner transport's {method}: {calls}"
    assert calls[0][1] == args, f"{method}: arguments changed on the way: {calls[0][1]}"
    if sig.return_annotation not in (None, "None"):
        assert got is inner.sentinels[method], \
            f"{method}: the inner transport's answer was not returned"  # type: ignore[attr-defined]


@pytest.mark.parametrize("attribute", _attributes())
def test_every_attribute_is_the_inner_ones(attribute: str) -> None:
    inner = _recorder()
    t = DelegatingTransport(inner)
    assert getattr(t, attribute) is getattr(inner, attribute), attribute


def test_attributes_written_through_the_wrapper_are_the_inner_ones() -> None:
    inner = _recorder()
    t = DelegatingTransport(inner)
    t.location = "elsewhere"
    t.options = {"other": 2}
    assert inner.location == "elsewhere" and inner.options == {"other": 2}
    assert t.describe() is inner.sentinels["describe"]  # type: ignore[attr-defined]


def test_helpers_use_the_forwarded_attributes() -> None:
    t = DelegatingTransport(_recorder())
    with pytest.raises(NotSupportedError, match="recorder transport cannot write"):
        t.require("can_write")
    t.require("can_delete")
    with pytest.raises(TransportError, match="unsafe"):
        t.check_name("../x")
    with t as same:  # the context manager closes the inner transport
        assert same is t
    assert [c[0] for c in t.inner.calls] == ["close"]  # type: ignore[attr-defined]


# -- subclasses: the hook and overrides ---------------------------------------------------
def test_hook_refuses_single_names_of_delete_many(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "r", {f"fspl-{i}.fspl": b"x" for i in range(4)})
    batches: list[list[str]] = []

    class Counting(LocalTransport):
        def delete_many(self, names: Any) -> dict[str, TransportError]:
            batches.append(list(names))
            return super().delete_many(names)

    class NoTwo(DelegatingTransport):
        def before(self, op: str, name: str) -> None:
            if name == "fspl-2.fspl":
                raise TransportError("not this one")

    t = NoTwo(Counting(str(remote)))
    errors = t.delete_many([f"fspl-{i}.fspl" for i in range(4)])
    assert list(errors) == ["fspl-2.fspl"] and "not this one" in str(errors["fspl-2.fspl"])
    assert batches == [["fspl-0.fspl", "fspl-1.fspl", "fspl-3.fspl"]]  # one batch
    assert sorted(remote_jobs(remote)) == ["fspl-2.fspl"]


def test_an_overridden_fetch_is_never_bypassed(tmp_path: Path) -> None:
    """fetch_to_path of a subclass that looks at the bytes in fetch goes through that
    fetch (no hard link behind its back); delete_many through an overridden delete."""
    remote = make_remote(tmp_path / "r", {"fspl-a.fspl": b"a" * 1000, "fspl-b.fspl": b"b"})
    seen: list[str] = []

    class Looking(DelegatingTransport):
        def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
            seen.append(f"fetch {name}")
            return super().fetch(name, dst, entry)

        def delete(self, name: str) -> None:
            seen.append(f"delete {name}")
            super().delete(name)

    t = Looking(LocalTransport(str(remote)))
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "x"), None, link=True) == 1000
    assert (tmp_path / "x").stat().st_ino != (remote / "jobs" / "fspl-a.fspl").stat().st_ino
    assert t.delete_many(["fspl-a.fspl", "fspl-b.fspl"]) == {}
    assert seen == ["fetch fspl-a.fspl", "delete fspl-a.fspl", "delete fspl-b.fspl"]


def test_checked_media_rechecks_through_fetch_to_path(tmp_path: Path) -> None:
    """Media import's wrapper hashes what it copies on every path into a file."""
    import hashlib

    from fspl_gateway.core.errors import IntegrityError
    from fspl_gateway.gateway.media import _CheckedMedia
    from fspl_gateway.transports.media import MediaTransport

    stick = make_remote(tmp_path / "stick", {"fspl-a.fspl": b"good bytes"})
    t = _CheckedMedia(MediaTransport(str(stick), {"read_only": True}),
                      {"fspl-a.fspl": hashlib.sha256(b"good bytes").hexdigest()},
                      {"fspl-a.fspl"})
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "ok"), link=True) == 10
    (stick / "jobs" / "fspl-a.fspl").write_bytes(b"rotten!!!!")
    with pytest.raises(IntegrityError, match="no longer match"):
        t.fetch_to_path("fspl-a.fspl", str(tmp_path / "bad"), link=True)
    assert not (tmp_path / "bad").exists()
    assert not t.capabilities.can_write and not t.capabilities.can_delete
    with pytest.raises(NotSupportedError):
        t.delete_many(["fspl-a.fspl"])
    with pytest.raises(NotSupportedError):
        t.write_new("fspl-n.fspl", io.BytesIO(b"x"), 1)


# -- fast paths survive the watch gateway's wrapper ---------------------------------------
def test_watch_wrapper_hard_links_on_the_same_file_system(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "r", {"fspl-a.fspl": b"a" * 5000})
    stop = threading.Event()
    t = StopAwareTransport(LocalTransport(str(remote)), stop)
    src = remote / "jobs" / "fspl-a.fspl"
    assert t.fetch_to_path("fspl-a.fspl", str(tmp_path / "l"), None, link=True) == 5000
    assert os.stat(tmp_path / "l").st_ino == src.stat().st_ino
    stop.set()  # stopping: no new download, no file left behind
    with pytest.raises(RemoteNotFoundError, match="stopping"):
        t.fetch_to_path("fspl-a.fspl", str(tmp_path / "late"), None, link=True)
    assert not (tmp_path / "late").exists()


def test_watch_wrapper_pull_links_and_deletes_in_batches(tmp_path: Path) -> None:
    """A pull as watch runs it: the queue's jobs are the remote inodes (linked, not
    copied) and the remote copies go in one delete_many per batch."""
    remote = make_remote(tmp_path / "r", job_set(20, size=300))
    src = remote_jobs(remote)
    inodes = {n: (remote / "jobs" / n).stat().st_ino for n in src}
    batches: list[int] = []

    class Counting(LocalTransport):
        def delete_many(self, names: Any) -> dict[str, TransportError]:
            batches.append(len(names))
            return super().delete_many(names)

    qdir = tmp_path / "queue"
    q.queue_init(str(qdir))
    t = StopAwareTransport(Counting(str(remote)), threading.Event())
    res = pull(t, qdir, SyncOptions(progress=False, retry=RetryPolicy(attempts=1)))
    assert res.fetched == 20 and local_jobs(qdir) == src and remote_jobs(remote) == {}
    assert {n: (qdir / "jobs" / n).stat().st_ino for n in src} == inodes
    assert batches == [20]


def test_watch_wrapper_keeps_the_sftp_channel_pool_and_pipelined_removes(sftp_queue: Any) -> None:
    from fspl_gateway.transports.sftp import SFTPTransport

    names = [f"fspl-{i:04d}.fspl" for i in range(30)]
    for n in names:
        (sftp_queue.jobs / n).write_bytes(b"x")
    inner = SFTPTransport(sftp_queue.location, sftp_queue.options)
    t = StopAwareTransport(inner, threading.Event())
    try:
        assert t.set_concurrency(4) == 4 and inner.max_channels == 4
        assert t.delete_many([*names, "fspl-gone.fspl"]).keys() == {"fspl-gone.fspl"}
        assert os.listdir(sftp_queue.jobs) == []
        assert inner.stats["connects"] == 1
    finally:
        t.close()


def test_watch_wrapper_keeps_s3_delete_objects(s3_bucket: Any) -> None:
    from fspl_gateway.transports.s3 import S3Transport
    from tests.fixtures.s3server import seed_objects

    seed_objects(s3_bucket.server, s3_bucket.name, "w/jobs/fspl-", 30)
    inner = S3Transport(f"{s3_bucket.name}/w", s3_bucket.options)
    t = StopAwareTransport(inner, threading.Event())
    sent: list[int] = []
    inner._client.meta.events.register(
        "before-parameter-build.s3.DeleteObjects",
        lambda params, **kw: sent.append(len(params["Delete"]["Objects"])))
    try:
        names = sorted(e.name for e in t.list())
        assert len(names) == 30
        assert t.delete_many(names) == {}
        assert sent == [30]  # one DeleteObjects request, not thirty DeleteObject
        assert t.set_concurrency(32) == 32
        assert inner._client.meta.config.max_pool_connections == 32
    finally:
        t.close()
