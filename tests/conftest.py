"""Shared fixtures.  Server fixtures live in tests/fixtures/ (one module per server) and
conformance backends in tests/transports/backends/; both are loaded here as plugins."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.s3server",
    "tests.fixtures.sshd",
    "tests.fixtures.dropbox_server",
    "tests.transports.backends.local",
    "tests.transports.backends.media",
    "tests.transports.backends.s3",
    "tests.transports.backends.sftp",
    "tests.transports.backends.dropbox",
]


@pytest.fixture(autouse=True)
def _stable_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's config, Dropbox tokens or FSPL_SET_ variables."""
    for k in list(os.environ):
        if k.startswith(("FSPL_SET_", "FSPL_GW_DROPBOX_")) or k == "FSPL_GW_CONFIG":
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TZ", os.environ.get("TZ", "UTC"))
    # Tests write a remote file and sync it at once: no settle wait unless a test asks
    # for one (the settle tests set the option or FSPL_GW_SETTLE themselves).
    monkeypatch.setenv("FSPL_GW_SETTLE", "0")


@pytest.fixture
def fspl_bin() -> str:
    """Path of the real fspl binary (the test command installs Debian's filespooler)."""
    path = shutil.which("fspl")
    if path is None:
        pytest.fail("the real fspl is not installed: run ./scripts/test, which installs it")
    return path


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    """A fresh, initialized (non-append-only) queue directory."""
    from fspl_gateway.core import queue as q

    path = tmp_path / "queue"
    q.queue_init(str(path))
    return path


# Real peers nobody here wrote (issue 12): s3rver from npm, rclone serve sftp + uploader.
pytest_plugins += ["tests.fixtures.s3rver", "tests.fixtures.rclone"]
