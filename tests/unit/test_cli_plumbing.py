"""The CLI's plumbing: shared options declared once, value sets from the engine's enums,
one transport resolution, one exit-3 error, shell completion and the man page."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import click
import pytest

import fspl_gateway
from fspl_gateway.cli import options as opt
from fspl_gateway.cli.main import LAZY_COMMANDS, cli
from fspl_gateway.core import queue as q
from fspl_gateway.core.errors import (
    EXIT_CODES,
    EXIT_PARTIAL,
    ConfigError,
    FsplError,
    PartialFailure,
)
from fspl_gateway.gateway.config import RemoteSpec
from fspl_gateway.gateway.remotes import open_remote
from fspl_gateway.gateway.watch import pipelines
from fspl_gateway.transports.local import LocalTransport
from tests.helpers import FSPL_GW, run_gw
from tests.unit.test_sync import job_set, local_jobs, make_remote, remote_jobs, run_cli

ROOT = Path(__file__).resolve().parents[2]


def commands() -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(cli, info_name="fspl-gw")
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        assert cmd is not None, name
        yield name, cmd


def params_named(name: str) -> list[tuple[str, click.Parameter]]:
    return [(c, p) for c, cmd in commands() for p in cmd.params if p.name == name]


def test_every_lazy_command_loads() -> None:
    names = dict(commands())
    assert set(LAZY_COMMANDS) <= set(names)
    assert {"prepare", "queue-process", "stdin-info"} <= set(names)


# -- 1. shared options, declared once --------------------------------------------------
def test_every_decoder_has_fspls_short_flag() -> None:
    found = params_named("decoder")
    assert {c for c, _ in found} >= {"queue-ls", "queue-info", "queue-payload",
                                     "queue-process", "sync", "push", "import", "status"}
    for c, p in found:
        assert isinstance(p, click.Option) and p.opts == ["-d", "--decoder"], c
        assert p.metavar == "DECODECMD", c


def test_decoder_short_flag_on_sync_and_import(tmp_path: Path, queue: Path) -> None:
    """sync, push and import took only --decoder; fspl spells every decoder -d too."""
    remote = make_remote(tmp_path / "remote", job_set(2))
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue), "-d", "cat")
    assert r.returncode == 0, r.stderr
    assert len(local_jobs(queue)) == 2
    stick = tmp_path / "stick"
    stick.mkdir()
    out = tmp_path / "out"
    q.queue_init(str(out), append_only=True)
    for name, data in job_set(1, start=7).items():
        (out / "jobs" / name).write_bytes(data)
    assert run_gw("export", "-q", str(out), "--to", str(stick)).returncode == 0
    r2 = run_gw("import", "-q", str(queue), "--from", str(stick), "-d", "cat")
    assert r2.returncode == 0, r2.stderr
    assert len(local_jobs(queue)) == 3


def test_wait_lock_is_one_option_with_one_default() -> None:
    found = params_named("wait_lock")
    assert {c for c, _ in found} >= {"prepare", "queue-process", "queue-set-next", "sync",
                                     "push", "import", "disperse"}
    first = found[0][1]
    for c, p in found:
        assert isinstance(p, click.Option), c
        assert (p.opts, p.default, p.help, p.metavar) == (
            first.opts, None, first.help, first.metavar), c


def test_wait_lock_default_keeps_each_commands_documented_busy_behaviour(
        tmp_path: Path, queue: Path) -> None:
    """Without --wait-lock a busy lock fails at once for core commands (as fspl) and is
    one info line with exit 0 for sync and import; with it, they wait and then fail."""
    from fspl_gateway.core.seqfile import SeqFile
    from fspl_gateway.gateway.runframe import take_run_lock

    with SeqFile(q.seqfile_path(str(queue)), create_lock=False):
        r = run_gw("queue-set-next", "-q", str(queue), "5")
        assert r.returncode == 1 and b"--wait-lock" in r.stderr
    stick = tmp_path / "stick"
    stick.mkdir()
    out = tmp_path / "out"
    q.queue_init(str(out), append_only=True)
    for name, data in job_set(1).items():
        (out / "jobs" / name).write_bytes(data)
    assert run_gw("export", "-q", str(out), "--to", str(stick)).returncode == 0
    remote = make_remote(tmp_path / "remote", job_set(1))
    fd = take_run_lock(str(queue), None, "test")
    assert fd is not None
    try:
        r = run_gw("import", "-q", str(queue), "--from", str(stick))
        assert r.returncode == 0, r.stderr
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and "import:" in lines[0] and "nothing done" in lines[0]
        r = run_gw("import", "-q", str(queue), "--from", str(stick), "--wait-lock", "0.2")
        assert r.returncode == 1 and r.stderr.startswith(b"Error: ")
        r2 = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(queue),
                     "--wait-lock", "0.2")
        assert r2.returncode == 1 and "still locked" in r2.stderr
    finally:
        os.close(fd)
    assert local_jobs(queue) == {}


def test_remote_options_declared_once() -> None:
    for name in ("config_file", "remote", "transport", "options"):
        found = params_named(name)
        by_cmd = {c: p for c, p in found}
        assert {"sync", "push", "workers"} <= set(by_cmd), name
        ref = by_cmd["sync"]
        for c in ("push", "workers"):
            p = by_cmd[c]
            assert (p.opts, p.help, p.metavar, p.multiple) == (
                ref.opts, ref.help, ref.metavar, ref.multiple), (name, c)
    assert params_named("remote")[0][1].required is True
    assert {c: p.required for c, p in params_named("remote")}["workers"] is False


def test_queuedir_is_q_everywhere() -> None:
    found = params_named("queuedir") + params_named("queuedirs")
    assert len(found) >= 15
    for c, p in found:
        assert isinstance(p, click.Option) and p.opts == ["-q", "--queuedir"], c


# -- 2. one transport resolution -------------------------------------------------------
def test_transports_are_created_in_one_place() -> None:
    """Only gateway/remotes.py turns a remote into a Transport."""
    pattern = re.compile(r"transports\.base import[^\n]*\bcreate\b|\bcreate\(\s*spec\.")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fspl_gateway").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == ["fspl_gateway/gateway/remotes.py"]


def test_open_remote_named_literal_and_spec(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "remote", {})
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[remotes.box]\ntransport = "local"\nlocation = "{remote}"\n')
    for t in (open_remote("box", config_file=str(cfg)),
              open_remote(str(remote), "local", config_file=str(cfg)),
              open_remote(RemoteSpec("local", str(remote)))):
        try:
            assert isinstance(t, LocalTransport) and t.root == str(remote)
        finally:
            t.close()
    with pytest.raises(ConfigError, match="--transport"):
        open_remote(str(remote), config_file=str(cfg))
    with pytest.raises(TypeError):
        open_remote(RemoteSpec("local", str(remote)), "local")


def test_workers_remote_by_config_name(tmp_path: Path) -> None:
    """workers -r NAME resolves through the same config file as sync."""
    remote = make_remote(tmp_path / "remote", {})
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[remotes.box]\ntransport = "local"\nlocation = "{remote}"\n')
    r = run_gw("workers", "--config", str(cfg), "-r", "box", "-q", str(tmp_path / "work"),
               "-n", "1", "true")
    assert r.returncode == 0, r.stderr
    r = run_gw("workers", "--config", str(cfg), "-r", "nobox", "-q", str(tmp_path / "work"),
               "-n", "1", "true")
    assert r.returncode == 2 and b"unknown remote 'nobox'" in r.stderr


# -- 3. exit code 3 has one shape ------------------------------------------------------
def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_partial_failure_is_the_only_exit_3_error() -> None:
    for mod in pkgutil.walk_packages(fspl_gateway.__path__, "fspl_gateway."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    list(commands())
    exit3 = {c for c in _all_subclasses(FsplError) if c.exit_code == EXIT_PARTIAL}
    assert exit3 == {PartialFailure}


def test_good_only_import_raises_partial_failure(tmp_path: Path) -> None:
    """import --good-only used to raise a plain FsplError with exit_code patched to 3."""
    out = tmp_path / "out"
    q.queue_init(str(out), append_only=True)
    for name, data in job_set(2).items():
        (out / "jobs" / name).write_bytes(data)
    stick = tmp_path / "stick"
    stick.mkdir()
    assert run_gw("export", "-q", str(out), "--to", str(stick)).returncode == 0
    victim = sorted((stick / "jobs").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"X")
    inq = tmp_path / "in"
    q.queue_init(str(inq))
    with pytest.raises(PartialFailure, match="1 rejected"):
        cli.main(["import", "-q", str(inq), "--from", str(stick), "--good-only"],
                 prog_name="fspl-gw", standalone_mode=False)
    assert len(local_jobs(inq)) == 1


# -- 4. no stand-alone sync entry ------------------------------------------------------
def test_sync_module_has_no_standalone_entry() -> None:
    import fspl_gateway.cli.sync as sync_mod

    assert not hasattr(sync_mod, "main") and not hasattr(sync_mod, "_standalone")
    r = subprocess.run([sys.executable, "-m", "fspl_gateway.cli.sync", "sync", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout == ""


# -- 5. value sets are the engine's enums ----------------------------------------------
def test_every_choice_is_an_engine_enum() -> None:
    seen = set()
    for c, cmd in commands():
        for p in cmd.params:
            if isinstance(p.type, click.Choice):
                assert isinstance(p.type, opt.EnumChoice), (c, p.name)
                enum = p.type.enum
                assert issubclass(enum, StrEnum)
                assert enum.__module__.startswith(("fspl_gateway.core.", "fspl_gateway.gateway."))
                values = [str(v) for v in p.type.choices]
                assert values and set(values) <= {m.value for m in enum}
                assert p.type.convert(values[0].upper(), p, None) is enum(values[0])
                seen.add(enum.__name__)
    assert seen == {"OnError", "OrderBy", "OutputTo", "AfterFetch", "AfterPush", "OutputMode"}


def test_internal_ordering_is_not_a_cli_value(queue: Path) -> None:
    r = run_gw("queue-process", "-q", str(queue), "--order-by", "seq-sorted", "true")
    assert r.returncode == 2


def test_after_fetch_and_after_push_are_case_insensitive(tmp_path: Path) -> None:
    """They were click.Choice(["delete", "keep"]), case-sensitive unlike fspl's values."""
    aoq = tmp_path / "aoq"
    q.queue_init(str(aoq), append_only=True)
    src = job_set(2)
    remote = make_remote(tmp_path / "remote", src)
    r = run_cli("sync", "-t", "local", "-r", str(remote), "-q", str(aoq), "--after-fetch", "KEEP")
    assert r.returncode == 0, r.stderr
    assert local_jobs(aoq) == src and remote_jobs(remote) == src
    remote2 = make_remote(tmp_path / "remote2", {})
    r = run_cli("push", "-t", "local", "-r", str(remote2), "-q", str(aoq), "--after-push", "Keep")
    assert r.returncode == 0, r.stderr
    assert remote_jobs(remote2) == src and local_jobs(aoq) == src


