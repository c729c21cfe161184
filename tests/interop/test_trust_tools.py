"""Signatures and encryption against the real tools, both directions: Debian's minisign
0.11 and age 1.1 (scripts/bootstrap installs them), and the real fspl."""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest

from fspl_gateway.core import agecrypt, jobsig
from fspl_gateway.core import minisign as ms
from tests.helpers import run_gw

MINISIGN = shutil.which("minisign")
AGE = shutil.which("age")
FAST = {"opslimit": ms.OPSLIMIT_INTERACTIVE, "memlimit": ms.MEMLIMIT_INTERACTIVE}


@pytest.fixture(autouse=True)
def _tools() -> None:
    for name, path in (("minisign", MINISIGN), ("age", AGE), ("age-keygen", shutil.which("age-keygen"))):
        if path is None:
            pytest.fail(f"{name} is not installed: run scripts/bootstrap (apt: minisign, age)")


def _run(*argv: str | os.PathLike[str], input: bytes | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in argv], input=input, capture_output=True, cwd=cwd,
                          timeout=120)


def _minisign_verify(pub: str, file: Path, sig: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    args: list[str | os.PathLike[str]] = ["minisign", "-V", "-P", pub, "-m", file]
    if sig is not None:
        args += ["-x", sig]
    return _run(*args)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(os.urandom(3 << 20 | 123))
    return p


@pytest.fixture(scope="module")
def ms_plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key pair made by ``minisign -G -W`` (unencrypted)."""
    d = tmp_path_factory.mktemp("ms-plain")
    r = _run("minisign", "-G", "-W", "-p", d / "k.pub", "-s", d / "k.key")
    assert r.returncode == 0, r.stderr
    return d / "k.pub", d / "k.key"


@pytest.fixture(scope="module")
def ms_encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key pair made by ``minisign -G`` with the passphrase typed on stdin (minisign's
    own scrypt limits: 1 GiB, a few seconds)."""
    d = tmp_path_factory.mktemp("ms-enc")
    r = _run("minisign", "-G", "-p", d / "k.pub", "-s", d / "k.key", input=b"s3cret pass\ns3cret pass\n")
    assert r.returncode == 0, r.stderr
    return d / "k.pub", d / "k.key"


# -- minisign --------------------------------------------------------------------------
def test_our_signatures_verify_with_minisign(tmp_path: Path, data: Path) -> None:
    key = ms.generate_keypair()
    pub = key.public_key.to_base64()
    sig = ms.sign_file(data, key, "made by fspl-gw")
    Path(f"{data}.minisig").write_bytes(sig.to_bytes())
    r = _minisign_verify(pub, data)  # the default <file>.minisig
    assert r.returncode == 0, r.stderr
    assert b"Signature and comment signature verified\nTrusted comment: made by fspl-gw\n" == r.stdout
    elsewhere = tmp_path / "elsewhere.sig"
    elsewhere.write_bytes(sig.to_bytes())
    os.unlink(f"{data}.minisig")
    assert _minisign_verify(pub, data, elsewhere).returncode == 0
    pubfile = tmp_path / "ours.pub"
    pubfile.write_text(key.public_key.to_file_text())
    r = _run("minisign", "-V", "-p", pubfile, "-m", data, "-x", elsewhere)
    assert r.returncode == 0, r.stderr


def test_our_job_signatures_are_plain_minisign_signatures(tmp_path: Path) -> None:
    job = tmp_path / "fspl-x.fspl"
    subprocess.run(["fspl", "prepare", "-s", "-", "-i", "/dev/null"], stdout=job.open("wb"), check=True)
    key = ms.generate_keypair()
    sig = tmp_path / "fspl-x.fspl.minisig"
    sig.write_bytes(jobsig.sign_job(job, key, "site-b"))
    r = _minisign_verify(key.public_key.to_base64(), job)
    assert r.returncode == 0, r.stderr
    sha = hashlib.sha256(job.read_bytes()).hexdigest()
    assert f"Trusted comment: fspl-gw-job v1 queue=site-b seq=1 sha256={sha}\n".encode() in r.stdout


def test_minisign_signatures_verify_with_ours(tmp_path: Path, data: Path,
                                              ms_plain: tuple[Path, Path]) -> None:
    pubfile, keyfile = ms_plain
    r = _run("minisign", "-S", "-s", keyfile, "-m", data, "-t", "made by minisign")
    assert r.returncode == 0, r.stderr
    pk = ms.read_public_key(pubfile)
    inline = pubfile.read_text().splitlines()[1]
    assert ms.load_public_key(inline) == pk
    comment = pubfile.read_text().splitlines()[0]  # "… minisign public key <KEY ID>"
    assert int(comment.rsplit(" ", 1)[1], 16) == int(pk.key_id, 16)
    sig = ms.read_signature(f"{data}.minisig")
    assert sig.prehashed and sig.trusted_comment == "made by minisign"
    assert ms.verify_file(data, sig, pk) == pk
    # minisign's default trusted comment, and a legacy signature (-l)
    r = _run("minisign", "-S", "-s", keyfile, "-m", data, "-x", tmp_path / "d.sig")
    assert r.returncode == 0
    d = ms.read_signature(tmp_path / "d.sig")
    assert d.trusted_comment.endswith(f"\tfile:{data.name}\thashed")
    assert ms.verify_file(data, d, pk) == pk
    small = tmp_path / "small"
    small.write_bytes(b"legacy is read whole\n")
    r = _run("minisign", "-S", "-l", "-s", keyfile, "-m", small, "-t", "legacy")
    assert r.returncode == 0
    legacy = ms.read_signature(f"{small}.minisig")
    assert not legacy.prehashed
    assert ms.verify_file(small, legacy, pk) == pk


def test_minisign_keys_load_in_ours(tmp_path: Path, data: Path, ms_plain: tuple[Path, Path],
                                    ms_encrypted: tuple[Path, Path]) -> None:
    for (pubfile, keyfile), passphrase in ((ms_plain, None), (ms_encrypted, "s3cret pass")):
        sk = ms.read_secret_key(keyfile, passphrase)
        assert sk.public_key == ms.read_public_key(pubfile)
        sig = tmp_path / "ours.sig"
        sig.write_bytes(ms.sign_file(data, sk, "signed by fspl-gw with minisign's key").to_bytes())
        r = _run("minisign", "-V", "-p", pubfile, "-m", data, "-x", sig)
        assert r.returncode == 0, r.stderr


def test_minisign_encrypted_key_signs_and_ours_verifies(data: Path,
                                                        ms_encrypted: tuple[Path, Path]) -> None:
    pubfile, keyfile = ms_encrypted
    r = _run("minisign", "-S", "-s", keyfile, "-m", data, "-t", "passphrase on stdin",
             input=b"s3cret pass\n")
    assert r.returncode == 0, r.stderr
    sig = ms.read_signature(f"{data}.minisig")
    assert ms.verify_file(data, sig, ms.read_public_key(pubfile))


@pytest.mark.parametrize("limits", [FAST, {"opslimit": 1 << 18, "memlimit": 1 << 25},
                                    {"opslimit": 1 << 22, "memlimit": 1 << 24}],
                         ids=["interactive", "memory-rich", "p=8"])
def test_our_encrypted_keys_load_in_minisign(tmp_path: Path, data: Path,
                                             limits: dict[str, int]) -> None:
    key = ms.generate_keypair()
    keyfile = tmp_path / "ours.key"
    keyfile.write_text(key.to_file_text("pass phrase", **limits))
    r = _run("minisign", "-S", "-s", keyfile, "-m", data, "-t", "minisign, our key",
             input=b"pass phrase\n")
    assert r.returncode == 0, r.stderr
    assert ms.verify_file(data, ms.read_signature(f"{data}.minisig"), key.public_key)
    r = _run("minisign", "-S", "-s", keyfile, "-m", data, input=b"wrong\n")
    assert r.returncode != 0 and b"Wrong password for that key" in r.stderr
    plain = tmp_path / "plain.key"
    plain.write_text(key.to_file_text(None))
    r = _run("minisign", "-S", "-s", plain, "-m", data, "-x", tmp_path / "p.sig")
    assert r.returncode == 0, r.stderr
    pub = tmp_path / "ours.pub"
    pub.write_text(key.public_key.to_file_text())
    assert _run("minisign", "-V", "-p", pub, "-m", data, "-x", tmp_path / "p.sig").returncode == 0


def test_tampering_is_refused_by_minisign_and_by_us(tmp_path: Path, data: Path) -> None:
    key = ms.generate_keypair()
    pub = key.public_key.to_base64()
    good = ms.sign_file(data, key, "tc").to_bytes()
    lines = good.decode().split("\n")
    raw = base64.b64decode(lines[1])
    gsig = bytearray(base64.b64decode(lines[3]))
    gsig[5] ^= 0x80
    impostor = ms.SecretKey(key.keynum, ms.generate_keypair().sk)
    content = data.read_bytes()
    altered = bytearray(content)
    altered[len(content) // 2] ^= 1

    def line(i: int, text: str) -> bytes:
        ls = list(lines)
        ls[i] = text
        return "\n".join(ls).encode()

    cases: list[tuple[str, bytes, bytes, type[ms.SignatureError]]] = [
        ("altered file", bytes(altered), good, ms.BadSignatureError),
        ("truncated file", content[:-1], good, ms.BadSignatureError),
        ("wrong key", content, ms.sign_file(data, impostor, "tc").to_bytes(), ms.BadSignatureError),
        ("wrong key id", content, line(1, base64.b64encode(raw[:2] + b"\1" * 8 + raw[10:]).decode()),
         ms.UnknownKeyError),
        ("tampered trusted comment", content, line(2, "trusted comment: TC"),
         ms.BadCommentSignatureError),
        ("tampered global signature", content, line(3, base64.b64encode(gsig).decode()),
         ms.BadCommentSignatureError),
    ]
    f, s = tmp_path / "f", tmp_path / "f.minisig"
    for name, file_bytes, sig_bytes, err in cases:
        f.write_bytes(file_bytes)
        s.write_bytes(sig_bytes)
        r = _minisign_verify(pub, f)
        assert r.returncode != 0, f"minisign accepted the {name}"
        with pytest.raises(err):
            ms.verify_file(f, ms.read_signature(s), key.public_key)


def test_a_degenerate_key_is_refused_as_minisign_refuses_it(tmp_path: Path,
                                                             data: Path) -> None:
    """A "public key" that is the identity point (small order) and a signature with
    R = identity, S = 0 pass the plain Ed25519 equation for *any* message.  minisign
    (libsodium) refuses them, and so do we (OpenSSL's Ed25519, which we used before,
    accepts them)."""
    identity = bytes([1]) + bytes(31)
    pub = ms.PublicKey(b"\x11" * 8, identity)
    forged = ms.Signature(ms.SIG_ALG_HASHED, pub.keynum, identity + bytes(32), "anything",
                          identity + bytes(32))
    sig = tmp_path / "data.bin.minisig"
    sig.write_bytes(forged.to_bytes())
    r = _minisign_verify(pub.to_base64(), data, sig)
    assert r.returncode != 0, r.stdout
    with pytest.raises(ms.BadSignatureError):
        ms.verify_file(data, ms.read_signature(sig), pub)
    with pytest.raises(ms.BadCommentSignatureError):
        ms.verify_comment(forged, pub)


def test_shell_only_sender_recipe(tmp_path: Path, ms_plain: tuple[Path, Path]) -> None:
    """The recipe in jobsig's docstring, with fspl, age and minisign only, makes jobs
    that verify_job accepts; the decrypted packet carries the signed seq."""
    pubfile, keyfile = ms_plain
    r = _run("age-keygen", "-o", tmp_path / "id.txt")
    assert r.returncode == 0, r.stderr
    recipient = r.stderr.decode().split("Public key: ")[1].split()[0]
    (tmp_path / "seq").write_text("41\n")
    (tmp_path / "payload").write_bytes(b"payload bytes\n")
    script = f"""set -eu
seq=$(fspl prepare-get-next -s seq)
fspl prepare -s seq -i payload | tee plain.fspl | age -r "$RECIPIENT" > job.tmp
sum=$(sha256sum < job.tmp | cut -d' ' -f1)
name=$(fspl gen-filename)
minisign -S -s {shlex.quote(str(keyfile))} -m job.tmp -x "$name.minisig" \\
    -t "fspl-gw-job v1 queue=site-b seq=$seq sha256=$sum"
mv job.tmp "$name"
echo "$name"
"""
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=60,
                       env=dict(os.environ, RECIPIENT=recipient))
    assert r.returncode == 0, r.stderr
    name = r.stdout.decode().strip()
    job = tmp_path / name
    pk = ms.read_public_key(pubfile)
    v = jobsig.verify_job(job, (tmp_path / f"{name}.minisig").read_bytes(), [pk], "site-b")
    assert v.encrypted and v.seq == 41 and v.key_id == pk.key_id
    with pytest.raises(jobsig.WrongQueueError):
        jobsig.verify_job(job, (tmp_path / f"{name}.minisig").read_bytes(), [pk], "site-c")
    out = tmp_path / "decrypted"
    with open(job, "rb") as src, open(out, "wb") as dst:
        agecrypt.decrypt_stream(src.fileno(), dst.fileno(), str(tmp_path / "id.txt"))
    assert out.read_bytes() == (tmp_path / "plain.fspl").read_bytes()
    assert jobsig.check_decrypted(v, out).seq == 41


# -- age -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def age_id(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("age")
    r = _run("age-keygen", "-o", d / "id.txt")
    assert r.returncode == 0, r.stderr
    return d / "id.txt", r.stderr.decode().split("Public key: ")[1].split()[0]


@pytest.fixture
def plain_job(tmp_path: Path) -> Path:
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(2 << 20))
    job = tmp_path / "plain.fspl"
    with open(job, "wb") as f:
        subprocess.run(["fspl", "prepare", "-s", "-", "-i", str(payload)], stdout=f, check=True)
    return job


