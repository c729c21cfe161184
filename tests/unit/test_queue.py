"""The queue directory: init, write, scan."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import QueueError, SeqFileError
from fspl_gateway.core.packet import Meta, encode_header
from fspl_gateway.core.seqfile import SeqFile


def put_job(qdir: Path, seq: int, payload: bytes = b"", name: str | None = None,
            cmd: object = "NOP", ctime: tuple[int, int] = (1700000000, 0)) -> str:
    name = name or q.new_job_filename()
    (qdir / "jobs" / name).write_bytes(encode_header(Meta(seq, ctime, cmd)) + payload)  # type: ignore[arg-type]
    return name


def test_init_layout(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    q.queue_init(str(qd))
    assert sorted(os.listdir(qd)) == ["jobs", "nextseq", "nextseq.lock"]
    assert (qd / "nextseq").read_bytes() == b"1\n"
    assert os.listdir(qd / "jobs") == []


def test_init_twice_fails(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    q.queue_init(str(qd))
    with pytest.raises(QueueError, match="cannot create queue"):
        q.queue_init(str(qd))
    (tmp_path / "other").mkdir()  # an existing directory is refused too, as by fspl
    with pytest.raises(QueueError):
        q.queue_init(str(tmp_path / "other"))


def test_append_only_has_no_nextseq(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    q.queue_init(str(qd), append_only=True)
    assert os.listdir(qd) == ["jobs"]
    with pytest.raises(SeqFileError, match="append-only"):
        SeqFile(q.seqfile_path(str(qd)), create_lock=False)


def test_job_filename_rule() -> None:
    assert q.is_job_filename("fspl-x.fspl")
    assert q.is_job_filename(q.new_job_filename())
    for bad in ["fspl-x.fspl.out", "tmp-fspl-x.fspl.tmp", "x.fspl", "fspl-x", ".fspl-gw-tmp-1"]:
        assert not q.is_job_filename(bad)
    assert len(q.new_job_filename()) == len("fspl-") + 36 + len(".fspl")


def test_scan_ignores_non_jobs_and_logs_bad_headers(queue: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    good = put_job(queue, 1, b"x")
    (queue / "jobs" / "README").write_bytes(b"hello")
    (queue / "jobs" / "fspl-bad.fspl").write_bytes(b"*FILESPOOLER garbage")
    (queue / "jobs" / "fspl-empty.fspl").write_bytes(b"")
    (queue / "jobs" / "fspl-x.fspl.out").write_bytes(b"output")
    with caplog.at_level(logging.DEBUG):
        jobs = list(q.scan(str(queue)))
    assert [j.filename for j in jobs] == [good]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "fspl-bad.fspl" in warned and "fspl-empty.fspl" in warned
    assert "README" not in warned and ".out" not in warned


def test_scan_map_and_find(queue: Path) -> None:
    a = put_job(queue, 3)
    b = put_job(queue, 1)
    m = q.scan_map(str(queue))
    assert {k: v.filename for k, v in m.items()} == {3: a, 1: b}
    assert q.find_job(str(queue), 3).filename == a
    with pytest.raises(QueueError, match="job 2 not found"):
        q.find_job(str(queue), 2)
    assert q.pending_count(str(queue)) == 2


def test_duplicate_seq_is_error_in_scan_map(queue: Path) -> None:
    a = put_job(queue, 5)
    b = put_job(queue, 5)
    assert len(list(q.scan(str(queue)))) == 2  # fine for a plain scan
    with pytest.raises(QueueError, match="two jobs have sequence number 5") as ei:
        q.scan_map(str(queue))
    assert a in str(ei.value) and b in str(ei.value)


def test_not_a_queue(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="not a queue directory"):
        list(q.scan(str(tmp_path / "nope")))
    with pytest.raises(QueueError, match="not a queue directory"):
        q.queue_write(str(tmp_path / "nope"), 0)


def test_queue_write_copies_whole(queue: Path, tmp_path: Path) -> None:
    src = tmp_path / "pkt"
    data = encode_header(Meta(1, (1, 2), "NOP")) + os.urandom(300_000)
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        name = q.queue_write(str(queue), fd)
    finally:
        os.close(fd)
    assert q.is_job_filename(name)
    assert os.listdir(queue / "jobs") == [name]
    assert (queue / "jobs" / name).read_bytes() == data


def test_queue_write_appears_atomically(queue: Path) -> None:
    """While the writer is blocked mid-stream, no fspl-*.fspl name exists; after EOF the
    file is complete under its final name; a failed write leaves nothing behind."""
    r, w = os.pipe()
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(q.queue_write(str(queue), r)))
    t.start()
    try:
        os.write(w, b"A" * 100_000)
        # give the writer time to copy what it has
        for _ in range(50):
            names = os.listdir(queue / "jobs")
            if names:
                break
            threading.Event().wait(0.01)
        names = os.listdir(queue / "jobs")
        assert names and not any(q.is_job_filename(n) for n in names)  # only a temp name
        assert list(q.scan(str(queue))) == []
        os.write(w, b"B" * 10)
    finally:
        os.close(w)
        t.join(10)
        os.close(r)
    assert os.listdir(queue / "jobs") == result
    assert (queue / "jobs" / result[0]).read_bytes() == b"A" * 100_000 + b"B" * 10


def test_queue_write_failure_leaves_nothing(queue: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 10)
    os.close(w)
    os.close(r)
    with pytest.raises(OSError):
        q.queue_write(str(queue), r)  # closed descriptor
    assert os.listdir(queue / "jobs") == []


def test_open_job_with_decoder(queue: Path) -> None:
    import gzip

    name = "fspl-gz.fspl"
    raw = encode_header(Meta(1, (1, 2), "NOP")) + b"payload!"
    (queue / "jobs" / name).write_bytes(gzip.compress(raw))
    with q.open_job(str(queue), name, "gzip -dc") as oj:
        assert oj.meta.seq == 1
        assert os.read(oj.fd, 100) == b"payload!"
    assert oj.fd == -1
    assert q.read_meta(str(queue), name, "gzip -dc").seq == 1
    # without the decoder it is not a packet: skipped
    assert list(q.scan(str(queue))) == []
    assert [j.meta.seq for j in q.scan(str(queue), "gzip -dc")] == [1]


def test_job_file_vanishing_during_scan_is_skipped(queue: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a = put_job(queue, 1)
    b = put_job(queue, 2)
    real = q._read_meta_path

    def racing(path: str, decoder: str | None) -> Meta:
        if os.path.basename(path) == a:
            os.unlink(queue / "jobs" / a)
        return real(path, decoder)

    monkeypatch.setattr(q, "_read_meta_path", racing)
    assert [j.filename for j in q.scan(str(queue))] == [b]
