"""``fspl-gw remote check``: probe a remote store and print what it can do
(:mod:`fspl_gateway.gateway.probe`)."""

from __future__ import annotations

import json

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli.options import CONTEXT


@click.group("remote", context_settings=CONTEXT)
def remote_group() -> None:
    """Look at a remote store before trusting it."""


@remote_group.command("check", context_settings=CONTEXT)
@click.argument("name", required=False, metavar="[NAME]")
@opt.remote(required=False)
@click.option("-q", "--queuedir", default=None, metavar="QUEUE",
              type=click.Path(file_okay=False), shell_complete=opt.complete_dir,
              help="Also cache the no-clobber answer in this local queue's .fspl-gw/.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(name: str | None, config_file: str | None, remote: str | None,
              transport: str | None, options: tuple[str, ...], queuedir: str | None,
              as_json: bool) -> None:
    """Probe the remote NAME (or -r/-t/-o as for sync): no-clobber create, conditional
    writes, checksum validation, multipart listing, delete permission, clock skew.

    It writes and removes probe objects named .fspl-gw-probe-* in the remote's jobs/
    (never fspl-*.fspl)."""
    from fspl_gateway.core.errors import UsageError
    from fspl_gateway.core.layout import QueueLayout
    from fspl_gateway.gateway.probe import check_remote
    from fspl_gateway.gateway.remotes import open_remote

    if name is not None and remote is not None:
        raise UsageError("give the remote either as NAME or with -r, not both")
    target = name if name is not None else remote
    if target is None:
        raise UsageError("which remote? give its NAME (or -r LOCATION -t TRANSPORT)")
    t = open_remote(target, transport, options, config_file=config_file)
    try:
        rep = check_remote(t, QueueLayout(queuedir) if queuedir else None)
    finally:
        t.close()
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        click.echo(rep.to_text())
