"""Backends for the transport conformance suite.

Each module here (one per transport) defines a pytest fixture named
``backend_<transport>`` that yields a :class:`Backend`.  The conformance suite
(``tests/transports/test_conformance.py``) is parametrized over :data:`BACKENDS`; adding
a transport = adding a module here + one name in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fspl_gateway.transports.base import Transport

BACKENDS = ["local", "media_dir", "media_iso", "s3", "sftp", "dropbox"]


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