def test_pipelines_validate_with_the_engine_enums(tmp_path: Path) -> None:
    from fspl_gateway.core.process import OnError, OrderBy, OutputTo
    from fspl_gateway.gateway.journal import Direction
    from fspl_gateway.gateway.pull import AfterFetch
    from fspl_gateway.gateway.push import AfterPush

    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[remotes.r]
transport = "local"
location = "{tmp_path / 'remote'}"

[pipelines.out]
remote = "r"
queue = "outbox"
direction = "Push"
after = "KEEP"

[pipelines.in]
remote = "r"
queue = "inbox"
process = ["true"]
on_error = "Leave"
order_by = "TIMESTAMP"
output_to = "SaveBoth"
""")
    wc = pipelines.load(str(cfg))
    out, inp = wc.pipelines["out"], wc.pipelines["in"]
    assert out.direction is Direction.PUSH and out.after is AfterPush.KEEP
    assert inp.direction is Direction.PULL and inp.after is AfterFetch.DELETE
    assert (inp.on_error, inp.order_by, inp.output_to) == (
        OnError.LEAVE, OrderBy.TIMESTAMP, OutputTo.SAVEBOTH)
    cfg.write_text(cfg.read_text().replace('"TIMESTAMP"', '"seq-sorted"'))
    with pytest.raises(ConfigError, match=r"order_by must be one of sequence, timestamp"):
        pipelines.load(str(cfg))


# -- 6. shell completion ---------------------------------------------------------------
def complete(words: str, cword: int, *, raw: bool = False) -> list[str]:
    """What ``fspl-gw`` offers bash for word ``cword`` of ``words`` (``type,value`` lines
    when ``raw``)."""
    env = {**os.environ, "_FSPL_GW_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(cword), "XDG_CONFIG_HOME": "/nonexistent-fspl-gw-test"}
    r = subprocess.run(FSPL_GW, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    return lines if raw else [line.split(",", 1)[1] for line in lines]


def test_completion_of_commands_and_lazy_command_options() -> None:
    names = complete("fspl-gw ", 1)
    assert {"prepare", "queue-process", "sync", "push", "workers", "status"} <= set(names)
    assert complete("fspl-gw sy", 1) == ["sync"]
    assert "--after-fetch" in complete("fspl-gw sync --after", 2)
    assert complete("fspl-gw sync --after-fetch ", 3) == ["delete", "keep"]
    assert complete("fspl-gw queue-process --on-error ", 3) == ["delete", "leave", "retry"]
    assert {"local", "s3", "sftp"} <= set(complete("fspl-gw push -t ", 3))
    assert complete("fspl-gw -l d", 2) == ["debug"]
    assert complete("fspl-gw queue-ls -q ", 3, raw=True) == ["dir,"]  # the shell's dirs
    assert complete("fspl-gw prepare -s x -i ", 5, raw=True) == ["file,"]


def test_completion_of_configured_remote_names(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[remotes.site-b]\ntransport = "local"\nlocation = "/x"\n'
                   '[remotes.site-c]\ntransport = "local"\nlocation = "/y"\n')
    cfg.chmod(0o644)
    assert complete(f"fspl-gw sync --config {cfg} -r site", 5) == ["site-b", "site-c"]


def test_completion_scripts_for_each_shell() -> None:
    for shell, marker in (("bash", "complete -o nosort -F _fspl_gw_completion fspl-gw"),
                          ("zsh", "compdef _fspl_gw_completion fspl-gw"),
                          ("fish", "complete --no-files --command fspl-gw")):
        env = {**os.environ, "_FSPL_GW_COMPLETE": f"{shell}_source"}
        r = subprocess.run(FSPL_GW, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and marker in r.stdout, (shell, r.stdout)


def test_bash_completion_end_to_end() -> None:
    """The README's bash line, in a real bash: the script calls fspl-gw itself."""
    bindir = Path(sys.executable).parent
    if shutil.which("bash") is None or not (bindir / "fspl-gw").exists():
        pytest.skip("needs bash and the fspl-gw console script beside the interpreter")
    script = ('eval "$(_FSPL_GW_COMPLETE=bash_source fspl-gw)"\n'
              "COMP_WORDS=(fspl-gw workers --order-by ''); COMP_CWORD=3\n"
              '_fspl_gw_completion fspl-gw; echo "${COMPREPLY[@]}"\n')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.stdout.split() == ["sequence", "timestamp"], r.stderr


