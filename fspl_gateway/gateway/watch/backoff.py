"""How long a watch pipeline waits after failures: the remote's next poll, the next
attempt at a failing job, the next start of a workers pool that exited.  Each is the one
backoff formula (:func:`fspl_gateway.gateway.retry.backoff`: exponential, capped, with
jitter) with the watch loop's own bounds.  These waits are between whole runs; inside a
run every remote operation has its own retries (:class:`~fspl_gateway.gateway.retry.RetryPolicy`)."""

from __future__ import annotations

from fspl_gateway.gateway import retry

#: Backoff of a failing remote: interval × 2^failures, at most this many intervals …
BACKOFF_INTERVALS = 32
#: … and at most this many seconds (unless the interval itself is longer).
BACKOFF_MAX = 600.0
#: A failing job (or workers pool) is retried after this many seconds, doubling up to
#: BACKOFF_MAX.
JOB_RETRY_FIRST = 5.0


def backoff(interval: float, failures: int) -> float:
    """Seconds until the next poll of a remote polled every ``interval`` seconds, after
    ``failures`` failures in a row."""
    if failures <= 0:
        return interval
    return retry.backoff(interval, failures, min(BACKOFF_MAX, interval * BACKOFF_INTERVALS))


def retry_delay(failures: int) -> float:
    """Seconds until the next attempt after ``failures`` (≥ 1) failed jobs or pool
    exits in a row."""
    return retry.backoff(JOB_RETRY_FIRST, failures - 1, BACKOFF_MAX)
