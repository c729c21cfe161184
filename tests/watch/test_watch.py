"""`fspl-gw watch` as a subprocess: inotify on local queues, polled remotes (local and
S3), media import, SIGTERM during a job or a transfer, SIGHUP reload, failing remotes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from fspl_gateway.core.queue import queue_init
from fspl_gateway.core.seqfile import read_unlocked
from fspl_gateway.gateway.media import export_dir
from tests.helpers import PatternReader, run_gw, sha256_file
from tests.watch.util import (
    Watch,
    job_names,
    packet,
    put_job,
    read,
    toml_str,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(60)

LOGJOB = 'process = ["sh", "-c", "echo \\"seq=$FSPL_SEQ $(cat)\\" >> {log}"]'


def _logjob(log: Path) -> str:
    return LOGJOB.format(log=str(log).replace('"', '\\\\"'))


def _mkremote(path: Path) -> Path:
    (path / "jobs").mkdir(parents=True)
    return path


def test_local_queue_job_processed_within_2s(tmp_path: Path) -> None:
    """A job landing in a watched queue runs at once (inotify, not the 30 s rescan); a
    job that landed while the gateway was down runs at start; the metrics file is kept."""
    q = tmp_path / "q"
    queue_init(str(q))
    log = tmp_path / "jobs.log"
    put_job(q / "jobs", 1, b"while-down")
    metrics = tmp_path / "fspl_gw.prom"
    cfg = write_config(tmp_path / "c.toml", f"""
[watch]
rescan = 30
metrics_file = {toml_str(metrics)}
metrics_interval = 0.2

[pipelines.local]
queue = {toml_str(q)}
{_logjob(log)}
""")
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log(f"watching {q / 'jobs'}")
        wait_for(lambda: "seq=1 while-down" in read(log), 5, "the job queued while down")
        t0 = time.monotonic()
        r = run_gw("queue-write", "-q", str(q), input=packet(2, b"landed"))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "seq=2 landed" in read(log), 2.0, "the new job to run")
        took = time.monotonic() - t0
        assert took < 2.0
        # the log line is written by the job; removal and nextseq follow it
        wait_for(lambda: job_names(q) == [] and read_unlocked(str(q / "nextseq")) == 3, 2,
                 "the job to be removed and nextseq advanced")
        line = 'fspl_gw_queue_next_seq{queue="' + str(q) + '"} 3'
        wait_for(lambda: line in read(metrics).splitlines(), 3,
                 "the metrics file with next seq 3")
        print(f"job processed {took * 1000:.0f} ms after queue-write")
    finally:
        assert w.stop() == 0, w.log()


def test_polled_local_remote_fetched_within_interval(tmp_path: Path) -> None:
    remote = _mkremote(tmp_path / "remote")
    q = tmp_path / "q"
    cfg = write_config(tmp_path / "c.toml", f"""
[remotes.here]
transport = "local"
location = {toml_str(remote)}

[pipelines.in]
remote = "here"
queue = {toml_str(q)}
interval = 1
""")
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log("sync: 0 fetched")  # debug: first poll done (queue created by watch)
        t0 = time.monotonic()
        name = put_job(remote / "jobs", 1, b"x" * 1000)
        took = wait_for(lambda: name in job_names(q), 1.0 + 0.8, "the job to be fetched")
        wait_for(lambda: not os.path.exists(remote / "jobs" / name), 2,
                 "the remote copy to be deleted (after = delete)")
        print(f"fetched {(time.monotonic() - t0) * 1000:.0f} ms after it appeared (interval 1 s)")
        assert took <= 1.8
    finally:
        assert w.stop() == 0, w.log()


def test_polled_s3_remote_fetched_within_interval(tmp_path: Path, s3_bucket) -> None:  # noqa: ANN001
    q = tmp_path / "q"
    cfg = write_config(tmp_path / "c.toml", f"""
[remotes.bucket]
transport = "s3"
location = {toml_str(s3_bucket.location("site-b"))}
endpoint_url = {toml_str(s3_bucket.options["endpoint_url"])}
path_style = true

