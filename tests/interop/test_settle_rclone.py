"""Item 1 of issue 12 with a real writer: rclone 1.60 uploads a job under its final name
(slowly, ``--bwlimit``) into a local remote and into ``rclone serve sftp`` while sync
runs again and again, as cron would.  The job must be taken whole, once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fspl_gateway.core.packet import Meta, encode_header
from fspl_gateway.core.queue import queue_init
from fspl_gateway.gateway.pull import SyncOptions, pull
from fspl_gateway.transports import base
from tests.fixtures.rclone import RcloneSFTP, RcloneUploader

SIZE = 2 << 20


@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_job_being_uploaded_is_taken_only_whole(kind: str, tmp_path: Path,
                                                 rclone_uploader: RcloneUploader,
                                                 request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSPL_GW_SETTLE", "1")  # the suite's default is 0
    data = encode_header(Meta(1, (1700000000, 0), "NOP")) + os.urandom(SIZE)
    src = tmp_path / "src.fspl"
    src.write_bytes(data)
    if kind == "local":
        rjobs = tmp_path / "remote" / "jobs"
        rjobs.mkdir(parents=True)
        dest = f"{rclone_uploader.add_local('dst')}{rjobs}/fspl-up.fspl"
        t = base.create("local", str(rjobs.parent))
    else:
        server: RcloneSFTP = request.getfixturevalue("rclone_sftp")
        rjobs = server.root / "q" / "jobs"
        rjobs.mkdir(parents=True)
        dest = f"{rclone_uploader.add_sftp('up', server)}/q/jobs/fspl-up.fspl"
        t = base.create("sftp", server.location("/q"), server.options)
    q = tmp_path / "q"
    queue_init(str(q))
    proc = rclone_uploader.start("copyto", src, dest, bwlimit="512k")  # ~4 s
    runs = fetched = 0
    seen_partial = False
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            done = proc.poll() is not None
            if (rjobs / "fspl-up.fspl").exists() and not done:
                seen_partial = seen_partial or (rjobs / "fspl-up.fspl").stat().st_size < len(data)
            res = pull(t, q, SyncOptions(progress=False))
            runs += 1
            fetched += res.fetched
            assert res.exit_code == 0 and res.failed == 0, res.summary()
            for name in os.listdir(q / "jobs"):  # whatever is in jobs/ is whole
                assert (q / "jobs" / name).read_bytes() == data, f"run {runs}: {name} partial"
            if fetched and done:
                break
            time.sleep(0.2)
    finally:
        t.close()
    assert proc.wait(timeout=30) == 0
    assert seen_partial, "the test did not catch the upload in progress"
    assert fetched == 1 and os.listdir(q / "jobs") == ["fspl-up.fspl"]
    assert not (rjobs / "fspl-up.fspl").exists()  # removed from the remote once taken
    assert runs > 1
