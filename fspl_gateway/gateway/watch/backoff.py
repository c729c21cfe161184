"""How long a watch pipeline waits after failures: the remote's next poll, the next
attempt at a failing job, the next start of a workers pool that exited."""

from __future__ import annotations

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
    cap = max(interval, min(BACKOFF_MAX, interval * BACKOFF_INTERVALS))
    return min(cap, interval * 2 ** failures)


def retry_delay(failures: int) -> float:
    """Seconds until the next attempt after ``failures`` (≥ 1) failed jobs or pool
    exits in a row."""
    return min(BACKOFF_MAX, JOB_RETRY_FIRST * 2 ** (failures - 1))
