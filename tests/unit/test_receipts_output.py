"""The output of a job in its ran receipt (fspl_gateway.core.outcomes.OutputCapture, the
tee in fspl_gateway.core.process.run_job): saved output digested from its file, stdout
teed (EPIPE passed on to the command, a lingering background process not waited for),
kill -9 of the queue processor mid-job, the format's refusals, multi-host workers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fspl_gateway.core import outcomes
from fspl_gateway.core import queue as q
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.outcomes import OutputMode
from fspl_gateway.core.packet import Command, Meta, encode_header
from fspl_gateway.core.process import OutputTo, ProcessOpts, QueueProcessOpts, queue_process
from fspl_gateway.gateway import receipts as rc
from tests.unit.test_sync import run_cli


def _queue(tmp_path: Path, mode: OutputMode | None, n: int = 1) -> Path:
    qd = tmp_path / "q"
    tmp_path.mkdir(parents=True, exist_ok=True)
    q.queue_init(str(qd))
    rc.enable(str(qd), mode)
    for seq in range(1, n + 1):
        name = f"fspl-{seq:08d}-0000-4000-8000-000000000000.fspl"
        (qd / "jobs" / name).write_bytes(encode_header(Meta(seq, (1700000000, 0),
                                                            Command())) + b"payload\n")
    return qd


def _outcomes(qd: Path) -> list[dict[str, object]]:
    got: list[dict[str, object]] = []
    outcomes.take(QueueLayout(str(qd)).outcomes, got.extend)
    return got


def test_saved_output_is_digested_from_its_file(tmp_path: Path) -> None:
    qd = _queue(tmp_path, OutputMode.DIGEST)
    queue_process(QueueProcessOpts(str(qd), ProcessOpts("sh", ["-c", "cat; echo err >&2"]),
                                   output_to=OutputTo.SAVEBOTH, never_delete=True))
    (out,) = [p for p in os.listdir(qd / "jobs") if p.endswith(".out")]
    saved = (qd / "jobs" / out).read_bytes()
    assert saved == b"payload\nerr\n"
    (o,) = _outcomes(qd)
    assert o["output"] == {"bytes": len(saved), "sha256": hashlib.sha256(saved).hexdigest()}


def test_mode_none_and_the_setting_file(tmp_path: Path) -> None:
    qd = _queue(tmp_path, OutputMode.HEAD)
    assert (qd / ".fspl-gw" / "receipts.output").read_text() == "head\n"
    rc.enable(str(qd))  # None: left as it is
    assert outcomes.output_mode(QueueLayout(str(qd)).outcomes) == OutputMode.HEAD
    rc.enable(str(qd), OutputMode.NONE)
    assert not (qd / ".fspl-gw" / "receipts.output").exists()
    queue_process(QueueProcessOpts(str(qd), ProcessOpts("true"),
                                   output_to=OutputTo.SAVEBOTH))
    assert "output" not in _outcomes(qd)[0]


_PROCESS = [sys.executable, "-m", "fspl_gateway", "queue-process", "-q"]


def test_epipe_reaches_the_command_as_without_the_tee(tmp_path: Path) -> None:
    """Our stdout closed early: the command gets SIGPIPE, with the tee as without it."""
    statuses = []
    for mode in (OutputMode.BOTH, None):
        qd = _queue(tmp_path / (mode or "plain"), mode)
        rc.enable(str(qd))
        p = subprocess.Popen([*_PROCESS, str(qd), "--on-error", "leave", "--", "sh", "-c",
                              "exec head -c 50000000 /dev/zero"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        p.stdout.read(1000)
        p.stdout.close()
        assert p.wait(60) == 0
        (o,) = _outcomes(qd)
        statuses.append(o["status"])
        if mode is not None:
            assert isinstance(o["output"], dict) and o["output"]["bytes"] >= 1000
    assert statuses == ["killed by signal 13", "killed by signal 13"]


def test_a_background_process_holding_stdout_is_not_waited_for(tmp_path: Path) -> None:
    qd = _queue(tmp_path, OutputMode.BOTH)
    t0 = time.monotonic()
    with open(tmp_path / "stdout", "wb") as out:
        p = subprocess.Popen([*_PROCESS, str(qd), "--", "sh", "-c",
                              "echo hi; (sleep 20; echo late) & true"], stdout=out,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            rc_ = p.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the background sleep
    elapsed = time.monotonic() - t0
    assert rc_ == 0 and (tmp_path / "stdout").read_bytes() == b"hi\n"
    assert elapsed < 15, elapsed
    (o,) = _outcomes(qd)
    assert o["output"] == {"bytes": 3, "sha256": hashlib.sha256(b"hi\n").hexdigest(),
                           "head": "hi\n", "partial": True}


def test_kill_9_mid_job_then_one_outcome_of_the_rerun(tmp_path: Path) -> None:
    """kill -9 of queue-process while the teed job runs: no outcome, the job stays; the
    rerun records exactly one outcome with the rerun's output."""
    qd = _queue(tmp_path, OutputMode.DIGEST)
    marker = tmp_path / "started"
    p = subprocess.Popen([*_PROCESS, str(qd), "--", "sh", "-c",
                          f"echo first; touch {marker}; exec sleep 60"],
                         stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the orphaned sleep (its own session)
    assert _outcomes(qd) == [] and len(os.listdir(qd / "jobs")) == 1
    r = run_cli("queue-process", "-q", str(qd), "--", "sh", "-c", "echo second")
    assert r.returncode == 0 and r.stdout == "second\n"
    (o,) = _outcomes(qd)
    assert o["output"] == {"bytes": 7, "sha256": hashlib.sha256(b"second\n").hexdigest()}


def test_output_field_refusals() -> None:
    ok = {"kind": "ran", "name": "fspl-a.fspl", "seq": 1, "sha256": "a" * 64, "start": 1.0,
          "end": 2.0, "ok": True, "exit": 0, "status": "exit status 0"}
    b = {"format": rc.FORMAT, "version": 1, "batch": "0" * 32, "queue": "site-b",
         "host": "h", "created": 1.0, "sender": "0123456789ABCDEF"}
    good = rc.decode_batch(json.dumps({**b, "receipts": [
        {**ok, "output": {"bytes": 3, "sha256": "b" * 64, "head": "hi\n"}}]}).encode())
    assert good.sender == "0123456789ABCDEF"
    assert good.receipts[0].output == rc.Output(3, "b" * 64, "hi\n")
    assert rc.decode_batch(rc.encode_batch(good)) == good
    for bad in ({"bytes": -1}, {"bytes": 1, "partial": "yes"}, {"bytes": 1, "sha256": "x"}, {"bytes": 1, "head": "a\x00b"},
                {"bytes": 1, "head": "\x1b[2J"}, {"bytes": 1, "head": "x" * 9000}, "str"):
        with pytest.raises(rc.ReceiptError):
            rc.decode_batch(json.dumps({**b, "receipts": [{**ok, "output": bad}]}).encode())
    with pytest.raises(rc.ReceiptError):
        rc.decode_batch(json.dumps({**b, "sender": "../x", "receipts": []}).encode())


def test_the_config_key() -> None:
    from fspl_gateway.core.errors import ConfigError
    from fspl_gateway.gateway import receipt_settings as rset

    rs = rset.parse({"receipt_output": "digest"}, "b")
    assert rset.send_options(rs, lambda: "").output == OutputMode.DIGEST
    assert rset.send_options(rset.parse({}, "b"), lambda: "").output is None
    with pytest.raises(ConfigError, match="receipt_output"):
        rset.parse({"receipt_output": "all"}, "b")
