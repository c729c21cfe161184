"""The one retry policy (fspl_gateway.gateway.retry).  Its use by the engines against real
remotes is tested with them (test_dropbox, test_sftp, test_multihost, test_sync)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from fspl_gateway.core.errors import (
    IntegrityError,
    RemoteExistsError,
    TransientError,
    TransportError,
)
from fspl_gateway.gateway.retry import RetryPolicy, backoff


def failing(errors: list[BaseException]) -> tuple[Callable[[], str], list[float]]:
    """A callable that raises ``errors`` one per call, then returns "ok"; and the times
    of its calls."""
    calls: list[float] = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return fn, calls


def test_succeeds_on_attempt_3() -> None:
    fn, calls = failing([TransientError("a"), IntegrityError("b")])
    assert RetryPolicy(attempts=3, backoff=0.01).call(fn, "x") == "ok"
    assert len(calls) == 3


def test_attempts_are_bounded_and_the_last_error_raised() -> None:
    fn, calls = failing([TransientError(str(i)) for i in range(10)])
    with pytest.raises(TransientError, match="^3$"):
        RetryPolicy(attempts=4, backoff=0.001).call(fn, "x")
    assert len(calls) == 4
    fn, calls = failing([TransientError("once")])
    with pytest.raises(TransientError):
        RetryPolicy(attempts=1).call(fn, "x")
    assert len(calls) == 1


@pytest.mark.parametrize("err", [TransportError("no"), RemoteExistsError("there"),
                                 ValueError("bug")])
def test_permanent_errors_are_not_retried(err: BaseException) -> None:
    fn, calls = failing([err])
    with pytest.raises(type(err)):
        RetryPolicy(backoff=0.001).call(fn, "x")
    assert len(calls) == 1


def test_retry_after_is_honoured() -> None:
    fn, calls = failing([TransientError("429", retry_after=0.3)])
    assert RetryPolicy(backoff=0.001, max_delay=0.001).call(fn, "x") == "ok"
    assert calls[1] - calls[0] >= 0.3
    assert TransientError("x", retry_after=-5).retry_after == 0.0
    assert TransientError("x").retry_after is None and TransportError("y").retry_after is None


def test_too_long_a_retry_after_is_not_waited_for() -> None:
    fn, calls = failing([TransientError("429", retry_after=3600)])
    t0 = time.monotonic()
    with pytest.raises(TransientError):
        RetryPolicy(max_retry_after=60).call(fn, "x")
    assert len(calls) == 1 and time.monotonic() - t0 < 1


def test_backoff_is_exponential_jittered_and_capped() -> None:
    for n in range(8):
        d = backoff(0.5, n, 20.0)
        full = min(20.0, 0.5 * 2 ** n)
        assert full / 2 <= d <= full
    assert backoff(0.5, 3, 20.0, jitter=False) == 4.0
    assert backoff(0.5, 100, 20.0, jitter=False) == 20.0
    assert backoff(90.0, 2, 60.0, jitter=False) == 90.0, "never below the base"
    p = RetryPolicy(backoff=1.0, max_delay=5.0)
    assert all(2.0 <= (p.delay(3) or 0) <= 4.0 for _ in range(20))
    assert p.delay(1, TransientError("x", retry_after=9)) == 9.0


def test_a_stop_event_ends_the_wait() -> None:
    stop = threading.Event()
    fn, calls = failing([TransientError("down")] * 5)
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(TransientError):
        RetryPolicy(backoff=5.0).call(fn, "x", stop)
    assert len(calls) == 1 and time.monotonic() - t0 < 2
    with pytest.raises(TransientError):  # set before: no retry at all
        RetryPolicy(backoff=0.001).call(failing([TransientError("x")])[0], "x", stop)


def test_pause_for_batches() -> None:
    p = RetryPolicy(attempts=2, backoff=0.001)
    assert p.pause(1, TransientError("x"), "batch") is True
    assert p.pause(2, TransientError("x"), "batch") is False
    assert p.pause(1, TransportError("x"), "batch") is False


def test_a_policy_needs_an_attempt() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
