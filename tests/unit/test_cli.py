"""The fspl-gw command line (subprocess runs of ``python -m fspl_gateway``)."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from fspl_gateway.core.packet import Command, Meta, encode_header, read_header
from tests.helpers import FSPL_GW, run_gw


def gw(*args: str, input: bytes | None = None, rc: int = 0, cwd: Path | None = None,
       env: dict[str, str] | None = None) -> bytes:
    r = run_gw(*args, input=input, cwd=cwd, env=env)
    assert r.returncode == rc, (args, r.returncode, r.stderr.decode())
    if rc:
        err = r.stderr.decode().strip()
        assert err and "Traceback" not in err, err
        assert err.splitlines()[-1].startswith("Error: "), err  # one line at the end
    return r.stdout


def test_prepare_seq_numbers_and_payload(tmp_path: Path) -> None:
    seq = str(tmp_path / "seq")
    (tmp_path / "in").write_bytes(b"from file")
    p1 = gw("prepare", "-s", seq, "-i", str(tmp_path / "in"), "--", "x", "y")
    p2 = gw("prepare", "--seqfile", seq, "--input", "-", input=b"from stdin")
    m1, n1 = read_header(io.BytesIO(p1).read)
    m2, n2 = read_header(io.BytesIO(p2).read)
    assert (m1.seq, m2.seq) == (1, 2)
    assert m1.cmd == Command((b"x", b"y"), ()) and p1[n1:] == b"from file"
    assert p2[n2:] == b"from stdin"
    assert gw("prepare-get-next", "-s", seq) == b"3\n"
    gw("prepare-set-next", "-s", seq, "10")
    assert gw("prepare-get-next", "-s", seq) == b"10\n"
    nop = gw("prepare-nop", "-s", seq)
    fail = gw("prepare-fail", "-s", seq)
    assert read_header(io.BytesIO(nop).read)[0].cmd == "NOP"
    assert read_header(io.BytesIO(fail).read)[0].seq == 11
    assert gw("prepare-nop", "-s", "-")[30:].startswith(b"\x83\xa3seq\x01")  # "-": seq 1


def test_prepare_carries_fspl_set_env(tmp_path: Path) -> None:
    env = dict(os.environ, FSPL_SET_B="2", FSPL_SET_A="x=y")
    out = gw("prepare", "-s", "-", env=env, input=b"")
    meta = read_header(io.BytesIO(out).read)[0]
    assert isinstance(meta.cmd, Command)
    assert sorted(meta.cmd.env) == [(b"A", b"x=y"), (b"B", b"2")]


def test_prepare_missing_input_uses_no_seq(tmp_path: Path) -> None:
    seq = str(tmp_path / "seq")
    out = gw("prepare", "-s", seq, "-i", str(tmp_path / "nope"), rc=1)
    assert out == b""
    assert gw("prepare-get-next", "-s", seq) == b"1\n"


def test_queue_commands(tmp_path: Path) -> None:
    qd = str(tmp_path / "q")
    gw("queue-init", "-q", qd)
    gw("queue-init", "--queuedir", qd, rc=1)
    for s in (2, 1):
        pkt = encode_header(Meta(s, (1651970311, 0), Command((b"p",), ((b"K", b"v"),)))) + b"PL%d" % s
        gw("queue-write", "-q", qd, input=pkt)
    ls = gw("queue-ls", "-q", qd).decode().splitlines()
    assert ls[0] == f"{'ID':20} {'creation timestamp':27} filename"
    assert re.fullmatch(r"1 {20}2022-05-08T00:38:31\+00:00 {3}fspl-[0-9a-f-]{36}\.fspl", ls[1]), ls[1]
    assert ls[2].startswith("2   ")
    info = gw("queue-info", "-q", qd, "-j", "2").decode()
    assert info.startswith("FSPL_SEQ=2\nFSPL_CTIME_SECS=1651970311\n")
    assert f"FSPL_JOB_QUEUEDIR={qd}\n" in info and "FSPL_SET_K=v\n" in info
    assert gw("queue-payload", "-q", qd, "--job", "1") == b"PL1"
    gw("queue-payload", "-q", qd, "-j", "9", rc=1)
    gw("queue-info", "-q", qd, "-j", "9", rc=1)
    assert gw("queue-get-next", "-q", qd) == b"1\n"
    gw("queue-set-next", "-q", qd, "2")
    assert gw("queue-get-next", "-q", qd) == b"2\n"
    gw("queue-process", "-q", qd, "-n", "1", "sh", "--", "-c", "cat > " + str(tmp_path / "o"))
    assert (tmp_path / "o").read_bytes() == b"PL2"
    assert gw("queue-get-next", "-q", qd) == b"3\n"
    # job 1 is below nextseq: never run
    gw("queue-process", "-q", qd, "false")
    assert len(os.listdir(tmp_path / "q" / "jobs")) == 1


@pytest.mark.parametrize("args", [
    ["--on-error", "bogus"], ["--order-by", "bogus"], ["--output-to", "bogus"],
    ["-n", "x"], ["--timeout", "-1"], [],
])
def test_usage_errors_exit_2(queue: Path, args: list[str]) -> None:
    cmd = ["queue-process", "-q", str(queue), *args]
    if args:
        cmd.append("true")
    gw(*cmd, rc=2)


def test_enum_values_case_insensitive(queue: Path, tmp_path: Path) -> None:
    gw("queue-write", "-q", str(queue), input=encode_header(Meta(1, (5, 0), "Fail")))
    gw("queue-process", "-q", str(queue), "--order-by=Timestamp", "--on-error", "LEAVE",
       "--output-to", "SaveBoth", "true")
    names = sorted(os.listdir(queue / "jobs"))  # Fail left in place, its output saved
    assert len(names) == 2 and names[1] == names[0] + ".out"
    gw("queue-process", "-q", str(queue), "--order-by", "TIMESTAMP", "--on-error=Delete", "true")
    assert [n for n in os.listdir(queue / "jobs") if n.endswith(".fspl")] == []


def test_retry_failure_exit_1_and_stdin_process(tmp_path: Path) -> None:
    qd = str(tmp_path / "q")
    gw("queue-init", "-q", qd)
    gw("queue-write", "-q", qd, input=encode_header(Meta(1, (5, 0), Command())))
    gw("queue-process", "-q", qd, "false", rc=1)
    assert gw("queue-get-next", "-q", qd) == b"1\n"
    pkt = encode_header(Meta(1, (5, 0), Command((b"a",), ()))) + b"body"
    assert gw("stdin-process", "--allow-job-params", "sh", "--", "-c", 'cat; echo " $0"',
              input=pkt) == b"body a\n"
    gw("stdin-process", "false", input=pkt, rc=1)
    assert gw("stdin-payload", input=pkt) == b"body"
    assert gw("stdin-info", input=pkt).startswith(b"FSPL_SEQ=1\n")
    gw("stdin-info", input=b"garbage that is not a packet", rc=1)
    gw("stdin-info", input=b"", rc=1)


def test_append_only_and_missing_queue(tmp_path: Path) -> None:
    ao = str(tmp_path / "ao")
    gw("queue-init", "-q", ao, "--append-only")
    assert sorted(os.listdir(ao)) == ["jobs"]
    gw("queue-process", "-q", ao, "true", rc=1)
    gw("queue-get-next", "-q", ao, rc=1)
    gw("queue-ls", "-q", str(tmp_path / "missing"), rc=1)
    gw("queue-process", "-q", str(tmp_path / "missing"), "true", rc=1)


def test_misc_commands() -> None:
    assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n",
                        gw("gen-uuid"))
    assert re.fullmatch(rb"fspl-[0-9a-f-]{36}\.fspl\n", gw("gen-filename"))
    assert b"MIT" in gw("show-license")
    assert gw("-V").startswith(b"filespooler 1.2")
    assert gw("--version") == gw("-V")
    help_text = gw("--help")
    for name in (b"prepare", b"queue-process", b"stdin-info", b"gen-uuid"):
        assert name in help_text
    gw("-l", "debug", "gen-uuid")
    gw("--log-level", "TRACE", "gen-uuid")
    gw("-l", "loud", "gen-uuid", rc=2)
    gw("no-such-command", rc=2)


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5_000_000)
    p1 = subprocess.Popen([*FSPL_GW, "prepare", "-s", "-", "-i", str(big)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert p1.stdout is not None
    p1.stdout.read(10)
    p1.stdout.close()
    _, err = p1.communicate(timeout=30)
    assert b"Traceback" not in err
    assert p1.returncode != 0
