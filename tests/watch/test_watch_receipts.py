"""The watch service: a pull pipeline whose remote has ``receipts = true`` sends
receipts after each sync."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.watch.util import Watch, job_names, put_job, toml_str, wait_for, write_config


def test_pull_pipeline_sends_receipts(tmp_path: Path) -> None:
    remote, q = tmp_path / "remote", tmp_path / "inbox"
    (remote / "jobs").mkdir(parents=True)
    cfg = write_config(tmp_path / "config.toml", f"""
[remotes.here]
transport = "local"
location = {toml_str(remote)}
receipts = true
queue_id = "site-b"

[pipelines.in]
remote = "here"
queue = {toml_str(q)}
interval = 0.3
""")
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log("sync: 0 fetched")
        name = put_job(remote / "jobs", 1, b"x")
        wait_for(lambda: name in job_names(q), 5, "the job to be fetched")
        rdir = remote / "receipts"
        wait_for(lambda: rdir.exists() and os.listdir(rdir), 5, "a receipt batch")
        (batch,) = os.listdir(rdir)
        body = json.loads((rdir / batch).read_bytes())
        assert body["queue"] == "site-b"
        assert [(r["kind"], r["name"]) for r in body["receipts"]] == [("delivered", name)]
    finally:
        assert w.stop() == 0, w.log()
