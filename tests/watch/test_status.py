"""`fspl-gw status`: JSON, text, Prometheus metrics; exact values from what the test made."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fspl_gateway.core.queue import queue_init
from fspl_gateway.core.seqfile import SeqFile
from fspl_gateway.gateway.journal import last_runs
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.transports.local import LocalTransport
from tests.helpers import run_gw
from tests.watch.util import put_job, toml_str, write_config

AGE = 100.0


@pytest.fixture
def gapped(tmp_path: Path) -> dict[str, object]:
    """A queue at nextseq 5 holding 7, 8, 9 and 11, the oldest landed AGE s ago, and one
    quarantined file from a real sync of a corrupt remote job."""
    q = tmp_path / "q"
    queue_init(str(q))
    with SeqFile(str(q / "nextseq"), create_lock=False) as sf:
        sf.set(5)
    names = {seq: put_job(q / "jobs", seq, b"p") for seq in (7, 8, 9, 11)}
    old = time.time() - AGE
    os.utime(q / "jobs" / names[8], (old, old))
    (q / "jobs" / "README").write_text("not a job")  # ignored, as by queue-ls
    remote = tmp_path / "remote"
    (remote / "jobs").mkdir(parents=True)
    bad = "fspl-00000000-0000-4000-8000-00000000beef.fspl"
    (remote / "jobs" / bad).write_bytes(b"this is no packet at all")
    t = LocalTransport(str(remote))
    res = pull(t, str(q), SyncOptions(progress=False, concurrency=1))
    assert res.quarantined == 1
    run = last_runs(str(q))[0]
    return {"q": q, "names": names, "bad": bad, "remote": t.describe(), "run": run}


def test_status_json_gap_and_quarantine(gapped: dict[str, object]) -> None:
    q = gapped["q"]
    r = run_gw("status", "-q", str(q), "--json")
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)["queues"]
    assert st["queue"] == str(q)
    assert st["next_seq"] == 5
    assert st["pending_jobs"] == 4
    assert st["pending_seqs"] == [7, 8, 9, 11]
    assert st["unreadable_jobs"] == 0
    assert st["blocked"] is True
    assert st["blocked_reason"] == "waiting for 5; have 7–9, 11"
    assert AGE - 1 <= st["oldest_pending_age_seconds"] < AGE + 30
    assert st["quarantined_files"] == 1
    assert st["quarantined"] == [gapped["bad"]]
    run = gapped["run"]
    assert st["remotes"] == [{"remote": gapped["remote"], "direction": "pull",
                              "started": run.started, "finished": run.finished,  # type: ignore[attr-defined]
                              "ok": False, "summary": run.summary}]  # type: ignore[attr-defined]
    # text output (not a terminal): the same facts, one line each
    t = run_gw("status", "-q", str(q))
    assert t.returncode == 0
    text = t.stdout.decode()
    assert "blocked: waiting for 5; have 7–9, 11" in text
    assert "quarantined: 1 (" + str(gapped["bad"]) + ")" in text
    assert f"last sync {gapped['remote']}: FAILED" in text


def test_status_unblocked_and_timestamp_queues(tmp_path: Path) -> None:
    q = tmp_path / "q"
    queue_init(str(q))
    for seq in (1, 3):
        put_job(q / "jobs", seq)
    (st,) = json.loads(run_gw("status", "-q", str(q), "--json").stdout)["queues"]
    assert (st["blocked"], st["pending_jobs"], st["next_seq"]) == (False, 2, 1)
    with SeqFile(str(q / "nextseq"), create_lock=False) as sf:
        sf.set(2)
    (st,) = json.loads(run_gw("status", "-q", str(q), "--json").stdout)["queues"]
    assert st["blocked_reason"] == "waiting for 2; have 3"
    (st,) = json.loads(run_gw("status", "-q", str(q), "--json", "--order-by", "timestamp"
                              ).stdout)["queues"]
    assert st["blocked"] is False


def test_status_does_not_take_the_lock_and_reports_bad_queues(tmp_path: Path) -> None:
    q = tmp_path / "q"
    queue_init(str(q))
    put_job(q / "jobs", 1)
    with SeqFile(str(q / "nextseq"), create_lock=False):  # a queue-process is running
        r = run_gw("status", "-q", str(q), "-q", str(tmp_path / "nope"), "--json")
    assert r.returncode == 1
    a, b = json.loads(r.stdout)["queues"]
    assert a["next_seq"] == 1 and a["pending_jobs"] == 1 and a["error"] is None
    assert "not a queue directory" in b["error"]
    assert r.stderr.decode().startswith("Error: 1 queue(s) could not be read")


def test_metrics_file(gapped: dict[str, object], tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    q = gapped["q"]
    path = tmp_path / "metrics" / "fspl_gw.prom"
    path.parent.mkdir()
    path.write_text("stale")
    r = run_gw("status", "-q", str(q), "--metrics-file", str(path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert os.listdir(path.parent) == ["fspl_gw.prom"]  # no temporary left behind
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}
    lq = (("queue", str(q)),)
    assert samples[("fspl_gw_queue_next_seq", lq)] == 5
    assert samples[("fspl_gw_queue_pending_jobs", lq)] == 4
    assert samples[("fspl_gw_queue_blocked", lq)] == 1
    assert samples[("fspl_gw_queue_quarantined_files", lq)] == 1
    assert samples[("fspl_gw_queue_up", lq)] == 1
    assert AGE - 1 <= samples[("fspl_gw_queue_oldest_pending_age_seconds", lq)] < AGE + 30
    lr = (("direction", "pull"), ("queue", str(q)), ("remote", str(gapped["remote"])))
    assert samples[("fspl_gw_remote_last_sync_success", lr)] == 0
    finished = gapped["run"].finished  # type: ignore[attr-defined]
    assert abs(samples[("fspl_gw_remote_last_sync_timestamp_seconds", lr)] - finished) < 0.01


def test_status_from_config(tmp_path: Path) -> None:
    q1, q2 = tmp_path / "a", tmp_path / "b"
    queue_init(str(q1))
    queue_init(str(q2))
    put_job(q2 / "jobs", 1)
    cfg = write_config(tmp_path / "c.toml", f"""
[pipelines.a]
queue = {toml_str(q1)}
process = ["true"]

[pipelines.b]
queue = {toml_str(q2)}
process = ["true"]
order_by = "timestamp"
""")
    r = run_gw("status", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    got = [(s["queue"], s["pending_jobs"], s["order_by"]) for s in json.loads(r.stdout)["queues"]]
    assert got == [(str(q1), 0, "sequence"), (str(q2), 1, "timestamp")]
    bad = write_config(tmp_path / "bad.toml", '[pipelines.x]\nqueue = "/q"\nprocess = 3\n')
    r = run_gw("status", "--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (
        f"Error: config file {bad}: pipelines.x.process must be a command as a list of "
        'strings, e.g. ["cmd", "arg"]')


def test_status_imports_no_sdk(gapped: dict[str, object]) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom fspl_gateway.cli.main import main\n"
            "try:\n    main(['status', '-q', sys.argv[1], '--json'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('boto3', 'botocore', 'paramiko', 'dropbox', 'watchdog', 'rich')"
            " if m in sys.modules]\nprint('LOADED', bad, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(gapped["q"])], capture_output=True)
    assert b"LOADED []" in r.stderr, r.stderr
