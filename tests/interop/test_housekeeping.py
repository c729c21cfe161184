"""Housekeeping never blocks the main job (issue 12 item 5): a store that answers
ListMultipartUploads with 501 (s3rver) or a key that may not list them (AccessDenied)
costs one warning, and sync/push do their work."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import AuthError
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.gateway.push import PushOptions, push
from fspl_gateway.transports.local import LocalTransport
from tests.fixtures.s3rver import S3rver
from tests.unit.test_sync import make_job, run_cli


def test_sync_and_push_on_s3rver_with_501_multipart_listing(s3rver: S3rver,
                                                            tmp_path: Path) -> None:
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    q.queue_init(str(outbox), append_only=True)
    q.queue_init(str(inbox))
    (outbox / "jobs" / "fspl-a.fspl").write_bytes(make_job(1))
    opts = ["-t", "s3", "-r", s3rver.location("q"), "-o", f"endpoint_url={s3rver.endpoint}",
            "-o", "path_style=true"]
    r = run_cli("push", *opts, "-q", str(outbox), env=s3rver.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("skipped the clean-up of stale temporaries") == 1, r.stderr
    assert "does not list multipart uploads" in r.stderr
    r = run_cli("sync", *opts, "-q", str(inbox), env=s3rver.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("skipped the clean-up") == 1, r.stderr
    assert (inbox / "jobs" / "fspl-a.fspl").read_bytes() == make_job(1)


class _Denied(LocalTransport):
    """A least-privilege key: everything but the clean-up is allowed."""

    calls = 0

    def cleanup_temporaries(self) -> int:
        type(self).calls += 1
        raise AuthError("s3://b/q/jobs/: access denied (AccessDenied)")


def test_access_denied_cleanup_is_one_warning(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    remote, inbox, outbox = tmp_path / "remote", tmp_path / "inbox", tmp_path / "outbox"
    (remote / "jobs").mkdir(parents=True)
    q.queue_init(str(inbox))
    q.queue_init(str(outbox), append_only=True)
    (outbox / "jobs" / "fspl-b.fspl").write_bytes(make_job(1))
    res = push(_Denied(str(remote)), outbox, PushOptions(progress=False))
    assert (res.pushed, res.exit_code) == (1, 0)
    res2 = pull(_Denied(str(remote)), inbox, SyncOptions(progress=False))
    assert (res2.fetched, res2.exit_code) == (1, 0)
    assert _Denied.calls == 2  # an AuthError is not retried
    assert caplog.text.count("skipped the clean-up of stale temporaries") == 2
