"""Receipts (fspl_gateway.gateway.receipts) with the real LocalTransport: the format,
signatures (forged, unsigned, other key, replayed), refusal of receipts for jobs we did
not push, and kill -9 during the receipt upload and the receipt fetch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fspl_gateway.core import outcomes
from fspl_gateway.core import queue as q
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.minisign import generate_keypair
from fspl_gateway.core.packet import Command, Meta, encode_header
from fspl_gateway.gateway import receipts as rc
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.push import AfterPush, PushOptions, push
from fspl_gateway.transports.local import LocalTransport
from tests.unit.test_sync import FAST, job_set

KEY = generate_keypair()
OTHER = generate_keypair()


@pytest.fixture
def loop(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(outbox, remote, inbox): 3 jobs pushed (kept until ran), synced into the inbox
    with receipts on, and the outcome of job 1 (ok) and 2 (exit 5) in its outcome log."""
    outbox, remote, inbox = tmp_path / "outbox", tmp_path / "remote", tmp_path / "inbox"
    q.queue_init(str(outbox), append_only=True)
    q.queue_init(str(inbox))
    (remote / "jobs").mkdir(parents=True)
    for name, data in job_set(3).items():
        (outbox / "jobs" / name).write_bytes(data)
    push(LocalTransport(str(remote)), outbox,
         PushOptions(after_push=AfterPush.KEEP_UNTIL_RAN, retry=FAST))
    rc.enable(str(inbox))
    pull(LocalTransport(str(remote)), inbox, SyncOptions(retry=FAST))
    names = sorted(os.listdir(inbox / "jobs"))
    log = QueueLayout(str(inbox)).outcomes
    outcomes.append(log, {"name": names[0], "seq": 1, "start": 10.0, "end": 11.0, "ok": True,
                          "exit": 0, "status": "exit status 0"})
    outcomes.append(log, {"name": names[1], "seq": 2, "start": 12.0, "end": 13.0,
                          "ok": False, "exit": 5, "status": "exit status 5"})
    return outbox, remote, inbox


def batches(remote: Path) -> list[str]:
    d = remote / "receipts"
    return sorted(os.listdir(d)) if d.exists() else []


def status(outbox: Path) -> rc.RemoteReceipts:
    (st,) = rc.remote_receipts(str(outbox), now=4e9)
    return st


def test_format_round_trip_and_refusals() -> None:
    b = rc.Batch("0" * 32, "site-b", "h", 1.5, (
        rc.Receipt("delivered", "fspl-a.fspl", 1, "a" * 64, 2.0),
        rc.Receipt("ran", "fspl-a.fspl", 1, "a" * 64, 4.0, 3.0, 4.0, False, 2, "exit status 2")))
    data = rc.encode_batch(b)
    assert rc.decode_batch(data) == b
    assert not rc.is_batch_name("fspl-x.fspl") and rc.is_batch_name(b.file_name)
    d = json.loads(data)
    for bad in ({**d, "version": 2}, {**d, "format": "x"}, {**d, "queue": "a b"},
                {**d, "receipts": [{**d["receipts"][0], "sha256": "x"}]},
                {**d, "receipts": [{**d["receipts"][1], "ok": "yes"}]}):
        with pytest.raises(rc.ReceiptError):
            rc.decode_batch(json.dumps(bad).encode())
    with pytest.raises(rc.ReceiptError):
        rc.decode_batch(b"\xff not json")


def test_signed_loop_and_forgeries(loop: tuple[Path, Path, Path]) -> None:
    outbox, remote, inbox = loop
    t = LocalTransport(str(remote))
    sent = rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b", sign_key=KEY))
    assert (sent.batches, sent.receipts) == (1, 5)  # 3 delivered, 2 ran
    name = [n for n in batches(remote) if n.endswith(".json")][0]
    sig = name + ".minisig"
    assert sig in batches(remote)
    body = (remote / "receipts" / name).read_bytes()
    sigdata = (remote / "receipts" / sig).read_bytes()
    assert b"fspl-gw-receipts v1 queue=site-b sha256=" in sigdata

    trust = rc.FetchOptions(trust_keys=[KEY.public_key], expect_queue="site-b",
                            keep_until=rc.KeepUntil.RAN)
    # forged: one bit of the body changed, the signature kept
    (remote / "receipts" / name).write_bytes(body.replace(b'"ok":false', b'"ok":true '))
    res = rc.fetch(t, str(outbox), trust)
    assert (res.batches, res.refused, res.pruned) == (0, 1, 0)
    # signed by a key we do not trust
    (remote / "receipts" / name).write_bytes(body)
    (remote / "receipts" / sig).write_bytes(rc.sign_batch(OTHER, body, "site-b"))
    assert rc.fetch(t, str(outbox), trust).refused == 1
    # unsigned
    os.unlink(remote / "receipts" / sig)
    assert rc.fetch(t, str(outbox), trust).refused == 1
    # signed for another queue
    (remote / "receipts" / sig).write_bytes(rc.sign_batch(KEY, body, "site-c"))
    assert rc.fetch(t, str(outbox), trust).refused == 1
    # the real one
    (remote / "receipts" / sig).write_bytes(sigdata)
    res = rc.fetch(t, str(outbox), trust)
    assert (res.batches, res.receipts, res.refused, res.pruned) == (1, 5, 0, 1)
    assert batches(remote) == []
    st = status(outbox)
    assert (st.pushed, st.delivered, st.ran, [f.exit for f in st.failed]) == (3, 3, 1, [5])
    assert len(os.listdir(outbox / "jobs")) == 2
    # replayed: the same signed batch put back is refused, nothing counted twice
    (remote / "receipts" / name).write_bytes(body)
    (remote / "receipts" / sig).write_bytes(sigdata)
    res = rc.fetch(t, str(outbox), trust)
    assert (res.batches, res.receipts) == (0, 0) and batches(remote) == []
    assert status(outbox) == st


