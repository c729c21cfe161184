"""Conformance backend for the S3 transport: moto's server over HTTP (or the server of
``FSPL_GW_TEST_S3_ENDPOINT``), one fresh bucket per test, each ``make()`` a fresh
prefix in it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from fspl_gateway.transports.base import Transport
from tests.fixtures.s3server import S3Bucket
from tests.transports.backends import Backend

#: moto keeps every object (and every multipart part until completion) in memory in
#: its server process, and pushes it through Python at ~100-200 MB/s: 256 MiB keeps
#: the big-file conformance test to seconds and the server's RSS modest, while still
#: being a multipart upload (64 MiB threshold, 16 MiB parts) of 16 parts.
BIG_SIZE_MOTO = 256 << 20


@pytest.fixture
def backend_s3(s3_bucket: S3Bucket) -> Iterator[Backend]:
    from fspl_gateway.transports.s3 import S3Transport

    made: list[Transport] = []

    def make() -> Transport:
        prefix = f"q-{uuid.uuid4().hex[:12]}"
        t = S3Transport(f"s3://{s3_bucket.name}/{prefix}", dict(s3_bucket.options))
        made.append(t)
        return t

    def _prefix(t: Transport) -> str:
        assert isinstance(t, S3Transport)
        return t.jobs_prefix

    def put(t: Transport, name: str, data: bytes) -> None:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=_prefix(t) + name, Body=data)

    def raw_names(t: Transport) -> list[str]:
        prefix = _prefix(t)
        names: list[str] = []
        for page in s3_bucket.client.get_paginator("list_objects_v2").paginate(
                Bucket=s3_bucket.name, Prefix=prefix):
            names += [o["Key"][len(prefix):] for o in page.get("Contents", []) or []]
        # in-progress/orphaned multipart uploads are the S3 "temporaries"
        for page in s3_bucket.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=s3_bucket.name, Prefix=prefix):
            names += [f"<upload>{u['Key'][len(prefix):]}" for u in page.get("Uploads", []) or []]
        return sorted(names)

    yield Backend(name="s3", make=make, put=put, raw_names=raw_names,
                  big_size=BIG_SIZE_MOTO if s3_bucket.server.is_moto else 1 << 30)
    for t in made:
        t.close()
