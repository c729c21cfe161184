"""age encryption of job files: the ``age`` binary, and the receiver's in-process path.

An encrypted job is exactly what Filespooler's own recipe makes,
``fspl prepare … | age -r RECIPIENT > job``: the age file (binary, or ASCII-armored) whose
plaintext is the packet.  A real fspl receiver runs it with ``--decoder 'age -d -i KEY'``
(:func:`decoder_command`), and so does ours.  Recipients are what ``age -r`` accepts: X25519
``age1…`` keys, ``ssh-ed25519 …`` and ``ssh-rsa …`` public keys (and plugin recipients,
passed through to age).

**Encryption** (the sender) and every decryption but one go through the binary.  The one
exception is the receiver's boundary decryption (:func:`decrypt_file`) of a binary age file
with identity files that hold only X25519 keys (what ``age-keygen`` writes): that is done
in this process by :mod:`~fspl_gateway.core.agefile`, from age's specification with
``cryptography``'s primitives, two threads decrypting while a third hashes the plaintext.
Why: the receiver verifies the signature over the ciphertext *before* decrypting, then
makes the plaintext durable, so ``age -d`` is a third pass over the file behind the fetch,
on one core; in process it is faster than ``age -d`` even while it hashes the plaintext,
and decryption adds 1.2× ``age -d``'s time to a sync instead of 2.0× (``docs/benchmarks.md``,
Trust).  ssh and
passphrase-protected identities, plugins and armored files keep using the binary.

Why not pyrage (decided for issue 13, measured on this project's 2-core machine with
pyrage 1.4.0 from PyPI and Debian's age 1.1.1, a 512 MiB file):

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
* It adds a compiled wheel; ``cryptography`` is already a dependency (minisign, paramiko).

Through the binary the payload never enters Python: :func:`encrypt_stream` /
:func:`decrypt_stream` hand two descriptors (files or pipes, at their current offsets) to
``age`` as its stdin and stdout, and the kernel moves the bytes.  Only age's stderr is
read, for a one-line error.

age authenticates the plaintext per 64 KiB chunk and reports a truncated or altered file
only when it reaches the bad chunk: what was written before may be partial.  Callers
decrypt into a temporary file and use it only if :func:`decrypt_stream` /
:func:`decrypt_file` returned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence

from fspl_gateway.core import agefile
from fspl_gateway.core.agefile import X25519Identity
from fspl_gateway.core.errors import EXIT_USAGE, FsplError
from fspl_gateway.core.hashing import MultiHasher, copy_hashing

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


_native_cache: dict[tuple[tuple[str, int, int], ...], list[X25519Identity] | None] = {}


def _native_identities(files: Sequence[str]) -> list[X25519Identity] | None:
    """:func:`agefile.load_identities`, read again only when a file changed."""
    try:
        stamp = tuple((f, st.st_mtime_ns, st.st_size) for f in files for st in [os.stat(f)])
    except OSError:
        return None
    if stamp not in _native_cache:
        _native_cache.clear()
        _native_cache[stamp] = agefile.load_identities(files)
    return _native_cache[stamp]


def decrypt_file(src_path: str, out_path: str, identity_files: str | Sequence[str],
                 hasher: MultiHasher) -> bool:
    """Decrypt the age file ``src_path`` (a regular file that nobody else writes) into
    the new file ``out_path``, feeding ``hasher`` the plaintext: True; False (nothing
    written) when ``src_path`` is not an age file.  A binary age file for X25519
    identities is decrypted in this process (:mod:`~fspl_gateway.core.agefile`, two
    threads); anything else by ``age -d``, which reads the file itself while this
    thread hashes and writes what it prints.  AgeError (or the OSError of writing) when it
    fails; ``out_path`` is then removed."""
    files = [identity_files] if isinstance(identity_files, str) else list(identity_files)
    fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, len(AGE_ARMOR_MAGIC), 0)
        if not is_encrypted(head):
            return False
        native = _native_identities(files) if head.startswith(AGE_MAGIC) else None
        argv = decrypt_argv(files) if native is None else []
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if native is not None:
                agefile.decrypt(fd, out, native, hasher)
            else:
                _decrypt_through_age(argv, fd, out, hasher)
        except BaseException as e:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(out_path)
            if isinstance(e, agefile.AgeFormatError):
                raise AgeError(f"age decryption failed: {e}") from None
            raise
        os.close(out)
        return True
    finally:
        os.close(fd)


#: Pipe buffer asked for age's stdout (the kernel's default is 64 KiB).
PIPE_BYTES = 1 << 20


def _decrypt_through_age(argv: list[str], src_fd: int, out_fd: int, hasher: MultiHasher) -> None:
    """``age -d`` reads ``src_fd`` (from offset 0) as its stdin; what it prints is hashed
    and written to ``out_fd`` (:func:`~fspl_gateway.core.hashing.copy_hashing`)."""
    os.lseek(src_fd, 0, os.SEEK_SET)
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=src_fd, stdout=subprocess.PIPE, stderr=err,
                                    close_fds=True)
        except OSError as e:
            raise AgeError(f"cannot run {argv[0]}: {e.strerror}") from None
        assert proc.stdout is not None
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            copy_hashing(proc.stdout.fileno(), out_fd, hasher)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise AgeError(f"age decryption failed: {_age_message(err.read(_STDERR_MAX))}")


def encrypt_stream(src_fd: int, dst_fd: int, recipients: Iterable[str]) -> None:
    """Encrypt from ``src_fd`` to ``dst_fd`` (each from its current offset) to every
    recipient; age reads and writes the descriptors itself."""
    _run(encrypt_argv(recipients), src_fd, dst_fd, "encryption")


def decrypt_stream(src_fd: int, dst_fd: int, identity_files: str | Sequence[str]) -> None:
    """Decrypt from ``src_fd`` to ``dst_fd`` with the identities in ``identity_files``.
    On AgeError ``dst_fd`` may hold a partial plaintext: discard it."""
    _run(decrypt_argv(identity_files), src_fd, dst_fd, "decryption")
