"""Whether a listed remote file has stopped changing: the settle interval.

Where a transport cannot guarantee that a file appears whole
(:attr:`~fspl_gateway.transports.base.Capabilities.atomic_appearance` is False: a
directory, SFTP), a writer may create the final name first and fill it afterwards
(``cp``, ``scp``, rclone before 1.63).  A packet carries no payload length, so a file
taken too early would be a truncated job.  The defence: a file is fetched only once its
size and mtime have stayed unchanged for the settle interval
(:meth:`~fspl_gateway.transports.base.Transport.settle_interval`: the ``settle`` option,
default 5 s; 0 for S3 and Dropbox, whose objects appear atomically).

"Unchanged for N seconds" is told in one run, without state between runs:

* a file whose mtime is at least N seconds old is settled at once (no latency for the
  common case: a file written a while ago);
* a younger one (or one with an mtime in the future or unknown) is looked at again after
  a wait (:func:`wait_settled`: until the youngest is N seconds old, at most N): the same
  size and mtime then → settled; changed → still being written, left for a later run.

A writer that stalls for longer than N seconds in the middle of a file defeats this;
writers should write to a temporary name and rename (README, "Writing into a remote").
The sync engine also never links a fetch whose byte count differs from the listing.

Other code (signature files that may not be there yet) calls :func:`is_settled` or
:func:`wait_settled` with the same interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from fspl_gateway.transports.base import RemoteEntry


def is_settled(entry: RemoteEntry, settle_s: float, now: float,
               seen: RemoteEntry | None = None, seen_at: float | None = None) -> bool:
    """True when ``entry`` may be fetched: no settle interval, or its mtime is at least
    ``settle_s`` before ``now``, or an earlier listing at ``seen_at`` (``seen``) showed
    the same size and mtime at least ``settle_s`` before ``now``."""
    if settle_s <= 0:
        return True
    if seen is not None and seen_at is not None and same_state(seen, entry) \
            and now - seen_at >= settle_s:
        return True
    age = _age(entry, now)
    return age is not None and age >= settle_s


def _age(entry: RemoteEntry, now: float) -> float | None:
    """How long ago ``entry`` last changed at least (None: unknown or in the future).  A
    whole-second mtime (SFTP, some file systems) may be up to a second older than the
    change: counted from the end of that second."""
    m = entry.mtime
    if m is None or m > now:
        return None
    return now - (m + 1.0 if m == int(m) else m)


def same_state(a: RemoteEntry, b: RemoteEntry) -> bool:
    """Same size, mtime and tag in two listings."""
    return a.size == b.size and a.mtime == b.mtime and a.tag == b.tag


def wait_needed(entries: Iterable[RemoteEntry], settle_s: float, now: float) -> float:
    """How long to wait before looking again so that each of ``entries`` that does not
    change is settled then (0 when all are settled already)."""
    w = 0.0
    for e in entries:
        if is_settled(e, settle_s, now):
            continue
        age = _age(e, now)
        if age is None:
            return settle_s
        w = max(w, min(settle_s, settle_s - age))
    return w


def wait_settled(entries: list[RemoteEntry], settle_s: float,
                 relist: Callable[[], Iterable[RemoteEntry]],
                 stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time,
                 ) -> tuple[list[RemoteEntry], list[RemoteEntry]]:
    """(settled, still changing) among ``entries`` (one listing's entries, in order).

    The settled ones come back at once; if some are young, wait (:func:`wait_needed`,
    cut short by ``stop``), call ``relist()`` once and take those whose size and mtime
    did not change (with their new entry); the others are "still changing".  A file gone
    in the second listing is dropped.  Order is kept."""
    now = clock()
    young = [e for e in entries if not is_settled(e, settle_s, now)]
    if not young:
        return list(entries), []
    wait = wait_needed(young, settle_s, now)
    if stop is not None:
        if stop.wait(wait):
            return [e for e in entries if e not in young], young
    else:
        time.sleep(wait)
    again = {e.name: e for e in relist()}
    later = clock()
    settled: list[RemoteEntry] = []
    changing: list[RemoteEntry] = []
    young_names = {e.name for e in young}
    for e in entries:
        if e.name not in young_names:
            settled.append(e)
            continue
        new = again.get(e.name)
        if new is None:
            continue
        if is_settled(new, settle_s, later, seen=e, seen_at=now):
            settled.append(new)
        else:
            changing.append(new)
    return settled, changing
