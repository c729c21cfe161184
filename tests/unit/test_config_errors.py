"""A config file that is not UTF-8, not TOML, absurdly nested or not a file at all is a
one-line ConfigError (exit 2 from the CLI), never a traceback: for the remotes (sync,
push, …) and for the pipelines (watch, status)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.gateway import config
from fspl_gateway.gateway.watch import pipelines
from tests.unit.test_sync import run_cli

LOADERS: list[Callable[[str], Any]] = [config.load, pipelines.load]

BAD: dict[str, tuple[bytes, str]] = {
    "latin-1": (b'[remotes.caf\xe9]\ntransport = "local"\n', r"not UTF-8 text \(byte 0xe9 on line 1\)"),
    "utf-16": ('[remotes.a]\ntransport = "local"\n'.encode("utf-16"), "not UTF-8 text"),
    "binary": (b"\x00\x01\x02\xff" * 100, "not UTF-8 text"),
    "second line": (b'# ok\nlocation = "/tmp/\x80"\n', "on line 2"),
    "not toml": (b"[remotes.a\ntransport = ", "not valid TOML"),
    "nested": (b"x = " + b"[" * 5000, "not valid TOML: nested too deeply"),
}


@pytest.mark.parametrize("load", LOADERS, ids=["config", "pipelines"])
@pytest.mark.parametrize("case", BAD)
def test_bad_file_is_one_line_config_error(tmp_path: Path, load: Callable[[str], Any],
                                           case: str) -> None:
    data, message = BAD[case]
    p = tmp_path / "config.toml"
    p.write_bytes(data)
    with pytest.raises(ConfigError, match=message) as ei:
        load(str(p))
    assert "\n" not in str(ei.value) and str(p) in str(ei.value)


@pytest.mark.parametrize("load", LOADERS, ids=["config", "pipelines"])
def test_not_a_regular_file(tmp_path: Path, load: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(str(tmp_path))
    big = tmp_path / "big.toml"  # say, /dev/zero or a log file named by mistake
    with open(big, "wb") as f:
        f.truncate(config.MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load(str(big))


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_bytes(b'\xef\xbb\xbf[remotes.a]\ntransport = "local"\nlocation = "/srv/q"\n')
    p.chmod(0o600)
    assert config.load(str(p)).remotes == {"a": {"transport": "local", "location": "/srv/q"}}


@pytest.mark.parametrize("argv", [
    ["status", "--config", "{cfg}"],
    ["sync", "--config", "{cfg}", "-r", "somewhere", "-q", "{queue}"],
])
def test_cli_exit_2_one_line(tmp_path: Path, queue: Path, argv: list[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b'[remotes.a]\nlocation = "/tmp/\xff"\n')
    r = run_cli(*(a.format(cfg=cfg, queue=queue) for a in argv))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        f"Error: config file {cfg} is not UTF-8 text (byte 0xff on line 2); save it as UTF-8"]
