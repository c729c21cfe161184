"""Dispersal: hand-off rules, NOP/Fail policy, keys, and crash recovery states."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import JobFailedError, LockBusyError
from fspl_gateway.core.seqfile import SeqFile, read_unlocked
from fspl_gateway.gateway.disperse import DisperseOpts, disperse, handoff_dir, pending
from tests.helpers import run_gw
from tests.parallel.util import add_jobs, job_names


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, list[Path]]:
    inc = tmp_path / "incoming"
    q.queue_init(str(inc))
    workers = []
    for i in range(3):
        w = tmp_path / f"w{i}"
        q.queue_init(str(w))
        workers.append(w)
    return inc, workers


def _seqs_in(w: Path) -> list[int]:
    return sorted(j.meta.seq for j in q.scan(str(w)))


def test_fills_each_worker_up_to_per_worker_in_sequence_order(setup):
    inc, workers = setup
    add_jobs(inc, range(1, 11))
    res = disperse(DisperseOpts(str(inc), [str(w) for w in workers], per_worker=2))
    assert len(res.moved) == 6
    assert sorted(s for w in workers for s in _seqs_in(w)) == [1, 2, 3, 4, 5, 6]
    assert all(len(_seqs_in(w)) == 2 for w in workers)
    assert read_unlocked(q.seqfile_path(str(inc))) == 7
    assert sorted(j.meta.seq for j in q.scan(str(inc))) == [7, 8, 9, 10]
    # nothing left in the hand-off areas
    assert all(not os.listdir(handoff_dir(str(w))) for w in workers)
    # a second pass moves nothing: every worker is full
    assert disperse(DisperseOpts(str(inc), [str(w) for w in workers], per_worker=2)).moved == []


def test_sequence_gap_stops_dispersal(setup):
    inc, workers = setup
    add_jobs(inc, [1, 2, 4, 5])
    res = disperse(DisperseOpts(str(inc), [str(w) for w in workers], per_worker=5))
    assert len(res.moved) == 2
    assert read_unlocked(q.seqfile_path(str(inc))) == 3


def test_timestamp_order_ignores_gaps_and_nextseq(setup):
    inc, workers = setup
    add_jobs(inc, [9, 3, 7])
    res = disperse(DisperseOpts(str(inc), [str(workers[0])], per_worker=5, order_by="timestamp"))
    assert len(res.moved) == 3
    assert read_unlocked(q.seqfile_path(str(inc))) == 1


def test_nop_consumed_and_fail_follows_on_error(setup):
    inc, workers = setup
    add_jobs(inc, [1, 2, 3], cmd={1: "NOP", 2: "Fail"})
    ws = [str(w) for w in workers]
    with pytest.raises(JobFailedError):
        disperse(DisperseOpts(str(inc), ws))
    # NOP 1 consumed, Fail 2 left in place, nextseq stuck at 2
    assert read_unlocked(q.seqfile_path(str(inc))) == 2
    assert sorted(j.meta.seq for j in q.scan(str(inc))) == [2, 3]
    res = disperse(DisperseOpts(str(inc), ws, on_error="leave"))
    assert res.fails == 1 and len(res.moved) == 1
    assert sorted(j.meta.seq for j in q.scan(str(inc))) == [2]  # left, but passed
    assert read_unlocked(q.seqfile_path(str(inc))) == 4


def test_key_routes_equal_keys_to_the_worker_holding_that_key(setup):
    inc, workers = setup
    env = {s: {b"K": b"a" if s % 2 else b"b"} for s in range(1, 7)}
    add_jobs(inc, range(1, 7), env=env)
    ws = [str(w) for w in workers]
    disperse(DisperseOpts(str(inc), ws, per_worker=1, key="K"))
    holders: dict[bytes, set[str]] = {}
    for w in ws:
        for j in q.scan(w):
            holders.setdefault(env[j.meta.seq][b"K"], set()).add(w)
    # every job is out (key owners take theirs even when "full"), each key on one worker
    assert sum(len(_seqs_in(Path(w))) for w in ws) == 6
    assert all(len(v) == 1 for v in holders.values())


def test_lock_busy_fails_at_once_without_wait(setup):
    inc, workers = setup
    add_jobs(inc, [1])
    with SeqFile(q.seqfile_path(str(inc)), create_lock=False):
        with pytest.raises(LockBusyError):
            disperse(DisperseOpts(str(inc), [str(workers[0])]))
    assert job_names(workers[0]) == set()


@pytest.mark.parametrize("state", ["staged", "unlinked", "incremented"])
def test_recovery_completes_an_interrupted_handoff_exactly_once(setup, state):
    """Recreate each crash point of a hand-off by hand and check the next pass."""
    inc, workers = setup
    names = add_jobs(inc, [1, 2])
    w = str(workers[0])
    os.makedirs(handoff_dir(w))
    src = os.path.join(q.jobs_dir(str(inc)), names[1])
    os.link(src, os.path.join(handoff_dir(w), names[1]))
    if state in ("unlinked", "incremented"):
        os.unlink(src)
    if state == "incremented":
        with SeqFile(q.seqfile_path(str(inc)), create_lock=False) as sf:
            sf.increment()
    res = disperse(DisperseOpts(str(inc), [w, str(workers[1])], per_worker=1))
    assert res.recovered == 1
    all_seqs = _seqs_in(workers[0]) + _seqs_in(workers[1])
    assert sorted(all_seqs) == [1, 2]  # job 1 once (the recovered one), job 2 handed on
    assert _seqs_in(workers[0]) == [1]
    assert read_unlocked(q.seqfile_path(str(inc))) == 3
    assert q.pending_count(str(inc)) == 0
    assert pending(w) == [names[1]]


def test_cli_disperse_matches_library(setup):
    inc, workers = setup
    add_jobs(inc, range(1, 4))
    r = run_gw("disperse", "-q", str(inc), "--to", str(workers[0]), "--to", str(workers[1]))
    assert r.returncode == 0, r.stderr
    assert len(job_names(workers[0])) == 1 and len(job_names(workers[1])) == 1
    r = run_gw("disperse", "-q", str(inc), "--to", str(inc / "nope"))
    assert r.returncode == 1 and b"not a queue directory" in r.stderr
