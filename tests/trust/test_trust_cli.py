"""The trust flags end to end, as subprocesses: keygen → push --sign [--encrypt-to] →
sync --trust [--identity] → queue-process; a real fspl receiver with fspl's own age
decoder; status shows key ids; kill -9 during verification; flat memory on a big
encrypted job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FSPL_GW, run_fspl, run_gw
from tests.trust.util import age_identity, job_name, signed

MiB = 1 << 20


def _ok(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, str]:
    """(secret key file, key id, one-line public key) from fspl-gw keygen."""
    out = _ok(run_gw("keygen", "-s", str(tmp_path / "sender.key"), "--unencrypted"))
    kid = out.split("key id: ")[1].split()[0]
    pub = out.split("public key: ")[1].split()[0]
    return tmp_path / "sender.key", kid, pub


def _outbox(tmp_path: Path, n: int, name: str = "outbox") -> Path:
    ob = tmp_path / name
    _ok(run_gw("queue-init", "-q", str(ob)))
    for i in range(1, n + 1):
        job = _ok_bytes(run_gw("prepare", "-s", str(tmp_path / f"{name}.seq"), "-i", "-",
                               input=f"job {i}\n".encode()))
        _ok(run_gw("queue-write", "-q", str(ob), input=job))
    return ob


def _ok_bytes(r: subprocess.CompletedProcess[bytes]) -> bytes:
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def _queue(tmp_path: Path, name: str) -> Path:
    _ok(run_gw("queue-init", "-q", str(tmp_path / name)))
    return tmp_path / name


def _process(q: Path, out: Path) -> None:
    _ok(run_gw("queue-process", "-q", str(q), "sh", "--", "-c", f"cat >> {out}"))


def test_signed_and_encrypted_push_sync_process(tmp_path: Path,
                                                keys: tuple[Path, str, str]) -> None:
    key, kid, pub = keys
    ident, recipient = age_identity(tmp_path)
    ob = _outbox(tmp_path, 3)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    _ok(run_gw("push", "-r", str(remote), "-t", "local", "-q", str(ob), "--sign", str(key),
               "--queue-id", "site-b", "--encrypt-to", recipient))
    names = sorted(os.listdir(remote / "jobs"))
    assert len(names) == 6 and sum(n.endswith(".minisig") for n in names) == 3
    for n in names:  # encrypted on the store; the signatures verify with minisign -V
        if not n.endswith(".minisig"):
            assert (remote / "jobs" / n).read_bytes().startswith(b"age-encryption.org/v1\n")
            r = subprocess.run(["minisign", "-V", "-P", pub, "-m", str(remote / "jobs" / n)],
                               capture_output=True)
            assert r.returncode == 0, r.stderr
    assert not os.listdir(ob / ".fspl-gw" / "outgoing")
    q = _queue(tmp_path, "inbox")
    _ok(run_gw("sync", "-r", str(remote), "-t", "local", "-q", str(q), "--trust", pub,
               "--queue-id", "site-b", "--identity", ident))
    assert os.listdir(remote / "jobs") == []
    _process(q, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "job 1\njob 2\njob 3\n"
    text = _ok(run_gw("status", "-q", str(q)))
    assert f"signed by {kid}: 3 job(s), last seq 3" in text
    js = json.loads(_ok(run_gw("status", "-q", str(q), "--json")))
    queues = js if isinstance(js, list) else js["queues"]
    assert [s["key_id"] for s in queues[0]["signers"]] == [kid]


def test_encrypted_push_is_what_a_real_fspl_receiver_decodes_with_age(
        tmp_path: Path, keys: tuple[Path, str, str], fspl_bin: str) -> None:
    key, _, _ = keys
    ident, recipient = age_identity(tmp_path)
    ob = _outbox(tmp_path, 2)
    remote = tmp_path / "fsplq"
    assert run_fspl("queue-init", "-q", str(remote)).returncode == 0
    _ok(run_gw("push", "-r", str(remote), "-t", "local", "-q", str(ob), "--sign", str(key),
               "--queue-id", "site-b", "--encrypt-to", recipient))
    r = run_fspl("queue-process", "-q", str(remote), "--decoder", f"age -d -i {ident}",
                 "sh", "--", "-c", f"cat >> {tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text() == "job 1\njob 2\n"


def test_unsigned_jobs_never_run_whatever_the_flags(tmp_path: Path,
                                                    keys: tuple[Path, str, str]) -> None:
    _, _, pub = keys
    ob = _outbox(tmp_path, 1)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    _ok(run_gw("push", "-r", str(remote), "-t", "local", "-q", str(ob)))  # unsigned
    q = _queue(tmp_path, "inbox")
    r = run_gw("sync", "-r", str(remote), "-t", "local", "-q", str(q), "--trust", pub,
               "--queue-id", "site-b", "--signature-wait", "0")
    assert r.returncode == 3, r.stderr
    assert b"unsigned" in r.stderr
    assert os.listdir(q / "jobs") == []
    r = run_gw("sync", "-r", str(remote), "-t", "local", "-q", str(q), "--trust", pub)
    assert r.returncode == 2 and b"queue id" in r.stderr  # trust without a queue id


def test_config_trusted_keys_and_queue_id(tmp_path: Path, keys: tuple[Path, str, str]) -> None:
    key, _, pub = keys
    (tmp_path / "k.pub").write_text(f"untrusted comment: x\n{pub}\n")
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[remotes.drop]\ntransport = "local"\nlocation = "{remote}"\n'
                   f'trusted_keys = ["{tmp_path / "k.pub"}"]\nqueue_id = "site-b"\n'
                   f'sign_key = "{key}"\nsignature_wait = 0\n')
    ob = _outbox(tmp_path, 2)
    _ok(run_gw("push", "--config", str(cfg), "-r", "drop", "-q", str(ob)))
    assert len(os.listdir(remote / "jobs")) == 4
    q = _queue(tmp_path, "inbox")
    _ok(run_gw("sync", "--config", str(cfg), "-r", "drop", "-q", str(q)))
    assert len(os.listdir(q / "jobs")) == 2


def test_kill_9_during_verification_leaves_nothing_visible(tmp_path: Path) -> None:
    from fspl_gateway.core import minisign as ms

    key = ms.generate_keypair()
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    job, sig = signed(key, 1, tmp_path, payload=os.urandom(1 << 20) * 384)  # 384 MiB
    (remote / "jobs" / job_name(1)).write_bytes(job)
    (remote / "jobs" / (job_name(1) + ".minisig")).write_bytes(sig)
    del job
    q = _queue(tmp_path, "inbox")
    argv = [*FSPL_GW, "sync", "-r", str(remote), "-t", "local", "-q", str(q), "--after-fetch",
            "keep", "--trust", key.public_key.to_base64(), "--queue-id", "site-b"]
    full = (remote / "jobs" / job_name(1)).stat().st_size
    # downloaded whole: verification begins
    _kill_9_then_rerun(argv, q, lambda sizes: full in sizes, "the job was never staged")


def _kill_9_then_rerun(argv: list[str], q: Path, ready: Callable[[list[int]], bool],
                       never: str) -> None:
    """Run ``argv`` (a sync of job 1 into ``q``), kill -9 it once ``ready(sizes of the
    staging files)``; nothing may be in jobs/; a second run gets the job in and leaves
    staging empty."""
    staging = q / ".fspl-gw" / "staging"
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sizes = [f.stat().st_size for f in staging.iterdir()] if staging.exists() else []
            if ready(sizes):
                break
            time.sleep(0.005)
        else:
            pytest.fail(never)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert os.listdir(q / "jobs") == []
    r = subprocess.run(argv, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert os.listdir(q / "jobs") == [job_name(1)]
    assert os.listdir(staging) == []


def test_kill_9_while_decrypting_leaves_nothing_visible(tmp_path: Path) -> None:
    """An encrypted job is decrypted (after its ciphertext verified) into a second
    staging file: killed then, nothing is in jobs/, and the next run cleans staging and
    gets the job in."""
    from fspl_gateway.core import minisign as ms

    key = ms.generate_keypair()
    ident, recipient = age_identity(tmp_path)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    job, sig = signed(key, 1, tmp_path, payload=os.urandom(1 << 20) * 384,
                      recipients=[recipient])
    (remote / "jobs" / job_name(1)).write_bytes(job)
    (remote / "jobs" / (job_name(1) + ".minisig")).write_bytes(sig)
    del job
    q = _queue(tmp_path, "inbox")
    argv = [*FSPL_GW, "sync", "-r", str(remote), "-t", "local", "-q", str(q), "--after-fetch",
            "keep", "--trust", key.public_key.to_base64(), "--queue-id", "site-b",
            "--identity", ident]
    # ciphertext and plaintext both growing in staging
    _kill_9_then_rerun(argv, q, lambda sizes: len(sizes) == 2 and min(sizes) > 8 * MiB,
                       "the job was never being decrypted")


def test_an_altered_encrypted_job_is_never_decrypted(tmp_path: Path) -> None:
    """Refused by its signature, an encrypted job is never handed to age (a store writer
    cannot make us run age on their bytes): the ciphertext quarantined, no plaintext
    anywhere, nothing linked.  An ssh identity, so that the ``age`` binary is the
    decryptor (X25519 ones decrypt in process: test_trust_sync's
    test_the_in_process_decryptor_sees_only_verified_ciphertext)."""
    from fspl_gateway.core import minisign as ms

    key = ms.generate_keypair()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")],
                   check=True)
    ident, recipient = str(tmp_path / "ssh"), (tmp_path / "ssh.pub").read_text().strip()
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    job, sig = signed(key, 1, tmp_path, payload=b"x" * 100_000, recipients=[recipient])
    other, _ = signed(key, 1, tmp_path, payload=b"y" * 100_000, recipients=[recipient])
    (remote / "jobs" / job_name(1)).write_bytes(other)  # decrypts fine, not what was signed
    (remote / "jobs" / (job_name(1) + ".minisig")).write_bytes(sig)
    q = _queue(tmp_path, "inbox")
    bin_dir, calls = tmp_path / "bin", tmp_path / "age-calls"
    bin_dir.mkdir()
    spy = bin_dir / "age"  # records each run, then is the real age
    spy.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexec {shutil.which('age')} \"$@\"\n")
    spy.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = run_gw("sync", "-r", str(remote), "-t", "local", "-q", str(q), "--trust",
               key.public_key.to_base64(), "--queue-id", "site-b", "--identity", ident,
               env=env)
    assert r.returncode == 3, r.stderr
    assert not calls.exists(), calls.read_text()
    assert os.listdir(q / "jobs") == []
    assert os.listdir(q / ".fspl-gw" / "staging") == []
    qd = q / ".fspl-gw" / "quarantine"
    kept = [p for p in qd.iterdir() if not p.name.endswith(".reason")]
    assert [p.read_bytes() for p in kept] == [other]  # the ciphertext, as it came
    assert "bad-signature" in next(qd.glob("*.reason")).read_text()
    (remote / "jobs" / job_name(1)).write_bytes(job)  # the signed bytes: age runs on them
    q2 = _queue(tmp_path, "inbox2")
    r = run_gw("sync", "-r", str(remote), "-t", "local", "-q", str(q2), "--trust",
               key.public_key.to_base64(), "--queue-id", "site-b", "--identity", ident,
               env=env)
    assert r.returncode == 0, r.stderr
    assert calls.exists() and "-d" in calls.read_text()
    assert os.listdir(q2 / "jobs") == [job_name(1)]


def test_big_encrypted_job_syncs_in_flat_memory(tmp_path: Path) -> None:
    from fspl_gateway.core import minisign as ms

    key = ms.generate_keypair()
    ident, recipient = age_identity(tmp_path)
    size = 256 * MiB
    ob = tmp_path / "outbox"
    _ok(run_gw("queue-init", "-q", str(ob)))
    src = tmp_path / "payload"
    with open(src, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
    with open(ob / "jobs" / job_name(1), "wb") as f:
        subprocess.run([*FSPL_GW, "prepare", "-s", "-", "-i", str(src)], stdout=f, check=True)
    src.unlink()
    skey = tmp_path / "s.key"
    ms.save_keypair(key, str(skey), str(tmp_path / "s.pub"), None)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    _ok(run_gw("push", "-r", str(remote), "-t", "local", "-q", str(ob), "--sign", str(skey),
               "--queue-id", "site-b", "--encrypt-to", recipient))
    q = _queue(tmp_path, "inbox")
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.stderr.buffer.write(r.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *FSPL_GW, "sync", "-r", str(remote), "-t",
                        "local", "-q", str(q), "--trust", key.public_key.to_base64(),
                        "--queue-id", "site-b", "--identity", ident], capture_output=True)
    rc, peak_kib = map(int, r.stdout.split())
    assert rc == 0, r.stderr.decode()
    (name,) = os.listdir(q / "jobs")
    assert (q / "jobs" / name).stat().st_size > size
    print(f"peak RSS of sync: {peak_kib} KiB for a {size >> 20} MiB encrypted job")
    assert peak_kib * 1024 < 96 * MiB, peak_kib  # the job is 256 MiB


def test_one_queue_id_for_trust_and_receipts(tmp_path: Path,
                                              keys: tuple[Path, str, str]) -> None:
    """The config's queue_id is both what senders sign for and what receipts name:
    signed jobs get in, and the receipts they earn satisfy --expect-queue."""
    key, _kid, pub = keys
    ob = _outbox(tmp_path, 2)
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[remotes.drop]\ntransport = "local"\nlocation = "{remote}"\n'
                   f'trusted_keys = ["{pub}"]\nqueue_id = "site-b"\nreceipts = true\n')
    cfg.chmod(0o600)
    push = ("push", "-r", str(remote), "-t", "local", "-q", str(ob), "--sign", str(key),
            "--queue-id", "site-b", "--after-push", "keep-until-ran", "--expect-queue",
            "site-b")
    _ok(run_gw(*push))
    assert len(os.listdir(ob / "jobs")) == 2  # kept until they ran
    q = _queue(tmp_path, "inbox")
    _ok(run_gw("sync", "--config", str(cfg), "-r", "drop", "-q", str(q)))
    _process(q, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "job 1\njob 2\n"
    _ok(run_gw("sync", "--config", str(cfg), "-r", "drop", "-q", str(q)))  # run receipts
    receipts = [n for n in os.listdir(remote / "receipts") if n.endswith(".json")]
    assert receipts and all("site-b" in (remote / "receipts" / n).read_text()
                            for n in receipts)
    _ok(run_gw(*push))
    assert os.listdir(ob / "jobs") == []  # the receipts were accepted: the jobs ran
