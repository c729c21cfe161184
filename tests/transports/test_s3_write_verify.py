"""A PUT corrupted on the way is noticed (issue 12 item 4): moto does not validate
``x-amz-checksum-sha256``, so a byte flipped between us and the store (a corrupting TCP
proxy on loopback) is seen only in the ETag the store reports.  Push keeps the outbox
copy until a write matches.  Multipart objects carry rclone's md5 metadata, which
``rclone check`` (Debian's rclone) verifies."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import IntegrityError
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.gateway.probe import store_noclobber
from fspl_gateway.gateway.push import PushOptions, push
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.transports.options import MIB
from fspl_gateway.transports.s3 import S3Transport
from tests.fixtures.s3server import S3Bucket
from tests.fixtures.tcpproxy import TcpProxy
from tests.unit.test_sync import make_job

BODY_OFFSET = 8000  # well past one request's headers, inside the body


@pytest.fixture
def proxy(s3_bucket: S3Bucket) -> Iterator[TcpProxy]:
    port = s3_bucket.server.port or int(s3_bucket.server.endpoint.rsplit(":", 1)[-1])
    with TcpProxy(port) as p:
        yield p


def _via(b: S3Bucket, proxy: TcpProxy, **extra: Any) -> dict[str, Any]:
    return {**b.options, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "max_attempts": "1", **extra}


def _keys(b: S3Bucket) -> list[str]:
    return [o["Key"] for o in b.client.list_objects_v2(Bucket=b.name).get("Contents", [])]


def test_single_put_corrupted_on_the_way(s3_bucket: S3Bucket, proxy: TcpProxy) -> None:
    data = os.urandom(64 * 1024)
    with S3Transport(s3_bucket.location("q"), _via(s3_bucket, proxy)) as t:
        proxy.corrupt_up_at(BODY_OFFSET)
        with pytest.raises(IntegrityError, match="other bytes than were sent.*removed it"):
            t.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
        assert _keys(s3_bucket) == []  # the corrupt copy is gone
        entry = t.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
        assert entry.tag == hashlib.md5(data).hexdigest()


def test_multipart_part_corrupted_on_the_way(s3_bucket: S3Bucket, proxy: TcpProxy) -> None:
    data = os.urandom(11 * MIB)
    opts = _via(s3_bucket, proxy, multipart_threshold="5MiB", multipart_chunksize="5MiB")
    with S3Transport(s3_bucket.location("q"), opts) as t:
        proxy.corrupt_up_at(6 * MIB)  # in part 2
        with pytest.raises(IntegrityError, match="part 2 arrived with other bytes"):
            t.write_new("fspl-1.fspl", io.BytesIO(data), len(data))
        assert _keys(s3_bucket) == []
        assert not s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")


def test_push_keeps_the_outbox_copy_until_a_write_matches(s3_bucket: S3Bucket,
                                                          proxy: TcpProxy,
                                                          tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    job = make_job(1, os.urandom(64 * 1024))
    (outbox / "jobs" / "fspl-a.fspl").write_bytes(job)
    with S3Transport(s3_bucket.location("q"), _via(s3_bucket, proxy)) as t:
        store_noclobber(QueueLayout(str(outbox)), t.describe(), True)
        # one attempt only: the corrupt write fails, the job stays, nothing stays remote
        proxy.corrupt_up_at(BODY_OFFSET)
        res = push(t, outbox, PushOptions(retry=RetryPolicy(attempts=1), progress=False))
        assert (res.pushed, res.failed, res.exit_code) == (0, 1, 3)
        assert (outbox / "jobs" / "fspl-a.fspl").read_bytes() == job
        assert _keys(s3_bucket) == []
        # with retries the second write matches: pushed, removed locally, remote intact
        proxy.corrupt_up_at(BODY_OFFSET)
        res = push(t, outbox, PushOptions(retry=RetryPolicy(attempts=3, backoff=0.01),
                                          progress=False))
        assert (res.pushed, res.exit_code) == (1, 0)
    assert not (outbox / "jobs" / "fspl-a.fspl").exists()
    got = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-a.fspl")
    assert got["Body"].read() == job


def test_multipart_carries_rclone_md5(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    data = os.urandom(11 * MIB)
    opts = {**s3_bucket.options, "multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}
    with S3Transport(s3_bucket.location("q"), opts) as t:
        entry = t.write_new("fspl-big.fspl", io.BytesIO(data), len(data))
    assert entry.tag is not None and entry.tag.endswith("-3")
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="q/jobs/fspl-big.fspl")
    import base64
    assert head["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()

    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is not installed: run scripts/bootstrap")
    local = tmp_path / "local"
    local.mkdir()
    (local / "fspl-big.fspl").write_bytes(data)
    conf = tmp_path / "rclone.conf"
    conf.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({"RCLONE_CONFIG": str(conf), "HOME": str(tmp_path),
                "RCLONE_CONFIG_M_TYPE": "s3", "RCLONE_CONFIG_M_PROVIDER": "Other",
                "RCLONE_CONFIG_M_ENDPOINT": s3_bucket.server.endpoint,
                "RCLONE_CONFIG_M_ACCESS_KEY_ID": s3_bucket.server.access_key,
                "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": s3_bucket.server.secret_key,
                "RCLONE_CONFIG_M_FORCE_PATH_STYLE": "true"})
    r = subprocess.run([rclone, "check", str(local), f"m:{s3_bucket.name}/q/jobs"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "hashes could not be checked" not in r.stderr, r.stderr
    assert "1 matching files" in r.stderr, r.stderr
