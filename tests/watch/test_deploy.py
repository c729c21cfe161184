"""Deployment files, checked structurally (Docker does not run here): the compose file's
services, healthchecks and volumes; every fspl-gw command line in the compose file, the
Dockerfile, the systemd units and the cron examples parses with the real click CLI; the
example configs load."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from fspl_gateway.cli.main import cli
from fspl_gateway.gateway.watch import pipelines
from tests.watch.util import ROOT

SHELL_OPS = {"&&", "||", ";", "|", "&"}


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``fspl-gw ARGV`` with the real CLI (nothing runs); (subcommand, params)."""
    ctx = cli.make_context("fspl-gw", list(argv))
    args = [*getattr(ctx, "_protected_args", []), *ctx.args]
    name, cmd, rest = cli.resolve_command(ctx, args)
    assert cmd is not None and name is not None, argv
    sub = cmd.make_context(name, rest, parent=ctx)
    return name, sub.params


def fspl_gw_commands(tokens: list[str]) -> list[list[str]]:
    """The argument lists of every ``fspl-gw …`` in a tokenized command line."""
    out: list[list[str]] = []
    i = 0
    while i < len(tokens):
        if Path(tokens[i]).name == "fspl-gw":
            j = i + 1
            while j < len(tokens) and tokens[j] not in SHELL_OPS:
                j += 1
            out.append(tokens[i + 1:j])
            i = j
        elif tokens[i] in ("sh", "/bin/sh", "bash") and i + 2 < len(tokens) and tokens[i + 1] == "-c":
            out.extend(fspl_gw_commands(shlex.split(tokens[i + 2])))
            i += 3
        else:
            i += 1
    return out


def test_parse_cli_rejects_bad_lines() -> None:
    """The checker itself can fail."""
    with pytest.raises(click.UsageError):
        parse_cli(["status", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_cli(["sync", "-q", "/q"])  # --remote missing
    assert fspl_gw_commands(shlex.split("a && fspl-gw status -q x | b")) == [["status", "-q", "x"]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    assert {"minio", "minio-init", "sftp", "gateway"} <= set(svcs)
    for name in ("minio", "sftp", "gateway"):
        hc = svcs[name]["healthcheck"]
        assert hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) > 1, name
    # the bucket is made by a one-shot mc container once MinIO is healthy
    init = svcs["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb" in " ".join(init["entrypoint"])
    gw = svcs["gateway"]
    assert gw["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert gw["depends_on"]["sftp"]["condition"] == "service_healthy"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(gw["environment"])
    # the S3 credentials are MinIO's root credentials, passed by variable, never inlined
    assert gw["environment"]["AWS_SECRET_ACCESS_KEY"] == svcs["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gw["volumes"]}
    assert mounts["/var/spool/fspl-gw"] in compose["volumes"]  # a named volume for the queues
    assert "/etc/fspl-gw/config.toml" in mounts
    assert (ROOT / mounts["/etc/fspl-gw/config.toml"]).is_file()
    for name in ("minio", "sftp"):
        for v in svcs[name]["volumes"]:
            src = v.split(":")[0]
            assert src in compose["volumes"] or src.startswith("./"), v
    assert gw["stop_signal"] == "SIGTERM"


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)s", str(text))
    assert m, text
    return float(m.group(1))


def test_compose_gateway_commands_parse(compose: dict[str, Any]) -> None:
    gw = compose["services"]["gateway"]
    name, params = parse_cli(gw["command"][1:])
    assert name == "watch" and params["config_file"] == "/etc/fspl-gw/config.toml"
    test = gw["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "fspl-gw"
    name, params = parse_cli(test[2:])
    assert name == "status" and params["as_json"] and params["config_file"] == "/etc/fspl-gw/config.toml"
    # the compose stop grace leaves the gateway its own [watch] grace
    cfg = pipelines.load(str(ROOT / "deploy/docker/config.toml"))
    assert _seconds(gw["stop_grace_period"]) > cfg.watch.grace


def test_docker_config_loads() -> None:
    cfg = pipelines.load(str(ROOT / "deploy/docker/config.toml"))
    assert set(cfg.pipelines) == {"inbox", "outbox"}
    assert cfg.pipelines["outbox"].direction == "push"
    assert cfg.remotes["minio"]["endpoint_url"] == "http://minio:9000"
    assert all(q.startswith("/var/spool/fspl-gw/") for q in cfg.queues())
    assert cfg.watch.metrics_file and cfg.watch.metrics_file.startswith("/var/spool/fspl-gw/")


def test_example_config_loads() -> None:
    cfg = pipelines.load(str(ROOT / "deploy/config.example.toml"))
    assert set(cfg.pipelines) == {"site-b", "site-c", "to-vault"}
    assert cfg.pipelines["site-c"].workers == 4
    assert cfg.watch.media_queue == cfg.pipelines["site-b"].queue


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'pip install "?\.\[all\]"?', text)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert cmd[0] == "fspl-gw"
    assert parse_cli(cmd[1:]) == ("watch", {"config_file": "/etc/fspl-gw/config.toml"})
    hc = json.loads(re.search(r"CMD (\[.*\])\s*\nCMD", text).group(1))  # type: ignore[union-attr]
    assert hc[0] == "fspl-gw" and parse_cli(hc[1:])[0] == "status"


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        cur.setdefault(k, []).append(v)
    return sections


def test_systemd_units() -> None:
    d = ROOT / "deploy/systemd"
    watch = _unit(d / "fspl-gw-watch.service")["Service"]
    assert watch["Type"] == ["simple"]
    assert watch["KillSignal"] == ["SIGTERM"]
    assert watch["Restart"] == ["on-failure"]
    assert int(watch["TimeoutStopSec"][0]) > 30
    assert watch["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert watch["KillMode"] == ["mixed"]  # jobs are not SIGTERMed behind our back
    (argv,) = fspl_gw_commands(shlex.split(watch["ExecStart"][0]))
    assert parse_cli(argv)[0] == "watch"
    sync = _unit(d / "fspl-gw-sync@.service")["Service"]
    assert sync["Type"] == ["oneshot"]
    lines = [x.replace("%i", "site-b") for x in sync["ExecStart"] + sync["ExecStartPost"]]
    cmds = [c for x in lines for c in fspl_gw_commands(shlex.split(x))]
    assert [parse_cli(c)[0] for c in cmds] == ["sync", "queue-process"]
    assert parse_cli(cmds[0])[1]["remote"] == "site-b"
    timer = _unit(d / "fspl-gw-sync@.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == ["timers.target"]


def test_cron_examples_parse() -> None:
    seen: list[str] = []
    for line in (ROOT / "deploy/cron/fspl-gw.cron").read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        fields = line.split(None, 6)
        if len(fields) < 7 or not re.fullmatch(r"[\d*/,-]+", fields[0]):
            continue
        for argv in fspl_gw_commands(shlex.split(fields[6])):
            seen.append(parse_cli(argv)[0])
    assert sorted(set(seen)) == ["push", "queue-process", "status", "sync", "workers"]


def test_docs_name_every_deploy_file() -> None:
    doc = (ROOT / "docs/deployment.md").read_text()
    for p in ("docker-compose.yml", "Dockerfile", "fspl-gw-watch.service",
              "fspl-gw-sync@.service", "fspl-gw-sync@.timer", "fspl-gw.cron",
              "config.example.toml", "[pipelines.", "media_root", "--metrics-file"):
        assert p in doc, p
