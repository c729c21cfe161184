"""What a remote store really does: the capability probe and ``fspl-gw remote check``.

A transport *declares* :class:`~fspl_gateway.transports.base.Capabilities`, but some
stores do not keep the promise: ``rclone serve sftp`` renames over an existing file,
s3rver and some S3 gateways ignore ``If-None-Match: *``.  A second ``write_new`` of one
name then overwrites instead of failing, and claims (multi-host workers) could be won
twice.

:func:`probe_noclobber` finds out: it writes a probe object twice under a name that never
matches ``fspl-*.fspl`` (``.fspl-gw-probe-<random>``), expects the second write to be
refused, and removes the probe again.  :func:`verify_capabilities` runs it once per
remote and caches the answer in the local queue's ``.fspl-gw/capabilities.json``
(:attr:`QueueLayout.capabilities`, keyed by the remote's description, valid for
:data:`CACHE_TTL`), then lowers the transport's ``atomic_noclobber`` when the store
overwrote, so that everything that relies on it (multi-host claims refuse to start; push
applies its policy for overwriting stores) sees the truth.

:func:`check_remote` is the full report ``fspl-gw remote check`` prints: no-clobber
create, conditional writes, checksum validation, multipart listing (S3), delete
permission and clock skew.  Transport-specific checks come from an optional
``probe_store(name)`` method of the transport (S3 has one).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from fspl_gateway.core.errors import (
    AuthError,
    HostKeyError,
    NotSupportedError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import atomic_write
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.transports.base import Transport

#: A cached probe answer is trusted this long (seconds).
CACHE_TTL = 7 * 24 * 3600.0
PROBE_PREFIX = ".fspl-gw-probe-"
CACHE_VERSION = 1


def probe_name() -> str:
    """A fresh probe object name: never ``fspl-*.fspl``, never a claim name."""
    return f"{PROBE_PREFIX}{secrets.token_hex(8)}"


def _remove(t: Transport, name: str) -> bool | None:
    """Delete a probe object: True, False (not permitted) or None (could not tell)."""
    try:
        t.delete(name)
        return True
    except RemoteNotFoundError:
        return True
    except (AuthError, NotSupportedError) as e:
        log.warning("could not remove the probe object %s from %s: %s", name, t.describe(), e)
        return False
    except TransportError as e:
        log.warning("could not remove the probe object %s from %s: %s", name, t.describe(), e)
        return None


@dataclass
class NoclobberProbe:
    #: The second create of one name was refused.
    refused: bool
    #: Clock skew (store time − local time, seconds) if the listing showed the probe's mtime.
    skew: float | None = None
    deleted: bool | None = None


def probe_noclobber(t: Transport, *, with_skew: bool = False) -> NoclobberProbe:
    """Write a probe object twice; the second write must raise RemoteExistsError.  The
    probe is removed afterwards.  Errors of the first write propagate."""
    name = probe_name()
    first = b"fspl-gw capability probe 1\n"
    t0 = time.time()
    t.write_new(name, io.BytesIO(first), len(first))
    t1 = time.time()
    try:
        skew = _skew(t, name, (t0 + t1) / 2) if with_skew else None
        second = b"fspl-gw capability probe 2 (must be refused)\n"
        try:
            t.write_new(name, io.BytesIO(second), len(second))
            refused = False
        except RemoteExistsError:
            refused = True
    finally:
        deleted = _remove(t, name)
    return NoclobberProbe(refused=refused, skew=skew, deleted=deleted)


def _skew(t: Transport, name: str, when: float) -> float | None:
    try:
        for e in t.list():
            if e.name == name and e.mtime is not None:
                return round(e.mtime - when, 1) + 0.0
    except (AuthError, HostKeyError):
        raise
    except TransportError:
        return None
    return None


# -- the cache ------------------------------------------------------------------------

def _read_cache(layout: QueueLayout) -> dict[str, Any]:
    try:
        with open(layout.capabilities, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    remotes = data.get("remotes")
    return remotes if isinstance(remotes, dict) else {}


def _write_cache(layout: QueueLayout, key: str, value: dict[str, Any]) -> None:
    remotes = _read_cache(layout)
    remotes[key] = value
    try:
        os.makedirs(layout.gw, exist_ok=True)
        with atomic_write(layout.gw, os.path.basename(layout.capabilities), clobber=True) as f:
            f.write(json.dumps({"version": CACHE_VERSION, "remotes": remotes},
                               indent=1, sort_keys=True).encode() + b"\n")
    except OSError as e:
        log.warning("could not cache the capabilities of %s in %s: %s", key,
                    layout.capabilities, e.strerror or e)


def cached_noclobber(layout: QueueLayout, key: str, now: float | None = None) -> bool | None:
    """The cached probe answer for remote ``key`` if still fresh, else None."""
    rec = _read_cache(layout).get(key)
    if not isinstance(rec, dict) or not isinstance(rec.get("noclobber"), bool):
        return None
    checked = rec.get("checked")
    now = time.time() if now is None else now
    if not isinstance(checked, int | float) or not (0 <= now - checked <= CACHE_TTL):
        return None
    return bool(rec["noclobber"])


def store_noclobber(layout: QueueLayout, key: str, refused: bool) -> None:
    _write_cache(layout, key, {"noclobber": refused, "checked": time.time()})


def verify_capabilities(t: Transport, layout: QueueLayout | None) -> bool:
    """True when ``t`` really refuses to overwrite on create: declared and (from the cache
    or a fresh probe) confirmed.  A store that overwrote gets ``atomic_noclobber=False``
    on this transport object.  A probe that cannot run (no write permission, a transient
    error) is reported once and trusts the declaration, uncached."""
    caps = t.capabilities
    if not caps.atomic_noclobber or not caps.can_write:
        return False
    key = t.describe()
    answer = cached_noclobber(layout, key) if layout is not None else None
    if answer is None:
        try:
            answer = probe_noclobber(t).refused
        except (AuthError, HostKeyError):
            raise
        except TransportError as e:
            log.warning("could not probe whether %s refuses to overwrite (%s); trusting the "
                        "transport", key, e)
            return True
        if layout is not None:
            store_noclobber(layout, key, answer)
        if not answer:
            log.warning("%s overwrote an existing object on a create-only write: it cannot "
                        "refuse to overwrite (see `fspl-gw remote check`)", key)
    if not answer:
        mark_overwriting(t)
    return answer


def mark_overwriting(t: Transport) -> None:
    """Record on this transport object that its store overwrites on create."""
    t.capabilities = replace(t.capabilities, atomic_noclobber=False)  # type: ignore[misc]


# -- the full report (fspl-gw remote check) ---------------------------------------------

@dataclass
class Check:
    name: str
    #: True (good), False (lacking), None (unknown / not applicable).
    ok: bool | None
    detail: str = ""


@dataclass
class RemoteReport:
    remote: str
    transport: str
    checks: list[Check] = field(default_factory=list)
    skew: float | None = None

    def add(self, name: str, ok: bool | None, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def safe_for_claims(self) -> bool:
        c = self.get("no-clobber create")
        return bool(c and c.ok)

    def to_json(self) -> dict[str, Any]:
        return {"remote": self.remote, "transport": self.transport,
                "clock_skew_seconds": self.skew, "safe_for_multihost": self.safe_for_claims,
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}}

    def to_text(self) -> str:
        mark = {True: "yes", False: "NO", None: "?"}
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"remote {self.remote} ({self.transport})"]
        for c in self.checks:
            lines.append(f"  {c.name:<{width}}  {mark[c.ok]:<3}  {c.detail}".rstrip())
        lines.append("  multi-host workers: " + ("usable" if self.safe_for_claims else
                                                 "refused (no atomic no-clobber create)"))
        return "\n".join(lines)


def check_remote(t: Transport, layout: QueueLayout | None = None) -> RemoteReport:
    """Probe ``t`` (fresh, never from the cache) and report what it can do; the
    no-clobber answer is cached in ``layout`` when given."""
    rep = RemoteReport(remote=t.describe(), transport=t.name)
    caps = t.capabilities
    if not caps.can_write:
        rep.add("no-clobber create", None, "read-only transport")
        rep.add("delete", caps.can_delete, "declared by the transport")
        return rep
    try:
        p = probe_noclobber(t, with_skew=True)
    except (AuthError, NotSupportedError) as e:
        rep.add("write", False, str(e))
        return rep
    if p.refused and not caps.atomic_noclobber:
        rep.add("no-clobber create", False,
                "refused, but by a racy check before the write (not atomic)")
    elif p.refused:
        rep.add("no-clobber create", True, "a second create of one name was refused")
    else:
        rep.add("no-clobber create", False, "a second create of one name OVERWROTE the first")
    if layout is not None:
        store_noclobber(layout, rep.remote, p.refused and caps.atomic_noclobber)
    extra = getattr(t, "probe_store", None)
    if callable(extra):
        for name, (ok, detail) in extra(probe_name()).items():
            if name == "clock skew":
                rep.skew = ok
                continue
            rep.add(name, ok, detail)
    rep.add("delete", p.deleted, {True: "the probe object was removed",
                                  False: "not permitted (after_fetch=keep only)",
                                  None: "could not tell"}[p.deleted])
    if rep.skew is None:
        rep.skew = p.skew
    if rep.skew is None:
        rep.add("clock skew", None, "the store shows no time")
    else:
        ok = abs(rep.skew) <= 5.0
        rep.add("clock skew", ok, f"{rep.skew:+.1f} s (store - local)"
                + ("" if ok else "; leases need --clock-skew above it"))
    return rep
