"""The [pipelines.NAME] and [watch] tables: defaults, relative paths, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.gateway.watch import pipelines
from tests.watch.util import write_config

REMOTE = '[remotes.r]\ntransport = "local"\nlocation = "/srv/r"\n'


def test_defaults_and_relative_queue(tmp_path: Path) -> None:
    cfg = pipelines.load(str(write_config(tmp_path / "c.toml", REMOTE + """
[pipelines.p]
remote = "r"
queue = "spool/p"
""")))
    p = cfg.pipelines["p"]
    assert (p.queue, p.direction, p.interval, p.after, p.process, p.workers) == (
        str(tmp_path / "spool/p"), "pull", 60.0, "delete", (), 0)
    assert cfg.watch == pipelines.WatchSettings()


@pytest.mark.parametrize(("table", "message"), [
    ('queue = "/q"\nremote = "nope"', "pipelines.p.remote names 'nope', which is not a [remotes.X] table (known: r)"),
    ('queue = "/q"\nremote = "r"\nintervall = 5', "pipelines.p.intervall is not a pipeline setting"),
    ('queue = "/q"', "pipelines.p.remote or process (or workers) is required"),
    ('queue = "/q"\ndirection = "push"\nprocess = ["x"]', "pipelines.p.remote is required for a push pipeline"),
    ('queue = "/q"\nremote = "r"\ndirection = "sideways"', "pipelines.p.direction must be one of pull, push"),
    ('queue = "/q"\nremote = "r"\ninterval = "soon"', "pipelines.p.interval must be a number"),
    ('queue = "/q"\nworkers = 2', "pipelines.p.command is required with workers"),
    ('queue = "/q"\nprocess = ["a"]\non_error = "ignore"', "pipelines.p.on_error must be one of delete, leave, retry"),
])
def test_errors_name_file_table_and_key(tmp_path: Path, table: str, message: str) -> None:
    path = write_config(tmp_path / "c.toml", REMOTE + "[pipelines.p]\n" + table + "\n")
    with pytest.raises(ConfigError) as e:
        pipelines.load(str(path))
    assert str(e.value).startswith(f"config file {path}: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_watch_table(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", REMOTE + """
[pipelines.p]
remote = "r"
queue = "/q"

[watch]
media_root = "/media"
media_pipeline = "p"
grace = 0
""")
    w = pipelines.load(str(path)).watch
    assert (w.media_root, w.media_queue, w.grace) == ("/media", "/q", 0.0)
    path.write_text(REMOTE + '[watch]\nmedia_root = "/media"\n')
    with pytest.raises(ConfigError, match=r"watch\.media_queue \(or media_pipeline\) is required"):
        pipelines.load(str(path))
