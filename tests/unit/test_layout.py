"""A queue's on-disk layout (core/layout), its users, and the small gateway helpers that
the pull and push engines share (quarantine, parallel map)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.layout import QueueLayout, jobs_dir, seqfile_path
from fspl_gateway.gateway.concurrency import ParallelMap
from fspl_gateway.gateway.quarantine import quarantine, quarantined


def test_every_path_is_the_on_disk_contract() -> None:
    """These names are a compatibility promise (fspl's, and ours for existing queues)."""
    lay = QueueLayout("/q")
    assert (lay.seqfile, lay.seqfile_lock, lay.jobs, lay.job("fspl-a.fspl")) == (
        "/q/nextseq", "/q/nextseq.lock", "/q/jobs", "/q/jobs/fspl-a.fspl")
    assert (seqfile_path("/q"), jobs_dir("/q")) == (lay.seqfile, lay.jobs)
    assert (q.seqfile_path, q.jobs_dir) == (seqfile_path, jobs_dir)
    assert {k: getattr(lay, k) for k in ("gw", "run_lock", "journal", "staging", "quarantine",
                                          "handoff", "worker_lock", "running", "rerun_log",
                                          "media_seen", "receipts_marker", "outcomes",
                                          "receipts_db")} == {
        "gw": "/q/.fspl-gw", "run_lock": "/q/.fspl-gw/lock",
        "journal": "/q/.fspl-gw/journal.sqlite", "staging": "/q/.fspl-gw/staging",
        "quarantine": "/q/.fspl-gw/quarantine", "handoff": "/q/.fspl-gw/handoff",
        "worker_lock": "/q/.fspl-gw/worker.lock", "running": "/q/.fspl-gw/running",
        "rerun_log": "/q/.fspl-gw/rerun.log", "media_seen": "/q/.fspl-gw/media-seen.json",
        "receipts_marker": "/q/.fspl-gw/receipts.on", "outcomes": "/q/.fspl-gw/outcomes.jsonl",
        "receipts_db": "/q/.fspl-gw/receipts.sqlite"}


def test_queue_init_makes_what_the_layout_names(tmp_path: Path) -> None:
    lay = QueueLayout(str(tmp_path / "q"))
    q.queue_init(lay.root)
    assert Path(lay.jobs).is_dir() and Path(lay.seqfile).is_file()
    assert Path(lay.seqfile_lock).is_file()


def test_quarantine_never_overwrites_and_explains(tmp_path: Path) -> None:
    qdir = str(tmp_path)
    for i in range(3):
        src = tmp_path / f"in-{i}"
        src.write_bytes(b"copy %d" % i)
        got = quarantine(qdir, str(src), "fspl-x.fspl", f"reason {i}", origin=("from", "r:x"),
                         details=[("sha256", "ab")], note="left alone")
        assert got == ("fspl-x.fspl" if i == 0 else f"fspl-x.fspl.{i}")
        assert not src.exists()
    qd = Path(QueueLayout(qdir).quarantine)
    assert [(qd / n).read_bytes() for n in quarantined(qdir)] == [b"copy 0", b"copy 1",
                                                                  b"copy 2"]
    lines = (qd / "fspl-x.fspl.2.reason").read_text().splitlines()
    assert lines[:2] == ["fspl-x.fspl", "from: r:x"] and lines[2].startswith("time: ")
    assert lines[3:] == ["sha256: ab", "reason: reason 2", "left alone"]
    assert quarantine(qdir, str(tmp_path / "gone"), "fspl-y.fspl", "r", origin=("to", "r"),
                      note="n") is None


@pytest.mark.parametrize("threads", [1, 4])
def test_parallel_map_first_error_stops_the_run(threads: int) -> None:
    ran: list[int] = []
    lock = threading.Lock()
    advanced = []

    def fn(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        time.sleep(0.01)
        with lock:
            ran.append(i)
        return i * 10

    with ParallelMap(threads, on_done=lambda: advanced.append(1)) as par:
        assert par.map(fn, range(3)) == [0, 10, 20]  # in order
        out = par.map(fn, range(3, 40))
        assert par.stop.is_set() and isinstance(par.error, ValueError)
        assert par.map(fn, range(40, 50)) == []  # stopped: nothing more runs
    assert all(r * 10 in out or r < 3 for r in ran) and len(ran) < 39
    assert len(advanced) == len(ran) + 1  # each item that ran, the failed one too
    with pytest.raises(ValueError, match="three"):
        par.raise_error()