[pipelines.from-s3]
remote = "bucket"
queue = {toml_str(q)}
interval = 1
""")
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log("sync: 0 fetched", timeout=20)
        name = "fspl-00000000-0000-4000-8000-000000000001.fspl"
        body = packet(1, b"from s3")
        t0 = time.monotonic()
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"site-b/jobs/{name}", Body=body)
        took = wait_for(lambda: name in job_names(q), 1.0 + 1.5, "the S3 job to be fetched")
        assert (q / "jobs" / name).read_bytes() == body
        wait_for(lambda: "Contents" not in s3_bucket.client.list_objects_v2(
            Bucket=s3_bucket.name, Prefix="site-b/jobs/"), 3, "the remote copy to be deleted")
        print(f"S3 job fetched {took * 1000:.0f} ms after the PUT returned "
              f"({(time.monotonic() - t0):.2f} s incl. delete)")
    finally:
        assert w.stop() == 0, w.log()


def test_media_mounted_under_root_is_imported_once(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    queue_init(str(outbox), append_only=True)
    for seq in (1, 2, 3):
        put_job(outbox / "jobs", seq, b"sneakernet %d" % seq)
    staging = tmp_path / "staging"
    (staging / "STICK").mkdir(parents=True)
    res = export_dir(str(outbox), str(staging / "STICK"))
    assert res.exported == 3
    media = tmp_path / "media"
    (media / "user").mkdir(parents=True)
    q = tmp_path / "q"
    log = tmp_path / "jobs.log"
    cfg = write_config(tmp_path / "c.toml", f"""
[watch]
media_root = {toml_str(media)}
media_pipeline = "in"
media_interval = 0.2

[pipelines.in]
queue = {toml_str(q)}
{_logjob(log)}
""")
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log(f"watching {media}")
        os.rename(staging / "STICK", media / "user" / "STICK")  # "mounted"
        wait_for(lambda: read(log).count("sneakernet") == 3, 5, "the three media jobs to run")
        assert [ln.split()[0] for ln in read(log).splitlines()] == ["seq=1", "seq=2", "seq=3"]
        time.sleep(1.0)  # five more scans of the root
        assert w.log().count("media: importing") == 1, w.log()
        seen = json.loads((q / ".fspl-gw" / "media-seen.json").read_text())
        assert list(seen) == [str(media / "user" / "STICK")]
        assert seen[str(media / "user" / "STICK")][-1] == 1
        assert sorted(os.listdir(media / "user" / "STICK" / "jobs")) == sorted(res.names)
    finally:
        assert w.stop() == 0, w.log()


def test_sigterm_during_a_job_finishes_it_and_starts_no_other(tmp_path: Path) -> None:
    q = tmp_path / "q"
    queue_init(str(q))
    log = tmp_path / "jobs.log"
    first = put_job(q / "jobs", 1, b"one")
    second = put_job(q / "jobs", 2, b"two")
    cfg = write_config(tmp_path / "c.toml", f"""
[watch]
grace = 10

[pipelines.slow]
queue = {toml_str(q)}
process = ["sh", "-c", "echo start $FSPL_SEQ >> {log}; sleep 1.5; cat >/dev/null; echo done $FSPL_SEQ >> {log}"]
""")
    w = Watch(cfg, tmp_path)
    wait_for(lambda: "start 1" in read(log), 10, "job 1 to start")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    rc = w.proc.wait(10)
    took = time.monotonic() - t0
    w.stop()
    assert rc == 0, w.log()
    assert read(log).splitlines() == ["start 1", "done 1"]
    assert job_names(q) == [second]  # job 1 done and removed, job 2 never started
    assert first not in job_names(q)
    assert read_unlocked(str(q / "nextseq")) == 2
    assert took < 10
    print(f"exited {took:.2f} s after SIGTERM (job needed 1.5 s)")


def test_sigterm_during_a_transfer_leaves_no_partial_job(tmp_path: Path) -> None:
    remote = _mkremote(tmp_path / "remote")
    size = 256 << 20
    name = "fspl-00000000-0000-4000-8000-0000000000aa.fspl"
    src = remote / "jobs" / name
    with open(src, "wb") as f:
        f.write(packet(1))
        pr = PatternReader(size)
        while chunk := pr.read(1 << 20):
            f.write(chunk)
    want = sha256_file(src)
    q = tmp_path / "q"
    queue_init(str(q))
    staging = q / ".fspl-gw" / "staging"
    cfg = write_config(tmp_path / "c.toml", f"""
[watch]
grace = 20

[remotes.big]
transport = "local"
location = {toml_str(remote)}

[pipelines.big]
remote = "big"
queue = {toml_str(q)}
interval = 1
""")
    w = Watch(cfg, tmp_path)
    wait_for(lambda: staging.is_dir() and os.listdir(staging), 10, "the transfer to start",
             step=0.002)
    w.signal(signal.SIGTERM)
    rc = w.proc.wait(20)
    w.stop()
    assert rc == 0, w.log()
    jobs = os.listdir(q / "jobs")
    assert jobs in ([], [name]), jobs  # nothing else: no temporary, no partial file
    if jobs:  # the running transfer was finished, then linked in whole
        assert sha256_file(q / "jobs" / name) == want
    else:
        assert sha256_file(src) == want
    print("transfer finished before exit" if jobs else "transfer had not been linked")


def test_sighup_reload_starts_a_new_pipeline(tmp_path: Path) -> None:
    q1, q2 = tmp_path / "q1", tmp_path / "q2"
    queue_init(str(q1))
    queue_init(str(q2))
    log1, log2 = tmp_path / "1.log", tmp_path / "2.log"
    base = f"""
