"""Edges where fspl-gw must do exactly what the real fspl does: ctimes at and past the ends
of Python's datetime (shown east and west of UTC), leap-second nanoseconds (≥ 10⁹), ctimes
fspl cannot show at all, and a sequence counter at 2⁶⁴−1."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from .test_queues import RECORD
from .util import TOOLS, ok, run

ZONES = ["Asia/Tokyo", "America/Los_Angeles", "UTC"]
U64 = (1 << 64) - 1

#: ctimes fspl shows in all of ZONES.
SHOWN = [
    (253402300799, 0),              # 9999-12-31T23:59:59Z: year 10000 in Tokyo
    (253402300799, 999_999_999),
    (253402300799, 1_000_000_000),  # leap-second form: 23:59:60
    (253402300800, 0),              # +10000-01-01
    (-62135596800, 0),              # 0001-01-01T00:00:00Z: year 0 in Los Angeles
    (-62135596801, 0),
    (0, 1_000_000_000),
    (59, 1_500_000_000),
    (1651970311, 1_999_999_999),
    (-8334632851200 + 86400, 3),    # near the ends of fspl's range (years ±262143)
    (8210298412799 - 86400, 1_000_000_001),
    (1700000000, 0),
]


def raw_packet(seq: int, ctime: tuple[int, int], cmd: object = "NOP",
               payload: bytes = b"") -> bytes:
    """A packet built by hand (not by our encoder), any ctime allowed."""
    meta = msgpack.packb({"seq": seq, "ctime": list(ctime), "cmd_type": cmd})
    head = b"*FILESPOOLER" + struct.pack(">HQI", 1, len(meta), zlib.crc32(meta))
    return head + struct.pack(">I", zlib.crc32(head)) + meta + payload


def command(*params: bytes, **env: bytes) -> object:
    return {"Command": {"params": [list(p) for p in params],
                        "env": [[list(k.encode()), list(v)] for k, v in env.items()]}}


def make_queue(base: Path, jobs: list[bytes], nextseq: int = 1) -> Path:
    qd = base / "q"
    base.mkdir(parents=True)
    ok("fspl", "queue-init", "-q", qd)
    (qd / "nextseq").write_text(f"{nextseq}\n")
    for i, pkt in enumerate(jobs):
        (qd / "jobs" / f"fspl-edge-{i:03d}.fspl").write_bytes(pkt)
    return qd


def process_each(src: Path, tmp_path: Path, *args: str, tz: str = "UTC", runs: int = 1
                 ) -> dict[str, tuple[object, ...]]:
    """Copy queue dir ``src`` once per tool, run queue-process ``runs`` times with the
    RECORD command; return per tool (exit codes, recorded files, jobs left, nextseq)."""
    out = {}
    for tool in TOOLS:
        base = tmp_path / tool
        shutil.copytree(src, base)
        rec = base / "rec"
        rec.mkdir()
        env = dict(os.environ, REC=str(rec), TZ=tz)
        rcs = [run(tool, "queue-process", "-q", "q", *args, "sh", "--", "-c", RECORD, "sh",
                   cwd=base, env=env).returncode for _ in range(runs)]
        out[tool] = (rcs, {p.name: p.read_bytes() for p in sorted(rec.iterdir())},
                     sorted(p.name for p in (base / "q" / "jobs").iterdir()),
                     (base / "q" / "nextseq").read_bytes())
    return out


@pytest.mark.parametrize("tz", ZONES)
def test_edge_ctimes_shown_as_fspl_shows_them(tmp_path: Path, tz: str) -> None:
    """stdin-info, queue-ls, queue-info and the command's environment in queue-process
    (sequence and timestamp order) are byte for byte fspl's."""
    env = dict(os.environ, TZ=tz)
    pkts = [raw_packet(i + 1, ct, command(b"p", K=b"v"), b"payload %d\n" % i)
            for i, ct in enumerate(SHOWN)]
    for pkt in pkts:
        res = {t: run(t, "stdin-info", input=pkt, env=env) for t in TOOLS}
        assert (res["gw"].returncode, res["gw"].stdout) == (0, res["fspl"].stdout), res["gw"].stderr
    qd = make_queue(tmp_path / "src", pkts)
    cwd = qd.parent
    ls = {t: ok(t, "queue-ls", "-q", "q", env=env, cwd=cwd) for t in TOOLS}
    assert ls["gw"] == ls["fspl"]
    assert len(ls["gw"].splitlines()) == len(SHOWN) + 1
    for seq in (1, 3, 5, 8, 10):
        info = {t: ok(t, "queue-info", "-q", "q", "-j", str(seq), env=env, cwd=cwd) for t in TOOLS}
        assert info["gw"] == info["fspl"]
    for order in ("sequence", "timestamp"):
        res = process_each(cwd, tmp_path / order, "--order-by", order, tz=tz)
        assert res["gw"] == res["fspl"]
        rcs, files, left, _ = res["gw"]
        assert rcs == [0] and left == [] and len(files) == 2 * len(SHOWN) + 1
    if tz == "Asia/Tokyo":
        assert b"+10000-01-01T08:59:60+09:00" in ls["gw"]
    if tz == "America/Los_Angeles":
        assert b"0000-12-31T16:07:02-07:52" in ls["gw"]


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "America/Los_Angeles"])
def test_ctimes_fspl_cannot_show(tmp_path: Path, tz: str) -> None:
    """fspl panics showing these; fspl-gw says so in one line.  NOP jobs with them need no
    variables and are processed by both alike."""
    local_overflow = (8210298412799, 0) if tz == "Asia/Tokyo" else (-8334632851200, 0)
    bad = [local_overflow, (0, 2_000_000_000), (1 << 62, 0), (-(1 << 63), 0), (0, U64 >> 32)]
    env = dict(os.environ, TZ=tz)
    for ct in bad:
        pkt = raw_packet(1, ct, command(b"x"))
        f, g = (run(t, "stdin-info", input=pkt, env=env) for t in TOOLS)
        assert f.returncode != 0  # a Rust panic
        assert g.returncode == 1 and g.stdout == b""
        assert g.stderr.startswith(b"Error: ctime (") and g.stderr.count(b"\n") == 1, g.stderr
    nops = [raw_packet(i + 1, ct) for i, ct in enumerate(bad)]
    last = raw_packet(len(bad) + 1, (1700000000, 0), command(b"end"))
    src = make_queue(tmp_path / "nop", [*nops, last]).parent
    res = process_each(src, tmp_path / "nop-run", tz=tz)
    assert res["gw"] == res["fspl"]
    assert res["gw"][0] == [0] and res["gw"][2] == []
    # A command job: fspl panics on it (and on every later run); fspl-gw fails the job
    # with the reason, and the on-error policy decides.
    second = raw_packet(2, (1700000000, 0), command(b"end"))
    src = make_queue(tmp_path / "cmd", [raw_packet(1, bad[0], command(b"x")), second]).parent
    res = process_each(src, tmp_path / "cmd-run", "--on-error", "delete", tz=tz)
    assert res["fspl"][0] != [0] and len(res["fspl"][2]) == 2
    rcs, files, left, nextseq = res["gw"]
    assert rcs == [0] and left == [] and nextseq == b"3\n" and set(files) == {"2.env", "2.payload", "order"}
    base = tmp_path / "retry"
    shutil.copytree(src, base)
    r = run("gw", "queue-process", "-q", "q", "true", cwd=base, env=env)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert b"cannot be shown as a date" in r.stderr.splitlines()[-1]


