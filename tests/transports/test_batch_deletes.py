"""delete_many of the network transports: S3 (DeleteObjects, 1,000 keys per request)
and SFTP (pipelined REMOVE requests), against the real test servers."""

from __future__ import annotations

from fspl_gateway.transports.s3 import S3Transport

from tests.fixtures.s3server import S3Bucket, seed_objects


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


