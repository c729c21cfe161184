"""The workers supervisor: every job exactly once, per-key order, graceful stop, and
kill -9 trials (supervisor, single workers, the whole process group)."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from tests.parallel.util import add_jobs, job_names

# Each job logs "start <seq> <queuedir> <file> <t>" and "end <seq> <queuedir> <file> <t>".
JOB = r'''
echo "start $FSPL_PARAM_1 $FSPL_JOB_QUEUEDIR $FSPL_JOB_FILENAME $(date +%s.%N) $FSPL_SET_K" >> "$LOG"
sleep "$SLEEP"
echo "end $FSPL_PARAM_1 $FSPL_JOB_QUEUEDIR $FSPL_JOB_FILENAME $(date +%s.%N) $FSPL_SET_K" >> "$LOG"
'''


def _workers_cmd(inc: Path, n: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fspl_gateway", "workers", "-q", str(inc), "-n", str(n),
            *extra, "sh", "--", "-c", JOB]


def _env(log: Path, sleep: float) -> dict[str, str]:
    return {**os.environ, "LOG": str(log), "SLEEP": str(sleep)}


def _read_log(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.strip()]


def _reruns(workdir: Path) -> set[str]:
    names: set[str] = set()
    for p in workdir.glob("worker-*/.fspl-gw/rerun.log"):
        names |= {line.split()[-1] for line in p.read_text().splitlines() if line.strip()}
    return names


def _check_exactly_once(log: Path, workdir: Path, seqs: range) -> None:
    entries = _read_log(log)
    ends = collections.Counter(int(e[1]) for e in entries if e[0] == "end")
    assert set(ends) == set(seqs), f"missing: {sorted(set(seqs) - set(ends))[:10]}"
    # a job is only ever in one worker queue: never handed out twice
    where: dict[int, set[str]] = collections.defaultdict(set)
    names: dict[int, str] = {}
    for e in entries:
        where[int(e[1])].add(e[2])
        names[int(e[1])] = e[3]
    assert all(len(v) == 1 for v in where.values()), "a job ran in two worker queues"
    # a job may run twice only if its command was running when its worker was killed,
    # and then the rerun is recorded
    reruns = _reruns(workdir)
    dups = {s for s, c in ends.items() if c > 1}
    assert all(names[s] in reruns for s in dups), (dups, reruns)


@pytest.mark.parametrize("n", [2, 4])
def test_200_jobs_each_exactly_once(tmp_path: Path, n: int) -> None:
    inc = tmp_path / "in"
    q.queue_init(str(inc))
    add_jobs(inc, range(1, 201))
    log = tmp_path / "log"
    r = subprocess.run(_workers_cmd(inc, n, "--allow-job-params"), env=_env(log, 0),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    _check_exactly_once(log, tmp_path / "in.workers", range(1, 201))
    ends = [e for e in _read_log(log) if e[0] == "end"]
    assert len(ends) == 200
    assert len({e[2] for e in ends}) == n  # every worker did some
    assert job_names(inc) == set()
    assert (inc / "nextseq").read_text() == "201\n"


def test_per_key_order_and_mutual_exclusion(tmp_path: Path) -> None:
    inc = tmp_path / "in"
    q.queue_init(str(inc))
    keys = [b"a", b"b", b"c"]
    env = {s: {b"K": keys[s % 3]} for s in range(1, 61)}
    add_jobs(inc, range(1, 61), env=env)
    log = tmp_path / "log"
    r = subprocess.run(_workers_cmd(inc, 3, "--allow-job-params", "--key", "K"),
                       env=_env(log, 0.01), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    _check_exactly_once(log, tmp_path / "in.workers", range(1, 61))
    for k in ("a", "b", "c"):
        events = [e for e in _read_log(log) if e[5] == k]
        # in log order: start/end strictly alternate (one at a time) and seqs increase
        kinds = [e[0] for e in events]
        assert kinds == ["start", "end"] * (len(kinds) // 2)
        starts = [int(e[1]) for e in events if e[0] == "start"]
        assert starts == sorted(starts) and len(starts) == 20


def test_sigterm_lets_running_jobs_finish(tmp_path: Path) -> None:
    inc = tmp_path / "in"
    q.queue_init(str(inc))
    add_jobs(inc, range(1, 21))
    log = tmp_path / "log"
    p = subprocess.Popen(_workers_cmd(inc, 2, "--allow-job-params"), env=_env(log, 0.6),
                         stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline and not any(e[0] == "start" for e in _read_log(log)):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    entries = _read_log(log)
    started = {e[1] for e in entries if e[0] == "start"}
    ended = {e[1] for e in entries if e[0] == "end"}
    assert started and started == ended  # nothing was cut off
    assert len(ended) < 20  # and it did stop taking jobs
    # no job is half-moved: each remaining job is in exactly one place, none in hand-off
    work = tmp_path / "in.workers"
    remaining = [n for w in work.glob("worker-*") for n in job_names(w)] + list(job_names(inc))
    assert len(remaining) == len(set(remaining)) == 20 - len(ended)
    assert not any(list((w / ".fspl-gw" / "handoff").glob("fspl-*")) for w in work.glob("worker-*"))


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout
    except FileNotFoundError:
        return []
    return [int(x) for x in out.split()]


@pytest.mark.parametrize("mode", ["supervisor", "worker", "group"])
def test_kill_9_trials_then_rerun(tmp_path: Path, mode: str) -> None:
    rng = random.Random(hash(mode) & 0xFFFF)
    inc = tmp_path / "in"
    q.queue_init(str(inc))
    total = 120
    add_jobs(inc, range(1, total + 1))
    log = tmp_path / "log"
    work = tmp_path / "in.workers"
    for _trial in range(6):
        p = subprocess.Popen(_workers_cmd(inc, 3, "--allow-job-params", "--grace", "5"),
                             env=_env(log, 0.01), stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(0.2, 0.8))
        if mode == "supervisor":
            p.kill()
        elif mode == "worker":
            kids = [k for k in _children(p.pid)]
            if kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
        else:
            os.killpg(p.pid, signal.SIGKILL)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if mode == "supervisor":
            time.sleep(0.3)  # orphaned workers got SIGTERM (PDEATHSIG) and finish
    r = subprocess.run(_workers_cmd(inc, 3, "--allow-job-params"), env=_env(log, 0.0),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    _check_exactly_once(log, work, range(1, total + 1))
    assert job_names(inc) == set()
    assert all(not job_names(w) for w in work.glob("worker-*"))


def test_interrupted_handoff_left_by_a_crash_is_run_exactly_once(tmp_path: Path) -> None:
    """A crash left job 1 staged in worker-2's hand-off area (and still in incoming):
    the next run completes the hand-off and runs it once, whichever worker recovers it."""
    inc = tmp_path / "in"
    q.queue_init(str(inc))
    names = add_jobs(inc, range(1, 7))
    work = tmp_path / "in.workers"
    work.mkdir()
    for i in (1, 2):
        q.queue_init(str(work / f"worker-{i}"))
    hand = work / "worker-2" / ".fspl-gw" / "handoff"
    hand.mkdir(parents=True)
    os.link(inc / "jobs" / names[1], hand / names[1])
    log = tmp_path / "log"
    r = subprocess.run(_workers_cmd(inc, 2, "--allow-job-params"), env=_env(log, 0),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    _check_exactly_once(log, work, range(1, 7))
    assert collections.Counter(e[1] for e in _read_log(log) if e[0] == "end")["1"] == 1
    assert not list(hand.iterdir())


def test_a_half_made_worker_queue_is_replaced_whole(tmp_path: Path) -> None:
    """A kill -9 while a worker queue was being made used to leave its directory without
    jobs/, and every later run failed ("cannot create queue …: File exists").  Worker queues
    are now made under a temporary name and renamed into place: such an empty directory is
    replaced by a whole queue, a directory with other things in it is refused with one
    line, and a queue that is there is left as it is."""
    from fspl_gateway.core.errors import QueueError
    from fspl_gateway.gateway.disperse import ensure_worker_queue

    inc = tmp_path / "in"
    q.queue_init(str(inc))
    add_jobs(inc, range(1, 7))
    work = tmp_path / "in.workers"
    (work / "worker-2").mkdir(parents=True)  # what the kill left
    log = tmp_path / "log"
    r = subprocess.run(_workers_cmd(inc, 2, "--allow-job-params"), env=_env(log, 0.0),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(int(rec[1]) for rec in _read_log(log) if rec[0] == "end") == list(range(1, 7))
    for w in ("worker-1", "worker-2"):
        assert (work / w / "jobs").is_dir() and (work / w / "nextseq").is_file()
    assert sorted(os.listdir(work)) == ["worker-1", "worker-2"]  # no temporary left
    odd = work / "worker-9"
    (odd / "notes").mkdir(parents=True)
    with pytest.raises(QueueError, match="cannot create worker queue .*worker-9"):
        ensure_worker_queue(str(odd))
    assert os.listdir(odd) == ["notes"] and sorted(os.listdir(work)) == [
        "worker-1", "worker-2", "worker-9"]
    (work / "worker-1" / "jobs" / "keep").write_text("x")
    ensure_worker_queue(str(work / "worker-1"))
    assert (work / "worker-1" / "jobs" / "keep").read_text() == "x"
