"""minisign formats and the job-signature binding, without the binaries (the interop
tests in tests/interop/test_trust_tools.py check both directions against minisign 0.11)."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from fspl_gateway.core import jobsig
from fspl_gateway.core import minisign as ms
from fspl_gateway.core.agecrypt import AGE_MAGIC
from fspl_gateway.core.errors import FsplError, UsageError
from fspl_gateway.core.packet import Meta, encode_header

# A throw-away key pair and two signatures made by the real minisign 0.11
# (`minisign -G -W`, `minisign -S -t 'hi there'`, `minisign -S -l -t 'legacy hi'` of "hello\n").
MS_PUB = "RWQ4j+D17GTAOvZFmNI5xkctBuWh7fDxg2MfdAFwmw/rLVYOtHzxtQMo"
MS_KEY_ID = "3AC064ECF5E08F38"
MS_SECRET = (
    "untrusted comment: minisign encrypted secret key\n"
    "RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAOI/g9exkwDrxc70obmJm"
    "CfqKZmCnJTIhcJyjYGYXO8DmpLbEcf4trvZFmNI5xkctBuWh7fDxg2MfdAFwmw/rLVYOtHzxtQMoAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
MS_SIG = (
    b"untrusted comment: signature from minisign secret key\n"
    b"RUQ4j+D17GTAOuNwh8E41J8hbuLthViNYrhCaTrc0KKtpYHhAR2RK6oEHt+A74H5VDMKm5jBPR88+louR4piBaFIp6bA+p+dogc=\n"
    b"trusted comment: hi there\n"
    b"FfsyETmVgykO18h57xfhmMOgAP/qV4Db835wscV1e7hLQqgVK8nGBs57+D2DGf+OgvbtUYxPp6KnPLv72s8/Aw==\n"
)
MS_LEGACY_SIG = (
    b"untrusted comment: signature from minisign secret key\n"
    b"RWQ4j+D17GTAOvnxmybEzkEKzZr3ywnuWx8GI1gAt863T9vRej+eJg2/z2D8fG+Eu2I3dJWMvd887jopZt6pUHj+9iaRhmljFAE=\n"
    b"trusted comment: legacy hi\n"
    b"0qJ4teEtkMUogU03T48cFfVZBrxZN6D5qwc6SCZzMtWmdmtyPpAxfX4mwME4Cn2t7W+/gDJ0vsokhpc+FfWdCg==\n"
)
FAST = {"opslimit": ms.OPSLIMIT_INTERACTIVE, "memlimit": ms.MEMLIMIT_INTERACTIVE}


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    return p


@pytest.fixture(scope="module")
def key() -> ms.SecretKey:
    return ms.generate_keypair()


def _lines(sig: bytes) -> list[str]:
    return sig.decode().split("\n")


def _with_line(sig: bytes, i: int, text: str) -> bytes:
    lines = _lines(sig)
    lines[i] = text
    return "\n".join(lines).encode()


# -- keys ------------------------------------------------------------------------------
def test_minisign_vectors_verify_and_key_id_is_shown_as_minisign_shows_it(hello: Path) -> None:
    pk = ms.PublicKey.from_base64(MS_PUB)
    assert pk.key_id == MS_KEY_ID
    sig = ms.Signature.parse(MS_SIG)
    assert sig.prehashed and sig.key_id == MS_KEY_ID and sig.trusted_comment == "hi there"
    assert ms.verify_file(hello, sig, pk) == pk
    legacy = ms.Signature.parse(MS_LEGACY_SIG)
    assert not legacy.prehashed
    assert ms.verify_file(hello, legacy, pk) == pk
    with pytest.raises(ms.LegacySignatureError):
        ms.verify_file(hello, legacy, pk, allow_legacy=False)


def test_public_key_forms_round_trip(tmp_path: Path, key: ms.SecretKey) -> None:
    pk = key.public_key
    assert ms.PublicKey.from_base64(pk.to_base64()) == pk
    assert pk.to_base64().startswith("RW") and len(pk.to_base64()) == 56
    text = pk.to_file_text()
    assert text.startswith(f"untrusted comment: minisign public key {pk.key_id}\n")
    assert ms.PublicKey.parse(text) == pk
    f = tmp_path / "k.pub"
    f.write_text(text)
    assert ms.read_public_key(f) == pk
    assert ms.load_public_key(str(f)) == pk
    assert ms.load_public_key(pk.to_base64()) == pk
    assert ms.parse_key_id(pk.key_id) == pk.keynum
    assert ms.parse_key_id("1F") == (0x1F).to_bytes(8, "little")


@pytest.mark.parametrize("text,msg", [
    ("RWQ" + "*" * 53, "not valid base64"),
    (base64.b64encode(b"Ed" + bytes(30)).decode(), "32 bytes where 42"),
    (base64.b64encode(b"XX" + bytes(40)).decode(), "unsupported signature algorithm"),
    ("untrusted comment: x\nRWQ\nextra\n", "expected an 'untrusted comment:'"),
])
def test_bad_public_keys_are_refused_with_one_line(text: str, msg: str) -> None:
    with pytest.raises(ms.KeyFileError, match=msg) as ei:
        ms.PublicKey.parse(text)
    assert "\n" not in str(ei.value)


def test_missing_public_key_file(tmp_path: Path) -> None:
    with pytest.raises(ms.KeyFileError, match="cannot read public key"):
        ms.load_public_key(str(tmp_path / "nope.pub"))


def test_minisign_unencrypted_secret_key_loads_and_signs(hello: Path) -> None:
    sk = ms.parse_secret_key(MS_SECRET)
    assert sk.key_id == MS_KEY_ID
    assert sk.public_key == ms.PublicKey.from_base64(MS_PUB)
    assert MS_KEY_ID not in repr(sk.sk) and "sk=" not in repr(sk)
    sig = ms.sign_file(hello, sk, "ours")
    assert ms.verify_file(hello, sig, sk.public_key) == sk.public_key
    assert not ms.secret_key_is_encrypted(MS_SECRET)


def test_secret_key_round_trips_unencrypted_and_encrypted(key: ms.SecretKey, tmp_path: Path) -> None:
    plain = key.to_file_text(None)
    assert ms.parse_secret_key(plain) == key
    enc = key.to_file_text("correct horse", **FAST)
    assert ms.secret_key_is_encrypted(enc)
    raw = base64.b64decode(enc.split("\n")[1])
    assert raw[:6] == b"EdScB2"
    assert key.sk[:32] not in raw
    assert ms.parse_secret_key(enc, "correct horse") == key
    assert ms.parse_secret_key(enc, b"correct horse") == key
    with pytest.raises(ms.PassphraseError, match="wrong passphrase"):
        ms.parse_secret_key(enc, "wrong horse")
    with pytest.raises(ms.PassphraseError, match="a passphrase is needed"):
        ms.parse_secret_key(enc)
    f = tmp_path / "k.key"
    f.write_text(enc)
    with pytest.raises(ms.PassphraseError, match=f"{f}: wrong passphrase"):
        ms.read_secret_key(f, "nope")


def test_damaged_unencrypted_secret_key_is_refused(key: ms.SecretKey) -> None:
    raw = bytearray(base64.b64decode(key.to_file_text(None).split("\n")[1]))
    raw[100] ^= 1  # inside the secret key's public half
    text = "untrusted comment: k\n" + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(ms.KeyFileError, match="checksum mismatch"):
        ms.parse_secret_key(text)
    raw[-32:] = bytes(32)  # a zero checksum (minisign -W) is not checked...
    text = "untrusted comment: k\n" + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(ms.KeyFileError, match="does not match its seed"):
        ms.parse_secret_key(text)  # ...but the seed and public half must agree


@pytest.mark.parametrize("head,msg", [
    (b"EdXXB2", "unsupported key derivation"),
    (b"EdScXX", "unsupported checksum"),
    (b"XXScB2", "unsupported signature algorithm"),
])
def test_unsupported_secret_key_algorithms(head: bytes, msg: str) -> None:
    text = "untrusted comment: k\n" + base64.b64encode(head + bytes(152)).decode() + "\n"
    with pytest.raises(ms.KeyFileError, match=msg):
        ms.parse_secret_key(text, "x")


def test_scrypt_parameters_follow_libsodium() -> None:
    # minisign's sensitive limits: 1 GiB of memory
    assert ms._scrypt_params(ms.OPSLIMIT_SENSITIVE, ms.MEMLIMIT_SENSITIVE) == (1 << 20, 8, 1)
    assert ms._scrypt_params(ms.OPSLIMIT_INTERACTIVE, ms.MEMLIMIT_INTERACTIVE) == (1 << 14, 8, 1)
    assert ms._scrypt_params(1 << 18, 1 << 25) == (1 << 13, 8, 1)  # memory-rich branch
    assert ms._scrypt_params(1 << 22, 1 << 24) == (1 << 14, 8, 8)  # p from the ops left


def test_hostile_scrypt_parameters_are_refused(key: ms.SecretKey) -> None:
    raw = bytearray(base64.b64decode(key.to_file_text("pw", **FAST).split("\n")[1]))
    raw[38:54] = (1 << 40).to_bytes(8, "little") + (1 << 40).to_bytes(8, "little")
    text = "untrusted comment: k\n" + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(ms.KeyFileError, match="out of range"):
        ms.parse_secret_key(text, "pw")


# -- signatures ------------------------------------------------------------------------
def test_sign_and_verify_round_trip(hello: Path, key: ms.SecretKey) -> None:
    sig = ms.sign_file(hello, key, "a trusted comment\twith a tab")
    data = sig.to_bytes()
    assert _lines(data)[0] == "untrusted comment: signature from minisign secret key"
    assert _lines(data)[2] == "trusted comment: a trusted comment\twith a tab"
    again = ms.Signature.parse(data)
    assert again == sig
    assert ms.verify_file(hello, again, [ms.generate_keypair().public_key, key.public_key]) \
        == key.public_key
    default = ms.sign_file(hello, key)
    assert default.trusted_comment.startswith("timestamp:")
    assert default.trusted_comment.endswith("\tfile:f\thashed")
    crlf = data.replace(b"\n", b"\r\n")
    assert ms.Signature.parse(crlf) == sig


def _refusals(hello: Path, key: ms.SecretKey) -> dict[str, tuple[type[ms.SignatureError], str]]:
    """Every way to break a signature, with the error class and message it gets."""
    good = ms.sign_file(hello, key, "tc").to_bytes()
    lines = _lines(good)
    raw = base64.b64decode(lines[1])
    other = ms.generate_keypair()
    impostor = ms.SecretKey(key.keynum, other.sk)  # another key claiming our key id
    cases: dict[str, tuple[type[ms.SignatureError], str]] = {}

    def check(name: str, sig: bytes, path: Path = hello) -> None:
        with pytest.raises(ms.SignatureError) as ei:
            ms.verify_file(path, ms.Signature.parse(sig), key.public_key)
        assert "\n" not in str(ei.value)
        cases[name] = (type(ei.value), str(ei.value))

    altered = hello.with_name("altered")
    altered.write_bytes(b"hellO\n")
    check("altered file", good, altered)
    truncated = hello.with_name("truncated")
    truncated.write_bytes(b"hello")
    check("truncated file", good, truncated)
    check("wrong key", ms.sign_file(hello, impostor, "tc").to_bytes())
    check("unknown key", ms.sign_file(hello, other, "tc").to_bytes())
    wrong_id = raw[:2] + bytes(8) + raw[10:]
    check("wrong key id", _with_line(good, 1, base64.b64encode(wrong_id).decode()))
    forged = raw[:10] + bytes(64)
    check("forged signature", _with_line(good, 1, base64.b64encode(forged).decode()))
    check("tampered trusted comment", _with_line(good, 2, "trusted comment: tC"))
    gsig = bytearray(base64.b64decode(lines[3]))
    gsig[0] ^= 1
    check("tampered global signature", _with_line(good, 3, base64.b64encode(gsig).decode()))
    return cases


def test_each_tampering_is_refused_with_its_own_error(hello: Path, key: ms.SecretKey) -> None:
    cases = _refusals(hello, key)
    assert cases["altered file"][0] is ms.BadSignatureError
    assert cases["truncated file"][0] is ms.BadSignatureError
    assert cases["wrong key"][0] is ms.BadSignatureError
    assert cases["forged signature"][0] is ms.BadSignatureError
    assert cases["unknown key"][0] is ms.UnknownKeyError
    assert cases["wrong key id"][0] is ms.UnknownKeyError
    assert "0000000000000000 is not the public key's key id" in cases["wrong key id"][1]
    assert cases["tampered trusted comment"][0] is ms.BadCommentSignatureError
    assert cases["tampered global signature"][0] is ms.BadCommentSignatureError
    assert "does not match the file" in cases["altered file"][1]
    assert "trusted comment or global signature altered" in cases["tampered trusted comment"][1]
    reasons = {c.reason for c, _ in cases.values()}
    assert reasons == {"bad-signature", "unknown-key", "bad-comment-signature"}


def test_unknown_key_among_several_trusted(hello: Path, key: ms.SecretKey) -> None:
    sig = ms.sign_file(hello, key, "tc")
    others = [ms.generate_keypair().public_key for _ in range(2)]
    with pytest.raises(ms.UnknownKeyError, match=f"signed by key id {key.key_id}, which is "
                                                 "not among the 2 trusted keys"):
        ms.verify_file(hello, sig, others)


@pytest.mark.parametrize("mangle,msg", [
    (lambda ls: ls[:3], "3 of its 4 lines"),
    (lambda ls: ["comment: x", *ls[1:]], "first line does not start"),
    (lambda ls: [ls[0], ls[1], "comment: x", ls[3]], "third line does not start"),
    (lambda ls: [ls[0], "!!!!", *ls[2:]], "signature: not valid base64"),
    (lambda ls: [ls[0], base64.b64encode(b"EX" + bytes(72)).decode(), *ls[2:]],
     "unsupported signature algorithm"),
    (lambda ls: [*ls[:3], base64.b64encode(bytes(63)).decode()], "63 bytes where 64"),
    (lambda ls: [ls[0], ls[1], "trusted comment: bell\x07", ls[3]], "unprintable"),
    (lambda ls: [ls[0], ls[1], "trusted comment: a\rb", ls[3]], "carriage return"),
    (lambda ls: [*ls[:4], "more"], "unexpected data"),
    (lambda ls: [ls[0], ls[1], "trusted comment: " + "x" * 9000, ls[3]], "too long"),
])
def test_malformed_signature_files(hello: Path, key: ms.SecretKey,
                                   mangle: Callable[[list[str]], list[str]], msg: str) -> None:
    good = _lines(ms.sign_file(hello, key, "tc").to_bytes())[:4]
    with pytest.raises(ms.SignatureFormatError, match=msg) as ei:
        ms.Signature.parse("\n".join(mangle(good)).encode() + b"\n")
    assert ei.value.reason == "malformed-signature"


def test_signature_file_size_and_encoding_are_bounded() -> None:
    with pytest.raises(ms.SignatureFormatError, match="too large"):
        ms.Signature.parse(b"x" * (ms.MAX_SIGNATURE_FILE + 1))
    with pytest.raises(ms.SignatureFormatError, match="not UTF-8"):
        ms.Signature.parse(b"\xff\xfe")


def test_comments_we_would_write_wrong_are_refused(hello: Path, key: ms.SecretKey) -> None:
    for bad in ("two\nlines", "cr\r", "x" * 8200, "nul\x00"):
        with pytest.raises(ValueError):
            ms.sign_file(hello, key, bad)


def test_legacy_signature_size_limit(tmp_path: Path, key: ms.SecretKey,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 2048)
    sig = key.sign_raw(f.read_bytes())
    legacy = ms.Signature(ms.SIG_ALG, key.keynum, sig, "tc", key.sign_raw(sig + b"tc"))
    assert ms.verify_file(f, legacy, key.public_key) == key.public_key
    monkeypatch.setattr(ms, "LEGACY_MAX_BYTES", 1024)
    with pytest.raises(ms.LegacySignatureError, match="re-sign it prehashed"):
        ms.verify_file(f, legacy, key.public_key)


def test_big_files_are_hashed_in_chunks_with_flat_memory(tmp_path: Path, key: ms.SecretKey) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        sig = ms.sign_file(big, key, "big")
        ms.verify_file(big, sig, key.public_key)
        signed = jobsig.sign_job(_packet(tmp_path / "bigjob", 9, 24 << 20), key, "q")
        jobsig.verify_job(tmp_path / "bigjob", signed, key.public_key, "q")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes for a 48 MiB file"
    h = hashlib.blake2b()
    assert ms.hash_file(big, h, chunk=4096) == 48 << 20
    assert h.digest() == ms.blake2b_file(big)


# -- the job binding -------------------------------------------------------------------
def _packet(path: Path, seq: int, payload_len: int = 100) -> Path:
    with open(path, "wb") as f:
        f.write(encode_header(Meta(seq)))
        for _ in range(payload_len >> 20):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(payload_len & ((1 << 20) - 1)))
    return path


def test_sign_job_binds_queue_seq_and_sha256(tmp_path: Path, key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "fspl-1.fspl", 42)
    data = jobsig.sign_job(job, key, "site-b")
    sig = ms.Signature.parse(data)
    sha = hashlib.sha256(job.read_bytes()).hexdigest()
    assert sig.trusted_comment == f"fspl-gw-job v1 queue=site-b seq=42 sha256={sha}"
    v = jobsig.verify_job(job, data, [key.public_key], "site-b")
    assert v == jobsig.VerifiedJob(key.key_id, 42, sha, sig.trusted_comment, "site-b", False,
                                   job.stat().st_size)
    assert ms.verify_file(job, sig, key.public_key)  # an ordinary minisign signature
    with pytest.raises(FsplError, match="seq 7 given, the header says 42"):
        jobsig.sign_job(job, key, "site-b", seq=7)


def test_job_signed_for_another_queue_is_refused(tmp_path: Path, key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "j", 1)
    data = jobsig.sign_job(job, key, "site-a")
    with pytest.raises(jobsig.WrongQueueError, match="signed for queue 'site-a', not for this "
                                                     r"queue \('site-b'\)") as ei:
        jobsig.verify_job(job, data, key.public_key, "site-b")
    assert ei.value.reason == "wrong-queue"


def _signed_with_comment(job: Path, key: ms.SecretKey, comment: str) -> bytes:
    return ms.sign_file(job, key, comment).to_bytes()


def test_seq_and_sha256_mismatches_are_refused(tmp_path: Path, key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "j", 5)
    sha = hashlib.sha256(job.read_bytes()).hexdigest()
    bad_seq = _signed_with_comment(job, key, f"fspl-gw-job v1 queue=q seq=6 sha256={sha}")
    with pytest.raises(jobsig.SeqMismatchError, match="signed seq 6 but the packet's header "
                                                      "says seq 5"):
        jobsig.verify_job(job, bad_seq, key.public_key, "q")
    bad_sha = _signed_with_comment(job, key, f"fspl-gw-job v1 queue=q seq=5 sha256={'0' * 64}")
    with pytest.raises(jobsig.DigestMismatchError, match=f"signed sha256 0+ but the file's is {sha}"):
        jobsig.verify_job(job, bad_sha, key.public_key, "q")


def test_a_signature_for_something_else_is_not_a_job_signature(tmp_path: Path,
                                                               key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "j", 5)
    with pytest.raises(jobsig.NotAJobSignatureError, match="not a job binding"):
        jobsig.verify_job(job, ms.sign_file(job, key).to_bytes(), key.public_key, "q")


@pytest.mark.parametrize("comment", [
    "fspl-gw-job v1 queue=q seq=05 sha256=" + "a" * 64,
    "fspl-gw-job v1 queue=q seq=5 sha256=" + "A" * 64,
    "fspl-gw-job v1 queue=q seq=5 sha256=" + "a" * 64 + " file=x",
    "fspl-gw-job v1 seq=5 queue=q sha256=" + "a" * 64,
    "fspl-gw-job v1  queue=q seq=5 sha256=" + "a" * 64,
    "fspl-gw-job v2 queue=q seq=5 sha256=" + "a" * 64,
    "fspl-gw-job v1 queue=q seq=18446744073709551616 sha256=" + "a" * 64,
    "fspl-gw-job v1 queue=-q seq=5 sha256=" + "a" * 64,
])
def test_binding_has_exactly_one_spelling(comment: str) -> None:
    with pytest.raises(jobsig.NotAJobSignatureError):
        jobsig.Binding.parse(comment)


def test_binding_parse_round_trip() -> None:
    b = jobsig.Binding("host.example:site-b/q_1@x+y", 2**64 - 1, "0123456789abcdef" * 4)
    assert jobsig.Binding.parse(b.to_comment()) == b


@pytest.mark.parametrize("qid", ["", "a b", "q=1", "-q", "x" * 129, "é"])
def test_bad_queue_ids(qid: str, tmp_path: Path, key: ms.SecretKey) -> None:
    with pytest.raises(UsageError, match="bad queue id"):
        jobsig.sign_job(_packet(tmp_path / "j", 1), key, qid)


def test_tampered_job_and_signature_are_refused(tmp_path: Path, key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "j", 3)
    data = jobsig.sign_job(job, key, "q")
    content = job.read_bytes()
    job.write_bytes(content[:-1])
    with pytest.raises(ms.BadSignatureError):
        jobsig.verify_job(job, data, key.public_key, "q")
    job.write_bytes(content)
    with pytest.raises(ms.UnknownKeyError):
        jobsig.verify_job(job, data, ms.generate_keypair().public_key, "q")
    other_q = _with_line(data, 2, _lines(data)[2].replace("queue=q", "queue=r"))
    with pytest.raises(ms.BadCommentSignatureError):
        jobsig.verify_job(job, other_q, key.public_key, "r")
    with pytest.raises(ms.SignatureFormatError):
        jobsig.verify_job(job, b"garbage", key.public_key, "q")


def test_legacy_job_signatures_are_refused(tmp_path: Path, key: ms.SecretKey) -> None:
    job = _packet(tmp_path / "j", 3)
    sha = hashlib.sha256(job.read_bytes()).hexdigest()
    tc = f"fspl-gw-job v1 queue=q seq=3 sha256={sha}"
    s = key.sign_raw(job.read_bytes())
    legacy = ms.Signature(ms.SIG_ALG, key.keynum, s, tc, key.sign_raw(s + tc.encode()))
    with pytest.raises(ms.LegacySignatureError, match="needs a prehashed one"):
        jobsig.verify_job(job, legacy.to_bytes(), key.public_key, "q")


def test_signed_file_that_is_not_a_job(tmp_path: Path, key: ms.SecretKey) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"*FILESPOOLER" + b"\0" * 40)
    sha = hashlib.sha256(junk.read_bytes()).hexdigest()
    data = _signed_with_comment(junk, key, f"fspl-gw-job v1 queue=q seq=1 sha256={sha}")
    with pytest.raises(jobsig.NotAJobError, match="bad packet header"):
        jobsig.verify_job(junk, data, key.public_key, "q")
    junk.write_bytes(b"plain text")
    with pytest.raises(FsplError, match="neither a Filespooler packet nor an age file"):
        jobsig.sign_job(junk, key, "q", seq=1)


def test_encrypted_job_binds_the_ciphertext_and_the_seq_is_checked_after_decryption(
        tmp_path: Path, key: ms.SecretKey) -> None:
    ct = tmp_path / "j.age"
    ct.write_bytes(AGE_MAGIC + os.urandom(300))  # only the magic matters here
    with pytest.raises(UsageError, match="is encrypted: give the job's seq"):
        jobsig.sign_job(ct, key, "q")
    data = jobsig.sign_job(ct, key, "q", seq=12)
    v = jobsig.verify_job(ct, data, key.public_key, "q")
    assert v.encrypted and v.seq == 12
    assert v.sha256 == hashlib.sha256(ct.read_bytes()).hexdigest()
    plain = _packet(tmp_path / "plain", 12)
    assert jobsig.check_decrypted(v, plain).seq == 12
    with pytest.raises(jobsig.SeqMismatchError, match="signed seq 12 but the packet's header "
                                                      "says seq 13"):
        jobsig.check_decrypted(v, _packet(tmp_path / "other", 13))
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(jobsig.NotAJobError):
        jobsig.check_decrypted(v, tmp_path / "bad")
