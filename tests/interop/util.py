"""Helpers for the interop tests: run the same command with the real fspl and fspl-gw."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import FSPL, FSPL_GW

TOOLS = ("fspl", "gw")


def argv(tool: str) -> list[str]:
    assert FSPL, "the real fspl is not installed"
    return [FSPL] if tool == "fspl" else list(FSPL_GW)


def run(tool: str, *args: str | os.PathLike[str], input: bytes | None = None,
        cwd: str | Path | None = None, env: dict[str, str] | None = None,
        stdin: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    kw: dict[str, object] = {"input": input} if stdin is None else {"stdin": stdin}
    return subprocess.run([*argv(tool), *map(str, args)], capture_output=True, cwd=cwd, env=env,
                          timeout=timeout, **kw)  # type: ignore[call-overload]


def ok(tool: str, *args: str | os.PathLike[str], **kw: object) -> bytes:
    r = run(tool, *args, **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, (tool, args, r.returncode, r.stderr.decode(errors="replace"))
    return r.stdout


def shim_dir(base: Path) -> Path:
    """A directory holding an executable ``fspl`` that runs fspl-gw: put it first on PATH
    and every script that calls ``fspl`` uses fspl-gw instead."""
    d = base / "shim"
    d.mkdir(exist_ok=True)
    script = d / "fspl"
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "fspl_gateway"))
    root = str(Path(__file__).resolve().parents[2])
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}} "
                      f"exec {cmd} \"$@\"\n")
    script.chmod(0o755)
    return d


def path_env(tool: str, base: Path, **extra: str) -> dict[str, str]:
    """Environment whose PATH resolves ``fspl`` to the real one or to fspl-gw."""
    env = dict(os.environ, **extra)
    if tool == "gw":
        env["PATH"] = f"{shim_dir(base)}:{env.get('PATH', '')}"
    return env
