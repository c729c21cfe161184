"""minisign's key and signature formats, with Ed25519 from libsodium (PyNaCl), as minisign.

What is written here is what minisign 0.11 (Debian's) reads and writes, learnt from its
source and checked against the binary in tests/interop/test_trust_tools.py.  Integers are
little-endian; every binary blob is standard base64 with padding on one line.

Public key (42 bytes)::

    "Ed" | key id (8) | Ed25519 public key (32)

  as a file: ``untrusted comment: minisign public key <KEY ID>`` then the base64 line; on a
  command line (``minisign -P``) or in our config: the base64 line alone (``RW…``, 56
  characters).

Secret key (158 bytes), after an ``untrusted comment:`` line::

    "Ed" | kdf "Sc" or "\\0\\0" | checksum "B2" | scrypt salt (32)
    | scrypt opslimit (u64) | scrypt memlimit (u64)
    | key id (8) | Ed25519 secret key (64: seed | public key) | checksum (32)

  checksum = BLAKE2b-256("Ed" | key id | secret key).  Encrypted (``Sc``): the last 104
  bytes (key id, secret key, checksum) are XORed with 104 bytes of
  scrypt-salsa20/8-sha256(passphrase, salt), the (N, r, p) parameters derived from
  (opslimit, memlimit) as libsodium's ``crypto_pwhash_scryptsalsa208sha256`` does; a wrong
  passphrase shows as a checksum mismatch.  minisign encrypts with libsodium's
  "sensitive" limits (N = 2^20, r = 8, p = 1: 1 GiB, a few seconds).  Unencrypted
  (``minisign -W``): kdf ``\\0\\0``, salt and limits zero, and minisign leaves the checksum
  zero; we write it (minisign ignores it) and check it when it is not zero.

Signature file (``<file>.minisig``), four lines::

    untrusted comment: <free text, not authenticated>
    base64("ED" | key id (8) | Ed25519 signature (64) of BLAKE2b-512(file))
    trusted comment: <text>
    base64(Ed25519 signature (64) of signature (64) | trusted comment)

  ``ED`` (prehashed) is minisign's default: the file is hashed as a stream, never loaded.
  ``Ed`` (legacy, ``minisign -l``) signs the file itself; we verify it for files up to
  :data:`LEGACY_MAX_BYTES` only (Ed25519 cannot be verified as a stream) and never make it.

Key ids are 8 random bytes, shown as minisign shows them: the little-endian integer in
16 upper-case hex digits (``3AC064ECF5E08F38``).

Verification checks, in order, the format, the key id (the signature names a key we
trust), the signature over the file, then the global signature over signature | trusted
comment; each failure is its own :class:`SignatureError` subclass with a one-line message
and a short ``reason`` code (for quarantine records and logs).

The Ed25519 primitive is libsodium's, through PyNaCl (``nacl.bindings``): the library
minisign itself uses, so a signature is accepted here exactly when ``minisign -V``
accepts it (libsodium refuses non-canonical signatures and small-order keys), and a
verification takes ~100 µs here against ~185 µs for OpenSSL's (``cryptography``); the
call releases the GIL.  It is imported inside the functions that need it, so core
commands that never sign do not pay for it at start-up.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fspl_gateway.core.errors import FsplError
from fspl_gateway.core.fsutil import CHUNK, AtomicWriter

SIG_ALG = b"Ed"
SIG_ALG_HASHED = b"ED"
KDF_ALG = b"Sc"
KDF_NONE = b"\0\0"
CHK_ALG = b"B2"
KEYNUM_BYTES = 8
SIG_SUFFIX = ".minisig"
UNTRUSTED_PREFIX = "untrusted comment: "
TRUSTED_PREFIX = "trusted comment: "

#: libsodium's scryptsalsa208sha256 limits: minisign encrypts with the "sensitive" pair.
OPSLIMIT_SENSITIVE = 33554432
MEMLIMIT_SENSITIVE = 1073741824
OPSLIMIT_INTERACTIVE = 524288
MEMLIMIT_INTERACTIVE = 16777216
#: We refuse to derive a key with scrypt parameters needing more memory than this (twice
#: what minisign ever uses; hashlib's limit is just under 2 GiB).
MAX_SCRYPT_MEMORY = (2 << 30) - (2 << 20)
MAX_PASSPHRASE_BYTES = 1023

#: minisign's line limits (buffer sizes, prefix and newline included).
COMMENT_MAX_BYTES = 1024
TRUSTED_COMMENT_MAX_BYTES = 8192
#: A signature file larger than this is not a minisign signature.
MAX_SIGNATURE_FILE = COMMENT_MAX_BYTES + TRUSTED_COMMENT_MAX_BYTES + 256
#: Largest file whose legacy (non-prehashed) signature we verify (it is read in memory).
LEGACY_MAX_BYTES = 64 << 20

_PK_LEN = 2 + KEYNUM_BYTES + 32
_SK_LEN = 2 + 2 + 2 + 32 + 8 + 8 + KEYNUM_BYTES + 64 + 32
_SIG_LEN = 2 + KEYNUM_BYTES + 64
_ENC_OFFSET = 2 + 2 + 2 + 32 + 8 + 8  # start of key id | secret key | checksum
_ENC_LEN = KEYNUM_BYTES + 64 + 32


# -- errors ----------------------------------------------------------------------------
class SignatureError(FsplError):
    """A signature that must not be trusted.  ``reason`` is a short stable code."""

    reason = "bad-signature"


class SignatureFormatError(SignatureError):
    """Not a minisign signature (missing lines, bad base64, unknown algorithm, …)."""

    reason = "malformed-signature"


class LegacySignatureError(SignatureError):
    """A legacy (non-prehashed) signature where only prehashed ones are accepted."""

    reason = "legacy-signature"


class UnknownKeyError(SignatureError):
    """The signature names a key id that is not trusted."""

    reason = "unknown-key"


class BadSignatureError(SignatureError):
    """The signature does not match the file: altered, truncated, or another key's."""

    reason = "bad-signature"


