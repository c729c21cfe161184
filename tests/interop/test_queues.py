"""Queues: each tool reads and processes the other's queues with identical output, the
same environment seen by the commands, and the same exit codes."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from .util import TOOLS, argv, ok, run

RECORD = 'd="$REC"; env | grep ^FSPL_ | sort > "$d/$FSPL_SEQ.env"; cat > "$d/$FSPL_SEQ.payload"; echo "$FSPL_SEQ $*" >> "$d/order"'


def build_mixed_queue(base: Path, n: int = 6) -> Path:
    """Queue ``base/q`` with jobs 1..n, alternately prepared and written by fspl and by
    fspl-gw, in shuffled seq order, with params, FSPL_SET_ variables and payloads."""
    qd = base / "q"
    ok("fspl", "queue-init", "-q", qd)
    order = [3, 1, 6, 2, 5, 4][:n] if n <= 6 else list(range(n, 0, -1))
    for i, seq in enumerate(order):
        tool = TOOLS[i % 2]
        writer = TOOLS[(i // 2) % 2]
        sf = base / f"seq-{seq}"
        sf.write_text(f"{seq}\n")
        env = dict(os.environ, FSPL_SET_TOOL=tool, FSPL_SET_N=str(seq))
        pkt = ok(tool, "prepare", "-s", sf, "-i", "-", "--", f"p{seq}", "x y",
                 input=b"payload %d\n" % seq * (seq * 100), env=env)
        ok(writer, "queue-write", "-q", qd, input=pkt)
        time.sleep(0.002)  # distinct ctimes
    return qd


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mixed_queue(tmp_path_factory.mktemp("mixed"))


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_ls_info_payload_identical(mixed: Path, tz: str) -> None:
    env = dict(os.environ, TZ=tz)
    cwd = mixed.parent
    ls = {t: ok(t, "queue-ls", "-q", "q", env=env, cwd=cwd) for t in TOOLS}
    assert ls["fspl"] == ls["gw"]
    assert len(ls["gw"].splitlines()) == 7
    for seq in (1, 4, 6) if tz != "UTC" else range(1, 7):
        info = {t: ok(t, "queue-info", "-q", "q", "-j", str(seq), env=env, cwd=cwd) for t in TOOLS}
        assert info["fspl"] == info["gw"] and b"FSPL_JOB_FULLPATH=q/jobs/fspl-" in info["gw"]
        if tz == "UTC":
            pay = {t: ok(t, "queue-payload", "-q", "q", "-j", str(seq), cwd=cwd) for t in TOOLS}
            assert pay["fspl"] == pay["gw"] == b"payload %d\n" % seq * (seq * 100)


def test_get_set_next_interop(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    ok("gw", "queue-init", "-q", qd)
    assert ok("fspl", "queue-get-next", "-q", qd) == b"1\n"
    ok("fspl", "queue-set-next", "-q", qd, "41")
    assert ok("gw", "queue-get-next", "-q", qd) == b"41\n"
    ok("gw", "queue-set-next", "-q", qd, "18446744073709551615")
    assert ok("fspl", "queue-get-next", "-q", qd) == b"18446744073709551615\n"
    assert (qd / "nextseq").read_bytes() == b"18446744073709551615\n"
    sf = tmp_path / "s"
    ok("fspl", "prepare-set-next", "-s", sf, "7")
    assert ok("gw", "prepare-get-next", "-s", sf) == b"7\n"
    ok("gw", "prepare-set-next", "-s", sf, "9")
    assert ok("fspl", "prepare-get-next", "-s", sf) == b"9\n"
    # both create the same queue layout
    ok("fspl", "queue-init", "-q", tmp_path / "qf")
    assert sorted(os.listdir(tmp_path / "qf")) == sorted(os.listdir(qd))
    assert (tmp_path / "qf" / "nextseq").read_bytes() == b"1\n"
    ok("gw", "queue-init", "-q", tmp_path / "qg")
    assert (tmp_path / "qg" / "nextseq").read_bytes() == b"1\n"


@pytest.mark.parametrize("extra", [[], ["--order-by=Timestamp"], ["--allow-job-params", "-n", "4"]])
def test_mixed_queue_processed_same_by_either(mixed: Path, tmp_path: Path, extra: list[str]) -> None:
    results = {}
    for tool in TOOLS:
        base = tmp_path / tool
        shutil.copytree(mixed.parent, base, symlinks=True)
        rec = base / "rec"
        rec.mkdir()
        env = dict(os.environ, REC=str(rec), TZ="Asia/Kolkata")
        ok(tool, "queue-process", "-q", "q", *extra, "sh", "--", "-c", RECORD, "sh", cwd=base,
           env=env)
        files = {p.name: p.read_bytes() for p in sorted(rec.iterdir())}
        left = sorted(p.name for p in (base / "q" / "jobs").iterdir())
        results[tool] = (files, left, (base / "q" / "nextseq").read_bytes())
    assert results["fspl"] == results["gw"]
    files = results["gw"][0]
    want = [1, 2, 3, 4] if "-n" in extra else [1, 2, 3, 4, 5, 6]
    if "--order-by=Timestamp" in extra:
        want = [3, 1, 6, 2, 5, 4]
    assert [int(x.split()[0]) for x in files["order"].decode().splitlines()] == want
    assert b"FSPL_SET_TOOL=" in files["1.env"]


def test_saveboth_never_delete_same(mixed: Path, tmp_path: Path) -> None:
    results = {}
    for tool in TOOLS:
        base = tmp_path / tool
        shutil.copytree(mixed.parent, base)
        ok(tool, "queue-process", "-q", "q", "--output-to", "saveboth", "--never-delete", "-n", "2",
           "sh", "--", "-c", 'echo "out $FSPL_SEQ"; echo "err $FSPL_SEQ" >&2', cwd=base)
        jobs = base / "q" / "jobs"
        results[tool] = sorted((p.name, p.read_bytes()) for p in jobs.iterdir()
                               if p.name.endswith(".out"))
        assert len(list(jobs.glob("*.fspl"))) == 6
    assert results["fspl"] == results["gw"] and len(results["gw"]) == 2


def _hold_with(holder: str, qd: Path) -> subprocess.Popen[bytes]:
    if holder == "flock":
        p = subprocess.Popen(["flock", str(qd / "nextseq.lock"), "sleep", "30"],
                             start_new_session=True)
    else:  # the other tool, busy with a slow job
        p = subprocess.Popen([*argv(holder), "queue-process", "-q", str(qd), "sleep", "--", "30"],
                             start_new_session=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    fd = os.open(qd / "nextseq.lock", os.O_RDWR)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                return p
            assert time.monotonic() < deadline, "holder never took the lock"
            time.sleep(0.02)
    finally:
        os.close(fd)


@pytest.mark.parametrize("holder", ["flock", "fspl", "gw"])
def test_lock_busy_same_exit_code(tmp_path: Path, holder: str) -> None:
    qd = tmp_path / "q"
    ok("fspl", "queue-init", "-q", qd)
    ok("gw", "queue-write", "-q", qd, input=ok("fspl", "prepare", "-s", "-"))
    p = _hold_with(holder, qd)
    try:
        for tool in TOOLS:
            for cmd in (["queue-process", "-q", qd, "true"], ["queue-get-next", "-q", qd],
                        ["queue-set-next", "-q", qd, "5"]):
                t0 = time.monotonic()
                r = run(tool, *cmd)
                assert r.returncode == 1, (tool, cmd, r.stderr)
                assert time.monotonic() - t0 < 5  # at once, no waiting
        # ls/info do not take the lock
        assert ok("gw", "queue-ls", "-q", qd) == ok("fspl", "queue-ls", "-q", qd)
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    assert ok("gw", "queue-get-next", "-q", qd) == b"1\n"


def _rc_both(*args: str | os.PathLike[str], cwd: Path | None = None) -> dict[str, int]:
    return {t: run(t, *args, cwd=cwd).returncode for t in TOOLS}


def test_error_exit_codes_equal(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    ok("fspl", "queue-init", "-q", qd)
    for _ in range(2):  # duplicate seq 1
        ok("gw", "queue-write", "-q", qd, input=ok("fspl", "prepare", "-s", "-"))
    cases = {
        "missing job": (["queue-info", "-q", qd, "-j", "7"], 1),
        "missing job payload": (["queue-payload", "-q", qd, "-j", "7"], 1),
        "duplicate seq": (["queue-process", "-q", qd, "true"], 1),
        "duplicate seq info": (["queue-info", "-q", qd, "-j", "1"], 1),
        "nonexistent queue ls": (["queue-ls", "-q", tmp_path / "nope"], 1),
        "nonexistent queue process": (["queue-process", "-q", tmp_path / "nope", "true"], 1),
        "nonexistent get-next": (["queue-get-next", "-q", tmp_path / "nope"], 1),
        "init existing": (["queue-init", "-q", qd], 1),
        "bad on-error": (["queue-process", "-q", qd, "--on-error", "maybe", "true"], 2),
        "bad order-by": (["queue-process", "-q", qd, "--order-by", "size", "true"], 2),
        "bad output-to": (["queue-process", "-q", qd, "--output-to", "x", "true"], 2),
        "missing -q": (["queue-ls"], 2),
        "missing command": (["queue-process", "-q", qd], 2),
        "bad job id": (["queue-info", "-q", qd, "-j", "x"], 2),
        "unknown subcommand": (["frobnicate"], 2),
        "missing input file": (["prepare", "-s", "-", "-i", tmp_path / "nope"], 1),
    }
    for what, (args, want) in cases.items():
        rc = _rc_both(*args)
        assert rc == {"fspl": want, "gw": want}, what
    # duplicates are fine in timestamp order
    assert _rc_both("queue-ls", "-q", qd) == {"fspl": 0, "gw": 0}


def test_retry_and_append_only_exit_codes(tmp_path: Path) -> None:
    for tool in TOOLS:
        qd = tmp_path / f"q-{tool}"
        ok(tool, "queue-init", "-q", qd)
        ok(tool, "queue-write", "-q", qd, input=ok(tool, "prepare", "-s", "-"))
        assert run(tool, "queue-process", "-q", qd, "false").returncode == 1
        assert run(tool, "queue-process", "-q", qd, "--on-error", "Leave", "false").returncode == 0
        assert ok(tool, "queue-get-next", "-q", qd) == b"2\n"
        (tmp_path / f"s-{tool}").write_text("2\n")
        ok(tool, "queue-write", "-q", qd, input=ok(tool, "prepare-fail", "-s", tmp_path / f"s-{tool}"))
        assert run(tool, "queue-process", "-q", qd, "--on-error=DELETE", "true").returncode == 0
        assert ok(tool, "queue-ls", "-q", qd).count(b"\n") == 2  # the left job 1 only
        assert ok(tool, "queue-get-next", "-q", qd) == b"3\n"
        ao = tmp_path / f"ao-{tool}"
        ok(tool, "queue-init", "-q", ao, "--append-only")
        assert sorted(os.listdir(ao)) == ["jobs"]
    assert _rc_both("queue-process", "-q", tmp_path / "ao-fspl", "true") == {"fspl": 1, "gw": 1}
    assert _rc_both("queue-process", "-q", tmp_path / "ao-gw", "true") == {"fspl": 1, "gw": 1}


def _bogus_header(claim: int) -> bytes:
    h = struct.pack(">12sHQI", b"*FILESPOOLER", 1, claim, 0)
    return h + struct.pack(">I", zlib.crc32(h)) + b"x" * 64


def test_huge_metadata_claim_documented_difference(tmp_path: Path) -> None:
    """A header claiming 2 GiB (or 2^63 bytes) of metadata.  fspl trusts the length: it
    allocates it (2 GiB: succeeds on a big machine after seconds; under a 1 GiB address
    space limit, and always for 2^63, it aborts with SIGABRT).  fspl-gw refuses the
    header (logged) and lists the rest of the queue with exit 0 — our documented
    difference."""
    qd = tmp_path / "q"
    ok("fspl", "queue-init", "-q", qd)
    ok("fspl", "queue-write", "-q", qd, input=ok("fspl", "prepare-nop", "-s", "-"))
    (qd / "jobs" / "fspl-2gib.fspl").write_bytes(_bogus_header(2 << 30))
    r = run("gw", "queue-ls", "-q", qd)
    assert r.returncode == 0
    assert r.stdout.count(b"\n") == 2 and b"fspl-2gib" not in r.stdout
    assert b"fspl-2gib.fspl" in r.stderr and b"exceeds the limit" in r.stderr
    assert run("gw", "queue-process", "-q", qd, "true").returncode == 0
    assert sorted(os.listdir(qd / "jobs")) == ["fspl-2gib.fspl"]
    fr = subprocess.run(["prlimit", "--as=1073741824", *argv("fspl"), "queue-ls", "-q", str(qd)],
                        capture_output=True, timeout=60)
    assert fr.returncode in (-6, 134), fr  # aborted: memory allocation failed
    (qd / "jobs" / "fspl-huge.fspl").write_bytes(_bogus_header(1 << 63))
    (qd / "jobs" / "fspl-2gib.fspl").unlink()  # (fspl would allocate its 2 GiB first)
    fr = run("fspl", "queue-ls", "-q", qd)
    assert fr.returncode in (-6, 134) and b"memory allocation" in fr.stderr
    r = run("gw", "queue-ls", "-q", qd)
    assert r.returncode == 0 and r.stdout.count(b"\n") == 1
