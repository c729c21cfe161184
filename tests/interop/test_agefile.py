"""The in-process age decryption (:mod:`fspl_gateway.core.agefile`) against the real
``age`` 1.1 (Debian): what age encrypts we decrypt to the same bytes, and on damaged,
truncated or foreign files we refuse exactly where age refuses."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from fspl_gateway.core import agecrypt, agefile
from fspl_gateway.core.hashing import MultiHasher

AGE = shutil.which("age")
KEYGEN = shutil.which("age-keygen")
C = agefile.CHUNK


@pytest.fixture(autouse=True)
def _tools() -> None:
    if AGE is None or KEYGEN is None:
        pytest.fail("age is not installed: run scripts/bootstrap (apt: age)")


def _keygen(path: Path) -> str:
    r = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return r.stderr.split("Public key: ")[1].split()[0]


@pytest.fixture(scope="module")
def ident(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("agefile")
    return d / "id.txt", _keygen(d / "id.txt")


def _encrypt(src: Path, dst: Path, *recipients: str) -> None:
    argv = ["age"]
    for r in recipients:
        argv += ["-r", r]
    subprocess.run([*argv, "-o", str(dst), str(src)], check=True, timeout=120)


def _age_accepts(enc: Path, identity: Path) -> bool:
    return subprocess.run(["age", "-d", "-i", str(identity), "-o", os.devnull, str(enc)],
                          capture_output=True, timeout=120).returncode == 0


def _ours(enc: Path, identity: Path, out: Path) -> MultiHasher:
    """Decrypt in process (never through the binary: a missing result would mean age)."""
    ids = agefile.load_identities([str(identity)])
    assert ids is not None
    h = MultiHasher(("sha256",), head=64)
    with open(enc, "rb") as s, open(out, "wb") as d:
        n = agefile.decrypt(s.fileno(), d.fileno(), ids, h)
    assert n == h.size == out.stat().st_size
    return h


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, agefile.BLOCK_CHUNKS * C,
                                  agefile.BLOCK_CHUNKS * C + 17, 3 * agefile.BLOCK_CHUNKS * C - 5])
def test_what_age_encrypts_decrypts_to_the_same_bytes(tmp_path: Path, ident: tuple[Path, str],
                                                      size: int) -> None:
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    _encrypt(plain, tmp_path / "enc", recipient)
    h = _ours(tmp_path / "enc", identity, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    assert h.hexdigest() == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert h.head == plain.read_bytes()[:64]


def test_many_recipients_and_identities(tmp_path: Path, ident: tuple[Path, str]) -> None:
    """Stanzas of other kinds (ssh-ed25519) are skipped; the matching key may be any of an
    identity file's keys, in any stanza."""
    identity, recipient = ident
    other = _keygen(tmp_path / "other.txt")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")],
                   check=True)
    ssh_pub = (tmp_path / "ssh.pub").read_text().strip()
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(200_000))
    _encrypt(plain, tmp_path / "enc", ssh_pub, other, recipient)
    both = tmp_path / "both.txt"
    both.write_text((tmp_path / "other.txt").read_text().replace("AGE-SECRET", "\n# x\nAGE-SECRET")
                    + identity.read_text())
    for idf in (identity, tmp_path / "other.txt", both):
        _ours(tmp_path / "enc", idf, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    stranger = tmp_path / "stranger.txt"
    _keygen(stranger)
    with pytest.raises(agefile.AgeFormatError, match="no identity matched any of the recipients"):
        _ours(tmp_path / "enc", stranger, tmp_path / "out")


def _mutations(enc: bytes) -> list[tuple[str, bytes]]:
    hdr_end = enc.index(b"\n---") + 1
    mac_end = enc.index(b"\n", hdr_end) + 1
    out = [("empty", b""), ("magic only", enc[:len(agefile.MAGIC)]),
           ("header only", enc[:mac_end]), ("no payload", enc[:mac_end + 16]),
           ("half nonce", enc[:mac_end + 8]), ("one byte of payload", enc[:mac_end + 17]),
           ("last chunk cut", enc[:-1]), ("last chunk's data cut", enc[:-100]),
           ("a whole chunk missing", enc[:mac_end + 16 + agefile.ENC_CHUNK]),
           ("trailing garbage", enc + b"x"), ("an empty chunk appended", enc + bytes(16)),
           ("CRLF header", enc[:hdr_end].replace(b"\n", b"\r\n") + enc[hdr_end:])]
    for name, pos in (("version line", 3), ("stanza share", enc.index(b"X25519 ") + 10),
                      ("stanza body", enc.index(b"\n", enc.index(b"X25519 ")) + 5),
                      ("MAC", hdr_end + 8), ("nonce", mac_end + 3), ("first chunk", mac_end + 40),
                      ("second chunk", mac_end + 16 + agefile.ENC_CHUNK + 9),
                      ("last tag", len(enc) - 2)):
        b = bytearray(enc)
        b[pos] ^= 0x01
        out.append((f"bit flipped in the {name}", bytes(b)))
    b = bytearray(enc)  # the two full chunks swapped: each authenticates, not in that place
    s = mac_end + 16
    b[s:s + 2 * agefile.ENC_CHUNK] = (enc[s + agefile.ENC_CHUNK:s + 2 * agefile.ENC_CHUNK]
                                      + enc[s:s + agefile.ENC_CHUNK])
    out.append(("chunks swapped", bytes(b)))
    return out


def test_damaged_files_are_refused_exactly_where_age_refuses(tmp_path: Path,
                                                             ident: tuple[Path, str]) -> None:
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(2 * C + 1000))
    _encrypt(plain, tmp_path / "enc", recipient)
    enc = (tmp_path / "enc").read_bytes()
    seen = 0
    for name, data in _mutations(enc):
        bad = tmp_path / "bad"
        bad.write_bytes(data)
        age_ok = _age_accepts(bad, identity)
        try:
            _ours(bad, identity, tmp_path / "out")
            ours_ok = True
        except agefile.AgeFormatError:
            ours_ok = False
        assert ours_ok == age_ok, f"{name}: age {'accepts' if age_ok else 'refuses'}, we do not"
        seen += not age_ok
    assert seen >= 20  # nearly every mutation is a refusal (the test saw them)


