"""disperse killed in its final hand-off step (issue 12 item 6): the job must end up in
the worker's jobs/ exactly once — never "File exists" on every later pass, never handed
out again after the worker ran it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.seqfile import SeqFile, read_unlocked
from fspl_gateway.gateway.disperse import FAULT_ENV, DisperseOpts, disperse, handoff_dir
from tests.parallel.util import add_jobs, job_names


@pytest.fixture
def queues(tmp_path: Path) -> tuple[Path, Path]:
    inc, w = tmp_path / "incoming", tmp_path / "w1"
    q.queue_init(str(inc))
    q.queue_init(str(w), append_only=True)
    return inc, w


def _left_under_both_names(inc: Path, w: Path) -> str:
    """The state a kill between the link and the unlink of the final move left: steps
    1-3 done, the job in the worker's jobs/ *and* still in its hand-off area."""
    name = add_jobs(inc, [1])[1]
    os.makedirs(handoff_dir(str(w)))
    staged = os.path.join(handoff_dir(str(w)), name)
    os.link(inc / "jobs" / name, staged)
    os.unlink(inc / "jobs" / name)
    with SeqFile(q.seqfile_path(str(inc)), create_lock=False) as sf:
        sf.increment()
    os.link(staged, w / "jobs" / name)
    return name


def test_move_left_under_both_names_is_settled_once(queues: tuple[Path, Path]) -> None:
    inc, w = queues
    name = _left_under_both_names(inc, w)
    opts = DisperseOpts(str(inc), [str(w)], per_worker=5)
    res = disperse(opts)  # was: FileExistsError on this and every later pass
    assert res.recovered == 1
    assert job_names(w) == {name} and os.listdir(handoff_dir(str(w))) == []
    os.unlink(w / "jobs" / name)  # the worker ran it
    assert disperse(opts).moved == [] and job_names(w) == set()  # not handed out again
    assert read_unlocked(q.seqfile_path(str(inc))) == 2


def test_a_different_job_of_that_name_does_not_block_dispersal(queues: tuple[Path, Path],
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    inc, w = queues
    name = _left_under_both_names(inc, w)
    os.unlink(w / "jobs" / name)
    (w / "jobs" / name).write_bytes(b"another job entirely")
    add_jobs(inc, [2])
    res = disperse(DisperseOpts(str(inc), [str(w)], per_worker=5))
    assert len(res.moved) == 1
    assert "holds a different job of that name" in caplog.text


def test_sigkill_at_the_final_hand_off_step(queues: tuple[Path, Path], tmp_path: Path) -> None:
    inc, w = queues
    names = add_jobs(inc, [1, 2])
    reached = tmp_path / "reached"
    env = {**os.environ, FAULT_ENV: "disperse-deliver", FAULT_ENV + "_FILE": str(reached)}
    proc = subprocess.Popen([sys.executable, "-m", "fspl_gateway", "disperse", "-q", str(inc),
                             "--to", str(w), "--per-worker", "5"], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not reached.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.listdir(handoff_dir(str(w))) == [names[1]]  # killed mid hand-off
    opts = DisperseOpts(str(inc), [str(w)], per_worker=5)
    res = disperse(opts)
    assert res.recovered == 1 and len(res.moved) == 1
    assert job_names(w) == {names[1], names[2]}
    assert os.listdir(handoff_dir(str(w))) == []
    for n in names.values():  # the worker runs both
        os.unlink(w / "jobs" / n)
    assert disperse(opts).moved == [] and job_names(w) == set()
    assert read_unlocked(q.seqfile_path(str(inc))) == 3
