"""Signed media: export --sign writes each job's signature and signs the manifest once
per medium; import --trust verifies both."""

from __future__ import annotations

import os
import subprocess
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


def _iso_files(iso: Path) -> dict[str, bytes]:
    """Every file of an image's jobs/ and its manifest signature, read without mounting."""
    from fspl_gateway.transports.media import MediaTransport

    with MediaTransport(str(iso)) as t:
        assert isinstance(t, MediaTransport)
        out = {}
        for e in t.list():
            with t.open(e.name) as f:
                out[e.name] = f.read()
        with t.open_manifest_signature() as f:
            out["MANIFEST.sha256.minisig"] = f.read()
        with t.open_manifest() as f:
            out["MANIFEST.sha256"] = f.read()
    return out


def test_signed_iso_round_trip(tmp_path: Path, keys: tuple[Path, str, str]) -> None:  # noqa: F811
    key, kid, pub = keys
    ob = _outbox(tmp_path, 3)
    iso = tmp_path / "jobs.iso"
    _ok(run_gw("export", "-q", str(ob), "--to", str(iso), "--sign", str(key),
               "--queue-id", "site-b", "--keep"))
    files = _iso_files(iso)
    sigs = [n for n in files if n.startswith("fspl-") and n.endswith(".minisig")]
    assert len(sigs) == 3 and len(files) == 3 + 3 + 2
    # what standard tools check: minisign -V of the manifest and of each job
    for n in ["MANIFEST.sha256", *(s[:-len(".minisig")] for s in sigs)]:
        (tmp_path / n).write_bytes(files[n])
        (tmp_path / (n + ".minisig")).write_bytes(files[n + ".minisig"])
        r = subprocess.run(["minisign", "-V", "-P", pub, "-m", str(tmp_path / n)],
                           capture_output=True)
        assert r.returncode == 0, r.stderr
    q = _queue(tmp_path, "inbox")
    r = run_gw("import", "-q", str(q), "--from", str(iso), "--trust", pub,
               "--queue-id", "site-b")
    assert r.returncode == 0, r.stderr
    assert f"manifest signed by {kid}".encode() in r.stderr
    assert sorted(os.listdir(q / "jobs")) == sorted(os.listdir(ob / "jobs"))
    # the wrong queue id: nothing imported
    q2 = _queue(tmp_path, "inbox2")
    r = run_gw("import", "-q", str(q2), "--from", str(iso), "--trust", pub,
               "--queue-id", "site-c")
    assert r.returncode != 0 and os.listdir(q2 / "jobs") == []


def _image(dst: Path, ob: Path, manifest_sig: bytes | None, key: Path,
           *, drop: int = 0) -> None:
    """An image of the outbox's jobs (all but ``drop`` of them), each signed properly,
    with ``manifest_sig`` as the manifest's signature."""
    from fspl_gateway.core.hashing import sha256_hex
    from fspl_gateway.core.jobsig import sign_job
    from fspl_gateway.core.minisign import read_secret_key
    from fspl_gateway.mediafmt.iso import ImageJob, write_image
    from fspl_gateway.mediafmt.manifest import format_manifest, job_path

    sk = read_secret_key(key)
    names = sorted(os.listdir(ob / "jobs"))[drop:]
    paths = {n: str(ob / "jobs" / n) for n in names}
    manifest = format_manifest({job_path(n): sha256_hex(p) for n, p in paths.items()})
    with open(dst, "wb", buffering=0) as f:
        write_image(f, [ImageJob(n, p, os.path.getsize(p)) for n, p in paths.items()],
                    manifest, signatures={n: sign_job(p, sk, "site-b") for n, p in paths.items()},
                    manifest_sig=manifest_sig)


def test_iso_with_a_wrong_manifest_signature_is_refused(
        tmp_path: Path, keys: tuple[Path, str, str]) -> None:  # noqa: F811
    key, kid, pub = keys
    ob = _outbox(tmp_path, 3)
    good = tmp_path / "good.iso"
    _ok(run_gw("export", "-q", str(ob), "--to", str(good), "--sign", str(key),
               "--queue-id", "site-b", "--keep"))
    good_sig = _iso_files(good)["MANIFEST.sha256.minisig"]
    other = _ok(run_gw("keygen", "-s", str(tmp_path / "other.key"), "--unencrypted"))
    other_kid = other.split("key id: ")[1].split()[0]
    other_iso = tmp_path / "other-key.iso"
    _ok(run_gw("export", "-q", str(ob), "--to", str(other_iso), "--sign",
               str(tmp_path / "other.key"), "--queue-id", "site-b", "--keep"))
    bad = {
        # a job removed from the medium (and its manifest): the old signature no longer fits
        "altered": (lambda p: _image(p, ob, good_sig, key, drop=1), b"bad-signature"),
        # no manifest signature at all, though every job is signed
        "unsigned": (lambda p: _image(p, ob, None, key), b"unsigned"),
        # signed by a key the receiver does not trust
        "other-key": (None, b"unknown-key"),
    }
    for what, (make, reason) in bad.items():
        iso = other_iso if make is None else tmp_path / f"{what}.iso"
        if make is not None:
            make(iso)
        q = _queue(tmp_path, f"inbox-{what}")
        r = run_gw("import", "-q", str(q), "--from", str(iso), "--trust", pub,
                   "--queue-id", "site-b")
        assert r.returncode == 1, (what, r.stderr)
        assert b"nothing imported" in r.stderr and reason in r.stderr, (what, r.stderr)
        assert os.listdir(q / "jobs") == [], what
    assert other_kid != kid
