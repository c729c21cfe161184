"""The watch service: a pull pipeline whose remote has ``receipts = true`` sends
receipts after each sync; a push pipeline fetches them each round (and prunes the jobs
kept until their receipt)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fspl_gateway.core.fsutil import TMP_PREFIX
from tests.watch.util import Watch, job_names, put_job, toml_str, wait_for, write_config


def _one_batch(rdir: Path) -> dict[str, Any]:
    """The one receipt batch written to ``rdir`` (waited for; a writer's temporary file
    in the directory is not one yet)."""
    def batches() -> list[str]:
        names = os.listdir(rdir) if rdir.exists() else []
        return [n for n in names if not n.startswith(TMP_PREFIX)]

    wait_for(batches, 5, "a receipt batch")
    (batch,) = batches()
    body: dict[str, Any] = json.loads((rdir / batch).read_bytes())
    return body


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
        body = _one_batch(remote / "receipts")
        assert body["queue"] == "site-b"
        assert [(r["kind"], r["name"]) for r in body["receipts"]] == [("delivered", name)]
    finally:
        assert w.stop() == 0, w.log()


def test_push_pipeline_fetches_receipts_and_prunes(tmp_path: Path) -> None:
    """A push pipeline with ``after = "keep-until-ran"`` fetches the remote's receipts
    each round, as ``push`` does: the outbox keeps the job until its ran receipt comes,
    then prunes it; the sender's status shows it ran."""
    from fspl_gateway.core import queue as fq
    from tests.unit.test_sync import run_cli

    remote, outbox, inbox = tmp_path / "remote", tmp_path / "outbox", tmp_path / "inbox"
    (remote / "jobs").mkdir(parents=True)
    fq.queue_init(str(outbox), append_only=True)
    fq.queue_init(str(inbox))
    cfg = write_config(tmp_path / "config.toml", f"""
[remotes.there]
transport = "local"
location = {toml_str(remote)}
expect_queue = "site-b"

[pipelines.out]
remote = "there"
queue = {toml_str(outbox)}
direction = "push"
after = "keep-until-ran"
interval = 0.3
""")
    w = Watch(cfg, tmp_path)
    try:
        name = put_job(outbox / "jobs", 1, b"x")
        wait_for(lambda: name in job_names(remote), 10, "the job to be pushed")
        assert job_names(outbox) == [name]  # kept until its receipt
        rx = ["-t", "local", "-r", str(remote), "-q", str(inbox), "--receipts",
              "--queue-id", "site-b"]
        assert run_cli("sync", *rx).returncode == 0
        assert run_cli("queue-process", "-q", str(inbox), "--", "true").returncode == 0
        assert run_cli("sync", *rx).returncode == 0
        wait_for(lambda: job_names(outbox) == [], 10, "the outbox job to be pruned")
        wait_for(lambda: os.listdir(remote / "receipts") == [], 10, "receipts to be fetched")
        w.wait_log(" 1 pruned")
    finally:
        assert w.stop() == 0, w.log()
    r = run_cli("status", "-q", str(outbox), "--json")
    rs = json.loads(r.stdout)["queues"][0]["receipts"][0]
    assert (rs["pushed"], rs["delivered"], rs["ran"], rs["unconfirmed"]) == (1, 1, 1, 0)


def test_pull_pipeline_routes_each_sender_and_receipts_each_queue(tmp_path: Path) -> None:
    """A pull pipeline whose remote has routes runs every route's pass, as ``sync``
    does: each signed sender's job lands in its own queue (not only the pipeline's
    queue), and each routed queue sends its own delivered receipt."""
    from fspl_gateway.core import queue as fq
    from fspl_gateway.core.minisign import generate_keypair, save_keypair
    from tests.unit.test_sync import run_cli

    remote, inbox, qa = tmp_path / "remote", tmp_path / "inbox", tmp_path / "qa"
    (remote / "jobs").mkdir(parents=True)
    for d in (inbox, qa):
        fq.queue_init(str(d))
    sk, pk = str(tmp_path / "a.key"), str(tmp_path / "a.pub")
    save_keypair(generate_keypair(), sk, pk, None)
    outbox = tmp_path / "outbox"
    fq.queue_init(str(outbox), append_only=True)
    name = put_job(outbox / "jobs", 1, b"x")
    r = run_cli("push", "-t", "local", "-r", str(remote), "-q", str(outbox), "--sign", sk,
                "--queue-id", "site-b")
    assert r.returncode == 0, r.stderr
    cfg = write_config(tmp_path / "config.toml", f"""
[remotes.drop]
transport = "local"
location = {toml_str(remote)}
queue_id = "site-b"
receipts = true
signature_wait = 0

[remotes.drop.routes]
{toml_str(pk)} = {toml_str(qa)}

[pipelines.in]
remote = "drop"
queue = {toml_str(inbox)}
interval = 0.3
""")
    w = Watch(cfg, tmp_path)
    try:
        wait_for(lambda: name in job_names(qa), 10, "the routed job in its own queue")
        assert job_names(inbox) == []
        body = _one_batch(remote / "receipts")
        assert [(r["kind"], r["name"]) for r in body["receipts"]] == [("delivered", name)]
    finally:
        assert w.stop() == 0, w.log()
