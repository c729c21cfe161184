"""Receipts end to end through the CLI, over local, S3 (moto) and SFTP (sshd):
push → sync --receipts → queue-process (one job fails) → sync --receipts → push
--after-push keep-until-ran → status; the output of a job in its ran receipt
(``--receipt-output``); receipts of ``--route`` targets reaching each sender (signed;
forged and replayed batches refused)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.minisign import generate_keypair, save_keypair
from fspl_gateway.core.outcomes import HEAD_BYTES, safe_text
from fspl_gateway.core.packet import Command, Meta, encode_header
from fspl_gateway.gateway import receipts as rc
from fspl_gateway.gateway.receipts import pending_out
from fspl_gateway.transports.base import Transport
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
    ran receipt per job there (with the job's output: ``--receipt-output``); the sender's
    push prunes exactly the ones that ran."""
    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    names = {seq: f"fspl-{seq:08d}-0000-4000-8000-000000000000.fspl" for seq in (1, 2)}
    for seq, payload in ((1, b"ok\n"), (2, b"fail\n")):
        (outbox / "jobs" / names[seq]).write_bytes(cmd_job(seq, payload))
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran")
    r = run_cli("workers", *remote.args, "-q", str(tmp_path / "work"), "-n", "1",
                "--on-error", "delete", "--receipts", "--queue-id", "site-b",
                "--receipt-output", "both", "sh", "--", "-c",
                'read x; echo "got $x"; [ "$x" != fail ] || exit 7')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "got ok\ngot fail\n"  # teed: still on our stdout
    assert len(remote.receipts_dir()) == 2  # one batch per job run
    outs = sorted(json.loads(_read(remote, tmp_path, n))["receipts"][0]["output"]["head"]
                  for n in remote.receipts_dir())
    assert outs == ["got fail\n", "got ok\n"]
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


#: Prints a line with a URL password (redacted in the head), the payload, 200 KB (more
#: than a pipe holds: the tee must stream), a control character; payload "fail" → exit 7.
OUT_CMD = ["sh", "-c", 'read x; echo "http://u:hunter22@h got $x"; '
           'head -c 200000 /dev/zero | tr "\\0" z; printf "\\001end\\n"; '
           '[ "$x" != fail ] || exit 7']


def job_output(payload: str) -> bytes:
    return f"http://u:hunter22@h got {payload}\n".encode() + b"z" * 200000 + b"\x01end\n"


def _names(tag: int) -> dict[int, str]:
    return {seq: f"fspl-{seq:08d}-{tag:04d}-4000-8000-000000000000.fspl" for seq in (1, 2)}


def _outbox(path: Path, tag: int, payloads: tuple[bytes, bytes]) -> dict[int, str]:
    q.queue_init(str(path), append_only=True)
    names = _names(tag)
    for seq, payload in zip((1, 2), payloads, strict=True):
        (path / "jobs" / names[seq]).write_bytes(cmd_job(seq, payload))
    return names


