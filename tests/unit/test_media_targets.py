"""``export --to STICK`` never writes through a symlink on the stick (issue 12 item 7):
the stick root, its ``jobs/`` and its manifest are refused when they are links, before
anything is written, and the outbox stays as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fspl_gateway.core.errors import TransportError
from fspl_gateway.gateway.media import export_dir
from tests.helpers import run_gw
from tests.unit.test_media import make_outbox


@pytest.mark.parametrize("link", ["jobs", "MANIFEST.sha256", "root"])
def test_export_refuses_symlinked_targets(tmp_path: Path, link: str) -> None:
    ob = make_outbox(tmp_path, {"fspl-a.fspl": b"x" * 100})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stick = tmp_path / "stick"
    if link == "root":
        stick.symlink_to(elsewhere)
    else:
        stick.mkdir()
        target = elsewhere if link == "jobs" else elsewhere / "manifest"
        (stick / link).symlink_to(target)
    with pytest.raises(TransportError, match="symbolic link"):
        export_dir(str(ob), str(stick))
    assert os.listdir(elsewhere) == []  # nothing written where the link points
    assert os.listdir(ob / "jobs") == ["fspl-a.fspl"]
    r = run_gw("export", "-q", str(ob), "--to", str(stick))
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    assert r.stderr.decode().count("\n") == 1 and "symbolic link" in r.stderr.decode()
    assert os.listdir(elsewhere) == [] and os.listdir(ob / "jobs") == ["fspl-a.fspl"]