[pipelines.one]
queue = {toml_str(q1)}
{_logjob(log1)}
"""
    cfg = write_config(tmp_path / "c.toml", base)
    w = Watch(cfg, tmp_path)
    try:
        w.wait_log(f"watching {q1 / 'jobs'}")
        put_job(q2 / "jobs", 1, b"early")
        time.sleep(0.3)
        assert read(log2) == ""  # not a pipeline yet
        write_config(cfg, base + f"""
[pipelines.two]
queue = {toml_str(q2)}
{_logjob(log2)}
""")
        w.signal(signal.SIGHUP)
        wait_for(lambda: "seq=1 early" in read(log2), 3, "the new pipeline's catch-up")
        w.wait_log(f"watching {q2 / 'jobs'}")
        put_job(q2 / "jobs", 2, b"late")
        wait_for(lambda: "seq=2 late" in read(log2), 2, "the new pipeline to see a new job")
        # A broken config is refused; the running pipelines go on.
        cfg.write_text("[pipelines.broken\n")
        w.signal(signal.SIGHUP)
        w.wait_log("reload failed")
        put_job(q1 / "jobs", 1, b"still")
        wait_for(lambda: "seq=1 still" in read(log1), 2, "pipeline one to go on")
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0, w.log()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_failing_remotes_do_not_stop_another_pipeline(tmp_path: Path) -> None:
    good = _mkremote(tmp_path / "good")
    qs = {n: tmp_path / f"q-{n}" for n in ("gone", "s3down", "good")}
    cfg = write_config(tmp_path / "c.toml", f"""
[remotes.gone]
transport = "local"
location = {toml_str(tmp_path / "does-not-exist")}

[remotes.s3down]
transport = "s3"
location = "bucket/x"
endpoint_url = "http://127.0.0.1:{_closed_port()}"
path_style = true
max_attempts = 1
connect_timeout = 1

[remotes.good]
transport = "local"
location = {toml_str(good)}

[pipelines.gone]
remote = "gone"
queue = {toml_str(qs["gone"])}
interval = 0.3
retries = 1

[pipelines.s3down]
remote = "s3down"
queue = {toml_str(qs["s3down"])}
interval = 0.3
retries = 1

[pipelines.good]
remote = "good"
queue = {toml_str(qs["good"])}
interval = 0.3
""")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    w = Watch(cfg, tmp_path, env)
    try:
        w.wait_log("pipeline gone: sync with remote gone failed", timeout=10)
        w.wait_log("pipeline s3down: sync with remote s3down failed", timeout=20)
        names = [put_job(good / "jobs", i, b"ok") for i in (1, 2)]
        wait_for(lambda: job_names(qs["good"]) == sorted(names), 3, "the good remote's jobs")
        time.sleep(0.5)
        names.append(put_job(good / "jobs", 3, b"ok"))
        wait_for(lambda: job_names(qs["good"]) == sorted(names), 3, "a later job as well")
        assert w.proc.poll() is None
        # the failures are on record for status
        st = run_gw("status", "--config", str(cfg), "--json")
        assert st.returncode == 0, st.stderr
        by_q = {s["queue"]: s for s in json.loads(st.stdout)["queues"]}
        assert [r["ok"] for r in by_q[str(qs["gone"])]["remotes"]] == [False]
        assert [r["ok"] for r in by_q[str(qs["s3down"])]["remotes"]] == [False]
        assert [r["ok"] for r in by_q[str(qs["good"])]["remotes"]] == [True]
        assert "retrying in" in w.log()
    finally:
        assert w.stop() == 0, w.log()


def test_workers_pipeline_runs_jobs_and_stops_cleanly(tmp_path: Path) -> None:
    q = tmp_path / "q"
    queue_init(str(q))
    log = tmp_path / "jobs.log"
    for seq in (1, 2, 3):
        put_job(q / "jobs", seq, b"w%d" % seq)
    cfg = write_config(tmp_path / "c.toml", f"""
[watch]
grace = 5

[pipelines.par]
queue = {toml_str(q)}
workers = 2
command = ["sh", "-c", "echo \\"seq=$FSPL_SEQ $(cat)\\" >> {log}"]
""")
    w = Watch(cfg, tmp_path)
    try:
        wait_for(lambda: len(read(log).splitlines()) == 3, 10, "three jobs run by the workers")
        assert sorted(read(log).splitlines()) == ["seq=1 w1", "seq=2 w2", "seq=3 w3"]
    finally:
        assert w.stop() == 0, w.log()
    assert "workers exited" not in w.log()
