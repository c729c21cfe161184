"""The TOML config file and remote resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.gateway import config
from tests.unit.test_sync import job_set, local_jobs, make_remote, run_cli

SECRET = "s3cr3t-value-never-shown"


def write_cfg(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_cfg(tmp_path / "config.toml", f"""
[remotes.backups]
transport = "s3"
location = "bucket/prefix"
endpoint_url = "http://127.0.0.1:9000"
secret_access_key = "{SECRET}"
port = 9000

[remotes.nas]
transport = "local"
location = "/mnt/nas/queue"
""")


def test_named_remote(cfg: Path) -> None:
    spec = config.resolve_remote("backups", config_file=str(cfg))
    assert (spec.name, spec.transport, spec.location) == ("backups", "s3", "bucket/prefix")
    assert spec.options == {"endpoint_url": "http://127.0.0.1:9000",
                            "secret_access_key": SECRET, "port": 9000}


def test_flags_override_file(cfg: Path) -> None:
    spec = config.resolve_remote("backups", None, ["endpoint_url=http://other", "x=a=b"],
                                 config_file=str(cfg))
    assert spec.options["endpoint_url"] == "http://other" and spec.options["x"] == "a=b"
    spec = config.resolve_remote("nas", "sftp", [], config_file=str(cfg))
    assert spec.transport == "sftp"


def test_literal_location_needs_transport(cfg: Path) -> None:
    spec = config.resolve_remote("/srv/q", "local", ["tmp_grace=5"], config_file=str(cfg))
    assert (spec.name, spec.transport, spec.location, spec.options) == \
        (None, "local", "/srv/q", {"tmp_grace": "5"})
    with pytest.raises(ConfigError) as ei:
        config.resolve_remote("backupz", config_file=str(cfg))
    msg = str(ei.value)
    assert "unknown remote 'backupz'" in msg and "backups, nas" in msg and "\n" not in msg


def test_missing_transport_or_location(tmp_path: Path) -> None:
    p = write_cfg(tmp_path / "c.toml", '[remotes.a]\nlocation = "x"\n[remotes.b]\n'
                                       'transport = "local"\n')
    with pytest.raises(ConfigError, match="no transport"):
        config.resolve_remote("a", config_file=str(p))
    with pytest.raises(ConfigError, match="no location"):
        config.resolve_remote("b", config_file=str(p))


def test_bad_toml_and_bad_tables(tmp_path: Path) -> None:
    p = write_cfg(tmp_path / "bad.toml", "[remotes.a\ntransport = ")
    with pytest.raises(ConfigError, match="not valid TOML") as ei:
        config.load(str(p))
    assert "\n" not in str(ei.value)
    write_cfg(p, "remotes = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        config.load(str(p))
    write_cfg(p, "[remotes.a]\ntransport = 'local'\nlocation = 'x'\n[remotes.a.sub]\nk = 1\n")
    with pytest.raises(ConfigError, match="remotes.a.sub"):
        config.load(str(p))


def test_where_the_file_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.load().remotes == {}  # a missing default file is an empty config
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.toml"))
    d = tmp_path / "xdg" / "fspl-gw"
    d.mkdir(parents=True)
    write_cfg(d / "config.toml", "[remotes.d]\ntransport='local'\nlocation='/d'\n")
    assert set(config.load().remotes) == {"d"}
    e = write_cfg(tmp_path / "env.toml", "[remotes.e]\ntransport='local'\nlocation='/e'\n")
    monkeypatch.setenv(config.ENV_VAR, str(e))
    assert set(config.load().remotes) == {"e"}
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load()
    assert set(config.load(str(d / "config.toml")).remotes) == {"d"}  # the flag wins


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_overrides(["novalue"])
    with pytest.raises(ConfigError):
        config.parse_overrides(["=v"])


def test_redacted(cfg: Path) -> None:
    spec = config.resolve_remote("backups", None, ["token=t0k", "password=pw", "sshkey=k",
                                                   "Passphrase=pp", "user=bob"],
                                 config_file=str(cfg))
    red = spec.redacted()
    assert red["secret_access_key"] == red["token"] == red["password"] == "***"
    assert red["sshkey"] == red["Passphrase"] == "***"
    assert red["user"] == "bob" and red["endpoint_url"] == "http://127.0.0.1:9000"
    for text in (repr(spec), str(spec)):
        assert SECRET not in text and "t0k" not in text and "pw'" not in text


def test_world_readable_secrets_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write_cfg(tmp_path / "c.toml", f"[remotes.a]\ntransport='s3'\nlocation='b'\n"
                                       f"token='{SECRET}'\n", mode=0o644)
    config.load(str(p))
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_cli_uses_named_remote_and_never_prints_secrets(tmp_path: Path, queue: Path) -> None:
    remote = make_remote(tmp_path / "remote", job_set(2))
    p = write_cfg(tmp_path / "c.toml", f"""
