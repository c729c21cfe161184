"""fspl_gateway.core.hashing: the one streaming-digest helper."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from fspl_gateway.core.hashing import (
    CHUNK,
    HashingWriter,
    copy_hashing,
    hash_fd,
    sha256_file,
    sha256_hex,
    sha256_stream,
)

DATA = os.urandom(2 * CHUNK + 12345)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    p = tmp_path / "blob"
    p.write_bytes(DATA)
    return p


def test_hash_fd_several_digests_offset_untouched(blob: Path) -> None:
    fd = os.open(blob, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        assert hash_fd(fd, ("sha256", "md5")) == (len(DATA), [SHA, hashlib.md5(DATA).hexdigest()])
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7
        assert hash_fd(fd, offset=100) == (len(DATA) - 100, [hashlib.sha256(DATA[100:]).hexdigest()])
    finally:
        os.close(fd)


def test_sha256_file_and_symlinks(blob: Path, tmp_path: Path) -> None:
    assert sha256_file(str(blob)) == (SHA, len(DATA))
    assert sha256_file(str(blob), drop_cache=True) == (SHA, len(DATA))
    assert sha256_hex(str(blob)) == SHA
    link = tmp_path / "link"
    link.symlink_to(blob)
    assert sha256_hex(str(link)) == SHA
    with pytest.raises(OSError):
        sha256_file(str(link), follow_symlinks=False)


class _ReadOnly:
    """Not an io class: only read()."""

    def __init__(self, data: bytes) -> None:
        self.b = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.b.read(min(n, 1000) if n > 0 else n)


def test_sha256_stream(blob: Path) -> None:
    assert sha256_stream(io.BytesIO(DATA)) == (SHA, len(DATA))
    with open(blob, "rb", buffering=0) as f:
        assert sha256_stream(f) == (SHA, len(DATA))
    assert sha256_stream(_ReadOnly(DATA)) == (SHA, len(DATA))  # type: ignore[arg-type]
    assert sha256_stream(io.BytesIO(b"")) == (hashlib.sha256().hexdigest(), 0)


def test_copy_hashing(blob: Path, tmp_path: Path) -> None:
    src = os.open(blob, os.O_RDONLY)
    dst = os.open(tmp_path / "copy", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert copy_hashing(src, dst) == (SHA, len(DATA))
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "copy").read_bytes() == DATA


class _Short(io.RawIOBase):
    """Accepts at most 1000 bytes per write (a raw file may write fewer)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        piece = bytes(memoryview(b)[:1000])
        self.out += piece
        return len(piece)


def test_hashing_writer_hashes_what_it_passes_on() -> None:
    sink = _Short()
    w = HashingWriter(sink)  # type: ignore[arg-type]
    view = memoryview(DATA[:5000])
    while view:  # the caller retries the rest of a short write, as write_all does
        view = view[w.write(view):]
    assert bytes(sink.out) == DATA[:5000] and w.size == 5000
    assert w.hexdigest() == hashlib.sha256(DATA[:5000]).hexdigest()