def test_nextseq_wraps_after_2_64_minus_1_as_in_fspl(tmp_path: Path) -> None:
    """fspl's counters are u64 that wrap: prepare hands out 2⁶⁴−1 then 0, queue-process
    runs job 2⁶⁴−1 once, then job 0, and stops at 1."""
    pkts: dict[str, list[bytes]] = {}
    for tool in TOOLS:
        sf = tmp_path / f"seq-{tool}"
        sf.write_text(f"{U64}\n")
        pkts[tool] = [ok(tool, "prepare", "-s", sf, "-i", "-", "--", name, input=name.encode())
                      for name in ("first", "second")]
        assert sf.read_bytes() == b"1\n"
        seqs = [ok("fspl", "stdin-info", input=p).split(b"\n", 1)[0] for p in pkts[tool]]
        assert seqs == [b"FSPL_SEQ=%d" % U64, b"FSPL_SEQ=0"]
    src = make_queue(tmp_path / "src", [pkts["gw"][1], pkts["fspl"][0]], nextseq=U64)
    res = process_each(src.parent, tmp_path / "run", "--allow-job-params", runs=2)
    assert res["gw"] == res["fspl"]
    rcs, files, left, nextseq = res["gw"]
    assert rcs == [0, 0] and left == [] and nextseq == b"1\n"
    assert files["order"] == b"%d first\n0 second\n" % U64


@pytest.mark.parametrize("on_error", ["leave", "delete"])
def test_failing_job_at_2_64_minus_1_advances_as_in_fspl(tmp_path: Path, on_error: str) -> None:
    src = make_queue(tmp_path / "src", [raw_packet(U64, (1700000000, 0), "Fail")], nextseq=U64)
    res = process_each(src.parent, tmp_path / "run", "--on-error", on_error, runs=2)
    assert res["gw"] == res["fspl"]
    assert res["gw"][0] == [0, 0] and res["gw"][3] == b"0\n"