class BadCommentSignatureError(SignatureError):
    """The global signature does not cover this trusted comment: one of them was changed."""

    reason = "bad-comment-signature"


class KeyFileError(FsplError):
    """A public or secret key that cannot be read or decoded."""


class PassphraseError(KeyFileError):
    """The secret key is encrypted and the passphrase is missing or wrong."""


def _sodium() -> Any:
    """libsodium's bindings (PyNaCl)."""
    try:
        import nacl.bindings
    except ImportError:  # pragma: no cover - the trust extra installs it
        raise FsplError("signatures need the 'pynacl' package: "
                        "pip install 'fspl-gateway[trust]'") from None
    return nacl.bindings


# -- helpers ---------------------------------------------------------------------------
def key_id_hex(keynum: bytes) -> str:
    """A key id as minisign prints it (little-endian u64, 16 upper-case hex digits)."""
    return f"{int.from_bytes(keynum, 'little'):016X}"


def parse_key_id(text: str) -> bytes:
    """The 8 bytes of a key id written as minisign prints it (leading zeros optional)."""
    t = text.strip()
    if not re.fullmatch(r"[0-9A-Fa-f]{1,16}", t):
        raise KeyFileError(f"not a key id (up to 16 hex digits): {text!r}")
    return int(t, 16).to_bytes(KEYNUM_BYTES, "little")


