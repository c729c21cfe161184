"""Dropbox-specific tests: the real ``dropbox`` SDK against the HTTPS stand-in
(tests/fixtures/dropbox_standin/), with faults injected through its admin endpoint."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from fspl_gateway.core.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.gateway.retry import RetryPolicy
from tests.fixtures.dropbox_server import DropboxRemote
from tests.fixtures.dropbox_standin.hashing import content_hash_bytes

MiB = 1 << 20
BLOCK = 4 * MiB


def _by_definition(data: bytes) -> str:
    """content_hash straight from Dropbox's definition: SHA-256 over the concatenated
    SHA-256 digests of the 4 MiB blocks."""
    digests = b"".join(hashlib.sha256(data[i:i + BLOCK]).digest()
                       for i in range(0, len(data), BLOCK))
    return hashlib.sha256(digests).hexdigest()


def _counts(remote: DropboxRemote) -> dict[str, int]:
    return dict(remote.standin.admin("stats")["counts"])


def _delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _read_all(f: Any) -> bytes:
    parts = []
    while True:
        b = f.read(MiB)
        if not b:
            return b"".join(parts)
        parts.append(b)


# -- content_hash ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 9 * MiB + 3])
def test_content_hash_block_boundaries(size: int) -> None:
    from fspl_gateway.transports.dropbox import ContentHasher, content_hash

    data = os.urandom(size)
    want = _by_definition(data)
    assert content_hash(data) == want
    # fed in odd pieces that straddle the block boundaries
    h = ContentHasher()
    for i in range(0, size, 1_000_003):
        h.update(data[i:i + 1_000_003])
    assert h.hexdigest() == want
    assert h.hexdigest() == want, "hexdigest must not consume the state"
    # the stand-in's independent implementation agrees
    assert content_hash_bytes(data) == want


def test_content_hash_known_values() -> None:
    from fspl_gateway.transports.dropbox import content_hash

    # No blocks: the SHA-256 of the empty string.
    assert content_hash(b"") == \
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # One block: sha256(sha256(data)), which differs from the plain sha256 …
    one = b"fspl" * 1000
    assert content_hash(one) == hashlib.sha256(hashlib.sha256(one).digest()).hexdigest()
    assert content_hash(one) != hashlib.sha256(one).hexdigest()
    # … and exactly 4 MiB is one block, 4 MiB + 1 is two.
    four = b"\x00" * BLOCK
    assert content_hash(four) == hashlib.sha256(hashlib.sha256(four).digest()).hexdigest()
    assert content_hash(four + b"\x00") == hashlib.sha256(
        hashlib.sha256(four).digest() + hashlib.sha256(b"\x00").digest()).hexdigest()


# -- module hygiene -------------------------------------------------------------------
def test_sdk_is_loaded_only_by_the_transport() -> None:
    code = ("import sys, fspl_gateway, fspl_gateway.transports, fspl_gateway.transports.base, "
            "fspl_gateway.core.errors; assert 'dropbox' not in sys.modules, 'sdk loaded'; "
            "from fspl_gateway.transports.base import load; cls = load('dropbox'); "
            "import dropbox; assert hasattr(dropbox, 'Dropbox'), dropbox; "
            "assert cls.__module__ == 'fspl_gateway.transports.dropbox'; print(cls.name)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "dropbox"


def test_bad_location_and_options(dropbox_remote: DropboxRemote) -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    opts = dropbox_remote.options
    for bad in ("queues/x", "", "/a/../b"):
        with pytest.raises(ConfigError):
            DropboxTransport(bad, opts)
    with pytest.raises(ConfigError, match="chunk_size"):
        DropboxTransport("/q", {**opts, "chunk_size": 200 * MiB})
    with pytest.raises(ConfigError, match="ca_bundle"):
        DropboxTransport("/q", {**opts, "ca_bundle": "/nonexistent/ca.pem"})


def test_untrusted_certificate_is_refused(dropbox_remote: DropboxRemote) -> None:
    # Without our CA the stand-in's certificate must not be accepted (verification on).
    from fspl_gateway.transports.dropbox import DropboxTransport

    opts = {k: v for k, v in dropbox_remote.options.items() if k != "ca_bundle"}

    t = DropboxTransport(dropbox_remote.location, opts)
    with pytest.raises(TransportError, match="TLS"):
        list(t.list())


# -- auth -----------------------------------------------------------------------------
def test_missing_credentials_names_the_variables() -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    with pytest.raises(AuthError) as ei:
        DropboxTransport("/queues/x", {})
    msg = str(ei.value)
    for var in ("FSPL_GW_DROPBOX_REFRESH_TOKEN", "FSPL_GW_DROPBOX_APP_KEY",
                "FSPL_GW_DROPBOX_ACCESS_TOKEN"):
        assert var in msg
    with pytest.raises(AuthError, match="FSPL_GW_DROPBOX_APP_KEY"):
        DropboxTransport("/queues/x", {"refresh_token": "r"})


def test_credentials_from_environment(dropbox_remote: DropboxRemote,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    (dropbox_remote.jobs_dir / "fspl-1.fspl").write_bytes(b"env")
    monkeypatch.setenv("FSPL_GW_DROPBOX_ACCESS_TOKEN", dropbox_remote.access_token)
    monkeypatch.setenv("FSPL_GW_DROPBOX_CA_BUNDLE", dropbox_remote.standin.ca)
    t = DropboxTransport(dropbox_remote.location, {})
    assert [e.name for e in t.list()] == ["fspl-1.fspl"]

    s = dropbox_remote.standin
    monkeypatch.delenv("FSPL_GW_DROPBOX_ACCESS_TOKEN")
    monkeypatch.setenv("FSPL_GW_DROPBOX_REFRESH_TOKEN", s.refresh_token)
    monkeypatch.setenv("FSPL_GW_DROPBOX_APP_KEY", s.app_key)
    monkeypatch.setenv("FSPL_GW_DROPBOX_APP_SECRET", s.app_secret)
    before = _counts(dropbox_remote)
    t = DropboxTransport(dropbox_remote.location, {})
    assert [e.name for e in t.list()] == ["fspl-1.fspl"]
    assert _delta(before, _counts(dropbox_remote), "oauth2/token") == 1


def test_expired_access_token_is_a_clear_auth_error(dropbox_remote: DropboxRemote,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    (dropbox_remote.jobs_dir / "fspl-1.fspl").write_bytes(b"keep me")
    t = dropbox_remote.make()
    assert len(list(t.list())) == 1
    dropbox_remote.standin.admin("expire_token", token=dropbox_remote.access_token)
    with pytest.raises(AuthError) as ei:
        list(t.list())
    msg = str(ei.value)
    assert "expired" in msg and "refresh token" in msg and "FSPL_GW_DROPBOX_REFRESH_TOKEN" in msg
    with pytest.raises(AuthError, match="expired"):
        t.write_new("fspl-2.fspl", io.BytesIO(b"new"), 3)
    with pytest.raises(AuthError, match="expired"):
        t.delete("fspl-1.fspl")
    # nothing lost, nothing half-written, no secret in messages or logs
    assert sorted(os.listdir(dropbox_remote.jobs_dir)) == ["fspl-1.fspl"]
    assert dropbox_remote.access_token not in msg
    assert dropbox_remote.access_token not in caplog.text


def test_revoked_access_token(dropbox_remote: DropboxRemote) -> None:
    t = dropbox_remote.make()
    dropbox_remote.standin.admin("revoke_token", token=dropbox_remote.access_token)
    with pytest.raises(AuthError, match="invalid or revoked") as ei:
        list(t.list())
    assert dropbox_remote.access_token not in str(ei.value)


def test_refresh_token_renews_expired_access_token(dropbox_remote: DropboxRemote,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = dropbox_remote.standin
    from fspl_gateway.transports.dropbox import DropboxTransport

    t = DropboxTransport(dropbox_remote.location, dropbox_remote.refresh_options())
    before = _counts(dropbox_remote)
    t.write_new("fspl-1.fspl", io.BytesIO(b"one"), 3)
    mid = _counts(dropbox_remote)
    assert _delta(before, mid, "oauth2/token") == 1, "the SDK gets its first token"
    s.admin("expire_token")  # every access token handed out so far
    t.write_new("fspl-2.fspl", io.BytesIO(b"two"), 3)
    assert sorted(e.name for e in t.list()) == ["fspl-1.fspl", "fspl-2.fspl"]
    after = _counts(dropbox_remote)
    assert _delta(mid, after, "oauth2/token") == 1, "renewed once through oauth2/token"
    assert (dropbox_remote.jobs_dir / "fspl-2.fspl").read_bytes() == b"two"
    for secret in (s.refresh_token, s.app_secret):
        assert secret not in caplog.text


def test_bad_refresh_token(dropbox_remote: DropboxRemote) -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    t = DropboxTransport(dropbox_remote.location,
                         dropbox_remote.refresh_options(refresh_token="not-a-valid-token"))
    with pytest.raises(AuthError, match="refresh token is invalid or has been revoked") as ei:
        list(t.list())
    assert "not-a-valid-token" not in str(ei.value)
    t = DropboxTransport(dropbox_remote.location,
                         dropbox_remote.refresh_options(app_secret="wrong-secret"))
    with pytest.raises(AuthError, match="app key/secret") as ei:
        list(t.list())
    assert "wrong-secret" not in str(ei.value)


# -- listing --------------------------------------------------------------------------
def test_pagination(dropbox_remote: DropboxRemote) -> None:
    n = 300
    for i in range(n):
        (dropbox_remote.jobs_dir / f"fspl-{i:04d}.fspl").write_bytes(b"%d" % i)
    os.mkdir(dropbox_remote.jobs_dir / "a-folder")  # folders are not listed
    dropbox_remote.standin.admin("page_size", size=7)
    before = _counts(dropbox_remote)
    got = list(dropbox_remote.make().list())
    assert sorted(e.name for e in got) == [f"fspl-{i:04d}.fspl" for i in range(n)]
    for e in got:
        data = (dropbox_remote.jobs_dir / e.name).read_bytes()
        assert e.size == len(data) and e.tag == _by_definition(data)
        assert e.mtime is not None and abs(e.mtime - time.time()) < 3600
    pages = _delta(before, _counts(dropbox_remote), "files/list_folder/continue")
    assert pages == (n + 1 + 6) // 7 - 1  # 301 entries (with the folder), 7 a page


def test_list_missing_folder(dropbox_remote: DropboxRemote) -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    t = DropboxTransport(dropbox_remote.location + "-nope", dropbox_remote.options)
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        list(t.list())


# -- uploads --------------------------------------------------------------------------
def test_small_upload_is_one_request(dropbox_remote: DropboxRemote) -> None:
    data = os.urandom(300_000)
    before = _counts(dropbox_remote)
    e = dropbox_remote.make().write_new("fspl-s.fspl", io.BytesIO(data), len(data))
    after = _counts(dropbox_remote)
    assert _delta(before, after, "files/upload") == 1
    assert _delta(before, after, "files/upload_session/start") == 0
    assert e.tag == _by_definition(data) and e.size == len(data)
    assert (dropbox_remote.jobs_dir / "fspl-s.fspl").read_bytes() == data


def test_chunked_upload_round_trip(dropbox_remote: DropboxRemote) -> None:
    data = os.urandom(5 * MiB + 12345)
    t = dropbox_remote.make(chunk_size=MiB)
    before = _counts(dropbox_remote)
    e = t.write_new("fspl-big.fspl", io.BytesIO(data), len(data))
    after = _counts(dropbox_remote)
    assert _delta(before, after, "files/upload_session/start") == 1
    assert _delta(before, after, "files/upload_session/append_v2") == 4
    assert _delta(before, after, "files/upload_session/finish") == 1
    assert _delta(before, after, "files/upload") == 0
    assert e.size == len(data) and e.tag == _by_definition(data)
    assert (dropbox_remote.jobs_dir / "fspl-big.fspl").read_bytes() == data
    assert os.listdir(dropbox_remote.jobs_dir) == ["fspl-big.fspl"]
    buf = io.BytesIO()
    assert t.fetch("fspl-big.fspl", buf) == len(data)
    assert buf.getvalue() == data
    with t.open("fspl-big.fspl") as f:
        assert _read_all(f) == data
    # exactly chunk_size goes in one request; one byte more needs a session
    for size, sessions in ((MiB, 0), (MiB + 1, 1)):
        before = _counts(dropbox_remote)
        t.write_new(f"fspl-{size}.fspl", io.BytesIO(data[:size]), size)
        after = _counts(dropbox_remote)
        assert _delta(before, after, "files/upload_session/finish") == sessions
        assert (dropbox_remote.jobs_dir / f"fspl-{size}.fspl").read_bytes() == data[:size]


@pytest.mark.parametrize("chunked", [False, True], ids=["upload", "session"])
def test_conflict_on_existing_name(dropbox_remote: DropboxRemote, chunked: bool) -> None:
    original = b"the original job" * 100
    (dropbox_remote.jobs_dir / "fspl-c.fspl").write_bytes(original)
    t = dropbox_remote.make(chunk_size=MiB)
    # the stand-in is shared by the session: count only the sessions this test opens
    sessions_before = dropbox_remote.standin.admin("stats")["open_sessions"]
    intruder = os.urandom(3 * MiB if chunked else 1000)
    with pytest.raises(RemoteExistsError, match="already exists") as ei:
        t.write_new("fspl-c.fspl", io.BytesIO(intruder), len(intruder))
    assert type(ei.value) is RemoteExistsError
    assert (dropbox_remote.jobs_dir / "fspl-c.fspl").read_bytes() == original
    assert os.listdir(dropbox_remote.jobs_dir) == ["fspl-c.fspl"]
    assert dropbox_remote.standin.admin("stats")["open_sessions"] == sessions_before


@pytest.mark.parametrize("size", [10, 3 * MiB])
def test_source_size_mismatch_writes_nothing(dropbox_remote: DropboxRemote, size: int) -> None:
    t = dropbox_remote.make(chunk_size=MiB)
    data = os.urandom(size)
    with pytest.raises(TransportError, match="more than the announced"):
        t.write_new("fspl-long.fspl", io.BytesIO(data + b"extra"), size)
    with pytest.raises(TransportError, match="source ended"):
        t.write_new("fspl-short.fspl", io.BytesIO(data[:-1]), size)
    assert os.listdir(dropbox_remote.jobs_dir) == []


@pytest.mark.parametrize("size", [1000, 3 * MiB])
def test_stored_bytes_differ_integrity_error_and_removed(dropbox_remote: DropboxRemote,
                                                         size: int) -> None:
    t = dropbox_remote.make(chunk_size=MiB)
    dropbox_remote.standin.admin("corrupt_next_upload")
    data = os.urandom(size)
    with pytest.raises(IntegrityError, match="removed"):
        t.write_new("fspl-rot.fspl", io.BytesIO(data), size)
    assert os.listdir(dropbox_remote.jobs_dir) == [], "the bad copy must not stay"
    t.write_new("fspl-rot.fspl", io.BytesIO(data), size)
    assert (dropbox_remote.jobs_dir / "fspl-rot.fspl").read_bytes() == data


def test_unicode_names(dropbox_remote: DropboxRemote) -> None:
    t = dropbox_remote.make(chunk_size=MiB)
    names = {"fspl-日本 é.fspl": os.urandom(10),
             "fspl-😀.fspl": os.urandom(2 * MiB)}
    for name, data in names.items():
        t.write_new(name, io.BytesIO(data), len(data))
    assert sorted(os.listdir(dropbox_remote.jobs_dir)) == sorted(names)
    assert sorted(e.name for e in t.list()) == sorted(names)
    for name, data in names.items():
        buf = io.BytesIO()
        t.fetch(name, buf)
        assert buf.getvalue() == data
        t.delete(name)
    assert os.listdir(dropbox_remote.jobs_dir) == []


# -- rate limits, 5xx, lost responses: classified here, retried by the one policy -------
class _Requests:
    """Requests the stand-in saw per route since this object was made (its counters
    are for the whole session)."""

    def __init__(self, remote: DropboxRemote) -> None:
        self.remote = remote
        self.base = _counts(remote)

    def __call__(self, route: str) -> int:
        return _delta(self.base, _counts(self.remote), route)


FAST = RetryPolicy(attempts=5, backoff=0.01, max_delay=0.05)


def test_rate_limit_is_transient_with_retry_after_and_not_retried_here(
        dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    requests = _Requests(dropbox_remote)
    s.admin("rate_limit", count=1, retry_after=7)
    with pytest.raises(TransientError, match="rate-limit") as ei:
        list(t.list())
    assert type(ei.value) is TransientError and ei.value.retry_after == 7
    assert requests("files/list_folder") == 1, "the transport never loops"
    assert list(t.list()) == []


def test_rate_limit_retried_by_the_policy_succeeds_on_attempt_3(
        dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make(chunk_size=MiB)
    requests = _Requests(dropbox_remote)
    s.admin("rate_limit", count=2, retry_after=0)
    assert FAST.call(lambda: list(t.list()), "list") == []
    assert requests("files/list_folder") == 3
    # in the middle of an upload session: the policy starts the upload again
    data = os.urandom(3 * MiB)
    s.admin("rate_limit", count=2, retry_after=0, route="append_v2")

    def write() -> Any:
        return t.write_new("fspl-r.fspl", io.BytesIO(data), len(data))

    FAST.call(write, "write")
    assert (dropbox_remote.jobs_dir / "fspl-r.fspl").read_bytes() == data
    assert s.admin("stats")["faults_left"]["rate_limit"] == 0


def test_the_policy_honours_retry_after(dropbox_remote: DropboxRemote) -> None:
    t = dropbox_remote.make()
    dropbox_remote.standin.admin("rate_limit", count=1, retry_after=1)
    start = time.monotonic()
    assert FAST.call(lambda: list(t.list()), "list") == []
    assert 1.0 <= time.monotonic() - start < 4.5


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
def test_budgets_do_not_multiply(dropbox_remote: DropboxRemote, fault: str) -> None:
    """A permanently failing call: the stand-in sees exactly the policy's attempts (no
    loop in the transport, no SDK retries underneath)."""
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    requests = _Requests(dropbox_remote)
    s.admin(fault, count=100, **({"retry_after": 0} if fault == "rate_limit" else {}))
    with pytest.raises(TransientError):
        RetryPolicy(attempts=3, backoff=0.01).call(lambda: list(t.list()), "list")
    assert requests("files/list_folder") == 3
    with pytest.raises(TransientError):
        RetryPolicy(attempts=4, backoff=0.01).call(
            lambda: t.write_new("fspl-x.fspl", io.BytesIO(b"x"), 1), "write")
    assert requests("files/upload") == 4
    assert os.listdir(dropbox_remote.jobs_dir) == []


def test_sync_retries_per_operation(dropbox_remote: DropboxRemote, tmp_path: Any) -> None:
    """Through ``fspl-gw sync --retries 3``: two 429s with Retry-After, then the listing
    succeeds on attempt 3 after waiting as asked; a permanently failing listing is tried
    exactly three times (exit 1)."""
    from fspl_gateway.core import queue as q
    from tests.unit.test_sync import job_set

    s = dropbox_remote.standin
    qdir = tmp_path / "q"
    q.queue_init(str(qdir))
    jobs = job_set(2)
    for name, data in jobs.items():
        (dropbox_remote.jobs_dir / name).write_bytes(data)

    def sync() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fspl_gateway", "sync", "-t", "dropbox", "-r",
             dropbox_remote.location, "-q", str(qdir), "--retries", "3",
             "-o", f"ca_bundle={s.ca}"],
            env={**os.environ, "FSPL_GW_DROPBOX_ACCESS_TOKEN": dropbox_remote.access_token},
            capture_output=True, text=True, timeout=120)

    requests = _Requests(dropbox_remote)
    s.admin("rate_limit", count=2, retry_after=1, route="list_folder")
    t0 = time.monotonic()
    r = sync()
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 2.0, "Retry-After was honoured twice"
    assert requests("files/list_folder") == 3
    assert sorted(os.listdir(qdir / "jobs")) == sorted(jobs)
    requests = _Requests(dropbox_remote)
    s.admin("server_error", count=100, route="list_folder")
    r = sync()
    assert r.returncode == 1 and "server error 500" in r.stderr, r.stderr
    assert requests("files/list_folder") == 3


def test_server_errors_are_transient(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    s.admin("server_error", count=1)
    with pytest.raises(TransientError, match="server error 500"):
        t.write_new("fspl-5.fspl", io.BytesIO(b"five"), 4)
    assert os.listdir(dropbox_remote.jobs_dir) == []
    t.write_new("fspl-5.fspl", io.BytesIO(b"five"), 4)
    s.admin("server_error", count=2)
    FAST.call(lambda: t.delete("fspl-5.fspl"), "delete")
    assert not (dropbox_remote.jobs_dir / "fspl-5.fspl").exists()


def test_lost_responses_are_transient(dropbox_remote: DropboxRemote) -> None:
    """The call happened but its answer was lost: a TransientError (the caller decides
    what a conflict or a "not found" on the retry means)."""
    s = dropbox_remote.standin
    t = dropbox_remote.make(chunk_size=MiB)
    s.admin("drop_response", count=1, route="files/upload")
    with pytest.raises(TransientError):
        t.write_new("fspl-1.fspl", io.BytesIO(b"one"), 3)
    assert (dropbox_remote.jobs_dir / "fspl-1.fspl").read_bytes() == b"one"
    with pytest.raises(RemoteExistsError):
        t.write_new("fspl-1.fspl", io.BytesIO(b"one"), 3)
    s.admin("drop_response", count=1, route="delete")
    with pytest.raises(TransientError):
        t.delete("fspl-1.fspl")
    with pytest.raises(RemoteNotFoundError):
        t.delete("fspl-1.fspl")


@pytest.mark.parametrize("route,size", [("files/upload", 3), ("finish", 3 * MiB + 5),
                                        ("append_v2", 3 * MiB + 5)])
def test_push_recognises_its_own_lost_upload(dropbox_remote: DropboxRemote, tmp_path: Any,
                                             route: str, size: int) -> None:
    """An upload whose answer was lost is retried by push; the name then exists with our
    bytes: pushed, not a conflict."""
    from fspl_gateway.core import queue as q
    from fspl_gateway.gateway.push import PushOptions, push
    from tests.unit.test_sync import job_set

    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    jobs = job_set(1, size=size)
    for name, data in jobs.items():
        (outbox / "jobs" / name).write_bytes(data)
    s = dropbox_remote.standin
    requests = _Requests(dropbox_remote)
    s.admin("drop_response", count=1, route=route)
    res = push(dropbox_remote.make(chunk_size=MiB), outbox,
               PushOptions(retry=FAST, progress=False))
    assert (res.pushed, res.conflicts, res.failed, res.exit_code) == (1, 0, 0, 0)
    assert requests("dropped_responses") == 1
    for name, data in jobs.items():
        assert (dropbox_remote.jobs_dir / name).read_bytes() == data
    assert os.listdir(outbox / "jobs") == []


def test_corrupted_download_is_an_integrity_error(dropbox_remote: DropboxRemote) -> None:
    data = os.urandom(2 * MiB + 3)
    (dropbox_remote.jobs_dir / "fspl-x.fspl").write_bytes(data)
    t = dropbox_remote.make()
    dropbox_remote.standin.admin("corrupt_next_download")
    with pytest.raises(IntegrityError, match="content_hash"):
        t.fetch("fspl-x.fspl", io.BytesIO())
    dropbox_remote.standin.admin("corrupt_next_download")
    with pytest.raises(IntegrityError), t.open("fspl-x.fspl") as f:
        _read_all(f)
    buf = io.BytesIO()
    assert t.fetch("fspl-x.fspl", buf) == len(data) and buf.getvalue() == data


def test_download_dying_mid_stream(dropbox_remote: DropboxRemote) -> None:
    data = os.urandom(3 * MiB)
    (dropbox_remote.jobs_dir / "fspl-d.fspl").write_bytes(data)
    t = dropbox_remote.make()
    dropbox_remote.standin.admin("die_next_download")
    with pytest.raises(TransientError, match="broke off|ended after") as ei:
        t.fetch("fspl-d.fspl", io.BytesIO())
    assert type(ei.value) is TransientError
    assert dropbox_remote.standin.admin("stats")["counts"]["died_downloads"] >= 1
    dropbox_remote.standin.admin("die_next_download")
    with pytest.raises(TransientError), t.open("fspl-d.fspl") as f:
        _read_all(f)
    buf = io.BytesIO()
    assert t.fetch("fspl-d.fspl", buf) == len(data) and buf.getvalue() == data


# -- longpoll (wait_for_change) -------------------------------------------------------
def _longpolls(remote: DropboxRemote) -> int:
    return _counts(remote).get("files/list_folder/longpoll", 0)


def _wait_in_thread(t: Any, timeout: float) -> tuple[Any, list[Any]]:
    import threading

    out: list[Any] = []

    def run() -> None:
        try:
            out.append(t.wait_for_change(timeout))
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.append(e)
        out.append(time.monotonic())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def test_longpoll_sees_another_clients_upload_and_delete(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    other = dropbox_remote.make()
    start = time.monotonic()
    assert t.wait_for_change(60) is True, "the first call only takes the cursor"
    assert time.monotonic() - start < 2 and _longpolls(dropbox_remote) == 0
    latencies = []
    for action in ("upload", "delete"):
        before = _longpolls(dropbox_remote)
        th, out = _wait_in_thread(t, 60)
        time.sleep(0.5)
        assert not out, f"longpoll returned before the {action}: {out}"
        if action == "upload":
            other.write_new("fspl-lp.fspl", io.BytesIO(b"job"), 3)
        else:
            other.delete("fspl-lp.fspl")
        done = time.monotonic()
        th.join(10)
        assert out and out[0] is True, out
        latencies.append(out[1] - done)
        assert _longpolls(dropbox_remote) == before + 1
    print(f"longpoll latency after upload/delete: "
          f"{', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")
    assert max(latencies) < 2.0
    # The cursor was renewed after each change: nothing new now → False at the cap.
    s.admin("longpoll_cap", seconds=0.5)
    assert t.wait_for_change(60) is False


def test_longpoll_times_out_without_changes(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    (dropbox_remote.jobs_dir / "fspl-old.fspl").write_bytes(b"old")
    t = dropbox_remote.make(longpoll_timeout=30)
    assert t.wait_for_change(1) is True
    s.admin("longpoll_cap", seconds=0.5)
    for timeout in (1, 10**9, float("inf")):  # rounded into [30, longpoll_timeout]
        start = time.monotonic()
        assert t.wait_for_change(timeout) is False
        assert 0.45 <= time.monotonic() - start < 5
    # a file written straight into the folder (not through the API) counts too
    th, out = _wait_in_thread(t, 60)
    (dropbox_remote.jobs_dir / "fspl-new.fspl").write_bytes(b"new")
    th.join(5)
    assert out and out[0] is True
    with pytest.raises(ConfigError, match="longpoll_timeout"):
        dropbox_remote.make(longpoll_timeout=10)


def test_longpoll_cursor_reset(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    assert t.wait_for_change(30) is True
    s.admin("longpoll_cap", seconds=0.3)
    assert t.wait_for_change(30) is False
    s.admin("reset_cursors")
    start = time.monotonic()
    assert t.wait_for_change(30) is True, "a reset cursor may have missed changes"
    assert time.monotonic() - start < 2
    assert t.wait_for_change(30) is False, "the new cursor is valid"


def test_longpoll_backoff_is_honoured(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    assert t.wait_for_change(30) is True
    s.admin("longpoll_cap", seconds=0.2)
    s.admin("longpoll_backoff", seconds=2)
    assert t.wait_for_change(30) is False
    first = time.monotonic()
    n = _longpolls(dropbox_remote)
    assert t.wait_for_change(0.3) is False, "still backing off"
    assert _longpolls(dropbox_remote) == n, "no request during the backoff"
    s.admin("longpoll_backoff", seconds=None)
    assert t.wait_for_change(30) is False
    assert time.monotonic() - first >= 1.9, "the next longpoll waited for the backoff"
    assert _longpolls(dropbox_remote) == n + 1


def test_longpoll_errors(dropbox_remote: DropboxRemote) -> None:
    s = dropbox_remote.standin
    t = dropbox_remote.make()
    assert t.wait_for_change(30) is True
    s.admin("server_error", count=5, route="longpoll")
    with pytest.raises(TransientError, match="longpoll: Dropbox server error 500"):
        t.wait_for_change(30)
    s.admin("reset")
    gone = DropboxRemote(s, dropbox_remote.location + "-missing", dropbox_remote.access_token,
                         dropbox_remote.options)
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        gone.make().wait_for_change(30)
    s.admin("revoke_token", token=dropbox_remote.access_token)
    with pytest.raises(AuthError):
        dropbox_remote.make().wait_for_change(30)
