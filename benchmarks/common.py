"""Shared timing helpers for the benchmark scripts (small on purpose)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

_PEAK = ("import resource, subprocess, sys\n"
         "r = subprocess.run(sys.argv[1:])\n"
         "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n")


def run_timed(argv: Sequence[str], *, setup: Callable[[], Any] | None = None, repeat: int = 3,
              **kw: Any) -> float:
    """Best wall-clock seconds of ``repeat`` runs of ``argv`` (``setup()`` before each,
    untimed).  Output goes to /dev/null unless ``stdout``/``stdin`` are given."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        subprocess.run(list(argv), check=True, **kw)
        best = min(best, time.perf_counter() - t0)
    return best


def run_interleaved(argvs: dict[str, Sequence[str]], *,
                    setup: Callable[[str], Any] | None = None, repeat: int = 3,
                    **kw: Any) -> dict[str, tuple[float, float]]:
    """Each tool's best wall-clock seconds and best CPU seconds (user+sys of its process
    tree, from RUSAGE_CHILDREN deltas, which a loaded machine disturbs less) over
    ``repeat`` rounds, the tools taking turns (A B A B …) so that load hits both alike.
    ``setup(tool)`` runs before each run, untimed."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    best = {k: (float("inf"), float("inf")) for k in argvs}
    for _ in range(repeat):
        for k, argv in argvs.items():
            if setup is not None:
                setup(k)
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(list(argv), check=True, **kw)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            best[k] = (min(best[k][0], wall), min(best[k][1], cpu))
    return best


def peak_rss(argv: Sequence[str], **kw: Any) -> int:
    """Peak RSS in bytes of the biggest process in ``argv``'s tree (run in a fresh
    interpreter so that nothing else counts)."""
    out = subprocess.run([sys.executable, "-c", _PEAK, *argv], check=True,
                         stdout=subprocess.PIPE, **kw).stdout.split()
    if out[0] != b"0":
        raise RuntimeError(f"{argv[0]} exited {out[0].decode()}")
    return int(out[-1])


def children_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def table(rows: list[dict[str, str]], cols: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def fmt_s(sec: float) -> str:
    return f"{sec * 1000:.0f} ms" if sec < 1 else f"{sec:.2f} s"


def env_without_fspl_set() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FSPL_SET_")}