@pytest.mark.parametrize("remote", ["local", "s3"], indirect=True)
def test_ran_receipts_carry_the_output(remote: Remote, tmp_path: Path) -> None:
    """--receipt-output both: the job's stdout still reaches ours byte for byte (and the
    exit status is the same as without receipts), the ran receipt carries its sha256,
    size and first KiB (safe, redacted), the sender sees them in status and the hook."""
    outbox = tmp_path / "outbox"
    names = _outbox(outbox, 0, (b"ok\n", b"fail\n"))
    inbox, control = tmp_path / "inbox", tmp_path / "control"
    q.queue_init(str(inbox))
    q.queue_init(str(control))
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran")
    gw("sync", *remote.args, "-q", str(inbox), "--receipts", "--queue-id", "site-b",
       "--receipt-output", "both")
    for n in names.values():
        shutil.copy(inbox / "jobs" / n, control / "jobs" / n)

    r = run_cli("queue-process", "-q", str(inbox), "--", *OUT_CMD)
    plain = run_cli("queue-process", "-q", str(control), "--", *OUT_CMD)
    assert r.returncode == plain.returncode != 0  # job 2 fails (--on-error retry)
    assert r.stdout == plain.stdout == (job_output("ok") + job_output("fail")).decode()

    gw("sync", *remote.args, "-q", str(inbox), "--receipts", "--queue-id", "site-b")
    hook_out = tmp_path / "hook"
    gw("push", *remote.args, "-q", str(outbox), "--after-push", "keep-until-ran",
       "--on-failure", f'printf "%s|%s" "$FSPL_GW_OUTPUT_SHA256" "$FSPL_GW_OUTPUT_HEAD" '
                       f'> {hook_out}')
    assert os.listdir(outbox / "jobs") == [names[2]]
    fail = job_output("fail")
    want = {"bytes": len(fail), "sha256": hashlib.sha256(fail).hexdigest(),
            "head": safe_text(fail[:HEAD_BYTES])}
    assert want["head"].startswith("http://u:***@h got fail\nzzz") and "hunter22" not in \
        want["head"]
    st = json.loads(gw("status", "-q", str(outbox), "--json"))["queues"][0]["receipts"][0]
    assert [(f["seq"], f["exit"], f["output"]) for f in st["failed"]] == [(2, 7, want)]
    assert hook_out.read_text() == f"{want['sha256']}|{want['head']}"
    # the job that ran fine has its output in its receipt too
    db = rc.ReceiptsDB(str(outbox), create=False)
    try:
        (out,) = db.q("SELECT output FROM in_receipts WHERE kind='ran' AND name=?",
                      (names[1],))[0]
    finally:
        db.close()
    assert json.loads(out)["sha256"] == hashlib.sha256(job_output("ok")).hexdigest()


def _keys(d: Path, name: str) -> tuple[str, str]:
    key = generate_keypair()
    sk, pk = str(d / f"{name}.key"), str(d / f"{name}.pub")
    save_keypair(key, sk, pk, None)
    return sk, pk


def _batches(remote: Remote) -> list[str]:
    return [n for n in remote.receipts_dir() if n.endswith(".json")]


