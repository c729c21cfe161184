"""Receipts end to end through the CLI, over local, S3 (moto) and SFTP (sshd):
push → sync --receipts → queue-process (one job fails) → sync --receipts → push
--after-push keep-until-ran → status."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.packet import Command, Meta, encode_header
from fspl_gateway.gateway.receipts import pending_out
from tests.unit.test_sync import run_cli

#: The receiver's command: the payload "fail" fails (exit 7), anything else succeeds.
CMD = ["sh", "-c", 'read x; [ "$x" != fail ] || exit 7']


def cmd_job(seq: int, payload: bytes) -> bytes:
    return encode_header(Meta(seq, (1700000000 + seq, 0), Command())) + payload


@dataclass
class Remote:
    args: list[str]
    receipts_dir: Callable[[], list[str]]


def _local(tmp_path: Path) -> Remote:
    root = tmp_path / "remote"
    (root / "jobs").mkdir(parents=True)
    return Remote(["-t", "local", "-r", str(root)],
                  lambda: sorted(os.listdir(root / "receipts"))
                  if (root / "receipts").exists() else [])


@pytest.fixture(params=["local", "s3", "sftp"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "local":
        return _local(tmp_path)
    if request.param == "s3":
        b = request.getfixturevalue("s3_bucket")
        opts = [x for k, v in b.options.items() for x in ("-o", f"{k}={v}")]

        def s3_names() -> list[str]:
            r = b.client.list_objects_v2(Bucket=b.name, Prefix="q/receipts/")
            return sorted(o["Key"].rsplit("/", 1)[1] for o in r.get("Contents", []))
        return Remote(["-t", "s3", "-r", b.location("q"), *opts], s3_names)
    sq = request.getfixturevalue("sftp_queue")
    opts = [x for k, v in sq.options.items() for x in ("-o", f"{k}={v}")]
    return Remote(["-t", "sftp", "-r", sq.location, *opts],
                  lambda: sorted(os.listdir(sq.path / "receipts"))
                  if (sq.path / "receipts").exists() else [])


def gw(*args: str) -> str:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_receipts_loop(remote: Remote, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    names = {seq: f"fspl-{seq:08d}-0000-4000-8000-000000000000.fspl" for seq in (1, 2, 3)}
    for seq, payload in ((1, b"ok\n"), (2, b"fail\n"), (3, b"ok\n")):
        (outbox / "jobs" / names[seq]).write_bytes(cmd_job(seq, payload))
    inbox = tmp_path / "inbox"
    q.queue_init(str(inbox))
    alerts = tmp_path / "alerts"
    hook = f'echo "$FSPL_GW_ALERT $FSPL_GW_SEQ $FSPL_GW_EXIT" >> {alerts}'

    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran")
    assert sorted(os.listdir(outbox / "jobs")) == sorted(names.values())

    gw("sync", *remote.args, "-q", str(inbox), "--receipts", "--queue-id", "site-b")
    assert len([n for n in remote.receipts_dir() if n.endswith(".json")]) == 1
    r = run_cli("queue-process", "-q", str(inbox), "--", *CMD)
    assert r.returncode != 0  # job 2 fails and stays (--on-error retry)
    gw("sync", *remote.args, "-q", str(inbox), "--receipts", "--queue-id", "site-b")
    assert len(remote.receipts_dir()) == 2
    assert pending_out(str(inbox)) == 0

    for _ in range(3):  # cron: the alert fires once, not on every run
        gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran",
           "--on-failure", hook, "--stuck-after", "0")
    assert remote.receipts_dir() == []
    # exactly the unconfirmed jobs stay: 2 (failed) and 3 (delivered, stuck behind 2)
    assert sorted(os.listdir(outbox / "jobs")) == [names[2], names[3]]
    assert alerts.read_text().splitlines() == ["failed 2 7", "stuck 2 "]

    st = json.loads(gw("status", "-q", str(outbox), "--json"))["queues"][0]["receipts"]
    assert len(st) == 1
    rs = st[0]
    assert (rs["pushed"], rs["delivered"], rs["ran"], rs["unconfirmed"]) == (3, 3, 1, 1)
    assert [(f["seq"], f["exit"]) for f in rs["failed"]] == [(2, 7)]
    assert rs["stuck"] and rs["stuck_behind"] == names[2]
    assert rs["oldest_unconfirmed"] == names[3]
    text = gw("status", "-q", str(outbox))
    assert "3 pushed, 3 delivered, 1 ran, 1 failed" in text and "STUCK behind" in text
    metrics = tmp_path / "m.prom"
    gw("status", "-q", str(outbox), "--metrics-file", str(metrics), "--quiet")
    prom = metrics.read_text()
    assert 'fspl_gw_receipts_failed_job_exit_code{' in prom and "} 7\n" in prom
    assert "fspl_gw_receipts_stuck{" in prom

    # the failed job is fixed on the receiver: it runs, the next receipts confirm it
    r = run_cli("queue-process", "-q", str(inbox), "--", "true")
    assert r.returncode == 0, r.stderr
    gw("sync", *remote.args, "-q", str(inbox), "--receipts", "--queue-id", "site-b")
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran",
       "--on-failure", hook, "--stuck-after", "0")
    assert os.listdir(outbox / "jobs") == []
    rs = json.loads(gw("status", "-q", str(outbox), "--json"))["queues"][0]["receipts"][0]
    assert (rs["ran"], rs["failed"], rs["stuck"], rs["unconfirmed"]) == (3, [], False, 0)
    assert alerts.read_text().splitlines() == ["failed 2 7", "stuck 2 "]


def test_receipts_from_the_config_file(tmp_path: Path) -> None:
    """``receipts = true`` and the other receipt keys in a remote's table do what the
    flags do: signed receipts sent by sync, verified and pruned by push."""
    from fspl_gateway.core.minisign import generate_keypair, save_keypair

    key = generate_keypair()
    save_keypair(key, str(tmp_path / "r.key"), str(tmp_path / "r.pub"), None)
    root = tmp_path / "remote"
    (root / "jobs").mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[remotes.b]\ntransport = "local"\nlocation = "{root}"\n'
                   f'receipts = true\nqueue_id = "site-b"\nreceipts_key = "{tmp_path}/r.key"\n'
                   f'trust_keys = ["{tmp_path}/r.pub"]\nexpect_queue = "site-b"\n')
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    q.queue_init(str(outbox), append_only=True)
    q.queue_init(str(inbox))
    name = "fspl-00000001-0000-4000-8000-000000000000.fspl"
    (outbox / "jobs" / name).write_bytes(cmd_job(1, b"ok\n"))
    gw("push", "--config", str(cfg), "-r", "b", "-q", str(outbox),
       "--after-push", "keep-until-ran")
    gw("sync", "--config", str(cfg), "-r", "b", "-q", str(inbox))
    assert run_cli("queue-process", "-q", str(inbox), "--", *CMD).returncode == 0
    gw("sync", "--config", str(cfg), "-r", "b", "-q", str(inbox))
    sigs = [n for n in os.listdir(root / "receipts") if n.endswith(".minisig")]
    assert len(sigs) == 2 and b"queue=site-b" in (root / "receipts" / sigs[0]).read_bytes()
    # a flag wins over the file: receipts from another queue id are refused
    r = run_cli("push", "--config", str(cfg), "-r", "b", "-q", str(outbox),
                "--after-push", "keep-until-ran", "--expect-queue", "site-c")
    assert r.returncode == 3 and os.listdir(outbox / "jobs") == [name]
    gw("push", "--config", str(cfg), "-r", "b", "-q", str(outbox),
       "--after-push", "keep-until-ran")
    assert os.listdir(outbox / "jobs") == [] and os.listdir(root / "receipts") == []


@pytest.mark.parametrize("remote", ["local", "s3"], indirect=True)
def test_multihost_workers_write_ran_receipts(remote: Remote, tmp_path: Path) -> None:
    """``workers --remote --receipts`` runs jobs straight from the remote and writes a
    ran receipt per job there; the sender's push prunes exactly the ones that ran."""
    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    names = {seq: f"fspl-{seq:08d}-0000-4000-8000-000000000000.fspl" for seq in (1, 2)}
    for seq, payload in ((1, b"ok\n"), (2, b"fail\n")):
        (outbox / "jobs" / names[seq]).write_bytes(cmd_job(seq, payload))
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran")
    r = run_cli("workers", *remote.args, "-q", str(tmp_path / "work"), "-n", "1",
                "--on-error", "delete", "--receipts", "--queue-id", "site-b",
                CMD[0], "--", *CMD[1:])
    assert r.returncode == 0, r.stderr
    assert len(remote.receipts_dir()) == 2  # one batch per job run
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran",
       "--expect-queue", "site-b")
    assert os.listdir(outbox / "jobs") == [names[2]] and remote.receipts_dir() == []
    rs = json.loads(gw("status", "-q", str(outbox), "--json"))["queues"][0]["receipts"][0]
    assert (rs["pushed"], rs["ran"], [(f["seq"], f["exit"]) for f in rs["failed"]]) == \
        (2, 1, [(2, 7)])


