"""Wording (issue 12 item 15): the refusal of a rotten medium names the real flag and
never offers 0 jobs; the status "last sync" line says each thing once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.gateway.journal import Journal
from fspl_gateway.gateway.status import queue_status, render_text
from tests.helpers import run_gw
from tests.unit.test_cli_media import _outbox


@pytest.mark.parametrize("rotten", [1, 2])
def test_rotten_medium_refusal_wording(tmp_path: Path, rotten: int) -> None:
    out = _outbox(tmp_path, 2)
    stick = tmp_path / "stick"
    stick.mkdir()
    assert run_gw("export", "-q", str(out), "--to", str(stick)).returncode == 0
    for victim in sorted((stick / "jobs").iterdir())[:rotten]:
        victim.write_bytes(victim.read_bytes()[:-1])  # a truncated copy
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    r = run_gw("import", "-q", str(inq), "--from", str(stick))
    err = r.stderr.decode()
    assert r.returncode == 1 and "good_only" not in err
    if rotten == 1:
        assert "import the 1 good job only with --good-only" in err
    else:
        assert "0 good" not in err and "--good-only" not in err
        assert "no job on it passed the check" in err


def test_status_last_sync_line_says_each_thing_once(tmp_path: Path) -> None:
    qdir = tmp_path / "q"
    q.queue_init(str(qdir))
    remote = "local:/srv/remote"
    with Journal(str(qdir)) as j:
        j.record_run("pull", remote, time.time() - 1, True,
                     f"sync: 2 fetched, 0 skipped, 0 quarantined from {remote} in 14 ms")
        j.record_run("push", "s3://b/q", time.time() - 1, True,
                     "INFO fspl_gw: push: 1 pushed, 0 skipped, 0 failed to s3://b/q in 9 ms")
    text = render_text([queue_status(str(qdir))])
    sync_line = next(ln for ln in text.splitlines() if "last sync" in ln)
    push_line = next(ln for ln in text.splitlines() if "last push" in ln)
    assert sync_line.endswith(": 2 fetched, 0 skipped, 0 quarantined in 14 ms"), sync_line
    assert sync_line.count(remote) == 1 and "sync:" not in sync_line
    assert push_line.endswith(": 1 pushed, 0 skipped, 0 failed in 9 ms"), push_line
    assert "fspl_gw" not in push_line and "INFO" not in push_line
