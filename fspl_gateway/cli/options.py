"""The options that several commands share, each declared once.

Every factory returns a click decorator; a command stacks the ones it takes, e.g.
``@opt.queuedir()``.  Declaring an option imports nothing but click: the value sets of
``--on-error`` and the like come from the engine's enums, imported only when an option is
parsed, shown or completed, so core commands start lean.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply ``decorators`` so that the options show in the order given."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def complete_dir(_ctx: click.Context, _param: click.Parameter,
                  incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(incomplete, type="dir")]


def complete_file(_ctx: click.Context, _param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(incomplete, type="file")]


# -- values from the engine's enums ----------------------------------------------------
class EnumChoice(click.Choice[StrEnum]):
    """A choice among the values of an engine's :class:`~enum.StrEnum`, case-insensitive
    as in fspl (``--order-by=Timestamp``), converted to the enum member.

    ``enum`` is ``"module:Name"``, imported on first use; ``exclude`` names members that
    are not command-line values (e.g. an internal ordering)."""

    def __init__(self, enum: str, *, exclude: tuple[str, ...] = ()) -> None:
        # click.Choice.__init__ would list the choices now; they are computed on use.
        self._ref = enum
        self._exclude = exclude
        self._enum: type[StrEnum] | None = None
        self.case_sensitive = False

    @property
    def enum(self) -> type[StrEnum]:
        if self._enum is None:
            modname, _, attr = self._ref.partition(":")
            enum = getattr(importlib.import_module(modname), attr)
            if not (isinstance(enum, type) and issubclass(enum, StrEnum)):
                raise TypeError(f"{self._ref} is not a StrEnum")
            self._enum = enum
        return self._enum

    @property
    def choices(self) -> tuple[StrEnum, ...]:
        return tuple(m for m in self.enum if m.name not in self._exclude)

    @choices.setter
    def choices(self, _value: Any) -> None:
        raise AttributeError("the choices of an EnumChoice come from its enum")

    def normalize_choice(self, choice: object, ctx: click.Context | None) -> str:
        # By value, not by member name (click's default for enums): "passboth", not "PASSBOTH".
        return super().normalize_choice(str(choice), ctx)

    def __repr__(self) -> str:
        return f"EnumChoice({self._ref})"


ON_ERROR = "fspl_gateway.core.process:OnError"
ORDER_BY = "fspl_gateway.core.process:OrderBy"
OUTPUT_TO = "fspl_gateway.core.process:OutputTo"
AFTER_FETCH = "fspl_gateway.gateway.pull:AfterFetch"
AFTER_PUSH = "fspl_gateway.gateway.push:AfterPush"


def on_error(help: str = "What to do with a failed job.") -> Callable[[F], F]:
    return click.option("--on-error", type=EnumChoice(ON_ERROR), default="retry",
                        show_default=True, help=help)


def order_by(help: str = "In what order to process jobs.") -> Callable[[F], F]:
    return click.option("--order-by", type=EnumChoice(ORDER_BY, exclude=("SEQ_SORTED",)),
                        default="sequence", show_default=True, help=help)


def output_to() -> Callable[[F], F]:
    return click.option("--output-to", type=EnumChoice(OUTPUT_TO), default="passboth",
                        show_default=True,
                        help="Where the command's stdout and stderr go: to ours, or saved to "
                             "jobs/FILE.out.")


# -- queues, sequence files, jobs ------------------------------------------------------
def queuedir(help: str = "The queue directory.", *, metavar: str = "DIR",
             multiple: bool = False) -> Callable[[F], F]:
    """``-q/--queuedir``: required, or repeatable and optional with ``multiple``."""
    return click.option("-q", "--queuedir", "queuedir" if not multiple else "queuedirs",
                        required=not multiple, multiple=multiple, metavar=metavar,
                        shell_complete=complete_dir, help=help)


def seqfile() -> Callable[[F], F]:
    return click.option("-s", "--seqfile", required=True, metavar="FILE",
                        shell_complete=complete_file,
                        help='The sequence file; "-" for none (seq 1).')


def job() -> Callable[[F], F]:
    return click.option("-j", "--job", required=True, type=click.IntRange(0, 2**64 - 1),
                        metavar="ID", help="The job's sequence number.")


def decoder() -> Callable[[F], F]:
    return click.option("-d", "--decoder", metavar="DECODECMD",
                        help="Decode job files through this shell command ($SHELL -c), "
                             "stdin to stdout, to read them.")


def wait_lock() -> Callable[[F], F]:
    """``--wait-lock``: None when not given.  What a busy lock then does is the command's
    documented behaviour (core commands: exit 1 at once, as fspl; sync, push, import:
    exit 0 with one info line)."""
    return click.option("--wait-lock", type=click.FloatRange(0), default=None,
                        metavar="SECONDS",
                        help="Wait up to SECONDS for a busy lock, then fail (exit 1). "
                             "Without it a busy lock fails at once, as in fspl; sync, push "
                             "and import instead do nothing and exit 0 with one info line.")


def process() -> Callable[[F], F]:
    """How one job's command runs: fspl's options shared by queue-process, stdin-process
    and workers, and the COMMAND [-- PARAMS] arguments."""
    return _stack(
        click.option("--allow-job-params", is_flag=True,
                     help="Append the job's parameters to the command line."),
        click.option("--ignore-payload", is_flag=True,
                     help="Do not give the payload to the command."),
        click.option("--timeout", type=click.IntRange(0), metavar="SECONDS",
                     help="Kill the command after SECONDS."),
        click.argument("command", metavar="COMMAND"),
        click.argument("params", nargs=-1, metavar="[-- PARAMS]..."),
    )


# -- remotes ---------------------------------------------------------------------------
def config(help: str = "Config file (default: $FSPL_GW_CONFIG, else "
                       "~/.config/fspl-gw/config.toml).") -> Callable[[F], F]:
    return click.option("--config", "config_file", metavar="FILE", default=None,
                        shell_complete=complete_file, help=help)


def _complete_transport(_ctx: click.Context, _param: click.Parameter,
                        incomplete: str) -> list[CompletionItem]:
    from fspl_gateway.transports.base import available

    return [CompletionItem(n) for n in sorted(available()) if n.startswith(incomplete)]


def _complete_remote(ctx: click.Context, _param: click.Parameter,
                     incomplete: str) -> list[CompletionItem]:
    from fspl_gateway.core.errors import FsplError
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.config import load

    was, log.disabled = log.disabled, True  # no warnings in the middle of a command line
    try:
        names = sorted(load(ctx.params.get("config_file")).remotes)
    except FsplError:
        names = []
    finally:
        log.disabled = was
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def remote(required: bool = True) -> Callable[[F], F]:
    """``--config``, ``-r/--remote``, ``-t/--transport``, ``-o/--option``: the parameters
    of :func:`fspl_gateway.gateway.remotes.open_remote`."""
    return _stack(
        config(),
        click.option("-r", "--remote", required=required, metavar="NAME|LOCATION",
                     shell_complete=_complete_remote,
                     help="A remote named in the config file, or a literal location "
                          "(then --transport is required)."),
        click.option("-t", "--transport", default=None, metavar="NAME",
                     shell_complete=_complete_transport,
                     help="Transport: local, s3, sftp, dropbox, media, …"),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Transport option; repeatable; overrides the config file."),
    )


# -- trust -----------------------------------------------------------------------------
def trust_receive(*, routes: bool = True) -> Callable[[F], F]:
    """A receiver's trust options (sync; import without ``--route``): see
    fspl_gateway.gateway.trust."""
    opts = [
        click.option("--trust", multiple=True, metavar="PUBKEY",
                     help="Only take jobs signed by this key: a minisign public key file or "
                          "one-line key (RW…); repeatable; adds to the config's trusted_keys."),
        click.option("--queue-id", metavar="ID",
                     help="The queue id that senders sign for and receipts name (required with "
                          "trust; config: queue_id)."),
        click.option("--identity", multiple=True, metavar="FILE", shell_complete=complete_file,
                     help="age identity file: decrypt encrypted jobs after verifying them; "
                          "repeatable."),
        click.option("--signature-wait", type=click.FloatRange(0), default=None,
                     metavar="SECONDS",
                     help="How long a job may wait for its signature before it is "
                          "quarantined as unsigned (default 120)."),
    ]
    if routes:
        opts.append(_many("--route", "KEY=QUEUE",
                          "Send the jobs signed by KEY (key id or public key) to the queue "
                          "QUEUE; repeatable; config: [remotes.NAME.routes]."))
    return _stack(*opts)


def _many(name: str, metavar: str, help: str) -> Callable[[F], F]:
    return click.option(name, multiple=True, metavar=metavar, help=help)


def trust_send(*, encrypt: bool = True) -> Callable[[F], F]:
    """A sender's trust options (push; export without ``--encrypt-to``)."""
    opts = [
        click.option("--sign", metavar="SECKEY", shell_complete=complete_file,
                     help="Sign each job with this minisign secret key (passphrase from "
                          "$FSPL_GW_KEY_PASSPHRASE); config: sign_key."),
        click.option("--queue-id", metavar="ID",
                     help="The receiver's queue id the signatures bind (config: queue_id)."),
    ]
    if encrypt:
        opts.append(_many("--encrypt-to", "RECIPIENT",
                          "Encrypt each job with age to this recipient (age1…, ssh-ed25519, "
                          "ssh-rsa) before signing; repeatable; config: encrypt_to."))
    return _stack(*opts)
