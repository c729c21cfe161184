"""One retry policy for every remote operation, and the one backoff function.

There are two levels of retries, and only two:

1. **Connection level, inside the SDK: small and fixed.**  botocore's standard retry
   mode makes up to ``max_attempts`` HTTP requests for one S3 call (the s3 option,
   default 3: a stale pooled connection, a throttled or failed request, retried at
   once without restarting a multipart upload).  The Dropbox SDK's own retry loops are
   switched off and requests/urllib3 retry nothing; paramiko retries nothing.
2. **Operation level, here.**  The pull and push engines, the multi-host workers and the
   watch loop call each transport operation (list, fetch, write, delete, a claim) through
   :meth:`RetryPolicy.call` (or :meth:`RetryPolicy.pause` for a batch): an error whose
   ``transient`` flag is set (:class:`~fspl_gateway.core.errors.TransientError`,
   :class:`~fspl_gateway.core.errors.IntegrityError`) is tried again after an exponential,
   jittered delay — never shorter than the server asked for (``retry_after``: HTTP
   Retry-After, Dropbox's rate-limit backoff) — up to ``attempts`` attempts in all
   (``--retries``, default 5) and never past a stop event.  A server asking for a longer
   wait than :attr:`RetryPolicy.max_retry_after` is not retried in this run.

Transports never loop: they only classify errors.  So one failing S3 call costs at most
``attempts × max_attempts`` HTTP requests, a failing Dropbox or SFTP call ``attempts``
requests or connections.

:func:`backoff` is the delay formula (exponential, capped, with jitter); the watch loop
uses it between failed polls of a remote and failed runs of a queue.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fspl_gateway.core.log import log

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5


def backoff(base: float, n: int, cap: float, jitter: bool = True) -> float:
    """``base × 2ⁿ``, at most ``cap`` (but never below ``base``); with ``jitter`` a
    uniformly random value between half of that and all of it, so that many clients
    that failed together do not come back together."""
    d = min(max(cap, base), base * 2 ** min(max(n, 0), 60))
    return d * random.uniform(0.5, 1.0) if jitter else d


@dataclass(frozen=True)
class RetryPolicy:
    """How one remote operation is retried (see the module doc)."""

    #: Attempts in all, the first one included (1 = no retries).
    attempts: int = DEFAULT_ATTEMPTS
    #: The wait after the first failure (doubling after each further one) …
    backoff: float = 0.5
    #: … at most this long (a server's Retry-After may ask for longer).
    max_delay: float = 20.0
    #: A server asking to wait longer than this is not retried in this run.
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def delay(self, failures: int, error: BaseException | None = None) -> float | None:
        """The wait before the next attempt after ``failures`` failed ones (the last with
        ``error``); None when the server asked for more than :attr:`max_retry_after`."""
        d = backoff(self.backoff, failures - 1, self.max_delay)
        after = getattr(error, "retry_after", None)
        if after is not None:
            if after > self.max_retry_after:
                return None
            d = max(d, float(after))
        return d

    def pause(self, attempt: int, error: BaseException, what: str,
              stop: threading.Event | None = None) -> bool:
        """Attempt ``attempt`` of ``what`` failed with ``error``: wait before the next one
        and return True, or return False at once when it must not be retried (not
        transient, the attempts are spent, the server asks for too long a wait, or
        ``stop`` is set — also while waiting)."""
        if not getattr(error, "transient", False) or attempt >= self.attempts:
            return False
        if stop is not None and stop.is_set():
            return False
        d = self.delay(attempt, error)
        if d is None:
            log.debug("%s: %s; the server asks to wait %.0f s, more than %.0f s: not "
                      "retried now", what, error, getattr(error, "retry_after", 0),
                      self.max_retry_after)
            return False
        log.debug("%s: %s; retrying in %.2f s (attempt %d of %d)", what, error, d,
                  attempt + 1, self.attempts)
        if stop is not None:
            return not stop.wait(d)
        time.sleep(d)
        return True

    def call(self, fn: Callable[[], T], what: str, stop: threading.Event | None = None) -> T:
        """``fn()``, retried per this policy; the last error is re-raised."""
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as e:
                if not self.pause(attempt, e, what, stop):
                    raise
                attempt += 1