def test_receipts_for_jobs_not_pushed_are_refused(loop: tuple[Path, Path, Path]) -> None:
    outbox, remote, inbox = loop
    t = LocalTransport(str(remote))
    forged = rc.Batch("f" * 32, "site-b", "h", 1.0, (
        rc.Receipt("ran", sorted(os.listdir(outbox / "jobs"))[0], 1, "b" * 64, 2.0, 1.0, 2.0,
                   True, 0, "exit status 0"),))
    (remote / "receipts").mkdir()
    (remote / "receipts" / forged.file_name).write_bytes(rc.encode_batch(forged))
    res = rc.fetch(t, str(outbox), rc.FetchOptions(keep_until=rc.KeepUntil.RAN))
    assert (res.receipts, res.refused, res.pruned) == (0, 1, 0)
    assert len(os.listdir(outbox / "jobs")) == 3


_KILL_UPLOAD = """
import os, signal, sys
from fspl_gateway.gateway import receipts as rc
from fspl_gateway.transports.local import LocalTransport
from fspl_gateway.transports.wrapper import DelegatingTransport

class Killer(DelegatingTransport):
    def sibling(self, area):
        return Killer(self.inner.sibling(area))
    def write_new(self, name, src, size):
        e = self.inner.write_new(name, src, size)
        os.kill(os.getpid(), signal.SIGKILL)  # after the write, before it is marked sent

rc.send(Killer(LocalTransport(sys.argv[1])), sys.argv[2], rc.SendOptions(queue_id="site-b"))
"""

_KILL_FETCH = """
import os, signal, sys
from fspl_gateway.gateway import receipts as rc
from fspl_gateway.transports.local import LocalTransport
from fspl_gateway.transports.wrapper import DelegatingTransport

class Killer(DelegatingTransport):
    def sibling(self, area):
        return Killer(self.inner.sibling(area))
    def delete(self, name):
        os.kill(os.getpid(), signal.SIGKILL)  # recorded, not yet removed from the remote

rc.fetch(Killer(LocalTransport(sys.argv[1])), sys.argv[2], rc.FetchOptions())
"""


def _child(code: str, *args: str) -> int:
    return subprocess.run([sys.executable, "-c", code, *args], timeout=60).returncode


def test_kill_during_upload_and_fetch(loop: tuple[Path, Path, Path]) -> None:
    outbox, remote, inbox = loop
    assert _child(_KILL_UPLOAD, str(remote), str(inbox)) == -signal.SIGKILL
    first = batches(remote)
    assert len(first) == 1 and rc.pending_out(str(inbox)) == 5
    # the next run writes the same batch (same name, same bytes), never a second one
    t = LocalTransport(str(remote))
    assert rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b")).batches == 1
    assert batches(remote) == first and rc.pending_out(str(inbox)) == 0
    assert rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b")).batches == 0
    # killed after recording the receipts, before removing the batch from the remote
    assert _child(_KILL_FETCH, str(remote), str(outbox)) == -signal.SIGKILL
    assert batches(remote) == first
    before = status(outbox)
    res = rc.fetch(t, str(outbox), rc.FetchOptions())
    assert (res.batches, res.receipts) == (0, 0) and batches(remote) == []
    assert status(outbox) == before and (before.delivered, before.ran) == (3, 1)


