"""Media export/verify (fspl_gateway.gateway.media), the media transport's reading rules, and the
local transport's specifics (missing remote, temporaries clean-up)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspl_gateway.core import packet
from fspl_gateway.core.errors import (
    NotSupportedError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.gateway.media import export_dir, export_iso, verify_manifest
from fspl_gateway.transports.local import LocalTransport
from fspl_gateway.transports.media import MediaTransport
from tests.helpers import run_fspl, sha256_file

MiB = 1 << 20


# -- helpers -------------------------------------------------------------------------
def make_outbox(root: Path, payloads: dict[str, bytes]) -> Path:
    """An outbox queue with one packet (seq 1, 2, …) per name, made with encode_header."""
    ob = root / "outbox"
    (ob / "jobs").mkdir(parents=True, exist_ok=True)
    for seq, (name, payload) in enumerate(payloads.items(), 1):
        meta = packet.Meta(seq=seq, cmd=packet.make_command([b"p%d" % seq], [(b"K", b"v")]))
        (ob / "jobs" / name).write_bytes(packet.encode_header(meta) + payload)
    return ob


def hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


def iso_fetch(iso: Path, name: str) -> bytes:
    with MediaTransport(str(iso)) as t:
        with t.open(name) as f:
            return f.read()


def job_names(n: int, tag: str = "") -> list[str]:
    return [f"fspl-{tag}{i:04d}-0123456789abcdef.fspl" for i in range(n)]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); skips where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- export to a directory -----------------------------------------------------------
def test_export_dir_round_trip(tmp_path: Path) -> None:
    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(50_000 + i) for i, n in enumerate(names)})
    (ob / "jobs" / "fspl-bad.fspl").write_bytes(b"not a packet")
    (ob / "jobs" / "README").write_bytes(b"not a job name")
    before = hashes(ob / "jobs")
    stick = tmp_path / "stick"
    stick.mkdir()

    res = export_dir(str(ob), str(stick))
    assert (res.exported, res.already_present, res.skipped_bad, res.removed) == (3, 0, 1, 3)
    assert res.names == names
    assert res.bytes == sum((stick / "jobs" / n).stat().st_size for n in names)
    # exported jobs left the outbox; the bad one and the non-job stay
    assert sorted(os.listdir(ob / "jobs")) == ["README", "fspl-bad.fspl"]
    # byte-identical on the stick, headers parse, nothing else there
    assert hashes(stick / "jobs") == {n: before[n] for n in names}
    for i, n in enumerate(names, 1):
        assert packet.read_header_path(stick / "jobs" / n).seq == i
    # the manifest is sha256sum's format, relative to the stick's root
    lines = (stick / "MANIFEST.sha256").read_text().splitlines()
    assert lines == [f"{before[n]}  jobs/{n}" for n in names]
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=stick,
                           capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
    rep = verify_manifest(str(stick))
    assert rep.clean and rep.ok == names


def test_export_dir_refuses_missing_destination(tmp_path: Path) -> None:
    ob = make_outbox(tmp_path, {"fspl-a.fspl": b"x"})
    with pytest.raises(RemoteNotFoundError, match="mounted"):
        export_dir(str(ob), str(tmp_path / "not-mounted"))
    assert os.listdir(ob / "jobs") == ["fspl-a.fspl"]


def test_export_dir_again_skips_same_and_refuses_different(tmp_path: Path) -> None:
    names = job_names(2)
    ob = make_outbox(tmp_path, {n: b"payload " + n.encode() for n in names})
    stick = tmp_path / "stick"
    stick.mkdir()
    first = export_dir(str(ob), str(stick), keep=True)
    assert (first.exported, first.removed) == (2, 0)
    assert sorted(os.listdir(ob / "jobs")) == names

    again = export_dir(str(ob), str(stick), keep=True)
    assert (again.exported, again.already_present) == (0, 2)

    # a different job under an existing name: error before anything is written
    (ob / "jobs" / names[0]).write_bytes(
        packet.encode_header(packet.Meta(seq=9)) + b"other bytes")
    new = job_names(1, "new")[0]
    (ob / "jobs" / new).write_bytes(packet.encode_header(packet.Meta(seq=10)))
    manifest_before = (stick / "MANIFEST.sha256").read_bytes()
    with pytest.raises(RemoteExistsError, match="different bytes"):
        export_dir(str(ob), str(stick))
    assert sorted(os.listdir(stick / "jobs")) == names
    assert (stick / "MANIFEST.sha256").read_bytes() == manifest_before
    assert sorted(os.listdir(ob / "jobs")) == sorted([*names, new])


def test_export_dir_manifest_covers_every_job_on_the_stick(tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    a = job_names(2, "a")
    export_dir(str(make_outbox(tmp_path / "1", {n: b"A" + n.encode() for n in a})), str(stick))
    b = job_names(2, "b")
    export_dir(str(make_outbox(tmp_path / "2", {n: b"B" + n.encode() for n in b})), str(stick))
    listed = [ln.split("  ", 1)[1] for ln in (stick / "MANIFEST.sha256").read_text().splitlines()]
    assert listed == [f"jobs/{n}" for n in sorted(a + b)]
    assert verify_manifest(str(stick)).clean


def test_export_dir_with_real_fspl(tmp_path: Path, fspl_bin: str) -> None:
    ob = tmp_path / "outbox"
    run_fspl("queue-init", "-q", str(ob), check=True)
    seqfile = tmp_path / "seq"
    for i in range(3):
        pkt = run_fspl("prepare", "-s", str(seqfile), "-i", "-", "--", f"arg{i}",
                       input=b"data %d\n" % i, check=True).stdout
        run_fspl("queue-write", "-q", str(ob), input=pkt, check=True)
    before = hashes(ob / "jobs")
    assert len(before) == 3
    stick = tmp_path / "stick"
    stick.mkdir()
    assert export_dir(str(ob), str(stick)).exported == 3
    assert hashes(stick / "jobs") == before
    # the real fspl reads the stick's jobs/ as a queue
    ls = run_fspl("queue-ls", "-q", str(stick), check=True).stdout.decode()
    for seq in (1, 2, 3):
        assert any(line.split()[:1] == [str(seq)] for line in ls.splitlines()[1:]), ls

    # and the same through an ISO image, fetched into a queue that real fspl processes
    ob2 = tmp_path / "outbox2"
    run_fspl("queue-init", "-q", str(ob2), check=True)
    for name in before:
        run_fspl("queue-write", "-q", str(ob2),
                 input=(stick / "jobs" / name).read_bytes(), check=True)
    iso = tmp_path / "out.iso"
    assert export_iso(str(ob2), str(iso)).exported == 3
    dest = tmp_path / "dest"
    run_fspl("queue-init", "-q", str(dest), check=True)
    with MediaTransport(str(iso)) as t:
        for e in t.list():
            with open(dest / "jobs" / e.name, "xb") as f:
                t.fetch(e.name, f)
    out = tmp_path / "out.txt"
    run_fspl("queue-process", "-q", str(dest), "--allow-job-params", "sh", "--",
             "-c", f'printf "%s:" "$1" >> {out}; cat >> {out}', "x", check=True)
    assert out.read_text() == "arg0:data 0\narg1:data 1\narg2:data 2\n"


# -- export to an ISO image ----------------------------------------------------------
def test_export_iso_round_trip(tmp_path: Path) -> None:
    names = job_names(4)
    ob = make_outbox(tmp_path, {n: os.urandom(10_000 * (i + 1)) for i, n in enumerate(names)})
    (ob / "jobs" / "fspl-bad.fspl").write_bytes(b"\0" * 40)
    before = hashes(ob / "jobs")
    iso = tmp_path / "out" / "jobs.iso"
    iso.parent.mkdir()
    res = export_iso(str(ob), str(iso))
    assert (res.exported, res.skipped_bad, res.removed) == (4, 1, 4)
    assert os.listdir(ob / "jobs") == ["fspl-bad.fspl"]
    assert os.listdir(iso.parent) == ["jobs.iso"], "no temporaries next to the image"
    with MediaTransport(str(iso)) as t:
        assert not t.capabilities.can_write
        listed = {e.name: e.size for e in t.list()}
        assert sorted(listed) == names
        for n in names:
            assert hashlib.sha256(iso_fetch(iso, n)).hexdigest() == before[n]
        with t.open_manifest() as mf:
            lines = mf.read().decode().splitlines()
        assert lines == [f"{before[n]}  jobs/{n}" for n in names]
        rep = t.verify_manifest()
        assert rep.clean and rep.ok == names
        with pytest.raises(NotSupportedError):
            t.delete(names[0])


def test_export_iso_refuses_existing_image(tmp_path: Path) -> None:
    ob = make_outbox(tmp_path, {"fspl-a.fspl": b"x"})
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"precious")
    with pytest.raises(RemoteExistsError):
        export_iso(str(ob), str(iso))
    assert iso.read_bytes() == b"precious"
    assert os.listdir(ob / "jobs") == ["fspl-a.fspl"]
    export_iso(str(ob), str(iso), overwrite=True, keep=True)
    assert [e.name for e in MediaTransport(str(iso)).list()] == ["fspl-a.fspl"]
    assert os.listdir(ob / "jobs") == ["fspl-a.fspl"]


def test_iso_long_names_rock_ridge_and_joliet(tmp_path: Path) -> None:
    import pycdlib

    long_rr = "fspl-" + "r" * 180 + ".fspl"  # too long for Joliet (64): Rock Ridge only
    mid = "fspl-" + "j" * 50 + ".fspl"  # 60 characters: Rock Ridge and Joliet
    ob = make_outbox(tmp_path, {long_rr: b"long", mid: b"mid"})
    iso = tmp_path / "names.iso"
    export_iso(str(ob), str(iso))

    p = pycdlib.PyCdlib()
    p.open(str(iso))
    try:
        rr = {c.rock_ridge.name().decode() for c in p.list_children(rr_path="/jobs")
              if not (c.is_dot() or c.is_dotdot())}
        jol = {c.file_identifier().decode("utf-16_be") for c in
               p.list_children(joliet_path="/jobs") if not (c.is_dot() or c.is_dotdot())}
        iso9660 = {c.file_identifier().decode() for c in p.list_children(iso_path="/JOBS")
                   if not (c.is_dot() or c.is_dotdot())}
    finally:
        p.close()
    assert rr == {long_rr, mid}
    assert {n.split(";")[0] for n in jol} == {mid}
    assert all(len(n) <= 14 for n in iso9660)  # generated 8.3 names
    assert {e.name for e in MediaTransport(str(iso)).list()} == {long_rr, mid}
    assert iso_fetch(iso, long_rr).endswith(b"long")
    assert verify_manifest(str(iso)).clean


def _build_plain_iso(path: Path, joliet: bool) -> None:
    """An image without Rock Ridge (Joliet or bare ISO 9660), as other tools make."""
    import io

    import pycdlib

    p = pycdlib.PyCdlib()
    p.new(interchange_level=3, joliet=3 if joliet else None)
    p.add_directory("/JOBS", joliet_path="/jobs" if joliet else None)
    for iso_name, jname, data in (("A.FSP;1", "fspl-joliet-name.fspl", b"aaa"),
                                  ("README.TXT;1", "Read Me.txt", b"r")):
        p.add_fp(io.BytesIO(data), len(data), f"/JOBS/{iso_name}",
                 joliet_path=f"/jobs/{jname}" if joliet else None)
    p.write(str(path))
    p.close()


def test_iso_name_preference_joliet_then_iso9660(tmp_path: Path) -> None:
    j = tmp_path / "joliet.iso"
    _build_plain_iso(j, joliet=True)
    t = MediaTransport(str(j))
    assert sorted(e.name for e in t.list()) == ["Read Me.txt", "fspl-joliet-name.fspl"]
    assert t.open("fspl-joliet-name.fspl").read() == b"aaa"
    t.close()

    bare = tmp_path / "bare.iso"
    _build_plain_iso(bare, joliet=False)
    t = MediaTransport(str(bare))
    assert sorted(e.name for e in t.list()) == ["A.FSP", "README.TXT"]
    assert t.open("A.FSP").read() == b"aaa"
    t.close()


def test_export_iso_big_job_streams(tmp_path: Path) -> None:
    from tests.helpers import PatternReader, peak_rss_during

    size = 192 * MiB
    ob = make_outbox(tmp_path, {})
    name = "fspl-big.fspl"
    with open(ob / "jobs" / name, "wb") as f:
        f.write(packet.encode_header(packet.Meta(seq=1)))
        r = PatternReader(size)
        while b := r.read(MiB):
            f.write(b)
    want = sha256_file(ob / "jobs" / name)
    iso = tmp_path / "big.iso"
    res, growth = peak_rss_during(lambda: export_iso(str(ob), str(iso)))
    assert res.exported == 1
    assert growth < 64 * MiB, f"export_iso grew RSS by {growth >> 20} MiB"
    rep = verify_manifest(str(iso))
    assert rep.ok == [name]
    with MediaTransport(str(iso)) as t:
        h = hashlib.sha256()
        with t.open(name) as f:
            while b := f.read(MiB):
                h.update(b)
    assert h.hexdigest() == want


# -- rot, symlinks, special files ------------------------------------------------------
def test_manifest_rot_detected_on_stick(tmp_path: Path) -> None:
    names = job_names(4)
    ob = make_outbox(tmp_path, {n: os.urandom(20_000) for n in names})
    stick = tmp_path / "stick"
    stick.mkdir()
    export_dir(str(ob), str(stick))
    assert verify_manifest(str(stick)).clean

    rot = stick / "jobs" / names[1]
    data = bytearray(rot.read_bytes())
    data[len(data) // 2] ^= 0x01
    rot.write_bytes(bytes(data))
    (stick / "jobs" / names[2]).unlink()
    (stick / "jobs" / "fspl-stray.fspl").write_bytes(b"unlisted")
    (stick / "jobs" / "notes.txt").write_bytes(b"not a job: ignored")

    rep = verify_manifest(str(stick))
    assert not rep.clean
    assert rep.mismatched == [names[1]]
    assert rep.missing == [names[2]]
    assert rep.extra == ["fspl-stray.fspl"]
    assert rep.ok == [names[0], names[3]]
    assert rep.bad == sorted([names[1], "fspl-stray.fspl"])
    assert "1 mismatched" in rep.summary() and names[1] in rep.summary()


def test_manifest_rot_detected_in_iso(tmp_path: Path) -> None:
    marker = b"UNIQUE-MARKER-" * 100
    ob = make_outbox(tmp_path, {"fspl-a.fspl": marker, "fspl-b.fspl": b"fine"})
    iso = tmp_path / "rot.iso"
    export_iso(str(ob), str(iso))
    img = bytearray(iso.read_bytes())
    off = img.find(marker)
    assert off > 0
    img[off + 500] ^= 0x40
    iso.write_bytes(bytes(img))
    rep = verify_manifest(str(iso))
    assert rep.mismatched == ["fspl-a.fspl"] and rep.ok == ["fspl-b.fspl"]


def test_missing_manifest_reported(tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    (stick / "jobs").mkdir(parents=True)
    (stick / "jobs" / "fspl-a.fspl").write_bytes(b"x")
    rep = verify_manifest(str(stick))
    assert not rep.manifest_found and not rep.clean
    assert rep.extra == ["fspl-a.fspl"]


def test_symlinks_and_fifos_on_media_refused(tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    (stick / "jobs").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the media")
    (stick / "jobs" / "fspl-ok.fspl").write_bytes(b"ok")
    (stick / "jobs" / "fspl-link.fspl").symlink_to(secret)
    os.mkfifo(stick / "jobs" / "fspl-fifo.fspl")
    (stick / "MANIFEST.sha256").write_text(
        f"{hashlib.sha256(b'ok').hexdigest()}  jobs/fspl-ok.fspl\n"
        f"{hashlib.sha256(b'outside the media').hexdigest()}  jobs/fspl-link.fspl\n")

    for opts in ({}, {"read_only": True}):
        t = MediaTransport(str(stick), opts)
        assert [e.name for e in t.list()] == ["fspl-ok.fspl"]
        assert sorted(t.refused) == [("fspl-fifo.fspl", "FIFO"),
                                     ("fspl-link.fspl", "symbolic link")]
        with pytest.raises(TransportError, match="symbolic link"):
            t.open("fspl-link.fspl")
        with pytest.raises(TransportError, match="not a regular file"):
            t.open("fspl-fifo.fspl")  # and does not hang waiting for a writer
    rep = verify_manifest(str(stick))
    assert rep.ok == ["fspl-ok.fspl"] and not rep.clean
    assert {n for n, _ in rep.refused} == {"fspl-link.fspl", "fspl-fifo.fspl"}
    assert "fspl-link.fspl" in rep.bad and rep.missing == []

    # the local transport does not list them either, nor follow them
    lt = LocalTransport(str(stick))
    assert [e.name for e in lt.list()] == ["fspl-ok.fspl"]
    with pytest.raises(TransportError):
        lt.open("fspl-link.fspl")


def test_read_only_media_option_refuses_writes(tmp_path: Path) -> None:
    import io

    stick = tmp_path / "stick"
    (stick / "jobs").mkdir(parents=True)
    (stick / "jobs" / "fspl-a.fspl").write_bytes(b"a")
    t = MediaTransport(str(stick), {"read_only": "yes"})
    with pytest.raises(NotSupportedError):
        t.write_new("fspl-b.fspl", io.BytesIO(b"b"), 1)
    with pytest.raises(NotSupportedError):
        t.delete("fspl-a.fspl")
    assert t.cleanup_temporaries() == 0
    assert os.listdir(stick / "jobs") == ["fspl-a.fspl"]


# -- failures midway -----------------------------------------------------------------
def _assert_outbox_intact(ob: Path, before: dict[str, str]) -> None:
    assert hashes(ob / "jobs") == before


def test_export_dir_destination_full_keeps_outbox(tmp_path: Path, tiny_fs: Path) -> None:
    names = job_names(5)
    ob = make_outbox(tmp_path, {n: os.urandom(300_000) for n in names})
    before = hashes(ob / "jobs")
    with pytest.raises(TransportError, match="full"):
        export_dir(str(ob), str(tiny_fs))
    _assert_outbox_intact(ob, before)
    on_stick = os.listdir(tiny_fs / "jobs")
    assert not [n for n in on_stick if n.startswith(TMP_PREFIX)], on_stick
    assert 0 < len(on_stick) < 5
    for n in on_stick:  # what did get there is whole
        assert sha256_file(tiny_fs / "jobs" / n) == before[n]
    # after freeing space, a new export completes and only then empties the outbox
    for n in on_stick:
        (tiny_fs / "jobs" / n).unlink()
    ob2 = make_outbox(tmp_path / "small", {n: b"s" for n in names})
    assert export_dir(str(ob2), str(tiny_fs)).removed == 5


def test_export_iso_destination_full_leaves_no_image(tmp_path: Path, tiny_fs: Path) -> None:
    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(500_000) for n in names})
    before = hashes(ob / "jobs")
    with pytest.raises(TransportError, match="full"):
        export_iso(str(ob), str(tiny_fs / "jobs.iso"))
    _assert_outbox_intact(ob, before)
    assert os.listdir(tiny_fs) == [], "no image and no temporary may be left"


def test_export_dir_file_size_limit_keeps_outbox(tmp_path: Path) -> None:
    """The same midway failure without root: RLIMIT_FSIZE in a subprocess (EFBIG)."""
    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(size) for n, size in
                                zip(names, (1000, 3 * MiB, 1000), strict=True)})
    before = hashes(ob / "jobs")
    stick = tmp_path / "stick"
    stick.mkdir()
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({MiB}, {MiB}))
        from fspl_gateway.core.errors import TransportError
        from fspl_gateway.gateway.media import export_dir
        try:
            export_dir({str(ob)!r}, {str(stick)!r})
        except TransportError as e:
            print(e)
            sys.exit(7)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 7, r.stderr.decode()
    assert b"full" in r.stdout
    _assert_outbox_intact(ob, before)
    on_stick = sorted(os.listdir(stick / "jobs"))
    assert on_stick == [names[0]]
    assert not (stick / "MANIFEST.sha256").exists()


# -- the local transport's specifics -------------------------------------------------
def test_local_missing_remote_is_clear(tmp_path: Path) -> None:
    t = LocalTransport(str(tmp_path / "nope"))
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        list(t.list())
    (tmp_path / "nojobs").mkdir()
    with pytest.raises(RemoteNotFoundError, match="no jobs/"):
        list(LocalTransport(str(tmp_path / "nojobs")).list())
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        list(MediaTransport(str(tmp_path / "nope")).list())
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        list(MediaTransport(str(tmp_path / "nope.iso")).list())


def test_local_cleanup_temporaries_rule(tmp_path: Path) -> None:
    import time

    (tmp_path / "jobs").mkdir()
    jobs = tmp_path / "jobs"
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()

    def tmp(pid: int, tag: str, age: float) -> Path:
        p = jobs / f"{TMP_PREFIX}{pid}-abcdef123456-{tag}"
        p.write_bytes(b"partial")
        os.utime(p, (now - age, now - age))
        return p

    dead_old = tmp(dead.pid, "dead-old", 120)  # writer gone, idle > grace: removed
    dead_fresh = tmp(dead.pid, "dead-fresh", 5)  # writer gone but just written: kept
    live = tmp(os.getpid(), "live", 600)  # writer alive, younger than max age: kept
    ancient = tmp(os.getpid(), "ancient", 2 * 3600)  # older than max age: removed
    other = jobs / "fspl-real.fspl"
    other.write_bytes(b"job")
    os.utime(other, (now - 10**6, now - 10**6))

    t = LocalTransport(str(tmp_path), {"tmp_max_age": "1h", "tmp_grace": 60})
    assert t.cleanup_temporaries() == 2
    assert not dead_old.exists() and not ancient.exists()
    assert dead_fresh.exists() and live.exists() and other.exists()
    assert [e.name for e in t.list() if not e.name.startswith(TMP_PREFIX)] == ["fspl-real.fspl"]


# -- import ----------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root`` with its size, mtime and sha256 (to prove no writes)."""
    out: dict[str, tuple[int, int, str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                         sha256_file(p) if p.is_file() else "")
    return out


@pytest.fixture
def ro_view(tmp_path: Path) -> Iterator[object]:
    """A function making a read-only bind mount of a directory (root only), or None."""
    mounts: list[Path] = []

    def make(src: Path) -> Path | None:
        dst = tmp_path / f"ro{len(mounts)}"
        dst.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(dst)],
                          capture_output=True).returncode != 0:
            return None
        mounts.append(dst)
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)],
                          capture_output=True).returncode != 0:
            return None
        return dst

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_import_dir_round_trip_never_writes(tmp_path: Path, queue: Path, fspl_bin: str,
                                            ro_view: object) -> None:
    from fspl_gateway.gateway.media import import_media

    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(30_000) for n in names})
    before = hashes(ob / "jobs")
    stick = tmp_path / "stick"
    stick.mkdir()
    export_dir(str(ob), str(stick))
    snap = _snapshot(stick)
    src = ro_view(stick) or stick  # type: ignore[operator]

    res = import_media(str(src), str(queue))
    assert res.report.clean and res.rejected == []
    assert res.sync.fetched == 3
    assert {n: h for n, h in hashes(queue / "jobs").items()} == before
    assert _snapshot(stick) == snap, "import wrote to the media"
    ls = run_fspl("queue-ls", "-q", str(queue), check=True).stdout.decode()
    assert all(n in ls for n in names)
    again = import_media(str(src), str(queue))
    assert again.sync.fetched == 0
    assert _snapshot(stick) == snap


