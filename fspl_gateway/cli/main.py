"""The ``fspl-gw`` command line: every fspl 1.2 subcommand with its options, plus the
gateway commands (sync, push, export, import, disperse, workers, watch, status), which
are loaded only when used so that core commands start fast and never import an SDK.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.shell_completion import CompletionItem

from fspl_gateway import FSPL_COMPAT_VERSION, __version__
from fspl_gateway.cli import options as opt
from fspl_gateway.cli.options import CONTEXT
from fspl_gateway.core.errors import EXIT_ERROR, FsplError

if TYPE_CHECKING:
    from fspl_gateway.core.process import OnError, OrderBy, OutputTo

#: Gateway commands: name → "module:attribute" of a click.Command, imported on use (also
#: by shell completion and the man page, through FsplGroup.get_command).
LAZY_COMMANDS = {
    "sync": "fspl_gateway.cli.sync:sync_cmd",
    "push": "fspl_gateway.cli.sync:push_cmd",
    "export": "fspl_gateway.cli.media:export_cmd",
    "import": "fspl_gateway.cli.media:import_cmd",
    "disperse": "fspl_gateway.cli.parallel:disperse_cmd",
    "workers": "fspl_gateway.cli.parallel:workers_cmd",
    "watch": "fspl_gateway.cli.watch:watch_cmd",
    "status": "fspl_gateway.cli.watch:status_cmd",
    "keygen": "fspl_gateway.cli.keys:keygen_cmd",
    "receipts": "fspl_gateway.cli.receipts:receipts_group",
    "remote": "fspl_gateway.cli.remote:remote_group",
}

LICENSE_TEXT = """fspl-gateway {v}

Copyright (c) the fspl-gateway authors. Released under the MIT License.

