"""Helpers for the watch/status tests: a `fspl-gw watch` subprocess, packets, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspl_gateway.core.fsutil import AtomicWriter
from fspl_gateway.core.packet import Meta, encode_header, make_command
from fspl_gateway.core.queue import new_job_filename

ROOT = Path(__file__).resolve().parents[2]


def packet(seq: int, payload: bytes = b"", params: tuple[bytes, ...] = ()) -> bytes:
    return encode_header(Meta(seq=seq, cmd=make_command(params))) + payload


def put_job(jobs_dir: str | os.PathLike[str], seq: int, payload: bytes = b"",
            name: str | None = None) -> str:
    """Write a job file into ``jobs_dir`` atomically (as a remote writer would)."""
    name = name or new_job_filename()
    with AtomicWriter(os.fspath(jobs_dir), name) as w:
        w.file.write(packet(seq, payload))
    return name


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> float:
    """Poll ``cond`` until true; return the seconds it took (fail after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def job_names(queue: str | os.PathLike[str]) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(queue, "jobs"))
                  if n.startswith("fspl-") and n.endswith(".fspl"))


def read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


class Watch:
    """``fspl-gw -l debug watch --config CFG`` as a subprocess; stderr in a file."""

    def __init__(self, config: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = cwd / f"watch-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        e = dict(os.environ if env is None else env)
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fspl_gateway", "-l", "debug", "watch", "--config", str(config)],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=e)

    def log(self) -> str:
        return read(self.log_path)

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> float:
        """Wait until ``text`` is in the log ``count`` times; the seconds it took."""
        t = wait_for(lambda: self.log().count(text) >= count or self._dead(), timeout,
                     f"{text!r} in the watch log")
        if self.log().count(text) < count:
            raise AssertionError(f"watch exited ({self.proc.returncode}) before logging "
                                 f"{text!r}:\n{self.log()}")
        return t

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def toml_str(s: str | os.PathLike[str]) -> str:
    """A TOML basic string."""
    return '"' + os.fspath(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path
