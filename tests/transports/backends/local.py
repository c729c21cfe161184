"""Conformance backend for the ``local`` transport: each ``make()`` is a fresh directory
with an empty ``jobs/`` under pytest's tmp dir; ``put``/``raw_names`` use the file system
directly.  Big-file size: the default 1 GiB (removed again when the test ends)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from fspl_gateway.transports.base import Transport
from tests.transports.backends import Backend


def _jobs(t: Transport) -> str:
    return os.path.join(os.path.abspath(t.location), "jobs")


def dir_put(t: Transport, name: str, data: bytes) -> None:
    with open(os.path.join(_jobs(t), name), "xb") as f:
        f.write(data)


def dir_raw_names(t: Transport) -> list[str]:
    return sorted(os.listdir(_jobs(t)))


@pytest.fixture
def backend_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from fspl_gateway.transports.local import LocalTransport

    made: list[str] = []

    def make() -> Transport:
        root = tmp_path_factory.mktemp("local-remote")
        (root / "jobs").mkdir()
        made.append(str(root))
        return LocalTransport(str(root))

    yield Backend(name="local", make=make, put=dir_put, raw_names=dir_raw_names,
                  extra={"delete_missing_raises": True, "jobs_dir": _jobs})
    for root in made:  # do not leave 1 GiB files in pytest's kept tmp dirs
        shutil.rmtree(root, ignore_errors=True)
