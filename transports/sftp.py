"""SFTP transport (paramiko): a remote queue directory on any SSH server.

Location
    ``[user@]host[:port]/path`` or ``sftp://[user@]host[:port]/path``; ``host`` may be
    an alias from the SSH config, an IPv6 address in brackets.  The path after the
    host is **absolute**: ``host/srv/q`` is ``/srv/q``.  To name a directory relative
    to the login (home) directory write ``host/~/q`` (or scp-style ``host:q``); ``host/~``
    is the login directory itself.  Jobs live in ``<path>/jobs``.

SSH config
    ``~/.ssh/config`` (or option ``ssh_config``; ``none`` disables it) is read through
    paramiko's ``SSHConfig``: ``HostName``, ``User``, ``Port``, ``IdentityFile`` and
    ``UserKnownHostsFile``.  Values in the location win over the config.

Authentication
    public keys only: identity files (option ``identity_file``, else the config's
    ``IdentityFile``, else ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``), then the
    ssh-agent (``SSH_AUTH_SOCK``; option ``allow_agent``).  A passphrase for encrypted
    keys comes from the environment variable named by ``passphrase_env`` (default
    ``FSPL_GW_SSH_PASSPHRASE``); it is never logged.

Host keys (like OpenSSH)
    known keys come from ``~/.ssh/known_hosts`` (or the config's ``UserKnownHostsFile``),
    ``/etc/ssh/ssh_known_hosts`` and the option ``known_hosts``.  Entries for a port
    other than 22 are ``[host]:port``.  An unknown host is refused (HostKeyError with
    the key type and SHA256 fingerprint) unless ``accept_new_host_key`` is true, which
    records the key (in the ``known_hosts`` file if given, else ``~/.ssh/known_hosts``)
    like ``StrictHostKeyChecking=accept-new``.  A changed key is always refused.

Writes
    ``write_new`` uploads to a temporary name in ``jobs/`` (``.fspl-gw-tmp-…``, never
    ``fspl-*.fspl``), calls ``fsync@openssh.com`` when the server offers it, closes, and
    renames with the *plain* SFTP rename, which OpenSSH implements as link()+unlink()
    and which therefore fails when the target exists (the no-clobber guarantee; the
    overwriting ``posix-rename@openssh.com`` is never used).  Then the directory is
    fsynced (best effort: opened as a file, which OpenSSH's server allows, + fsync).

Temporaries
    :meth:`SFTPTransport.cleanup_temporaries` removes our own leftovers: a temporary is
    removed if its mtime is older than ``tmp_max_age`` seconds (default 600: a live
    upload touches it continuously), or, at once, if it was written from this machine
    (same boot, PID namespace and host name) by a process that no longer exists, or by
    this very process but is not being written now.

Connections
    One SSH connection for the life of the object, carrying a pool of up to
    ``connections`` SFTP channels (default 1, or the caller's concurrency up to
    :data:`MAX_AUTO_CHANNELS` when it calls ``set_concurrency`` and the option is not
    set; each call takes one channel, so the transport is thread-safe); :meth:`open` streams use their own extra channel.  A
    dropped connection raises TransientError for the call in progress; the next call
    reconnects, trying ``connect_retries`` times with exponential backoff before a
    TransientError.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import os
import posixpath
import re
import secrets
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_client import SFTPClient
from paramiko.sftp_client import int64 as _INT64  # the marker type for 64-bit fields

from fspl_gateway.core.errors import (
    AuthError,
    ConfigError,
    HostKeyError,
    IntegrityError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.base import Capabilities, RemoteEntry, Transport
from fspl_gateway.transports.local import pid_alive
from fspl_gateway.transports.options import Option, OptionSchema, OptionType

log = get_logger(__name__)

DEFAULT_PASSPHRASE_ENV = "FSPL_GW_SSH_PASSPHRASE"
#: SFTP request size when the server does not announce ``limits@openssh.com``.
DEFAULT_CHUNK = 32768
#: Upper bound of one read/write request even if the server allows more.
MAX_CHUNK = 256 * 1024
#: Requests kept in flight per transfer (pipelining).
PIPELINE_DEPTH = 16
#: Channels opened for ``set_concurrency`` when the option ``connections`` is not set
#: (OpenSSH allows 10 sessions per connection by default: MaxSessions).
MAX_AUTO_CHANNELS = 8
#: REMOVE requests kept in flight by ``delete_many``.
DELETE_PIPELINE = 64
_SFTP_VERSION = 3


def _int64(n: int) -> Any:
    return _INT64(n)


# -- identity of this writer (for temporary names) -----------------------------------
def _host_tag() -> str:
    parts = [socket.gethostname()]
    for p in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(p) as f:
                parts.append(f.read().strip())
        except OSError:
            pass
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


_HOST_TAG = _host_tag()
#: Random per process: tells our own temporaries from those of a reused PID.
_PROC_TOKEN = secrets.token_hex(4)
_INFLIGHT: set[str] = set()
_INFLIGHT_LOCK = threading.Lock()
_TMP_RE = re.compile(
    re.escape(TMP_PREFIX) + r"sftp-(?P<host>[0-9a-f]{10})-(?P<pid>\d+)-(?P<proc>[0-9a-f]{8})-"
)


def _tmp_name(final: str) -> str:
    name = f"{TMP_PREFIX}sftp-{_HOST_TAG}-{os.getpid()}-{_PROC_TOKEN}-{secrets.token_hex(4)}-{final}"
    b = name.encode("utf-8", "surrogateescape")
    if len(b) > 255:
        name = b[:255].decode("utf-8", "ignore")
    return name


# -- options and location -------------------------------------------------------------
OPTIONS = OptionSchema(
    Option("ssh_config", OptionType.PATH, default_doc="`~/.ssh/config`",
           help="The SSH config file to read, or `none`."),
    Option("identity_file", OptionType.PATH, multiple=True,
           default_doc="the config's IdentityFile, else `~/.ssh/id_{ed25519,ecdsa,rsa}`",
           help="Private key file(s), comma-separated."),
    Option("passphrase_env", OptionType.STR, default=DEFAULT_PASSPHRASE_ENV,
           help="The environment variable holding the key passphrase (never logged)."),
    Option("allow_agent", OptionType.BOOL, default=True, help="Try ssh-agent keys too."),
    Option("known_hosts", OptionType.PATH, multiple=True,
           help="Extra known_hosts file(s); a new key is recorded in the last one."),
    Option("accept_new_host_key", OptionType.BOOL, default=False,
           help="Record an unknown host's key (like `StrictHostKeyChecking=accept-new`); a "
                "changed key is always refused."),
    Option("connections", OptionType.INT, minimum=1, unit="channels",
           default_doc=f"`1`, up to {MAX_AUTO_CHANNELS} for `--concurrency`",
           help="SFTP channels on the one SSH connection."),
    Option("timeout", OptionType.DURATION, default=30.0, minimum=0.1,
           help="Connect, handshake and per-request timeout."),
    Option("connect_retries", OptionType.INT, default=3, minimum=1, unit="attempts",
           help="Connection attempts before giving up."),
    Option("retry_backoff", OptionType.DURATION, default=0.5,
           help="First wait between connection attempts (doubling)."),
    Option("tmp_max_age", OptionType.DURATION, default=600.0,
           help="Remove a leftover temporary untouched for this long."),
    Option("fsync", OptionType.BOOL, default=True,
           help="Make uploads durable with `fsync@openssh.com` where offered."),
)


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


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint (base64 without padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _key_label(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {
        "ssh-ed25519": "ED25519",
        "ssh-rsa": "RSA",
        "ssh-dss": "DSA",
    }.get(name, "ECDSA" if name.startswith("ecdsa") else name)


# -- SFTP client that keeps the server's extensions ---------------------------------
class _Client(SFTPClient):
    """paramiko's SFTPClient, but remembering the extensions of the server's VERSION
    packet (paramiko discards them) so we can use ``fsync@openssh.com`` and
    ``limits@openssh.com``."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        m = Message()
        m.add_int(_SFTP_VERSION)
        self._send_packet(1, m)  # CMD_INIT
        t, data = self._read_packet()
        if t != 2:  # CMD_VERSION
            raise SFTPError("Incompatible sftp protocol")
        msg = Message(data)
        version = msg.get_int()
        self.extensions = {}
        while msg.get_remainder():
            try:
                k = msg.get_string().decode("utf-8", "replace")
                self.extensions[k] = msg.get_string()
            except Exception:  # noqa: BLE001 - malformed extension list: ignore the rest
                break
        return int(version)


