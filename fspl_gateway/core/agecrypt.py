"""age encryption of job files, through the ``age`` binary.

An encrypted job is exactly what Filespooler's own recipe makes,
``fspl prepare … | age -r RECIPIENT > job``: the age file (binary, or ASCII-armored) whose
plaintext is the packet.  A real fspl receiver runs it with ``--decoder 'age -d -i KEY'``
(:func:`decoder_command`), and so does ours.  Recipients are what ``age -r`` accepts: X25519
``age1…`` keys, ``ssh-ed25519 …`` and ``ssh-rsa …`` public keys (and plugin recipients,
passed through to age).

Why the binary and not pyrage (decided for issue 13, measured on this project's 2-core
machine with pyrage 1.4.0 from PyPI and Debian's age 1.1.1, a 512 MiB file):

* pyrage does stream: ``encrypt_file``/``decrypt_file`` take two paths and copy through
  the Rust age crate with a fixed buffer (max RSS 11 MiB for 512 MiB), and
  ``encrypt_io``/``decrypt_io`` take Python file objects (every chunk then passes through a
  Python ``read()``/``write()`` call).  ``encrypt``/``decrypt`` take and return whole bytes.
* But it holds the GIL for the whole call: a ticker thread ran 2 times instead of ~100
  during one ``decrypt_file`` of 512 MiB, so a decryption would stall every other thread of
  a sync (transfers, listings) for seconds on multi-GiB jobs.
* And it is slower than ``age -d``: 0.92-1.01 s of CPU against 0.70-0.80 s for
  ``age -d -o /dev/null`` (about 75 %), below the issue's target of 80 % of age's speed;
  ``encrypt_file`` took 1.61 s against 0.76 s for ``age -e``.
* The binary is the tool the receiver's decoder and the shell-only sender use anyway
  (the same code and the same error messages on both sides); it adds no compiled wheel to
  our dependencies.

So the payload never enters Python: :func:`encrypt_stream` / :func:`decrypt_stream` hand two
descriptors (files or pipes, at their current offsets) to ``age`` as its stdin and stdout,
and the kernel moves the bytes.  Only age's stderr is read, for a one-line error.

age authenticates the plaintext per 64 KiB chunk and reports a truncated or altered file
only when it reaches the bad chunk: what was written before may be partial.  Callers
decrypt into a temporary file and use it only if :func:`decrypt_stream` returned.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from fspl_gateway.core.errors import EXIT_USAGE, FsplError

#: The first bytes of an age file (binary, and ASCII-armored).
AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR_MAGIC = b"-----BEGIN AGE ENCRYPTED FILE-----"

_X25519 = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_PLUGIN = re.compile(r"age1[a-z0-9.+-]+1[02-9ac-hj-np-z]+")
_SSH = re.compile(r"(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?")
_STDERR_MAX = 64 << 10


class AgeError(FsplError):
    """age failed: wrong identity, damaged or truncated file, missing binary."""


class RecipientError(AgeError):
    """A recipient that age would not accept."""

    exit_code = EXIT_USAGE


def is_encrypted(head: bytes) -> bool:
    """Whether a file starting with ``head`` is an age file (needs its first 34 bytes)."""
    return head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR_MAGIC)


def age_binary() -> str:
    path = shutil.which("age")
    if path is None:
        raise AgeError("the age binary is not installed (Debian/Ubuntu: apt install age)")
    return path


def check_recipient(recipient: str) -> str:
    """A recipient as ``age -r`` takes it (surrounding blanks removed), or RecipientError."""
    r = recipient.strip()
    if _X25519.fullmatch(r) or _PLUGIN.fullmatch(r) or _SSH.fullmatch(r):
        return r
    shown = r if len(r) <= 40 else r[:37] + "..."
    raise RecipientError(f"not an age recipient (age1…, ssh-ed25519 or ssh-rsa key): {shown!r}")


def encrypt_argv(recipients: Iterable[str]) -> list[str]:
    argv = [age_binary(), "--encrypt"]
    for r in recipients:
        argv += ["-r", check_recipient(r)]
    if len(argv) == 2:
        raise RecipientError("encryption needs at least one recipient")
    return argv


def decrypt_argv(identity_files: str | Sequence[str]) -> list[str]:
    files = [identity_files] if isinstance(identity_files, str) else list(identity_files)
    if not files:
        raise AgeError("decryption needs an identity file")
    argv = [age_binary(), "--decrypt"]
    for f in files:
        if not os.access(f, os.R_OK):
            raise AgeError(f"cannot read the age identity file {f}")
        argv += ["-i", f]
    return argv


def decoder_command(identity_files: str | Sequence[str]) -> str:
    """The ``--decoder`` shell command that decrypts a job (fspl's documented recipe)."""
    return shlex.join(decrypt_argv(identity_files))


def _run(argv: list[str], src_fd: int, dst_fd: int, what: str) -> None:
    try:
        proc = subprocess.run(argv, stdin=src_fd, stdout=dst_fd, stderr=subprocess.PIPE,
                              close_fds=True, check=False)
    except OSError as e:
        raise AgeError(f"cannot run {argv[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        raise AgeError(f"age {what} failed: {_age_message(proc.stderr[-_STDERR_MAX:])}")


def _age_message(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln.split("error:", 1)[1].strip()
    return lines[0] if lines else "no message"


def encrypt_stream(src_fd: int, dst_fd: int, recipients: Iterable[str]) -> None:
    """Encrypt from ``src_fd`` to ``dst_fd`` (each from its current offset) to every
    recipient; age reads and writes the descriptors itself."""
    _run(encrypt_argv(recipients), src_fd, dst_fd, "encryption")


def decrypt_stream(src_fd: int, dst_fd: int, identity_files: str | Sequence[str]) -> None:
    """Decrypt from ``src_fd`` to ``dst_fd`` with the identities in ``identity_files``.
    On AgeError ``dst_fd`` may hold a partial plaintext: discard it."""
    _run(decrypt_argv(identity_files), src_fd, dst_fd, "decryption")
