"""Conformance backends for the ``sftp`` transport, against the real OpenSSH ``sshd`` of
tests/fixtures/sshd.py: ``sftp`` on the OpenSSH data path (the system ``ssh``, the
default where there is one) and ``sftp_paramiko`` on paramiko's.

Each ``make()`` is a fresh directory (with an empty ``jobs/``) under pytest's tmp dir,
reached as ``user@127.0.0.1:PORT/<abs path>``.  sshd serves the local file system, so
``put``/``raw_names`` act on that directory directly.  ``HOME`` points at an empty
temporary directory and ``SSH_AUTH_SOCK`` is unset (no real ``~/.ssh``, no agent).

Big-file size: 256 MiB, not 1 GiB — paramiko moves ~100 MB/s on loopback (its crypto
and packet loop run in Python), so 1 GiB up and down would take ~20 s on its own;
256 MiB is well past the 64 MiB RSS bound the test checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspl_gateway.transports.base import Transport
from tests.fixtures.sshd import SSHD
from tests.transports.backends import Backend

BIG_SIZE = 256 << 20


def _jobs(t: Transport) -> str:
    return str(t.jobs)  # type: ignore[attr-defined]


def _put(t: Transport, name: str, data: bytes) -> None:
    with open(os.path.join(_jobs(t), name), "xb") as f:
        f.write(data)


def _raw_names(t: Transport) -> list[str]:
    return sorted(os.listdir(_jobs(t)))


@pytest.fixture
def backend_sftp(sshd: SSHD, tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    yield from _backend("openssh", sshd, tmp_path_factory, monkeypatch)


@pytest.fixture
def backend_sftp_paramiko(sshd: SSHD, tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    yield from _backend("paramiko", sshd, tmp_path_factory, monkeypatch)


def _backend(ssh: str, sshd: SSHD, tmp_path_factory: pytest.TempPathFactory,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    from fspl_gateway.transports.sftp import SFTPTransport

    home = tmp_path_factory.mktemp("sftp-home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    cfg = home / "empty_ssh_config"
    cfg.write_text("")
    made: list[Path] = []

    def make() -> Transport:
        root = tmp_path_factory.mktemp("sftp-remote")
        (root / "jobs").mkdir()
        made.append(root)
        opts = {"identity_file": sshd.identity_file, "known_hosts": sshd.known_hosts,
                "ssh_config": str(cfg), "timeout": 20, "ssh": ssh}
        return SFTPTransport(f"{sshd.user}@{sshd.host}:{sshd.port}{root}", opts)

    yield Backend(name="sftp" if ssh == "openssh" else "sftp_paramiko", make=make, put=_put, raw_names=_raw_names, big_size=BIG_SIZE,
                  extra={"delete_missing_raises": True, "jobs_dir": _jobs,
                         "fifo_hangs_server": True})
    for root in made:  # do not leave big files in pytest's kept tmp dirs
        shutil.rmtree(root, ignore_errors=True)
