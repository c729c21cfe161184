"""Running jobs and the queue-process loop (in-process, real commands)."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import JobFailedError, LockBusyError, QueueError, SeqFileError
from fspl_gateway.core.packet import Command, Meta, encode_header
from fspl_gateway.core.process import (
    ProcessOpts,
    QueueProcessOpts,
    build_env,
    queue_process,
    run_job,
)
from fspl_gateway.core.seqfile import SeqFile, read_unlocked

from .test_queue import put_job


@pytest.fixture(autouse=True)
def _stdin_devnull() -> Iterator[None]:
    """Commands that inherit stdin (--ignore-payload) must never see a terminal."""
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def sh(script: str, *, allow: bool = False, ignore: bool = False,
       timeout: float | None = None) -> ProcessOpts:
    return ProcessOpts("sh", ["-c", script, "sh"], allow, ignore, timeout)


# A command that records the order of jobs and each job's payload.
RECORD = 'echo "$FSPL_SEQ" >> "$LOG"; cat > "$LOG.$FSPL_SEQ"'


def run(queue: Path | str, proc: ProcessOpts, **kw: object) -> int:
    return queue_process(QueueProcessOpts(str(queue), proc, **kw))  # type: ignore[arg-type]


def order(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "log"
    monkeypatch.setenv("LOG", str(p))
    return p


def cmdjob(queue: Path, seq: int, payload: bytes = b"", params: tuple[bytes, ...] = (),
           env: tuple[tuple[bytes, bytes], ...] = (), ctime: tuple[int, int] = (1700000000, 0),
           name: str | None = None) -> str:
    return put_job(queue, seq, payload, name=name, cmd=Command(params, env), ctime=ctime)


# -- environment ---------------------------------------------------------------------------
def test_env_vars_and_fullpath_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    q.queue_init("rel")
    name = cmdjob(tmp_path / "rel", 1, b"", (b"p1",), ((b"FOO", b"bar"), (b"EMPTY", b"")),
                  ctime=(1651970311, 425412511))
    out = tmp_path / "env"
    for qarg in ("rel", "./rel/"):
        cmdjob(tmp_path / "rel", 1 if qarg == "rel" else 2, name=name if qarg == "rel" else None,
               params=(b"p1",), env=((b"FOO", b"bar"), (b"EMPTY", b"")),
               ctime=(1651970311, 425412511))
        run(qarg, sh(f'env | grep ^FSPL_ | sort > {out}'))
        env = dict(line.split("=", 1) for line in out.read_text().splitlines())
        fn = env["FSPL_JOB_FILENAME"]
        assert env["FSPL_JOB_QUEUEDIR"] == qarg
        assert env["FSPL_JOB_FULLPATH"] == qarg + "/jobs/" + fn
        assert env["FSPL_CTIME_SECS"] == "1651970311"
        assert env["FSPL_CTIME_NANOS"] == "425412511"
        assert env["FSPL_CTIME_RFC3339_UTC"] == "2022-05-08T00:38:31Z"
        assert env["FSPL_CTIME_RFC3339_LOCAL"] == "2022-05-08T00:38:31+00:00"
        assert env["FSPL_PARAM_1"] == "p1"
        assert env["FSPL_SET_FOO"] == "bar" and env["FSPL_SET_EMPTY"] == ""
        assert "FSPL_PARAM_2" not in env


def test_build_env_rejects_bad_keys() -> None:
    meta = Meta(1, (0, 0), Command((), ((b"A=B", b"x"),)))
    with pytest.raises(Exception, match="cannot set environment variable"):
        build_env(meta, None, None)
    meta = Meta(1, (0, 0), Command((), ((b"A", b"x\0y"),)))
    with pytest.raises(Exception, match="NUL"):
        build_env(meta, None, None)


def test_params_with_and_without_allow(queue: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "args"
    script = f'printf "%s|" "$@" > {out}'
    cmdjob(queue, 1, params=(b"j1", b"j 2"))
    run(queue, ProcessOpts("sh", ["-c", script, "sh", "cli"]))
    assert out.read_text() == "cli|"
    assert "allow-job-params" in caplog.text
    cmdjob(queue, 2, params=(b"j1", b"j 2"))
    run(queue, ProcessOpts("sh", ["-c", script, "sh", "cli"], allow_job_params=True))
    assert out.read_text() == "cli|j1|j 2|"


def test_payload_on_stdin_and_ignore_payload(queue: Path, log: Path) -> None:
    cmdjob(queue, 1, b"payload-1")
    cmdjob(queue, 2, b"payload-2")
    run(queue, sh(RECORD), maxjobs=1)
    assert Path(f"{log}.1").read_bytes() == b"payload-1"
    run(queue, sh(RECORD, ignore=True))
    assert Path(f"{log}.2").read_bytes() == b""  # stdin was /dev/null, not the payload
    assert order(log) == [1, 2]


def test_timeout_kills(queue: Path) -> None:
    cmdjob(queue, 1)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError, match="timed out"):
        run(queue, ProcessOpts("sleep", ["30"], timeout=0.3))
    assert time.monotonic() - t0 < 5
    assert q.pending_count(str(queue)) == 1


def test_saveboth(queue: Path) -> None:
    name = cmdjob(queue, 1, b"in")
    run(queue, sh("echo out; echo err >&2; cat"), output_to="saveboth")
    out = (queue / "jobs" / (name + ".out")).read_text()
    assert sorted(out.split()) == ["err", "in", "out"]
    assert not (queue / "jobs" / name).exists()
    assert q.pending_count(str(queue)) == 0  # the .out file is not a job


# -- the loop --------------------------------------------------------------------------------
def test_sequence_order_stops_at_gap(queue: Path, log: Path) -> None:
    for s in (3, 1, 2, 5):
        cmdjob(queue, s, b"p%d" % s)
    assert run(queue, sh(RECORD)) == 3
    assert order(log) == [1, 2, 3]
    assert read_unlocked(str(queue / "nextseq")) == 4
    assert [j.meta.seq for j in q.scan(str(queue))] == [5]


def test_nop_and_fail(queue: Path, log: Path) -> None:
    put_job(queue, 1, cmd="NOP")
    put_job(queue, 2, cmd="Fail")
    cmdjob(queue, 3)
    with pytest.raises(JobFailedError, match="job 2"):
        run(queue, sh(RECORD))
    assert order(log) == []  # NOP and Fail run nothing
    assert read_unlocked(str(queue / "nextseq")) == 2
    assert sorted(j.meta.seq for j in q.scan(str(queue))) == [2, 3]


def test_on_error_retry_delete_leave(queue: Path, log: Path) -> None:
    fail_on_2 = 'echo "$FSPL_SEQ" >> "$LOG"; test "$FSPL_SEQ" != 2'
    names = {s: cmdjob(queue, s) for s in (1, 2, 3)}
    with pytest.raises(JobFailedError):
        run(queue, sh(fail_on_2))
    assert order(log) == [1, 2]
    assert read_unlocked(str(queue / "nextseq")) == 2
    assert (queue / "jobs" / names[2]).exists()
    with pytest.raises(JobFailedError):  # retry again: same job runs again
        run(queue, sh(fail_on_2), on_error="retry")
    assert order(log) == [1, 2, 2]
    # leave: advance, keep the file
    run(queue, sh(fail_on_2), on_error="leave")
    assert order(log) == [1, 2, 2, 2, 3]
    assert (queue / "jobs" / names[2]).exists() and not (queue / "jobs" / names[3]).exists()
    assert read_unlocked(str(queue / "nextseq")) == 4
    # delete: advance and remove
    cmdjob(queue, 4)
    with SeqFile(str(queue / "nextseq"), create_lock=False) as sf:
        sf.set(2)
    run(queue, sh(fail_on_2), on_error="delete", maxjobs=1)
    assert not (queue / "jobs" / names[2]).exists()
    assert read_unlocked(str(queue / "nextseq")) == 3


def test_maxjobs_and_never_delete(queue: Path, log: Path) -> None:
    for s in (1, 2, 3):
        cmdjob(queue, s)
    assert run(queue, sh(RECORD), maxjobs=2, never_delete=True) == 2
    assert order(log) == [1, 2]
    assert q.pending_count(str(queue)) == 3
    assert read_unlocked(str(queue / "nextseq")) == 3
    assert run(queue, sh(RECORD), maxjobs=0) == 0
    assert run(queue, sh(RECORD)) == 1
    assert q.pending_count(str(queue)) == 2


def test_timestamp_order_with_duplicate_seqs(queue: Path, log: Path) -> None:
    cmdjob(queue, 7, ctime=(1700000300, 0))
    cmdjob(queue, 7, ctime=(1700000100, 5))
    cmdjob(queue, 1, ctime=(1700000200, 0))
    cmdjob(queue, 2, ctime=(1700000100, 4))
    with pytest.raises(QueueError, match="two jobs"):
        run(queue, sh(RECORD))
    assert run(queue, sh('echo "$FSPL_SEQ.$FSPL_CTIME_SECS.$FSPL_CTIME_NANOS" >> "$LOG"'),
               order_by="timestamp") == 4
    assert log.read_text().split() == ["2.1700000100.4", "7.1700000100.5", "1.1700000200.0",
                                       "7.1700000300.0"]
    assert read_unlocked(str(queue / "nextseq")) == 1  # not used in timestamp order
    assert q.pending_count(str(queue)) == 0


def test_lock_busy(queue: Path) -> None:
    cmdjob(queue, 1)
    with SeqFile(str(queue / "nextseq"), create_lock=False):
        with pytest.raises(LockBusyError):
            run(queue, sh("true"))
    assert q.pending_count(str(queue)) == 1


def test_append_only_queue_cannot_be_processed(tmp_path: Path) -> None:
    q.queue_init(str(tmp_path / "ao"), append_only=True)
    with pytest.raises(SeqFileError):
        run(tmp_path / "ao", sh("true"))


@pytest.mark.parametrize("decoder,encode", [
    ("cat", lambda b: b),
    ("gzip -dc", gzip.compress),
])
def test_decoder(queue: Path, log: Path, decoder: str, encode: object) -> None:
    for s in (2, 1):
        raw = encode_header(Meta(s, (1700000000, s), Command())) + b"payload %d" % s * 1000
        (queue / "jobs" / f"fspl-{s}.fspl").write_bytes(encode(raw))  # type: ignore[operator]
    assert run(queue, sh(RECORD), decoder=decoder) == 2
    assert order(log) == [1, 2]
    assert Path(f"{log}.2").read_bytes() == b"payload 2" * 1000
    assert q.pending_count(str(queue)) == 0


def test_env_key_with_equals_fails_job_run_goes_on(queue: Path, log: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cmdjob(queue, 1, env=((b"A=B", b"x"),))
    cmdjob(queue, 2)
    with pytest.raises(JobFailedError, match="cannot set environment variable"):
        run(queue, sh(RECORD))
    assert order(log) == []
    assert run(queue, sh(RECORD), on_error="leave") == 2
    assert order(log) == [2]
    assert "cannot set environment variable b'FSPL_SET_A=B'" in caplog.text
    assert q.pending_count(str(queue)) == 1  # left


def test_missing_command_is_an_error_of_the_run(queue: Path) -> None:
    cmdjob(queue, 1)
    with pytest.raises(Exception, match="cannot run"):
        run(queue, ProcessOpts("/nonexistent/command"), on_error="delete")
    assert q.pending_count(str(queue)) == 1
    assert read_unlocked(str(queue / "nextseq")) == 1


def test_run_job_killed_by_signal() -> None:
    res = run_job(ProcessOpts("sh", ["-c", "kill -9 $$"]), Meta(1, (0, 0), Command()), None)
    assert not res.success and res.status == "killed by signal 9"


# -- die with the parent ---------------------------------------------------------------
_PARENT = r'''
import sys
from fspl_gateway.core.packet import Command, Meta
from fspl_gateway.core.process import ProcessOpts, run_job
pidfile, tied = sys.argv[1], sys.argv[2] == "1"
run_job(ProcessOpts("sh", ["-c", 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 60',
                           pidfile]),
        Meta(1, (0, 0), Command()), None, kill_on_parent_death=tied)
'''


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("tied", [True, False])
def test_command_dies_when_its_parent_is_killed(tmp_path: Path, tied: bool) -> None:
    """run_job(kill_on_parent_death=True) — the multi-host executor — and so the shared
    die_with_parent helper: SIGKILL the process that runs the job, and the command dies
    too.  Without it, the command goes on (the test can fail)."""
    import signal
    import subprocess
    import sys

    pidfile = tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(pidfile), str(int(tied))])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            assert time.monotonic() < deadline and parent.poll() is None, "no command"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + (5 if tied else 1)
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _alive(child) is not tied
    finally:
        parent.kill()
        parent.wait()
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# -- the posix_spawn path: the child is what Popen would start ---------------------------
def _child_status(tmp_path: Path, fields: str) -> str:
    out = tmp_path / "status"
    res = run_job(ProcessOpts("sh", ["-c", f"grep -E '{fields}' /proc/self/status > {out};"
                                     f" ls /proc/self/fd >> {out}"]),
                  Meta(1, (0, 0), Command()), None)
    assert res.success
    return out.read_text()


def test_command_gets_sigpipe_at_its_default(tmp_path: Path) -> None:
    """Python ignores SIGPIPE; a command must not inherit that (`yes | head` would spin)."""
    import signal

    ign = _child_status(tmp_path, "^SigIgn").split()[1]
    assert not int(ign, 16) & (1 << (signal.SIGPIPE - 1))


def test_inheritable_descriptors_are_not_passed_to_the_command(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        fds = _child_status(tmp_path, "^Pid").split()[2:]
    finally:
        os.close(r)
        os.close(w)
    assert str(w) not in fds
    assert set(fds) <= {"0", "1", "2", "3"}  # 3: ls's own listing


def test_command_searched_in_path_and_missing_one_reported(tmp_path: Path) -> None:
    assert run_job(ProcessOpts("true"), Meta(1, (0, 0), Command()), None).success
    with pytest.raises(Exception, match="cannot run 'no-such-command-x': No such file"):
        run_job(ProcessOpts("no-such-command-x"), Meta(1, (0, 0), Command()), None)
