"""The one delegating wrapper: a Transport that forwards everything to another one.

Code that needs to change a little of what a transport does (the watch gateway refuses
new downloads once it is stopping; media import shows only the jobs that passed the
manifest check and re-hashes each one as it is copied) subclasses
:class:`DelegatingTransport` and changes only that.  Everything else — including every
fast path and optional method of :class:`~fspl_gateway.transports.base.Transport`
(``fetch_to_path``'s hard link, ``delete_many``'s batch requests, ``set_concurrency``'s
connection pool, ``wait_for_change``'s longpoll, ``capabilities`` …) — is the inner
transport's, so a wrapped transport is exactly as fast as the bare one.

A subclass changes behaviour in one of two ways:

* :meth:`DelegatingTransport.before` ``(op, name)`` is called before every operation on
  one remote name (``open``, ``fetch``, ``fetch_to_path``, ``write_new``, ``delete``, and
  each name of ``delete_many``); raising there refuses that operation (in
  ``delete_many``: that name's entry in the answer, like the inner transport's own
  errors);
* or it overrides a method.

Fast paths never bypass an override: a subclass that overrides ``fetch`` (to look at the
bytes) and not ``fetch_to_path`` gets the base ``fetch_to_path``, built on its own
``fetch``; one that overrides ``delete`` and not ``delete_many`` gets the base
``delete_many``, built on its own ``delete``.

``tests/transports/test_wrapper.py`` checks that every public method and attribute of
Transport reaches the inner object, and the conformance suite runs over wrapped
transports too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from fspl_gateway.core.errors import NotSupportedError, TransportError
from fspl_gateway.core.hashing import MultiHasher
from fspl_gateway.transports.base import Capabilities, RemoteEntry, Transport
from fspl_gateway.transports.options import OptionSchema, OptionValues


class DelegatingTransport(Transport):
    """Forwards every :class:`Transport` method and attribute to ``inner`` (see the
    module documentation)."""

    def __init__(self, inner: Transport) -> None:
        # Transport.__init__ is not called: location, options (given and parsed), name
        # and capabilities are the inner transport's (properties below), never a copy
        # that could drift.
        self.inner = inner

    # -- the hook ------------------------------------------------------------------
    def before(self, op: str, name: str) -> None:
        """Called before ``op`` (``open``, ``fetch``, ``fetch_to_path``, ``write_new``,
        ``delete``) on ``name``; raise to refuse it.  Default: nothing."""

    def _screened(self, op: str, names: Sequence[str]
                  ) -> tuple[list[str], dict[str, TransportError]]:
        """The names :meth:`before` lets ``op`` have, and the error of each one it
        refuses (a NotSupportedError refuses the whole call)."""
        ok: list[str] = []
        refused: dict[str, TransportError] = {}
        for name in names:
            try:
                self.before(op, name)
            except NotSupportedError:
                raise
            except TransportError as e:
                refused[name] = e
                continue
            ok.append(name)
        return ok, refused

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(DelegatingTransport, method)

    # -- attributes ----------------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self.inner.capabilities

    @property
    def area(self) -> str:  # type: ignore[override]
        return self.inner.area

    @property
    def location(self) -> str:
        return self.inner.location

    @location.setter
    def location(self, value: str) -> None:
        self.inner.location = value

    @property
    def options(self) -> dict[str, Any]:
        return self.inner.options

    @options.setter
    def options(self, value: dict[str, Any]) -> None:
        self.inner.options = value

    @property
    def settings(self) -> OptionValues:
        return self.inner.settings

    @settings.setter
    def settings(self, value: OptionValues) -> None:
        self.inner.settings = value

    @property
    def options_schema(self) -> OptionSchema | None:  # type: ignore[override]
        return self.inner.options_schema

    # -- the interface -------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        return self.inner.list()

    def open(self, name: str) -> BinaryIO:
        self.before("open", name)
        return self.inner.open(name)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        self.before("fetch", name)
        return self.inner.fetch(name, dst, entry)

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.before("write_new", name)
        return self.inner.write_new(name, src, size)

    def delete(self, name: str) -> None:
        self.before("delete", name)
        self.inner.delete(name)

    # -- fast paths and optional methods -------------------------------------------------
    def fetch_to_path(self, name: str, path: str, entry: RemoteEntry | None = None, *,
                      link: bool = False, hasher: MultiHasher | None = None) -> int:
        self.before("fetch_to_path", name)
        if self._overrides("fetch"):
            return Transport.fetch_to_path(self, name, path, entry, link=link, hasher=hasher)
        return self.inner.fetch_to_path(name, path, entry, link=link, hasher=hasher)

    def fetch_small(self, entries: Sequence[RemoteEntry]) -> dict[str, bytes | TransportError]:
        if self._overrides("fetch"):
            return Transport.fetch_small(self, entries)
        ok, refused = self._screened("fetch", [e.name for e in entries])
        allowed = set(ok)
        todo = [e for e in entries if e.name in allowed]
        got = self.inner.fetch_small(todo) if todo or not refused else {}
        if not refused:
            return got
        return {**refused, **got}

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        if self._overrides("delete"):
            return Transport.delete_many(self, names)
        todo, refused = self._screened("delete", names)
        errors = self.inner.delete_many(todo) if todo or not refused else {}
        if not refused:
            return errors
        return {**refused, **errors}

    def default_concurrency(self) -> int:
        return self.inner.default_concurrency()

    def set_concurrency(self, n: int) -> int:
        return self.inner.set_concurrency(n)

    def wait_for_change(self, timeout: float) -> bool | None:
        return self.inner.wait_for_change(timeout)

    def settle_interval(self) -> float:
        return self.inner.settle_interval()

    def cleanup_temporaries(self) -> int:
        return self.inner.cleanup_temporaries()

    def sibling(self, area: str) -> Transport:
        return self.inner.sibling(area)

    def make_area(self) -> None:
        self.inner.make_area()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()


__all__ = ["DelegatingTransport"]