[remotes.here]
transport = "local"
location = "{remote}"
api_token = "{SECRET}"
""")
    r = run_cli("-l", "debug", "sync", "--config", str(p), "--remote", "here", "-q",
                str(queue), "-o", f"password={SECRET}")
    # the local transport takes no such options: refused (exit 2), the secret not shown
    assert r.returncode == 2 and "unknown local option 'api_token'" in r.stderr, r.stderr
    assert SECRET not in r.stderr and SECRET not in r.stdout
    assert "***" in r.stderr
    p.write_text(p.read_text().replace(f'api_token = "{SECRET}"', 'tmp_grace = "5s"'))
    r = run_cli("-l", "debug", "sync", "--config", str(p), "--remote", "here", "-q",
                str(queue))
    assert r.returncode == 0, r.stderr
    assert len(local_jobs(queue)) == 2
    r = run_cli("sync", "--remote", "here", "-q", str(queue),
                env={"FSPL_GW_CONFIG": str(p)})
    assert r.returncode == 0, r.stderr
    r = run_cli("sync", "--remote", "nothere", "-q", str(queue),
                env={"FSPL_GW_CONFIG": str(p)})
    assert r.returncode == 2 and "unknown remote 'nothere'" in r.stderr
    assert os.path.exists(p)


def test_receipt_settings_are_not_transport_options(tmp_path: Path) -> None:
    from fspl_gateway.gateway import receipt_settings

    p = write_cfg(tmp_path / "c.toml", '[remotes.b]\ntransport = "local"\nlocation = "/q"\n'
                  'receipts = true\nqueue_id = "site-b"\ntrust_keys = ["~/a.pub", "b.pub"]\n'
                  'stuck_after = "10m"\ntmp_grace = 5\n')
    spec = config.resolve_remote("b", None, ["expect_queue=x"], config_file=str(p))
    assert spec.options == {"tmp_grace": 5}
    rs = receipt_settings.of_remote(spec)
    assert (rs.receipts, rs.queue_id, rs.expect_queue, rs.stuck_after) == \
        (True, "site-b", "x", 600.0)
    # queue_id is one key with one meaning: the trust setting, also what receipts name
    assert spec.trust == {"queue_id": "site-b"} and "queue_id" not in spec.settings
    assert rs.trust_keys == (os.path.expanduser("~/a.pub"), "b.pub")
    lit = config.resolve_remote("/q", "local", ["receipts=yes"], config_file=str(p))
    assert lit.options == {} and receipt_settings.parse(lit.settings).receipts
    assert receipt_settings.parse({}) == receipt_settings.ReceiptSettings()
    with pytest.raises(ConfigError, match="remote b option receipts: expected true or false"):
        receipt_settings.parse({"receipts": "maybe"}, "b")
    write_cfg(p, '[remotes.b]\ntransport = "local"\nlocation = "/q"\nendpoints = ["a"]\n')
    with pytest.raises(ConfigError, match="must be a string"):
        config.load(str(p))
    # lists and tables are fine for trust keys and receipt settings, not transport options
    write_cfg(p, '[remotes.b]\ntransport = "local"\nlocation = "/q"\ntrust_keys = ["k"]\n'
              'trusted_keys = ["t"]\n[remotes.b.routes]\nk = "/q2"\n')
    spec = config.resolve_remote("b", None, [], config_file=str(p))
    assert spec.options == {} and spec.settings == {"trust_keys": ["k"]}
    assert spec.trust == {"trusted_keys": ["t"], "routes": {"k": "/q2"}}
    write_cfg(p, '[remotes.b]\ntransport = "local"\nlocation = "/q"\n[remotes.b.opts]\n'
              'a = "b"\n')
    with pytest.raises(ConfigError, match="must be a string"):
        config.load(str(p))
