"""Where an SFTP remote is: the location string, and the SSH config applied to it.

``[user@]host[:port]/path``, ``sftp://[user@]host[:port]/path`` or scp-style
``host:relpath``; ``host`` may be an alias of the SSH config or an IPv6 address in
brackets.  The path after the host is absolute (``host/srv/q`` is ``/srv/q``);
``host/~/q`` and ``host:q`` are relative to the login directory, ``host/~`` is the login
directory itself.  The SSH config (``~/.ssh/config``, or another file, or none) gives
``HostName``, ``User``, ``Port``, ``IdentityFile`` and ``UserKnownHostsFile``; values in
the location win over it.  A password in the location (``user:PASSWORD@host``) is refused
(ConfigError, the password masked): it would end up in every description of the remote.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import paramiko

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.redact import add_secret, redact


@dataclass(frozen=True)
class Location:
    """A parsed location (before the SSH config is applied)."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None


def parse_location(location: str) -> Location:
    """Parse ``[user@]host[:port]/path``, ``sftp://…`` or scp-style ``host:relpath``.

    The returned ``path`` is what is sent to the server: absolute, or relative to the
    login directory (``~/x`` → ``x``; ``~`` → ``.``)."""
    loc = location.strip()
    if loc.startswith("sftp://"):
        loc = loc[len("sftp://"):]
    elif "://" in loc:
        raise ConfigError(f"sftp location {location!r}: only sftp:// URLs are understood")
    m = re.match(r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]/]+\]|[^:/\s\[\]@]+)(?P<tail>.*)$", loc)
    if not m or not m.group("host"):
        raise ConfigError(
            f"bad sftp location {location!r}: expected [user@]host[:port]/path"
        )
    user, host, tail = m.group("user"), m.group("host"), m.group("tail")
    if user is not None and ":" in user:
        add_secret(user.partition(":")[2])  # masked in every output from now on
        raise ConfigError(
            f"sftp location {redact(location)!r}: a password in the location is not "
            "accepted (it would show in logs, the journal and status); log in with a key: "
            "the identity_file option in the config file, or ssh-agent")
    if host.startswith("["):
        host = host[1:-1]
    port: int | None = None
    path: str
    if tail.startswith(":"):
        pm = re.match(r"^:(\d+)(/.*)?$", tail)
        if pm:
            port = int(pm.group(1))
            if not 0 < port < 65536:
                raise ConfigError(f"bad sftp location {location!r}: port {port} out of range")
            path = pm.group(2) or ""
        else:
            # scp style: host:path (relative to the login directory unless absolute)
            path = tail[1:]
            if not path.startswith("/") and not path.startswith("~"):
                path = "~/" + path
    else:
        path = tail
    if not path:
        raise ConfigError(
            f"sftp location {location!r} names no remote queue directory "
            "(write host/abs/path, host/~/rel/path or host:rel/path)"
        )
    # "/~/x" or "~/x" → relative to the login directory
    if path.startswith("/~"):
        path = path[1:]
    if path == "~":
        path = "."
    elif path.startswith("~/"):
        path = path[2:] or "."
    elif path.startswith("~"):
        raise ConfigError(f"sftp location {location!r}: ~user paths are not supported")
    path = posixpath.normpath(path) if path not in ("", ".") else "."
    if "\0" in path:
        raise ConfigError(f"bad sftp location {location!r}")
    return Location(host=host, path=path, user=user, port=port)


def ssh_config(path_opt: str | None, host: str) -> dict[str, Any]:
    """The SSH config's settings for ``host`` (lower-case keys, as paramiko gives them):
    from ``path_opt``, else ``~/.ssh/config`` if it exists; ``none`` reads nothing."""
    if path_opt is not None and str(path_opt).strip().lower() in ("none", ""):
        return {}
    path = os.path.expanduser(str(path_opt) if path_opt else "~/.ssh/config")
    if not os.path.exists(path):
        if path_opt:
            raise ConfigError(f"ssh config file {path} does not exist")
        return {}
    try:
        conf = paramiko.SSHConfig.from_path(path)
        return dict(conf.lookup(host))
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise ConfigError(f"cannot read ssh config {path}: {e}") from None


def host_entry(host: str, port: int) -> str:
    """The host as known_hosts names it: ``host``, or ``[host]:port`` for another port."""
    return host if port == 22 else f"[{host}]:{port}"


def local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ConfigError("cannot tell the local user name; put user@ in the sftp location") from None
