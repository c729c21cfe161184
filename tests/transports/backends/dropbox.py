"""Conformance backend for the ``dropbox`` transport, against the HTTPS stand-in of the
Dropbox API (tests/fixtures/dropbox_standin/, run in a subprocess) through the real SDK.

Each ``make()`` is a fresh remote queue ``/queues/<random>`` (with an empty ``jobs/``)
and a fresh access token; ``put``/``raw_names`` act on the stand-in's storage directory
directly.  Big-file size: BIG_SIZE below (the stand-in keeps files on disk, so 1 GiB
works, but every byte is hashed four times over TLS on loopback: see the module
constant for the time it costs).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.fixtures.dropbox_server  # noqa: F401 - sets DROPBOX_API_HOST before the SDK loads
from fspl_gateway.transports.base import Transport
from tests.fixtures.dropbox_standin.client import Standin
from tests.transports.backends import Backend

#: 256 MiB: large enough for 32 upload-session requests of 8 MiB and a flat-memory
#: check, small enough to keep this backend's big-file test to a few seconds.
BIG_SIZE = 256 << 20


@pytest.fixture
def backend_dropbox(dropbox_standin: Standin) -> Iterator[Backend]:
    from fspl_gateway.transports.dropbox import DropboxTransport

    made: list[Path] = []
    jobs_of: dict[int, Path] = {}

    def make() -> Transport:
        location = f"/queues/{secrets.token_hex(6)}"
        jobs = dropbox_standin.disk(location + "/jobs")
        jobs.mkdir(parents=True)
        made.append(jobs.parent)
        token = dropbox_standin.admin("new_token")["access_token"]
        t = DropboxTransport(location, {"access_token": token, "ca_bundle": dropbox_standin.ca})
        jobs_of[id(t)] = jobs
        return t

    def put(t: Transport, name: str, data: bytes) -> None:
        with open(jobs_of[id(t)] / name, "xb") as f:
            f.write(data)

    def raw_names(t: Transport) -> list[str]:
        return sorted(os.listdir(jobs_of[id(t)]))

    yield Backend(name="dropbox", make=make, put=put, raw_names=raw_names, big_size=BIG_SIZE,
                  extra={"delete_missing_raises": True})
    dropbox_standin.admin("reset")
    for d in made:
        shutil.rmtree(d, ignore_errors=True)
