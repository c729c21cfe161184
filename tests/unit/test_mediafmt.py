"""fspl_gateway.mediafmt: the manifest format and ISO images, without the transport or
the export code around them."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from fspl_gateway.core.errors import RemoteNotFoundError
from fspl_gateway.mediafmt.iso import ImageJob, IsoImage, joliet_ok, write_image
from fspl_gateway.mediafmt.manifest import (
    MANIFEST_NAME,
    format_manifest,
    job_digests,
    parse_manifest,
    read_manifest_file,
    verify,
    write_manifest,
)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_manifest_round_trip_and_sha256sum_shapes(tmp_path: Path) -> None:
    entries = {"jobs/fspl-b.fspl": _sha(b"b"), "jobs/fspl-a.fspl": _sha(b"a")}
    text = format_manifest(entries)
    assert text.splitlines()[0] == f"{_sha(b'a')}  jobs/fspl-a.fspl".encode()
    write_manifest(str(tmp_path), entries)
    assert read_manifest_file(str(tmp_path / MANIFEST_NAME)) == (entries, [])
    odd = (f"{_sha(b'x').upper()} *./jobs/fspl-x.fspl\n"       # binary mark, ./, upper hex
           f"\\{_sha(b'y')}  jobs/fspl-new\\nline.fspl\n"      # sha256sum's escaping
           "# a comment\n\nnot a line\n"
           f"{_sha(b'z')}  other/fspl-z.fspl\n").encode()
    got, bad = parse_manifest(io.BytesIO(odd))
    assert got["jobs/fspl-x.fspl"] == _sha(b"x")
    assert got["jobs/fspl-new\nline.fspl"] == _sha(b"y")
    assert bad == ["line 5: not '<sha256>  <path>'"]
    assert job_digests(got) == {"fspl-x.fspl": _sha(b"x"), "fspl-new\nline.fspl": _sha(b"y")}


def test_write_then_read_an_image(tmp_path: Path) -> None:
    names = ["fspl-1.fspl", "fspl-" + "r" * 100 + ".fspl"]  # the second: Rock Ridge only
    assert joliet_ok(names[0]) and not joliet_ok(names[1])
    jobs = []
    for i, n in enumerate(names):
        p = tmp_path / f"src{i}"
        p.write_bytes(os.urandom(3000 + i))
        jobs.append(ImageJob(n, str(p), 3000 + i))
    manifest = format_manifest({f"jobs/{j.name}": _sha(Path(j.path).read_bytes()) for j in jobs})
    iso = tmp_path / "x.iso"
    with open(iso, "wb", buffering=0) as f:
        write_image(f, jobs, manifest, volume_id="TEST")
    img = IsoImage(str(iso))
    try:
        assert img.kind == "rr_path" and img.has_jobs and img.refused == []
        assert sorted(img.files) == sorted(names)
        for j in jobs:
            with img.open(img.files[j.name]) as s:
                assert s.read() == Path(j.path).read_bytes()
        assert img.manifest is not None
        with img.open(img.manifest) as s:
            assert s.read() == manifest
        assert img.retire() is True  # no stream open: closed at once
    finally:
        img.close()


class _DirReader:
    """A media reader that is not a transport: mediafmt needs no more than this."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refused: list[tuple[str, str]] = []

    def list(self) -> list[_Named]:
        return [_Named(n) for n in os.listdir(self.root / "jobs")]

    def open(self, name: str) -> BinaryIO:
        return open(self.root / "jobs" / name, "rb")

    def open_manifest(self) -> BinaryIO:
        try:
            return open(self.root / MANIFEST_NAME, "rb")
        except FileNotFoundError:
            raise RemoteNotFoundError("no manifest") from None

    def describe(self) -> str:
        return str(self.root)


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize("manifest", [True, False])
def test_verify_any_reader(tmp_path: Path, manifest: bool) -> None:
    (tmp_path / "jobs").mkdir()
    for n, b in (("fspl-ok.fspl", b"ok"), ("fspl-rot.fspl", b"rotten"), ("fspl-x.fspl", b"x")):
        (tmp_path / "jobs" / n).write_bytes(b)
    if manifest:
        write_manifest(str(tmp_path), {"jobs/fspl-ok.fspl": _sha(b"ok"),
                                       "jobs/fspl-rot.fspl": _sha(b"good"),
                                       "jobs/fspl-gone.fspl": _sha(b"gone")})
    r = verify(_DirReader(tmp_path), lambda n: n.startswith("fspl-"))
    if not manifest:
        assert not r.manifest_found and r.extra == ["fspl-ok.fspl", "fspl-rot.fspl", "fspl-x.fspl"]
        return
    assert (r.ok, r.mismatched, r.missing, r.extra) == (
        ["fspl-ok.fspl"], ["fspl-rot.fspl"], ["fspl-gone.fspl"], ["fspl-x.fspl"])
    assert not r.clean and r.bad == ["fspl-rot.fspl", "fspl-x.fspl"]
