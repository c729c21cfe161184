"""sync with trust (fspl_gateway.gateway.trust): only jobs a trusted key signed for this
queue get in, over every transport; every refusal is quarantined with its reason."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fspl_gateway.core import jobsig
from fspl_gateway.core import minisign as ms
from fspl_gateway.core import queue as q
from fspl_gateway.gateway import journal as jr
from fspl_gateway.gateway.pull import pull
from fspl_gateway.transports.base import Transport
from tests.transports.backends import Backend
from tests.trust.util import QID, job_name, opts, policy, reasons, signed

SIG = ".minisig"


@pytest.fixture(params=["local", "s3", "sftp", "dropbox", "media_dir"])
def backend(request: pytest.FixtureRequest) -> Backend:
    b = request.getfixturevalue(f"backend_{request.param}")
    assert isinstance(b, Backend)
    return b


@pytest.fixture
def key() -> ms.SecretKey:
    return ms.generate_keypair()


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    q.queue_init(str(tmp_path / "queue"))
    return tmp_path / "queue"


def _put(b: Backend, t: Transport, name: str, job: bytes, sig: bytes | None) -> None:
    if sig is not None:
        b.put(t, name + SIG, sig)
    b.put(t, name, job)


def test_signed_jobs_get_in_and_their_signatures_leave_with_them(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    t = backend.make()
    for i in (1, 2, 3):
        _put(backend, t, job_name(i), *signed(key, i, tmp_path))
    res = pull(t, qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (3, 0), res.summary()
    assert sorted(os.listdir(qdir / "jobs")) == [job_name(i) for i in (1, 2, 3)]
    if t.capabilities.can_delete:
        assert backend.raw_names(t) == []  # the .minisig went with its job
    assert jr.signers(str(qdir)) == [(key.key_id, 3, 3, pytest.approx(jr.signers(str(qdir))[0][3]))]


def test_every_refusal_is_quarantined_with_its_reason_and_never_visible(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    t = backend.make()
    stranger = ms.generate_keypair()
    good, good_sig = signed(key, 1, tmp_path)
    _put(backend, t, job_name(1), good, good_sig)
    cases = {}
    # forged: signed by a key the receiver does not trust
    cases[2] = ("unknown-key", *signed(stranger, 2, tmp_path))
    # forged with a trusted key id: the signature bytes are not the key's
    job, sig = signed(stranger, 3, tmp_path)
    forged = ms.Signature.parse(sig)
    sig = ms.Signature(forged.algorithm, ms.parse_key_id(key.key_id), forged.signature,
                       forged.trusted_comment, forged.global_signature,
                       forged.untrusted_comment).to_bytes()
    cases[3] = ("bad-signature", job, sig)
    # altered payload
    job, sig = signed(key, 4, tmp_path)
    cases[4] = ("bad-signature", job[:-1] + bytes([job[-1] ^ 1]), sig)
    # truncated
    job, sig = signed(key, 5, tmp_path)
    cases[5] = ("bad-signature", job[:-10], sig)
    # cross-queue: signed for another queue
    cases[6] = ("wrong-queue", *signed(key, 6, tmp_path, queue="site-c"))
    # unsigned
    cases[7] = ("unsigned", signed(key, 7, tmp_path)[0], None)
    # garbage signature file
    cases[8] = ("malformed-signature", signed(key, 8, tmp_path)[0], b"not a signature\n")
    # a valid signature whose trusted comment names other bytes
    job = signed(key, 9, tmp_path)[0]
    (tmp_path / "j9").write_bytes(job)
    comment = jobsig.Binding(QID, 9, "0" * 64).to_comment()
    cases[9] = ("sha256-mismatch", job, ms.sign_digest(
        key, ms.blake2b_file(tmp_path / "j9"), comment, "x").to_bytes())
    for i, (_, job, sig) in cases.items():
        _put(backend, t, job_name(i), job, sig)
    res = pull(t, qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (1, len(cases)), res.summary()
    assert os.listdir(qdir / "jobs") == [job_name(1)]
    why = reasons(qdir)
    for i, (reason, _, _) in cases.items():
        assert why[job_name(i)].startswith(reason), (i, why[job_name(i)])
    assert res.exit_code == 3
    # a replay: the same (key, seq 1) with other bytes, after the first was fetched
    replay, replay_sig = signed(key, 1, tmp_path, payload=b"rm -rf /\n")
    _put(backend, t, job_name(1, tag=9), replay, replay_sig)
    res = pull(t, qdir, opts(policy(key)))
    assert res.fetched == 0
    assert reasons(qdir)[job_name(1, tag=9)].startswith("replay:")
    assert os.listdir(qdir / "jobs") == [job_name(1)]


def test_an_oversized_signature_file_is_refused_unread(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """Over every transport: a ``.minisig`` bigger than any job signature is refused from
    its listed size (never read), the job quarantined; a good one beside it gets in."""
    t = backend.make()
    _put(backend, t, job_name(1), *signed(key, 1, tmp_path))
    job, sig = signed(key, 2, tmp_path)
    _put(backend, t, job_name(2), job, sig + b"#" * 5000)
    res = pull(t, qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (1, 1), res.summary()
    assert reasons(qdir)[job_name(2)].startswith("bad-signature"), reasons(qdir)


def test_a_listing_without_sizes_still_reads_no_more_than_a_signature(
        key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """A remote that lists no sizes: the signature is read through a capped buffer, so a
    huge ``.minisig`` is refused after 4 KiB, not read whole."""
    from fspl_gateway.gateway.trust import MAX_SIG_BYTES
    from fspl_gateway.transports.base import RemoteEntry
    from fspl_gateway.transports.local import LocalTransport

    class NoSizes(LocalTransport):
        def list(self):  # type: ignore[no-untyped-def]
            return iter([RemoteEntry(e.name, None, e.tag, e.mtime) for e in super().list()])

    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    job, sig = signed(key, 1, tmp_path)
    (remote / "jobs" / job_name(1)).write_bytes(job)
    (remote / "jobs" / (job_name(1) + SIG)).write_bytes(sig + b"#" * (64 << 20))
    res = pull(NoSizes(str(remote)), qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (0, 1), res.summary()
    why = reasons(qdir)[job_name(1)]
    assert why.startswith("bad-signature") and f"over {MAX_SIG_BYTES} bytes" in why, why


def test_a_signature_still_being_written_is_left_for_a_later_run(
        key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """A local ``.minisig`` that a process on this host still has open for writing (``cp``
    half-way) is not read as a bad signature: the job waits for a later run, and gets in
    once the writer is done."""
    from fspl_gateway.transports.local import LocalTransport

    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    job, sig = signed(key, 1, tmp_path)
    (remote / "jobs" / job_name(1)).write_bytes(job)
    with open(remote / "jobs" / (job_name(1) + SIG), "wb") as writer:
        writer.write(sig[:40])
        writer.flush()
        res = pull(LocalTransport(str(remote)), qdir, opts(policy(key)))
        assert (res.fetched, res.quarantined, res.unsettled) == (0, 0, 1), res.summary()
        writer.write(sig[40:])
    res = pull(LocalTransport(str(remote)), qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (1, 0), res.summary()


def _many_jobs(key: ms.SecretKey, n: int, bad: dict[int, str], tmp: Path,
               put: Callable[[str, bytes], object]) -> None:
    """Jobs 1..n signed by ``key`` (each signature put first), but for those in ``bad``:
    "bad-signature" (its payload altered), "unknown-key" (signed by a stranger),
    "unsigned" (no signature)."""
    stranger = ms.generate_keypair()
    for i in range(1, n + 1):
        job, sig = signed(stranger if bad.get(i) == "unknown-key" else key, i, tmp)
        if bad.get(i) == "bad-signature":
            job = job[:-1] + bytes([job[-1] ^ 1])
        if bad.get(i) != "unsigned":
            put(job_name(i) + SIG, sig)
        put(job_name(i), job)


def test_an_orphan_signature_of_a_job_taken_before_is_removed(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """A signature left on the remote after its job was taken (a run ended between the
    two removals, or the signature's failed) goes with the next sync; a signature whose
    job has not arrived yet (a sender writes it first) is left alone."""
    t = backend.make()
    if not t.capabilities.can_delete:
        pytest.skip("a read-only remote keeps everything")
    for i in (1, 2):
        _put(backend, t, job_name(i), *signed(key, i, tmp_path))
    res = pull(t, qdir, opts(policy(key)))
    assert res.fetched == 2 and backend.raw_names(t) == [], res.summary()
    backend.put(t, job_name(1) + SIG, signed(key, 1, tmp_path)[1])  # left behind
    job3, sig3 = signed(key, 3, tmp_path)
    backend.put(t, job_name(3) + SIG, sig3)  # its job is on its way
    res = pull(t, qdir, opts(policy(key, signature_wait=3600)))
    assert (res.fetched, res.quarantined, res.failed) == (0, 0, 0), res.summary()
    assert backend.raw_names(t) == [job_name(3) + SIG]
    backend.put(t, job_name(3), job3)
    res = pull(t, qdir, opts(policy(key)))
    assert res.fetched == 1 and backend.raw_names(t) == [], res.summary()


def test_a_job_waits_for_its_signature_then_gets_in(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    t = backend.make()
    job, sig = signed(key, 1, tmp_path)
    backend.put(t, job_name(1), job)  # the signature is not there yet
    res = pull(t, qdir, opts(policy(key, signature_wait=3600)))
    assert (res.fetched, res.quarantined, res.waiting, res.exit_code) == (0, 0, 1, 0)
    assert os.listdir(qdir / "jobs") == []
    assert job_name(1) in backend.raw_names(t)  # left alone
    backend.put(t, job_name(1) + SIG, sig)
    res = pull(t, qdir, opts(policy(key, signature_wait=3600)))
    assert (res.fetched, res.waiting) == (1, 0), res.summary()


def test_without_trust_nothing_changes(backend: Backend, key: ms.SecretKey, qdir: Path,
                                       tmp_path: Path) -> None:
    t = backend.make()
    _put(backend, t, job_name(1), *signed(key, 1, tmp_path))
    res = pull(t, qdir, opts(None))
    assert res.fetched == 1


def test_our_push_signs_and_encrypts_over_every_transport(
        backend: Backend, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    from fspl_gateway.gateway.push import PushOptions, push
    from fspl_gateway.gateway.trust import SignPolicy
    from tests.trust.util import FAST, age_identity
    from tests.unit.test_sync import make_job

    ident, recipient = age_identity(tmp_path)
    ob = tmp_path / "outbox"
    q.queue_init(str(ob))
    for i in (1, 2):
        (ob / "jobs" / job_name(i)).write_bytes(make_job(i))
    t = backend.make()
    res = push(t, ob, PushOptions(retry=FAST, progress=False,
                                  sign=SignPolicy(key, QID, [recipient])))
    assert res.pushed == 2, res.summary()
    assert sorted(backend.raw_names(t)) == sorted(
        [job_name(1), job_name(1) + SIG, job_name(2), job_name(2) + SIG])
    res2 = pull(t, qdir, opts(policy(key, identities=[ident])))
    assert res2.fetched == 2, res2.summary()
    assert {n: (qdir / "jobs" / n).read_bytes() for n in os.listdir(qdir / "jobs")} == {
        job_name(i): make_job(i) for i in (1, 2)}


def test_routes_send_each_origin_to_its_queue_in_one_sync(tmp_path: Path) -> None:
    from fspl_gateway.gateway.trust import routed_passes
    from fspl_gateway.transports.local import LocalTransport

    a, b, c = (ms.generate_keypair() for _ in range(3))
    drop = tmp_path / "drop"
    (drop / "jobs").mkdir(parents=True)
    for k, tag in ((a, 1), (b, 2), (c, 3)):
        for i in (1, 2, 3):  # each origin has its own seq 1, 2, 3
            job, sig = signed(k, i, tmp_path)
            (drop / "jobs" / job_name(i, tag)).write_bytes(job)
            (drop / "jobs" / (job_name(i, tag) + SIG)).write_bytes(sig)
    main, qa, qb = tmp_path / "main", tmp_path / "qa", tmp_path / "qb"
    for d in (main, qa, qb):
        q.queue_init(str(d))
    pol = policy(a, b, c, routes={a.key_id: str(qa), b.key_id: str(qb)})
    t = LocalTransport(str(drop))
    results = {qd: pull(t, qd, opts(p)) for qd, p in routed_passes(pol, str(main))}
    assert [r.fetched for r in results.values()] == [3, 3, 0]
    assert sorted(os.listdir(qa / "jobs")) == [job_name(i, 1) for i in (1, 2, 3)]
    assert sorted(os.listdir(qb / "jobs")) == [job_name(i, 2) for i in (1, 2, 3)]
    assert os.listdir(main / "jobs") == []
    why = reasons(main)  # c is trusted but routed nowhere
    assert sorted(why) == [job_name(i, 3) for i in (1, 2, 3)]
    assert all(r.startswith("unrouted-key") for r in why.values())
    assert sorted(os.listdir(drop / "jobs")) == sorted(
        n for i in (1, 2, 3) for n in (job_name(i, 3), job_name(i, 3) + SIG))
    assert [s[0] for s in jr.signers(str(qa))] == [a.key_id]


def test_the_in_process_decryptor_sees_only_verified_ciphertext(
        key: ms.SecretKey, qdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """X25519 identities decrypt in process (core.agefile): like age, it is never handed a
    job whose signature does not verify; a good job in the same run does go through it."""
    from fspl_gateway.core import agefile
    from fspl_gateway.transports.local import LocalTransport
    from tests.trust.util import age_identity

    ident, recipient = age_identity(tmp_path)
    seen: list[bytes] = []
    real = agefile.decrypt

    def spy(src_fd: int, *a: object, **kw: object) -> int:
        seen.append(os.pread(src_fd, 1 << 20, 0))
        return real(src_fd, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(agefile, "decrypt", spy)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    good, good_sig = signed(key, 1, tmp_path, payload=b"g" * 70_000, recipients=[recipient])
    _, sig2 = signed(key, 2, tmp_path, payload=b"x" * 70_000, recipients=[recipient])
    other, _ = signed(key, 2, tmp_path, payload=b"y" * 70_000, recipients=[recipient])
    for n, data in ((job_name(1), good), (job_name(1) + SIG, good_sig),
                    (job_name(2), other), (job_name(2) + SIG, sig2)):
        (remote / "jobs" / n).write_bytes(data)
    res = pull(LocalTransport(str(remote)), qdir, opts(policy(key, identities=[ident])))
    assert (res.fetched, res.quarantined) == (1, 1), res.summary()
    assert seen == [good]
    assert (qdir / "jobs" / job_name(1)).read_bytes().startswith(b"*FILESPOOLER")
    assert "bad-signature" in reasons(qdir)[job_name(2)]


def test_many_batches_signatures_read_ahead_and_deleted_behind(
        key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """A local remote (one thread) with more than two batches: the signatures are read and
    checked ahead of the fetch, and deleted with their jobs behind it (a background
    thread).  Refusals in a later batch are still exact; every job taken is journaled as
    removed from the remote, and the run ends only after its deletions."""
    from fspl_gateway.gateway.runframe import BATCH
    from fspl_gateway.transports.local import LocalTransport

    remote = tmp_path / "remote"
    jobs = remote / "jobs"
    jobs.mkdir(parents=True)
    n = 2 * BATCH + 40
    bad = {BATCH + 5: "bad-signature", 2 * BATCH + 7: "unknown-key", 2 * BATCH + 9: "unsigned"}
    _many_jobs(key, n, bad, tmp_path, lambda name, data: (jobs / name).write_bytes(data))
    res = pull(LocalTransport(str(remote)), qdir, opts(policy(key)))
    assert (res.fetched, res.quarantined) == (n - 3, 3), res.summary()
    got = reasons(qdir)
    for i, why in bad.items():
        assert why in got[job_name(i)], (i, got)
    assert sorted(os.listdir(jobs)) == sorted(  # refused: left alone, with their signatures
        [job_name(i) for i in bad] + [job_name(i) + SIG for i, w in bad.items() if w != "unsigned"])
    rec = jr.known_files(str(qdir), "pull", res.remote)
    taken = [name for name, r in rec.items() if r.state == jr.JournalState.FETCHED]
    assert len(taken) == n - 3
    assert all(rec[name].remote_deleted for name in taken)


@pytest.mark.parametrize("net", ["s3", "sftp"])
def test_many_batches_over_the_network_signatures_read_ahead_by_threads(
        net: str, request: pytest.FixtureRequest, key: ms.SecretKey, qdir: Path,
        tmp_path: Path) -> None:
    """A network remote (several threads): a second pool reads and checks the signatures
    ahead of the fetches.  Refusals in later batches are still each job's own; every
    good job gets in, and the signatures leave with their jobs."""
    import threading

    from fspl_gateway.gateway.runframe import BATCH
    from fspl_gateway.gateway.trust import READ_GROUP, ReceiveGate

    b = request.getfixturevalue(f"backend_{net}")
    t = b.make()
    n = 2 * BATCH + 10
    bad = {BATCH + 3: "bad-signature", 2 * BATCH + 4: "unknown-key", 2 * BATCH + 6: "unsigned"}
    _many_jobs(key, n, bad, tmp_path, lambda name, data: b.put(t, name, data))
    readers: set[str] = set()
    real = ReceiveGate._check

    def seen(self: ReceiveGate, name: str) -> object:
        if name in self.sigs:  # (an unsigned job's is no read: its fetch thread asks)
            readers.add(threading.current_thread().name)
        return real(self, name)

    batches: list[int] = []
    real_small = type(t).fetch_small

    def small(self: Transport, entries: list[object]) -> object:
        batches.append(len(entries))
        return real_small(self, entries)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:  # only to see which threads read them, how
        mp.setattr(ReceiveGate, "_check", seen)
        mp.setattr(type(t), "fetch_small", small)
        res = pull(t, qdir, opts(policy(key), concurrency=3))
    assert (res.fetched, res.quarantined) == (n - 3, 3), res.summary()
    got = reasons(qdir)
    for i, why in bad.items():
        assert why in got[job_name(i)], (i, got)
    assert sorted(b.raw_names(t)) == sorted(
        [job_name(i) for i in bad] + [job_name(i) + SIG for i, w in bad.items() if w != "unsigned"])
    assert readers and all(r.startswith("sig-read") for r in readers), readers
    if t.capabilities.batch_reads:  # SFTP: a group of signatures per request
        assert sum(batches) == n - 1 and max(batches) == READ_GROUP, batches
    else:  # S3: one request each, in parallel
        assert batches == []


def test_a_server_down_during_the_signature_reads_quarantines_nothing(
        s3_bucket: object, key: ms.SecretKey, qdir: Path, tmp_path: Path) -> None:
    """S3 dies after the listing, while the reading threads read ahead: every read fails
    (transient), so no job is refused for it; once the server is back a sync takes them
    all."""
    from fspl_gateway.gateway.trust import ReceiveGate
    from fspl_gateway.transports.s3 import S3Transport
    from tests.fixtures.s3server import S3Bucket
    from tests.fixtures.tcpproxy import TcpProxy

    assert isinstance(s3_bucket, S3Bucket)
    port = s3_bucket.server.port
    assert port is not None
    with TcpProxy(port) as proxy:
        o = {**s3_bucket.options, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
             "max_attempts": "1", "connect_timeout": "2"}
        t = S3Transport(f"{s3_bucket.name}/q", o)
        for i in range(1, 6):
            job, sig = signed(key, i, tmp_path)
            for name, data in ((job_name(i) + SIG, sig), (job_name(i), job)):
                s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"q/jobs/{name}",
                                            Body=data)
        real = ReceiveGate.prefetch

        def then_down(self: ReceiveGate, entries: object) -> None:
            proxy.refuse()  # the listing is done: the server dies as the reads begin
            proxy.cut_all()
            real(self, entries)  # type: ignore[arg-type]

        with pytest.MonkeyPatch.context() as mp:  # only to time the fault
            mp.setattr(ReceiveGate, "prefetch", then_down)
            res = pull(t, qdir, opts(policy(key), concurrency=3))
        assert (res.fetched, res.quarantined, res.failed) == (0, 0, 5), res.summary()
        assert reasons(qdir) == {}
        proxy.accept()
        res = pull(t, qdir, opts(policy(key), concurrency=3))
        assert (res.fetched, res.quarantined) == (5, 0), res.summary()