class _Channel:
    """One SFTP channel on the shared SSH connection."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        chan = conn.transport.open_session(timeout=conn.timeout)
        chan.settimeout(conn.timeout)
        chan.invoke_subsystem("sftp")
        self.sftp = _Client(chan)
        ext = self.sftp.extensions
        self.has_fsync = "fsync@openssh.com" in ext
        self.read_chunk = self.write_chunk = DEFAULT_CHUNK
        if "limits@openssh.com" in ext:
            try:
                t, msg = self.sftp._request(CMD_EXTENDED, "limits@openssh.com")
                _pkt, rd, wr = msg.get_int64(), msg.get_int64(), msg.get_int64()
                if rd:
                    self.read_chunk = max(1024, min(MAX_CHUNK, rd))
                if wr:
                    self.write_chunk = max(1024, min(MAX_CHUNK, wr))
            except (OSError, SFTPError):
                pass

    def alive(self) -> bool:
        return (self.conn.transport.is_active() and not self.sftp.sock.closed
                and not self.sftp.sock.eof_received)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()


@dataclass
class _Connection:
    transport: paramiko.Transport
    timeout: float

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()


# -- error mapping --------------------------------------------------------------------
def _is_conn_error(e: BaseException) -> bool:
    if isinstance(e, (paramiko.SSHException, EOFError, TimeoutError, ConnectionError)):
        return True
    if isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF,
                                              errno.ENOTCONN, errno.ETIMEDOUT):
        return True
    return False


# -- the transport --------------------------------------------------------------------
class SFTPTransport(Transport):
    name = "sftp"
    capabilities = Capabilities(can_write=True, can_delete=True, atomic_noclobber=True)
    options_schema = OPTIONS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        o = self.settings
        loc = parse_location(location)
        cfg = self._ssh_config(o["ssh_config"], loc.host)
        self.host: str = str(cfg.get("hostname") or loc.host)
        self.user: str = loc.user or str(cfg.get("user") or "") or _local_user()
        try:
            self.port: int = loc.port or int(cfg.get("port") or 22)
        except ValueError:
            raise ConfigError(f"ssh config: bad Port for {loc.host!r}") from None
        self.path = loc.path
        self.jobs = posixpath.join(self.path, "jobs") if self.path != "." else "jobs"
        self.identity_files = (list(o["identity_file"] or ())
                               or [os.path.expanduser(p) for p in cfg.get("identityfile", [])])
        self._explicit_ids = bool(self.identity_files)
        self.passphrase_env: str = o["passphrase_env"]
        self.extra_known_hosts: list[str] = list(o["known_hosts"] or ())
        user_known = cfg.get("userknownhostsfile")
        if isinstance(user_known, str):
            user_known = user_known.split()
        self.user_known_hosts = ([os.path.expanduser(p) for p in user_known] if user_known
                                 else [os.path.expanduser("~/.ssh/known_hosts")])
        self.accept_new: bool = o["accept_new_host_key"]
        self.allow_agent: bool = o["allow_agent"]
        self.max_channels: int = o["connections"] or 1
        self.timeout: float = o["timeout"]
        self.connect_retries: int = o["connect_retries"]
        self.retry_backoff: float = o["retry_backoff"]
        self.tmp_max_age: float = o["tmp_max_age"]
        self.use_fsync: bool = o["fsync"]
        self._lock = threading.Condition()
        self._connect_lock = threading.Lock()
        self._conn: _Connection | None = None
        self._idle: list[_Channel] = []
        self._nchan = 0
        self._closed = False
        #: Counters (for tests and metrics): connects, fsyncs, dir_fsyncs.
        self.stats: dict[str, int] = {"connects": 0, "fsyncs": 0, "dir_fsyncs": 0}

    # -- configuration -------------------------------------------------------------
    @staticmethod
    def _ssh_config(path_opt: Any, host: str) -> dict[str, Any]:
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

    def describe(self) -> str:
        port = "" if self.port == 22 else f":{self.port}"
        path = self.path if self.path.startswith("/") else "/~/" + self.path
        return f"sftp://{self.user}@{self.host}{port}{path}"

    @property
    def _host_entry(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    # -- host keys -----------------------------------------------------------------
    def _known_files(self) -> list[str]:
        files = [*self.user_known_hosts, "/etc/ssh/ssh_known_hosts", *self.extra_known_hosts]
        out: list[str] = []
        for f in files:
            if f not in out:
                out.append(f)
        return out

    def _load_known(self) -> list[tuple[str, paramiko.HostKeys]]:
        out = []
        for f in self._known_files():
            hk = paramiko.HostKeys()
            if os.path.exists(f):
                try:
                    hk.load(f)
                except (OSError, paramiko.SSHException) as e:
                    raise HostKeyError(f"cannot read known_hosts file {f}: {e}") from None
            out.append((f, hk))
        return out

    def _record_file(self) -> str:
        return self.extra_known_hosts[-1] if self.extra_known_hosts else self.user_known_hosts[0]

    def _check_host_key(self, key: paramiko.PKey,
                        known: list[tuple[str, paramiko.HostKeys]]) -> None:
        entry = self._host_entry
        found: list[tuple[str, paramiko.PKey]] = []
        for f, hk in known:
            keys = hk.lookup(entry)
            if keys:
                for k in keys.values():
                    found.append((f, k))
        fp = fingerprint(key)
        label = _key_label(key)
        if not found:
            if self.accept_new:
                self._record_host_key(key)
                log.warning("permanently added %s host key %s for %s to %s", label, fp, entry,
                            self._record_file())
                return
            raise HostKeyError(
                f"unknown SSH host {entry}: {label} key fingerprint is {fp}; verify it and add it "
                f"to {self._record_file()} (or set the sftp option accept_new_host_key)"
            )
        for _f, k in found:
            if k.get_name() == key.get_name() and k.asbytes() == key.asbytes():
                return
        f0, k0 = found[0]
        raise HostKeyError(
            f"REMOTE HOST IDENTIFICATION HAS CHANGED for {entry}: the server sent a {label} key "
            f"{fp}, but {f0} has a {_key_label(k0)} key {fingerprint(k0)}; someone may be "
            f"intercepting the connection (or the host key was replaced); refusing to connect"
        )

    def _record_host_key(self, key: paramiko.PKey) -> None:
        path = self._record_file()
        d = os.path.dirname(path)
        try:
            if d and not os.path.isdir(d):
                os.makedirs(d, mode=0o700, exist_ok=True)
            line = f"{self._host_entry} {key.get_name()} {key.get_base64()}\n"
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

    @staticmethod
    def _preferred_key_types(known: list[tuple[str, paramiko.HostKeys]], entry: str,
                             available: tuple[str, ...]) -> list[str]:
        want: list[str] = []
        for _f, hk in known:
            keys = hk.lookup(entry)
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

    # -- authentication ------------------------------------------------------------
    def _identity_keys(self) -> list[tuple[str, paramiko.PKey]]:
        files = self.identity_files
        if not files:
            files = [os.path.expanduser(f"~/.ssh/id_{k}") for k in ("ed25519", "ecdsa", "rsa")]
        pw = os.environ.get(self.passphrase_env) or None
        passphrase = pw.encode() if pw else None  # bytes: paramiko 5 fails on str
        keys: list[tuple[str, paramiko.PKey]] = []
        for path in files:
            if not os.path.exists(path):
                if self._explicit_ids:
                    raise AuthError(f"identity file {path} does not exist")
                continue
            try:
                keys.append((path, paramiko.PKey.from_path(path, passphrase)))
            except paramiko.PasswordRequiredException:
                raise AuthError(
                    f"identity file {path} is encrypted: put its passphrase in the environment "
                    f"variable {self.passphrase_env}"
                ) from None
            except (paramiko.SSHException, ValueError, TypeError) as e:
                # paramiko ≥ 5 reports a missing passphrase as TypeError (from cryptography)
                if passphrase:
                    hint = f"wrong passphrase in {self.passphrase_env}, or not a private key"
                else:
                    hint = (f"encrypted (put its passphrase in the environment variable "
                            f"{self.passphrase_env}) or not a private key")
                raise AuthError(f"cannot load identity file {path}: {hint} "
                                f"({type(e).__name__})") from None
            except OSError as e:
                raise AuthError(f"cannot read identity file {path}: {e.strerror}") from None
        return keys

    def _try_key(self, t: paramiko.Transport, key: paramiko.PKey) -> bool:
        """Offer one public key; True once authenticated."""
        try:
            t.auth_publickey(self.user, key)
            return bool(t.is_authenticated())
        except paramiko.BadAuthenticationType as e:
            raise AuthError(f"{self._host_entry} does not accept public keys for "
                            f"{self.user} (it allows: {', '.join(e.allowed_types)})") from None
        except paramiko.AuthenticationException:
            return False

    def _authenticate(self, t: paramiko.Transport) -> None:
        tried: list[str] = []
        for path, key in self._identity_keys():
            tried.append(path)
            if self._try_key(t, key):
                return
        if self.allow_agent:
            agent = paramiko.Agent()
            try:
                for key in agent.get_keys():
                    tried.append(f"agent key {fingerprint(key)}")
                    if self._try_key(t, key):
                        return
            finally:
                agent.close()
        what = ", ".join(tried) if tried else "no identity file and no ssh-agent key"
        raise AuthError(f"SSH authentication as {self.user}@{self._host_entry} failed "
                        f"(tried: {what})")

    # -- connection ----------------------------------------------------------------
    def _connect_once(self) -> _Connection:
        known = self._load_known()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.gaierror as e:
            raise TransientError(f"cannot resolve SSH host {self.host}: {e.strerror}") from None
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise TransientError(f"cannot connect to {self.host} port {self.port}: {why}") from None
        t = paramiko.Transport(sock)
        ok = False
        try:
            t.banner_timeout = self.timeout
            t.auth_timeout = self.timeout
            opts = t.get_security_options()
            opts.key_types = self._preferred_key_types(known, self._host_entry,
                                                       tuple(opts.key_types))
            try:
                t.start_client(timeout=self.timeout)
            except (paramiko.SSHException, EOFError, OSError) as e:
                raise TransientError(f"SSH handshake with {self._host_entry} failed: "
                                     f"{e or type(e).__name__}") from None
            key = t.get_remote_server_key()
            self._check_host_key(key, known)
            try:
                self._authenticate(t)
            except paramiko.SSHException as e:
                if not t.is_active():
                    raise TransientError(f"connection to {self._host_entry} dropped during "
                                         f"authentication: {e}") from None
                raise AuthError(f"SSH authentication with {self._host_entry} failed: "
                                f"{type(e).__name__}") from None
            t.set_keepalive(30)
            ok = True
            self.stats["connects"] += 1
            return _Connection(transport=t, timeout=self.timeout)
        finally:
            if not ok:
                t.close()

    def _connection(self) -> _Connection:
        """The live SSH connection, (re)connecting with bounded retries and backoff."""
        with self._connect_lock:
            c = self._conn
            if c is not None and c.transport.is_active():
                return c
            if c is not None:
                c.close()
                self._conn = None
            delay = self.retry_backoff
            for attempt in range(1, self.connect_retries + 1):
                try:
                    self._conn = self._connect_once()
                    return self._conn
                except TransientError as e:
                    if attempt == self.connect_retries:
                        raise TransientError(f"{e} (after {attempt} attempts)") from None
                    log.info("sftp: %s; retrying in %.1fs", e, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 30)
            raise AssertionError("unreachable")

    def _new_channel(self) -> _Channel:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return _Channel(conn)
            except (paramiko.SSHException, EOFError, OSError) as e:
                if isinstance(e, paramiko.ChannelException):
                    # the server refused a channel (e.g. MaxSessions): the link is fine
                    raise TransientError(f"{self._host_entry} refused an SFTP channel: {e} "
                                         "(lower the sftp option connections?)") from None
                # the connection may be dead before paramiko's reader thread noticed:
                # drop it and try once more on a fresh one
                with self._connect_lock:
                    if self._conn is conn:
                        self._conn = None
                conn.close()
                if attempt == 2:
                    raise TransientError(f"cannot open an SFTP channel on {self._host_entry}: "
                                         f"{e or type(e).__name__}") from None
        raise AssertionError("unreachable")

    def _acquire(self) -> _Channel:
        with self._lock:
            if self._closed:
                raise TransportError(f"{self.describe()}: transport is closed")
            while True:
                while self._idle:
                    ch = self._idle.pop()
                    if ch.alive() and ch.conn is self._conn:
                        return ch
                    ch.close()
                    self._nchan -= 1
                if self._nchan < self.max_channels:
                    self._nchan += 1
                    break
                self._lock.wait()
        try:
            return self._new_channel()
        except BaseException:
            with self._lock:
                self._nchan -= 1
                self._lock.notify()
            raise

    def _release(self, ch: _Channel, broken: bool) -> None:
        with self._lock:
            if broken or self._closed or not ch.alive():
                ch.close()
                self._nchan -= 1
            else:
                self._idle.append(ch)
            self._lock.notify()

    @contextlib.contextmanager
    def _use(self) -> Iterator[_Channel]:
        ch = self._acquire()
        broken = True
        try:
            yield ch
            broken = False
        except (RemoteNotFoundError, RemoteExistsError):
            broken = False
            raise
        except TransportError as e:
            broken = e.transient or not ch.alive()
            raise
        finally:
            self._release(ch, broken)

    @contextlib.contextmanager
    def _remote(self, ch: _Channel, path: str, what: str) -> Iterator[None]:
        """Map exceptions of remote calls to our errors."""
        try:
            yield
        except TransportError:
            raise
        except (TimeoutError, EOFError, paramiko.SSHException, ConnectionError) as e:
            self._drop_if_dead(ch)
            raise TransientError(f"{what} {path} on {self._host_entry}: connection lost "
                                 f"({e or type(e).__name__})") from None
        except SFTPError as e:
            raise TransportError(f"{what} {path} on {self._host_entry}: {e}") from None
        except OSError as e:
            if _is_conn_error(e) or not ch.alive():
                self._drop_if_dead(ch)
                raise TransientError(f"{what} {path} on {self._host_entry}: connection lost "
                                     f"({e.strerror or e})") from None
            if e.errno == errno.ENOENT:
                raise RemoteNotFoundError(f"{what} {path} on {self._host_entry}: "
                                          "no such file or directory") from None
            if e.errno == errno.EACCES:
                raise TransportError(f"{what} {path} on {self._host_entry}: "
                                     "permission denied") from None
            msg = e.strerror or (e.args[0] if e.args else type(e).__name__)
            raise TransportError(f"{what} {path} on {self._host_entry}: {msg}") from None

    def _drop_if_dead(self, ch: _Channel) -> None:
        if not ch.conn.transport.is_active():
            with self._connect_lock:
                if self._conn is ch.conn:
                    self._conn = None
            ch.conn.close()

    def _path(self, name: str) -> str:
        return posixpath.join(self.jobs, name)

    # -- low-level pipelined operations --------------------------------------------
    @staticmethod
    def _open_handle(ch: _Channel, path: str, flags: int) -> bytes:
        t, msg = ch.sftp._request(CMD_OPEN, path, flags, SFTPAttributes())
        if t != CMD_HANDLE:
            raise SFTPError("expected a handle")
        return bytes(msg.get_binary())

    @staticmethod
    def _close_handle(ch: _Channel, handle: bytes) -> None:
        ch.sftp._request(CMD_CLOSE, handle)

    @staticmethod
    def _drain(ch: _Channel, outstanding: deque[Any]) -> None:
        while outstanding:
            item = outstanding.popleft()
            num = item[0] if isinstance(item, tuple) else item
            with contextlib.suppress(EOFError, OSError, SFTPError):
                ch.sftp._read_response(num)

    def _read_chunks(self, ch: _Channel, path: str, handle: bytes,
                     size_hint: int | None) -> Generator[bytes, None, None]:
        """Yield the file's bytes in order, keeping PIPELINE_DEPTH reads in flight.

        OpenSSH answers requests in order, so responses are awaited FIFO.  At most one
        request is sent past ``size_hint`` (to see EOF); if it returns data the file
        grew, and reading continues to the real end."""
        sftp = ch.sftp
        chunk = ch.read_chunk
        outstanding: deque[tuple[int, int, int]] = deque()
        next_off = 0
        probe_sent = False
        try:
            while True:
                while len(outstanding) < PIPELINE_DEPTH:
                    if size_hint is not None and next_off >= size_hint:
                        if probe_sent:
                            break
                        probe_sent = True
                    n = chunk
                    if size_hint is not None and next_off < size_hint:
                        n = min(chunk, size_hint - next_off)
                    with self._remote(ch, path, "read"):
                        num = sftp._async_request(type(None), CMD_READ, handle,
                                                  _int64(next_off), n)
                    outstanding.append((num, next_off, n))
                    next_off += n
                if not outstanding:
                    return
                num, off, n = outstanding.popleft()
                with self._remote(ch, path, "read"):
                    try:
                        t, msg = sftp._read_response(num)
                    except EOFError:  # the SFTP EOF status (a dropped link is SSHException)
                        self._drain(ch, outstanding)
                        return
                    if t != CMD_DATA:
                        raise SFTPError("expected data")
                    data = msg.get_string()
                if not data:
                    continue
                if off >= (size_hint if size_hint is not None else off + 1):
                    size_hint = None  # the file is longer than announced: read to EOF
                yield data
                if len(data) < n:
                    # short read: discard what is in flight and continue after it
                    with self._remote(ch, path, "read"):
                        self._drain(ch, outstanding)
                    next_off = off + len(data)
                    probe_sent = False
        finally:
            if outstanding:
                # the consumer stopped early or failed: leave the channel in sync
                with contextlib.suppress(Exception):
                    self._drain(ch, outstanding)

    def _listdir(self, ch: _Channel) -> list[tuple[str, SFTPAttributes]]:
        """(name, lstat attributes) of every entry of ``jobs/`` (names decoded as UTF-8
        with surrogateescape: paramiko's own listdir fails on other bytes)."""
        out: list[tuple[str, SFTPAttributes]] = []
        with self._remote(ch, self.jobs, "list"):
            sftp = ch.sftp
            t, msg = sftp._request(CMD_OPENDIR, self.jobs)
            if t != CMD_HANDLE:
                raise SFTPError("expected a handle")
            handle = msg.get_binary()
            try:
                while True:
                    try:
                        t, msg = sftp._request(CMD_READDIR, handle)
                    except EOFError:
                        break
                    if t != CMD_NAME:
                        raise SFTPError("expected a name list")
                    for _ in range(msg.get_int()):
                        raw = msg.get_string()
                        msg.get_string()  # longname
                        attr = SFTPAttributes._from_msg(msg)
                        name = raw.decode("utf-8", "surrogateescape")
                        if name not in (".", ".."):
                            out.append((name, attr))
            finally:
                with contextlib.suppress(EOFError, OSError, SFTPError):
                    sftp._request(CMD_CLOSE, handle)
        return out

    # -- interface -----------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        entries: list[RemoteEntry] = []
        with self._use() as ch:
            for name, attr in self._listdir(ch):
                # regular files only: directories, symlinks (never followed), fifos … are
                # not jobs
                if attr.st_mode is None or not stat.S_ISREG(attr.st_mode):
                    continue
                entries.append(RemoteEntry(name=name, size=attr.st_size,
                                           mtime=float(attr.st_mtime) if attr.st_mtime else None))
        return iter(entries)

    def open(self, name: str) -> BinaryIO:
        self.check_name(name)
        path = self._path(name)
        # a stream holds its own channel (outside the pool) so that a caller may use
        # the transport while it reads
        try:
            ch = self._new_channel()
        except TransportError:
            raise
        try:
            with self._remote(ch, path, "open"):
                handle = self._open_handle(ch, path, SFTP_FLAG_READ)
        except BaseException:
            ch.close()
            raise
        reader = _Reader(self, ch, path, handle)
        return io.BufferedReader(reader, buffer_size=1 << 20)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        self.check_name(name)
        path = self._path(name)
        n = 0
        with self._use() as ch:
            with self._remote(ch, path, "open"):
                handle = self._open_handle(ch, path, SFTP_FLAG_READ)
            chunks: Iterator[bytes] | None = None
            try:
                expected = entry.size if entry is not None else None
                if expected is None:
                    with self._remote(ch, path, "stat"):
                        t, msg = ch.sftp._request(CMD_FSTAT, handle)
                        expected = SFTPAttributes._from_msg(msg).st_size
                chunks = self._read_chunks(ch, path, handle, expected)
                for data in chunks:
                    dst.write(data)  # local errors propagate unchanged
                    n += len(data)
            finally:
                if chunks is not None:
                    chunks.close()  # type: ignore[attr-defined]
                with contextlib.suppress(Exception), self._remote(ch, path, "close"):
                    self._close_handle(ch, handle)
        if entry is not None and entry.size is not None and entry.size != n:
            raise IntegrityError(f"{path} on {self._host_entry}: read {n} bytes, "
                                 f"the listing said {entry.size}")
        return n

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.require("can_write")
        self.check_name(name)
        final = self._path(name)
        tmp = self._path(_tmp_name(name))
        with _INFLIGHT_LOCK:
            _INFLIGHT.add(posixpath.basename(tmp))
        try:
            with self._use() as ch:
                return self._write_new(ch, name, final, tmp, src, size)
        finally:
            with _INFLIGHT_LOCK:
                _INFLIGHT.discard(posixpath.basename(tmp))

    def _write_new(self, ch: _Channel, name: str, final: str, tmp: str, src: BinaryIO,
                   size: int) -> RemoteEntry:
        sftp = ch.sftp
        with self._remote(ch, self.jobs, "create a temporary in"):
            handle = self._open_handle(ch, tmp, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)
        handle_open = True
        committed = False
        outstanding: deque[int] = deque()
        try:
            off = 0
            chunk = ch.write_chunk
            while off < size:
                buf = src.read(min(chunk, size - off))  # local errors propagate unchanged
                if not buf:
                    raise TransportError(f"{name}: the source ended after {off} of {size} bytes; "
                                         "nothing was written")
                with self._remote(ch, tmp, "write"):
                    # never more than chunk per request (src may return more)
                    for i in range(0, len(buf), chunk):
                        part = buf[i:i + chunk]
                        outstanding.append(sftp._async_request(
                            type(None), CMD_WRITE, handle, _int64(off), part))
                        off += len(part)
                        while len(outstanding) >= PIPELINE_DEPTH:
                            sftp._read_response(outstanding.popleft())
            with self._remote(ch, tmp, "write"):
                while outstanding:
                    sftp._read_response(outstanding.popleft())
            if off != size:
                raise TransportError(f"{name}: the source gave {off} bytes, expected {size}")
            if self.use_fsync and ch.has_fsync:
                with self._remote(ch, tmp, "fsync"):
                    sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)
                self.stats["fsyncs"] += 1
            with self._remote(ch, tmp, "close"):
                handle_open = False
                self._close_handle(ch, handle)
            try:
                with self._remote(ch, final, "rename a temporary to"):
                    sftp._request(CMD_RENAME, tmp, final)
            except TransportError as e:
                if e.transient:
                    raise
                if self._exists(ch, final):
                    raise RemoteExistsError(f"{final} already exists on {self._host_entry}; "
                                            "nothing was written") from None
                raise
            committed = True
            if self.use_fsync and ch.has_fsync:
                self._fsync_dir(ch)
            return RemoteEntry(name=name, size=size)
        finally:
            if not committed and ch.alive():
                with contextlib.suppress(Exception):
                    self._drain(ch, outstanding)
                    if handle_open:
                        self._close_handle(ch, handle)
                with contextlib.suppress(Exception):
                    ch.sftp._request(CMD_REMOVE, tmp)

    def _exists(self, ch: _Channel, path: str) -> bool:
        try:
            with self._remote(ch, path, "stat"):
                ch.sftp.lstat(path)
            return True
        except RemoteNotFoundError:
            return False

    def _fsync_dir(self, ch: _Channel) -> None:
        """Best effort: OpenSSH's server opens a directory as a file, so fsync@openssh.com
        can make the rename durable.  Other servers may refuse; that is fine."""
        try:
            handle = self._open_handle(ch, self.jobs, SFTP_FLAG_READ)
        except (OSError, SFTPError, EOFError):
            return
        try:
            ch.sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)
            self.stats["dir_fsyncs"] += 1
        except (OSError, SFTPError, EOFError):
            pass
        finally:
            with contextlib.suppress(OSError, SFTPError, EOFError):
                self._close_handle(ch, handle)

    def set_concurrency(self, n: int) -> int:
        if "connections" not in self.options:
            with self._lock:
                self.max_channels = max(self.max_channels, min(n, MAX_AUTO_CHANNELS))
        return n

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        """REMOVE requests pipelined on one channel (OpenSSH answers in order)."""
        self.require("can_delete")
        errors: dict[str, TransportError] = {}
        todo: list[tuple[str, str]] = []
        for name in names:
            try:
                self.check_name(name)
            except TransportError as e:
                errors[name] = e
                continue
            todo.append((name, self._path(name)))
        if not todo:
            return errors
        with self._use() as ch:
            sftp = ch.sftp
            outstanding: deque[tuple[int, str, str]] = deque()

            def collect() -> None:
                num, name, path = outstanding.popleft()
                try:
                    with self._remote(ch, path, "delete"):
                        sftp._read_response(num)
                except (RemoteNotFoundError, RemoteExistsError) as e:
                    errors[name] = e
                except TransportError as e:
                    if e.transient:
                        raise  # the link is gone: the caller retries what is left
                    errors[name] = e

            # A transient error (connection lost) propagates: the caller retries every
            # name, and those already removed then answer "no such file".
            for name, path in todo:
                with self._remote(ch, path, "delete"):
                    num = sftp._async_request(type(None), CMD_REMOVE, path)
                outstanding.append((num, name, path))
                while len(outstanding) >= DELETE_PIPELINE:
                    collect()
            while outstanding:
                collect()
        return errors

    def delete(self, name: str) -> None:
        self.require("can_delete")
        self.check_name(name)
        path = self._path(name)
        with self._use() as ch, self._remote(ch, path, "delete"):
            ch.sftp._request(CMD_REMOVE, path)

    def cleanup_temporaries(self) -> int:
        now = time.time()
        removed = 0
        with self._use() as ch:
            for name, a in self._listdir(ch):
                if not name.startswith(TMP_PREFIX) or a.st_mode is None or not stat.S_ISREG(a.st_mode):
                    continue
                stale = a.st_mtime is not None and now - a.st_mtime > self.tmp_max_age
                m = _TMP_RE.match(name)
                if not stale and m and m.group("host") == _HOST_TAG:
                    pid = int(m.group("pid"))
                    if m.group("proc") == _PROC_TOKEN and pid == os.getpid():
                        with _INFLIGHT_LOCK:
                            stale = name not in _INFLIGHT
                    elif pid != os.getpid():
                        stale = not pid_alive(pid)
                if not stale:
                    continue
                try:
                    with self._remote(ch, self._path(name), "delete"):
                        ch.sftp._request(CMD_REMOVE, self._path(name))
                    removed += 1
                    log.info("sftp: removed leftover temporary %s", name)
                except RemoteNotFoundError:
                    pass
        return removed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._nchan -= len(idle)
        for ch in idle:
            ch.close()
        with self._connect_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Reader(io.RawIOBase):
    """The raw stream behind :meth:`SFTPTransport.open` (pipelined reads)."""

    def __init__(self, t: SFTPTransport, ch: _Channel, path: str, handle: bytes) -> None:
        self._t = t
        self._ch = ch
        self._path = path
        self._handle = handle
        self._it = t._read_chunks(ch, path, handle, None)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._buf:
            self._buf = next(self._it, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._it.close()
            with contextlib.suppress(Exception):
                self._ch.sftp._request(CMD_CLOSE, self._handle)
            self._ch.close()
        finally:
            super().close()


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ConfigError("cannot tell the local user name; put user@ in the sftp location") from None