def test_receipts_round_trip_on_a_usb_directory(tmp_path: Path) -> None:
    """export → import --receipts → queue-process → receipts send to the stick →
    the sender's receipts fetch from it prunes exactly the jobs that ran; an ISO image
    cannot carry receipts (one-line error)."""
    stick = tmp_path / "usb"
    stick.mkdir()
    media = ["-t", "media", "-r", str(stick)]
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    q.queue_init(str(outbox), append_only=True)
    q.queue_init(str(inbox))
    names = {seq: f"fspl-{seq:08d}-0000-4000-8000-000000000000.fspl" for seq in (1, 2)}
    for seq, payload in ((1, b"ok\n"), (2, b"fail\n")):
        (outbox / "jobs" / names[seq]).write_bytes(cmd_job(seq, payload))
    gw("export", "-q", str(outbox), "--to", str(stick), "--keep")
    gw("import", "-q", str(inbox), "--from", str(stick), "--receipts")
    assert run_cli("queue-process", "-q", str(inbox), "--", *CMD).returncode != 0
    gw("receipts", "send", *media, "-q", str(inbox), "--queue-id", "site-b")
    assert len(os.listdir(stick / "receipts")) == 1
    gw("receipts", "fetch", *media, "-q", str(outbox), "--prune", "ran")
    assert os.listdir(outbox / "jobs") == [names[2]] and os.listdir(stick / "receipts") == []
    rs = json.loads(gw("status", "-q", str(outbox), "--json"))["queues"][0]["receipts"][0]
    assert (rs["pushed"], rs["delivered"], rs["ran"]) == (2, 2, 1)
    assert [(f["seq"], f["exit"]) for f in rs["failed"]] == [(2, 7)]

    iso = tmp_path / "jobs.iso"
    gw("export", "-q", str(outbox), "--to", str(iso), "--keep")
    inbox2 = tmp_path / "inbox2"
    q.queue_init(str(inbox2))
    gw("import", "-q", str(inbox2), "--from", str(iso), "--receipts")
    r = run_cli("receipts", "send", "-t", "media", "-r", str(iso), "-q", str(inbox2))
    assert r.returncode != 0 and "directory media" in r.stderr.strip().splitlines()[-1]
