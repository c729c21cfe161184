"""One logger tree (fspl_gateway.core.log): our modules' messages — transports included —
follow ``-l``, printed as ``LEVEL fspl_gw: message``; foreign libraries' loggers stay at
warnings unless tracing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fspl_gateway.core.log import ROOT, get_logger
from tests.helpers import run_gw
from tests.unit.test_sync import job_set, make_remote

REPO = Path(__file__).resolve().parents[2]
#: Every line our CLI writes to stderr (fspl's shape, target always fspl_gw).
OUR_LINE = re.compile(r"^(TRACE|DEBUG| INFO| WARN|ERROR) fspl_gw: ")


def _lines(stderr: bytes) -> list[str]:
    return stderr.decode("utf-8", "replace").splitlines()


def test_get_logger_is_a_child_of_the_tree() -> None:
    assert get_logger("fspl_gateway.transports.s3").name == f"{ROOT}.transports.s3"
    assert get_logger("fspl_gateway.gateway.media").parent is not None
    assert get_logger("fspl_gateway").name == ROOT
    assert get_logger("fspl_gw.x").name == "fspl_gw.x"
    assert get_logger("plugin_transport").name == f"{ROOT}.plugin_transport"


def test_no_module_logs_outside_the_tree() -> None:
    """Only core/log.py may call logging.getLogger: every other module uses
    get_logger(__name__), else its messages would be capped like a foreign library's."""
    offenders = []
    for top in ("fspl_gateway", "transports"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path == REPO / "fspl_gateway" / "core" / "log.py":
                continue
            text = path.read_text()
            if re.search(r"\bgetLogger\(", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == [], f"use fspl_gateway.core.log.get_logger(__name__) in {offenders}"


def test_transport_debug_messages_show_at_debug(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "remote", job_set(2))
    (remote / "jobs" / "not-a-file").mkdir()
    queue = tmp_path / "q"
    assert run_gw("queue-init", "-q", str(queue)).returncode == 0
    r = run_gw("-l", "debug", "sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stderr)
    want = f"DEBUG fspl_gw: not a regular file, ignored: {remote}/jobs/not-a-file"
    assert want in lines, r.stderr.decode()
    assert all(OUR_LINE.match(x) for x in lines), r.stderr.decode()
    # and not at info
    r = run_gw("sync", "-t", "local", "-r", str(remote), "-q", str(queue))
    assert r.returncode == 0 and "not a regular file" not in r.stderr.decode()


def test_s3_sync_at_debug_has_no_botocore_chatter(tmp_path: Path, s3_bucket: Any) -> None:
    for name, data in job_set(2).items():
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"dbg/jobs/{name}", Body=data)
    queue = tmp_path / "q"
    assert run_gw("queue-init", "-q", str(queue)).returncode == 0
    args = ["sync", "-t", "s3", "-r", f"s3://{s3_bucket.name}/dbg", "-q", str(queue),
            "-o", f"endpoint_url={s3_bucket.options['endpoint_url']}", "-o", "path_style=true"]
    r = run_gw("-l", "debug", *args)
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stderr)
    assert lines and all(OUR_LINE.match(x) for x in lines), r.stderr.decode()
    assert any(x.startswith("DEBUG fspl_gw: fetched ") for x in lines)
    assert "botocore" not in r.stderr.decode() and "urllib3" not in r.stderr.decode()
    assert len(os.listdir(queue / "jobs")) == 2
    # the check above can fail: tracing lets the SDK's own debug lines through
    r = run_gw("-l", "trace", *args)
    assert r.returncode == 0 and "botocore" in r.stderr.decode()


def test_sftp_sync_at_debug_has_no_paramiko_chatter(tmp_path: Path, sftp_queue: Any) -> None:
    for name, data in job_set(2).items():
        (sftp_queue.jobs / name).write_bytes(data)
    queue = tmp_path / "q"
    assert run_gw("queue-init", "-q", str(queue)).returncode == 0
    opts = sftp_queue.options
    r = run_gw("-l", "debug", "sync", "-t", "sftp", "-r", sftp_queue.location, "-q", str(queue),
               "-o", f"identity_file={opts['identity_file']}",
               "-o", f"known_hosts={opts['known_hosts']}",
               "-o", f"ssh_config={opts['ssh_config']}")
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stderr)
    assert lines and all(OUR_LINE.match(x) for x in lines), r.stderr.decode()
    assert "paramiko" not in r.stderr.decode()
    assert len(os.listdir(queue / "jobs")) == 2
