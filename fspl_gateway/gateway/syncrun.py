"""One sync of a remote into its queue or queues, as ``fspl-gw sync`` and a watch pull
pipeline both run it: with routes (:func:`~fspl_gateway.gateway.trust.routed_passes`)
one pull pass per origin's queue, the ``queuedir`` pass last; with receipts on, each
queue is receipted before its pass (what it delivers is receipted) and sends its own
receipts after, unless another run held its lock."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fspl_gateway.gateway.pull import SyncOptions, SyncResult, pull
from fspl_gateway.transports.base import Transport

if TYPE_CHECKING:
    from fspl_gateway.gateway.receipts import SendOptions
    from fspl_gateway.gateway.trust import TrustPolicy


def sync_passes(t: Transport, queuedir: str, opts: SyncOptions,
                policy: TrustPolicy | None = None,
                receipts: SendOptions | None = None) -> list[tuple[str, SyncResult]]:
    """Pull from ``t`` into ``queuedir`` (and its routes' queues); (queue, result) per
    pass, the ``queuedir`` pass last.  ``opts.trust`` is set per pass from ``policy``."""
    if policy is not None:
        from fspl_gateway.gateway.trust import routed_passes

        passes: list[tuple[str, TrustPolicy | None]] = list(routed_passes(policy, queuedir))
    else:
        passes = [(queuedir, None)]
    sending = receipts is not None and not opts.dry_run
    if sending:
        from fspl_gateway.gateway.receipts import enable

        for qdir, _ in passes:
            enable(qdir, receipts.output if receipts is not None else None)
    results = [(qdir, pull(t, qdir, dataclasses.replace(opts, trust=pol)))
               for qdir, pol in passes]
    if sending:
        from fspl_gateway.gateway.receipts import send

        for qdir, res in results:
            if not res.locked_out:
                send(t, qdir, receipts)
    return results