def test_import_iso(tmp_path: Path, queue: Path) -> None:
    from fspl_gateway.gateway.media import import_media

    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(2 * MiB + i) for i, n in enumerate(names)})
    before = hashes(ob / "jobs")
    iso = tmp_path / "jobs.iso"
    export_iso(str(ob), str(iso))
    image_sha = sha256_file(iso)
    res = import_media(str(iso), str(queue))
    assert res.sync.fetched == 3
    assert hashes(queue / "jobs") == before
    assert sha256_file(iso) == image_sha


def test_import_refuses_rotten_media_unless_good_only(tmp_path: Path, queue: Path) -> None:
    from fspl_gateway.gateway.media import MediaCheckError, import_media

    names = job_names(3)
    ob = make_outbox(tmp_path, {n: os.urandom(10_000) for n in names})
    before = hashes(ob / "jobs")
    stick = tmp_path / "stick"
    stick.mkdir()
    export_dir(str(ob), str(stick))
    rot = stick / "jobs" / names[2]
    data = bytearray(rot.read_bytes())
    data[-1] ^= 0xFF
    rot.write_bytes(bytes(data))

    with pytest.raises(MediaCheckError) as ei:
        import_media(str(stick), str(queue))
    assert names[2] in str(ei.value) and "mismatched" in str(ei.value)
    assert os.listdir(queue / "jobs") == []

    res = import_media(str(stick), str(queue), good_only=True)
    assert res.rejected == [names[2]]
    assert res.sync.fetched == 2
    assert hashes(queue / "jobs") == {n: before[n] for n in names[:2]}


