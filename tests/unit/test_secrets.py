"""Secrets never leave the process (issue 12 item 10): a password in an SFTP location is
refused, and one in an S3 endpoint URL's userinfo is masked — a planted secret is looked
for in every output: stdout, stderr (at debug level), the journal database, status (text
and JSON) and the metrics file."""

from __future__ import annotations

from pathlib import Path

from fspl_gateway.core import queue as q
from fspl_gateway.core.redact import add_secret, redact, strip_userinfo
from tests.fixtures.sshd import _free_port as _closed_port
from tests.unit.test_sync import run_cli

SECRET = "Pl4ntedS3cretValue"


def _all_outputs(queue: Path, *runs: object) -> str:
    out = []
    for r in runs:
        out += [getattr(r, "stdout", ""), getattr(r, "stderr", "")]
    for p in queue.rglob("*"):
        if p.is_file():
            out.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


def test_redact_masks_userinfo_and_registered_values() -> None:
    assert redact("http://u:pw123@h:9/x") == "http://u:***@h:9/x"
    assert redact("location fspl:hunter2@127.0.0.1:22/q") == "location fspl:***@127.0.0.1:22/q"
    assert redact("s3://bucket/q/jobs/: access denied") == "s3://bucket/q/jobs/: access denied"
    add_secret("tok-ABCDEFG")
    assert redact("token tok-ABCDEFG refused") == "token *** refused"
    assert strip_userinfo("http://u:p@[::1]:9/") == "http://[::1]:9/"


def test_password_in_sftp_location_refused(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    q.queue_init(str(queue))
    r = run_cli("-l", "debug", "sync", "-t", "sftp", "-r", f"fspl:{SECRET}@127.0.0.1:22/q",
                "-q", str(queue))
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "password in the location is not accepted" in err[0]
    assert "identity_file" in err[0] and "ssh-agent" in err[0]
    assert SECRET not in _all_outputs(queue, r)


def test_s3_endpoint_userinfo_never_shown(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    q.queue_init(str(queue))
    endpoint = f"http://AKIDEXAMPLE:{SECRET}@127.0.0.1:{_closed_port()}"
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION":
           "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
           "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    r = run_cli("-l", "debug", "sync", "-t", "s3", "-r", "bucket/q", "-o",
                f"endpoint_url={endpoint}", "-o", "max_attempts=1", "-o",
                "connect_timeout=0.5", "--retries", "1", "-q", str(queue), env=env)
    assert r.returncode == 1, r.stderr
    assert "127.0.0.1" in r.stderr  # the error is there, the secret is not
    status = run_cli("status", "-q", str(queue))
    status_json = run_cli("status", "--json", "-q", str(queue))
    metrics = tmp_path / "m.prom"
    status_metrics = run_cli("status", "--metrics-file", str(metrics), "-Q", "-q", str(queue))
    assert status.returncode == 0, status.stderr
    text = _all_outputs(queue, r, status, status_json, status_metrics)
    text += metrics.read_text()
    assert "bucket" in status.stdout + status_json.stdout
    assert SECRET not in text
