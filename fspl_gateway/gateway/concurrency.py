"""The one parallel map of the pull and push engines.

A :class:`ParallelMap` runs a function over items with up to N threads (one pool for a
whole run, shared by its batches).  The first exception stops the run: it is kept in
:attr:`ParallelMap.error`, ``stop`` is set, items not yet started are skipped, and
:meth:`ParallelMap.raise_error` re-raises it once the caller has cleaned up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


class ParallelMap:
    """``threads`` workers (1: everything in the calling thread, no pool).  ``stop`` is
    the run's stop event (set by the first error, or by the caller);
    ``on_done`` is called after each item that ran (a progress bar's ``advance``)."""

    def __init__(self, threads: int, stop: threading.Event | None = None,
                 on_done: Callable[[], None] | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.error: BaseException | None = None
        self._on_done = on_done
        self._lock = threading.Lock()
        self._pool = (ThreadPoolExecutor(threads, thread_name_prefix="fspl-gw")
                      if threads > 1 else None)

    def fail(self, exc: BaseException) -> None:
        """Stop the run because of ``exc`` (kept if it is the first error)."""
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn`` over ``items``; the results of those that ran and did not raise, in
        order.  Once the run is stopped, the remaining items are skipped."""
        def one(item: T) -> tuple[bool, R | None]:
            if self.stop.is_set():
                return False, None
            try:
                return True, fn(item)
            except BaseException as e:
                self.fail(e)
                return False, None
            finally:
                if self._on_done is not None:
                    self._on_done()

        if self._pool is None:
            done: list[tuple[bool, R | None]] = []
            for item in items:
                done.append(one(item))
                if self.stop.is_set():
                    break
        else:
            done = list(self._pool.map(one, items))
        return [cast(R, r) for ok, r in done if ok]

    def raise_error(self) -> None:
        """Re-raise the error that stopped the run, if any."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ParallelMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
