"""The transport a watch pipeline hands the sync engine: the remote's own transport,
wrapped so that a stop request (SIGTERM, a reload) starts no new download."""

from __future__ import annotations

import threading

from fspl_gateway.core.errors import RemoteNotFoundError
from fspl_gateway.transports.base import Transport
from fspl_gateway.transports.wrapper import DelegatingTransport


class StopAwareTransport(DelegatingTransport):
    """Once ``stop`` is set, no new download starts: ``open``, ``fetch`` and
    ``fetch_to_path`` report the file as gone, which the pull engine skips quietly
    (nothing staged, nothing linked, the remote copy left for the next run).  A download
    already running completes and is linked into ``jobs/`` as usual.  Everything else is
    the inner transport's, fast paths included."""

    DOWNLOADS = frozenset({"open", "fetch", "fetch_to_path"})

    def __init__(self, inner: Transport, stop: threading.Event) -> None:
        super().__init__(inner)
        self.stop = stop

    def before(self, op: str, name: str) -> None:
        if op in self.DOWNLOADS and self.stop.is_set():
            raise RemoteNotFoundError(f"{name}: not fetched, stopping")
