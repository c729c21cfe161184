"""Backends for the transport conformance suite.

Each module here (one per transport) defines a pytest fixture named
``backend_<transport>`` that yields a :class:`Backend`.  The conformance suite
(``tests/transports/test_conformance.py``) is parametrized over :data:`BACKENDS`; adding
a transport = adding a module here + one name in that list.

The suite also runs over every backend *wrapped* in each of :data:`WRAPPERS` (the
delegating wrappers the gateway puts around a transport): ``local+watch`` is the local
backend seen through the watch gateway's stop-aware wrapper.  :func:`wrapped` makes such
a backend (``put``/``raw_names`` act on the inner transport).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fspl_gateway.transports.base import Transport
from fspl_gateway.transports.wrapper import DelegatingTransport

BACKENDS = ["local", "media_dir", "media_iso", "s3", "sftp", "sftp_paramiko", "dropbox"]
#: The wrappers the suite also runs every backend through (name → wrap function).
WRAPPERS = ["watch"]
#: The big-file test through a wrapper: flat memory shows at this size already.
WRAPPED_BIG_SIZE = 256 << 20


@dataclass
class Backend:
    """What the conformance suite needs from one transport under test.

    ``make()`` returns a fresh Transport on an *empty* remote queue (its ``jobs/`` exists
    and is empty; each call gives a new, independent remote).  ``put(t, name, data)``
    places a file in that remote's ``jobs/`` behind the transport's back (directly on
    disk, through the server's own API, …) and ``raw_names(t)`` lists the remote's
    ``jobs/`` the same way, so that the suite can check what really is there (including
    temporaries a transport may have left).  ``read_only`` backends (a CD image) cannot
    write or delete: the suite then checks that they refuse to.
    """

    name: str
    make: Callable[[], Transport]
    put: Callable[[Transport, str, bytes], None]
    raw_names: Callable[[Transport], list[str]]
    read_only: bool = False
    #: Size of the "big file" test: 1 GiB by default, lower where a test server holds
    #: objects in memory (documented in the backend module).
    big_size: int = 1 << 30
    extra: dict[str, object] = field(default_factory=dict)


def _wrap(kind: str, t: Transport) -> DelegatingTransport:
    if kind == "watch":
        import threading

        from fspl_gateway.gateway.watch.stopaware import StopAwareTransport

        return StopAwareTransport(t, threading.Event())  # never set: a running gateway
    raise ValueError(f"unknown wrapper {kind!r}")


def wrapped(b: Backend, kind: str) -> Backend:
    """``b`` with every transport it makes wrapped in the wrapper ``kind``."""

    def inner(t: Transport) -> Transport:
        assert isinstance(t, DelegatingTransport), t
        return t.inner

    extra: dict[str, object] = dict(b.extra)
    put_stream = b.extra.get("put_stream")
    if put_stream is not None:
        def put_stream_inner(t: Transport, *args: Any) -> None:
            put_stream(inner(t), *args)  # type: ignore[operator]
        extra["put_stream"] = put_stream_inner
    return replace(
        b, name=f"{b.name}+{kind}", make=lambda: _wrap(kind, b.make()),
        put=lambda t, name, data: b.put(inner(t), name, data),
        raw_names=lambda t: b.raw_names(inner(t)),
        big_size=min(b.big_size, WRAPPED_BIG_SIZE), extra=extra)
