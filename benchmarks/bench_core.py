"""Core engine benchmark: fspl-gw against the real fspl, in the same run.

    python benchmarks/bench_core.py [--venv /tmp/fsplgw-bench] [--repeat 3] [--skip-big]
                                    [--nop 10000] [--small 1000] [--dir DIR]

queue-process runs on ``--nop`` NOP jobs (command ``true``, which NOP jobs never run:
the queue machinery alone) and ``--small`` 200-byte command jobs into ``/bin/cat``; fspl
and fspl-gw take turns (A B A B), best wall time and best CPU time (user+sys of the
process tree) of ``--repeat`` rounds each.  ``--dir``: where the queues go (default: the
system temporary directory; its file system decides what an fsync costs).

Uses a fresh NON-editable install of the project in a temporary venv (created if
missing) so that the editable-install finder does not distort start-up time; the
editable .venv's start-up is measured as well.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    env_without_fspl_set,
    fmt_s,
    peak_rss,
    run_interleaved,
    run_timed,
    table,
)

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
SDKS = ("boto3", "botocore", "paramiko", "dropbox", "watchdog", "pycdlib", "rich")


def ensure_venv(path: Path) -> Path:
    exe = path / "bin" / "fspl-gw"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    # a current pip, as scripts/bootstrap uses: its console-script template does not
    # import re (the bundled pip 23's does, ~10 ms of every start-up)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--upgrade", "pip"],
                   check=True)
    # always the current tree (a venv kept from an earlier run would measure old code)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--force-reinstall",
                    "--no-deps", str(ROOT)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    return exe


def make_queue(fspl: str, qdir: Path, jobs: list[bytes]) -> None:
    subprocess.run([fspl, "queue-init", "-q", str(qdir)], check=True)
    for i, data in enumerate(jobs):
        (qdir / "jobs" / f"fspl-{i:08d}-bench.fspl").write_bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "fsplgw-bench-venv"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-big", action="store_true", help="skip the 1 GiB tasks")
    ap.add_argument("--nop", type=int, default=10_000, help="NOP jobs for queue-process")
    ap.add_argument("--small", type=int, default=1000, help="small jobs into /bin/cat")
    ap.add_argument("--dir", default=None, help="where the queues go")
    args = ap.parse_args()

    from fspl_gateway.core.packet import Command, Meta, encode_header

    fspl = shutil.which("fspl")
    assert fspl, "the real fspl is not installed"
    gw = str(ensure_venv(Path(args.venv)))
    tools = {"fspl": fspl, "gw": gw}
    env = env_without_fspl_set()
    rows: list[dict[str, str]] = []

    def row(task: str, t_f: float, t_g: float, target: float | None, note: str = "") -> None:
        ratio = t_g / t_f
        met = "" if target is None else ("yes" if ratio <= target else "**no**")
        rows.append({"task": task, "fspl": fmt_s(t_f), "fspl-gw": fmt_s(t_g),
                     "ratio": f"{ratio:.2f}x", "target": "" if target is None else f"<= {target}x",
                     "met?": met, "notes": note})
        print(f"{task}: fspl {fmt_s(t_f)}, fspl-gw {fmt_s(t_g)} ({ratio:.2f}x) {note}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-core-", dir=args.dir) as tmp_s:
        tmp = Path(tmp_s)

        # -- many small jobs ------------------------------------------------------------
        nop = [encode_header(Meta(i, (1700000000, i), "NOP")) for i in range(1, args.nop + 1)]
        small = [encode_header(Meta(i, (1700000000, i), Command())) + b"x" * 200
                 for i in range(1, args.small + 1)]
        for name, jobs in (("nop", nop), ("small", small)):
            make_queue(fspl, tmp / f"tmpl-{name}", jobs)

        def fresh(name: str) -> None:
            shutil.rmtree(tmp / "q", ignore_errors=True)
            shutil.copytree(tmp / f"tmpl-{name}", tmp / "q")
            os.sync()  # the copy's writes are not charged to the next run's fsyncs

        for name, cmd, n in (("nop", "true", args.nop), ("small", "/bin/cat", args.small)):
            tc = run_interleaved(
                {k: [v, "queue-process", "-q", str(tmp / "q"), cmd] for k, v in tools.items()},
                setup=lambda _k, name=name: fresh(name), repeat=args.repeat, env=env)
            what = "NOP jobs" if name == "nop" else "small jobs into /bin/cat"
            row(f"queue-process {n:,} {what} (wall)", tc["fspl"][0], tc["gw"][0], 1.0,
                f"per job {tc['fspl'][0] / n * 1e6:.0f} / {tc['gw'][0] / n * 1e6:.0f} µs")
            row(f"queue-process {n:,} {what} (CPU)", tc["fspl"][1], tc["gw"][1], 1.0,
                f"per job {tc['fspl'][1] / n * 1e6:.0f} / {tc['gw'][1] / n * 1e6:.0f} µs")
        t = {k: run_timed([v, "queue-ls", "-q", str(tmp / "tmpl-nop")], repeat=args.repeat, env=env)
             for k, v in tools.items()}
        row(f"queue-ls of {args.nop:,} jobs", t["fspl"], t["gw"], None)

        # -- 1 GiB ------------------------------------------------------------------------
        if not args.skip_big:
            big = tmp / "big"
            block = os.urandom(1 << 20)
            with open(big, "wb") as f:
                for _ in range(1024):
                    f.write(block)
            head = encode_header(Meta(1, (1700000000, 0), Command()))
            with open(tmp / "bigjob", "wb") as f:
                f.write(head)
                with open(big, "rb") as src:
                    shutil.copyfileobj(src, f, 8 << 20)

            def fresh_big() -> None:
                shutil.rmtree(tmp / "qb", ignore_errors=True)
                subprocess.run([fspl, "queue-init", "-q", str(tmp / "qb")], check=True)
                os.link(tmp / "bigjob", tmp / "qb" / "jobs" / "fspl-big.fspl")

            cmd = ["sh", "--", "-c", "cat >/dev/null"]
            t = {k: run_timed([v, "queue-process", "-q", str(tmp / "qb"), "--never-delete", *cmd],
                              setup=fresh_big, repeat=args.repeat, env=env)
                 for k, v in tools.items()}
            rss = {}
            for k, v in tools.items():
                fresh_big()
                rss[k] = peak_rss([v, "queue-process", "-q", str(tmp / "qb"), "--never-delete",
                                   *cmd], env=env)
            row("queue-process 1 GiB payload into cat >/dev/null", t["fspl"], t["gw"], 1.1,
                f"peak RSS fspl {rss['fspl'] / 2**20:.1f} MiB, fspl-gw {rss['gw'] / 2**20:.1f} "
                f"MiB (target <= 40)")

            out = tmp / "out.fspl"
            t = {}
            for k, v in tools.items():
                with open(out, "wb") as o:
                    t[k] = run_timed([v, "prepare", "-s", "-", "-i", str(big)], stdout=o,
                                     setup=lambda o=o: (o.seek(0), o.truncate()),
                                     repeat=args.repeat, env=env)
            row("prepare -i 1 GiB file (to a file)", t["fspl"], t["gw"], 0.8)
            t = {}
            for k, v in tools.items():
                def setup_qw() -> None:
                    shutil.rmtree(tmp / "qw", ignore_errors=True)
                    subprocess.run([fspl, "queue-init", "-q", str(tmp / "qw")], check=True)
                with open(tmp / "bigjob", "rb") as src:
                    t[k] = run_timed([v, "queue-write", "-q", str(tmp / "qw")], stdin=src,
                                     setup=lambda src=src: (setup_qw(), src.seek(0)),
                                     repeat=args.repeat, env=env)
            row("queue-write 1 GiB (stdin from a file)", t["fspl"], t["gw"], 0.8)

        # -- start-up -----------------------------------------------------------------------
        def startup(argv: list[str], n: int = 20) -> float:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        t_f = startup([fspl, "gen-uuid"])
        t_g = startup([gw, "gen-uuid"])
        t_e = startup([str(ROOT / ".venv" / "bin" / "fspl-gw"), "gen-uuid"])
        imp = subprocess.run([str(Path(gw).parent / "python"), "-X", "importtime", "-c",
                              "from fspl_gateway.cli.main import main; main(['gen-uuid'])"],
                             capture_output=True, env=env, check=False)
        mods = {line.split("|")[-1].strip().split(".")[0] for line in
                imp.stderr.decode().splitlines() if line.startswith("import time:")}
        bad = sorted(m for m in SDKS if m in mods)
        rows.append({"task": "cold start `fspl-gw gen-uuid` (median of 20)", "fspl": fmt_s(t_f),
                     "fspl-gw": fmt_s(t_g), "ratio": f"{t_g / t_f:.1f}x", "target": "<= 60 ms",
                     "met?": "yes" if t_g <= 0.060 and not bad else "**no**",
                     "notes": f"editable .venv: {fmt_s(t_e)}; SDKs imported: "
                              f"{', '.join(bad) or 'none'}"})
        print(f"start-up: fspl {fmt_s(t_f)}, fspl-gw {fmt_s(t_g)} (editable {fmt_s(t_e)}), "
              f"SDKs imported: {bad or 'none'}", flush=True)

    print()
    print(table(rows, ["task", "fspl", "fspl-gw", "ratio", "target", "met?", "notes"]))


if __name__ == "__main__":
    main()
