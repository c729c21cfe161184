"""S3-specific tests of the S3 transport, all against a real S3 server over HTTP
(moto's server mode in a subprocess, see tests/fixtures/s3server.py)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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
from tests.fixtures.s3rver import S3rver
from tests.fixtures.s3server import S3Bucket, S3Server, empty_bucket, seed_objects
from tests.fixtures.tcpproxy import TcpProxy
from tests.helpers import PatternReader, peak_rss_during

s3mod = pytest.importorskip("fspl_gateway.transports.s3")
S3Transport = s3mod.S3Transport
MIB = 1 << 20


def _data(size: int, seed: int = 0) -> bytes:
    r = PatternReader(size, seed)
    return b"".join(iter(lambda: r.read(MIB), b""))


def _uploads(b: S3Bucket) -> list[dict[str, Any]]:
    return list(b.client.list_multipart_uploads(Bucket=b.name).get("Uploads", []) or [])


def _get(b: S3Bucket, key: str) -> bytes:
    return bytes(b.client.get_object(Bucket=b.name, Key=key)["Body"].read())


@pytest.fixture
def proxy(s3_bucket: S3Bucket) -> Iterator[TcpProxy]:
    port = s3_bucket.server.port
    if port is None:
        host_port = s3_bucket.server.endpoint.rsplit(":", 1)[-1].rstrip("/")
        port = int(host_port)
    with TcpProxy(port) as p:
        yield p


# -- location and options -----------------------------------------------------------

@pytest.mark.parametrize("location,bucket,prefix,jobs", [
    ("s3://bkt/a/b", "bkt", "a/b", "a/b/jobs/"),
    ("bkt/a/b/", "bkt", "a/b", "a/b/jobs/"),
    ("bkt", "bkt", "", "jobs/"),
    ("s3://bkt", "bkt", "", "jobs/"),
    ("s3://bkt/", "bkt", "", "jobs/"),
    ("S3://my.bucket-1/q", "my.bucket-1", "q", "q/jobs/"),
])
def test_location_parsing(location: str, bucket: str, prefix: str, jobs: str) -> None:
    assert s3mod.parse_location(location) == (bucket, prefix)
    t = S3Transport(location, {"endpoint_url": "http://127.0.0.1:9", "region": "us-east-1"})
    assert (t.bucket, t.prefix, t.jobs_prefix) == (bucket, prefix, jobs)


@pytest.mark.parametrize("location", [
    "", "s3://", "s3:///x", "http://bkt/x", "bkt//x", "bkt/a/../x", "bkt/./x", "b", "bkt/a\nb",
])
def test_bad_location(location: str) -> None:
    with pytest.raises(ConfigError, match="s3 location"):
        S3Transport(location, {"endpoint_url": "http://127.0.0.1:9"})


def test_option_parsing() -> None:
    parse = s3mod.OPTIONS.parse
    o = parse({"path_style": "true", "multipart_threshold": "64MiB",
               "multipart_chunksize": "67108864", "max_attempts": "2",
               "read_timeout": "1.5", "conditional_writes": "false",
               "region": "eu-west-3", "profile": ""})
    assert o["path_style"] is True and o["conditional_writes"] is False
    assert o["multipart_threshold"] == 64 * MIB and o["multipart_chunksize"] == 64 * MIB
    assert o["max_attempts"] == 2 and o["read_timeout"] == 1.5
    assert o["region"] == "eu-west-3" and o["profile"] is None
    assert parse({"path_style": False})["path_style"] is False
    assert parse({})["multipart_threshold"] == 64 * MIB
    assert parse({})["multipart_chunksize"] == 16 * MIB
    assert parse({"multipart_threshold": "5M"})["multipart_threshold"] == 5 * MIB
    assert parse({"multipart_threshold": "5MB"})["multipart_threshold"] == 5_000_000
    assert parse({"multipart_threshold": "1 GiB"})["multipart_threshold"] == 1 << 30
    t = S3Transport("bkt", {"endpoint_url": "http://127.0.0.1:9", "path_style": "yes",
                            "region": "eu-west-3", "max_attempts": "4"})
    cfg = t._client.meta.config
    assert cfg.s3["addressing_style"] == "path"
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 4}
    assert t._client.meta.region_name == "eu-west-3"


@pytest.mark.parametrize("options,match", [
    ({"path_style": "maybe"}, "path_style"),
    ({"multipart_threshold": "lots"}, "multipart_threshold"),
    ({"multipart_chunksize": "1MiB"}, "of at least 5MiB"),
    ({"max_attempts": "0"}, "max_attempts"),
    ({"bucket_name": "x"}, "unknown s3 option"),
    ({"endpoint_url": "ftp://user:secret@host"}, "endpoint_url"),
])
def test_bad_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as ei:
        S3Transport("bkt", options)
    assert "secret" not in str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_profile(s3_env: S3Server) -> None:
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        S3Transport("bkt", {"profile": "nope"})


def test_profile_and_env_endpoint(s3_bucket: S3Bucket, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from a profile, endpoint from AWS_ENDPOINT_URL: boto3's own chain."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[fspl]\naws_access_key_id = {s3_bucket.server.access_key}\n"
                     f"aws_secret_access_key = {s3_bucket.server.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.server.endpoint)
    with S3Transport(s3_bucket.name, {"profile": "fspl", "path_style": "true"}) as t:
        t.write_new("fspl-1.fspl", io.BytesIO(b"x"), 1)
        assert [e.name for e in t.list()] == ["fspl-1.fspl"]
    # empty prefix: jobs/ at the bucket root
    assert _get(s3_bucket, "jobs/fspl-1.fspl") == b"x"


def test_describe_has_no_secrets() -> None:
    t = S3Transport("s3://bkt/q", {"endpoint_url": "http://me:pw@127.0.0.1:9"})
    assert t.describe() == "s3://bkt/q at http://127.0.0.1:9"


# -- list ----------------------------------------------------------------------------

def test_list_pagination_10000(s3_bucket: S3Bucket) -> None:
    n = 10_000
    prefix = "q/jobs/"
    keys = [f"{prefix}fspl-{i:05d}.fspl" for i in range(n)]
    client = s3_bucket.client
    t0 = time.monotonic()
    seed_objects(s3_bucket.server, s3_bucket.name, f"{prefix}fspl-", n)
    # deeper "subdirectories", a directory marker and look-alike prefixes must not show
    for extra in ("q/jobs/sub/fspl-1.fspl", "q/jobs/", "q/jobsX/fspl-1.fspl", "q/fspl-2.fspl",
                  "jobs/fspl-3.fspl"):
        client.put_object(Bucket=s3_bucket.name, Key=extra, Body=b"zz")
    created = time.monotonic() - t0

    pages = []
    t = S3Transport(f"s3://{s3_bucket.name}/q", s3_bucket.options)
    t._client.meta.events.register("after-call.s3.ListObjectsV2",
                                   lambda parsed, **kw: pages.append(len(parsed.get("Contents", []))))
    t0 = time.monotonic()
    entries = list(t.list())
    listed = time.monotonic() - t0
    print(f"created {n} objects in {created:.1f}s, listed in {listed:.1f}s, {len(pages)} pages")
    assert sorted(e.name for e in entries) == [k[len(prefix):] for k in keys]
    assert len(pages) >= n // 1000
    e0 = next(e for e in entries if e.name == "fspl-00042.fspl")
    assert e0.size == 10 and e0.tag == hashlib.md5(b"00042.fspl").hexdigest()
    assert e0.mtime is not None and abs(e0.mtime - time.time()) < 3600


def test_list_missing_bucket(s3_env: S3Server) -> None:
    t = S3Transport("s3://fspl-no-such-bucket/q", {"endpoint_url": s3_env.endpoint})
    with pytest.raises(RemoteNotFoundError, match="NoSuchBucket"):
        list(t.list())


# -- write, fetch, integrity ---------------------------------------------------------

def test_roundtrip_single_and_checksum_stored(s3_bucket: S3Bucket) -> None:
    t = S3Transport(f"{s3_bucket.name}/a/b", s3_bucket.options)
    data = _data(300_000, 1)
    e = t.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
    assert e.size == len(data) and e.tag == hashlib.md5(data).hexdigest()
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="a/b/jobs/fspl-1.fspl",
                                        ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    [listed] = list(t.list())
    assert listed.tag == e.tag
    out = io.BytesIO()
    assert t.fetch("fspl-1.fspl", out, listed) == len(data)
    assert out.getvalue() == data
    with t.open("fspl-1.fspl") as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    t.delete("fspl-1.fspl")
    assert list(t.list()) == []
    t.delete("fspl-1.fspl")  # S3 deletes are idempotent
    # empty files, from a seekable and from a non-seekable source
    t.write_new("fspl-2.fspl", io.BytesIO(b""), 0)
    t.write_new("fspl-3.fspl", _RacingReader(b"", 1, lambda: None), 0)  # type: ignore[arg-type]
    assert sorted((e.name, e.size) for e in t.list()) == [("fspl-2.fspl", 0), ("fspl-3.fspl", 0)]
    out = io.BytesIO()
    assert t.fetch("fspl-3.fspl", out) == 0 and out.getvalue() == b""
    for n in ("fspl-2.fspl", "fspl-3.fspl"):
        t.delete(n)
    with pytest.raises(RemoteNotFoundError, match="NoSuchKey"):
        t.fetch("fspl-1.fspl", io.BytesIO())
    with pytest.raises(RemoteNotFoundError):
        t.open("fspl-1.fspl")


def test_unsafe_names_refused(s3_bucket: S3Bucket) -> None:
    t = S3Transport(s3_bucket.name, s3_bucket.options)
    for bad in ("../x", "a/b", "", "..", "x\n"):
        with pytest.raises(TransportError, match="unsafe"):
            t.write_new(bad, io.BytesIO(b"x"), 1)
        with pytest.raises(TransportError, match="unsafe"):
            t.fetch(bad, io.BytesIO())
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0


def test_stored_checksum_mismatch_detected(s3_bucket: S3Bucket) -> None:
    """An object whose stored SHA-256 does not match its bytes (moto keeps what the
    writer declared): fetch must refuse it."""
    if not s3_bucket.server.is_moto:
        pytest.skip("a real S3 store refuses to store a wrong checksum")
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    good, bad = _data(200_000, 2), _data(200_000, 3)
    wrong = base64.b64encode(hashlib.sha256(good).digest()).decode()
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-1.fspl", Body=bad,
                                ChecksumAlgorithm="SHA256", ChecksumSHA256=wrong)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-2.fspl", Body=good,
                                ChecksumAlgorithm="SHA256", ChecksumSHA256=wrong)
    with pytest.raises(IntegrityError, match="fspl-1.fspl"):
        t.fetch("fspl-1.fspl", io.BytesIO())
    out = io.BytesIO()
    t.fetch("fspl-2.fspl", out)
    assert out.getvalue() == good


def _via(t: S3Transport, b: S3Bucket, path: str) -> S3Transport:
    """Make ``t``'s next GETs go the way ``path`` says: ``"lean"`` (warmed up by one GET
    through the full client, which teaches the lean path) or ``"full"`` (``t`` was made
    with ``lean_get=false``)."""
    if path == "lean":
        b.client.put_object(Bucket=b.name, Key=t.jobs_prefix + "fspl-0.fspl", Body=b"warm")
        t.fetch("fspl-0.fspl", io.BytesIO())
        assert t._lean, "the lean GET path was not set up"
    else:
        assert t._lean is False
    return t


def _path_opts(opts: dict[str, Any], path: str) -> dict[str, Any]:
    return {**opts, "lean_get": "false"} if path == "full" else opts


@pytest.mark.parametrize("path", ["full", "lean"])
@pytest.mark.parametrize("stored", ["etag-md5", "crc32", "sha256"])
def test_corruption_in_transit_detected(s3_bucket: S3Bucket, proxy: TcpProxy, stored: str,
                                        path: str) -> None:
    """One byte flipped on the wire (by the proxy) in the body of the response, on both
    GET paths (the lean one and boto3's full call)."""
    data = _data(1 * MIB, 4)
    key = "q/jobs/fspl-1.fspl"
    if stored == "etag-md5":  # no checksum stored: only the ETag (MD5) can tell
        plain = s3_bucket.server.client(request_checksum_calculation="when_required")
        plain.put_object(Bucket=s3_bucket.name, Key=key, Body=data)
        assert "ChecksumCRC32" not in s3_bucket.client.head_object(
            Bucket=s3_bucket.name, Key=key, ChecksumMode="ENABLED")
    elif stored == "crc32":  # botocore's default for PutObject
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=data)
    else:
        t0 = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
        t0.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
    opts = {**s3_bucket.options, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    t = _via(S3Transport(f"{s3_bucket.name}/q", _path_opts(opts, path)), s3_bucket, path)
    proxy.corrupt_at(600_000)  # well past the response headers
    with pytest.raises(IntegrityError, match="mismatch|did not match"):
        t.fetch("fspl-1.fspl", io.BytesIO())
    assert proxy._corrupt_at is None  # the byte really was flipped
    out = io.BytesIO()
    t.fetch("fspl-1.fspl", out)
    assert out.getvalue() == data


# -- no-clobber --------------------------------------------------------------------------

def test_noclobber_single(s3_bucket: S3Bucket) -> None:
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    t.write_new("fspl-1.fspl", io.BytesIO(b"first"), 5)
    with pytest.raises(RemoteExistsError, match="already exists"):
        t.write_new("fspl-1.fspl", io.BytesIO(b"second"), 6)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-2.fspl", Body=b"theirs")
    with pytest.raises(RemoteExistsError):
        t.write_new("fspl-2.fspl", io.BytesIO(b"mine"), 4)
    assert _get(s3_bucket, "q/jobs/fspl-1.fspl") == b"first"
    assert _get(s3_bucket, "q/jobs/fspl-2.fspl") == b"theirs"


def _mp_opts(b: S3Bucket) -> dict[str, Any]:
    return {**b.options, "multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}


class _RacingReader(io.RawIOBase):
    """A source that, while the transport uploads its last part, lets another writer
    create the same key: only the conditional CompleteMultipartUpload can notice."""

    def __init__(self, data: bytes, at: int, race: Any) -> None:
        self.src = io.BytesIO(data)
        self.at = at
        self.race = race
        self.raced = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if not self.raced and self.src.tell() >= self.at:
            self.raced = True
            self.race()
        return self.src.read(n)


def test_noclobber_multipart(s3_bucket: S3Bucket) -> None:
    t = S3Transport(f"{s3_bucket.name}/q", _mp_opts(s3_bucket))
    data = _data(12 * MIB, 5)
    e = t.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
    assert e.tag and e.tag.endswith("-3")  # 3 parts of 5, 5, 2 MiB
    out = io.BytesIO()
    t.fetch("fspl-1.fspl", out)
    assert out.getvalue() == data
    with pytest.raises(RemoteExistsError):
        t.write_new("fspl-1.fspl", io.BytesIO(_data(12 * MIB, 6)), 12 * MIB)
    assert _get(s3_bucket, "q/jobs/fspl-1.fspl") == data

    # a writer that appears after the upload started: the conditional complete refuses
    def race() -> None:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-2.fspl", Body=b"theirs")

    src = _RacingReader(_data(12 * MIB, 7), 10 * MIB, race)
    with pytest.raises(RemoteExistsError, match="already exists"):
        t.write_new("fspl-2.fspl", src, 12 * MIB)  # type: ignore[arg-type]
    assert src.raced
    assert _get(s3_bucket, "q/jobs/fspl-2.fspl") == b"theirs"
    assert _uploads(s3_bucket) == []


def test_multipart_abort_leaves_no_parts(s3_bucket: S3Bucket) -> None:
    t = S3Transport(f"{s3_bucket.name}/q", _mp_opts(s3_bucket))

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self.pos >= 7 * MIB:
                raise OSError(5, "Input/output error")
            n = min(n if n > 0 else MIB, 7 * MIB - self.pos)
            self.pos += n
            return b"x" * n

    with pytest.raises(OSError, match="Input/output"):
        t.write_new("fspl-1.fspl", Failing(), 12 * MIB)  # type: ignore[arg-type]
    assert _uploads(s3_bucket) == []
    # a source shorter than announced
    with pytest.raises(TransportError, match="ended early"):
        t.write_new("fspl-2.fspl", io.BytesIO(b"y" * (7 * MIB)), 12 * MIB)
    assert _uploads(s3_bucket) == []
    with pytest.raises(TransportError, match="ended early"):
        t.write_new("fspl-3.fspl", io.BytesIO(b"y" * 100), 4 * MIB)
    assert list(t.list()) == []


def test_write_from_file_low_memory(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Single PutObject from a file and fetch both stream: no whole-object buffers."""
    size = 48 * MIB
    path = tmp_path / "job"
    with open(path, "wb") as f:
        r = PatternReader(size, 8)
        while b := r.read(MIB):
            f.write(b)
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    with open(path, "rb") as f:
        _, grew_put = peak_rss_during(lambda: t.write_new("fspl-1.fspl", f, size))
    with open(tmp_path / "out", "wb") as out:
        n, grew_get = peak_rss_during(lambda: t.fetch("fspl-1.fspl", out))
    print(f"peak RSS growth: put {grew_put >> 20} MiB, fetch {grew_get >> 20} MiB")
    assert n == size
    assert (tmp_path / "out").read_bytes() == path.read_bytes()
    assert grew_put < 16 * MIB and grew_get < 16 * MIB


# -- the lean GET path -------------------------------------------------------------------

def _count_full_gets(t: S3Transport) -> list[int]:
    calls = [0]

    def count(**_: Any) -> None:
        calls[0] += 1

    t._client.meta.events.register("before-call.s3.GetObject", count)
    return calls


def test_lean_get_after_the_first(s3_bucket: S3Bucket) -> None:
    """Only the first fetch goes through boto3's full GetObject; the rest take the lean
    path and give the same bytes, still verified (ETag) and bounded by the listing."""
    for i in range(4):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"q/jobs/fspl-{i}.fspl",
                                    Body=_data(3000 + i, i))
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    calls = _count_full_gets(t)
    listed = {e.name: e for e in t.list()}
    for i in range(4):
        out = io.BytesIO()
        assert t.fetch(f"fspl-{i}.fspl", out, listed[f"fspl-{i}.fspl"]) == 3000 + i
        assert out.getvalue() == _data(3000 + i, i)
    assert calls[0] == 1 and t._lean
    # more than listed: refused on the lean path too
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-1.fspl",
                                Body=_data(5000, 1))
    with pytest.raises(IntegrityError, match="fspl-1.fspl"):
        t.fetch("fspl-1.fspl", io.BytesIO(), listed["fspl-1.fspl"])
    # a missing object: the full call reports it as before
    with pytest.raises(RemoteNotFoundError, match="fspl-9.fspl"):
        t.fetch("fspl-9.fspl", io.BytesIO())
    assert calls[0] == 2 and t._lean
    # the pool grows: learnt again on the new client
    t.set_concurrency(32)
    calls = _count_full_gets(t)
    for i in (0, 2):
        t.fetch(f"fspl-{i}.fspl", io.BytesIO())
    assert calls[0] == 1 and t._lean


def test_lean_get_off(s3_bucket: S3Bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-1.fspl", Body=b"x")
    t = S3Transport(f"{s3_bucket.name}/q", {**s3_bucket.options, "lean_get": "false"})
    calls = _count_full_gets(t)
    for _ in range(3):
        t.fetch("fspl-1.fspl", io.BytesIO())
    assert calls[0] == 3 and t._lean is False


def test_lean_get_refused(s3_auth_server: S3Server, s3_env: S3Server,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET the store refuses on the lean path is asked again through the full call,
    which maps the answer: AuthError with wrong credentials; and with right ones (here
    only the lean path's are wrong) the bytes arrive."""
    if not s3_auth_server.is_moto:
        pytest.skip("needs the moto server with IAM")
    client = s3_auth_server.client()
    bucket = f"lean-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="q/jobs/fspl-1.fspl", Body=b"one")
    opts = {"endpoint_url": s3_auth_server.endpoint, "path_style": "true"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    bad = S3Transport(f"{bucket}/q", opts)
    for _ in range(2):
        with pytest.raises(AuthError, match="fspl-1.fspl"):
            bad.fetch("fspl-1.fspl", io.BytesIO())
    assert bad._lean  # the second one took the lean path first
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth_server.secret_key)
    t = S3Transport(f"{bucket}/q", opts)
    t.fetch("fspl-1.fspl", io.BytesIO())
    assert t._lean
    t._lean.credentials = bad._lean.credentials
    calls = _count_full_gets(t)
    out = io.BytesIO()
    assert t.fetch("fspl-1.fspl", out) == 3 and out.getvalue() == b"one"
    assert calls[0] == 1
    empty_bucket(client, bucket)
    client.delete_bucket(Bucket=bucket)


# -- faults ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["full", "lean"])
def test_server_dies_mid_download(s3_bucket: S3Bucket, proxy: TcpProxy, path: str) -> None:
    data = _data(8 * MIB, 9)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-1.fspl", Body=data)
    opts = {**s3_bucket.options, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "max_attempts": "2", "connect_timeout": "2"}
    t = _via(S3Transport(f"{s3_bucket.name}/q", _path_opts(opts, path)), s3_bucket, path)

    proxy.cut_after(3 * MIB)
    dst = io.BytesIO()
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="fspl-1.fspl") as ei:
        t.fetch("fspl-1.fspl", dst)
    assert "\n" not in str(ei.value)
    # partial garbage the caller discards (possibly nothing: the proxy's cut is a TCP
    # reset, which makes the kernel drop bytes the client had not read yet)
    assert len(dst.getvalue()) < len(data)

    proxy.refuse()  # the server is "down"
    with pytest.raises(TransientError, match="connection"):
        t.fetch("fspl-1.fspl", io.BytesIO())
    with pytest.raises(TransientError):
        list(t.list())
    proxy.accept()  # and back
    dst = io.BytesIO()
    assert t.fetch("fspl-1.fspl", dst) == len(data)
    assert dst.getvalue() == data
    print(f"fault cycle took {time.monotonic() - t0:.1f}s")


def test_server_dies_mid_upload(s3_bucket: S3Bucket, proxy: TcpProxy) -> None:
    """A cut between parts is retried by botocore; a server that stays down fails the
    write (TransientError), and the orphaned upload is cleaned up later."""
    opts = {**_mp_opts(s3_bucket), "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "max_attempts": "2", "connect_timeout": "2"}
    t = S3Transport(f"{s3_bucket.name}/q", opts)
    data = _data(12 * MIB, 10)
    src = _RacingReader(data, 6 * MIB, proxy.cut_all)
    t.write_new("fspl-1.fspl", src, len(data))  # type: ignore[arg-type]
    assert src.raced and _get(s3_bucket, "q/jobs/fspl-1.fspl") == data

    src = _RacingReader(data, 6 * MIB, lambda: (proxy.refuse(), proxy.cut_all()))
    with pytest.raises(TransientError):
        t.write_new("fspl-2.fspl", src, len(data))  # type: ignore[arg-type]
    proxy.accept()
    assert [u["Key"] for u in _uploads(s3_bucket)] == ["q/jobs/fspl-2.fspl"]  # abort failed too
    # (moto reports every upload as initiated in 2010: the age filter is not testable here)
    assert t.cleanup_temporaries(older_than=0) == 1
    assert _uploads(s3_bucket) == []
    assert [e.name for e in t.list()] == ["fspl-1.fspl"]


# -- credentials -----------------------------------------------------------------------

def test_wrong_credentials(s3_auth_server: S3Server, s3_env: S3Server,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    srv = s3_auth_server
    opts = {"endpoint_url": srv.endpoint, "path_style": "true"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", srv.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", srv.secret_key)
    bucket = f"fspl-auth-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    srv.client().create_bucket(Bucket=bucket)
    good = S3Transport(bucket, opts)
    good.write_new("fspl-1.fspl", io.BytesIO(b"x"), 1)
    assert [e.name for e in good.list()] == ["fspl-1.fspl"]

    wrong_secret = "wrongSECRETwrongSECRETwrongSECRET0123456"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    bad = S3Transport(bucket, opts)
    for call in (lambda: list(bad.list()), lambda: bad.fetch("fspl-1.fspl", io.BytesIO()),
                 lambda: bad.write_new("fspl-2.fspl", io.BytesIO(b"y"), 1),
                 lambda: bad.delete("fspl-1.fspl")):
        with pytest.raises(AuthError, match="access denied.*SignatureDoesNotMatch") as ei:
            call()
        msg = str(ei.value)
        assert wrong_secret not in msg and srv.secret_key not in msg and "\n" not in msg
        assert "credentials" in msg

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    with pytest.raises(AuthError, match="InvalidAccessKeyId"):
        list(S3Transport(bucket, opts).list())
    assert [e.name for e in good.list()] == ["fspl-1.fspl"]


def test_no_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    t = S3Transport("bkt", {"endpoint_url": s3_env.endpoint, "max_attempts": 1})
    with pytest.raises(AuthError, match="no usable AWS credentials"):
        list(t.list())


# -- stores that behave differently (a stub speaking S3's error XML over HTTP) -----------

class _StubS3(http.server.BaseHTTPRequestHandler):
    status = 501
    code = "NotImplemented"
    hits = 0

    def _reply(self) -> None:
        type(self).hits += 1
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.code}</Code>"
                f"<Message>stub says no</Message></Error>").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _reply

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def stub_s3(s3_env: S3Server) -> Iterator[type[_StubS3]]:
    handler = type("Stub", (_StubS3,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.port = srv.server_address[1]  # type: ignore[attr-defined]
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield handler
    srv.shutdown()
    srv.server_close()


def test_store_without_conditional_writes(stub_s3: type[_StubS3]) -> None:
    t = S3Transport("bkt/q", {"endpoint_url": f"http://127.0.0.1:{stub_s3.port}",  # type: ignore[attr-defined]
                              "path_style": "true"})
    with pytest.raises(TransportError, match="lacks conditional writes") as ei:
        t.write_new("fspl-1.fspl", io.BytesIO(b"x"), 1)
    assert not isinstance(ei.value, TransientError | RemoteExistsError)


def test_slowdown_is_transient(stub_s3: type[_StubS3]) -> None:
    stub_s3.status, stub_s3.code = 503, "SlowDown"
    t = S3Transport("bkt/q", {"endpoint_url": f"http://127.0.0.1:{stub_s3.port}",  # type: ignore[attr-defined]
                              "path_style": "true", "max_attempts": "2"})
    with pytest.raises(TransientError, match="SlowDown"):
        list(t.list())
    assert stub_s3.hits == 2  # botocore retried once (standard mode)
    stub_s3.status, stub_s3.code = 500, "InternalError"
    with pytest.raises(TransientError, match="InternalError"):
        t.fetch("fspl-1.fspl", io.BytesIO())
    stub_s3.status, stub_s3.code = 403, "AccessDenied"
    with pytest.raises(AuthError, match="AccessDenied"):
        t.delete("fspl-1.fspl")


@pytest.mark.parametrize("text", [
    "2026-11-29T21:00:43.000Z", "2026-11-29T21:00:43Z", "2026-11-29T21:00:43.123456Z",
    "Sun, 29 Nov 2026 21:00:43 GMT", "2026-11-29T22:00:43+01:00", "1795986043",
])
def test_fast_timestamp_agrees_with_botocore(text: str) -> None:
    """The dateutil-free parser of listing/header timestamps gives botocore's answer."""
    from botocore.utils import parse_timestamp

    got, want = s3mod._fast_timestamp(text), parse_timestamp(text)
    assert got == want and got.utcoffset() is not None


def test_lean_get_on_s3rver(s3rver: S3rver) -> None:
    """s3rver (no checksums, no conditional writes): the lean path learns and fetches
    there too, ETag-verified, and a missing object is still RemoteNotFoundError."""
    t = S3Transport(s3rver.location("q"), {**s3rver.options, "conditional_writes": "false"})
    datas = {f"fspl-{i}.fspl": _data(4000 + i, i) for i in range(3)}
    for name, data in datas.items():
        t.write_new(name, io.BytesIO(data), len(data))
    calls = _count_full_gets(t)
    listed = {e.name: e for e in t.list()}
    for name, data in datas.items():
        out = io.BytesIO()
        assert t.fetch(name, out, listed[name]) == len(data) and out.getvalue() == data
    assert calls[0] == 1 and t._lean
    with pytest.raises(RemoteNotFoundError):
        t.fetch("fspl-9.fspl", io.BytesIO())


def test_default_concurrency_is_the_transports(s3_bucket: S3Bucket) -> None:
    """No --concurrency: a run on S3 uses 16 threads and a pool of 16 connections (the
    local transport keeps 4); a user's number wins."""
    from fspl_gateway.gateway.runframe import threads_for
    from fspl_gateway.transports.local import LocalTransport

    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    assert threads_for(t, None, "s3") == 16 and t._pool_size >= 16
    assert threads_for(t, 2, "s3") == 2
    assert LocalTransport(str(s3_bucket.name)).default_concurrency() == 4
