"""1 GiB payloads stream through fspl-gw in flat memory (the job file is sparse, so the
test stays fast)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fspl_gateway.core.packet import Command, Meta, encode_header
from tests.helpers import FSPL_GW

GIB = 1 << 30
RSS_LIMIT = 40 << 20

# Runs argv, reports the peak RSS (bytes) of its biggest waited-for descendant: a fresh
# interpreter, so nothing the test process ran before counts.
_PEAK = ("import resource, subprocess, sys\n"
         "r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL)\n"
         "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n")


def peak_rss(argv: list[str], cwd: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, cwd=cwd,
                         timeout=120, check=True).stdout.split()
    return int(out[0]), int(out[1])


def sparse(path: Path, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + size)


@pytest.mark.slow
def test_queue_process_1gib_flat(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    subprocess.run([*FSPL_GW, "queue-init", "-q", str(qd)], check=True)
    sparse(qd / "jobs" / "fspl-big.fspl", encode_header(Meta(1, (1700000000, 0), Command())), GIB)
    count = tmp_path / "count"
    rc, peak = peak_rss([*FSPL_GW, "queue-process", "-q", str(qd), "sh", "--", "-c",
                         f"cat | wc -c > {count}"], tmp_path)  # (wc alone would lseek)
    assert rc == 0
    assert count.read_text().strip() == str(GIB)  # every byte reached the command
    assert peak < RSS_LIMIT, f"peak RSS {peak >> 20} MiB"
    assert os.listdir(qd / "jobs") == []


@pytest.mark.slow
def test_queue_process_256mib_through_decoder_flat(tmp_path: Path) -> None:
    qd = tmp_path / "q"
    subprocess.run([*FSPL_GW, "queue-init", "-q", str(qd)], check=True)
    sparse(qd / "jobs" / "fspl-big.fspl", encode_header(Meta(1, (1700000000, 0), Command())),
           GIB // 4)  # (a pipe-to-pipe chain: slower, so a quarter)
    rc, peak = peak_rss([*FSPL_GW, "queue-process", "-q", str(qd), "-d", "cat", "sh", "--", "-c",
                         "cat >/dev/null"], tmp_path)
    assert rc == 0 and peak < RSS_LIMIT, f"peak RSS {peak >> 20} MiB"


@pytest.mark.slow
def test_prepare_1gib_flat(tmp_path: Path) -> None:
    src = tmp_path / "big"
    sparse(src, b"start", GIB)
    count = tmp_path / "count"
    script = f'"$@" | wc -c > {count}'
    rc, peak = peak_rss(["sh", "-c", script, "sh", *FSPL_GW, "prepare", "-s", "-", "-i", str(src)],
                        tmp_path)
    assert rc == 0
    head = encode_header(Meta(1, (0, 0), Command()))
    # header length differs from ours only by the width of the ctime integers
    assert 0 <= int(count.read_text()) - (GIB + 5) - len(head) <= 8
    assert peak < RSS_LIMIT, f"peak RSS {peak >> 20} MiB"
