"""CLI: ``fspl-gw watch`` (the gateway as a service) and ``fspl-gw status``."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli.options import CONTEXT
from fspl_gateway.core.errors import FsplError, UsageError

if TYPE_CHECKING:
    from fspl_gateway.core.process import OrderBy


def _level_name() -> str:
    from fspl_gateway.core.log import TRACE, log

    lv = log.getEffectiveLevel()
    for limit, name in ((TRACE, "trace"), (logging.DEBUG, "debug"), (logging.INFO, "info"),
                        (logging.WARNING, "warn")):
        if lv <= limit:
            return name
    return "error"


@click.command("watch", context_settings=CONTEXT)
@opt.config("Config file with [pipelines.NAME] tables (default: $FSPL_GW_CONFIG, else "
            "~/.config/fspl-gw/config.toml).")
def watch_cmd(config_file: str | None) -> None:
    """Run the config file's pipelines until SIGTERM/SIGINT (SIGHUP reloads the config).

    Remotes are polled at their interval, local queues are watched (inotify) and their
    jobs run as soon as they land, export media mounted under [watch] media_root are
    imported.  See docs/deployment.md."""
    from fspl_gateway.gateway.watch.service import run

    code = run(config_file, _level_name())
    if code:
        raise FsplError("stopped before the running jobs finished (grace period exceeded)")


@click.command("status", context_settings=CONTEXT)
@opt.queuedir("A queue directory (repeatable).", metavar="QUEUE", multiple=True)
@opt.config("Show every queue of this config file's pipelines (the default when no -q is "
            "given).")
@opt.decoder()
@opt.order_by("How the -q queues are processed (timestamp queues are never blocked).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--metrics-file", default=None, metavar="PATH", shell_complete=opt.complete_file,
              help="Also write Prometheus text-format metrics to PATH (atomically).")
@click.option("--quiet", "-Q", is_flag=True, help="Print nothing (with --metrics-file).")
def status_cmd(queuedirs: tuple[str, ...], config_file: str | None, decoder: str | None,
               order_by: OrderBy, as_json: bool, metrics_file: str | None, quiet: bool) -> None:
    """Show each queue's next seq, pending jobs, blocking gap, oldest job, quarantined
    files and the last sync/push of each remote.  Exit 1 if a queue cannot be read."""
    from fspl_gateway.gateway.status import collect, render_rich, render_text, write_metrics

    targets: list[tuple[str, str | None, str]] = [(qd, decoder, order_by) for qd in queuedirs]
    if config_file is not None or not queuedirs:
        from fspl_gateway.gateway.watch import pipelines

        cfg = pipelines.load(config_file)
        from_cfg = pipelines.status_targets(cfg)
        if not from_cfg and not queuedirs:
            raise UsageError("no queue to show: give -q QUEUE or --config FILE with "
                             "[pipelines.NAME] tables")
        have = {t[0] for t in targets}
        targets += [t for t in from_cfg if t[0] not in have]
    statuses = collect(targets)
    if metrics_file:
        write_metrics(metrics_file, statuses)
    if not quiet:
        if as_json:
            click.echo(json.dumps({"queues": [s.to_json() for s in statuses]}, indent=2,
                                  ensure_ascii=False))
        elif sys.stdout.isatty():
            try:
                render_rich(statuses)
            except ImportError:
                click.echo(render_text(statuses), nl=False)
        else:
            click.echo(render_text(statuses), nl=False)
    bad = [s for s in statuses if s.error]
    if bad:
        raise FsplError(f"{len(bad)} queue(s) could not be read: "
                           + "; ".join(s.error or "" for s in bad))
