"""Self-tests of the real-peer fixtures (tests/fixtures/s3rver.py, tests/fixtures/rclone.py)
and the facts about those peers that the gateway's defences are built on."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import botocore.exceptions as bce
import pytest

from fspl_gateway.transports import base
from tests.fixtures.rclone import RcloneSFTP, RcloneUploader
from tests.fixtures.s3rver import S3rver

PAYLOAD = bytes(range(256)) * 64


def _list_and_fetch(t: base.Transport) -> dict[str, bytes]:
    out = {}
    for entry in t.list():
        buf = io.BytesIO()
        assert t.fetch(entry.name, buf, entry) == entry.size
        out[entry.name] = buf.getvalue()
    return out


# -- s3rver ---------------------------------------------------------------------------
def test_s3rver_put_list_get(s3rver: S3rver) -> None:
    c = s3rver.client()
    c.put_object(Bucket=s3rver.bucket, Key="q/jobs/fspl-1.fspl", Body=PAYLOAD)
    listed = c.list_objects_v2(Bucket=s3rver.bucket, Prefix="q/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("q/jobs/fspl-1.fspl", len(PAYLOAD))]
    body = c.get_object(Bucket=s3rver.bucket, Key="q/jobs/fspl-1.fspl")["Body"].read()
    assert body == PAYLOAD
    # what the fixture yields is enough for our S3 transport
    with base.create("s3", s3rver.location("q"), s3rver.options) as t:
        assert _list_and_fetch(t) == {"fspl-1.fspl": PAYLOAD}


def test_s3rver_ignores_if_none_match(s3rver: S3rver) -> None:
    """The fact the capability probe detects: a second create-only PUT overwrites."""
    c = s3rver.client()
    key = "probe/object"
    c.put_object(Bucket=s3rver.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    c.put_object(Bucket=s3rver.bucket, Key=key, Body=b"second", IfNoneMatch="*")  # no 412
    assert c.get_object(Bucket=s3rver.bucket, Key=key)["Body"].read() == b"second"


def test_s3rver_lacks_multipart_listing(s3rver: S3rver) -> None:
    with pytest.raises(bce.ClientError) as ei:
        s3rver.client().list_multipart_uploads(Bucket=s3rver.bucket)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


# -- rclone serve sftp and the uploader -----------------------------------------------
def test_rclone_serve_sftp_list_and_fetch(rclone_sftp: RcloneSFTP) -> None:
    jobs = rclone_sftp.root / "q" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "fspl-1.fspl").write_bytes(PAYLOAD)
    (jobs / "fspl-2.fspl").write_bytes(b"")
    with base.create("sftp", rclone_sftp.location("/q"), rclone_sftp.options) as t:
        assert _list_and_fetch(t) == {"fspl-1.fspl": PAYLOAD, "fspl-2.fspl": b""}
    assert "SFTP server listening" in rclone_sftp.log()


def test_uploader_writes_into_local_remote(tmp_path: Path,
                                           rclone_uploader: RcloneUploader) -> None:
    src = tmp_path / "src" / "fspl-a.fspl"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    remote = rclone_uploader.add_local("dst")
    dest = tmp_path / "remote" / "jobs"
    rclone_uploader.copyto(src, f"{remote}{dest}/fspl-a.fspl")
    assert (dest / "fspl-a.fspl").read_bytes() == PAYLOAD
    (src.parent / "fspl-b.fspl").write_bytes(b"b")
    rclone_uploader.copy(src.parent, f"{remote}{dest}")
    assert sorted(os.listdir(dest)) == ["fspl-a.fspl", "fspl-b.fspl"]
    assert not (tmp_path / "rclone-uploader" / "rclone.conf").read_text()  # env only


def test_uploader_writes_into_rclone_sftp(tmp_path: Path, rclone_sftp: RcloneSFTP,
                                          rclone_uploader: RcloneUploader) -> None:
    (rclone_sftp.root / "q" / "jobs").mkdir(parents=True)
    src = tmp_path / "fspl-up.fspl"
    src.write_bytes(PAYLOAD)
    remote = rclone_uploader.add_sftp("up", rclone_sftp)
    rclone_uploader.copyto(src, f"{remote}/q/jobs/fspl-up.fspl")
    assert (rclone_sftp.root / "q" / "jobs" / "fspl-up.fspl").read_bytes() == PAYLOAD
    with base.create("sftp", rclone_sftp.location("/q"), rclone_sftp.options) as t:
        assert _list_and_fetch(t) == {"fspl-up.fspl": PAYLOAD}


def test_rclone_writes_under_the_final_name(tmp_path: Path,
                                            rclone_uploader: RcloneUploader) -> None:
    """The fact behind the settle interval: rclone 1.60 writes a local remote's file
    straight under its final name, visible while it grows."""
    src = tmp_path / "big.fspl"
    src.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "remote" / "jobs" / "fspl-big.fspl"
    proc = rclone_uploader.start("copyto", src, f"{rclone_uploader.add_local('dst')}{dest}",
                                 bwlimit="1M")
    seen = []
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if dest.exists():
            seen.append(dest.stat().st_size)
        time.sleep(0.05)
    assert proc.wait(timeout=30) == 0
    assert any(0 <= n < 3 << 20 for n in seen), seen  # the final name while incomplete
    assert dest.read_bytes() == src.read_bytes()
