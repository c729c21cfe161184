"""Job signatures: what a trusted sender's minisign signature binds, and its check.

A signed job travels as two files: the job ``fspl-….fspl`` and, beside it, its detached
minisign signature ``fspl-….fspl.minisig`` (a name that fspl and our scans ignore).  The
signature is an ordinary prehashed minisign signature (:mod:`fspl_gateway.core.minisign`)
whose *trusted comment* — signed together with the file's signature, so nobody without
the key can change it — is exactly one line::

    fspl-gw-job v1 queue=<QUEUE-ID> seq=<SEQ> sha256=<SHA256>

* ``fspl-gw-job v1`` names what is signed and the version of this line: a minisign
  signature made for anything else (another tool, a media manifest of ours) is never
  taken for a job signature.
* ``queue`` is an identifier the receiver configures for the queue the job is meant for
  (``[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}``, compared exactly): a job signed for one queue
  cannot be replayed into another queue that trusts the same key.
* ``seq`` is the job's sequence number (decimal, no leading zeros), equal to the ``seq`` of
  the packet's header.  The receiver orders, deduplicates and records jobs by (key, seq),
  and ``nextseq`` refuses a replay of a seq already run.
* ``sha256`` (64 lower-case hex digits, as ``sha256sum`` prints) is the SHA-256 of the file
  that was signed, which the receiver checks and records; (key, seq) seen again with
  another sha256 is a replay or a forked sender.

The name of the file is not bound: the sender chooses it and transports, media imports and
a clash may rename a job; a copy under another name carries the same (key, seq) and is a
duplicate, which the receiver detects by its seq.  Fields are in this order, separated by
one space, nothing else: there is exactly one spelling of a binding.

**Encrypted jobs.**  We sign the file that travels, i.e. the age ciphertext (encrypt, then
sign): the receiver verifies before it decrypts anything, so an unauthenticated file never
reaches age, and ``minisign -V`` on the receiver checks exactly the bytes in the store.
The packet header (and so its seq) is unreadable before decryption: :func:`verify_job`
then returns ``encrypted=True`` with the seq from the comment (authenticated, and the one
that orders the job), and the receiver must decrypt at the boundary and call
:meth:`VerifiedJob.check_meta` on the decrypted header before the job becomes visible.  The
seq of an encrypted job is visible in its signature, as the seq of a plain job is visible
in its header.

A sender with only ``fspl``, ``age`` and ``minisign`` in a shell makes jobs we accept::

    seq=$(fspl prepare-get-next -s ~/.fspl.seq)
    fspl prepare -s ~/.fspl.seq -i payload | age -r "$RECIPIENT" > job.tmp  # or without age
    sum=$(sha256sum < job.tmp | cut -d' ' -f1)
    name=$(fspl gen-filename)
    minisign -S -s sender.key -m job.tmp -x "$name.minisig" \\
        -t "fspl-gw-job v1 queue=site-b seq=$seq sha256=$sum"
    # upload $name.minisig first, then job.tmp as $name
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fspl_gateway.core import agecrypt
from fspl_gateway.core.errors import FsplError, PacketError, UsageError
from fspl_gateway.core.hashing import MultiHasher, feed_fd
from fspl_gateway.core.minisign import (
    LegacySignatureError,
    PublicKey,
    SecretKey,
    Signature,
    SignatureError,
    hash_file,
    select_key,
    sign_digest,
    verify_comment,
    verify_digest,
)
from fspl_gateway.core.packet import MAGIC, Meta, read_header, read_header_fd

COMMENT_TAG = "fspl-gw-job v1"
_QUEUE_ID = r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}"
_COMMENT = re.compile(rf"{COMMENT_TAG} queue=({_QUEUE_ID}) seq=(0|[1-9][0-9]{{0,19}}) "
                      r"sha256=([0-9a-f]{64})")
_HEAD = 64
#: The first bytes of a job kept (while it is fetched or decrypted) to read its header
#: without opening it again.
HEAD_BYTES = 64 << 10


class BindingError(SignatureError):
    """A valid signature whose trusted comment does not bind this job to this queue."""

    reason = "binding"


class NotAJobSignatureError(BindingError):
    reason = "not-a-job-signature"


class WrongQueueError(BindingError):
    reason = "wrong-queue"


class SeqMismatchError(BindingError):
    reason = "seq-mismatch"


class DigestMismatchError(BindingError):
    reason = "sha256-mismatch"


class NotAJobError(BindingError):
    """The signed file is neither a Filespooler packet nor an age file."""

    reason = "not-a-job"


def check_queue_id(queue_id: str) -> str:
    if not re.fullmatch(_QUEUE_ID, queue_id):
        raise UsageError(f"bad queue id {queue_id!r}: 1-128 of A-Z a-z 0-9 . _ : @ + / -, "
                         "starting with a letter or digit")
    return queue_id


@dataclass(frozen=True)
class Binding:
    """The fields of a job signature's trusted comment."""

    queue: str
    seq: int
    sha256: str

    def to_comment(self) -> str:
        return f"{COMMENT_TAG} queue={self.queue} seq={self.seq} sha256={self.sha256}"

    @classmethod
    def parse(cls, comment: str) -> Binding:
        m = _COMMENT.fullmatch(comment)
        if m is None:
            shown = comment if len(comment) <= 80 else comment[:77] + "..."
            raise NotAJobSignatureError(f"trusted comment is not a job binding "
                                        f"({COMMENT_TAG} queue=… seq=… sha256=…): {shown!r}")
        seq = int(m.group(2))
        if seq >= 1 << 64:
            raise NotAJobSignatureError(f"trusted comment: seq {seq} out of range")
        return cls(m.group(1), seq, m.group(3))


