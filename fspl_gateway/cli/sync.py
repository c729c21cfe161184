"""``fspl-gw sync`` and ``fspl-gw push``: click commands over
:mod:`fspl_gateway.gateway.pull` and :mod:`fspl_gateway.gateway.push`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli import receipts as rcpt
from fspl_gateway.cli.options import CONTEXT
from fspl_gateway.core.errors import PartialFailure
from fspl_gateway.core.log import log

if TYPE_CHECKING:
    from fspl_gateway.gateway.pull import AfterFetch, SyncResult
    from fspl_gateway.gateway.push import AfterPush, PushResult

F = TypeVar("F", bound=Callable[..., Any])


def _run_options(f: F) -> F:
    """The options sync and push share, besides the remote and -q."""
    for o in reversed([
        opt.decoder(),
        click.option("-n", "--dry-run", is_flag=True, help="Only list what would be done."),
        click.option("--max-jobs", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Handle at most N jobs in this run."),
        click.option("--concurrency", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Parallel transfers (default: the transport's: 16 on S3, else 4)."),
        click.option("--retries", type=click.IntRange(min=1), default=5, show_default=True,
                     metavar="N",
                     help="Attempts per transfer on transient errors (exponential backoff)."),
        opt.wait_lock(),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar (default: when stderr is a terminal)."),
    ]):
        f = o(f)
    return f


def finish(res: SyncResult | PushResult, what: str) -> None:
    """Report a sync/push run: one info line when the queue was busy, else the summary;
    some jobs not done → :class:`PartialFailure` (exit 3)."""
    if res.locked_out:
        log.info("%s: another fspl-gw sync or push is running on this queue; nothing done",
                 what)
        return
    summary = res.summary()  # "sync: …" or "push: …"
    log.info("%s", summary if summary.startswith(what) else f"{what}: {summary}")
    if res.exit_code:
        parts = [f"{getattr(res, k)} {k}" for k in ("quarantined", "conflicts", "failed")
                 if getattr(res, k, 0)]
        raise PartialFailure(f"{what}: {', '.join(parts)} (see the messages above)")


def _route(value: str) -> tuple[str, str]:
    key, sep, queue = value.partition("=")
    if not sep or not key.strip() or not queue.strip():
        raise click.BadParameter(f"{value!r}: use KEY=QUEUE")
    return key.strip(), queue.strip()


@click.command("sync", context_settings=CONTEXT)
@opt.remote()
@opt.queuedir("The local queue to fill.", metavar="QUEUE")
@click.option("--after-fetch", type=opt.EnumChoice(opt.AFTER_FETCH), default="delete",
              show_default=True, help="What to do with the remote copy once fetched.")
@click.option("--settle", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Fetch a file only once its size and mtime have stayed unchanged this "
                   "long (default: the remote's `settle` option, 5 s on local and SFTP "
                   "remotes; S3 and Dropbox need none).")
@_run_options
@opt.trust_receive()
@click.option("--receipts", is_flag=True,
              help="Send receipts of delivered and run jobs to the remote's receipts/ "
                   "(naming the queue --queue-id).")
@rcpt.receipts_key_option
def sync_cmd(config_file: str | None, remote: str, transport: str | None,
             options: tuple[str, ...], queuedir: str, after_fetch: AfterFetch,
             settle: float | None, decoder: str | None, dry_run: bool,
             max_jobs: int | None, concurrency: int | None, retries: int,
             wait_lock: float | None, progress: bool | None,
             trust: tuple[str, ...], queue_id: str | None, identity: tuple[str, ...],
             signature_wait: float | None, route: tuple[str, ...], receipts: bool,
             receipts_key: str | None, receipt_output: str | None) -> None:
    """Pull new jobs from a remote queue's jobs/ into a local queue.

    With trusted keys (--trust, or trusted_keys in the config) only jobs that a trusted
    key signed for this queue id get in; --route sends each key's jobs to its own queue."""
    from fspl_gateway.gateway import trust as tr
    from fspl_gateway.gateway.pull import SyncOptions
    from fspl_gateway.gateway.remotes import open_remote
    from fspl_gateway.gateway.retry import RetryPolicy
    from fspl_gateway.gateway.syncrun import sync_passes

    spec, rs = rcpt.resolve(config_file, remote, transport, options)
    so = rcpt.make_send_options(queue_id, receipts_key, rs, receipt_output) \
        if receipts or rs.receipts else None
    # --queue-id names the receipts too: alone (no trusted key) it is no trust setting
    trusting = bool(trust or route or spec.trust.get("trusted_keys") or spec.trust.get("routes"))
    policy = tr.policy_from(spec.trust, trust=trust,
                            queue_id=queue_id if trusting or so is None else None,
                            identities=identity, signature_wait=signature_wait,
                            routes=[_route(r) for r in route])
    opts = SyncOptions(after_fetch=after_fetch, decoder=decoder, dry_run=dry_run,
                       max_jobs=max_jobs, concurrency=concurrency,
                       retry=RetryPolicy(attempts=retries), wait_lock=wait_lock,
                       progress=progress, settle=settle)
    t = open_remote(spec)
    try:
        results = sync_passes(t, queuedir, opts, policy, so)
    finally:
        t.close()
    failed: list[PartialFailure] = []
    for qdir, res in results:
        try:
            finish(res, "sync" if len(results) == 1 else f"sync → {qdir}")
        except PartialFailure as e:
            failed.append(e)
    if failed:
        raise PartialFailure("; ".join(str(e) for e in failed))


