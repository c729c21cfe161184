"""CLI: ``fspl-gw keygen``, a minisign-compatible key pair for signing jobs.

The passphrase of a secret key comes from ``$FSPL_GW_KEY_PASSPHRASE`` when it is set
(for scripts), else from the terminal (asked twice, not echoed).  ``--unencrypted`` writes
a key that needs none, for unattended senders, with a warning.
"""

from __future__ import annotations

import os

import click

from fspl_gateway.cli.main import CONTEXT
from fspl_gateway.core.errors import UsageError

PASSPHRASE_ENV = "FSPL_GW_KEY_PASSPHRASE"


def read_passphrase(*, confirm: bool) -> str:
    """The passphrase of a secret key: ``$FSPL_GW_KEY_PASSPHRASE``, else typed on the
    terminal (twice when ``confirm``); UsageError when there is neither."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise UsageError(f"${PASSPHRASE_ENV} is set but empty")
        return env
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise UsageError(f"no passphrase: set ${PASSPHRASE_ENV} or run on a terminal"
                         + (", or use --unencrypted" if confirm else "")) from None
    import getpass

    first = getpass.getpass("Passphrase: ")
    if confirm:
        if not first:
            raise UsageError("empty passphrase (use --unencrypted for a key without one)")
        if getpass.getpass("Passphrase (again): ") != first:
            raise UsageError("the two passphrases differ")
    return first


def _default_public(secret: str) -> str:
    root, ext = os.path.splitext(secret)
    return (root if ext == ".key" else secret) + ".pub"


@click.command("keygen", context_settings=CONTEXT)
@click.option("-s", "--secret-key", "secret", required=True, metavar="FILE",
              help="Where to write the secret key (mode 0600).")
@click.option("-p", "--public-key", "public", metavar="FILE",
              help="Where to write the public key (default: the secret key's name with .pub "
                   "instead of .key).")
@click.option("--unencrypted", is_flag=True,
              help="Do not encrypt the secret key (for unattended senders, e.g. cron).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing key files.")
@click.option("-c", "--comment", default="fspl-gw secret key", show_default=True,
              help="The secret key file's (untrusted) comment line.")
def keygen_cmd(secret: str, public: str | None, unencrypted: bool, force: bool,
               comment: str) -> None:
    """Make a key pair for signing jobs, in minisign's format (minisign -S and -V use it).

    The secret key is encrypted with a passphrase ($FSPL_GW_KEY_PASSPHRASE, else asked on
    the terminal) unless --unencrypted.  Prints the key id and the one-line public key
    that receivers put in their trusted keys."""
    from fspl_gateway.core.minisign import generate_keypair, refuse_existing, save_keypair

    public = public or _default_public(secret)
    if os.path.abspath(public) == os.path.abspath(secret):
        raise UsageError("the public and the secret key files must differ")
    if not force:
        refuse_existing(secret, public)  # before asking for a passphrase
    passphrase = None if unencrypted else read_passphrase(confirm=True)
    key = generate_keypair(comment)
    if passphrase is not None:
        click.echo("Deriving a key from the passphrase (scrypt, 1 GiB, a few seconds)...",
                   err=True)
    save_keypair(key, secret, public, passphrase, overwrite=force)
    if unencrypted:
        click.echo(f"Warning: the secret key {secret} is NOT encrypted: whoever can read it "
                   "can sign jobs that receivers trust. Keep it mode 0600 on a machine you "
                   "trust.", err=True)
    click.echo(f"Secret key written to {secret} (mode 0600"
               f"{'' if unencrypted else ', encrypted'}), public key to {public}.", err=True)
    click.echo(f"key id: {key.key_id}")
    click.echo(f"public key: {key.public_key.to_base64()}")