fspl-gateway is an independent implementation of the Filespooler packet format and
command line (Filespooler is by John Goerzen, GPL-3.0+); it contains no Filespooler code.
"""


class FsplGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for name, target in LAZY_COMMANDS.items():
            if _module_exists(target):
                names.add(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        modname, attr = LAZY_COMMANDS[name].split(":")
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                return None
            raise
        cmd = getattr(mod, attr, None)
        return cmd if isinstance(cmd, click.Command) else None


def _module_exists(target: str) -> bool:
    from importlib.util import find_spec

    return find_spec(target.split(":")[0]) is not None


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"filespooler {FSPL_COMPAT_VERSION} (fspl-gw {__version__})")
        ctx.exit(0)


def _complete_level(_ctx: click.Context, _param: click.Parameter,
                    incomplete: str) -> list[CompletionItem]:
    names = ("trace", "debug", "info", "warn", "error")
    return [CompletionItem(n) for n in names if n.startswith(incomplete.lower())]


def _level(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    from fspl_gateway.core.log import parse_level

    try:
        return parse_level(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.group(cls=FsplGroup, context_settings=CONTEXT)
@click.option("-l", "--log-level", "level", default="info", metavar="LEVEL", callback=_level,
              shell_complete=_complete_level, help="Logging to stderr: trace, debug, info, warn, error (default info).")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version, help="Print the version and exit.")
def cli(level: int) -> None:
    """fspl-gw: a Filespooler-compatible job queue, and a gateway that moves job files
    over S3, SFTP, Dropbox, local directories, USB sticks and CDs."""
    from fspl_gateway.core.log import setup

    setup(level)


def _out() -> Any:
    return sys.stdout.buffer


# -- prepare side ----------------------------------------------------------------------
def _next_seq(seqfile: str, wait: float | None) -> int:
    if seqfile == "-":
        return 1
    from fspl_gateway.core.seqfile import SeqFile

    with SeqFile(seqfile, wait=wait or 0.0) as sf:
        return sf.increment()


def _emit_header(meta: Any) -> None:
    from fspl_gateway.core.packet import encode_header

    out = _out()
    out.write(encode_header(meta))
    out.flush()


@cli.command("prepare", context_settings=CONTEXT)
@opt.seqfile()
@click.option("-i", "--input", "input_", metavar="INPUT", shell_complete=opt.complete_file,
              help='Payload file; "-" for stdin.')
@opt.wait_lock()
@click.argument("params", nargs=-1, metavar="[-- PARAMS]...")
def prepare_cmd(seqfile: str, input_: str | None, wait_lock: float | None, params: tuple[str, ...]) -> None:
    """Write a job packet to stdout (FSPL_SET_* variables are carried along)."""
    from fspl_gateway.core.fsutil import copy_fd
    from fspl_gateway.core.packet import Meta, env_from_environ, make_command

    src = None
    if input_ is not None and input_ != "-":
        src = os.open(input_, os.O_RDONLY | os.O_CLOEXEC)  # fail before using a seq
    cmd = make_command((os.fsencode(p) for p in params), env_from_environ())
    meta = Meta(seq=_next_seq(seqfile, wait_lock), cmd=cmd)
    _emit_header(meta)
    if input_ == "-":
        copy_fd(0, 1)
    elif src is not None:
        copy_fd(src, 1)
        os.close(src)


@cli.command("prepare-nop", context_settings=CONTEXT)
@opt.seqfile()
@opt.wait_lock()
def prepare_nop_cmd(seqfile: str, wait_lock: float | None) -> None:
    """Write a NOP packet (always succeeds) to stdout."""
    from fspl_gateway.core.packet import Meta

    _emit_header(Meta(seq=_next_seq(seqfile, wait_lock), cmd="NOP"))


@cli.command("prepare-fail", context_settings=CONTEXT)
@opt.seqfile()
@opt.wait_lock()
def prepare_fail_cmd(seqfile: str, wait_lock: float | None) -> None:
    """Write a Fail packet (always fails) to stdout."""
    from fspl_gateway.core.packet import Meta

    _emit_header(Meta(seq=_next_seq(seqfile, wait_lock), cmd="Fail"))


@cli.command("prepare-get-next", context_settings=CONTEXT)
@opt.seqfile()
@opt.wait_lock()
def prepare_get_next_cmd(seqfile: str, wait_lock: float | None) -> None:
    """Print the next sequence number prepare will use."""
    from fspl_gateway.core.seqfile import SeqFile

    with SeqFile(seqfile, wait=wait_lock or 0.0) as sf:
        click.echo(sf.next)


@cli.command("prepare-set-next", context_settings=CONTEXT)
@opt.seqfile()
@opt.wait_lock()
@click.argument("nextid", type=click.IntRange(0, 2**64 - 1), metavar="ID")
def prepare_set_next_cmd(seqfile: str, wait_lock: float | None, nextid: int) -> None:
    """Set the next sequence number prepare will use."""
    from fspl_gateway.core.seqfile import SeqFile

    with SeqFile(seqfile, wait=wait_lock or 0.0) as sf:
        sf.set(nextid)


# -- queue side ------------------------------------------------------------------------
@cli.command("queue-init", context_settings=CONTEXT)
@opt.queuedir()
@click.option("--append-only", is_flag=True, help="No sequence file: a queue only written to.")
def queue_init_cmd(queuedir: str, append_only: bool) -> None:
    """Create a queue directory."""
    from fspl_gateway.core.queue import queue_init

    queue_init(queuedir, append_only)


@cli.command("queue-write", context_settings=CONTEXT)
@opt.queuedir()
def queue_write_cmd(queuedir: str) -> None:
    """Save a packet from stdin into the queue (appears whole or not at all)."""
    from fspl_gateway.core.queue import queue_write

    queue_write(queuedir, 0)


@cli.command("queue-ls", context_settings=CONTEXT)
@opt.queuedir()
@opt.decoder()
def queue_ls_cmd(queuedir: str, decoder: str | None) -> None:
    """List the jobs in a queue, by sequence number."""
    from fspl_gateway.core.queue import scan

    jobs = sorted(scan(queuedir, decoder), key=lambda j: j.meta.seq)
    out = _out()
    lines = [b"%-20s %-27s filename\n" % (b"ID", b"creation timestamp")]
    for j in jobs:
        lines.append(b"%-20d %-27s %s\n" % (j.meta.seq, j.meta.rfc3339_local().encode(),
                                            os.fsencode(j.filename)))
    out.write(b"".join(lines))
    out.flush()


@cli.command("queue-info", context_settings=CONTEXT)
@opt.queuedir()
@opt.decoder()
@opt.job()
def queue_info_cmd(queuedir: str, decoder: str | None, job: int) -> None:
    """Show the metadata of one job as shell-style variables."""
    from fspl_gateway.core.queue import find_job

    j = find_job(queuedir, job, decoder)
    out = _out()
    out.write(j.meta.render(os.fsencode(j.filename), os.fsencode(queuedir)))
    out.flush()


@cli.command("queue-payload", context_settings=CONTEXT)
@opt.queuedir()
@opt.decoder()
@opt.job()
def queue_payload_cmd(queuedir: str, decoder: str | None, job: int) -> None:
    """Write one job's payload to stdout."""
    from fspl_gateway.core.fsutil import copy_fd
    from fspl_gateway.core.queue import find_job, open_job

    j = find_job(queuedir, job, decoder)
    sys.stdout.flush()
    with open_job(queuedir, j.filename, decoder) as oj:
        copy_fd(oj.fd, 1)


