"""The safe-write helper and kernel-side copies."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest

from fspl_gateway.core.fsutil import (
    TMP_PREFIX,
    AtomicWriter,
    atomic_write,
    copy_fd,
    copy_stream,
    move_noclobber,
    read_exact,
    tmp_name,
)


def test_tmp_name_never_a_job_name() -> None:
    n = tmp_name("fspl-x.fspl")
    assert n.startswith(TMP_PREFIX) and not n.startswith("fspl-")
    assert tmp_name("a") != tmp_name("a")


def test_atomic_writer_appears_whole(tmp_path: Path) -> None:
    with AtomicWriter(str(tmp_path), "f") as w:
        w.file.write(b"part1")
        assert not (tmp_path / "f").exists()
        assert len(os.listdir(tmp_path)) == 1
        w.file.write(b"part2")
    assert (tmp_path / "f").read_bytes() == b"part1part2"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_writer_error_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_write(str(tmp_path), "f") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_no_clobber(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        with atomic_write(str(tmp_path), "f") as f:
            f.write(b"new")
    assert (tmp_path / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    with atomic_write(str(tmp_path), "f", clobber=True) as f:
        f.write(b"new")
    assert (tmp_path / "f").read_bytes() == b"new"


def test_move_noclobber(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    with pytest.raises(FileExistsError):
        move_noclobber(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == b"A" and (tmp_path / "b").read_bytes() == b"B"
    move_noclobber(str(tmp_path / "a"), str(tmp_path / "c"))
    assert sorted(os.listdir(tmp_path)) == ["b", "c"]


def test_read_exact(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"abc")
    os.write(w, b"def")
    os.close(w)
    assert read_exact(r, 4) == b"abcd"
    assert read_exact(r, 10) == b"ef"
    assert read_exact(r, 1) == b""
    os.close(r)


@pytest.mark.parametrize("kind", ["file", "pipe", "socket"])
@pytest.mark.parametrize("count", [None, 123_457])
def test_copy_fd_kinds(tmp_path: Path, kind: str, count: int | None) -> None:
    data = os.urandom(3_000_000)
    src = tmp_path / "src"
    src.write_bytes(b"HEAD" + data)
    sfd = os.open(src, os.O_RDONLY)
    os.lseek(sfd, 4, os.SEEK_SET)  # from the current offset
    want = data if count is None else data[:count]
    try:
        if kind == "file":
            dfd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
            assert copy_fd(sfd, dfd, count) == len(want)
            os.close(dfd)
            assert (tmp_path / "dst").read_bytes() == want
            return
        if kind == "pipe":
            r, w = os.pipe()
        else:
            a, b = socket.socketpair()
            r, w = os.dup(a.fileno()), os.dup(b.fileno())
            a.close()
            b.close()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            try:
                copy_fd(sfd, w, count)
            finally:
                os._exit(0)
        os.close(w)
        got = bytearray()
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            got += chunk
        os.close(r)
        os.waitpid(pid, 0)
        assert bytes(got) == want
    finally:
        os.close(sfd)


def test_copy_fd_pipe_to_file(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 1000)
    os.close(w)
    dfd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    assert copy_fd(r, dfd) == 1000
    os.close(dfd)
    os.close(r)
    assert (tmp_path / "dst").read_bytes() == b"x" * 1000


def test_copy_stream_buffered(tmp_path: Path) -> None:
    out = io.BytesIO()
    assert copy_stream(io.BytesIO(b"abcdef"), out, 4) == 4
    assert out.getvalue() == b"abcd"
    (tmp_path / "s").write_bytes(b"123456")
    with open(tmp_path / "s", "rb", buffering=0) as s, open(tmp_path / "d", "wb") as d:
        d.write(b"pre")
        assert copy_stream(s, d) == 6
    assert (tmp_path / "d").read_bytes() == b"pre123456"


def test_copy_fd_flush_behind_copies_every_byte(tmp_path) -> None:
    """flush_behind starts write-back as it goes; the copy must still be exact, also from
    a pipe and from a mid-file offset."""
    import hashlib
    import os
    import threading

    from fspl_gateway.core.fsutil import FLUSH_BEHIND, copy_fd

    data = os.urandom(1 << 20) * (FLUSH_BEHIND // (1 << 20) * 2 + 3)  # > 2 windows
    src = tmp_path / "src"
    src.write_bytes(data)
    dst = tmp_path / "dst"
    with open(src, "rb", buffering=0) as s, open(dst, "wb", buffering=0) as d:
        s.seek(12345)
        d.write(b"head")
        n = copy_fd(s.fileno(), d.fileno(), flush_behind=True)
    assert n == len(data) - 12345
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(b"head" + data[12345:]).digest()
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w, data[: 40 << 20]), os.close(w)))
    t.start()
    with open(dst, "wb", buffering=0) as d:
        n = copy_fd(r, d.fileno(), flush_behind=True)
    t.join()
    os.close(r)
    assert n == 40 << 20 and dst.read_bytes() == data[: 40 << 20]
