"""A pipeline's remote: polled every ``interval`` seconds (a pull pipeline syncs from
it, a push pipeline pushes its outbox to it), with backoff while it fails; and, where
the transport can wait for changes (:meth:`Transport.wait_for_change`: Dropbox's
longpoll), a thread that wakes the pipeline as soon as the remote changes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fspl_gateway.core.errors import FsplError
from fspl_gateway.core.log import log
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.gateway.journal import Journal
from fspl_gateway.gateway.watch import pipelines as pl
from fspl_gateway.gateway.watch.backoff import backoff
from fspl_gateway.gateway.watch.stopaware import StopAwareTransport
from fspl_gateway.transports.base import Transport

if TYPE_CHECKING:
    from fspl_gateway.gateway.receipts import FetchOptions, SendOptions

#: After a change notification, the next wait starts at least this much later.
LONGPOLL_GAP = 0.1


def offers_longpoll(transport_name: str) -> bool:
    """True if the transport overrides :meth:`Transport.wait_for_change` (decided from
    the class, without connecting)."""
    from fspl_gateway.transports.base import load

    try:
        cls = load(transport_name)
    except FsplError:
        return False  # the pull reports it
    return getattr(cls, "wait_for_change", None) is not Transport.wait_for_change


class RemotePoller:
    """Syncs (pull) or pushes (push) one pipeline's queue with its remote; the runner
    calls :meth:`poll` when :attr:`next_poll` has come (or earlier, on a change)."""

    def __init__(self, pipe: pl.Pipeline, spec: RemoteSpec, stop: threading.Event) -> None:
        self.pipe = pipe
        self.spec = spec
        self.stop = stop
        self.transport: Transport | None = None
        #: Failed polls in a row (0: the remote is fine).
        self.failures = 0
        self.next_poll = 0.0

    def _transport(self) -> Transport:
        if self.transport is None:
            from fspl_gateway.gateway.remotes import open_remote

            self.transport = StopAwareTransport(open_remote(self.spec), self.stop)
        return self.transport

    def poll(self) -> bool:
        """One sync or push, failures logged and backed off; True when jobs were fetched
        into the queue."""
        p = self.pipe
        started = time.time()
        try:
            t = self._transport()
            fetched = self._pull(t) if p.direction == "pull" else self._push(t)
        except Exception as e:  # noqa: BLE001 - FsplError, or an SDK error we do not map
            self.failures += 1
            delay = backoff(p.interval, self.failures)
            if isinstance(e, FsplError):
                log.error("pipeline %s: %s with remote %s failed: %s; retrying in %.0f s",
                          p.name, "sync" if p.direction == "pull" else "push", p.remote, e,
                          delay)
            else:
                log.error("pipeline %s: unexpected error with remote %s: %s: %s; retrying "
                          "in %.0f s", p.name, p.remote, type(e).__name__, e, delay)
            self._record_failure(started, e)
            self.close()
            self.next_poll = time.monotonic() + delay
            return False
        if self.failures:
            log.info("pipeline %s: remote %s is back", p.name, p.remote)
        self.failures = 0
        self.next_poll = time.monotonic() + p.interval
        return fetched

    def close(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # noqa: BLE001
                pass
            self.transport = None

    def _record_failure(self, started: float, e: BaseException) -> None:
        """Record a failure the engines did not (e.g. the transport could not be made)
        in the queue's journal, for ``fspl-gw status``."""
        if self.transport is not None:
            return  # pull/push record their own failures
        try:
            with Journal(self.pipe.queue) as j:
                j.record_run(self.pipe.direction, f"{self.spec.transport}:{self.spec.location}",
                             started, False, f"error: {e}")
        except FsplError:
            pass

    def _pull(self, t: Transport) -> bool:
        from fspl_gateway.gateway.pull import AfterFetch, SyncOptions
        from fspl_gateway.gateway.retry import RetryPolicy
        from fspl_gateway.gateway.syncrun import sync_passes
        from fspl_gateway.gateway.trust import policy_from

        p = self.pipe
        policy = policy_from(self.spec.trust)  # trust configured: no unsigned job gets in
        opts = SyncOptions(after_fetch=AfterFetch(p.after), decoder=p.decoder, concurrency=p.concurrency,
                           retry=RetryPolicy(attempts=p.retries), progress=False)
        fetched = 0
        for qdir, res in sync_passes(t, p.queue, opts, policy, _receipts(self.spec)):
            if res.locked_out:
                log.debug("pipeline %s: another sync/push holds %s; next time", p.name, qdir)
                continue
            fetched += res.fetched
            level = (logging.WARNING if res.exit_code else logging.INFO if res.fetched
                     else logging.DEBUG)
            where = "" if qdir == p.queue else f" → {qdir}"
            log.log(level, "pipeline %s%s: %s", p.name, where, res.summary())
        return fetched > 0

    def _push(self, t: Transport) -> bool:
        from fspl_gateway.gateway.push import AfterPush, PushOptions, push
        from fspl_gateway.gateway.retry import RetryPolicy

        p = self.pipe
        batch = max(8, (p.concurrency or t.default_concurrency()) * 2)
        while not self.stop.is_set():
            opts = PushOptions(after_push=AfterPush(p.after), decoder=p.decoder, max_jobs=batch,
                               concurrency=p.concurrency, retry=RetryPolicy(attempts=p.retries),
                               progress=False)
            res = push(t, p.queue, opts)
            if res.locked_out:
                return False
            level = (logging.WARNING if res.exit_code else logging.INFO if res.pushed
                     else logging.DEBUG)
            log.log(level, "pipeline %s: %s", p.name, res.summary())
            if res.pushed < batch or res.exit_code or p.after == "keep":
                break
        fo = _fetch_options(self.spec, AfterPush(p.after))
        if fo is not None and not self.stop.is_set():
            from fspl_gateway.gateway.receipts import fetch

            got = fetch(t, p.queue, fo)
            level = (logging.WARNING if got.refused else logging.INFO
                     if got.receipts or got.pruned else logging.DEBUG)
            log.log(level, "pipeline %s: %s", p.name, got.summary(t.describe()))
        return False


