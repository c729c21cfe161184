"""Decrypting age files in this process, for X25519 identities: the receiver's fast path.

:mod:`~fspl_gateway.core.agecrypt` decides which path a file takes
(:func:`~fspl_gateway.core.agecrypt.decrypt_file`): a binary age file (not armored) and
identity files that hold only ``AGE-SECRET-KEY-1…`` keys (what ``age-keygen`` writes) are
decrypted here; anything else — ssh keys, passphrase-protected identity files, plugins,
armored files — goes through the ``age`` binary, as before.

Why in process: the receiver must verify a job's signature over the ciphertext before
anything decrypts it, and must make the plaintext durable; ``age -d`` then costs a third
pass over the file, single-threaded, behind the fetch.  Here the payload's 64 KiB chunks
are decrypted by two threads (``cryptography``'s ChaCha20-Poly1305 releases the GIL),
while a third hashes the plaintext and the caller's thread reads and writes: 1 GiB to
``/dev/null`` takes 1.3 s *with* the plaintext's SHA-256, against 1.5 s for ``age -d``
without one, on the project's 2-core machine; in a sync, decryption costs 1.2× ``age -d``
to a file, against 2.0× through the binary (``docs/benchmarks.md``, Trust).

The format is age v1 (https://age-encryption.org/v1), implemented from its specification
with ``cryptography``'s primitives, and checked in the tests against the ``age`` binary:
what it encrypts decrypts to the same bytes, and damaged or truncated files are refused
exactly where it refuses them (``tests/interop/test_agefile.py``):

* header: the version line, stanzas (``-> type args`` and a base64 body whose last line
  is shorter than 64 columns), then ``--- MAC``; the file key is unwrapped from an X25519
  stanza (X25519 with the identity, HKDF-SHA-256 with the ephemeral share and the
  recipient as salt, ChaCha20-Poly1305), and the header's HMAC-SHA-256 must match;
* payload: a 16-byte nonce, then chunks of 64 KiB of plaintext plus a 16-byte tag, each
  with the nonce ``counter (11 bytes, big-endian) || last-chunk flag``; only the last
  chunk may be shorter, and it may be empty only when it is the only one.

A failure raises :class:`~fspl_gateway.core.agecrypt.AgeError`-compatible
:class:`AgeFormatError`; what was written before it may be partial, so the caller writes
into a temporary file and uses it only when :func:`decrypt` returned.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fspl_gateway.core.errors import FsplError
from fspl_gateway.core.fsutil import write_all
from fspl_gateway.core.hashing import HashThread

MAGIC = b"age-encryption.org/v1\n"
#: Plaintext bytes per payload chunk, and the tag that follows each.
CHUNK = 64 << 10
TAG = 16
ENC_CHUNK = CHUNK + TAG
#: Chunks per read; two threads decrypt half each.
BLOCK_CHUNKS = 32
#: A header bigger than this is refused (a real one is a few hundred bytes per recipient).
MAX_HEADER = 1 << 20
_X25519_INFO = b"age-encryption.org/v1/X25519"
_SECRET_HRP = "age-secret-key-"
_KEY_LINE = re.compile(r"AGE-SECRET-KEY-1[02-9ACDEFGHJKLMNPQRSTUVWXYZ]+")
_B64_LINE = 64


class AgeFormatError(FsplError):
    """The file cannot be decrypted here: damaged, truncated, not for these identities."""


# -- identities ------------------------------------------------------------------------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values: Sequence[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(human-readable part, data) of a Bech32 string (BIP 173 checksum, no length
    limit, as age uses it); ValueError if it is not one."""
    s = text.lower()
    if s != text and text.upper() != text:
        raise ValueError("mixed case")
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise ValueError("no separator")
    hrp, rest = s[:pos], s[pos + 1:]
    try:
        data = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise ValueError("bad character") from None
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _polymod(expanded + data) != 1:
        raise ValueError("bad checksum")
    acc = bits = 0
    out = bytearray()
    for v in data[:-6]:
        acc = acc << 5 | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise ValueError("bad padding")
    return hrp, bytes(out)


@dataclass(frozen=True)
class X25519Identity:
    secret: Any  # cryptography's X25519PrivateKey
    public: bytes