@cli.command("queue-get-next", context_settings=CONTEXT)
@opt.queuedir()
@opt.wait_lock()
def queue_get_next_cmd(queuedir: str, wait_lock: float | None) -> None:
    """Print the queue's next sequence number."""
    from fspl_gateway.core.queue import seqfile_path
    from fspl_gateway.core.seqfile import SeqFile

    with SeqFile(seqfile_path(queuedir), create_lock=False, wait=wait_lock or 0.0) as sf:
        click.echo(sf.next)


@cli.command("queue-set-next", context_settings=CONTEXT)
@opt.queuedir()
@opt.wait_lock()
@click.argument("nextid", type=click.IntRange(0, 2**64 - 1), metavar="ID")
def queue_set_next_cmd(queuedir: str, wait_lock: float | None, nextid: int) -> None:
    """Set the queue's next sequence number."""
    from fspl_gateway.core.queue import seqfile_path
    from fspl_gateway.core.seqfile import SeqFile

    with SeqFile(seqfile_path(queuedir), create_lock=False, wait=wait_lock or 0.0) as sf:
        sf.set(nextid)


@cli.command("queue-process", context_settings=CONTEXT)
@opt.queuedir()
@opt.decoder()
@opt.on_error()
@opt.order_by()
@click.option("--never-delete", is_flag=True, help="Never delete processed job files.")
@click.option("-n", "--maxjobs", type=click.IntRange(0), metavar="JOBS", help="Run at most JOBS jobs.")
@opt.output_to()
@opt.wait_lock()
@opt.process()
def queue_process_cmd(queuedir: str, decoder: str | None, on_error: OnError, order_by: OrderBy,
                      never_delete: bool, maxjobs: int | None, output_to: OutputTo,
                      wait_lock: float | None,
                      allow_job_params: bool, ignore_payload: bool, timeout: int | None,
                      command: str, params: tuple[str, ...]) -> None:
    """Run the queue's jobs through COMMAND."""
    from fspl_gateway.core.process import ProcessOpts, QueueProcessOpts, queue_process

    proc = ProcessOpts(command, list(params), allow_job_params, ignore_payload, timeout)
    queue_process(QueueProcessOpts(queuedir, proc, decoder, on_error, order_by, never_delete,
                                   maxjobs, output_to, wait_lock or 0.0))


# -- stdin side ------------------------------------------------------------------------
@cli.command("stdin-info", context_settings=CONTEXT)
def stdin_info_cmd() -> None:
    """Show the metadata of the packet on stdin."""
    from fspl_gateway.core.packet import read_header_fd

    meta, _ = read_header_fd(0)
    out = _out()
    out.write(meta.render())
    out.flush()


@cli.command("stdin-payload", context_settings=CONTEXT)
def stdin_payload_cmd() -> None:
    """Write the payload of the packet on stdin to stdout."""
    from fspl_gateway.core.fsutil import copy_fd
    from fspl_gateway.core.packet import read_header_fd

    read_header_fd(0)
    copy_fd(0, 1)


@cli.command("stdin-process", context_settings=CONTEXT)
@opt.process()
def stdin_process_cmd(allow_job_params: bool, ignore_payload: bool, timeout: int | None,
                      command: str, params: tuple[str, ...]) -> None:
    """Run the packet on stdin through COMMAND (payload on its stdin)."""
    from fspl_gateway.core.process import ProcessOpts, stdin_process

    stdin_process(ProcessOpts(command, list(params), allow_job_params, ignore_payload, timeout))


# -- misc ------------------------------------------------------------------------------
@cli.command("gen-uuid", context_settings=CONTEXT)
def gen_uuid_cmd() -> None:
    """Print a random UUID."""
    import uuid

    click.echo(str(uuid.uuid4()))


@cli.command("gen-filename", context_settings=CONTEXT)
def gen_filename_cmd() -> None:
    """Print a fresh fspl-*.fspl file name."""
    from fspl_gateway.core.queue import new_job_filename

    click.echo(new_job_filename())


@cli.command("show-license", context_settings=CONTEXT)
def show_license_cmd() -> None:
    """Show the license."""
    click.echo(LICENSE_TEXT.format(v=__version__))


def _fail(msg: str, code: int) -> NoReturn:
    try:
        sys.stdout.flush()
    except Exception:
        pass
    from fspl_gateway.core.redact import redact

    print(f"Error: {redact(msg)}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click, with our errors mapped to one line + exit code."""
    try:
        cli.main(args=argv, prog_name="fspl-gw", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except FsplError as e:
        _fail(str(e), e.exit_code)
    except BrokenPipeError:
        # Reader went away (e.g. `| head`): quietly stop, as a POSIX tool would.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        _fail(f"{e.strerror or e}{where}", EXIT_ERROR)


if __name__ == "__main__":
    main()
