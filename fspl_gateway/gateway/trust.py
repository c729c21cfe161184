"""Trust: only what a trusted sender signed gets into a queue, routed per origin.

The formats are in :mod:`fspl_gateway.core.jobsig` (a detached minisign signature
``fspl-….fspl.minisig`` beside each job, whose trusted comment binds queue id, seq and
sha256) and :mod:`fspl_gateway.core.agecrypt` (age files).
This module is the policy the engines call: small hooks in
:mod:`~fspl_gateway.gateway.pull` and :mod:`~fspl_gateway.gateway.push` call into it.

**Receiver** (:class:`TrustPolicy`, :class:`ReceiveGate`; ``sync --trust``, config
``trusted_keys``).  With trust configured *every* job goes through the gate, whatever the
transport (sync, ``import`` of media, the watch service):

1. before anything is downloaded, the job's ``.minisig`` is read (a few hundred bytes) from
   the listing.  Missing: the job waits — it is not fetched, nothing is recorded but the
   time it was first seen (journal ``signature_waits``) — until the signature wait
   (``signature_wait``, default :data:`DEFAULT_SIGNATURE_WAIT` s) has passed since; then it
   is quarantined as unsigned.  Remotes may list in any order, and a sender writes the
   signature first, so a receiver normally finds both.  An unparsable signature, a key that
   is not trusted, or (with routes) a trusted key that no route names → quarantined.  In a
   run with one thread (a local disk or medium) the signatures are read, parsed and their
   comment signatures verified one batch ahead by the signature worker, a forked process
   (:mod:`~fspl_gateway.gateway.sigworker`), which also deletes them behind the run.  In
   a run with several threads (a network remote) a second pool of as many threads does
   the same one batch ahead (as rclone's checkers do beside its transfers): a signature
   is one more request per job, which then overlaps the fetches instead of preceding each;
2. the job is downloaded into staging and verified there (:func:`~fspl_gateway.core.jobsig.verify_job`),
   from the digests the download itself took (one pass over the file,
   :class:`~fspl_gateway.core.hashing.MultiHasher`): the signature over the trusted
   comment, queue id, the sha256 of the bytes, and the header's seq.  When the batch is
   committed, (key id, seq, sha256) is claimed in the journal (``signers``, one
   transaction per batch) before anything is linked: the same (key, seq) seen before with
   other bytes is a replay (or a forked sender) → quarantined;
3. an encrypted job (age) is decrypted at the boundary, in staging, when the receiver has
   an identity (``--identity``), and only after its ciphertext verified: streamed from the
   staged file (flat memory; :func:`~fspl_gateway.core.agecrypt.decrypt_file`: in process
   for X25519 identities, else through ``age -d``) into a second staging file, its
   plaintext hashed as it is written, its header checked against the signed seq
   (:func:`~fspl_gateway.core.jobsig.check_decrypted_head`); then it is what is linked
   into ``jobs/``.  No decryptor reads bytes that no trusted key signed, and nothing
   decrypted is ever linked before the
   signature over the ciphertext verified.  Why at the boundary: the header of
   an encrypted job cannot be read before decryption, and a queue of plain packets keeps
   ``queue-process``, ``status``, ordering by seq and every fspl-compatible tool working as
   they do.  Without an identity
   an encrypted job is linked as it is and needs ``--decoder 'age -d -i KEY'`` (fspl's own
   recipe) for sync and processing; its decoded header must carry the signed seq;
4. only then does the normal pull path (fsync, link into ``jobs/``, journal) go on.  A
   refusal at any step quarantines the file with its reason (``.reason`` file, exit 3);
   nothing unverified is ever visible in ``jobs/``.  The ``.minisig`` is deleted from the
   remote together with its job under ``--after-fetch delete``.

A kill during verification or decryption leaves only staging files, which the next run
removes and fetches again.

**Routing** (:func:`routed_passes`): ``routes`` maps a key (id or one-line public key) to a
local queue.  ``sync`` then runs one pull per target queue, each taking only the jobs of
its keys (the signatures are read once and shared between the passes), so every origin
keeps its own strict order and its own ``nextseq``, lock, journal and replay record; the
pass into the ``-q`` queue comes last and quarantines what no route takes (unsigned,
unknown or unrouted keys).

**Sender** (:class:`SignPolicy`; ``push --sign KEY --queue-id ID [--encrypt-to R]``): the
job is encrypted first when asked (to a file in ``<outbox>/.fspl-gw/outgoing/``, kept until
the job is pushed, so that a retry sends the same ciphertext), the file that travels is
signed, and the signature is written to the remote *before* the job.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fspl_gateway.core import agecrypt
from fspl_gateway.core.errors import (
    FsplError,
    QueueError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    UsageError,
)
from fspl_gateway.core.fsutil import AtomicWriter, tmp_name
from fspl_gateway.core.hashing import MultiHasher
from fspl_gateway.core.jobsig import (
    HEAD_BYTES,
    Binding,
    CheckedComment,
    VerifiedJob,
    check_comment,
    check_decrypted_head,
    check_queue_id,
    sign_job,
    verify_job,
)
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.minisign import (
    SIG_SUFFIX,
    PublicKey,
    SecretKey,
    Signature,
    SignatureError,
    load_public_key,
    load_verifier,
    read_secret_key,
    secret_key_is_encrypted,
)
from fspl_gateway.core.packet import Meta
from fspl_gateway.gateway.sigworker import SigWorker
from fspl_gateway.transports.base import RemoteEntry, Transport, is_job_name

#: Seconds a job may wait for its signature before it is quarantined as unsigned.
DEFAULT_SIGNATURE_WAIT = 120.0
#: A job signature is a few hundred bytes; a bigger ``.minisig`` is refused unread.
MAX_SIG_BYTES = 4096
#: Signatures a reading thread takes in one request where the transport batches reads.
READ_GROUP = 32
#: The environment variable with the passphrase of an encrypted secret key.
PASSPHRASE_ENV = "FSPL_GW_KEY_PASSPHRASE"


class TrustRefused(FsplError):
    """A job the trust policy refuses: quarantined with this message (its ``reason`` is
    a short code)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sig_name(job_name: str) -> str:
    return job_name + SIG_SUFFIX


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{what} must be a string or a list of strings")