def load_identities(paths: Sequence[str]) -> list[X25519Identity] | None:
    """The X25519 identities in ``paths``; None when a file holds anything else (an ssh
    key, a plugin, a passphrase-protected file), is unreadable, or has a key that does
    not decode: then the ``age`` binary reads them (and words any error)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    out: list[X25519Identity] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_HEADER + 1)
            text = raw.decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        if len(raw) > MAX_HEADER:
            return None
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _KEY_LINE.fullmatch(line):
                return None
            try:
                hrp, key = bech32_decode(line)
            except ValueError:
                return None
            if hrp != _SECRET_HRP or len(key) != 32:
                return None
            secret = X25519PrivateKey.from_private_bytes(key)
            out.append(X25519Identity(secret, secret.public_key().public_bytes_raw()))
    return out or None


# -- header ----------------------------------------------------------------------------
def _b64(text: bytes, what: str) -> bytes:
    """Canonical unpadded standard base64, as age requires."""
    if b"=" in text or b"\r" in text:
        raise AgeFormatError(f"malformed {what}: not unpadded base64")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise AgeFormatError(f"malformed {what}: not base64") from None
    if base64.b64encode(data).rstrip(b"=") != text:
        raise AgeFormatError(f"malformed {what}: non-canonical base64")
    return data


@dataclass
class Header:
    stanzas: list[tuple[bytes, list[bytes], bytes]]
    #: The header up to and including ``---`` (what the MAC covers).
    signed: bytes
    mac: bytes
    #: Offset of the payload (its nonce) in the file.
    end: int


def _is_arg(a: bytes) -> bool:
    return bool(a) and all(33 <= c <= 126 for c in a)


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of ``data`` (which must hold all of it)."""
    if not data.startswith(MAGIC):
        raise AgeFormatError("not an age file (binary format)")
    pos = len(MAGIC)
    stanzas: list[tuple[bytes, list[bytes], bytes]] = []

    def line() -> bytes:
        nonlocal pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise AgeFormatError("truncated or oversized header")
        out = data[pos:nl]
        pos = nl + 1
        return out

    while True:
        start = pos
        ln = line()
        if ln.startswith(b"--- "):
            mac = _b64(ln[4:], "header MAC")
            if len(mac) != 32:
                raise AgeFormatError("malformed header MAC")
            return Header(stanzas, data[:start + 3], mac, pos)
        if not ln.startswith(b"-> "):
            raise AgeFormatError("malformed header: expected a stanza or the MAC line")
        fields = ln[3:].split(b" ")
        if not all(_is_arg(a) for a in fields):
            raise AgeFormatError("malformed stanza line")
        body = bytearray()
        while True:
            part = line()
            if len(part) > _B64_LINE:
                raise AgeFormatError("malformed stanza body: line too long")
            body += part
            if len(part) < _B64_LINE:
                break
        stanzas.append((fields[0], fields[1:], _b64(bytes(body), "stanza body")))


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=SHA256(), length=32, salt=salt, info=info).derive(ikm)


