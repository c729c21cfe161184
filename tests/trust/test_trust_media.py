"""Signed media: export --sign writes each job's signature and signs the manifest once
per medium; import --trust verifies both."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import run_gw
from tests.trust.test_trust_cli import _ok, _outbox, _queue, keys  # noqa: F401
from tests.trust.util import reasons


def test_signed_stick_round_trip_and_refusals(tmp_path: Path,
                                              keys: tuple[Path, str, str]) -> None:  # noqa: F811
    key, kid, pub = keys
    ob = _outbox(tmp_path, 3)
    stick = tmp_path / "stick"
    stick.mkdir()
    _ok(run_gw("export", "-q", str(ob), "--to", str(stick), "--sign", str(key),
               "--queue-id", "site-b"))
    names = sorted(os.listdir(stick / "jobs"))
    assert sum(n.endswith(".minisig") for n in names) == 3
    assert (stick / "MANIFEST.sha256.minisig").exists()
    trust = ["--trust", pub, "--queue-id", "site-b"]
    q = _queue(tmp_path, "inbox")
    r = run_gw("import", "-q", str(q), "--from", str(stick), *trust)
    assert r.returncode == 0, r.stderr
    assert kid.encode() in r.stderr
    assert len(os.listdir(q / "jobs")) == 3
    # an unsigned job slipped onto the stick (and into its manifest) is quarantined
    ob2 = _outbox(tmp_path, 1, "outbox2")
    (job,) = os.listdir(ob2 / "jobs")
    _ok(run_gw("export", "-q", str(ob2), "--to", str(stick)))  # unsigned export rewrites
    q2 = _queue(tmp_path, "inbox2")
    r = run_gw("import", "-q", str(q2), "--from", str(stick), *trust)
    assert r.returncode != 0  # the manifest's signature no longer matches
    assert b"manifest" in r.stderr and os.listdir(q2 / "jobs") == []
    _ok(run_gw("export", "-q", str(_outbox(tmp_path, 0, "empty")), "--to", str(stick),
               "--sign", str(key), "--queue-id", "site-b"))  # re-sign the manifest
    r = run_gw("import", "-q", str(q2), "--from", str(stick), *trust)
    assert r.returncode == 3, r.stderr
    assert reasons(q2)[job].startswith("unsigned")
    assert job not in os.listdir(q2 / "jobs") and len(os.listdir(q2 / "jobs")) == 3
    # wrong queue id: nothing imported
    q3 = _queue(tmp_path, "inbox3")
    r = run_gw("import", "-q", str(q3), "--from", str(stick), "--trust", pub,
               "--queue-id", "site-c")
    assert r.returncode != 0 and os.listdir(q3 / "jobs") == []