@pytest.mark.parametrize("remote", ["local", "s3"], indirect=True)
def test_routed_senders_each_get_their_own_receipts(remote: Remote, tmp_path: Path) -> None:
    """Two senders sign for one receiver, whose sync routes each sender's jobs into its
    own queue: each queue sends its delivered and ran receipts, in batches of one sender
    (named in the batch), and each sender's push fetches exactly its own, leaving the
    other's on the remote; forged and replayed batches are refused."""
    a_sk, a_pk = _keys(tmp_path, "a")
    b_sk, b_pk = _keys(tmp_path, "b")
    r_sk, r_pk = _keys(tmp_path, "r")
    out_a, out_b = tmp_path / "out-a", tmp_path / "out-b"
    names_a = _outbox(out_a, 1, (b"ok\n", b"fail\n"))
    names_b = _outbox(out_b, 2, (b"ok\n", b"ok\n"))
    qa, qb, main = tmp_path / "qa", tmp_path / "qb", tmp_path / "main"
    for d in (qa, qb, main):
        q.queue_init(str(d))

    def push(sk: str, outbox: Path, *extra: str) -> None:
        gw("push", *remote.args, "-q", str(outbox), "--sign", sk, "--queue-id", "site-b",
           "--after-push", "keep-until-ran", "--trust-key", r_pk, "--expect-queue",
           "site-b", *extra)

    def sync() -> None:
        gw("sync", *remote.args, "-q", str(main), "--queue-id", "site-b",
           "--route", f"{a_pk}={qa}", "--route", f"{b_pk}={qb}", "--signature-wait", "0",
           "--receipts", "--receipts-key", r_sk)

    push(a_sk, out_a)
    push(b_sk, out_b)
    sync()
    assert sorted(os.listdir(qa / "jobs")) == sorted(names_a.values())
    assert sorted(os.listdir(qb / "jobs")) == sorted(names_b.values())
    assert len(_batches(remote)) == 2  # one per routed queue: one per sender
    assert run_cli("queue-process", "-q", str(qa), "--", "sh", "-c",
                   'read x; [ "$x" != fail ] || exit 7').returncode != 0
    assert run_cli("queue-process", "-q", str(qb), "--", "true").returncode == 0
    sync()
    assert len(_batches(remote)) == 4

    # A's push takes A's batches only (no refusal, exit 0); B's stay for B
    push(a_sk, out_a)
    assert os.listdir(out_a / "jobs") == [names_a[2]]
    assert len(_batches(remote)) == 2
    kept = {n: _read(remote, tmp_path, n) for n in remote.receipts_dir()}
    bodies = [json.loads(v) for n, v in kept.items() if n.endswith(".json")]
    assert {b["receipts"][0]["name"] for b in bodies} <= set(names_b.values())
    assert all(b["sender"] and b["queue"] == "site-b" for b in bodies)
    st_a = json.loads(gw("status", "-q", str(out_a), "--json"))["queues"][0]["receipts"][0]
    assert (st_a["pushed"], st_a["delivered"], st_a["ran"]) == (2, 2, 1)
    assert [(f["seq"], f["exit"]) for f in st_a["failed"]] == [(2, 7)]

    # a batch forged with another key is refused (exit 3), B's own ones are taken
    forged = rc.Batch("e" * 32, "site-b", "h", 1.0, (rc.Receipt(
        "ran", names_b[1], 1, "0" * 64, 2.0, 1.0, 2.0, False, 1, "exit status 1"),))
    body = rc.encode_batch(forged)
    _put(remote, tmp_path, forged.file_name, body)
    _put(remote, tmp_path, forged.file_name + ".minisig",
         rc.sign_batch(generate_keypair(), body, "site-b"))
    r = run_cli("push", *remote.args, "-q", str(out_b), "--sign", b_sk, "--queue-id",
                "site-b", "--after-push", "keep-until-ran", "--trust-key", r_pk)
    assert r.returncode == 3 and "refus" in r.stderr
    assert os.listdir(out_b / "jobs") == []
    st_b = json.loads(gw("status", "-q", str(out_b), "--json"))["queues"][0]["receipts"][0]
    assert (st_b["pushed"], st_b["delivered"], st_b["ran"], st_b["failed"]) == (2, 2, 2, [])
    for n in (forged.file_name, forged.file_name + ".minisig"):
        _delete(remote, tmp_path, n)
    # replayed: B's batches put back are not counted again, and A leaves them alone
    for n, data in kept.items():
        _put(remote, tmp_path, n, data)
    push(a_sk, out_a)
    assert len(_batches(remote)) == 2
    push(b_sk, out_b)
    assert remote.receipts_dir() == []
    again = json.loads(gw("status", "-q", str(out_b), "--json"))["queues"][0]["receipts"][0]
    assert (again["delivered"], again["ran"], again["failed"]) == (2, 2, [])


def _area(remote: Remote, tmp_path: Path) -> Transport:
    from fspl_gateway.gateway.config import resolve_remote
    from fspl_gateway.gateway.remotes import open_remote

    args = remote.args
    t_name, loc = args[1], args[3]
    opts = tuple(args[i + 1] for i in range(4, len(args), 2))
    return open_remote(resolve_remote(loc, t_name, opts, config_file=None)).sibling(rc.AREA)


def _read(remote: Remote, tmp_path: Path, name: str) -> bytes:
    t = _area(remote, tmp_path)
    try:
        with t.open(name) as f:
            return f.read()
    finally:
        t.close()


def _put(remote: Remote, tmp_path: Path, name: str, data: bytes) -> None:
    t = _area(remote, tmp_path)
    try:
        t.make_area()
        t.write_new(name, io.BytesIO(data), len(data))
    finally:
        t.close()


def _delete(remote: Remote, tmp_path: Path, name: str) -> None:
    t = _area(remote, tmp_path)
    try:
        t.delete(name)
    finally:
        t.close()
