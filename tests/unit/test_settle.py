"""The settle interval (issue 12 item 1) and the cause of a blocked queue (item 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fspl_gateway.core.packet import Meta, encode_header
from fspl_gateway.core.queue import queue_init
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.settle import is_settled, wait_needed, wait_settled
from fspl_gateway.gateway.status import queue_status, render_text
from fspl_gateway.transports import base
from fspl_gateway.transports.base import RemoteEntry
from tests.helpers import run_gw


def _job(seq: int, tail: bytes = b"") -> bytes:
    return encode_header(Meta(seq, (1700000000 + seq, 0), "NOP")) + b"payload\n" * 10 + tail


def test_is_settled_by_age_or_by_observation() -> None:
    now = 1000.5
    assert is_settled(RemoteEntry("a", 1, None, 990.5), 5, now)
    assert not is_settled(RemoteEntry("a", 1, None, 998.5), 5, now)
    assert not is_settled(RemoteEntry("a", 1, None, None), 5, now)
    assert not is_settled(RemoteEntry("a", 1, None, 2000.0), 5, now)  # future (skew)
    # a whole-second mtime counts from the end of its second
    assert not is_settled(RemoteEntry("a", 1, None, 995.0), 5, now)
    assert is_settled(RemoteEntry("a", 1, None, 994.0), 5, now)
    # unchanged between two listings settle_s apart (mtime in the future: clock skew)
    e = RemoteEntry("a", 1, None, 2000.0)
    assert is_settled(e, 5, now, seen=e, seen_at=now - 5)
    assert not is_settled(e, 5, now, seen=RemoteEntry("a", 0, None, 2000.0), seen_at=now - 5)
    assert is_settled(RemoteEntry("a", 1, None, None), 0, now)
    assert wait_needed([RemoteEntry("a", 1, None, 998.5)], 5, now) == pytest.approx(3.0)


def test_wait_settled_keeps_order_and_drops_changed() -> None:
    t = [100.0]
    old = RemoteEntry("old", 1, None, 10.5)
    young = RemoteEntry("young", 1, None, 99.5)
    growing = RemoteEntry("growing", 1, None, 99.5)
    gone = RemoteEntry("gone", 1, None, 99.5)
    again = [old, young, RemoteEntry("growing", 2, None, 100.5)]

    def clock() -> float:
        return t[0]

    def relist() -> list[RemoteEntry]:
        t[0] += 2
        return again

    import threading
    ready, changing = wait_settled([old, young, growing, gone], 2.0, relist,
                                   threading.Event(), clock)
    assert [e.name for e in ready] == ["old", "young"]
    assert [(e.name, e.size) for e in changing] == [("growing", 2)]


def test_old_file_taken_at_once_young_one_after_the_interval(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.delenv("FSPL_GW_SETTLE")  # the default interval (5 s)
    (tmp_path / "r" / "jobs").mkdir(parents=True)
    old = tmp_path / "r" / "jobs" / "fspl-old.fspl"
    old.write_bytes(_job(1))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    q = tmp_path / "q"
    queue_init(str(q))
    t = base.create("local", str(tmp_path / "r"))
    assert t.settle_interval() == 5.0
    assert base.create("local", str(tmp_path / "r"), {"settle": "2s"}).settle_interval() == 2
    t0 = time.monotonic()
    res = pull(t, q, SyncOptions(progress=False))
    assert res.fetched == 1 and time.monotonic() - t0 < 2, "an old file waits for nothing"
    (tmp_path / "r" / "jobs" / "fspl-young.fspl").write_bytes(_job(2))
    t0 = time.monotonic()
    res = pull(t, q, SyncOptions(progress=False, settle=0.5))
    assert res.fetched == 1 and 0.4 < time.monotonic() - t0 < 3


def test_cli_settle_option(tmp_path: Path) -> None:
    (tmp_path / "r" / "jobs").mkdir(parents=True)
    (tmp_path / "r" / "jobs" / "fspl-a.fspl").write_bytes(_job(1))
    queue_init(str(tmp_path / "q"))
    r = run_gw("sync", "-t", "local", "-r", str(tmp_path / "r"), "-q", str(tmp_path / "q"),
               "--settle", "0.3")
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "q" / "jobs") == ["fspl-a.fspl"]
    r = run_gw("sync", "-t", "local", "-r", str(tmp_path / "r"), "-q", str(tmp_path / "q"),
               "-o", "settle=soon")
    assert r.returncode == 2 and b"settle" in r.stderr and b"Traceback" not in r.stderr


def test_status_names_the_files_that_claim_one_seq(tmp_path: Path) -> None:
    """What sync prevents but fspl/others may leave (a copy made inside jobs/): status
    says why the queue is stuck instead of "pending"."""
    q = tmp_path / "q"
    queue_init(str(q))
    (q / "jobs" / "fspl-a.fspl").write_bytes(_job(1))
    (q / "jobs" / "fspl-a.sync-conflict-1.fspl").write_bytes(_job(1, b"x"))
    st = queue_status(str(q))
    assert st.blocked
    assert st.blocked_reason == "two files with seq 1: fspl-a.fspl, fspl-a.sync-conflict-1.fspl"
    assert "blocked: two files with seq 1" in render_text([st])
