"""A queue's quarantine: files set aside, never lost, each explained.

``<queue>/.fspl-gw/quarantine/<name>`` (``<name>.1``, ``<name>.2`` … when that name is
taken: nothing there is ever overwritten) and beside it ``<name>.reason``, a short text:

    <file name>
    from: <remote>            (pull; a push writes "to: <remote>")
    time: <local time, ISO 8601>
    sha256: <hex>             (when known)
    reason: <why>
    <what was done about the remote / the push>

Pull quarantines a fetched file whose header does not validate or whose name is already
in ``jobs/`` with other bytes; push an outbox job whose header does not validate.  The
operator inspects and removes them; ``fspl-gw status`` counts them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from fspl_gateway.core.errors import QueueError
from fspl_gateway.core.fsutil import atomic_write, fsync_dir, move_noclobber
from fspl_gateway.core.layout import QueueLayout

#: Suffix of the explanation written beside each quarantined file.
REASON_SUFFIX = ".reason"
_MAX_COPIES = 1000


def quarantine(qdir: str, src: str, name: str, reason: str, *, origin: tuple[str, str],
               details: Sequence[tuple[str, str]] = (), note: str) -> str | None:
    """Move ``src`` (on the queue's file system) into the quarantine of ``qdir`` as
    ``name`` (or the first free ``name.N``), fsync the directory it left, and write the
    ``.reason`` file (see the module doc): ``origin`` and ``details`` are ``(key,
    value)`` lines.  Returns the name in the quarantine, or None when ``src`` is gone
    (nothing done).  QueueError when all names are taken."""
    qd = QueueLayout(qdir).quarantine
    try:
        os.makedirs(qd, exist_ok=True)
    except OSError as e:
        raise QueueError(f"cannot create {qd}: {e.strerror}") from None
    target = name
    for i in range(1, _MAX_COPIES):
        try:
            move_noclobber(src, os.path.join(qd, target))
            break
        except FileExistsError:
            target = f"{name}.{i}"
        except FileNotFoundError:
            return None
    else:  # pragma: no cover - a thousand quarantined copies of one name
        raise QueueError(f"too many quarantined copies of {name} in {qd}")
    fsync_dir(os.path.dirname(src) or ".")
    lines = [name, f"{origin[0]}: {origin[1]}",
             f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
             *(f"{k}: {v}" for k, v in details), f"reason: {reason}", note]
    text = "".join(ln + "\n" for ln in lines)
    # atomic_write fsyncs the quarantine directory: the moved file's entry with it
    with atomic_write(qd, target + REASON_SUFFIX, clobber=True) as w:
        w.write(text.encode("utf-8", "surrogateescape"))
    return target


def quarantined(qdir: str) -> list[str]:
    """The names in the quarantine of ``qdir`` (sorted; no ``.reason`` files, no
    temporaries); empty when there is none.  OSError if it cannot be read."""
    try:
        names = os.listdir(QueueLayout(qdir).quarantine)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.endswith(REASON_SUFFIX) and not n.startswith("."))
