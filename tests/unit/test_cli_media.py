"""fspl-gw export / import from the command line (USB directory and ISO image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from tests.helpers import run_gw


def _outbox(tmp_path: Path, n: int) -> Path:
    out = tmp_path / "out"
    r = run_gw("queue-init", "--append-only", "-q", str(out))
    assert r.returncode == 0
    for i in range(n):
        pkt = run_gw("prepare", "-s", str(tmp_path / "seq"), "-i", "-", input=b"job %d" % i)
        assert run_gw("queue-write", "-q", str(out), input=pkt.stdout).returncode == 0
    return out


@pytest.mark.parametrize("target", ["stick", "cd.iso"])
def test_export_then_import_moves_every_job_once(tmp_path: Path, target: str) -> None:
    out = _outbox(tmp_path, 3)
    dest = tmp_path / target
    if target == "stick":
        dest.mkdir()
    r = run_gw("export", "-q", str(out), "--to", str(dest))
    assert r.returncode == 0, r.stderr
    assert q.pending_count(str(out)) == 0  # removed from the outbox after verification
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    r = run_gw("import", "-q", str(inq), "--from", str(dest))
    assert r.returncode == 0, r.stderr
    assert sorted(j.meta.seq for j in q.scan(str(inq))) == [1, 2, 3]
    # importing the same media again fetches nothing new
    r = run_gw("import", "-q", str(inq), "--from", str(dest))
    assert r.returncode == 0 and q.pending_count(str(inq)) == 3


def test_rotten_stick_is_refused_then_good_only_imports_the_rest(tmp_path: Path) -> None:
    out = _outbox(tmp_path, 3)
    stick = tmp_path / "stick"
    stick.mkdir()
    assert run_gw("export", "-q", str(out), "--to", str(stick)).returncode == 0
    victim = sorted((stick / "jobs").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    r = run_gw("import", "-q", str(inq), "--from", str(stick))
    assert r.returncode == 1 and victim.name.encode() in r.stderr
    assert q.pending_count(str(inq)) == 0
    r = run_gw("import", "-q", str(inq), "--from", str(stick), "--good-only")
    assert r.returncode == 3, r.stderr
    assert q.pending_count(str(inq)) == 2


def test_export_to_a_missing_mount_point_is_a_clear_error(tmp_path: Path) -> None:
    out = _outbox(tmp_path, 1)
    r = run_gw("export", "-q", str(out), "--to", str(tmp_path / "not-mounted"))
    assert r.returncode == 1 and r.stderr.startswith(b"Error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert q.pending_count(str(out)) == 1
