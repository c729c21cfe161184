"""``fspl-gw sync`` and ``fspl-gw push``: click commands over :mod:`fspl_gateway.gateway.pull` and
:mod:`fspl_gateway.gateway.push`.

The lead's ``fspl_gateway.cli.main`` loads ``sync_cmd`` and ``push_cmd`` lazily.  For use
before (or without) it, ``python -m fspl_gateway.cli.sync sync|push …`` runs them with
the same error handling (``Error: <msg>`` and the exception's exit code).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from fspl_gateway.core.errors import EXIT_PARTIAL, FsplError
from fspl_gateway.core.log import log


class PartialFailure(FsplError):
    """The run finished, but some jobs were quarantined, conflicting or failed."""

    exit_code = EXIT_PARTIAL


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--config", "config_file", metavar="FILE", default=None,
                     help="Config file (default: $FSPL_GW_CONFIG, else "
                          "~/.config/fspl-gw/config.toml)."),
        click.option("-r", "--remote", required=True, metavar="NAME|LOCATION",
                     help="A remote named in the config file, or a literal location "
                          "(then --transport is required)."),
        click.option("-t", "--transport", default=None, metavar="NAME",
                     help="Transport: local, s3, sftp, dropbox, media, …"),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Transport option; repeatable; overrides the config file."),
        click.option("--decoder", default=None, metavar="CMD",
                     help="Shell command that decodes a job file (stdin → stdout) to read "
                          "its header."),
        click.option("-n", "--dry-run", is_flag=True, help="Only list what would be done."),
        click.option("--max-jobs", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Handle at most N jobs in this run."),
        click.option("--concurrency", type=click.IntRange(min=1), default=4,
                     show_default=True, metavar="N", help="Parallel transfers."),
        click.option("--retries", type=click.IntRange(min=1), default=5, show_default=True,
                     metavar="N",
                     help="Attempts per transfer on transient errors (exponential backoff)."),
        click.option("--wait-lock", type=click.FloatRange(min=0), default=None,
                     metavar="SECONDS",
                     help="Wait up to SECONDS for another sync/push of the same queue "
                          "(default: exit 0 at once)."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar (default: when stderr is a terminal)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _transport(config_file: str | None, remote: str, transport: str | None,
               options: tuple[str, ...]) -> Any:
    from fspl_gateway.gateway import config
    from fspl_gateway.transports.base import create

    spec = config.resolve_remote(remote, transport, options, config_file=config_file)
    log.debug("remote %s: transport %s, location %s, options %s", spec.name or "(literal)",
              spec.transport, spec.location, spec.redacted())
    return create(spec.transport, spec.location, spec.options)


def _finish(res: Any, what: str) -> None:
    if res.locked_out:
        log.info("%s: another fspl-gw sync or push is running on this queue; nothing done",
                 what)
        return
    log.info("%s", res.summary())
    if res.exit_code:
        parts = [f"{getattr(res, k)} {k}" for k in ("quarantined", "conflicts", "failed")
                 if getattr(res, k, 0)]
        raise PartialFailure(f"{what}: {', '.join(parts)} (see the messages above)")


@click.command("sync")
@_common
@click.option("-q", "--queuedir", required=True, metavar="QUEUE",
              type=click.Path(file_okay=False), help="The local queue to fill.")
@click.option("--after-fetch", type=click.Choice(["delete", "keep"]), default="delete",
              show_default=True, help="What to do with the remote copy once fetched.")
def sync_cmd(config_file: str | None, remote: str, transport: str | None,
             options: tuple[str, ...], decoder: str | None, dry_run: bool,
             max_jobs: int | None, concurrency: int, retries: int, wait_lock: float | None,
             progress: bool | None, queuedir: str, after_fetch: str) -> None:
    """Pull new jobs from a remote queue's jobs/ into a local queue."""
    from fspl_gateway.gateway.pull import RetryPolicy, SyncOptions, pull

    opts = SyncOptions(after_fetch=after_fetch, decoder=decoder, dry_run=dry_run,
                       max_jobs=max_jobs, concurrency=concurrency,
                       retry=RetryPolicy(attempts=retries), wait_lock=wait_lock,
                       progress=progress)
    t = _transport(config_file, remote, transport, options)
    try:
        res = pull(t, queuedir, opts)
    finally:
        t.close()
    _finish(res, "sync")


@click.command("push")
@_common
@click.option("-q", "--queuedir", required=True, metavar="OUTBOX",
              type=click.Path(file_okay=False), help="The local outbox queue to send.")
@click.option("--after-push", type=click.Choice(["delete", "keep"]), default="delete",
              show_default=True, help="What to do with the local job once pushed.")
def push_cmd(config_file: str | None, remote: str, transport: str | None,
             options: tuple[str, ...], decoder: str | None, dry_run: bool,
             max_jobs: int | None, concurrency: int, retries: int, wait_lock: float | None,
             progress: bool | None, queuedir: str, after_push: str) -> None:
    """Push the jobs of a local outbox queue to a remote queue's jobs/."""
    from fspl_gateway.gateway.pull import RetryPolicy
    from fspl_gateway.gateway.push import PushOptions, push

    opts = PushOptions(after_push=after_push, decoder=decoder, dry_run=dry_run,
                       max_jobs=max_jobs, concurrency=concurrency,
                       retry=RetryPolicy(attempts=retries), wait_lock=wait_lock,
                       progress=progress)
    t = _transport(config_file, remote, transport, options)
    try:
        res = push(t, queuedir, opts)
    finally:
        t.close()
    _finish(res, "push")


@click.group()
@click.option("-l", "--log-level", default="info", metavar="LEVEL")
def _standalone(log_level: str) -> None:
    from fspl_gateway.core import log as logmod

    try:
        logmod.setup(logmod.parse_level(log_level))
    except ValueError as e:
        raise click.UsageError(str(e)) from None


_standalone.add_command(sync_cmd)
_standalone.add_command(push_cmd)


def main(argv: list[str] | None = None) -> int:
    """Run ``sync``/``push`` outside the main CLI; returns the exit code."""
    try:
        _standalone.main(argv, prog_name="fspl-gw", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    except FsplError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
