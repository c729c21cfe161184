"""CLI: ``fspl-gw disperse`` and ``fspl-gw workers``."""

from __future__ import annotations

import os

import click

from fspl_gateway.cli.main import CONTEXT, process_opts, queuedir_opt, wait_lock_opt

_ON_ERROR = click.Choice(["delete", "leave", "retry"], case_sensitive=False)
_ORDER = click.Choice(["sequence", "timestamp"], case_sensitive=False)


@click.command("disperse", context_settings=CONTEXT)
@queuedir_opt
@click.option("--to", "to", multiple=True, required=True, metavar="QUEUE",
              help="A worker queue (repeat for each worker).")
@click.option("--per-worker", type=click.IntRange(1), default=1, show_default=True,
              help="Hand a worker jobs until it has this many pending.")
@click.option("--order-by", type=_ORDER, default="sequence", show_default=True)
@click.option("--on-error", type=_ON_ERROR, default="retry", show_default=True,
              help="What to do with a Fail packet in the incoming queue.")
@click.option("--key", metavar="VAR", help="Jobs with equal FSPL_SET_VAR go to one worker at a time.")
@click.option("--never-delete", is_flag=True, help="Leave consumed NOP/Fail packets in place.")
@wait_lock_opt
def disperse_cmd(queuedir: str, to: tuple[str, ...], per_worker: int, order_by: str,
                 on_error: str, key: str | None, never_delete: bool, wait_lock: float) -> None:
    """Hand the next jobs of the incoming queue (-q) to worker queues (--to) with room."""
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.disperse import DisperseOpts, disperse

    res = disperse(DisperseOpts(queuedir, list(to), per_worker, order_by.lower(),
                                on_error.lower(), never_delete, key, wait_lock))
    for name, worker in res.moved:
        log.info("%s -> %s", name, worker)
    log.info("disperse: %d handed out, %d NOP, %d Fail, %d recovered", len(res.moved),
             res.nops, res.fails, res.recovered)


@click.command("workers", context_settings=CONTEXT)
@queuedir_opt
@click.option("-n", "--workers", "n", type=click.IntRange(1), required=True,
              help="Number of parallel workers.")
@click.option("--dir", "workdir", metavar="WORKDIR",
              help="Where the worker queues live (default: QUEUEDIR.workers).")
@click.option("--key", metavar="VAR", help="Jobs with equal FSPL_SET_VAR run one at a time, in order.")
@click.option("--order-by", type=_ORDER, default="sequence", show_default=True,
              help="Order in which jobs leave the incoming queue.")
@click.option("--on-error", type=_ON_ERROR, default="retry", show_default=True)
@click.option("--output-to", type=click.Choice(["passboth", "saveboth"], case_sensitive=False),
              default="passboth", show_default=True)
@click.option("--never-delete", is_flag=True)
@click.option("--follow", is_flag=True, help="Keep running and pick up new arrivals.")
@click.option("--poll", type=click.FloatRange(0.01), default=0.5, show_default=True,
              help="With --follow: seconds between looks at the incoming queue.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On SIGTERM/SIGINT: seconds running jobs get before they are killed.")
@click.option("-t", "--transport", default=None, metavar="NAME",
              help="Many hosts, one queue: take jobs straight from this remote queue "
                   "(claimed with leases); -q is then a local work directory.")
@click.option("-r", "--remote", default=None, metavar="NAME|LOCATION",
              help="The shared remote queue (a config-file name or a location).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Transport option; repeatable.")
@click.option("--config", "config_file", default=None, metavar="FILE", help="Config file.")
@click.option("--host-id", default="", help="This host's name in claims (default: hostname-pid).")
@click.option("--lease", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Lease length in seconds (renewed every third of it).")
@click.option("--clock-skew", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Seconds an expired lease must be past its end before a takeover.")
@process_opts
def workers_cmd(queuedir: str, n: int, workdir: str | None, key: str | None, order_by: str,
                on_error: str, output_to: str, never_delete: bool, follow: bool, poll: float,
                grace: float, transport: str | None, remote: str | None,
                options: tuple[str, ...], config_file: str | None, host_id: str, lease: float,
                clock_skew: float, allow_job_params: bool, ignore_payload: bool, timeout: int | None,
                command: str, params: tuple[str, ...]) -> None:
    """Process the incoming queue (-q) with N workers running COMMAND in parallel."""
    from fspl_gateway.core.errors import FsplError
    from fspl_gateway.core.layout import jobs_dir
    from fspl_gateway.core.process import ProcessOpts
    from fspl_gateway.gateway.workers import WorkersOpts, run_workers

    proc = ProcessOpts(command, list(params), allow_job_params, ignore_payload, timeout)
    if remote is not None or transport is not None:
        _multihost(queuedir, n, remote, transport, options, config_file, host_id, lease,
                   clock_skew, on_error.lower(), follow, poll, proc)
        return
    if not os.path.isdir(jobs_dir(queuedir)):
        raise FsplError(f"{queuedir} is not a queue directory (no jobs/ in it)")
    opts = WorkersOpts(queuedir, n, workdir or queuedir.rstrip("/") + ".workers", proc, key,
                       order_by.lower(), on_error.lower(), output_to.lower(), never_delete,
                       follow, poll, grace)
    code = run_workers(opts)
    if code:
        raise FsplError("a worker stopped on an error (see above); rerun to retry")


def _multihost(workdir: str, n: int, remote: str | None, transport: str | None,
               options: tuple[str, ...], config_file: str | None, host_id: str, lease: float,
               skew: float, on_error: str, follow: bool, poll: float, proc: object) -> None:
    import signal

    from fspl_gateway.core.errors import UsageError
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway import config
    from fspl_gateway.gateway.multihost import HostOpts, run_hosts
    from fspl_gateway.transports.base import create

    if remote is None:
        raise UsageError("--transport needs --remote")
    spec = config.resolve_remote(remote, transport, options, config_file=config_file)
    t = create(spec.transport, spec.location, spec.options)
    opts = HostOpts(proc, workdir, host_id, lease, skew, on_error=on_error,  # type: ignore[arg-type]
                    follow=follow, poll=poll)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        done = run_hosts(t, opts, n)
    finally:
        t.close()
    log.info("workers: %d jobs done from %s", done, t.describe())