# -- 7. the man page -------------------------------------------------------------------
def test_committed_man_page_is_current() -> None:
    from fspl_gateway.cli.manpage import render

    page = (ROOT / "man" / "fspl-gw.1").read_text(encoding="utf-8")
    assert page == render(), "regenerate: python -m fspl_gateway.cli.manpage > man/fspl-gw.1"


def test_man_page_documents_every_command_option_and_exit_code() -> None:
    from fspl_gateway.cli.manpage import esc, render

    page = render()
    for name, cmd in commands():
        assert f'.SS "fspl\\-gw {esc(name)} ' in page, name
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert esc(p.opts[-1]) in page, (name, p.opts)
    for code, meaning in EXIT_CODES.items():
        assert f"\\fB{code}\\fR\n{esc(meaning)}" in page
    assert "fspl 1.2" in page and "\\fBfspl\\fR(1)" in page


def test_readme_exit_codes_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in readme, code


def test_man_page_is_installed_and_renders(tmp_path: Path) -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man1"] == ["man/fspl-gw.1"]
    if shutil.which("man") is None:
        pytest.skip("no man")
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(["man", "--warnings", "-l", str(ROOT / "man" / "fspl-gw.1")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "fspl-gw sync [OPTIONS]" in r.stdout and "-d, --decoder DECODECMD" in r.stdout