@dataclass(frozen=True)
class VerifiedJob:
    """What a verified signature says about a job."""

    key_id: str
    seq: int
    sha256: str
    comment: str
    queue: str
    #: An age file: the seq inside is checked by :meth:`check_meta` after decryption.
    encrypted: bool
    size: int
    #: The header of a plain packet, as read for the check (None for an age file).
    meta: Meta | None = field(default=None, compare=False)

    def check_meta(self, meta: Meta) -> None:
        """The decrypted packet's header must carry the signed seq."""
        if meta.seq != self.seq:
            raise SeqMismatchError(f"signed seq {self.seq} but the packet's header says "
                                   f"seq {meta.seq}")


def _kind(fd: int) -> str:
    head = os.pread(fd, _HEAD, 0)
    if head.startswith(MAGIC):
        return "packet"
    if agecrypt.is_encrypted(head):
        return "age"
    return "other"


def _header_seq(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    return read_header_fd(fd)[0].seq


def sign_job(path: str | os.PathLike[str], seckey: SecretKey, queue_id: str, *,
             seq: int | None = None) -> bytes:
    """The ``.minisig`` content for a job file, bound to ``queue_id``.

    For a plain packet the seq comes from its header (``seq``, if given, must agree); for
    an age file, which is signed as it is, ``seq`` is required (the plain packet's)."""
    check_queue_id(queue_id)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kind = _kind(fd)
        if kind == "packet":
            header_seq = _header_seq(fd)
            if seq is not None and seq != header_seq:
                raise FsplError(f"{os.fspath(path)}: seq {seq} given, the header says {header_seq}")
            seq = header_seq
        elif kind == "age":
            if seq is None:
                raise UsageError(f"{os.fspath(path)} is encrypted: give the job's seq to sign it")
        else:
            raise FsplError(f"{os.fspath(path)} is neither a Filespooler packet nor an age file")
        if not 0 <= seq < 1 << 64:
            raise UsageError(f"seq {seq} out of range")
        b2, sha = hashlib.blake2b(), hashlib.sha256()
        hash_file(fd, b2, sha)
    finally:
        os.close(fd)
    comment = Binding(queue_id, seq, sha.hexdigest()).to_comment()
    sig = sign_digest(seckey, b2.digest(), comment,
                      f"fspl-gw job signature, key {seckey.key_id}")
    return sig.to_bytes()


@dataclass(frozen=True, slots=True)
class CheckedComment:
    """A job signature whose comment signature verified with ``key`` (a trusted key), and
    the binding its trusted comment states (:func:`check_comment`): what can be checked
    before the job's bytes are there."""

    key: PublicKey
    binding: Binding
    comment: str


def check_comment(sig: Signature, keys: PublicKey | Iterable[PublicKey]) -> CheckedComment:
    """The first half of :func:`verify_job`, which needs only the signature: a trusted key,
    prehashed, the comment signature, and a job binding in the trusted comment (any
    queue: :func:`verify_job` compares it).  SignatureError otherwise — but only
    :func:`verify_job` (its complete check) says *why* in minisign's order."""
    _known_and_prehashed(sig, keys)
    key = verify_comment(sig, keys)
    return CheckedComment(key, Binding.parse(sig.trusted_comment), sig.trusted_comment)


def _known_and_prehashed(sig: Signature, keys: PublicKey | Iterable[PublicKey]) -> None:
    select_key(sig, keys)
    if not sig.prehashed:
        raise LegacySignatureError("legacy (non-prehashed) signature: this needs a prehashed "
                                   "one (minisign's default; do not sign with -l)")


def verify_job(path: str | os.PathLike[str], sig_bytes: bytes | Signature,
               trusted_keys: PublicKey | Iterable[PublicKey], queue_id: str, *,
               sha256: str | None = None, size: int | None = None,
               head: bytes | None = None, checked: CheckedComment | None = None) -> VerifiedJob:
    """Check a job file against its signature: known key, prehashed, the comment
    signature, a job binding for ``queue_id``, the file's sha256, and the header's seq
    (plain packets; see :meth:`VerifiedJob.check_meta` for encrypted ones).  Every refusal
    is a :class:`SignatureError` with a one-line message and a ``reason`` code.

    ``sha256``/``size``/``head`` (the file's digest, length and first bytes, taken while
    it was fetched: :class:`~fspl_gateway.core.hashing.MultiHasher`) spare reading the
    file; without them it is read once.  ``checked``: what :func:`check_comment` found
    for this very signature (read ahead of the fetch, perhaps by another process), so it
    is not parsed and verified twice; ``sig_bytes`` is then parsed only for a refusal.

    **What is checked, and why that is enough.**  The trusted comment — queue id, seq and
    the file's SHA-256 — is covered by the global signature, which is verified.  The
    file's bytes are then bound by comparing their SHA-256 with the signed one: a file
    that passes has the very bytes the key holder signed (SHA-256's collision
    resistance), whatever else the ``.minisig`` says.  minisign's first signature (over
    the BLAKE2b-512 prehash) authenticates those same bytes a second time; it is not
    needed for an *accepted* job, so it is not computed there: no BLAKE2b pass over the
    file (the slowest hash here, 3× SHA-256's time) and one Ed25519 verification per job
    instead of two.  Every refusal is classified by the complete check in minisign's
    order (:func:`_verify_complete`: prehash signature, comment signature, binding), so
    the reason codes are those of ``minisign -V`` followed by the binding checks.  Only
    a key holder can make a comment signature over a file signature that does not
    verify; we would accept such a job where ``minisign -V`` would not — it is still
    exactly what the key holder signed for this queue and seq."""
    keys = [trusted_keys] if isinstance(trusted_keys, PublicKey) else list(trusted_keys)
    sig: Signature | None = None
    if checked is None:
        sig = sig_bytes if isinstance(sig_bytes, Signature) else Signature.parse(sig_bytes)
        _known_and_prehashed(sig, keys)  # an unknown key is refused before the file is read
    if sha256 is None or size is None or head is None:
        h = MultiHasher(("sha256",), head=HEAD_BYTES)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            feed_fd(fd, h)
        finally:
            os.close(fd)
        sha256, size, head = h.hexdigest(), h.size, h.head
    try:
        if checked is None:
            assert sig is not None
            checked = check_comment(sig, keys)
        binding = checked.binding
        metas: list[Meta] = []

        def header_seq() -> int:
            metas.append(head_meta(head, path))
            return metas[0].seq

        kind = _check_binding(binding, queue_id, sha256, header_seq, _kind_of(head))
    except SignatureError:
        if sig is None:
            sig = sig_bytes if isinstance(sig_bytes, Signature) else Signature.parse(sig_bytes)
        _verify_complete(path, sig, keys, queue_id)  # raises with minisign's reason
        raise
    return VerifiedJob(checked.key.key_id, binding.seq, binding.sha256, checked.comment,
                       binding.queue, kind == "age", size, metas[0] if metas else None)


def _kind_of(head: bytes) -> str:
    if head.startswith(MAGIC):
        return "packet"
    if agecrypt.is_encrypted(head[:_HEAD]):
        return "age"
    return "other"


def head_meta(head: bytes, path: str | os.PathLike[str]) -> Meta:
    """A packet's header from its first bytes (from the file if they do not hold the
    whole header)."""
    pos = 0

    def rd(n: int) -> bytes:
        nonlocal pos
        out = head[pos:pos + n]
        pos += len(out)
        return out

    try:
        return read_header(rd)[0]
    except PacketError:
        if len(head) < HEAD_BYTES:
            raise  # that was the whole file
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_header_fd(fd)[0]
    finally:
        os.close(fd)


def _check_binding(binding: Binding, queue_id: str, sha256: str,
                   header_seq: Callable[[], int], kind: str) -> str:
    if binding.queue != queue_id:
        raise WrongQueueError(f"signed for queue {binding.queue!r}, not for this queue "
                              f"({queue_id!r})")
    if binding.sha256 != sha256:
        raise DigestMismatchError(f"signed sha256 {binding.sha256} but the file's is "
                                  f"{sha256}")
    if kind == "packet":
        try:
            seq = header_seq()
        except PacketError as e:
            raise NotAJobError(f"signed file has a bad packet header: {e}") from None
        if seq != binding.seq:
            raise SeqMismatchError(f"signed seq {binding.seq} but the packet's header "
                                   f"says seq {seq}")
    elif kind != "age":
        raise NotAJobError("signed file is neither a Filespooler packet nor an age file")
    return kind


def _verify_complete(path: str | os.PathLike[str], sig: Signature, keys: list[PublicKey],
                     queue_id: str) -> None:
    """minisign's complete check (prehash signature, then comment signature), then the
    binding: raises the first failure (reads the file again: refusals only)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        b2, sha = hashlib.blake2b(), hashlib.sha256()
        hash_file(fd, b2, sha)
        verify_digest(sig, b2.digest(), keys)
        _check_binding(Binding.parse(sig.trusted_comment), queue_id, sha.hexdigest(),
                       lambda: _header_seq(fd), _kind(fd))
    finally:
        os.close(fd)


def check_decrypted(verified: VerifiedJob, path: str | os.PathLike[str]) -> Meta:
    """Read the header of the decrypted packet of an encrypted job and check its seq."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)
    return check_decrypted_head(verified, head, path)


def check_decrypted_head(verified: VerifiedJob, head: bytes,
                         path: str | os.PathLike[str]) -> Meta:
    """:func:`check_decrypted` given the decrypted file's first bytes (taken while it was
    written); the file is read only for a header longer than ``head``."""
    try:
        meta = head_meta(head, path)
    except PacketError as e:
        raise NotAJobError(f"decrypted job has a bad packet header: {e}") from None
    verified.check_meta(meta)
    return meta
