"""Small helpers shared by the tests (no fixtures here; see conftest.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

FSPL = shutil.which("fspl")
FSPL_GW = [sys.executable, "-m", "fspl_gateway"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_rss_during(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and return (its result, the growth of this process's peak RSS in bytes).

    Resets the kernel's high-water mark first (``/proc/self/clear_refs`` = 5), so the
    number is what ``fn`` needed above the memory already in use.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    return result, max(0, peak - before) * 1024


class PatternReader:
    """A readable stream of ``size`` deterministic bytes, generated on the fly."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.pos = 0
        block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
        self.block = block

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos, len(self.block))
        off = self.pos % len(self.block)
        out = (self.block[off:] + self.block[:off])[:n]
        self.pos += n
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> PatternReader:
        return self

    def __exit__(self, *a: object) -> None:
        pass


def sha256_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while True:
        b = f.read(1 << 20)
        if not b:
            return h.hexdigest()
        h.update(b)


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def run_gw(*args: str, input: bytes | None = None, check: bool = False,
           env: dict[str, str] | None = None, cwd: str | Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``fspl-gw ARGS`` as a subprocess (python -m fspl_gateway)."""
    return subprocess.run([*FSPL_GW, *args], input=input, capture_output=True, check=check,
                          env=env, cwd=cwd, timeout=timeout)


def run_fspl(*args: str, input: bytes | None = None, check: bool = False,
             env: dict[str, str] | None = None, cwd: str | Path | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``fspl`` binary."""
    assert FSPL, "the real fspl is not installed (apt-get install filespooler)"
    return subprocess.run([FSPL, *args], input=input, capture_output=True, check=check,
                          env=env, cwd=cwd, timeout=timeout)