def file_key(header: Header, identities: Sequence[X25519Identity]) -> bytes:
    """Unwrap the file key with one of ``identities`` and check the header's MAC."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if any(t == b"scrypt" for t, _, _ in header.stanzas) and len(header.stanzas) != 1:
        raise AgeFormatError("an scrypt recipient must be the only one")
    key: bytes | None = None
    for typ, args, body in header.stanzas:
        if typ != b"X25519":
            continue
        if len(args) != 1 or len(body) != 32:
            raise AgeFormatError("malformed X25519 stanza")
        share = _b64(args[0], "X25519 share")
        if len(share) != 32:
            raise AgeFormatError("malformed X25519 stanza")
        for ident in identities:
            try:
                shared = ident.secret.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise AgeFormatError("invalid X25519 recipient share") from None
            if shared == bytes(32):
                raise AgeFormatError("invalid X25519 recipient share")
            wrap = _hkdf(shared, share + ident.public, _X25519_INFO)
            try:
                key = ChaCha20Poly1305(wrap).decrypt(bytes(12), body, None)
            except InvalidTag:
                continue
            break
        if key is not None:
            break
    if key is None:
        raise AgeFormatError("no identity matched any of the recipients")
    mac = hmac.new(_hkdf(key, b"", b"header"), header.signed, "sha256").digest()
    if not hmac.compare_digest(mac, header.mac):
        raise AgeFormatError("bad header MAC")
    return key


# -- payload ---------------------------------------------------------------------------
def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def decrypt(src_fd: int, dst_fd: int, identities: Sequence[X25519Identity],
            hasher: Any) -> int:
    """Decrypt the age file ``src_fd`` (a regular file, read with ``pread`` from offset
    0; its size must not change) into ``dst_fd`` (written at its offset); ``hasher``
    (anything with ``update``, e.g. a :class:`~fspl_gateway.core.hashing.MultiHasher`)
    gets the plaintext in order, in a thread of its own.  The plaintext's size;
    AgeFormatError."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    size = os.fstat(src_fd).st_size
    head = os.pread(src_fd, min(size, MAX_HEADER), 0)
    header = parse_header(head)
    key = file_key(header, identities)
    nonce = os.pread(src_fd, 16, header.end)
    if len(nonce) < 16:
        raise AgeFormatError("truncated file: no payload nonce")
    start = header.end + 16
    payload = size - start
    if payload < TAG:
        raise AgeFormatError("truncated file: no payload")
    chunks = -(-payload // ENC_CHUNK)
    tail = payload - (chunks - 1) * ENC_CHUNK
    if tail < TAG or (tail == TAG and chunks > 1):
        raise AgeFormatError("truncated or damaged payload (a last chunk must hold data)")
    aead = ChaCha20Poly1305(_hkdf(key, nonce, b"payload"))
    plain_size = payload - chunks * TAG
    into = getattr(aead, "decrypt_into", None)  # cryptography >= 45; else one more copy

    def open_chunk(nonce: bytes, enc: memoryview, out: memoryview) -> None:
        if into is not None:
            into(nonce, enc, None, out)
        else:
            out[:] = aead.decrypt(nonce, enc, None)

    def part(cview: memoryview, pview: memoryview, first: int, n: int, count: int) -> None:
        """Decrypt chunks ``first``..``first+n`` of a block starting at chunk ``count``."""
        for i in range(first, first + n):
            c = count + i
            enc = cview[i * ENC_CHUNK:(i + 1) * ENC_CHUNK]
            try:
                open_chunk(_nonce(c, c == chunks - 1), enc,
                           pview[i * CHUNK:i * CHUNK + len(enc) - TAG])
            except InvalidTag:
                raise AgeFormatError(f"damaged payload: chunk {c} does not authenticate") from None

    # The plaintext buffers are the hash thread's ring: a block is handed to it once it
    # is written, while the next one decrypts; a buffer comes back once it is hashed.
    cbufs = [bytearray(BLOCK_CHUNKS * ENC_CHUNK) for _ in range(2)]
    pump = HashThread(hasher, BLOCK_CHUNKS * CHUNK)
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="fspl-gw-age") as pool:
            pending: tuple[bytearray, int] | None = None
            for b, count in enumerate(range(0, chunks, BLOCK_CHUNKS)):
                n = min(BLOCK_CHUNKS, chunks - count)
                off = start + count * ENC_CHUNK
                want = min(n * ENC_CHUNK, size - off)
                cview = memoryview(cbufs[b % 2])[:want]
                if os.preadv(src_fd, [cview], off) != want:
                    raise AgeFormatError("the file shrank while it was decrypted")
                pbuf = pump.free_buffer()
                plain_n = want - n * TAG
                pview = memoryview(pbuf)[:plain_n]
                half = n // 2
                halves = [pool.submit(part, cview, pview, 0, half, count),
                          pool.submit(part, cview, pview, half, n - half, count)]
                if pending is not None:  # the previous block, while this one decrypts
                    write_all(dst_fd, memoryview(pending[0])[:pending[1]])
                    pump.hash(*pending)
                    pending = None
                try:
                    for f in halves:
                        f.result()
                except BaseException:
                    pump.give_back(pbuf)
                    raise
                pending = (pbuf, plain_n)
            if pending is not None:
                write_all(dst_fd, memoryview(pending[0])[:pending[1]])
                pump.hash(*pending)
    finally:
        pump.finish()
    return plain_size
