"""The receipt settings of a remote: the keys of a ``[remotes.NAME]`` table (or ``-o``
pairs) that are the gateway's, not the transport's.

They mirror the receipt flags (a flag given on the command line wins)::

    [remotes.site-b]
    transport = "s3"
    location = "bucket/q"
    receipts = true                 # sync sends receipts, push fetches them (--receipts)
    queue_id = "site-b"             # --queue-id (receiver)
    receipts_key = "~/.config/fspl-gw/receipts.key"   # --receipts-key (receiver)
    receipt_output = "digest"       # --receipt-output none|digest|head|both (receiver)
    trust_keys = ["~/keys/site-b.pub"]                # --trust-key (sender)
    expect_queue = "site-b"         # --expect-queue (sender)
    on_failure = "mail -s failed ops@example.org"     # --on-failure (sender)
    stuck_after = "1h"              # --stuck-after (sender)

:func:`fspl_gateway.gateway.config.resolve_remote` moves these keys from the options to
:attr:`RemoteSpec.settings` (``queue_id``, also a trust setting, to :attr:`RemoteSpec.trust`:
:func:`of_remote` reads it from there); they are parsed by the one option parser
(:mod:`fspl_gateway.transports.options`) with :data:`SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.outcomes import OutputMode
from fspl_gateway.transports.options import Option, OptionSchema, OptionType

if TYPE_CHECKING:
    from fspl_gateway.gateway.config import RemoteSpec
    from fspl_gateway.gateway.receipts import FetchOptions, KeepUntil, SendOptions


SCHEMA = OptionSchema(
    Option("receipts", OptionType.BOOL, "Receipts on for this remote: sync sends them, push "
           "fetches them (as --receipts).", default=False),
    Option("queue_id", OptionType.STR, "The queue id receipts name (as --queue-id)."),
    Option("receipts_key", OptionType.PATH, "Sign receipts with this minisign secret key "
           "(as --receipts-key)."),
    Option("receipt_output", OptionType.CHOICE, "What of each job's output its ran receipt "
           "carries: its sha256 (digest), its first KiB (head), both, or none (as "
           "--receipt-output).", choices=tuple(OutputMode)),
    Option("trust_keys", OptionType.PATH, "Accept only receipts signed by these minisign "
           "public keys (as --trust-key; a list or comma-separated).", multiple=True),
    Option("expect_queue", OptionType.STR, "Accept only receipts from this queue id (as "
           "--expect-queue)."),
    Option("on_failure", OptionType.STR, "Alert command (as --on-failure)."),
    Option("stuck_after", OptionType.DURATION, "Alert when stuck this long (as "
           "--stuck-after).", default=3600.0),
)
#: The keys of a remote's table that are receipt settings, not transport options.
KEYS = frozenset(o.name for o in SCHEMA)


@dataclass(frozen=True)
class ReceiptSettings:
    receipts: bool = False
    queue_id: str | None = None
    receipts_key: str | None = None
    trust_keys: tuple[str, ...] = ()
    expect_queue: str | None = None
    on_failure: str | None = None
    stuck_after: float = 3600.0
    receipt_output: str | None = None


def parse(raw: Mapping[str, Any], remote: str = "remote") -> ReceiptSettings:
    """The settings of ``raw`` (ConfigError, one line, for a bad value)."""
    v = SCHEMA.parse(raw, f"remote {remote}", environ={})
    return ReceiptSettings(bool(v["receipts"]), v["queue_id"], v["receipts_key"],
                           tuple(v["trust_keys"] or ()), v["expect_queue"], v["on_failure"],
                           float(v["stuck_after"]), v["receipt_output"])


def of_remote(spec: RemoteSpec) -> ReceiptSettings:
    """The receipt settings of ``spec``.  ``queue_id`` is also a trust setting (one key,
    one meaning: the queue's id): :func:`~fspl_gateway.gateway.config.resolve_remote`
    files it under :attr:`RemoteSpec.trust`, so it is taken from there when
    :attr:`RemoteSpec.settings` (e.g. ``-o queue_id=…``) has none."""
    raw = dict(spec.settings)
    if raw.get("queue_id") is None and spec.trust.get("queue_id") is not None:
        raw["queue_id"] = spec.trust["queue_id"]
    return parse(raw, spec.name or spec.location)


def send_options(rs: ReceiptSettings, passphrase: Callable[[], str]) -> SendOptions:
    """The receiver's :class:`~fspl_gateway.gateway.receipts.SendOptions` of ``rs``: its
    signing key read (``passphrase`` is asked only for an encrypted key)."""
    from fspl_gateway.core.minisign import read_secret_key, secret_key_is_encrypted
    from fspl_gateway.gateway.receipts import SendOptions

    key = None
    if rs.receipts_key is not None:
        try:
            with open(rs.receipts_key, encoding="utf-8", errors="replace") as f:
                encrypted = secret_key_is_encrypted(f.read(8192))
        except OSError as e:
            raise ConfigError(f"receipts key {rs.receipts_key}: {e.strerror}") from None
        key = read_secret_key(rs.receipts_key, passphrase() if encrypted else None)
    return SendOptions(queue_id=rs.queue_id, sign_key=key,
                       output=None if rs.receipt_output is None
                       else OutputMode(rs.receipt_output))


def fetch_options(rs: ReceiptSettings, keep_until: KeepUntil | None) -> FetchOptions:
    """The sender's :class:`~fspl_gateway.gateway.receipts.FetchOptions` of ``rs`` (its
    trust keys read)."""
    from fspl_gateway.gateway.receipts import FetchOptions, load_trust_keys

    return FetchOptions(trust_keys=load_trust_keys(rs.trust_keys),
                        expect_queue=rs.expect_queue, keep_until=keep_until,
                        on_failure=rs.on_failure, stuck_after=rs.stuck_after)