def test_alert_once(loop: tuple[Path, Path, Path], tmp_path: Path) -> None:
    outbox, remote, inbox = loop
    t = LocalTransport(str(remote))
    rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b"))
    out = tmp_path / "alerts"
    opts = rc.FetchOptions(on_failure=f'echo "$FSPL_GW_ALERT $FSPL_GW_JOB" >> {out}',
                           stuck_after=0)
    assert rc.fetch(t, str(outbox), opts).alerts == 2
    for _ in range(3):
        assert rc.fetch(t, str(outbox), opts).alerts == 0
    assert [ln.split()[0] for ln in out.read_text().splitlines()] == ["failed", "stuck"]
    # a failing hook is tried again next time
    assert rc.fetch(t, str(outbox), rc.FetchOptions(on_failure="exit 1")).alerts == 0


def test_no_receipts_unless_enabled(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    q.queue_init(str(inbox))
    assert outcomes.log_path_if_enabled(str(inbox)) is None
    rc.enable(str(inbox))
    assert outcomes.log_path_if_enabled(str(inbox)) == QueueLayout(str(inbox)).outcomes
    with pytest.raises(Exception, match="not a queue directory"):
        rc.enable(str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_workers_record_outcomes_in_the_incoming_queue(tmp_path: Path) -> None:
    from fspl_gateway.core.process import ProcessOpts
    from fspl_gateway.gateway.workers import WorkersOpts, _run_one

    incoming, worker = tmp_path / "in", tmp_path / "w" / "worker-1"
    q.queue_init(str(incoming))
    worker.parent.mkdir()
    q.queue_init(str(worker))
    rc.enable(str(incoming), outcomes.OutputMode.DIGEST)  # the incoming queue's setting
    name = "fspl-00000004-0000-4000-8000-000000000000.fspl"
    (worker / "jobs" / name).write_bytes(
        encode_header(Meta(4, (1700000004, 0), Command())) + b"payload\n")
    assert _run_one(WorkersOpts(str(incoming), 1, str(tmp_path / "w"), ProcessOpts("true")),
                    str(worker))
    got: list[dict[str, object]] = []
    outcomes.take(QueueLayout(str(incoming)).outcomes, got.extend)
    assert [(o["name"], o["seq"], o["ok"]) for o in got] == [(name, 4, True)]
    assert got[0]["output"] == {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    assert not os.path.exists(QueueLayout(str(worker)).outcomes)


def test_one_queue_two_senders_one_batch_each(tmp_path: Path) -> None:
    """Two trusted senders' jobs in one queue (trust without routes, or two keys routed
    to one queue): their receipts go in separate batches, each naming its sender."""
    from tests.trust.util import job_name, opts, policy, signed

    remote, inbox = tmp_path / "remote", tmp_path / "inbox"
    (remote / "jobs").mkdir(parents=True)
    q.queue_init(str(inbox))
    senders = {}
    for i, key in ((1, KEY), (2, OTHER)):
        job, sig = signed(key, i, tmp_path)
        (remote / "jobs" / (job_name(i) + ".minisig")).write_bytes(sig)
        (remote / "jobs" / job_name(i)).write_bytes(job)
        senders[job_name(i)] = key.key_id
    rc.enable(str(inbox))
    t = LocalTransport(str(remote))
    assert pull(t, inbox, opts(policy(KEY, OTHER))).fetched == 2
    assert rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b")).batches == 2
    got = {}
    for n in batches(remote):
        b = rc.decode_batch((remote / "receipts" / n).read_bytes())
        got.update({r.name: b.sender for r in b.receipts})
    assert got == senders


def test_a_database_of_the_first_schema_is_read_and_upgraded(
        loop: tuple[Path, Path, Path]) -> None:
    """A sender's receipts.sqlite written before receipts carried output and sender:
    status reads it, the next fetch adds the columns and goes on."""
    import sqlite3

    outbox, remote, inbox = loop
    t = LocalTransport(str(remote))
    rc.send(t, str(inbox), rc.SendOptions(queue_id="site-b"))
    db = QueueLayout(str(outbox)).receipts_db
    os.makedirs(os.path.dirname(db), exist_ok=True)
    old = sqlite3.connect(db)
    old.executescript("""
CREATE TABLE in_receipts (remote TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    start REAL NOT NULL DEFAULT 0, end_ REAL, ok INTEGER, exit INTEGER, status TEXT,
    batch TEXT NOT NULL, queue TEXT, received REAL NOT NULL,
    PRIMARY KEY (remote, kind, name, sha256, start));
CREATE TABLE in_batches (remote TEXT NOT NULL, id TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (remote, id));
INSERT INTO in_batches VALUES ('x', 'y', 1.0);
""")
    old.close()
    assert [r.remote for r in rc.remote_receipts(str(outbox))] == ["x"]
    res = rc.fetch(t, str(outbox), rc.FetchOptions(keep_until=rc.KeepUntil.RAN))
    assert (res.receipts, res.pruned) == (5, 1)
