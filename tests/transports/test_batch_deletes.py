"""delete_many of the network transports: S3 (DeleteObjects, 1,000 keys per request)
and SFTP (pipelined REMOVE requests), against the real test servers."""

from __future__ import annotations

import os

from fspl_gateway.core.errors import RemoteNotFoundError
from fspl_gateway.transports.s3 import S3Transport
from fspl_gateway.transports.sftp import MAX_AUTO_CHANNELS, SFTPTransport
from tests.fixtures.s3server import S3Bucket, seed_objects
from tests.fixtures.sshd import SFTPQueue


def test_s3_delete_many_more_than_one_request(s3_bucket: S3Bucket) -> None:
    seed_objects(s3_bucket.server, s3_bucket.name, "q/jobs/fspl-", 2100)
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    names = sorted(e.name for e in t.list())
    assert len(names) == 2100
    sent: list[int] = []
    t._client.meta.events.register(
        "before-parameter-build.s3.DeleteObjects",
        lambda params, **kw: sent.append(len(params["Delete"]["Objects"])))
    assert t.delete_many(names[:2050]) == {}
    assert sent == [1000, 1000, 50]
    assert sorted(e.name for e in t.list()) == names[2050:]
    # S3's delete is idempotent: a missing key is no error
    assert t.delete_many(names[:3]) == {}
    t.close()


def test_s3_set_concurrency_grows_the_pool(s3_bucket: S3Bucket) -> None:
    t = S3Transport(f"{s3_bucket.name}/q", s3_bucket.options)
    assert t._client.meta.config.max_pool_connections == 10
    assert t.set_concurrency(32) == 32
    assert t._client.meta.config.max_pool_connections == 32
    assert t.set_concurrency(4) == 4  # never shrinks
    assert t._client.meta.config.max_pool_connections == 32
    assert list(t.list()) == []  # the new client works
    t.close()




def test_sftp_delete_many_pipelined(sftp_queue: SFTPQueue) -> None:
    names = [f"fspl-{i:04d}.fspl" for i in range(150)]
    for n in names:
        (sftp_queue.jobs / n).write_bytes(b"x")
    (sftp_queue.jobs / "fspl-keep.fspl").write_bytes(b"k")
    t = SFTPTransport(sftp_queue.location, sftp_queue.options)
    try:
        errors = t.delete_many([*names[:100], "fspl-gone.fspl", *names[100:], "a/b"])
        assert set(errors) == {"fspl-gone.fspl", "a/b"}
        assert isinstance(errors["fspl-gone.fspl"], RemoteNotFoundError)
        assert sorted(os.listdir(sftp_queue.jobs)) == ["fspl-keep.fspl"]
        assert t.stats["connects"] == 1
        assert [e.name for e in t.list()] == ["fspl-keep.fspl"]  # the channel is in sync
    finally:
        t.close()


def test_sftp_set_concurrency_sizes_the_channel_pool(sftp_queue: SFTPQueue) -> None:
    t = SFTPTransport(sftp_queue.location, sftp_queue.options)
    assert t.max_channels == 1
    assert t.set_concurrency(4) == 4 and t.max_channels == 4
    assert t.set_concurrency(100) == 100 and t.max_channels == MAX_AUTO_CHANNELS
    t.close()
    explicit = SFTPTransport(sftp_queue.location, {**sftp_queue.options, "connections": 2})
    explicit.set_concurrency(8)
    assert explicit.max_channels == 2  # an explicit setting wins
    explicit.close()
