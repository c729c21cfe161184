"""CLI: ``fspl-gw watch`` (the gateway as a service) and ``fspl-gw status``."""

from __future__ import annotations

import json
import logging
import sys

import click

from fspl_gateway.cli.main import CONTEXT
from fspl_gateway.core.errors import EXIT_ERROR, FsplError, UsageError


def _level_name() -> str:
    from fspl_gateway.core.log import TRACE, log

    lv = log.getEffectiveLevel()
    for limit, name in ((TRACE, "trace"), (logging.DEBUG, "debug"), (logging.INFO, "info"),
                        (logging.WARNING, "warn")):
        if lv <= limit:
            return name
    return "error"


@click.command("watch", context_settings=CONTEXT)
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Config file with [pipelines.NAME] tables (default: $FSPL_GW_CONFIG, "
                   "else ~/.config/fspl-gw/config.toml).")
def watch_cmd(config_file: str | None) -> None:
    """Run the config file's pipelines until SIGTERM/SIGINT (SIGHUP reloads the config).

    Remotes are polled at their interval, local queues are watched (inotify) and their
    jobs run as soon as they land, export media mounted under [watch] media_root are
    imported.  See docs/deployment.md."""
    from fspl_gateway.gateway.watch.service import run

    code = run(config_file, _level_name())
    if code:
        raise FsplError("stopped before the running jobs finished (grace period exceeded)")


class StatusFailed(FsplError):
    exit_code = EXIT_ERROR


@click.command("status", context_settings=CONTEXT)
@click.option("-q", "--queuedir", "queues", multiple=True, metavar="QUEUE",
              help="A queue directory (repeatable).")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Show every queue of this config file's pipelines (the default when "
                   "no -q is given).")
@click.option("-d", "--decoder", default=None, metavar="DECODECMD",
              help="Decode job files through this shell command to read their headers "
                   "(with -q).")
@click.option("--order-by", type=click.Choice(["sequence", "timestamp"], case_sensitive=False),
              default="sequence", show_default=True,
              help="How the -q queues are processed (timestamp queues are never blocked).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--metrics-file", default=None, metavar="PATH",
              help="Also write Prometheus text-format metrics to PATH (atomically).")
@click.option("--quiet", "-Q", is_flag=True, help="Print nothing (with --metrics-file).")
def status_cmd(queues: tuple[str, ...], config_file: str | None, decoder: str | None,
               order_by: str, as_json: bool, metrics_file: str | None, quiet: bool) -> None:
    """Show each queue's next seq, pending jobs, blocking gap, oldest job, quarantined
    files and the last sync/push of each remote.  Exit 1 if a queue cannot be read."""
    from fspl_gateway.gateway.status import collect, render_rich, render_text, write_metrics

    targets: list[tuple[str, str | None, str]] = [(qd, decoder, order_by.lower())
                                                  for qd in queues]
    if config_file is not None or not queues:
        from fspl_gateway.gateway.watch import pipelines

        cfg = pipelines.load(config_file)
        from_cfg = pipelines.status_targets(cfg)
        if not from_cfg and not queues:
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
        raise StatusFailed(f"{len(bad)} queue(s) could not be read: "
                           + "; ".join(s.error or "" for s in bad))
