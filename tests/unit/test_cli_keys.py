"""``fspl-gw keygen``: files, modes, passphrase sources and refusals (the pair against the
real minisign: tests/interop/test_trust_tools.py)."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import time
from pathlib import Path

import pytest

from fspl_gateway.core import minisign as ms
from tests.helpers import FSPL_GW, run_gw


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FSPL_GW_KEY_PASSPHRASE"}
    env.update(extra)
    return env


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_unencrypted_pair_with_a_warning(tmp_path: Path) -> None:
    r = run_gw("keygen", "-s", str(tmp_path / "keys" / "sender.key"), "--unencrypted",
               env=_env())
    assert r.returncode == 0, r.stderr
    sk_path, pk_path = tmp_path / "keys" / "sender.key", tmp_path / "keys" / "sender.pub"
    assert _mode(sk_path) == 0o600 and _mode(tmp_path / "keys") == 0o700
    assert b"Warning: the secret key" in r.stderr and b"is NOT encrypted" in r.stderr
    sk = ms.read_secret_key(sk_path)
    pk = ms.read_public_key(pk_path)
    assert sk.public_key == pk
    out = r.stdout.decode().splitlines()
    assert out == [f"key id: {pk.key_id}", f"public key: {pk.to_base64()}"]
    assert sk_path.read_text().startswith("untrusted comment: fspl-gw secret key\n")


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    sk_path, pk_path = tmp_path / "k.key", tmp_path / "elsewhere.pub"
    pk_path.write_text("keep me")
    r = run_gw("keygen", "-s", str(sk_path), "-p", str(pk_path), "--unencrypted", env=_env())
    assert r.returncode == 1
    assert r.stderr.decode() == f"Error: {pk_path} already exists (overwrite it with --force)\n"
    assert not sk_path.exists() and pk_path.read_text() == "keep me"
    r = run_gw("keygen", "-s", str(sk_path), "-p", str(pk_path), "--unencrypted", "--force",
               env=_env())
    assert r.returncode == 0, r.stderr
    assert ms.read_public_key(pk_path) == ms.read_secret_key(sk_path).public_key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fspl-gw-tmp-")]


def test_no_passphrase_source_is_a_usage_error(tmp_path: Path) -> None:
    """No $FSPL_GW_KEY_PASSPHRASE and no terminal (a new session has none): exit 2 at
    once, nothing written."""
    r = subprocess.run([*FSPL_GW, "keygen", "-s", str(tmp_path / "k.key")], env=_env(),
                       capture_output=True, stdin=subprocess.DEVNULL, start_new_session=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode() == ("Error: no passphrase: set $FSPL_GW_KEY_PASSPHRASE or run on "
                                 "a terminal, or use --unencrypted\n")
    assert not list(tmp_path.iterdir())
    r = run_gw("keygen", "-s", str(tmp_path / "k.key"), env=_env(FSPL_GW_KEY_PASSPHRASE=""))
    assert r.returncode == 2 and b"$FSPL_GW_KEY_PASSPHRASE is set but empty" in r.stderr
    r = run_gw("keygen", "-s", str(tmp_path / "k"), "-p", str(tmp_path / "k"), env=_env())
    assert r.returncode == 2 and b"must differ" in r.stderr


def _keygen_on_a_terminal(args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """Run keygen with a pseudo-terminal as its controlling terminal, typing ``answers``
    at each passphrase prompt; return (exit code, everything it showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe(FSPL_GW[0], [*FSPL_GW, "keygen", *args], _env())
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, f"keygen stalled; it showed {shown!r}"
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if answers and shown.endswith(b": "):  # a prompt, and nothing after it yet
                os.write(fd, answers.pop(0) + b"\n")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown


def test_passphrase_typed_on_the_terminal(tmp_path: Path) -> None:
    code, shown = _keygen_on_a_terminal(["-s", str(tmp_path / "a.key")], [b"one", b"two"])
    assert code == 2, shown
    assert b"the two passphrases differ" in shown and b"one" not in shown  # not echoed
    assert not (tmp_path / "a.key").exists()
    code, shown = _keygen_on_a_terminal(["-s", str(tmp_path / "b.key")], [b"typed pw", b"typed pw"])
    assert code == 0, shown
    assert b"Passphrase (again):" in shown and b"typed pw" not in shown
    raw = (tmp_path / "b.key").read_text()
    assert ms.secret_key_is_encrypted(raw)
    with pytest.raises(ms.PassphraseError):
        ms.parse_secret_key(raw)
    assert ms.parse_secret_key(raw, "typed pw").public_key == ms.read_public_key(tmp_path / "b.pub")