def test_import_without_manifest(tmp_path: Path, queue: Path) -> None:
    from fspl_gateway.gateway.media import MediaCheckError, import_media

    stick = tmp_path / "stick"
    (stick / "jobs").mkdir(parents=True)
    pkt = packet.encode_header(packet.Meta(seq=1)) + b"payload"
    (stick / "jobs" / "fspl-a.fspl").write_bytes(pkt)
    with pytest.raises(MediaCheckError, match="no MANIFEST.sha256"):
        import_media(str(stick), str(queue))
    assert os.listdir(queue / "jobs") == []
    res = import_media(str(stick), str(queue), require_manifest=False)
    assert res.sync.fetched == 1
    assert (queue / "jobs" / "fspl-a.fspl").read_bytes() == pkt


def test_import_rechecks_while_fetching(tmp_path: Path) -> None:
    """Bytes that change between the manifest check and the copy are caught."""
    import io

    from fspl_gateway.core.errors import IntegrityError
    from fspl_gateway.gateway.media import _CheckedMedia

    stick = tmp_path / "stick"
    (stick / "jobs").mkdir(parents=True)
    (stick / "jobs" / "fspl-a.fspl").write_bytes(b"good bytes")
    media = MediaTransport(str(stick), {"read_only": True})
    ok = _CheckedMedia(media, {"fspl-a.fspl": hashlib.sha256(b"good bytes").hexdigest()},
                       {"fspl-a.fspl"})
    buf = io.BytesIO()
    assert ok.fetch("fspl-a.fspl", buf) == 10 and buf.getvalue() == b"good bytes"
    (stick / "jobs" / "fspl-a.fspl").write_bytes(b"rotten!!!!")
    with pytest.raises(IntegrityError, match="no longer match"):
        ok.fetch("fspl-a.fspl", io.BytesIO())
    with pytest.raises(RemoteNotFoundError):
        ok.fetch("fspl-other.fspl", io.BytesIO())
    assert [e.name for e in ok.list()] == ["fspl-a.fspl"]