def _receipts(spec: RemoteSpec) -> SendOptions | None:
    """The remote's receipt settings (``receipts = true`` in its config table), for a
    pull pipeline to send receipts after each sync; a key's passphrase comes from
    ``$FSPL_GW_KEY_PASSPHRASE`` only (a service has no terminal)."""
    import os

    from fspl_gateway.core.errors import UsageError
    from fspl_gateway.gateway import receipt_settings as rset

    rs = rset.of_remote(spec)
    if not rs.receipts:
        return None

    def passphrase() -> str:
        pw = os.environ.get("FSPL_GW_KEY_PASSPHRASE")
        if not pw:
            raise UsageError("the receipts key is encrypted: set $FSPL_GW_KEY_PASSPHRASE")
        return pw
    return rset.send_options(rs, passphrase)


def _fetch_options(spec: RemoteSpec, after: object) -> FetchOptions | None:
    """For a push pipeline: fetch receipts after each round when the remote has
    ``receipts = true`` or the pipeline keeps jobs until their receipt (``after =
    "keep-until-delivered"|"keep-until-ran"``, which then prunes them), as ``push``
    does; None: no receipts."""
    from fspl_gateway.gateway import receipt_settings as rset
    from fspl_gateway.gateway.receipts import KeepUntil

    rs = rset.of_remote(spec)
    until = KeepUntil.of_after_push(str(after))
    if not rs.receipts and until is None:
        return None
    return rset.fetch_options(rs, until)


class LongPoller:
    """A daemon thread that waits on the remote (its own transport instance) and calls
    ``on_change`` when it may have changed; errors back off like polls do (the interval
    polls go on meanwhile).  Never joined: it cannot delay shutdown."""

    def __init__(self, pipe: pl.Pipeline, spec: RemoteSpec, stop: threading.Event,
                 on_change: Callable[[], None]) -> None:
        self.pipe = pipe
        self.spec = spec
        self.stop = stop
        self.on_change = on_change
        self.thread = threading.Thread(target=self._main, name=f"longpoll-{pipe.name}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        from fspl_gateway.gateway.remotes import open_remote

        p = self.pipe
        t: Transport | None = None
        failures = 0
        announced = False
        try:
            while not self.stop.is_set():
                try:
                    if t is None:
                        t = open_remote(self.spec)
                    changed = t.wait_for_change(max(p.interval, 1.0))
                except Exception as e:  # noqa: BLE001 - FsplError or an unmapped SDK error
                    failures += 1
                    delay = backoff(p.interval, failures)
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "pipeline %s: waiting for changes on remote %s failed: %s; "
                            "trying again in %.0f s (polling every %g s meanwhile)",
                            p.name, p.remote, e, delay, p.interval)
                    if t is not None:
                        with contextlib.suppress(Exception):
                            t.close()
                        t = None
                    self.stop.wait(delay)
                    continue
                if changed is None:
                    return
                if not announced:
                    log.info("pipeline %s: remote %s reports changes (longpoll): pulling "
                             "as soon as a job lands there, and every %g s", p.name,
                             p.remote, p.interval)
                    announced = True
                failures = 0
                if changed and not self.stop.is_set():
                    log.debug("pipeline %s: remote %s may have changed (longpoll)",
                              p.name, p.remote)
                    self.on_change()
                    self.stop.wait(LONGPOLL_GAP)
        finally:
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()
