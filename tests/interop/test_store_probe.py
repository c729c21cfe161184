"""Stores that overwrite (issue 12 item 3): the capability probe, its cache, the
``fspl-gw remote check`` report, and what multi-host workers and push do with the answer —
against moto, s3rver (ignores If-None-Match), ``rclone serve sftp`` (renames over an
existing file) and our OpenSSH sshd."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.gateway import probe
from fspl_gateway.gateway.multihost import HostOpts, run_hosts
from fspl_gateway.gateway.push import PushOptions, push
from fspl_gateway.transports import base
from tests.fixtures.rclone import RcloneSFTP
from tests.fixtures.s3rver import S3rver
from tests.fixtures.s3server import S3Bucket
from tests.fixtures.sshd import SFTPQueue
from tests.unit.test_sync import make_job, run_cli


def _opts_args(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in options.items():
        out += ["-o", f"{k}={v}"]
    return out


def _checks(report: dict[str, Any]) -> dict[str, bool | None]:
    return {k: v["ok"] for k, v in report["checks"].items()}


# -- fspl-gw remote check -----------------------------------------------------------------

def test_remote_check_moto_all_good(s3_bucket: S3Bucket) -> None:
    r = run_cli("remote", "check", "-t", "s3", "-r", s3_bucket.location("q"),
                *_opts_args(s3_bucket.options), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    checks = _checks(rep)
    assert checks["no-clobber create"] is True
    assert checks["conditional writes"] is True
    assert checks["multipart listing"] is True
    assert checks["delete"] is True
    assert checks["clock skew"] is True
    assert rep["safe_for_multihost"] is True
    # no probe object is left behind
    assert "Contents" not in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)


def test_remote_check_s3rver_lacks_everything(s3rver: S3rver, tmp_path: Path) -> None:
    queue = tmp_path / "q"
    q.queue_init(str(queue))
    r = run_cli("remote", "check", "-t", "s3", "-r", s3rver.location("q"),
                *_opts_args(s3rver.options), "-q", str(queue), env=s3rver.env)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "no-clobber create" in text and "OVERWROTE" in text
    assert "multi-host workers: refused" in text
    r = run_cli("remote", "check", "-t", "s3", "-r", s3rver.location("q"),
                *_opts_args(s3rver.options), "--json", env=s3rver.env)
    checks = _checks(json.loads(r.stdout))
    assert checks["no-clobber create"] is False
    assert checks["conditional writes"] is False
    assert checks["checksum validation"] is False
    assert checks["multipart listing"] is False
    assert checks["delete"] is True
    # the answer was cached in the queue given with -q
    with base.create("s3", s3rver.location("q"), s3rver.options) as t:
        assert probe.cached_noclobber(QueueLayout(str(queue)), t.describe()) is False
        assert not list(t.list())


def test_remote_check_declared_racy(s3_bucket: S3Bucket) -> None:
    r = run_cli("remote", "check", "-t", "s3", "-r", s3_bucket.location("q"),
                *_opts_args({**s3_bucket.options, "conditional_writes": "false"}), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["checks"]["no-clobber create"]["ok"] is False
    assert "racy" in rep["checks"]["no-clobber create"]["detail"]


def test_probe_rclone_serve_sftp_overwrites(rclone_sftp: RcloneSFTP, tmp_path: Path) -> None:
    (rclone_sftp.root / "q" / "jobs").mkdir(parents=True)
    with base.create("sftp", rclone_sftp.location("/q"), rclone_sftp.options) as t:
        p = probe.probe_noclobber(t)
        assert p.refused is False and p.deleted is True
        assert os.listdir(rclone_sftp.root / "q" / "jobs") == []
        layout = QueueLayout(str(tmp_path / "work"))
        assert probe.verify_capabilities(t, layout) is False
        assert t.capabilities.atomic_noclobber is False
        assert probe.cached_noclobber(layout, t.describe()) is False


def test_probe_openssh_refuses(sftp_queue: SFTPQueue) -> None:
    with base.create("sftp", sftp_queue.location, sftp_queue.options) as t:
        rep = probe.check_remote(t)
        assert rep.get("no-clobber create").ok is True  # type: ignore[union-attr]
        assert rep.safe_for_claims
    assert os.listdir(sftp_queue.jobs) == []


def test_probe_cache_ttl(tmp_path: Path) -> None:
    layout = QueueLayout(str(tmp_path))
    probe.store_noclobber(layout, "s3://b/q", False)
    assert probe.cached_noclobber(layout, "s3://b/q") is False
    assert probe.cached_noclobber(layout, "other") is None
    import time
    assert probe.cached_noclobber(layout, "s3://b/q", time.time() + probe.CACHE_TTL + 1) is None


# -- enforcement ------------------------------------------------------------------------

def test_workers_refuse_rclone_serve_sftp(rclone_sftp: RcloneSFTP, tmp_path: Path) -> None:
    jobs = rclone_sftp.root / "q" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "fspl-1.fspl").write_bytes(make_job(1))
    args = ["-t", "sftp", "-r", rclone_sftp.location("/q"), *_opts_args(rclone_sftp.options)]
    r = run_cli("workers", *args, "-q", str(tmp_path / "work"), "-n", "2", "true")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "cannot create a file without overwriting" in r.stderr
    assert "Traceback" not in r.stderr
    assert (jobs / "fspl-1.fspl").exists()
    assert sorted(os.listdir(jobs)) == ["fspl-1.fspl"]  # no claim, no probe left


def test_workers_refuse_s3rver(s3rver: S3rver, tmp_path: Path) -> None:
    from fspl_gateway.core.process import ProcessOpts

    with base.create("s3", s3rver.location("q"), s3rver.options) as t:
        with pytest.raises(ConfigError, match="overwrit"):
            run_hosts(t, HostOpts(ProcessOpts("true", []), str(tmp_path / "work")), 2)


def test_push_to_overwriting_store_checks_first(s3rver: S3rver, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    outbox = tmp_path / "outbox"
    q.queue_init(str(outbox), append_only=True)
    name = "fspl-0001.fspl"
    (outbox / "jobs" / name).write_bytes(make_job(1, b"ours"))
    c = s3rver.client()
    with base.create("s3", s3rver.location("q"), s3rver.options) as t:
        # another sender's job of the same name lands after push listed the remote: push
        # must notice it just before writing, not overwrite it
        orig_list = t.list

        def list_then_race() -> Any:
            out = list(orig_list())
            c.put_object(Bucket=s3rver.bucket, Key=f"q/jobs/{name}", Body=make_job(1, b"theirs"))
            return iter(out)

        t.list = list_then_race  # type: ignore[method-assign]
        res = push(t, outbox, PushOptions(concurrency=1))
    assert res.conflicts == 1 and res.pushed == 0
    assert (outbox / "jobs" / name).exists()
    body = c.get_object(Bucket=s3rver.bucket, Key=f"q/jobs/{name}")["Body"].read()
    assert body == make_job(1, b"theirs")
    assert "may overwrite an existing job" in caplog.text
