"""Host keys, as OpenSSH checks them.

Known keys come from the user's known_hosts files (``~/.ssh/known_hosts`` or the SSH
config's ``UserKnownHostsFile``), ``/etc/ssh/ssh_known_hosts`` and the option
``known_hosts``; entries for a port other than 22 are ``[host]:port``.  An unknown host
is refused (HostKeyError with the key type and SHA256 fingerprint) unless
``accept_new_host_key`` is set, which records the key (in the last ``known_hosts`` file
given, else the first user file) like ``StrictHostKeyChecking=accept-new``.  A changed
key is always refused.  The key types we ask the server for put the known ones first, so
that a host with several keys offers the one we know.
"""

from __future__ import annotations

import base64
import hashlib
import os

import paramiko

from fspl_gateway.core.errors import HostKeyError
from fspl_gateway.core.log import get_logger

log = get_logger(__name__)

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"

Known = list[tuple[str, paramiko.HostKeys]]


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint (base64 without padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_label(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {
        "ssh-ed25519": "ED25519",
        "ssh-rsa": "RSA",
        "ssh-dss": "DSA",
    }.get(name, "ECDSA" if name.startswith("ecdsa") else name)


class HostKeyPolicy:
    """The known_hosts check of one host entry (``host`` or ``[host]:port``)."""

    def __init__(self, entry: str, user_files: list[str], extra_files: list[str],
                 accept_new: bool) -> None:
        self.entry = entry
        self.user_files = user_files
        self.extra_files = extra_files
        self.accept_new = accept_new

    def files(self) -> list[str]:
        out: list[str] = []
        for f in [*self.user_files, SYSTEM_KNOWN_HOSTS, *self.extra_files]:
            if f not in out:
                out.append(f)
        return out

    def load(self) -> Known:
        out = []
        for f in self.files():
            hk = paramiko.HostKeys()
            if os.path.exists(f):
                try:
                    hk.load(f)
                except (OSError, paramiko.SSHException) as e:
                    raise HostKeyError(f"cannot read known_hosts file {f}: {e}") from None
            out.append((f, hk))
        return out

    def record_file(self) -> str:
        return self.extra_files[-1] if self.extra_files else self.user_files[0]

    def check(self, key: paramiko.PKey, known: Known) -> None:
        """Accept ``key`` (the server's) or raise HostKeyError; record a new one when
        allowed."""
        entry = self.entry
        found: list[tuple[str, paramiko.PKey]] = []
        for f, hk in known:
            keys = hk.lookup(entry)
            if keys:
                for k in keys.values():
                    found.append((f, k))
        fp = fingerprint(key)
        label = key_label(key)
        if not found:
            if self.accept_new:
                self.record(key)
                log.warning("permanently added %s host key %s for %s to %s", label, fp, entry,
                            self.record_file())
                return
            raise HostKeyError(
                f"unknown SSH host {entry}: {label} key fingerprint is {fp}; verify it and add it "
                f"to {self.record_file()} (or set the sftp option accept_new_host_key)"
            )
        for _f, k in found:
            if k.get_name() == key.get_name() and k.asbytes() == key.asbytes():
                return
        f0, k0 = found[0]
        raise HostKeyError(
            f"REMOTE HOST IDENTIFICATION HAS CHANGED for {entry}: the server sent a {label} key "
            f"{fp}, but {f0} has a {key_label(k0)} key {fingerprint(k0)}; someone may be "
            f"intercepting the connection (or the host key was replaced); refusing to connect"
        )

    def make_record_dir(self) -> None:
        """Create the directory of the file new keys are recorded in (mode 0700)."""
        path = self.record_file()
        d = os.path.dirname(path)
        try:
            if d and not os.path.isdir(d):
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            raise HostKeyError(f"cannot record the host key in {path}: {e.strerror}") from None

    def record(self, key: paramiko.PKey) -> None:
        path = self.record_file()
        self.make_record_dir()
        try:
            line = f"{self.entry} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                if f.tell() > 0:
                    with open(path, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            f.write("\n")
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise HostKeyError(f"cannot record the host key in {path}: {e.strerror}") from None

    def preferred_key_types(self, known: Known, available: tuple[str, ...]) -> list[str]:
        """``available`` (the client's host key types) with the types known for this host
        first."""
        want: list[str] = []
        for _f, hk in known:
            keys = hk.lookup(self.entry)
            for t in (keys.keys() if keys else []):
                if t == "ssh-rsa":
                    want += [x for x in ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") if x in available]
                elif t in available:
                    want.append(t)
        out: list[str] = []
        for t in [*want, *available]:
            if t not in out:
                out.append(t)
        return out
