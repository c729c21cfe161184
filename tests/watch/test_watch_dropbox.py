"""`fspl-gw watch` on a Dropbox remote (the HTTPS stand-in): a job put on the remote is
fetched through the longpoll thread long before the poll interval, and SIGTERM is not
held up by a pending longpoll."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from tests.fixtures.dropbox_server import DropboxRemote
from tests.watch.util import Watch, job_names, packet, toml_str, wait_for, write_config

pytestmark = pytest.mark.timeout(60)


def _count(remote: DropboxRemote, route: str) -> int:
    return int(remote.standin.admin("stats")["counts"].get(route, 0))


def test_dropbox_job_fetched_through_longpoll(tmp_path: Path,
                                              dropbox_remote: DropboxRemote) -> None:
    q = tmp_path / "q"
    cfg = write_config(tmp_path / "c.toml", f"""
[remotes.box]
transport = "dropbox"
location = {toml_str(dropbox_remote.location)}
ca_bundle = {toml_str(dropbox_remote.standin.ca)}

[pipelines.from-box]
remote = "box"
queue = {toml_str(q)}
interval = 60
""")
    env = {**os.environ, "FSPL_GW_DROPBOX_ACCESS_TOKEN": dropbox_remote.access_token}
    longpolls = _count(dropbox_remote, "files/list_folder/longpoll")
    w = Watch(cfg, tmp_path, env)
    try:
        w.wait_log("reports changes (longpoll)", timeout=20)
        # The longpoll is waiting, and the pulls at start are over (the listing count
        # stays put): from now on only a change notification can start a pull.
        wait_for(lambda: _count(dropbox_remote, "files/list_folder/longpoll") > longpolls,
                 10, "a longpoll request")
        lists = -1
        for _ in range(100):
            n = _count(dropbox_remote, "files/list_folder")
            if n == lists:
                break
            lists = n
            time.sleep(0.3)
        waiting = _count(dropbox_remote, "files/list_folder/longpoll")

        name = "fspl-00000000-0000-4000-8000-00000000d0b0.fspl"
        body = packet(1, b"from dropbox")
        other = dropbox_remote.make()
        other.write_new(name, io.BytesIO(body), len(body))
        t0 = time.monotonic()
        took = wait_for(lambda: name in job_names(q), 3.0, "the Dropbox job to be fetched")
        assert (q / "jobs" / name).read_bytes() == body
        assert _count(dropbox_remote, "files/list_folder") > lists
        wait_for(lambda: not (dropbox_remote.jobs_dir / name).exists(), 3,
                 "the remote copy to be deleted")
        # the thread went back to waiting (a new longpoll request after the change)
        wait_for(lambda: _count(dropbox_remote, "files/list_folder/longpoll") > waiting, 5,
                 "the next longpoll")
        print(f"Dropbox job fetched {took * 1000:.0f} ms after the upload returned "
              f"({time.monotonic() - t0:.2f} s incl. delete); interval is 60 s")
        other.close()
    finally:
        start = time.monotonic()
        assert w.stop() == 0, w.log()
        stopped = time.monotonic() - start
    print(f"SIGTERM with a longpoll pending: exited in {stopped:.2f} s")
    assert stopped < 5, w.log()