def load_keys(specs: Iterable[str]) -> list[PublicKey]:
    """Public keys from files or minisign one-line keys (``RW…``); duplicates once."""
    out: dict[str, PublicKey] = {}
    for spec in specs:
        k = load_public_key(spec)
        out.setdefault(k.key_id, k)
    return list(out.values())


def load_secret_key(path: str) -> SecretKey:
    """A signing key: unencrypted, or with its passphrase from $FSPL_GW_KEY_PASSPHRASE."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError as e:
        raise UsageError(f"cannot read the secret key {path}: {e.strerror}") from None
    passphrase = None
    if secret_key_is_encrypted(text):
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if not passphrase:
            raise UsageError(f"the secret key {path} is encrypted: set ${PASSPHRASE_ENV}")
    return read_secret_key(path, passphrase)


# -- receiver --------------------------------------------------------------------------
@dataclass
class TrustPolicy:
    """What a receiving queue trusts (see the module doc)."""

    keys: list[PublicKey]
    queue_id: str
    identities: list[str] = field(default_factory=list)
    signature_wait: float = DEFAULT_SIGNATURE_WAIT
    #: key id → queue directory (routing); empty: every trusted key goes to this queue.
    routes: dict[str, str] = field(default_factory=dict)
    #: Key ids this pass takes (None: every trusted key, subject to routes).
    accept: frozenset[str] | None = None
    #: The pass that quarantines what no pass takes (unsigned, unknown, unrouted).
    main: bool = True
    #: Signatures read in this sync, shared by its passes: name → (tag, size, bytes).
    cache: dict[str, tuple[str | None, int | None, bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise UsageError("trust needs at least one trusted public key")
        check_queue_id(self.queue_id)
        for f in self.identities:
            if not os.access(f, os.R_OK):
                raise UsageError(f"cannot read the age identity file {f}")
        if self.identities:
            agecrypt.age_binary()  # missing: an error for the run, not a refused job
        if self.signature_wait < 0:
            raise UsageError("signature wait must not be negative")

    @functools.cached_property
    def key_ids(self) -> frozenset[str]:
        return frozenset(k.key_id for k in self.keys)

    @functools.cached_property
    def keynums(self) -> frozenset[bytes]:
        return frozenset(k.keynum for k in self.keys)

    def for_pass(self, accept: frozenset[str] | None, main: bool) -> TrustPolicy:
        """A copy for one routing pass (sharing the signature cache)."""
        p = TrustPolicy(self.keys, self.queue_id, self.identities, self.signature_wait,
                        self.routes, accept, main, self.cache)
        p._lock = self._lock
        return p


def _route_key(spec: str, keys: list[PublicKey]) -> PublicKey:
    s = spec.strip()
    for k in keys:
        if s.upper() == k.key_id:
            return k
    if len(s) == 16:
        raise UsageError(f"route key {s}: no trusted key has this id (give the public key)")
    return load_public_key(s)


def policy_from(settings: Mapping[str, Any], *, trust: Sequence[str] = (),
                queue_id: str | None = None, identities: Sequence[str] = (),
                signature_wait: float | None = None,
                routes: Sequence[tuple[str, str]] = ()) -> TrustPolicy | None:
    """The receiving policy from a remote's config trust settings and command-line flags
    (flags add keys, identities and routes; they replace the queue id and the wait).
    None when no trusted key and no route is configured (trust off)."""
    specs = _strings(settings.get("trusted_keys"), "trusted_keys") + list(trust)
    table = settings.get("routes") or {}
    if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
        raise UsageError("routes must be a table of key = \"queue directory\"")
    route_specs = list(table.items()) + list(routes)
    if not specs and not route_specs:
        if queue_id or identities:
            raise UsageError("--queue-id and --identity need trusted keys (--trust)")
        return None
    keys = load_keys(specs)
    route_map: dict[str, str] = {}
    for spec, qdir in route_specs:
        k = _route_key(spec, keys)
        if k.key_id not in {x.key_id for x in keys}:
            keys.append(k)  # a routed key is trusted
        route_map[k.key_id] = os.path.abspath(os.path.expanduser(qdir))
    qid = queue_id or settings.get("queue_id")
    if not qid or not isinstance(qid, str):
        raise UsageError("trust needs the queue id that senders sign for: --queue-id ID "
                         "(config: queue_id)")
    wait = signature_wait if signature_wait is not None else settings.get(
        "signature_wait", DEFAULT_SIGNATURE_WAIT)
    if not isinstance(wait, int | float) or isinstance(wait, bool):
        raise UsageError("signature_wait must be a number of seconds")
    ids = _strings(settings.get("identity"), "identity") + list(identities)
    return TrustPolicy(keys, qid, ids, float(wait), route_map)


@dataclass
class Admitted:
    """A staged job that passed the gate: ``path`` (the plaintext when it was
    decrypted) with its sha256, size and first bytes, the verified signature, and whether
    the header is still to be checked against the signed seq (an encrypted job read
    through a decoder)."""

    path: str
    verified: VerifiedJob
    check_header: bool
    sha256: str
    size: int
    head: bytes


@dataclass(slots=True)
class SignatureRead:
    """What a job's listed ``.minisig`` says, read before the job is fetched (ahead of it
    by the signature worker, :meth:`ReceiveGate.prefetch`, or by :meth:`ReceiveGate.before_fetch`)."""

    #: The file's bytes; None when no signature is listed (or it vanished).
    data: bytes | None = None
    #: Refused unread (too big).
    refused: TrustRefused | None = None
    #: The parsed signature (None where the worker checked it: parsed again only for a
    #: refusal).
    sig: Signature | None = None
    #: Why it does not parse.
    bad: SignatureError | None = None
    #: Its comment signature verified with a trusted key, and its binding (None: not
    #: checked, or it failed and :func:`verify_job` finds out why).
    checked: CheckedComment | None = None

    @property
    def key_id(self) -> str:
        if self.checked is not None:
            return self.checked.key.key_id
        assert self.sig is not None
        return self.sig.key_id


class _SigBuffer(io.BytesIO):
    """The bytes of one signature file, refused past :data:`MAX_SIG_BYTES`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def write(self, data: Any, /) -> int:
        if self.tell() + len(data) > MAX_SIG_BYTES:
            raise TrustRefused("bad-signature", f"signature file {self.name} is over "
                               f"{MAX_SIG_BYTES} bytes")
        return super().write(data)


