"""Benchmark: 200 jobs of `sleep 0.05` through `fspl-gw workers` with 1, 2 and 4 workers,
and through plain `fspl queue-process` (one at a time) for reference, in one run.

Usage: .venv/bin/python benchmarks/bench_parallel.py [--jobs 200] [--sleep 0.05]
Prints a Markdown table; target: speed-up ≥ 1.8× at N = 2 over one worker.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fspl_gateway.core import queue as q  # noqa: E402
from tests.parallel.util import add_jobs  # noqa: E402


def run(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--sleep", type=float, default=0.05)
    a = ap.parse_args()
    env = {**os.environ}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        fspl = shutil.which("fspl")
        if fspl:
            inc = Path(d) / "fspl"
            q.queue_init(str(inc))
            add_jobs(inc, range(1, a.jobs + 1))
            rows.append(("fspl queue-process (serial)",
                         run([fspl, "queue-process", "-q", str(inc), "sleep", "--",
                              str(a.sleep)], env)))
        base = None
        for n in (1, 2, 4):
            inc = Path(d) / f"gw{n}"
            q.queue_init(str(inc))
            add_jobs(inc, range(1, a.jobs + 1))
            t = run([sys.executable, "-m", "fspl_gateway", "workers", "-q", str(inc), "-n",
                     str(n), "sleep", "--", str(a.sleep)], env)
            base = base or t
            rows.append((f"fspl-gw workers -n {n}", t))
    print(f"{a.jobs} jobs of `sleep {a.sleep}`, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| run | seconds | speed-up over 1 worker |")
    print("|---|---|---|")
    one = dict(rows)["fspl-gw workers -n 1"]
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {one / t:.2f}× |")


if __name__ == "__main__":
    main()