@click.command("push", context_settings=CONTEXT)
@opt.remote()
@opt.queuedir("The local outbox queue to send.", metavar="OUTBOX")
@click.option("--after-push", type=opt.EnumChoice(opt.AFTER_PUSH), default="delete",
              show_default=True, help="What to do with the local job once pushed.")
@_run_options
@opt.trust_send()
@click.option("--receipts", is_flag=True,
              help="Then fetch the remote's receipts (implied by keep-until-*).")
@rcpt.fetch_options
def push_cmd(config_file: str | None, remote: str, transport: str | None,
             options: tuple[str, ...], queuedir: str, after_push: AfterPush,
             decoder: str | None, dry_run: bool, max_jobs: int | None, concurrency: int | None,
             retries: int, wait_lock: float | None, progress: bool | None,
             sign: str | None, queue_id: str | None, encrypt_to: tuple[str, ...],
             receipts: bool, trust_keys: tuple[str, ...], expect_queue: str | None,
             on_failure: str | None, stuck_after: float | None) -> None:
    """Push the jobs of a local outbox queue to a remote queue's jobs/.

    --sign writes each job's minisign signature (bound to --queue-id) before the job;
    --encrypt-to encrypts the job with age first (and the ciphertext is signed)."""
    from fspl_gateway.gateway.push import PushOptions, push
    from fspl_gateway.gateway.remotes import open_remote
    from fspl_gateway.gateway.retry import RetryPolicy
    from fspl_gateway.gateway.trust import sign_policy_from

    spec, rs = rcpt.resolve(config_file, remote, transport, options)
    opts = PushOptions(after_push=after_push, decoder=decoder, dry_run=dry_run,
                       max_jobs=max_jobs, concurrency=concurrency,
                       retry=RetryPolicy(attempts=retries), wait_lock=wait_lock,
                       progress=progress,
                       sign=sign_policy_from(spec.trust, sign=sign, queue_id=queue_id,
                                             encrypt_to=encrypt_to))
    from fspl_gateway.gateway.receipts import KeepUntil

    until = KeepUntil.of_after_push(after_push)
    fo = None
    if receipts or rs.receipts or until is not None:
        fo = rcpt.make_fetch_options(trust_keys, expect_queue, on_failure, stuck_after,
                                     until, rs)
    t = open_remote(spec)
    try:
        res = push(t, queuedir, opts)
        if fo is not None and not dry_run and not res.locked_out:
            rcpt.run_fetch(t, queuedir, fo)
    finally:
        t.close()
    finish(res, "push")
