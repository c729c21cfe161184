"""One option schema and one parser for every transport (transports/options.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.gateway import config
from fspl_gateway.transports import options as om
from fspl_gateway.transports.base import RemoteEntry, Transport, available, load
from fspl_gateway.transports.local import LocalTransport
from fspl_gateway.transports.options import Option, OptionSchema, OptionType
from tests.unit.test_sync import job_set, local_jobs, make_remote, run_cli

README = Path(__file__).resolve().parents[2] / "README.md"
MiB = 1 << 20

SCHEMA = OptionSchema(
    Option("size", OptionType.SIZE, "a size", default=8 * MiB, minimum=1),
    Option("wait", OptionType.DURATION, "a duration", default=30.0),
    Option("flag", OptionType.BOOL, "a bool", default=False),
    Option("count", OptionType.INT, "an int", default=3, minimum=1, maximum=10),
    Option("ratio", OptionType.FLOAT, "a float", default=0.5),
    Option("mode", OptionType.CHOICE, "a choice", default="fast", choices=("fast", "safe")),
    Option("files", OptionType.PATH, "paths", multiple=True),
    Option("token", OptionType.STR, "a secret", secret=True, env=("T_TOKEN", "T_TOKEN2")),
    Option("old", OptionType.INT, "gone", deprecated="use --retries"),
)


@pytest.mark.parametrize("text,value", [
    ("65536", 65536), (65536, 65536), ("8MiB", 8 * MiB), ("8M", 8 * MiB), ("8mib", 8 * MiB),
    ("8 MiB", 8 * MiB), ("8Mi", 8 * MiB), ("8MB", 8_000_000), ("8kB", 8000),
    ("1.5MiB", 3 * MiB // 2), ("1GiB", 1 << 30), ("2T", 2 << 40), ("100B", 100),
])
def test_sizes(text: Any, value: int) -> None:
    assert SCHEMA.parse({"size": text})["size"] == value


@pytest.mark.parametrize("text,value", [
    ("90", 90.0), (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("1.5m", 90.0), ("1h", 3600.0),
    ("2d", 172800.0), ("250ms", 0.25), ("10M", 600.0),
])
def test_durations_plain_number_is_seconds(text: Any, value: float) -> None:
    assert SCHEMA.parse({"wait": text})["wait"] == value


@pytest.mark.parametrize("text,value", [
    ("true", True), ("YES", True), ("on", True), ("1", True), (1, True), (True, True),
    ("false", False), ("No", False), ("off", False), ("0", False), (0, False),
])
def test_booleans(text: Any, value: bool) -> None:
    assert SCHEMA.parse({"flag": text})["flag"] is value


@pytest.mark.parametrize("key,value,expect", [
    ("size", "lots", "a size such as"), ("size", "1.5", "a size such as"),
    ("size", "0", "of at least 1"), ("size", True, "a size"), ("wait", "abc", "a duration"),
    ("wait", "-5", "a duration"), ("wait", "1w", "a duration"), ("flag", "maybe", "true or false"),
    ("count", "0", "from 1 to 10"), ("count", "2.5", "a whole number"),
    ("ratio", "nan", "a number"), ("mode", "slow", "one of fast, safe"),
])
def test_bad_value_is_one_line(key: str, value: Any, expect: str) -> None:
    with pytest.raises(ConfigError) as ei:
        SCHEMA.parse({key: value}, "demo")
    msg = str(ei.value)
    assert msg.startswith(f"demo option {key}: expected ") and expect in msg, msg
    assert "\n" not in msg and ei.value.exit_code == 2


def test_secret_values_never_repeated() -> None:
    with pytest.raises(ConfigError) as ei:
        OptionSchema(Option("pin", OptionType.INT, "x", secret=True)).parse({"pin": "s3cr3t"})
    assert "s3cr3t" not in str(ei.value) and "pin" in str(ei.value)


@pytest.mark.parametrize("key,hint", [
    ("sise", "did you mean 'size'?"), ("wiat", "did you mean 'wait'?"),
    ("file", "did you mean 'files'?"), ("zzzzzz", "(known: size, wait, flag, count"),
])
def test_unknown_key_names_the_closest(key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as ei:
        SCHEMA.parse({key: "1"}, "demo")
    msg = str(ei.value)
    assert msg.startswith(f"unknown demo option {key!r}") and hint in msg, msg
    assert "old" not in msg.split("known:")[1], "deprecated options are not offered"


def test_defaults_env_given_and_reparse(caplog: pytest.LogCaptureFixture) -> None:
    v = SCHEMA.parse({"count": "4", "files": "~/a, /b", "size": "", "old": 3},
                     environ={"T_TOKEN2": "from-env"})
    assert v["count"] == 4 and v["size"] == 8 * MiB and v["wait"] == 30.0
    assert v["files"] == [os.path.expanduser("~/a"), "/b"]
    assert v["token"] == "from-env" and "old" not in v
    assert v.given == {"count", "files"}, "an empty value or the environment is not 'given'"
    assert "option old is deprecated and ignored: use --retries" in caplog.text
    assert "from-env" not in repr(v)
    again = SCHEMA.parse(dict(v))  # parsed values parse to themselves
    assert dict(again) == dict(v)
    with pytest.raises(ConfigError, match=r"option token \(from \$T_TOKEN\)"):
        OptionSchema(Option("token", OptionType.INT, "x", env=("T_TOKEN",))).parse(
            {}, environ={"T_TOKEN": "nope"})


def test_every_transport_declares_a_valid_schema() -> None:
    names = set(available())
    assert {"local", "s3", "sftp", "dropbox", "media"} <= names
    for name in names:
        schema = load(name).options_schema
        assert schema is not None, name
        for o in schema:
            assert o.help.strip() or o.deprecated, (name, o.name)
            if o.default is not None:  # the defaults pass their own option's checks
                assert om.parse_value(o, o.default, name) == o.default, (name, o.name)


def test_readme_tables_come_from_the_schema() -> None:
    text = README.read_text(encoding="utf-8")
    assert om.render_readme(text) == text, \
        "the README's option tables differ from the schemas: run scripts/gen-option-docs"
    for name in ("local", "s3", "sftp", "dropbox", "media"):
        assert f"<!-- BEGIN options:{name} " in text
    # and the check can fail: a changed help text shows
    changed = OptionSchema(*load("local").options_schema or ())  # type: ignore[misc]
    changed = OptionSchema(Option("tmp_max_age", OptionType.DURATION, "changed"),
                           *[o for o in changed if o.name != "tmp_max_age"])
    assert om.render_readme(text, {"local": changed}) != text


class _Plain(Transport):
    """A third-party transport without a schema, and one with."""

    name = "plain"

    def list(self) -> Any:
        return iter([])

    def open(self, name: str) -> Any:
        raise NotImplementedError

    def write_new(self, name: str, src: Any, size: int) -> RemoteEntry:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


class _Declared(_Plain):
    name = "declared"
    options_schema = OptionSchema(Option("chunk", OptionType.SIZE, "x", default=1024))


def test_the_base_class_parses_for_third_parties() -> None:
    assert _Plain("x", {"anything": "goes"}).options == {"anything": "goes"}
    t = _Declared("x", {"chunk": "8MiB"})
    assert t.settings["chunk"] == 8 * MiB and t.options == {"chunk": 8 * MiB}
    assert _Declared("x").settings["chunk"] == 1024 and _Declared("x").options == {}
    with pytest.raises(ConfigError, match="unknown declared option 'chnk'; did you mean 'chunk'"):
        _Declared("x", {"chnk": 1})


def test_dropbox_chunk_size_takes_units() -> None:
    from fspl_gateway.transports.dropbox import DropboxTransport

    t = DropboxTransport("/q", {"access_token": "t", "chunk_size": "8MiB"})
    assert t.chunk_size == 8 * MiB
    with pytest.raises(ConfigError, match="chunk_size: expected a size .* from 1 to 128MiB"):
        DropboxTransport("/q", {"access_token": "t", "chunk_size": "1GiB"})


def test_redaction_follows_the_schema() -> None:
    spec = config.RemoteSpec("dropbox", "/q", {"app_secret": "s1", "chunk_size": "8MiB",
                                              "acess_token": "s2"})
    red = spec.redacted()
    assert red == {"app_secret": "***", "chunk_size": "8MiB", "acess_token": "***"}
    # a declared option that is not secret is shown although its name says "passphrase"
    red = config.redacted({"passphrase_env": "MY_VAR", "passphrase": "p"}, "sftp")
    assert red == {"passphrase_env": "MY_VAR", "passphrase": "***"}
    assert config.redacted({"passphrase_env": "MY_VAR"}, None) == {"passphrase_env": "***"}


def test_local_tmp_max_age_is_seconds(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    p = jobs / f"{TMP_PREFIX}{os.getpid()}-abcdef123456-x"
    p.write_bytes(b"partial")
    old = time.time() - 120
    os.utime(p, (old, old))
    assert LocalTransport(str(tmp_path), {"tmp_max_age": 300}).cleanup_temporaries() == 0
    assert LocalTransport(str(tmp_path), {"tmp_max_age": "90s"}).cleanup_temporaries() == 1


# -- through the CLI: exit 2, one line, no traceback -----------------------------------
@pytest.mark.parametrize("transport,opt,expect", [
    ("local", "tmp_max_age=abc", "local option tmp_max_age: expected a duration"),
    ("local", "badopt=1", "unknown local option 'badopt'"),
    ("local", "tmp_max_ag=1h", "did you mean 'tmp_max_age'?"),
    ("media", "badopt=1", "unknown media option 'badopt'"),
    ("s3", "endpoint_url=http://[::1", "s3 option endpoint_url: expected http(s)://"),
    ("s3", "endpoint=http://h", "did you mean 'endpoint_url'?"),
    ("dropbox", "chunk_size=lots", "dropbox option chunk_size: expected a size"),
])
def test_cli_bad_option_is_exit_2(tmp_path: Path, queue: Path, transport: str, opt: str,
                                  expect: str) -> None:
    remote = "bkt/q" if transport == "s3" else "/q" if transport == "dropbox" else \
        str(make_remote(tmp_path / "remote", {}))
    r = run_cli("sync", "-t", transport, "-r", remote, "-q", str(queue), "-o", opt,
                env={"FSPL_GW_DROPBOX_ACCESS_TOKEN": "t"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], r.stderr


def test_cli_duration_with_unit_works(tmp_path: Path, queue: Path) -> None:
    remote = make_remote(tmp_path / "remote", job_set(2))
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue),
                "-o", "tmp_max_age=1h", "-o", "tmp_grace=30s")
    assert r.returncode == 0, r.stderr
    assert len(local_jobs(queue)) == 2


def test_options_of_the_deleted_retry_loops_still_load(caplog: pytest.LogCaptureFixture) -> None:
    """Old configs keep working: the options that fed the transports' own retry loops are
    accepted with a warning and ignored (the one retry policy retries)."""
    from fspl_gateway.transports.dropbox import DropboxTransport
    from fspl_gateway.transports.sftp import SFTPTransport

    t = DropboxTransport("/q", {"access_token": "t", "retries": "3", "max_retry_sleep": "5"})
    assert "retries" not in t.settings and "retries" not in t.options
    s = SFTPTransport("u@h/q", {"ssh_config": "none", "connect_retries": 3,
                                "retry_backoff": "0.5"})
    assert "connect_retries" not in s.settings
    for what in ("dropbox option retries", "dropbox option max_retry_sleep",
                 "sftp option connect_retries", "sftp option retry_backoff"):
        assert f"{what} is deprecated and ignored" in caplog.text
