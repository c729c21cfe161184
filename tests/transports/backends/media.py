"""Conformance backends for the ``media`` transport.

``backend_media_dir``: directory media (a mounted stick), a fresh directory per
``make()``, written like the local backend.

``backend_media_iso``: an ISO image, read-only.  Each ``make()`` creates a staging
directory and an image built from it *by this module with pycdlib directly* (Rock Ridge
+ Joliet, generated ISO 9660 names — independent of the export code under test).
``put`` adds a file to the staging directory and rebuilds the image (written to a
temporary name, then renamed over, so the transport sees a new inode and re-reads it on
its next ``list``/``open``).  ``raw_names`` reads the image's Rock Ridge names with
pycdlib.  ``extra["put_stream"](t, name, src, size)`` does the same as ``put`` from a
stream, for the big-file test (the image then holds 1 GiB; removed when the test ends).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from fspl_gateway.transports.base import Transport
from tests.transports.backends import Backend
from tests.transports.backends.local import _jobs as local_jobs_dir
from tests.transports.backends.local import dir_put, dir_raw_names

_JOLIET_BAD = set('*/:;?\\')


@pytest.fixture
def backend_media_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from fspl_gateway.transports.media import MediaTransport

    made: list[str] = []

    def make() -> Transport:
        root = tmp_path_factory.mktemp("media-dir")
        (root / "jobs").mkdir()
        made.append(str(root))
        return MediaTransport(str(root))

    yield Backend(name="media_dir", make=make, put=dir_put, raw_names=dir_raw_names,
                  extra={"delete_missing_raises": True, "jobs_dir": local_jobs_dir})
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def build_iso(staging: str, iso_path: str) -> None:
    """Build ``iso_path`` from ``staging/jobs/*`` (+ ``staging/MANIFEST.sha256`` if
    present) with Rock Ridge 1.09 and Joliet; atomic replace."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="TEST")
    iso.add_directory(iso_path="/JOBS", rr_name="jobs", joliet_path="/jobs")
    jobs = os.path.join(staging, "jobs")
    for i, name in enumerate(sorted(os.listdir(jobs)), 1):
        jp = f"/jobs/{name}" if len(name) <= 64 and not set(name) & _JOLIET_BAD else None
        iso.add_file(os.path.join(jobs, name), iso_path=f"/JOBS/F{i:07d}.DAT;1",
                     rr_name=name, joliet_path=jp)
    manifest = os.path.join(staging, "MANIFEST.sha256")
    if os.path.exists(manifest):
        iso.add_file(manifest, iso_path="/MANIFEST.SHA;1", rr_name="MANIFEST.sha256",
                     joliet_path="/MANIFEST.sha256")
    tmp = iso_path + ".building"
    iso.write(tmp)
    iso.close()
    os.replace(tmp, iso_path)


def iso_rr_names(iso_path: str, directory: str = "/jobs") -> list[str]:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(iso_path)
    try:
        return sorted(c.rock_ridge.name().decode("utf-8", "surrogateescape")
                      for c in iso.list_children(rr_path=directory)
                      if not (c.is_dot() or c.is_dotdot()))
    finally:
        iso.close()


@pytest.fixture
def backend_media_iso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from fspl_gateway.transports.media import MediaTransport

    staging_of: dict[int, str] = {}
    made: list[tuple[Transport, str]] = []

    def make() -> Transport:
        root = tmp_path_factory.mktemp("media-iso")
        staging = root / "staging"
        (staging / "jobs").mkdir(parents=True)
        iso = str(root / "media.iso")
        build_iso(str(staging), iso)
        t = MediaTransport(iso)
        staging_of[id(t)] = str(staging)
        made.append((t, str(root)))
        return t

    def put_stream(t: Transport, name: str, src: BinaryIO, size: int) -> None:
        staging = staging_of[id(t)]
        with open(os.path.join(staging, "jobs", name), "xb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        assert os.path.getsize(os.path.join(staging, "jobs", name)) == size
        build_iso(staging, t.location)

    def put(t: Transport, name: str, data: bytes) -> None:
        staging = staging_of[id(t)]
        with open(os.path.join(staging, "jobs", name), "xb") as f:
            f.write(data)
        build_iso(staging, t.location)

    def raw_names(t: Transport) -> list[str]:
        return iso_rr_names(t.location)

    yield Backend(name="media_iso", make=make, put=put, raw_names=raw_names, read_only=True,
                  extra={"put_stream": put_stream, "delete_missing_raises": True})
    for t, root in made:
        t.close()
        shutil.rmtree(root, ignore_errors=True)
