"""SFTP-specific tests against a real OpenSSH sshd (tests/fixtures/sshd.py).

The shared behaviour (list/open/fetch/write_new/delete, hostile names, flat memory) is
in the conformance suite; here: location and ssh_config parsing, the host-key policy,
authentication errors, no-clobber rename, the fsync extension (seen in the server's own
request log), leftover temporaries, the server dying mid-transfer, and concurrency.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core.errors import (
    AuthError,
    ConfigError,
    HostKeyError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.gateway.retry import RetryPolicy
from tests.fixtures.sshd import SSHD, SFTPQueue, make_sshd
from tests.helpers import PatternReader

sftp = pytest.importorskip("fspl_gateway.transports.sftp")
SFTPTransport = sftp.SFTPTransport
MiB = 1 << 20


@pytest.fixture(params=["openssh", "paramiko"])
def sftp_queue(sftp_queue: SFTPQueue, request: pytest.FixtureRequest) -> SFTPQueue:
    """Every test here runs on both data paths: the system ssh and paramiko."""
    sftp_queue.options["ssh"] = request.param
    return sftp_queue


def _openssh(q: SFTPQueue) -> bool:
    return bool(q.options["ssh"] == "openssh")


def _t(q: SFTPQueue, **opts: Any) -> Any:
    return SFTPTransport(q.location, {**q.options, **opts})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HashSink:
    def __init__(self, on_write: Any = None) -> None:
        self.h = hashlib.sha256()
        self.n = 0
        self.on_write = on_write

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.n += len(b)
        if self.on_write is not None:
            self.on_write(self.n)
        return len(b)


def _pattern(size: int, seed: int = 0) -> bytes:
    r = PatternReader(size, seed)
    return b"".join(iter(lambda: r.read(MiB), b""))


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "t", "-f",
                    str(path)], check=True, capture_output=True)
    return path


# -- location and ssh_config ----------------------------------------------------------
@pytest.mark.parametrize("loc, host, user, port, path", [
    ("h/srv/q", "h", None, None, "/srv/q"),
    ("u@h:2222/srv/q", "h", "u", 2222, "/srv/q"),
    ("sftp://u@h:2222/srv/q", "h", "u", 2222, "/srv/q"),
    ("sftp://h/~/q", "h", None, None, "q"),
    ("h/~", "h", None, None, "."),
    ("h:rel/q", "h", None, None, "rel/q"),
    ("h:/abs/q", "h", None, None, "/abs/q"),
    ("u@[::1]:2200/q/", "::1", "u", 2200, "/q"),
])
def test_parse_location(loc: str, host: str, user: str | None, port: int | None,
                        path: str) -> None:
    p = sftp.parse_location(loc)
    assert (p.host, p.user, p.port, p.path) == (host, user, port, path)


@pytest.mark.parametrize("bad", ["h", "http://h/x", "h:99999/x", "h/~bob/q", "@h/x", ""])
def test_bad_location(bad: str) -> None:
    with pytest.raises(ConfigError) as ei:
        sftp.parse_location(bad)
    assert "\n" not in str(ei.value)


def test_unknown_option_refused(sftp_queue: SFTPQueue) -> None:
    with pytest.raises(ConfigError, match="known_host"):
        _t(sftp_queue, known_host="/x")


def test_ssh_config_hostname_user_port_identity(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    s = sftp_queue.sshd
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host myqueue\n  HostName {s.host}\n  User {s.user}\n  Port {s.port}\n"
                   f"  IdentityFile {s.identity_file}\n")
    (sftp_queue.jobs / "fspl-a.fspl").write_bytes(b"abc")
    t = SFTPTransport(f"myqueue{sftp_queue.path}",
                      {"ssh_config": str(cfg), "known_hosts": s.known_hosts})
    with t:
        assert (t.host, t.user, t.port) == (s.host, s.user, s.port)
        assert t.auth.identity_files == [s.identity_file]
        assert [e.name for e in t.list()] == ["fspl-a.fspl"]
    # the location wins over the config: a wrong port in the location is really used
    t2 = SFTPTransport(f"myqueue:1{sftp_queue.path}",
                       {"ssh_config": str(cfg), "known_hosts": s.known_hosts})
    assert t2.port == 1
    with pytest.raises(TransientError, match="port 1"):
        list(t2.list())


def test_relative_path_is_relative_to_login_dir(sftp_queue: SFTPQueue) -> None:
    import pwd

    home = Path(pwd.getpwnam(sftp_queue.sshd.user).pw_dir)
    try:
        rel = os.path.relpath(sftp_queue.path, home)
    except ValueError:
        pytest.skip("tmp dir not reachable from the login directory")
    s = sftp_queue.sshd
    (sftp_queue.jobs / "fspl-r.fspl").write_bytes(b"rel")
    with SFTPTransport(f"{s.user}@{s.host}:{s.port}/~/{rel}", sftp_queue.options) as t:
        assert [e.name for e in t.list()] == ["fspl-r.fspl"]


# -- host keys ------------------------------------------------------------------------
def _fingerprints(sshd: SSHD) -> dict[str, str]:
    out = {}
    for kind in ("ed25519", "ecdsa"):
        line = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                               str(sshd.dir / f"ssh_host_{kind}_key.pub")],
                              capture_output=True, text=True, check=True).stdout
        out[kind] = line.split()[1]
    return out


def test_unknown_host_refused_with_fingerprint(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = _t(sftp_queue, known_hosts=str(empty))
    with pytest.raises(HostKeyError) as ei:
        list(t.list())
    msg = str(ei.value)
    fps = _fingerprints(sftp_queue.sshd)
    assert "unknown SSH host" in msg and f"[127.0.0.1]:{sftp_queue.sshd.port}" in msg
    # OpenSSH's own fingerprint text (ssh-keygen -l), with the key type
    assert fps["ed25519"] in msg and "ED25519" in msg, (msg, fps)
    assert empty.read_text() == "", "nothing may be recorded without accept_new_host_key"


def test_accept_new_records_then_accepts(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    kh = tmp_path / "kh" / "known_hosts"  # the directory does not exist yet
    port = sftp_queue.sshd.port
    with _t(sftp_queue, known_hosts=str(kh), accept_new_host_key="yes") as t:
        assert list(t.list()) == []
    text = kh.read_text()
    assert text.startswith(f"[127.0.0.1]:{port} ssh-ed25519 "), text
    # OpenSSH itself finds the recorded entry, with the server's real key
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{port}", "-f", str(kh)],
                           capture_output=True, text=True)
    assert found.returncode == 0, found
    server_key = sftp_queue.sshd.host_keys[0][1]
    assert server_key in found.stdout
    # next connect: accepted without accept_new, nothing appended
    with _t(sftp_queue, known_hosts=str(kh)) as t:
        assert list(t.list()) == []
    assert kh.read_text() == text


def test_changed_host_key_refused_even_with_accept_new(sftp_queue: SFTPQueue,
                                                      tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other")
    ktype, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sftp_queue.sshd.port} {ktype} {b64}\n")
    before = kh.read_text()
    for accept in (False, True):
        t = _t(sftp_queue, known_hosts=str(kh), accept_new_host_key=accept)
        with pytest.raises(HostKeyError) as ei:
            list(t.list())
        msg = str(ei.value)
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in msg
        assert _fingerprints(sftp_queue.sshd)["ed25519"] in msg
        assert other.exists()
    assert kh.read_text() == before


def test_known_ecdsa_key_is_negotiated(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    """Like OpenSSH, prefer the key type already known for the host (the server also has
    an ed25519 key, which paramiko would otherwise pick and call unknown)."""
    s = sftp_queue.sshd
    kh = tmp_path / "known_hosts"
    t_, b64 = s.host_keys[1]
    assert t_.startswith("ecdsa")
    kh.write_text(f"[127.0.0.1]:{s.port} {t_} {b64}\n")
    with _t(sftp_queue, known_hosts=str(kh)) as t:
        assert list(t.list()) == []


# -- authentication -------------------------------------------------------------------
def test_wrong_key_clear_auth_error(sftp_queue: SFTPQueue, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    key = _keygen(tmp_path / "stranger")
    t = _t(sftp_queue, identity_file=str(key))
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as ei:
        list(t.list())
    msg = str(ei.value)
    assert "authentication" in msg and sftp_queue.sshd.user in msg and str(key) in msg
    assert "PRIVATE KEY" not in msg and "PRIVATE KEY" not in caplog.text


def test_missing_identity_file(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="does not exist"):
        list(_t(sftp_queue, identity_file=str(tmp_path / "nope")).list())


def test_encrypted_key_passphrase_from_env(sftp_queue: SFTPQueue, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    if _openssh(sftp_queue):
        pytest.skip("paramiko only: ssh in BatchMode takes passphrases from the agent")
    secret = "correct horse battery staple"
    key = _keygen(tmp_path / "enc", passphrase=secret)
    s = sftp_queue.sshd
    auth = s.dir / "authorized_keys"
    with open(auth, "a") as f:
        f.write((tmp_path / "enc.pub").read_text())
    # no passphrase: a clear error naming the variable
    with pytest.raises(AuthError, match="FSPL_GW_SSH_PASSPHRASE"):
        list(_t(sftp_queue, identity_file=str(key)).list())
    # wrong passphrase
    monkeypatch.setenv("MY_PASS", "wrong")
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as ei:
        list(_t(sftp_queue, identity_file=str(key), passphrase_env="MY_PASS").list())
    assert "wrong passphrase" in str(ei.value) and "wrong" not in str(ei.value).replace(
        "wrong passphrase", "")
    # the right one, through the default variable
    monkeypatch.setenv("FSPL_GW_SSH_PASSPHRASE", secret)
    with caplog.at_level(logging.DEBUG), _t(sftp_queue, identity_file=str(key)) as t:
        assert list(t.list()) == []
    assert secret not in caplog.text


def test_connection_refused_is_transient(sftp_queue: SFTPQueue) -> None:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]  # bound, not listening: refused
        s = sftp_queue.sshd
        t = SFTPTransport(f"{s.user}@127.0.0.1:{port}{sftp_queue.path}", sftp_queue.options)
        with pytest.raises(TransientError, match="Connection refused"):
            list(t.list())


def test_connection_attempts_are_the_policys(sftp_queue: SFTPQueue) -> None:
    """The transport connects once per call (no reconnect loop): a server that is down
    sees exactly the retry policy's attempts, and the call succeeds once it is back."""
    from tests.fixtures.tcpproxy import TcpProxy

    s = sftp_queue.sshd
    (sftp_queue.jobs / "fspl-a.fspl").write_bytes(b"a")
    with TcpProxy(s.port) as proxy:
        t = SFTPTransport(f"{s.user}@127.0.0.1:{proxy.port}{sftp_queue.path}",
                          {**sftp_queue.options, "known_hosts": s.known_hosts})
        t.hostkeys.entry = f"[{s.host}]:{s.port}"  # the proxy's port is not in known_hosts
        attempts: list[int] = []

        def listing(cut: int) -> list[str]:
            attempts.append(1)
            # the first ``cut`` connections are cut as soon as the server says a word
            proxy.cut_after(0 if len(attempts) <= cut else None)
            return [e.name for e in t.list()]

        with pytest.raises(TransientError):
            RetryPolicy(attempts=3, backoff=0.01).call(lambda: listing(99), "list")
        assert proxy.accepted == len(attempts) == 3 and t.stats["connects"] == 0
        attempts.clear()
        assert RetryPolicy(attempts=3, backoff=0.01).call(lambda: listing(2), "list") == \
            ["fspl-a.fspl"]
        assert proxy.accepted == 6 and t.stats["connects"] == 1
        t.close()