def test_only_plain_x25519_identity_files_are_read_in_process(tmp_path: Path,
                                                              ident: tuple[Path, str]) -> None:
    identity, _ = ident
    assert agefile.load_identities([str(identity)]) is not None
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")],
                   check=True)
    key_line = next(ln for ln in identity.read_text().splitlines() if ln.startswith("AGE-"))
    bad_sum = key_line[:-1] + ("q" if key_line[-1] != "Q" else "P")
    (tmp_path / "badsum.txt").write_text(bad_sum + "\n")
    (tmp_path / "plugin.txt").write_text("AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQQQQQQQQQQQQ\n")
    for f in ("ssh", "badsum.txt", "plugin.txt", "missing.txt"):
        assert agefile.load_identities([str(identity), str(tmp_path / f)]) is None, f


def test_other_identities_and_armored_files_still_go_through_age(tmp_path: Path,
                                                                 ident: tuple[Path, str]) -> None:
    """decrypt_file: an armored file, or an ssh identity, is decrypted by the binary."""
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(100_000))
    subprocess.run(["age", "-a", "-r", recipient, "-o", str(tmp_path / "armored"), str(plain)],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")],
                   check=True)
    _encrypt(plain, tmp_path / "to-ssh", (tmp_path / "ssh.pub").read_text().strip())
    for src, idf in (("armored", identity), ("to-ssh", tmp_path / "ssh")):
        out = tmp_path / f"{src}.out"
        h = MultiHasher(("sha256",))
        assert agecrypt.decrypt_file(str(tmp_path / src), str(out), str(idf), h)
        assert out.read_bytes() == plain.read_bytes()
        assert h.hexdigest() == hashlib.sha256(plain.read_bytes()).hexdigest()
    h = MultiHasher(("sha256",))
    assert not agecrypt.decrypt_file(str(plain), str(tmp_path / "x"), str(identity), h)
    assert not (tmp_path / "x").exists()


def test_a_failed_decryption_leaves_no_file(tmp_path: Path, ident: tuple[Path, str]) -> None:
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(5 * C))
    _encrypt(plain, tmp_path / "enc", recipient)
    b = bytearray((tmp_path / "enc").read_bytes())
    b[-10] ^= 1  # the last chunk: four good chunks were written first
    (tmp_path / "bad").write_bytes(b)
    out = tmp_path / "out"
    with pytest.raises(agecrypt.AgeError, match="^age decryption failed: damaged payload: chunk 4"):
        agecrypt.decrypt_file(str(tmp_path / "bad"), str(out), str(identity), MultiHasher())
    assert not out.exists()


def test_flat_memory(tmp_path: Path, ident: tuple[Path, str]) -> None:
    identity, recipient = ident
    plain = tmp_path / "plain"
    with open(plain, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    _encrypt(plain, tmp_path / "enc", recipient)
    plain.unlink()
    tracemalloc.start()
    try:
        h = _ours(tmp_path / "enc", identity, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert h.size == 64 << 20
    assert peak < 16 << 20, f"{peak} bytes for a 64 MiB file"


def test_without_decrypt_into(tmp_path: Path, ident: tuple[Path, str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography before decrypt_into: the same bytes through decrypt() and a copy."""
    from cryptography.hazmat.primitives.ciphers import aead

    real = aead.ChaCha20Poly1305

    class Older:
        def __init__(self, key: bytes) -> None:
            self._c = real(key)

        def decrypt(self, nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
            return self._c.decrypt(nonce, data, ad)

    monkeypatch.setattr(aead, "ChaCha20Poly1305", Older)
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * C + 7))
    _encrypt(plain, tmp_path / "enc", recipient)
    _ours(tmp_path / "enc", identity, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()


def test_a_failed_decryption_through_age_leaves_no_file(tmp_path: Path,
                                                        ident: tuple[Path, str]) -> None:
    """The binary's path (an armored file): age's one-line error, no plaintext left."""
    identity, recipient = ident
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * C))
    subprocess.run(["age", "-a", "-r", recipient, "-o", str(tmp_path / "armored"), str(plain)],
                   check=True)
    lines = (tmp_path / "armored").read_bytes().splitlines(keepends=True)
    del lines[len(lines) // 2]  # a line of the payload gone
    (tmp_path / "bad").write_bytes(b"".join(lines))
    out = tmp_path / "out"
    with pytest.raises(agecrypt.AgeError, match=r"^age decryption failed: \S"):
        agecrypt.decrypt_file(str(tmp_path / "bad"), str(out), str(identity), MultiHasher())
    assert not out.exists()
