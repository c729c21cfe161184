"""fspl_gateway.core.hashing: the one streaming-digest helper."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from fspl_gateway.core.hashing import (
    CHUNK,
    THREAD_MIN,
    HashingWriter,
    MultiHasher,
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



class _FullDisk(MultiHasher):
    """A hasher that fails like a full disk after ``fail_after`` bytes."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def update(self, data: object) -> None:
        super().update(data)
        if self.size > self.fail_after:
            raise OSError(28, "No space left on device")


def test_multi_hasher_digests_head_and_reset() -> None:
    h = MultiHasher(("sha256", "md5"), head=100)
    for i in range(0, len(DATA), 7000):
        h.update(DATA[i:i + 7000])
    assert h.hexdigest() == SHA == h.hexdigest("sha256")
    assert h.hexdigest("md5") == hashlib.md5(DATA).hexdigest()
    assert h.digest("sha256") == hashlib.sha256(DATA).digest()
    assert (h.size, h.head) == (len(DATA), DATA[:100])
    h.reset()
    assert (h.size, h.head) == (0, b"")
    assert h.hexdigest() == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", [0, 1, 5000, THREAD_MIN + 12345])
def test_copy_hashing_small_and_big(tmp_path: Path, size: int) -> None:
    """A big file is hashed in a second thread:
    the same bytes and digests; ``count`` bounds it."""
    data = os.urandom(size)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    h = MultiHasher(("sha256", "blake2b"), head=64)
    with open(src, "rb") as s, open(dst, "wb") as d:
        got = copy_hashing(s.fileno(), d.fileno(), h, count=size + 1)
    assert got == (hashlib.sha256(data).hexdigest(), size)
    assert h.hexdigest("blake2b") == hashlib.blake2b(data).hexdigest()
    assert dst.read_bytes() == data and h.head == data[:64] and h.size == size
    with open(src, "rb") as s, open(tmp_path / "part", "wb") as d:
        assert copy_hashing(s.fileno(), d.fileno(), count=size // 2)[1] == size // 2


def test_copy_hashing_stops_on_a_hasher_error_in_the_hash_thread(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(THREAD_MIN * 2))
    h = _FullDisk(fail_after=CHUNK)
    with open(src, "rb") as s, open(tmp_path / "dst", "wb") as d, \
            pytest.raises(OSError, match="No space"):
        copy_hashing(s.fileno(), d.fileno(), h)


def test_hashing_writer_with_a_multi_hasher() -> None:
    h = MultiHasher(("sha256", "md5"), head=10)
    sink = io.BytesIO()
    w = HashingWriter(sink, h)  # type: ignore[arg-type]
    w.write(DATA)
    assert (w.size, w.hexdigest(), h.hexdigest("md5"), h.head) == (
        len(DATA), SHA, hashlib.md5(DATA).hexdigest(), DATA[:10])


def test_hash_fd_of_a_big_file_hashes_in_a_second_thread(tmp_path: Path) -> None:
    data = os.urandom(THREAD_MIN + 3 * CHUNK + 17)
    p = tmp_path / "big"
    p.write_bytes(data)
    with open(p, "rb") as f:
        assert hash_fd(f.fileno(), ("sha256", "md5"), offset=5) == (
            len(data) - 5, [hashlib.sha256(data[5:]).hexdigest(),
                            hashlib.md5(data[5:]).hexdigest()])
