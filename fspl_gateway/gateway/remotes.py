"""From what a user names to an open transport: the one place that does it.

A remote is named three ways, all resolved by :func:`fspl_gateway.gateway.config.resolve_remote`:
a ``[remotes.NAME]`` table of the config file, or a literal location with an explicit
transport, each with ``-o key=value`` overrides.  :func:`open_remote` turns that (or an
already resolved :class:`~fspl_gateway.gateway.config.RemoteSpec`, as the watch service
keeps one per pipeline) into a :class:`~fspl_gateway.transports.base.Transport`.  The
transport's SDK is imported only here, on demand, by the transport registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from fspl_gateway.core.log import log
from fspl_gateway.gateway import config
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.transports.base import Transport, create


def open_remote(remote: RemoteSpec | str | None, transport: str | None = None,
                overrides: Iterable[str] = (), *, config_file: str | None = None,
                cfg: config.Config | None = None) -> Transport:
    """A transport for ``remote``: a resolved spec, or a configured name / literal
    location as given to ``--remote`` (with ``--transport``, ``-o`` and ``--config``).
    The caller closes it."""
    pairs = tuple(overrides)
    if isinstance(remote, RemoteSpec):
        if transport is not None or pairs or config_file is not None or cfg is not None:
            raise TypeError("open_remote: a resolved RemoteSpec takes no other arguments")
        spec = remote
    else:
        spec = config.resolve_remote(remote, transport, pairs, config=cfg,
                                     config_file=config_file)
    log.debug("remote %s: transport %s, location %s, options %s", spec.name or "(literal)",
              spec.transport, spec.location, spec.redacted())
    return create(spec.transport, spec.location, spec.options)
