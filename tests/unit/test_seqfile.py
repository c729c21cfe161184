"""The locked sequence file."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fspl_gateway.core.errors import LockBusyError, SeqFileError
from fspl_gateway.core.seqfile import SeqFile, acquire_lock, read_unlocked


def test_create_starts_at_one(tmp_path: Path) -> None:
    p = str(tmp_path / "seq")
    with SeqFile(p) as sf:
        assert sf.next == 1
    assert Path(p).read_bytes() == b"1\n"
    assert Path(p + ".lock").exists()
    assert not Path(p + ".temp").exists()


def test_increment_and_set(tmp_path: Path) -> None:
    p = str(tmp_path / "seq")
    with SeqFile(p) as sf:
        assert sf.increment() == 1
        assert sf.increment() == 2
        assert sf.next == 3
        assert sf.set(100) == 3
    assert Path(p).read_bytes() == b"100\n"
    with SeqFile(p) as sf:
        assert sf.next == 100
        sf.set((1 << 64) - 1)
        with pytest.raises(SeqFileError):
            sf.set(1 << 64)
        with pytest.raises(SeqFileError):
            sf.set(-1)
    assert read_unlocked(p) == (1 << 64) - 1


def test_reads_fspl_written_file_without_newline(tmp_path: Path) -> None:
    p = tmp_path / "seq"
    p.write_bytes(b"17")
    with SeqFile(str(p)) as sf:
        assert sf.next == 17


@pytest.mark.parametrize("content", [b"", b"abc\n", b"-3\n", b"1.5\n", b"18446744073709551616\n",
                                     b"\xff\xfe\n"])
def test_garbage_content(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "seq"
    p.write_bytes(content)
    with pytest.raises(SeqFileError, match="does not hold a sequence number"):
        SeqFile(str(p))
    assert p.read_bytes() == content  # untouched
    # and the lock was released: a second attempt fails the same way, not "busy"
    with pytest.raises(SeqFileError):
        SeqFile(str(p))
    assert read_unlocked(str(p)) is None


def test_read_unlocked_missing(tmp_path: Path) -> None:
    assert read_unlocked(str(tmp_path / "nope")) is None


def test_missing_lock_without_create(tmp_path: Path) -> None:
    with pytest.raises(SeqFileError, match="no such file"):
        SeqFile(str(tmp_path / "nextseq"), create_lock=False)
    assert not (tmp_path / "nextseq.lock").exists()


def _hold_lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_lock_busy_fails_at_once(tmp_path: Path) -> None:
    p = str(tmp_path / "seq")
    SeqFile(p).close()
    # held by another process (flock(1)), as fspl would hold it
    # (-o: only flock(1) itself holds it, not its sleep child, so reaping flock(1) below
    # is enough for the lock to be free again)
    holder = subprocess.Popen(["flock", "-o", p + ".lock", "sleep", "30"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while True:  # wait until flock(1) holds it
            try:
                fd = acquire_lock(p + ".lock", create=False)
                os.close(fd)
                time.sleep(0.02)
            except LockBusyError:
                break
            assert time.monotonic() < deadline
        t0 = time.monotonic()
        with pytest.raises(LockBusyError, match="--wait-lock"):
            SeqFile(p)
        assert time.monotonic() - t0 < 2.0  # no waiting (a loaded machine is slow anyway)
    finally:
        os.killpg(holder.pid, 9)  # flock(1) and its sleep child
        holder.wait()
    # released with the process (its exit may still be closing the descriptor: wait a bit)
    with SeqFile(p, wait=5) as sf:
        assert sf.next == 1


def test_wait_lock_succeeds_when_released(tmp_path: Path) -> None:
    p = str(tmp_path / "seq")
    SeqFile(p).close()
    fd = _hold_lock(p + ".lock")
    timer = threading.Timer(0.3, os.close, (fd,))
    timer.start()
    t0 = time.monotonic()
    try:
        with SeqFile(p, wait=5) as sf:
            waited = time.monotonic() - t0
            assert sf.increment() == 1
    finally:
        timer.cancel()
    assert 0.25 <= waited < 3
    assert read_unlocked(p) == 2


def test_wait_lock_gives_up_after_time(tmp_path: Path) -> None:
    p = str(tmp_path / "seq")
    SeqFile(p).close()
    fd = _hold_lock(p + ".lock")
    try:
        t0 = time.monotonic()
        with pytest.raises(LockBusyError) as ei:
            SeqFile(p, wait=0.4)
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 1.5
        assert "--wait-lock" not in str(ei.value)
    finally:
        os.close(fd)


def test_failed_write_leaves_value(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    p = str(d / "seq")
    with SeqFile(p) as sf:
        sf.set(5)
        os.chmod(d, 0o500)
        try:
            if os.access(str(d), os.W_OK):
                pytest.skip("running as root: directory permissions not enforced")
            with pytest.raises(SeqFileError, match="cannot write"):
                sf.increment()
            assert sf.next == 5
        finally:
            os.chmod(d, 0o700)
    assert read_unlocked(p) == 5