class ReceiveGate:
    """The trust hooks of one pull run (see the module doc)."""

    def __init__(self, policy: TrustPolicy, transport: Transport, remote: str, qdir: str,
                 call: Callable[[Callable[[], Any], str], Any]) -> None:
        self.p = policy
        self.t = transport
        self.remote = remote
        self.qdir = qdir
        #: ``retry.call`` bound to the run's stop event.
        self.call = call
        #: The listed signature files, by the name of their job.
        self.sigs: dict[str, RemoteEntry] = {}
        #: Their own names (not jobs: not planned, not warned about).
        self.sig_names: set[str] = set()
        self.waiting = 0
        self._worker: SigWorker | None = None
        #: Job names whose signature the worker was asked to check.
        self._ahead: set[str] = set()
        #: Several-thread runs: the pool reading signatures ahead, and its reads by job.
        self._readers: ThreadPoolExecutor | None = None
        self._reads: dict[str, Future[SignatureRead]] = {}

    def index(self, entries: Iterable[RemoteEntry]) -> None:
        """Note the signature files of a listing (by the name of their job)."""
        for e in entries:
            if e.name.endswith(SIG_SUFFIX) and is_job_name(e.name[:-len(SIG_SUFFIX)]):
                self.sigs[e.name[:-len(SIG_SUFFIX)]] = e
                self.sig_names.add(e.name)

    def companions(self, names: Iterable[str]) -> list[str]:
        """The listed signature files of ``names``: removed from the remote with them."""
        return [sig_name(n) for n in names if n in self.sigs]

    # -- the signature worker (one-thread runs) ---------------------------------------
    def start_worker(self) -> None:
        """For a run in one thread (a local disk): fork the signature worker
        (:mod:`~fspl_gateway.gateway.sigworker`) now, at the start of the run, so that it
        loads its keys and the Ed25519 code while this process lists the remote.  Where
        forking is not safe the gate does the work itself."""
        if self._worker is None:
            self._worker = SigWorker.start(self._check_packed, self._delete_sigs,
                                           init=load_verifier)

    def start_readers(self, threads: int) -> None:
        """For a run in ``threads`` threads (a network remote): start as many threads that
        read and check signatures ahead of the fetch (:meth:`prefetch`)."""
        if self._readers is None and threads > 1:
            self._readers = ThreadPoolExecutor(threads, thread_name_prefix="sig-read")

    def prefetch(self, entries: Sequence[RemoteEntry]) -> None:
        """Have the worker (or the reading threads) read, parse and check the signatures
        of ``entries`` (this batch and the next) while the run fetches.
        :meth:`before_fetch` takes the answers, and does the work itself where there is
        none (no worker, or it ended)."""
        if self._worker is None:
            if self._readers is None:
                return
            todo = [e.name for e in entries if e.name in self.sigs and e.name not in self._reads]
            if not self.t.capabilities.batch_reads:
                for name in todo:
                    self._reads[name] = self._readers.submit(self._check, name)
                return
            for i in range(0, len(todo), READ_GROUP):  # a group a request (SFTP)
                group = {name: Future[SignatureRead]() for name in todo[i:i + READ_GROUP]}
                self._reads.update(group)
                self._readers.submit(self._check_group, group)
            return
        names = [e.name for e in entries if e.name in self.sigs and e.name not in self._ahead]
        if names and self._worker.ask([[n, self.sigs[n].size, self.sigs[n].tag] for n in names]):
            self._ahead.update(names)

    def delete_behind(self, sig_names: Sequence[str]) -> list[str]:
        """Have the worker delete these signature files (their jobs are durable and
        journaled); those the caller must delete itself (all of them without a worker)."""
        if self._worker is None or not self._worker.delete(sig_names):
            return list(sig_names)
        return []

    def close(self) -> list[str]:
        """End the reading threads (their reads not yet begun are dropped) and the worker;
        the signature files it could not delete (the caller deletes them itself, with its
        retries and warnings)."""
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True, cancel_futures=True)
            self._reads.clear()
        worker, self._worker = self._worker, None
        self._ahead.clear()
        if worker is None:
            return []
        return [name for name, _ in worker.close()]

    def _check_group(self, group: dict[str, Future[SignatureRead]]) -> None:
        """In a reading thread: the signatures of ``group``'s jobs taken with one
        :meth:`Transport.fetch_small` (into the cache), then :meth:`_check` of each,
        into its future.  One the batch did not bring (its own error, or the batch
        failed) is read again by :meth:`_check`, as it would be inline."""
        try:
            with self.p._lock:  # (another routing pass may have read some already)
                want = [e for e in (self.sigs[n] for n in group)
                        if e.size is not None and e.size <= MAX_SIG_BYTES
                        and self.p.cache.get(e.name, (None, None))[:2] != (e.tag, e.size)]
            try:
                got = self.call(lambda: self.t.fetch_small(want),
                                f"reading {len(want)} signatures")
            except Exception:  # noqa: BLE001 - each one is read (and fails) on its own below
                got = {}
            with self.p._lock:
                for e in want:
                    data = got.get(e.name)
                    if isinstance(data, bytes):
                        self.p.cache[e.name] = (e.tag, e.size, data)
            for name, fut in group.items():
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(self._check(name))
                    except BaseException as err:  # noqa: BLE001 - raised where it is taken
                        fut.set_exception(err)
        finally:
            for fut in group.values():  # never leave a fetch waiting
                if not fut.done():
                    fut.set_exception(TransientError("the signature read ended early"))

    def _check_packed(self, item: list[Any]) -> list[Any] | None:
        """In the worker: :meth:`_check` of one job's signature (``item``: job name, and
        the size and tag of its listed ``.minisig``), as msgpack-able values: the bytes,
        the key's index, and the comment and its binding of a signature whose comment
        signature verified.  None in any other case: the parent does that one itself,
        so that a refusal comes out exactly as inline."""
        name, size, tag = item
        self.sigs[name] = RemoteEntry(sig_name(name), size, tag)
        try:
            r = self._check(name)
        except Exception:  # noqa: BLE001 - redone in the parent, where it surfaces
            return None
        c = r.checked
        if c is None or r.data is None:
            return None
        b = c.binding
        return [r.data, next(i for i, k in enumerate(self.p.keys) if k is c.key), c.comment,
                b.queue, b.seq, b.sha256]

    def _unpack(self, name: str, ans: list[Any]) -> SignatureRead:
        data, key, comment, queue, seq, sha = ans
        sig_e = self.sigs.get(name)
        if sig_e is not None and self.p.routes:
            with self.p._lock:  # as _read_sig keeps it, for the other routing passes
                self.p.cache[sig_e.name] = (sig_e.tag, sig_e.size, data)
        return SignatureRead(data=data, checked=CheckedComment(
            self.p.keys[key], Binding(queue, seq, sha), comment))

    def _delete_sigs(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """In the worker: delete signature files; the failures (gone already is fine)."""
        errors = self.t.delete_many(names)
        return [(n, str(err)) for n, err in errors.items()
                if not isinstance(err, RemoteNotFoundError)]

    def _check(self, name: str) -> SignatureRead:
        r = SignatureRead()
        sig_e = self.sigs.get(name)
        if sig_e is None:
            return r
        try:
            r.data = self._read_sig(sig_e)
        except RemoteNotFoundError:
            return r
        except TrustRefused as refused:
            r.refused = refused
            return r
        try:
            r.sig = Signature.parse(r.data)
        except SignatureError as err:
            r.bad = err
            return r
        if r.sig.keynum in self.p.keynums:
            try:
                r.checked = check_comment(r.sig, self.p.keys)
            except SignatureError:
                pass  # verify_job classifies it with minisign's complete check
        return r

    def _read_sig(self, e: RemoteEntry) -> bytes:
        with self.p._lock:
            hit = self.p.cache.get(e.name)
        if hit is not None and hit[0] == e.tag and hit[1] == e.size:
            return hit[2]
        if e.size is not None and e.size > MAX_SIG_BYTES:
            raise TrustRefused("bad-signature", f"signature file {e.name} is {e.size} bytes "
                               f"(a job signature is under {MAX_SIG_BYTES})")

        def read() -> bytes:
            # fetch, not open: the transport's own way to take a whole file (one
            # request: S3's lean GET, a pooled SFTP channel with the reads and the close
            # in one round trip; a local file still being written is left for later),
            # bounded by the listed size, and by the buffer where a listing has none.
            buf = _SigBuffer(e.name)
            self.t.fetch(e.name, buf, e)
            return buf.getvalue()

        data: bytes = self.call(read, f"reading {e.name}")
        with self.p._lock:
            self.p.cache[e.name] = (e.tag, e.size, data)
        return data

    def before_fetch(self, e: RemoteEntry, journal: Any) -> SignatureRead | TrustRefused | None:
        """Whether to fetch job ``e``: what its signature says (fetch it and
        :meth:`admit` it), a TrustRefused (fetch it into the quarantine), or None (leave
        it: it waits for its signature, or another routing pass takes it)."""
        r = None
        read = self._reads.pop(e.name, None)
        if read is not None:
            r = read.result()  # what _check gave, or raised, in the reading thread
        elif e.name in self._ahead and self._worker is not None:
            self._ahead.discard(e.name)
            ans = self._worker.answer(e.name)
            if ans is not None:
                r = self._unpack(e.name, ans)
        if r is None:
            r = self._check(e.name)
        if r.refused is not None:
            return r.refused if self.p.main else None
        if r.data is None:
            return self._unsigned(e, journal)
        if r.bad is not None:
            return TrustRefused(r.bad.reason, f"bad signature file: {r.bad}") if self.p.main else None
        kid = r.key_id
        if kid not in self.p.key_ids:
            if not self.p.main:
                return None
            return TrustRefused("unknown-key", f"signed by key {kid}, which is not trusted")
        if self.p.routes and kid not in self.p.routes:
            if not self.p.main:
                return None
            return TrustRefused("unrouted-key", f"signed by trusted key {kid}, which no route "
                                "sends to a queue")
        if self.p.accept is not None and kid not in self.p.accept:
            return None
        return r

    def _unsigned(self, e: RemoteEntry, journal: Any) -> TrustRefused | None:
        if not self.p.main:
            return None
        now = time.time()
        waited = now - journal.first_seen(self.remote, e.name, now)
        if waited >= self.p.signature_wait:
            return TrustRefused("unsigned", f"no signature ({sig_name(e.name)}) after "
                                f"{waited:.0f} s")
        log.info("%s from %s has no signature yet; waiting (%.0f of %.0f s)", e.name,
                 self.remote, waited, self.p.signature_wait)
        self.waiting += 1
        return None

    def admit(self, path: str, e: RemoteEntry, read: SignatureRead, decoder: str | None,
              fetched: MultiHasher) -> Admitted:
        """Verify a staged job (``fetched``: its digests and first bytes, taken while it
        was fetched); then, an age file with identities here, decrypt it (only now: age
        never reads bytes no trusted key signed) and take its plaintext.  Its (key, seq,
        sha256) is claimed by :meth:`claim` with its batch, before it is linked.
        TrustRefused for any failure (``path`` is then still the staged file, for the
        quarantine; a plaintext is removed)."""
        sha, head = fetched.hexdigest(), fetched.head
        try:
            sig = read.sig if read.sig is not None else read.data
            assert sig is not None
            v = verify_job(path, sig, self.p.keys, self.p.queue_id, sha256=sha,
                           size=fetched.size, head=head, checked=read.checked)
        except SignatureError as err:
            raise TrustRefused(err.reason, str(err)) from None
        same = Admitted(path, v, False, sha, fetched.size, head)
        if not v.encrypted:
            return same
        if not self.p.identities:
            if decoder is None:
                raise TrustRefused("encrypted", "the job is encrypted (age) and this receiver "
                                   "has no --identity (or --decoder) to read it")
            same.check_header = True
            return same
        adm = self._decrypt(path, e, v)
        os.unlink(path)
        return adm

    def _decrypt(self, path: str, e: RemoteEntry, v: VerifiedJob) -> Admitted:
        """Decrypt the verified ciphertext ``path`` into a new staging file, hashing the
        plaintext as it is written (:func:`~fspl_gateway.core.agecrypt.decrypt_file`); its
        header must carry the signed seq.  TrustRefused (the plaintext removed) when it
        cannot be decrypted."""
        out = os.path.join(os.path.dirname(path), tmp_name(e.name[:64]))
        pt = MultiHasher(("sha256",), head=HEAD_BYTES)
        try:
            if not agecrypt.decrypt_file(path, out, self.p.identities, pt):
                raise TrustRefused("decrypt", "cannot decrypt: not an age file")
            check_decrypted_head(v, pt.head, out)
        except BaseException as err:
            _unlink_quiet(out)
            if isinstance(err, agecrypt.AgeError):
                raise TrustRefused("decrypt", f"cannot decrypt: {err}") from None
            if isinstance(err, SignatureError):
                raise TrustRefused(err.reason, str(err)) from None
            raise
        return Admitted(out, v, False, pt.hexdigest(), pt.size, pt.head)

    def claim(self, journal: Any, jobs: Sequence[tuple[str, VerifiedJob]]
              ) -> list[TrustRefused | None]:
        """Claim (key id, seq, sha256) of verified jobs (name, verification) in the
        journal, in one transaction, before they are linked: per job None, or a
        TrustRefused for a (key, seq) already signed with other bytes (a replay)."""
        others = journal.claim_signed_many([(v.key_id, v.seq, v.sha256, self.remote, name)
                                            for name, v in jobs])
        return [None if other is None else TrustRefused(
                    "replay", f"key {v.key_id} already signed seq {v.seq} with other bytes "
                    f"(sha256 {other}): a replay or a forked sender")
                for (_, v), other in zip(jobs, others, strict=True)]

    @staticmethod
    def check_header(adm: Admitted, meta: Meta) -> None:
        if adm.check_header:
            try:
                adm.verified.check_meta(meta)
            except SignatureError as err:
                raise TrustRefused(err.reason, str(err)) from None


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def routed_passes(policy: TrustPolicy, qdir: str) -> list[tuple[str, TrustPolicy]]:
    """(queue directory, policy) per pull pass: one per route target (its keys), the
    ``qdir`` pass last (its routed keys, and it quarantines what no route takes)."""
    main = os.path.abspath(qdir)
    if not policy.routes:
        return [(qdir, policy)]
    targets: dict[str, set[str]] = {}
    for kid, q in policy.routes.items():
        targets.setdefault(q, set()).add(kid)
    passes = [(q, policy.for_pass(frozenset(ids), False))
              for q, ids in sorted(targets.items()) if q != main]
    passes.append((qdir, policy.for_pass(frozenset(targets.get(main, set())), True)))
    return passes


# -- sender ----------------------------------------------------------------------------
@dataclass
class SignPolicy:
    """What a sender does to each job: sign it for ``queue_id`` (and encrypt it first to
    ``recipients``)."""

    key: SecretKey | None
    queue_id: str | None
    recipients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key is not None:
            if not self.queue_id:
                raise UsageError("signing needs the receiver's queue id: --queue-id ID "
                                 "(config: queue_id)")
            check_queue_id(self.queue_id)
        self.recipients = [agecrypt.check_recipient(r) for r in self.recipients]
        if self.recipients:
            agecrypt.age_binary()


def sign_policy_from(settings: Mapping[str, Any], *, sign: str | None = None,
                     queue_id: str | None = None,
                     encrypt_to: Sequence[str] = ()) -> SignPolicy | None:
    """The sending policy from a remote's config and flags; None when neither signing
    nor encryption is asked for."""
    key_path = sign or settings.get("sign_key")
    recipients = _strings(settings.get("encrypt_to"), "encrypt_to") + list(encrypt_to)
    if not key_path and not recipients:
        if queue_id:
            raise UsageError("--queue-id needs a signing key (--sign)")
        return None
    key = load_secret_key(os.path.expanduser(key_path)) if key_path else None
    qid = queue_id or settings.get("queue_id")
    return SignPolicy(key, qid if isinstance(qid, str) else None, recipients)


class Outgoing:
    """What travels for one outbox job: the job itself or its encrypted copy (in
    ``<outbox>/.fspl-gw/outgoing/``, made once and reused by a retry), and its signature."""

    def __init__(self, policy: SignPolicy, qdir: str, name: str, path: str, seq: int) -> None:
        self.p = policy
        self.name = name
        self.path = path
        self.seq = seq
        self.encrypted = False
        self.dir = QueueLayout(qdir).outgoing
        if policy.recipients:
            self.path = self._encrypt(path)
            self.encrypted = True
        self.sig = (sign_job(self.path, policy.key, policy.queue_id or "", seq=seq)
                    if policy.key is not None else None)

    def _encrypt(self, plain: str) -> str:
        out = os.path.join(self.dir, self.name)
        if os.path.exists(out):
            return out  # made by an earlier attempt: the same ciphertext again
        try:
            os.makedirs(self.dir, exist_ok=True)
            w = AtomicWriter(self.dir, self.name)
        except OSError as e:
            raise QueueError(f"cannot write into {self.dir}: {e.strerror}") from None
        try:
            with open(plain, "rb") as src:
                agecrypt.encrypt_stream(src.fileno(), w.fileno(), self.p.recipients)
            w.commit()
        except BaseException:
            w.abort()
            raise
        return out

    def send_signature(self, t: Transport, call: Callable[[Callable[[], Any], str], Any]) -> None:
        """Write the signature to the remote (before the job).  One already there with
        other bytes (a stale one) is replaced."""
        if self.sig is None:
            return
        sig = self.sig
        name = sig_name(self.name)

        def write() -> None:
            try:
                t.write_new(name, io.BytesIO(sig), len(sig))
            except RemoteExistsError:
                with t.open(name) as s:
                    if s.read(MAX_SIG_BYTES + 1) == sig:
                        return
                t.delete(name)
                t.write_new(name, io.BytesIO(sig), len(sig))

        call(write, f"writing {name}")

    def done(self) -> None:
        """The job is pushed: remove its encrypted copy."""
        if self.encrypted:
            _unlink_quiet(self.path)


# -- media -----------------------------------------------------------------------------
MANIFEST_TAG = "fspl-gw-manifest v1"


#: The most manifest bytes read to check its signature (a manifest line is ~120 bytes).
MAX_MANIFEST_BYTES = 64 << 20


def _manifest_hashes(manifest: bytes) -> tuple[bytes, str]:
    import hashlib

    return hashlib.blake2b(manifest).digest(), hashlib.sha256(manifest).hexdigest()


def sign_manifest(manifest: bytes, policy: SignPolicy) -> bytes:
    """The ``.minisig`` of a medium's manifest (its bytes): the trusted comment binds the
    queue id and the manifest's sha256, so a medium's set of jobs is authenticated as a
    whole."""
    from fspl_gateway.core.minisign import sign_digest

    assert policy.key is not None
    b2, sha = _manifest_hashes(manifest)
    comment = f"{MANIFEST_TAG} queue={policy.queue_id} sha256={sha}"
    return sign_digest(policy.key, b2, comment,
                       f"fspl-gw manifest signature, key {policy.key.key_id}").to_bytes()


def verify_manifest_signature(manifest: bytes, sig: bytes | None, policy: TrustPolicy) -> str:
    """Check a medium's manifest (its bytes) against its signature (None: missing); the
    signer's key id, or TrustRefused (missing, bad, other queue, other bytes)."""
    from fspl_gateway.core.minisign import verify_digest

    if sig is None:
        raise TrustRefused("unsigned", "the manifest has no signature")
    b2, sha = _manifest_hashes(manifest)
    try:
        parsed = Signature.parse(sig)
        key = verify_digest(parsed, b2, policy.keys)
    except SignatureError as err:
        raise TrustRefused(err.reason, f"manifest: {err}") from None
    want = f"{MANIFEST_TAG} queue={policy.queue_id} sha256={sha}"
    if parsed.trusted_comment != want:
        raise TrustRefused("binding", f"the manifest signature binds "
                           f"{parsed.trusted_comment!r}, not {want!r}")
    return key.key_id


def write_signature(dirpath: str, job_name: str, sig: bytes) -> None:
    """Write ``<job>.minisig`` into ``dirpath`` atomically (a medium's jobs/)."""
    with AtomicWriter(dirpath, sig_name(job_name), clobber=True) as w:
        w.file.write(sig)
