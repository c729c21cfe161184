"""CLI: ``fspl-gw disperse`` and ``fspl-gw workers``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli import receipts as rcpt
from fspl_gateway.cli.options import CONTEXT

if TYPE_CHECKING:
    from fspl_gateway.core.process import OnError, OrderBy, OutputTo, ProcessOpts


@click.command("disperse", context_settings=CONTEXT)
@opt.queuedir("The incoming queue.")
@click.option("--to", "to", multiple=True, required=True, metavar="QUEUE",
              shell_complete=opt.complete_dir,
              help="A worker queue (repeat for each worker).")
@click.option("--per-worker", type=click.IntRange(1), default=1, show_default=True,
              help="Hand a worker jobs until it has this many pending.")
@opt.order_by()
@opt.on_error("What to do with a Fail packet in the incoming queue.")
@click.option("--key", metavar="VAR", help="Jobs with equal FSPL_SET_VAR go to one worker at a time.")
@click.option("--never-delete", is_flag=True, help="Leave consumed NOP/Fail packets in place.")
@opt.wait_lock()
def disperse_cmd(queuedir: str, to: tuple[str, ...], per_worker: int, order_by: OrderBy,
                 on_error: OnError, key: str | None, never_delete: bool,
                 wait_lock: float | None) -> None:
    """Hand the next jobs of the incoming queue (-q) to worker queues (--to) with room."""
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.disperse import DisperseOpts, disperse

    res = disperse(DisperseOpts(queuedir, list(to), per_worker, order_by, on_error,
                                never_delete, key, wait_lock or 0.0))
    for name, worker in res.moved:
        log.info("%s -> %s", name, worker)
    log.info("disperse: %d handed out, %d NOP, %d Fail, %d recovered", len(res.moved),
             res.nops, res.fails, res.recovered)


@click.command("workers", context_settings=CONTEXT)
@opt.queuedir("The incoming queue (with --remote: a local work directory).")
@click.option("-n", "--workers", "n", type=click.IntRange(1), required=True,
              help="Number of parallel workers.")
@click.option("--dir", "workdir", metavar="WORKDIR", shell_complete=opt.complete_dir,
              help="Where the worker queues live (default: QUEUEDIR.workers).")
@click.option("--key", metavar="VAR", help="Jobs with equal FSPL_SET_VAR run one at a time, in order.")
@opt.order_by("Order in which jobs leave the incoming queue.")
@opt.on_error("What to do with a failed job (with --remote: delete or retry only).")
@opt.output_to()
@click.option("--never-delete", is_flag=True, help="Never delete processed job files.")
@click.option("--follow", is_flag=True, help="Keep running and pick up new arrivals.")
@click.option("--poll", type=click.FloatRange(0.01), default=0.5, show_default=True,
              help="With --follow: seconds between looks at the incoming queue.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On SIGTERM/SIGINT: seconds running jobs get before they are killed.")
@opt.remote(required=False)
@click.option("--host-id", default="", help="This host's name in claims (default: hostname-pid).")
@click.option("--lease", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Lease length in seconds (renewed every third of it).")
@click.option("--clock-skew", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Seconds an expired lease must be past its end before a takeover.")
@click.option("--receipts", is_flag=True,
              help="With --remote: write a receipt of each job run to the remote's receipts/.")
@rcpt.send_options
@opt.process()
def workers_cmd(queuedir: str, n: int, workdir: str | None, key: str | None, order_by: OrderBy,
                on_error: OnError, output_to: OutputTo, never_delete: bool, follow: bool,
                poll: float, grace: float, config_file: str | None, remote: str | None,
                transport: str | None, options: tuple[str, ...], host_id: str, lease: float,
                clock_skew: float, receipts: bool, queue_id: str | None,
                receipts_key: str | None, receipt_output: str | None, allow_job_params: bool,
                ignore_payload: bool, timeout: int | None, command: str,
                params: tuple[str, ...]) -> None:
    """Process the incoming queue (-q) with N workers running COMMAND in parallel.

    Many hosts, one queue: with --remote, take jobs straight from that shared remote
    queue (claimed with leases); -q is then a local work directory."""
    from fspl_gateway.core.errors import FsplError
    from fspl_gateway.core.layout import jobs_dir
    from fspl_gateway.core.process import ProcessOpts
    from fspl_gateway.gateway.workers import WorkersOpts, default_workdir, run_workers

    proc = ProcessOpts(command, list(params), allow_job_params, ignore_payload, timeout)
    if remote is not None or transport is not None:
        _multihost(queuedir, n, remote, transport, options, config_file, host_id, lease,
                   clock_skew, on_error, follow, poll, proc,
                   (receipts, queue_id, receipts_key, receipt_output))
        return
    if not os.path.isdir(jobs_dir(queuedir)):
        raise FsplError(f"{queuedir} is not a queue directory (no jobs/ in it)")
    opts = WorkersOpts(queuedir, n, workdir or default_workdir(queuedir), proc, key,
                       order_by, on_error, output_to, never_delete, follow, poll, grace)
    code = run_workers(opts)
    if code:
        raise FsplError("a worker stopped on an error (see above); rerun to retry")


def _multihost(workdir: str, n: int, remote: str | None, transport: str | None,
               options: tuple[str, ...], config_file: str | None, host_id: str, lease: float,
               skew: float, on_error: OnError, follow: bool, poll: float,
               proc: ProcessOpts,
               receipts: tuple[bool, str | None, str | None, str | None]) -> None:
    import signal

    from fspl_gateway.core.errors import UsageError
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.multihost import HostOpts, run_hosts
    from fspl_gateway.gateway.remotes import open_remote

    if remote is None:
        raise UsageError("--transport needs --remote")
    spec, rs = rcpt.resolve(config_file, remote, transport, options)
    on, queue_id, receipts_key, output = receipts
    so = rcpt.make_send_options(queue_id, receipts_key, rs, output) if on or rs.receipts \
        else None
    t = open_remote(spec)
    opts = HostOpts(proc, workdir, host_id, lease, skew, on_error=on_error, follow=follow,
                    poll=poll, receipts=so)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        done = run_hosts(t, opts, n)
    finally:
        t.close()
    log.info("workers: %d jobs done from %s", done, t.describe())