def _b64decode(text: str, length: int, what: str, err: type[FsplError]) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise err(f"{what}: not valid base64") from None
    if len(raw) != length:
        raise err(f"{what}: {len(raw)} bytes where {length} are expected")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_comment(text: str, prefix: str, limit: int, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be one line")
    if len((prefix + text).encode()) + 2 > limit:
        raise ValueError(f"{what} is longer than minisign accepts ({limit} bytes with its prefix)")


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _printable(text: str) -> bool:
    """minisign 0.12's rule for a trusted comment: no control characters but tab."""
    return _CONTROL.search(text) is None


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def hash_file(path: str | os.PathLike[str] | int, *hashers: _Hasher,
              chunk: int = CHUNK) -> int:
    """Feed a whole file (a path, or a descriptor read from offset 0 with pread) to every
    hasher in one streaming pass through one reused buffer; return its size."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    total = 0
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        while True:
            n = os.preadv(fd, [buf], total)
            if n == 0:
                return total
            for h in hashers:
                h.update(view[:n])
            total += n
    finally:
        if not isinstance(path, int):
            os.close(fd)


def blake2b_file(path: str | os.PathLike[str] | int) -> bytes:
    """BLAKE2b-512 of a file, streamed: what a prehashed signature signs."""
    h = hashlib.blake2b()
    hash_file(path, h)
    return h.digest()


# -- public keys -----------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKey:
    keynum: bytes
    key: bytes

    @functools.cached_property
    def key_id(self) -> str:
        return key_id_hex(self.keynum)

    def to_base64(self) -> str:
        """The one-line form (``minisign -P``, our config)."""
        return _b64(SIG_ALG + self.keynum + self.key)

    def to_file_text(self) -> str:
        """The file form, as ``minisign -G`` writes it."""
        return f"{UNTRUSTED_PREFIX}minisign public key {self.key_id}\n{self.to_base64()}\n"

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        raw = _b64decode(text, _PK_LEN, "public key", KeyFileError)
        if raw[:2] != SIG_ALG:
            raise KeyFileError(f"public key: unsupported signature algorithm {raw[:2]!r}")
        return cls(raw[2:2 + KEYNUM_BYTES], raw[2 + KEYNUM_BYTES:])

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """The file form (comment line + key line) or the one-line form."""
        lines = [ln.rstrip("\r") for ln in text.strip().split("\n")]
        if len(lines) == 1:
            return cls.from_base64(lines[0])
        if len(lines) == 2 and lines[0].startswith(UNTRUSTED_PREFIX):
            return cls.from_base64(lines[1])
        raise KeyFileError("public key: expected an 'untrusted comment:' line and a key line, "
                           "or the one-line form")


def read_public_key(path: str | os.PathLike[str]) -> PublicKey:
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as e:
        raise KeyFileError(f"cannot read public key {os.fspath(path)}: {e.strerror}") from None
    try:
        return PublicKey.parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise KeyFileError(f"{os.fspath(path)}: not a minisign public key") from None
    except KeyFileError as e:
        raise KeyFileError(f"{os.fspath(path)}: {e}") from None


_INLINE_PK = re.compile(r"RW[A-Za-z0-9+/]{54}")


def load_public_key(spec: str) -> PublicKey:
    """A public key given as minisign's one-line form (``RW…``) or as a file path."""
    s = spec.strip()
    if _INLINE_PK.fullmatch(s):
        return PublicKey.from_base64(s)
    return read_public_key(spec)


# -- secret keys -----------------------------------------------------------------------
def _scrypt_params(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """(N, r, p) from libsodium's (opslimit, memlimit), as its pickparams() derives them:
    r = 8; N is the smallest power of two above half the budget (ops/32 when memory is
    plentiful, else memlimit/1024); p spends what is left of opslimit."""
    ops = max(opslimit, 32768)
    r = 8

    def n_for(max_n: int) -> int:
        n_log2 = 1
        while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
            n_log2 += 1
        return 1 << n_log2

    if ops < memlimit // 32:
        return n_for(ops // (r * 4)), r, 1
    n = n_for(memlimit // (r * 128))
    maxrp = min((ops // 4) // n, 0x3FFFFFFF)
    return n, r, maxrp // r


def _scrypt_stream(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    n, r, p = _scrypt_params(opslimit, memlimit)
    need = 128 * r * (n + p + 2)
    if p < 1 or need > MAX_SCRYPT_MEMORY:
        raise KeyFileError(f"secret key: scrypt parameters N={n} r={r} p={p} are out of range")
    try:
        return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=need + (1 << 20),
                              dklen=_ENC_LEN)
    except (ValueError, MemoryError) as e:
        raise KeyFileError(f"secret key: cannot derive the key from the passphrase ({e})") from None


def _checksum(keynum: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + keynum + sk, digest_size=32).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _as_passphrase(p: str | bytes) -> bytes:
    b = p.encode("utf-8") if isinstance(p, str) else p
    if len(b) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(f"passphrase longer than {MAX_PASSPHRASE_BYTES} bytes")
    return b


@dataclass(frozen=True, repr=False)
class SecretKey:
    keynum: bytes
    #: libsodium's 64-byte Ed25519 secret key: seed (32) | public key (32)
    sk: bytes
    comment: str = field(default="minisign secret key", compare=False)

    def __repr__(self) -> str:
        return f"SecretKey(key_id={self.key_id})"

    @property
    def key_id(self) -> str:
        return key_id_hex(self.keynum)

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self.keynum, self.sk[32:])

    def sign_raw(self, message: bytes) -> bytes:
        """A plain Ed25519 signature (64 bytes) of ``message``."""
        signed: bytes = _sodium().crypto_sign(message, self.sk)
        return signed[:64]

    def to_file_text(self, passphrase: str | bytes | None, *,
                     opslimit: int = OPSLIMIT_SENSITIVE,
                     memlimit: int = MEMLIMIT_SENSITIVE) -> str:
        """The secret key file, encrypted with ``passphrase`` (None: unencrypted)."""
        chk = _checksum(self.keynum, self.sk)
        body = self.keynum + self.sk + chk
        if passphrase is None:
            head = SIG_ALG + KDF_NONE + CHK_ALG + bytes(32) + bytes(16)
        else:
            salt = os.urandom(32)
            body = _xor(body, _scrypt_stream(_as_passphrase(passphrase), salt, opslimit, memlimit))
            head = SIG_ALG + KDF_ALG + CHK_ALG + salt + struct.pack("<QQ", opslimit, memlimit)
        comment = self.comment.replace("\n", " ").replace("\r", " ")
        return f"{UNTRUSTED_PREFIX}{comment}\n{_b64(head + body)}\n"


def generate_keypair(comment: str = "minisign secret key") -> SecretKey:
    """A fresh key pair with a random key id, as ``minisign -G`` makes one."""
    _, sk = _sodium().crypto_sign_keypair()  # sk: seed | public key, as minisign keeps it
    return SecretKey(os.urandom(KEYNUM_BYTES), sk, comment)


def save_keypair(key: SecretKey, secret_path: str, public_path: str,
                 passphrase: str | bytes | None, *, overwrite: bool = False,
                 opslimit: int = OPSLIMIT_SENSITIVE, memlimit: int = MEMLIMIT_SENSITIVE) -> None:
    """Write the secret key (mode 0600, encrypted unless ``passphrase`` is None) and the
    public key file, each whole or not at all; refuse existing files unless ``overwrite``."""
    if not overwrite:
        refuse_existing(secret_path, public_path)
    secret_text = key.to_file_text(passphrase, opslimit=opslimit, memlimit=memlimit)
    os.makedirs(os.path.dirname(os.path.abspath(secret_path)), mode=0o700, exist_ok=True)
    _write_key_file(secret_path, secret_text, 0o600, overwrite)
    _write_key_file(public_path, key.public_key.to_file_text(), 0o644, overwrite)


def refuse_existing(*paths: str) -> None:
    """KeyFileError if any of these key files exists already."""
    for p in paths:
        if os.path.lexists(p):
            raise KeyFileError(f"{p} already exists (overwrite it with --force)")


def _write_key_file(path: str, text: str, mode: int, overwrite: bool) -> None:
    d = os.path.dirname(os.path.abspath(path))
    try:
        with AtomicWriter(d, os.path.basename(path), clobber=overwrite, mode=mode) as w:
            w.file.write(text.encode())
    except FileExistsError:
        raise KeyFileError(f"{path} already exists (overwrite it with --force)") from None
    except OSError as e:
        raise KeyFileError(f"cannot write {path}: {e.strerror}") from None


def secret_key_is_encrypted(text: str) -> bool:
    """Whether a secret key file's text needs a passphrase (raises KeyFileError if it is not
    a secret key at all)."""
    return _split_secret(text)[0][2:4] == KDF_ALG


def _split_secret(text: str) -> tuple[bytes, str]:
    lines = [ln.rstrip("\r") for ln in text.strip().split("\n")]
    if len(lines) != 2 or not lines[0].startswith(UNTRUSTED_PREFIX):
        raise KeyFileError("secret key: expected an 'untrusted comment:' line and a key line")
    raw = _b64decode(lines[1], _SK_LEN, "secret key", KeyFileError)
    if raw[:2] != SIG_ALG:
        raise KeyFileError(f"secret key: unsupported signature algorithm {raw[:2]!r}")
    if raw[4:6] != CHK_ALG:
        raise KeyFileError(f"secret key: unsupported checksum function {raw[4:6]!r}")
    if raw[2:4] not in (KDF_ALG, KDF_NONE):
        raise KeyFileError(f"secret key: unsupported key derivation function {raw[2:4]!r}")
    return raw, lines[0][len(UNTRUSTED_PREFIX):]


def parse_secret_key(text: str, passphrase: str | bytes | None = None) -> SecretKey:
    raw, comment = _split_secret(text)
    body = raw[_ENC_OFFSET:]
    encrypted = raw[2:4] == KDF_ALG
    if encrypted:
        if passphrase is None:
            raise PassphraseError("the secret key is encrypted: a passphrase is needed")
        salt = raw[6:38]
        opslimit, memlimit = struct.unpack("<QQ", raw[38:54])
        body = _xor(body, _scrypt_stream(_as_passphrase(passphrase), salt, opslimit, memlimit))
    keynum, sk, chk = body[:KEYNUM_BYTES], body[KEYNUM_BYTES:KEYNUM_BYTES + 64], body[-32:]
    if encrypted or chk != bytes(32):
        if not hmac.compare_digest(chk, _checksum(keynum, sk)):
            if encrypted:
                raise PassphraseError("wrong passphrase for the secret key")
            raise KeyFileError("secret key: checksum mismatch (the key file is damaged)")
    key = SecretKey(keynum, sk, comment)
    derived, _ = _sodium().crypto_sign_seed_keypair(sk[:32])
    if derived != sk[32:]:
        raise KeyFileError("secret key: its public half does not match its seed (damaged key)")
    return key


def read_secret_key(path: str | os.PathLike[str],
                    passphrase: str | bytes | None = None) -> SecretKey:
    try:
        with open(path, "rb") as f:
            data = f.read(8192)
    except OSError as e:
        raise KeyFileError(f"cannot read secret key {os.fspath(path)}: {e.strerror}") from None
    try:
        return parse_secret_key(data.decode("utf-8"), passphrase)
    except UnicodeDecodeError:
        raise KeyFileError(f"{os.fspath(path)}: not a minisign secret key") from None
    except PassphraseError as e:
        raise PassphraseError(f"{os.fspath(path)}: {e}") from None
    except KeyFileError as e:
        raise KeyFileError(f"{os.fspath(path)}: {e}") from None


# -- signatures ------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    algorithm: bytes  # SIG_ALG_HASHED (prehashed) or SIG_ALG (legacy)
    keynum: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = field(default="signature from minisign secret key", compare=False)

    @property
    def prehashed(self) -> bool:
        return self.algorithm == SIG_ALG_HASHED

    @functools.cached_property
    def key_id(self) -> str:
        return key_id_hex(self.keynum)

    def to_bytes(self) -> bytes:
        """The ``.minisig`` file's content."""
        return (f"{UNTRUSTED_PREFIX}{self.untrusted_comment}\n"
                f"{_b64(self.algorithm + self.keynum + self.signature)}\n"
                f"{TRUSTED_PREFIX}{self.trusted_comment}\n"
                f"{_b64(self.global_signature)}\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Signature:
        """Decode a ``.minisig``; raise SignatureFormatError naming what is wrong."""
        if len(data) > MAX_SIGNATURE_FILE:
            raise SignatureFormatError(f"signature file too large ({len(data)} bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureFormatError("signature file is not UTF-8 text") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
        if len(lines) < 4:
            raise SignatureFormatError(f"signature file has {len(lines)} of its 4 lines")
        if any(ln.strip() for ln in lines[4:]):
            raise SignatureFormatError("unexpected data after the global signature")
        untrusted, sig_line, trusted, global_line = lines[:4]
        if any("\r" in ln for ln in lines[:4]):
            raise SignatureFormatError("signature file contains a stray carriage return")
        if not untrusted.startswith(UNTRUSTED_PREFIX):
            raise SignatureFormatError(f'first line does not start with "{UNTRUSTED_PREFIX}"')
        if len(untrusted.encode()) + 2 > COMMENT_MAX_BYTES:
            raise SignatureFormatError("untrusted comment too long")
        if not trusted.startswith(TRUSTED_PREFIX):
            raise SignatureFormatError(f'third line does not start with "{TRUSTED_PREFIX}"')
        if len(trusted.encode()) + 2 > TRUSTED_COMMENT_MAX_BYTES:
            raise SignatureFormatError("trusted comment too long")
        comment = trusted[len(TRUSTED_PREFIX):]
        if not _printable(comment):
            raise SignatureFormatError("trusted comment contains unprintable characters")
        raw = _b64decode(sig_line, _SIG_LEN, "signature", SignatureFormatError)
        if raw[:2] not in (SIG_ALG, SIG_ALG_HASHED):
            raise SignatureFormatError(f"unsupported signature algorithm {raw[:2]!r}")
        gsig = _b64decode(global_line, 64, "global signature", SignatureFormatError)
        return cls(raw[:2], raw[2:2 + KEYNUM_BYTES], raw[2 + KEYNUM_BYTES:], comment, gsig,
                   untrusted[len(UNTRUSTED_PREFIX):])


def read_signature(path: str | os.PathLike[str]) -> Signature:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_FILE + 1)
    except OSError as e:
        raise SignatureFormatError(f"cannot read signature {os.fspath(path)}: {e.strerror}") from None
    return Signature.parse(data)


def default_trusted_comment(filename: str) -> str:
    """minisign's default trusted comment for a prehashed signature."""
    return f"timestamp:{int(time.time())}\tfile:{os.path.basename(filename)}\thashed"


def sign_digest(seckey: SecretKey, digest: bytes, trusted_comment: str,
                untrusted_comment: str = "signature from minisign secret key") -> Signature:
    """A prehashed signature given the file's BLAKE2b-512 digest."""
    if len(digest) != 64:
        raise ValueError("a prehashed signature signs a 64-byte BLAKE2b-512 digest")
    _check_comment(trusted_comment, TRUSTED_PREFIX, TRUSTED_COMMENT_MAX_BYTES, "trusted comment")
    _check_comment(untrusted_comment, UNTRUSTED_PREFIX, COMMENT_MAX_BYTES, "untrusted comment")
    if not _printable(trusted_comment):
        raise ValueError("trusted comment contains unprintable characters")
    sig = seckey.sign_raw(digest)
    gsig = seckey.sign_raw(sig + trusted_comment.encode("utf-8"))
    return Signature(SIG_ALG_HASHED, seckey.keynum, sig, trusted_comment, gsig, untrusted_comment)


def sign_file(path: str | os.PathLike[str], seckey: SecretKey,
              trusted_comment: str | None = None,
              untrusted_comment: str = "signature from minisign secret key") -> Signature:
    """Sign a file as ``minisign -S`` does (prehashed), streaming it."""
    tc = default_trusted_comment(os.fspath(path)) if trusted_comment is None else trusted_comment
    return sign_digest(seckey, blake2b_file(path), tc, untrusted_comment)


def select_key(sig: Signature, keys: PublicKey | Iterable[PublicKey]) -> list[PublicKey]:
    """The trusted keys with the signature's key id; UnknownKeyError if there are none."""
    pool = [keys] if isinstance(keys, PublicKey) else list(keys)
    found = [k for k in pool if k.keynum == sig.keynum]
    if found:
        return found
    if len(pool) == 1:
        raise UnknownKeyError(f"signature key id {sig.key_id} is not the public key's "
                              f"key id {pool[0].key_id}")
    raise UnknownKeyError(f"signed by key id {sig.key_id}, which is not among the "
                          f"{len(pool)} trusted keys")


def load_verifier() -> None:
    """Import the Ed25519 code now (e.g. in a worker, before its first verification)."""
    _sodium()
    import nacl.exceptions  # noqa: F401


def _ed_verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    from nacl.exceptions import BadSignatureError

    try:
        _sodium().crypto_sign_open(signature + message, key.key)
    except BadSignatureError:
        return False
    return True


def verify_digest(sig: Signature, digest: bytes,
                  keys: PublicKey | Iterable[PublicKey]) -> PublicKey:
    """Check a prehashed signature against the file's BLAKE2b-512 ``digest``; return the
    key that made it."""
    if not sig.prehashed:
        raise LegacySignatureError("legacy (non-prehashed) signature: this needs a prehashed "
                                   "one (minisign's default; do not sign with -l)")
    return _verify_message(sig, digest, keys)


def verify_comment(sig: Signature, keys: PublicKey | Iterable[PublicKey]) -> PublicKey:
    """Check only the global signature (over signature | trusted comment): that the key
    holder signed this trusted comment together with this file signature.  Return the
    key.  (For a caller that binds the file's bytes through the comment itself, as
    :func:`fspl_gateway.core.jobsig.verify_job` does with the file's SHA-256.)"""
    for key in select_key(sig, keys):
        if _ed_verify(key, sig.global_signature,
                      sig.signature + sig.trusted_comment.encode("utf-8")):
            return key
    raise BadCommentSignatureError(f"comment signature by key {sig.key_id} does not "
                                   "verify (trusted comment or global signature altered)")


def _verify_message(sig: Signature, message: bytes,
                    keys: PublicKey | Iterable[PublicKey]) -> PublicKey:
    candidates = select_key(sig, keys)
    for key in candidates:
        if _ed_verify(key, sig.signature, message):
            break
    else:
        raise BadSignatureError(f"signature by key {sig.key_id} does not match the file "
                                "(altered, truncated, or signed by another key)")
    if not _ed_verify(key, sig.global_signature,
                      sig.signature + sig.trusted_comment.encode("utf-8")):
        raise BadCommentSignatureError(f"comment signature by key {sig.key_id} does not "
                                       "verify (trusted comment or global signature altered)")
    return key


def verify_file(path: str | os.PathLike[str], sig: Signature,
                keys: PublicKey | Iterable[PublicKey], *, allow_legacy: bool = True) -> PublicKey:
    """Verify a file as ``minisign -V`` does; return the key that signed it.  The file is
    streamed for a prehashed signature; a legacy one is read whole, up to
    :data:`LEGACY_MAX_BYTES`."""
    if sig.prehashed:
        select_key(sig, keys)  # an unknown key is reported before the file is read
        return verify_digest(sig, blake2b_file(path), keys)
    if not allow_legacy:
        raise LegacySignatureError("legacy (non-prehashed) signature found")
    select_key(sig, keys)
    with open(path, "rb") as f:
        message = f.read(LEGACY_MAX_BYTES + 1)
    if len(message) > LEGACY_MAX_BYTES:
        raise LegacySignatureError(f"legacy (non-prehashed) signature on a file larger than "
                                   f"{LEGACY_MAX_BYTES >> 20} MiB: re-sign it prehashed")
    return _verify_message(sig, message, keys)
