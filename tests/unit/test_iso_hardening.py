"""ISO images nobody here made (issue 12 item 13): a plain ISO 9660 image (no Rock Ridge,
no Joliet: 8.3 names like ``FSPL_108.FSP;1``) has its job names recovered from the
manifest's sha256, or is refused saying why; corrupt images are one-line errors, never a
pycdlib traceback (a bounded, deterministic fuzz test)."""

from __future__ import annotations

import hashlib
import io
import random
import time
from pathlib import Path

import pycdlib

from fspl_gateway.core import packet
from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import FsplError
from fspl_gateway.gateway.media import export_iso
from fspl_gateway.transports.media import MediaTransport
from tests.helpers import run_gw
from tests.unit.test_media import make_outbox


def _jobs(n: int) -> dict[str, bytes]:
    out = {}
    for seq in range(1, n + 1):
        meta = packet.Meta(seq=seq, cmd=packet.make_command([b"x%d" % seq]))
        out[f"fspl-{seq:04d}-0123456789abcdef.fspl"] = packet.encode_header(meta) + b"p" * seq
    return out


def _plain_iso(path: Path, jobs: dict[str, bytes], manifest: bool) -> None:
    """What `genisoimage -o X.iso stick/` makes: ISO 9660 level 1, no Rock Ridge/Joliet."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1)
    iso.add_directory("/JOBS")
    lines = []
    for i, (name, data) in enumerate(sorted(jobs.items()), 100):
        iso.add_fp(io.BytesIO(data), len(data), f"/JOBS/FSPL_{i}.FSP;1")
        lines.append(f"{hashlib.sha256(data).hexdigest()}  jobs/{name}\n")
    if manifest:
        m = "".join(lines).encode()
        iso.add_fp(io.BytesIO(m), len(m), "/MANIFEST.SHA;1")
    iso.write(str(path))
    iso.close()


def test_plain_iso_names_recovered_from_the_manifest(tmp_path: Path) -> None:
    jobs = _jobs(4)
    img = tmp_path / "plain.iso"
    _plain_iso(img, jobs, manifest=True)
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    r = run_gw("import", "-q", str(inq), "--from", str(img))
    assert r.returncode == 0, r.stderr
    assert b"plain ISO 9660 image without Rock Ridge or Joliet" in r.stderr
    assert b"4 of 4 recovered" in r.stderr
    got = {p.name: p.read_bytes() for p in (inq / "jobs").iterdir()}
    assert got == jobs


def test_plain_iso_without_manifest_says_why(tmp_path: Path) -> None:
    img = tmp_path / "plain.iso"
    _plain_iso(img, _jobs(2), manifest=False)
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    r = run_gw("import", "-q", str(inq), "--from", str(img), "--no-manifest")
    assert r.returncode == 1, r.stderr
    err = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("Error: ")]
    assert len(err) == 1 and "Traceback" not in r.stderr.decode()
    assert "without Rock Ridge or Joliet" in err[0] and "FSPL_100.FSP" in err[0]
    assert q.pending_count(str(inq)) == 0


def _exercise(path: Path) -> None:
    with MediaTransport(str(path)) as t:
        for e in list(t.list()):
            buf = io.BytesIO()
            t.fetch(e.name, buf, e)
        t.verify_manifest()


def test_corrupt_iso_fuzz_one_line_errors_only(tmp_path: Path) -> None:
    names = list(_jobs(3))
    ob = make_outbox(tmp_path, {n: b"payload %d" % i for i, n in enumerate(names)})
    good = tmp_path / "good.iso"
    export_iso(str(ob), str(good), keep=True)
    base = good.read_bytes()
    rng = random.Random(12)
    bad = tmp_path / "bad.iso"
    errors: set[str] = set()
    t0 = time.monotonic()
    for i in range(300):
        data = bytearray(base)
        if i % 10 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 8)):  # volume descriptors and directory records
                pos = rng.randrange(16 * 2048, min(len(data), 40 * 2048))
                data[pos] = rng.randrange(256)
        bad.write_bytes(bytes(data))
        try:
            _exercise(bad)
        except FsplError as e:
            msg = str(e)
            assert "\n" not in msg and msg, (i, msg)
            errors.add(type(e).__name__)
    assert errors  # some mutations must have been refused
    assert time.monotonic() - t0 < 60