# -- operations -----------------------------------------------------------------------
def test_no_clobber_rename(sftp_queue: SFTPQueue) -> None:
    final = sftp_queue.jobs / "fspl-x.fspl"
    final.write_bytes(b"original")
    with _t(sftp_queue) as t:
        with pytest.raises(RemoteExistsError, match="already exists"):
            t.write_new("fspl-x.fspl", io.BytesIO(b"intruder"), 8)
        assert final.read_bytes() == b"original"
        assert sorted(os.listdir(sftp_queue.jobs)) == ["fspl-x.fspl"], "temporary left"
        # a fresh name works, and then is protected too
        t.write_new("fspl-y.fspl", io.BytesIO(b"new"), 3)
        with pytest.raises(RemoteExistsError):
            t.write_new("fspl-y.fspl", io.BytesIO(b"NEW"), 3)
        assert (sftp_queue.jobs / "fspl-y.fspl").read_bytes() == b"new"


def test_missing_things(sftp_queue: SFTPQueue) -> None:
    with _t(sftp_queue) as t:
        with pytest.raises(RemoteNotFoundError):
            t.fetch("fspl-none.fspl", HashSink())  # type: ignore[arg-type]
        with pytest.raises(RemoteNotFoundError):
            t.delete("fspl-none.fspl")
        shutil.rmtree(sftp_queue.jobs)
        with pytest.raises(RemoteNotFoundError, match="jobs"):
            list(t.list())
        # the channel is still good after those errors
        sftp_queue.jobs.mkdir()
        assert list(t.list()) == []
        assert t.stats["connects"] == 1