def _decrypt_file(src: Path, dst: Path, identity: str | Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        agecrypt.decrypt_stream(s.fileno(), d.fileno(), str(identity))


def _encrypt_file(src: Path, dst: Path, recipients: list[str]) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        agecrypt.encrypt_stream(s.fileno(), d.fileno(), recipients)


def test_fspl_recipe_ciphertext_decrypts_with_ours(tmp_path: Path, age_id: tuple[Path, str]) -> None:
    identity, recipient = age_id
    (tmp_path / "payload").write_bytes(os.urandom(1 << 20))
    r = subprocess.run(["bash", "-c", 'fspl prepare -s - -i payload | tee plain | age -r "$1" > job',
                        "-", recipient], cwd=tmp_path, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert agecrypt.is_encrypted((tmp_path / "job").read_bytes()[:64])
    _decrypt_file(tmp_path / "job", tmp_path / "out", identity)
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()


def test_our_ciphertext_decrypts_with_age(tmp_path: Path, plain_job: Path,
                                          age_id: tuple[Path, str]) -> None:
    identity, recipient = age_id
    other_id = tmp_path / "other.txt"
    r = _run("age-keygen", "-o", other_id)
    other_recipient = r.stderr.decode().split("Public key: ")[1].split()[0]
    _encrypt_file(plain_job, tmp_path / "job.age", [recipient, other_recipient])
    for ident in (identity, other_id):
        r = _run("age", "-d", "-i", ident, tmp_path / "job.age")
        assert r.returncode == 0, r.stderr
        assert r.stdout == plain_job.read_bytes()


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_ssh_recipients(tmp_path: Path, plain_job: Path, kind: str) -> None:
    key = tmp_path / f"id_{kind}"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "me@host", "-f",
                    str(key)], check=True, timeout=60)
    recipient = Path(f"{key}.pub").read_text().strip()
    assert agecrypt.check_recipient(recipient) == recipient
    _encrypt_file(plain_job, tmp_path / "job.age", [recipient])
    r = _run("age", "-d", "-i", key, tmp_path / "job.age")
    assert r.returncode == 0 and r.stdout == plain_job.read_bytes()
    r = subprocess.run(["age", "-r", recipient, "-o", str(tmp_path / "theirs.age"), str(plain_job)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _decrypt_file(tmp_path / "theirs.age", tmp_path / "out", key)
    assert (tmp_path / "out").read_bytes() == plain_job.read_bytes()


def test_real_fspl_processes_a_job_we_encrypted(tmp_path: Path, age_id: tuple[Path, str]) -> None:
    identity, recipient = age_id
    q = tmp_path / "q"
    subprocess.run(["fspl", "queue-init", "-q", str(q)], check=True)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(300_000))
    plain = tmp_path / "plain"
    with open(plain, "wb") as f:
        subprocess.run(["fspl", "prepare", "-s", "-", "-i", str(payload)], stdout=f, check=True,
                       env=dict(os.environ, FSPL_SET_WHO="gw"))
    _encrypt_file(plain, q / "jobs" / "fspl-00000000-0000-4000-8000-000000000001.fspl", [recipient])
    decoder = agecrypt.decoder_command(str(identity))
    assert shlex.split(decoder)[1:] == ["--decrypt", "-i", str(identity)]
    out = tmp_path / "out"
    r = _run("fspl", "queue-process", "-q", q, "-d", decoder, "sh", "--", "-c",
             f'cat > {shlex.quote(str(out))}; echo "$FSPL_SEQ $FSPL_SET_WHO" > {shlex.quote(str(out))}.env')
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == payload.read_bytes()
    assert Path(f"{out}.env").read_text() == "1 gw\n"
    assert not list((q / "jobs").iterdir())


def test_age_errors_are_one_line(tmp_path: Path, plain_job: Path, age_id: tuple[Path, str]) -> None:
    identity, recipient = age_id
    _encrypt_file(plain_job, tmp_path / "job.age", [recipient])
    assert _run("age-keygen", "-o", tmp_path / "stranger.txt").returncode == 0
    with pytest.raises(agecrypt.AgeError,
                       match="^age decryption failed: no identity matched any of the recipients$"):
        _decrypt_file(tmp_path / "job.age", tmp_path / "out", tmp_path / "stranger.txt")
    ct = (tmp_path / "job.age").read_bytes()
    (tmp_path / "trunc.age").write_bytes(ct[:-100])
    with pytest.raises(agecrypt.AgeError, match="^age decryption failed: .*payload chunk$"):
        _decrypt_file(tmp_path / "trunc.age", tmp_path / "out", identity)
    with pytest.raises(agecrypt.AgeError, match="cannot read the age identity file"):
        _decrypt_file(tmp_path / "job.age", tmp_path / "out", tmp_path / "missing.txt")
    with pytest.raises(agecrypt.RecipientError, match="not an age recipient") as ei:
        _encrypt_file(plain_job, tmp_path / "x.age", ["age1notarecipient"])
    assert ei.value.exit_code == 2
    with pytest.raises(agecrypt.RecipientError, match="at least one recipient"):
        _encrypt_file(plain_job, tmp_path / "x.age", [])


def test_age_streams_through_pipes_not_python(tmp_path: Path, age_id: tuple[Path, str]) -> None:
    """fspl prepare's stdout pipe → ours → file; file → ours → a pipe into sha256sum; the
    32 MiB never pass through Python buffers."""
    identity, recipient = age_id
    size = 32 << 20
    payload = tmp_path / "payload"
    with open(payload, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        prep = subprocess.Popen(["fspl", "prepare", "-s", "-", "-i", str(payload)],
                                stdout=subprocess.PIPE)
        assert prep.stdout is not None
        with open(tmp_path / "job.age", "wb") as dst:
            agecrypt.encrypt_stream(prep.stdout.fileno(), dst.fileno(), [recipient])
        prep.stdout.close()
        assert prep.wait() == 0
        rfd, wfd = os.pipe()
        summer = subprocess.Popen(["sha256sum"], stdin=rfd, stdout=subprocess.PIPE)
        os.close(rfd)
        errors: list[BaseException] = []

        def decrypt() -> None:
            try:
                with open(tmp_path / "job.age", "rb") as src:
                    agecrypt.decrypt_stream(src.fileno(), wfd, str(identity))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                os.close(wfd)

        t = threading.Thread(target=decrypt)
        t.start()
        digest = summer.communicate(timeout=120)[0].split()[0].decode()
        t.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not errors
    with open(tmp_path / "job.age", "rb") as src, open(tmp_path / "plain", "wb") as dst:
        agecrypt.decrypt_stream(src.fileno(), dst.fileno(), str(identity))
    plain = (tmp_path / "plain").read_bytes()
    assert hashlib.sha256(plain).hexdigest() == digest
    assert plain.startswith(b"*FILESPOOLER") and plain.endswith(payload.read_bytes())
    assert peak < 2 << 20, f"Python allocated {peak} bytes while age moved {size}"


# -- fspl-gw keygen --------------------------------------------------------------------
@pytest.mark.parametrize("encrypted", [True, False], ids=["passphrase", "unencrypted"])
def test_keygen_pairs_work_in_minisign(tmp_path: Path, data: Path, encrypted: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FSPL_GW_KEY_PASSPHRASE"}
    args = ["keygen", "-s", str(tmp_path / "sender.key")]
    if encrypted:
        env["FSPL_GW_KEY_PASSPHRASE"] = "from the environment"
    else:
        args.append("--unencrypted")
    r = run_gw(*args, env=env)
    assert r.returncode == 0, r.stderr
    inline = r.stdout.decode().splitlines()[1].removeprefix("public key: ")
    r = _run("minisign", "-S", "-s", tmp_path / "sender.key", "-m", data, "-t", "keygen'd",
             input=b"from the environment\n" if encrypted else None)
    assert r.returncode == 0, r.stderr
    assert _run("minisign", "-V", "-p", tmp_path / "sender.pub", "-m", data).returncode == 0
    assert _minisign_verify(inline, data).returncode == 0
