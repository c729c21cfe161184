"""CLI: ``fspl-gw receipts send|fetch`` and the receipt options of sync and push
(:mod:`fspl_gateway.gateway.receipts`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli.options import CONTEXT
from fspl_gateway.core.errors import PartialFailure
from fspl_gateway.core.log import log

if TYPE_CHECKING:
    from fspl_gateway.gateway.config import RemoteSpec
    from fspl_gateway.gateway.receipt_settings import ReceiptSettings
    from fspl_gateway.gateway.receipts import FetchOptions, KeepUntil, SendOptions
    from fspl_gateway.transports.base import Transport

F = TypeVar("F", bound=Callable[..., Any])


def receipts_key_option(f: F) -> F:
    """Receiver side's signing key and output mode (sync, where --queue-id is the trust
    option's)."""
    f = click.option("--receipt-output",
                     type=opt.EnumChoice("fspl_gateway.core.outcomes:OutputMode"), default=None,
                     help="What of each job's output its ran receipt carries: sha256 and "
                          "size (digest), the first KiB (head), both, or none (default: "
                          "the remote's receipt_output, else as the queue has it, else "
                          "none). Output: jobs/<file>.out with --output-to saveboth, else "
                          "the job's stdout, teed.")(f)
    return click.option("--receipts-key", metavar="FILE", default=None,
                        help="Sign receipts with this minisign secret key (passphrase from "
                             "$FSPL_GW_KEY_PASSPHRASE).")(f)


def send_options(f: F) -> F:
    """Receiver side (receipts send, workers)."""
    f = receipts_key_option(f)
    return click.option("--queue-id", metavar="ID", default=None,
                        help="The queue id receipts name (default: HOST:QUEUE-DIR-NAME)."
                        )(f)


def fetch_options(f: F) -> F:
    """Sender side (push, receipts fetch)."""
    for o in reversed([
        click.option("--trust-key", "trust_keys", multiple=True, metavar="KEY",
                     help="Accept only receipts signed by this minisign public key (file "
                          "or RW… line; repeatable)."),
        click.option("--expect-queue", metavar="ID", default=None,
                     help="Accept only receipts from this queue id."),
        click.option("--on-failure", metavar="CMD", default=None,
                     help="Shell command run once per failed job and once per queue stuck "
                          "behind one ($FSPL_GW_ALERT, $FSPL_GW_JOB, $FSPL_GW_SEQ, "
                          "$FSPL_GW_EXIT, $FSPL_GW_REMOTE; with --receipt-output on the "
                          "receiver $FSPL_GW_OUTPUT_SHA256, $FSPL_GW_OUTPUT_HEAD)."),
        click.option("--stuck-after", type=click.FloatRange(min=0), default=None,
                     metavar="SECONDS",
                     help="Alert when the queue is stuck behind a failed job this long "
                          "(default: the remote's stuck_after, else 3600)."),
    ]):
        f = o(f)
    return f


def resolve(config_file: str | None, remote: str, transport: str | None,
            options: tuple[str, ...]) -> tuple[RemoteSpec, ReceiptSettings]:
    """The remote and its receipt settings (config keys and ``-o`` pairs; a flag given
    on the command line wins over them)."""
    from fspl_gateway.gateway import receipt_settings
    from fspl_gateway.gateway.config import resolve_remote

    spec = resolve_remote(remote, transport, options, config_file=config_file)
    return spec, receipt_settings.of_remote(spec)


def make_send_options(queue_id: str | None, receipts_key: str | None,
                      rs: ReceiptSettings | None = None,
                      receipt_output: str | None = None) -> SendOptions:
    """The receipt flags over the remote's settings (a flag wins)."""
    import dataclasses

    from fspl_gateway.cli.keys import read_passphrase
    from fspl_gateway.gateway.receipt_settings import ReceiptSettings, send_options

    rs = rs or ReceiptSettings()
    rs = dataclasses.replace(rs, queue_id=queue_id or rs.queue_id,
                             receipts_key=receipts_key or rs.receipts_key,
                             receipt_output=receipt_output or rs.receipt_output)
    return send_options(rs, lambda: read_passphrase(confirm=False))


def make_fetch_options(trust_keys: tuple[str, ...], expect_queue: str | None,
                       on_failure: str | None, stuck_after: float | None,
                       keep_until: KeepUntil | None,
                       rs: ReceiptSettings | None = None) -> FetchOptions:
    import dataclasses

    from fspl_gateway.gateway.receipt_settings import ReceiptSettings, fetch_options

    rs = rs or ReceiptSettings()
    rs = dataclasses.replace(
        rs, trust_keys=trust_keys or rs.trust_keys, expect_queue=expect_queue or rs.expect_queue,
        on_failure=on_failure or rs.on_failure,
        stuck_after=rs.stuck_after if stuck_after is None else stuck_after)
    return fetch_options(rs, keep_until)


def run_fetch(t: Transport, outbox: str, fo: FetchOptions) -> None:
    from fspl_gateway.gateway.receipts import fetch

    res = fetch(t, outbox, fo)
    log.info("%s", res.summary(t.describe()))
    if res.refused:
        raise PartialFailure(f"receipts: {res.refused} refused (see the messages above)")


@click.group("receipts", context_settings=CONTEXT)
def receipts_group() -> None:
    """Receipts: tell the sender what was delivered and what ran."""


@receipts_group.command("send", context_settings=CONTEXT)
@opt.remote()
@opt.queuedir("The receiving queue.", metavar="QUEUE")
@send_options
def send_cmd(config_file: str | None, remote: str, transport: str | None,
             options: tuple[str, ...], queuedir: str, queue_id: str | None,
             receipts_key: str | None, receipt_output: str | None) -> None:
    """Write pending receipts of QUEUE to the remote's receipts/ (sync --receipts does
    this after every sync)."""
    from fspl_gateway.gateway.receipts import send
    from fspl_gateway.gateway.remotes import open_remote

    spec, rs = resolve(config_file, remote, transport, options)
    so = make_send_options(queue_id, receipts_key, rs, receipt_output)
    t = open_remote(spec)
    try:
        send(t, queuedir, so)
    finally:
        t.close()


@receipts_group.command("fetch", context_settings=CONTEXT)
@opt.remote()
@opt.queuedir("The outbox the jobs were pushed from.", metavar="OUTBOX")
@click.option("--prune", type=opt.EnumChoice("fspl_gateway.gateway.receipts:KeepUntil"),
              default=None, help="Remove outbox jobs confirmed as delivered / ran.")
@fetch_options
def fetch_cmd(config_file: str | None, remote: str, transport: str | None,
              options: tuple[str, ...], queuedir: str, prune: KeepUntil | None,
              trust_keys: tuple[str, ...], expect_queue: str | None,
              on_failure: str | None, stuck_after: float | None) -> None:
    """Read, verify and record the remote's receipts, then remove them there."""
    from fspl_gateway.gateway.remotes import open_remote

    spec, rs = resolve(config_file, remote, transport, options)
    fo = make_fetch_options(trust_keys, expect_queue, on_failure, stuck_after, prune, rs)
    t = open_remote(spec)
    try:
        run_fetch(t, queuedir, fo)
    finally:
        t.close()