def test_list_regular_files_only(sftp_queue: SFTPQueue) -> None:
    j = sftp_queue.jobs
    (j / "fspl-a.fspl").write_bytes(b"12345")
    (j / "fspl-dir.fspl").mkdir()
    (j / "fspl-link.fspl").symlink_to(j / "fspl-a.fspl")
    os.mkfifo(j / "fspl-fifo.fspl")
    (j / b"fspl-\xff.fspl".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    with _t(sftp_queue) as t:
        entries = {e.name: e for e in t.list()}
    assert set(entries) == {"fspl-a.fspl", b"fspl-\xff.fspl".decode("utf-8", "surrogateescape")}
    a = entries["fspl-a.fspl"]
    assert a.size == 5 and a.mtime == pytest.approx((j / "fspl-a.fspl").stat().st_mtime, abs=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_names_path(sftp_queue: SFTPQueue) -> None:
    os.chmod(sftp_queue.jobs, 0o500)
    try:
        with _t(sftp_queue) as t, pytest.raises(TransportError, match="permission denied"):
            t.write_new("fspl-p.fspl", io.BytesIO(b"x"), 1)
    finally:
        os.chmod(sftp_queue.jobs, 0o755)


# -- fsync ----------------------------------------------------------------------------
@pytest.fixture
def logged_queue(sshd_sftp_log: SSHD, sftp_queue: SFTPQueue) -> SFTPQueue:
    s = sshd_sftp_log
    return SFTPQueue(sshd=s, path=sftp_queue.path,
                     location=f"{s.user}@{s.host}:{s.port}{sftp_queue.path}",
                     options={**sftp_queue.options, "known_hosts": s.known_hosts},
                     home=sftp_queue.home)


def _sftp_log_since(s: SSHD, offset: int) -> str:
    assert s.sftp_log
    deadline = time.monotonic() + 5
    while True:  # the server writes its log asynchronously to us
        with open(s.sftp_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace").replace("\r", "")  # CRLF log lines
        # the test lists after its write: the listing's readdir marks the end
        if re.search(r"rename old.*readdir", text, re.S) or time.monotonic() > deadline:
            return text


def test_fsync_extension_used_before_rename(logged_queue: SFTPQueue) -> None:
    s = logged_queue.sshd
    assert s.sftp_log
    with _t(logged_queue) as t:
        list(t.list())  # connect first
        off = os.path.getsize(s.sftp_log) if os.path.exists(s.sftp_log) else 0
        t.write_new("fspl-f.fspl", PatternReader(3 * MiB), 3 * MiB)
        list(t.list())
        text = _sftp_log_since(s, off)
    lines = text.splitlines()
    # sftp-server: 'open "<tmp>" flags WRITE,CREATE,EXCL', 'request N: fsync (handle H)',
    # 'rename old "<tmp>" new "<final>"'
    i_open = next(i for i, ln in enumerate(lines) if re.search(r'open ".*/' + re.escape(TMP_PREFIX), ln))
    # (the test's own tmp path contains "fsync": match the request lines exactly)
    fsyncs = [i for i, ln in enumerate(lines) if re.search(r"request \d+: fsync \(handle", ln)]
    i_fsync = fsyncs[0]
    i_rename = next(i for i, ln in enumerate(lines) if "rename old" in ln)
    assert i_open < i_fsync < i_rename, text
    assert "fspl-f.fspl" in lines[i_rename]
    assert not any("posix-rename" in ln for ln in lines)
    # after the rename, the directory is fsynced as well (second fsync)
    assert [i for i in fsyncs if i > i_rename], text
    assert re.search(r'^fsync "[^"]*/jobs"$', text, re.M), text
    # and with fsync=false the server sees none
    with _t(logged_queue, fsync=False) as t:
        list(t.list())
        off = os.path.getsize(s.sftp_log)
        t.write_new("fspl-g.fspl", io.BytesIO(b"g"), 1)
        list(t.list())
        text = _sftp_log_since(s, off)
    assert "rename old" in text and not re.search(r"request \d+: fsync", text)


def test_small_fetch_is_one_round_trip_after_open(logged_queue: SFTPQueue) -> None:
    """A small file: OPEN, then its READ, an end-of-file probe READ and the CLOSE sent
    together; nothing else (no FSTAT)."""
    s = logged_queue.sshd
    assert s.sftp_log
    data = os.urandom(2000)
    (logged_queue.jobs / "fspl-s.fspl").write_bytes(data)
    with _t(logged_queue) as t:
        entry = next(iter(t.list()))
        off = os.path.getsize(s.sftp_log)
        sink = HashSink()
        assert t.fetch("fspl-s.fspl", sink, entry) == 2000  # type: ignore[arg-type]
        assert sink.h.hexdigest() == _sha(data)
        list(t.list())
        text = _sftp_log_since(s, off)
    reqs = re.findall(r"request \d+: (?!sent)(\w+)", text.split("opendir")[0])
    assert reqs == ["open", "read", "read", "close"], text


@pytest.mark.parametrize("change", [b"more", None])
def test_small_file_changed_since_listing(sftp_queue: SFTPQueue, change: bytes | None) -> None:
    from fspl_gateway.transports.base import ListingChangedError

    f = sftp_queue.jobs / "fspl-g.fspl"
    f.write_bytes(b"x" * 2000)
    with _t(sftp_queue) as t:
        entry = next(iter(t.list()))
        if change is None:
            f.write_bytes(b"x" * 1500)  # shrank
        else:
            with open(f, "ab") as w:
                w.write(change)  # grew
        sink = HashSink()
        with pytest.raises(ListingChangedError):
            t.fetch("fspl-g.fspl", sink, entry)  # type: ignore[arg-type]
        assert sink.n <= 2001
        f.write_bytes(b"y" * 2000)  # the channel is still in step
        assert t.fetch("fspl-g.fspl", HashSink(), entry) == 2000  # type: ignore[arg-type]


# -- temporaries ----------------------------------------------------------------------
def test_cleanup_temporaries_rule(sftp_queue: SFTPQueue) -> None:
    j = sftp_queue.jobs
    me, tok = sftp.transport._HOST_TAG, sftp.transport._PROC_TOKEN
    dead = subprocess.Popen(["true"])
    dead.wait()
    other_host = "0" * 10 if me != "0" * 10 else "1" * 10
    files = {
        # removed:
        f"{TMP_PREFIX}sftp-{other_host}-1-aaaaaaaa-0001-fspl-old.fspl": ("old", True),
        f"{TMP_PREFIX}sftp-{me}-{dead.pid}-bbbbbbbb-0002-fspl-dead.fspl": ("new", True),
        f"{TMP_PREFIX}sftp-{me}-{os.getpid()}-{tok}-0003-fspl-mine.fspl": ("new", True),
        f"{TMP_PREFIX}12-abcdef-fspl-local-style-old.fspl": ("old", True),
        # kept:
        f"{TMP_PREFIX}sftp-{other_host}-1-aaaaaaaa-0004-fspl-busy.fspl": ("new", False),
        f"{TMP_PREFIX}sftp-{me}-1-cccccccc-0005-fspl-alive.fspl": ("new", False),
        f"{TMP_PREFIX}12-abcdef-fspl-local-style-new.fspl": ("new", False),
        "fspl-real.fspl": ("old", False),
        "notes.txt": ("old", False),
    }
    hour_ago = time.time() - 3600
    for name, (age, _) in files.items():
        (j / name).write_bytes(b"x")
        if age == "old":
            os.utime(j / name, (hour_ago, hour_ago))
    with _t(sftp_queue) as t:
        n = t.cleanup_temporaries()
        assert n == sum(1 for _a, rm in files.values() if rm)
        assert sorted(os.listdir(j)) == sorted(k for k, (_a, rm) in files.items() if not rm)
        assert t.cleanup_temporaries() == 0


# -- the server dies mid-transfer -----------------------------------------------------
@pytest.fixture(scope="module")
def killable_sshd(sshd: SSHD) -> Iterator[SSHD]:
    """A private sshd (same keys) whose per-connection processes we may kill without
    disturbing other tests' connections to the shared one."""
    s = make_sshd(sshd.dir)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def killable_queue(killable_sshd: SSHD, sftp_queue: SFTPQueue) -> SFTPQueue:
    s = killable_sshd
    return SFTPQueue(sshd=s, path=sftp_queue.path,
                     location=f"{s.user}@{s.host}:{s.port}{sftp_queue.path}",
                     options={**sftp_queue.options, "known_hosts": s.known_hosts,
                              "timeout": 10},
                     home=sftp_queue.home)


POLICY = RetryPolicy(attempts=3, backoff=0.05)


def test_server_dies_mid_fetch(killable_queue: SFTPQueue) -> None:
    size = 48 * MiB
    data = _pattern(size, seed=3)
    (killable_queue.jobs / "fspl-big.fspl").write_bytes(data)
    s = killable_queue.sshd
    killed: list[int] = []

    def kill_once(n: int) -> None:
        if n >= 4 * MiB and not killed:
            killed.append(s.kill_children())

    with _t(killable_queue) as t:
        entry = next(iter(t.list()))
        sink = HashSink(kill_once)
        with pytest.raises(TransientError, match="connection lost"):
            t.fetch("fspl-big.fspl", sink, entry)  # type: ignore[arg-type]
        assert killed and killed[0] >= 1
        assert sink.n < size
        # the same transport reconnects (the retry policy tries again: the first call may
        # still meet the dead connection) and a fresh fetch is complete and right
        sinks: list[HashSink] = []

        def fetch() -> int:
            sinks.append(HashSink())
            return t.fetch("fspl-big.fspl", sinks[-1], entry)  # type: ignore[arg-type]

        assert POLICY.call(fetch, "fetch") == size
        assert sinks[-1].h.hexdigest() == _sha(data)
        assert t.stats["connects"] == 2


def test_server_dies_mid_upload(killable_queue: SFTPQueue) -> None:
    size = 48 * MiB
    s = killable_queue.sshd
    j = killable_queue.jobs

    class KillingReader(PatternReader):
        def read(self, n: int = -1) -> bytes:
            if self.pos >= 8 * MiB and self.pos - n < 8 * MiB:
                s.kill_children()
            return super().read(n)

    with _t(killable_queue) as t:
        with pytest.raises(TransientError):
            t.write_new("fspl-up.fspl", KillingReader(size, seed=5), size)
        names = os.listdir(j)
        assert "fspl-up.fspl" not in names, "a partial file appeared under the final name"
        leftovers = [n for n in names if n.startswith(TMP_PREFIX)]
        # the dead connection could not remove its temporary: cleanup does (our own
        # process, not being written any more), once the policy has reconnected
        assert POLICY.call(t.cleanup_temporaries, "cleanup") == len(leftovers)
        assert os.listdir(j) == []
        t.write_new("fspl-up.fspl", PatternReader(size, seed=5), size)
        assert hashlib.sha256((j / "fspl-up.fspl").read_bytes()).hexdigest() == \
            _sha(_pattern(size, seed=5))
        assert os.listdir(j) == ["fspl-up.fspl"]


def test_server_restarted_between_calls(killable_queue: SFTPQueue) -> None:
    (killable_queue.jobs / "fspl-a.fspl").write_bytes(b"a")
    with _t(killable_queue) as t:
        assert [e.name for e in t.list()] == ["fspl-a.fspl"]
        killable_queue.sshd.restart()
        time.sleep(0.2)  # let paramiko see the connection close
        # the idle channel is found dead and the call reconnects (through the retry
        # policy, should the dead connection not have been noticed yet)
        assert POLICY.call(lambda: [e.name for e in t.list()], "list") == ["fspl-a.fspl"]
        assert t.stats["connects"] == 2


# -- concurrency ----------------------------------------------------------------------
def test_concurrent_fetches_and_writes(sftp_queue: SFTPQueue) -> None:
    j = sftp_queue.jobs
    blobs = {f"fspl-{i:02d}.fspl": _pattern(MiB + i * 4099, seed=i) for i in range(12)}
    for name, data in blobs.items():
        (j / name).write_bytes(data)
    with _t(sftp_queue, connections=3) as t:
        entries = {e.name: e for e in t.list()}

        def fetch(name: str) -> tuple[str, str, int]:
            sink = HashSink()
            n = t.fetch(name, sink, entries[name])  # type: ignore[arg-type]
            return name, sink.h.hexdigest(), n

        def write(i: int) -> str:
            name = f"fspl-new-{i:02d}.fspl"
            t.write_new(name, PatternReader(300_000, seed=100 + i), 300_000)
            return name

        with ThreadPoolExecutor(8) as ex:
            fetches = [ex.submit(fetch, n) for n in blobs for _ in range(2)]
            writes = [ex.submit(write, i) for i in range(8)]
            lists = [ex.submit(lambda: sorted(e.name for e in t.list())) for _ in range(4)]
            for f in fetches:
                name, h, n = f.result()
                assert (h, n) == (_sha(blobs[name]), len(blobs[name]))
            written = [w.result() for w in writes]
            for lst in lists:
                assert set(blobs) <= set(lst.result())
        assert t.pool.nchan <= 3
        # one connection; on the OpenSSH path one ssh per channel
        assert t.stats["connects"] == 1 or _openssh(sftp_queue) and t.stats["connects"] <= 3
    for i, name in enumerate(written):
        assert (j / name).read_bytes() == _pattern(300_000, seed=100 + i)
    assert not [n for n in os.listdir(j) if n.startswith(TMP_PREFIX)]


def test_open_stream_while_using_transport(sftp_queue: SFTPQueue) -> None:
    """An open() stream holds its own channel: with connections=1 the caller can still
    list and fetch while it reads (no self-deadlock)."""
    data = _pattern(3 * MiB + 17, seed=9)
    (sftp_queue.jobs / "fspl-s.fspl").write_bytes(data)
    with _t(sftp_queue, connections=1) as t, t.open("fspl-s.fspl") as f:
        head = f.read(1000)
        assert [e.name for e in t.list()] == ["fspl-s.fspl"]
        sink = HashSink()
        t.fetch("fspl-s.fspl", sink)  # type: ignore[arg-type]
        assert head + f.read() == data
        assert sink.h.hexdigest() == _sha(data)


def test_open_streams_reuse_their_channel(sftp_queue: SFTPQueue) -> None:
    """A finished stream's channel serves the next open() (on the OpenSSH path a new
    channel is a new ssh process), also after a stream closed half-read."""
    data = _pattern(3 * MiB, seed=2)
    (sftp_queue.jobs / "fspl-o.fspl").write_bytes(data)
    with _t(sftp_queue, connections=1) as t:
        assert [e.name for e in t.list()] == ["fspl-o.fspl"]
        before = t.stats["connects"]
        for _ in range(3):
            with t.open("fspl-o.fspl") as f:
                assert f.read(1000) == data[:1000]  # closed half-read
        with t.open("fspl-o.fspl") as f:
            assert f.read() == data
        # one more channel for the streams, reused; paramiko: the same connection
        assert t.stats["connects"] - before == (1 if _openssh(sftp_queue) else 0)
        with pytest.raises(RemoteNotFoundError):
            t.open("fspl-none.fspl")
        with t.open("fspl-o.fspl") as f:
            assert f.read(10) == data[:10]
        assert t.stats["connects"] - before == (1 if _openssh(sftp_queue) else 0)


# -- the OpenSSH data path ------------------------------------------------------------
def _ssh_children() -> list[int]:
    """PIDs of the ``ssh`` processes this test process started (the transport's)."""
    from tests.fixtures.sshd import _children_of

    out = []
    for pid in _children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "ssh":
                    out.append(pid)
        except OSError:
            pass
    return out


def _kill_ssh() -> int:
    n = 0
    for pid in _ssh_children():
        try:
            os.kill(pid, 9)
            n += 1
        except ProcessLookupError:
            pass
    return n


def test_openssh_command_line(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    """Our options become ssh options; host-key checking is never left to the user's
    config (BatchMode, StrictHostKeyChecking on the command line)."""
    if not _openssh(sftp_queue):
        pytest.skip("the OpenSSH data path only")
    s = sftp_queue.sshd
    t = _t(sftp_queue, ssh="openssh", allow_agent=False)
    argv = t._openssh().argv
    joined = " ".join(argv)
    assert argv[-3:] == ["-s", s.host, "sftp"]
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"-i {s.identity_file}",
                 f"-p {s.port}", f"-l {s.user}", "IdentityAgent=none",
                 f"-F {sftp_queue.options['ssh_config']}"):
        assert want in joined, (want, argv)
    kh = next(a for a in argv if a.startswith("UserKnownHostsFile="))
    # the option's file first: ssh records new keys in the first one
    assert kh.split("=", 1)[1].split()[0] == s.known_hosts
    assert "HostKeyAlias" not in joined
    argv = _t(sftp_queue, ssh="openssh", accept_new_host_key=True,
              ssh_config="none")._openssh().argv
    assert "StrictHostKeyChecking=accept-new" in argv and argv[argv.index("-F") + 1] == "none"
    with pytest.raises(ConfigError, match="bad SSH host"):
        SFTPTransport(f"-oProxyCommand=touch%20x{sftp_queue.path}",
                      {**sftp_queue.options, "ssh": "openssh"})._openssh()


def test_openssh_custom_command(sftp_queue: SFTPQueue, tmp_path: Path) -> None:
    if not _openssh(sftp_queue):
        pytest.skip("the OpenSSH data path only")
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "my ssh"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec ssh "$@"\n')
    wrapper.chmod(0o755)
    (sftp_queue.jobs / "fspl-c.fspl").write_bytes(b"c")
    cmd = f"'{wrapper}' -o Compression=no -o StrictHostKeyChecking=no"
    with _t(sftp_queue, ssh="openssh", ssh_command=cmd) as t:
        assert [e.name for e in t.list()] == ["fspl-c.fspl"]
    line = log.read_text()
    assert "-o Compression=no" in line and line.rstrip().endswith("sftp")
    # the host-key rules come first (ssh keeps the first value): a command cannot
    # weaken them
    assert line.startswith("-o BatchMode=yes -o StrictHostKeyChecking=yes "), line
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    t = _t(sftp_queue, ssh="openssh", ssh_command=cmd, known_hosts=str(empty))
    with pytest.raises(HostKeyError, match="unknown SSH host"):
        list(t.list())


def test_ssh_choice(sftp_queue: SFTPQueue, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    if not _openssh(sftp_queue):
        pytest.skip("the OpenSSH data path only")
    assert _t(sftp_queue, ssh="auto").ssh == "openssh"
    monkeypatch.setenv("FSPL_GW_SSH_PASSPHRASE", "x")  # only paramiko reads it
    assert _t(sftp_queue, ssh="auto").ssh == "paramiko"
    monkeypatch.delenv("FSPL_GW_SSH_PASSPHRASE")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on PATH
    assert _t(sftp_queue, ssh="auto").ssh == "paramiko"
    with pytest.raises(ConfigError, match="no ssh command found"):
        _t(sftp_queue, ssh="openssh")
    with pytest.raises(ConfigError, match="ssh"):
        _t(sftp_queue, ssh="putty")
    t = _t(sftp_queue, ssh="openssh", ssh_command=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot run the ssh command") as ei:
        list(t.list())
    assert "\n" not in str(ei.value)


def test_ssh_dies_mid_fetch(sftp_queue: SFTPQueue) -> None:
    """Killing the ssh client mid-transfer: a retryable error, then a clean retry."""
    if not _openssh(sftp_queue):
        pytest.skip("the OpenSSH data path only")
    size = 32 * MiB
    data = _pattern(size, seed=4)
    (sftp_queue.jobs / "fspl-big.fspl").write_bytes(data)
    killed: list[int] = []

    def kill_once(n: int) -> None:
        if n >= 4 * MiB and not killed:
            killed.append(_kill_ssh())

    with _t(sftp_queue, ssh="openssh") as t:
        entry = next(iter(t.list()))
        sink = HashSink(kill_once)
        with pytest.raises(TransientError, match="connection lost"):
            t.fetch("fspl-big.fspl", sink, entry)  # type: ignore[arg-type]
        assert killed == [1] and sink.n < size
        out = HashSink()
        assert POLICY.call(lambda: t.fetch("fspl-big.fspl", out, entry),  # type: ignore[arg-type]
                           "fetch") == size
        assert out.h.hexdigest() == _sha(data)
    assert _ssh_children() == [], "ssh processes left behind"


def test_ssh_dies_mid_upload(sftp_queue: SFTPQueue) -> None:
    if not _openssh(sftp_queue):
        pytest.skip("the OpenSSH data path only")
    size = 32 * MiB
    j = sftp_queue.jobs

    class KillingReader(PatternReader):
        def read(self, n: int = -1) -> bytes:
            if self.pos >= 4 * MiB and self.pos - n < 4 * MiB:
                _kill_ssh()
            return super().read(n)

    with _t(sftp_queue, ssh="openssh") as t:
        with pytest.raises(TransientError):
            t.write_new("fspl-up.fspl", KillingReader(size, seed=6), size)
        assert "fspl-up.fspl" not in os.listdir(j), "a partial file under the final name"
        leftovers = [n for n in os.listdir(j) if n.startswith(TMP_PREFIX)]
        assert POLICY.call(t.cleanup_temporaries, "cleanup") == len(leftovers)
        t.write_new("fspl-up.fspl", PatternReader(size, seed=6), size)
        assert os.listdir(j) == ["fspl-up.fspl"]
        assert _sha((j / "fspl-up.fspl").read_bytes()) == _sha(_pattern(size, seed=6))


def test_link_cut_mid_fetch(sftp_queue: SFTPQueue) -> None:
    """The network (a TCP proxy) cuts the connection mid-transfer: retryable on both data
    paths, and the next call reconnects."""
    from tests.fixtures.tcpproxy import TcpProxy

    s = sftp_queue.sshd
    size = 16 * MiB
    data = _pattern(size, seed=8)
    (sftp_queue.jobs / "fspl-c.fspl").write_bytes(data)
    with TcpProxy(s.port) as proxy:
        t = SFTPTransport(f"{s.user}@127.0.0.1:{proxy.port}{sftp_queue.path}",
                          sftp_queue.options)
        t.hostkeys.entry = f"[{s.host}]:{s.port}"  # the proxy's port is not in known_hosts
        with t:
            entry = next(iter(t.list()))
            proxy.cut_after(2 * MiB)
            sink = HashSink()
            with pytest.raises(TransientError):
                t.fetch("fspl-c.fspl", sink, entry)  # type: ignore[arg-type]
            assert sink.n < size
            out = HashSink()
            assert POLICY.call(lambda: t.fetch("fspl-c.fspl", out, entry),  # type: ignore[arg-type]
                               "fetch") == size
            assert out.h.hexdigest() == _sha(data)


def test_link_cut_mid_batch_of_small_reads(sftp_queue: SFTPQueue) -> None:
    """fetch_small pipelines many small files on one channel: a link cut part-way is a
    TransientError for the whole call (never a half-answer taken for a file), and a
    retry reconnects and takes every file whole."""
    from tests.fixtures.tcpproxy import TcpProxy

    s = sftp_queue.sshd
    files = {f"fspl-{i:03d}.fspl.minisig": os.urandom(300 + i) for i in range(200)}
    for name, data in files.items():
        (sftp_queue.jobs / name).write_bytes(data)
    with TcpProxy(s.port) as proxy:
        t = SFTPTransport(f"{s.user}@127.0.0.1:{proxy.port}{sftp_queue.path}",
                          sftp_queue.options)
        t.hostkeys.entry = f"[{s.host}]:{s.port}"  # the proxy's port is not in known_hosts
        with t:
            entries = sorted(t.list(), key=lambda e: e.name)
            assert len(entries) == len(files)
            proxy.cut_after(30_000)  # in the middle of the answers
            with pytest.raises(TransientError):
                t.fetch_small(entries)
            got = POLICY.call(lambda: t.fetch_small(entries), "fetch_small")
            assert got == files
