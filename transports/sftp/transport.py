"""The SFTP transport class: the :class:`~fspl_gateway.transports.base.Transport`
interface over the package's parts (location, host keys, auth, pool, protocol).

Writes
    ``write_new`` uploads to a temporary name in ``jobs/`` (``.fspl-gw-tmp-…``, never
    ``fspl-*.fspl``), fsyncs it, closes it and renames it with the plain SFTP rename,
    which never overwrites (:mod:`.protocol`); then the directory is fsynced.

Temporaries
    :meth:`SFTPTransport.cleanup_temporaries` removes our own leftovers: a temporary is
    removed if its mtime is older than ``tmp_max_age`` (default 10 minutes: a live
    upload touches it continuously), or, at once, if it was written from this machine
    (same boot, PID namespace and host name) by a process that no longer exists, or by
    this very process but is not being written now.

Connections
    ``ssh=openssh`` (the default where an ``ssh`` command exists): every channel is its
    own ``ssh -s HOST sftp`` process (:mod:`.openssh`).  ``ssh=paramiko``: one SSH
    connection for the life of the object, carrying a pool of up to
    ``connections`` SFTP channels (default 1, or the caller's concurrency up to
    :data:`MAX_AUTO_CHANNELS` when it calls ``set_concurrency`` and the option is not
    set; each call takes one channel, so the transport is thread-safe); :meth:`open`
    streams use their own extra channel.  A dropped connection raises TransientError for
    the call in progress; the next call reconnects (:mod:`.pool`).  Nothing here
    retries: the caller's retry policy (:mod:`fspl_gateway.gateway.retry`) does.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from paramiko.sftp import CMD_FSTAT, SFTP_FLAG_READ
from paramiko.sftp_attr import SFTPAttributes

from fspl_gateway.core.errors import (
    ConfigError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.fsutil import TMP_PREFIX
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.base import (
    SETTLE_OPTION,
    Capabilities,
    RemoteEntry,
    Transport,
    check_listed_size,
    check_not_more,
)
from fspl_gateway.transports.local import pid_alive
from fspl_gateway.transports.options import Option, OptionSchema, OptionType
from fspl_gateway.transports.sftp.auth import DEFAULT_PASSPHRASE_ENV, Authenticator
from fspl_gateway.transports.sftp.hostkeys import HostKeyPolicy
from fspl_gateway.transports.sftp.location import (
    host_entry,
    local_user,
    parse_location,
    ssh_config,
)
from fspl_gateway.transports.sftp.openssh import (
    OpenSSHConnection,
    aes_gcm_first,
    find_ssh,
    has_aes_instructions,
    ssh_argv,
)
from fspl_gateway.transports.sftp.pool import ChannelPool, open_connection
from fspl_gateway.transports.sftp.protocol import Channel, Link, Protocol, Reader

log = get_logger(__name__)

#: The largest file :meth:`SFTPTransport.fetch_small` reads with one READ (OpenSSH
#: answers up to 256 KiB per READ; a signature is a few hundred bytes).
MAX_SMALL_READ = 32 << 10
#: Channels opened for ``set_concurrency`` when the option ``connections`` is not set
#: (OpenSSH allows 10 sessions per connection by default: MaxSessions).
MAX_AUTO_CHANNELS = 8


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


OPTIONS = OptionSchema(
    Option("ssh", OptionType.CHOICE, default="auto", choices=("auto", "openssh", "paramiko"),
           help="The SSH client: `openssh` runs the system `ssh` (`ssh -s HOST sftp`, so "
                "its config, agent, ControlMaster and known_hosts apply and its C crypto "
                "is used); `paramiko` is the built-in client; `auto` is `openssh` when "
                "an `ssh` command is found and the passphrase variable (`passphrase_env`) "
                "is not set, else `paramiko`."),
    Option("ssh_command", OptionType.STR,
           default_doc="`ssh` on PATH",
           help="The command run on the OpenSSH path (shell words, e.g. `ssh -F "
                "~/.ssh/other`); the transport appends its own options, then `-s HOST sftp` "
                "(BatchMode and StrictHostKeyChecking go first, so the command's words "
                "cannot weaken them)."),
    Option("prefer_aes_gcm", OptionType.BOOL, default=True,
           help="On the OpenSSH path, when the CPU has AES instructions: move AES-GCM to "
                "the front of the cipher list ssh would use anyway (`ssh -G`; nothing is "
                "added). OpenSSH's default, chacha20-poly1305, costs both ends about twice "
                "the CPU there."),
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
           help="SFTP channels on the one SSH connection (on the OpenSSH path: `ssh` "
                "processes, one per channel)."),
    Option("timeout", OptionType.DURATION, default=30.0, minimum=0.1,
           help="Connect, handshake and per-request timeout."),
    Option("connect_retries", OptionType.INT, "", deprecated="connections are retried per "
           "operation by the one retry policy: `--retries`"),
    Option("retry_backoff", OptionType.DURATION, "", deprecated="the retry policy's backoff "
           "applies"),
    Option("tmp_max_age", OptionType.DURATION, default=600.0,
           help="Remove a leftover temporary untouched for this long."),
    Option("fsync", OptionType.BOOL, default=True,
           help="Make uploads durable with `fsync@openssh.com` where offered."),
    SETTLE_OPTION,
)


class SFTPTransport(Transport):
    name = "sftp"
    #: a file may be filled under its final name (scp, rclone < 1.63): see ``settle``
    capabilities = Capabilities(atomic_appearance=False, batch_reads=True)
    options_schema = OPTIONS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        o = self.settings
        loc = parse_location(location)
        cfg = ssh_config(o["ssh_config"], loc.host)
        self.host: str = str(cfg.get("hostname") or loc.host)
        self.user: str = loc.user or str(cfg.get("user") or "") or local_user()
        try:
            self.port: int = loc.port or int(cfg.get("port") or 22)
        except ValueError:
            raise ConfigError(f"ssh config: bad Port for {loc.host!r}") from None
        self.path = loc.path
        self.jobs = posixpath.join(self.path, self.area) if self.path != "." else self.area
        self.timeout: float = o["timeout"]
        self.tmp_max_age: float = o["tmp_max_age"]
        self.use_fsync: bool = o["fsync"]
        entry = self._host_entry
        identity_files = (list(o["identity_file"] or ())
                          or [os.path.expanduser(p) for p in cfg.get("identityfile", [])])
        self.auth = Authenticator(self.user, entry, identity_files, bool(identity_files),
                                  o["passphrase_env"], o["allow_agent"])
        user_known = cfg.get("userknownhostsfile")
        if isinstance(user_known, str):
            user_known = user_known.split()
        self.hostkeys = HostKeyPolicy(
            entry,
            [os.path.expanduser(p) for p in user_known] if user_known
            else [os.path.expanduser("~/.ssh/known_hosts")],
            list(o["known_hosts"] or ()), o["accept_new_host_key"])
        #: Counters (for tests and metrics): connects, fsyncs, dir_fsyncs.
        self.stats: dict[str, int] = {"connects": 0, "fsyncs": 0, "dir_fsyncs": 0}
        self._loc = loc
        self._known_hosts_given = bool(o["known_hosts"])
        #: The data path: "openssh" (the system ssh) or "paramiko".
        self.ssh: str = o["ssh"]
        self._ssh_cmd = find_ssh(o["ssh_command"]) if self.ssh != "paramiko" else None
        if self.ssh == "auto":
            self.ssh = ("openssh" if self._ssh_cmd and not os.environ.get(o["passphrase_env"])
                        else "paramiko")
        elif self.ssh == "openssh" and not self._ssh_cmd:
            raise ConfigError("sftp option ssh=openssh: no ssh command found on PATH "
                              "(install openssh-client, set ssh_command, or use ssh=paramiko)")
        self.pool = ChannelPool(self._connect, entry, self.describe(), o["connections"] or 1)
        self.proto = Protocol(entry, self.pool.drop_if_dead, self.stats)

    def _connect(self) -> Link:
        if self.ssh == "openssh":
            return self._openssh()
        conn = open_connection(self.host, self.port, self.timeout, self.hostkeys, self.auth)
        self.stats["connects"] += 1
        return conn

    def _openssh(self) -> OpenSSHConnection:
        """The OpenSSH "connection": it runs one ``ssh`` per channel (counted in
        ``stats["connects"]``)."""
        assert self._ssh_cmd is not None
        self.auth.check_files()
        if self.hostkeys.accept_new:
            self.hostkeys.make_record_dir()  # ssh does not create it
        natural = host_entry(self.host, self.port)
        loc = self._loc
        argv = ssh_argv(
            self._ssh_cmd, host=loc.host, user=loc.user, port=loc.port,
            config=self.settings["ssh_config"], identity_files=self.auth.identity_files,
            allow_agent=self.auth.allow_agent, hostkeys=self.hostkeys,
            known_hosts_given=self._known_hosts_given,
            host_key_alias=self.hostkeys.entry if self.hostkeys.entry != natural else None,
            timeout=self.timeout)
        if self.settings["prefer_aes_gcm"] and has_aes_instructions():
            argv = aes_gcm_first(argv, self.timeout)
        tried = ", ".join(self.auth.identity_files) or "ssh's default keys"
        if self.auth.allow_agent:
            tried += " and the ssh-agent"
        return OpenSSHConnection(argv, self.timeout, entry=self.hostkeys.entry,
                                 user=self.user, hostkeys=self.hostkeys, tried=tried,
                                 stats=self.stats)

    @property
    def max_channels(self) -> int:
        return self.pool.max_channels

    def describe(self) -> str:
        port = "" if self.port == 22 else f":{self.port}"
        path = self.path if self.path.startswith("/") else "/~/" + self.path
        return f"sftp://{self.user}@{self.host}{port}{path}"

    @property
    def _host_entry(self) -> str:
        return host_entry(self.host, self.port)

    def _path(self, name: str) -> str:
        return posixpath.join(self.jobs, name)

    def make_area(self) -> None:
        with self.pool.use() as ch:
            if not self.proto.exists(ch, self.jobs):
                try:
                    with self.proto.remote(ch, self.jobs, "mkdir"):
                        ch.sftp.mkdir(self.jobs)
                except TransportError:
                    if not self.proto.exists(ch, self.jobs):  # else: made meanwhile
                        raise

    # -- interface -----------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        entries: list[RemoteEntry] = []
        with self.pool.use() as ch:
            for name, attr in self.proto.listdir(ch, self.jobs):
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
        ch = self.pool.new_channel()
        try:
            with self.proto.remote(ch, path, "open"):
                handle = self.proto.open_handle(ch, path, SFTP_FLAG_READ)
        except RemoteNotFoundError:
            self.pool.give_back(ch)  # a clean answer: the channel is in step
            raise
        except BaseException:
            ch.close()
            raise
        return io.BufferedReader(Reader(self.proto, ch, path, handle, self.pool.give_back),
                                 buffer_size=1 << 20)

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        self.check_name(name)
        path = self._path(name)
        proto = self.proto
        where = f"{path} on {self._host_entry}"
        expected = entry.size if entry is not None else None
        n = 0

        def take(data: bytes | memoryview) -> None:
            nonlocal n
            if expected is not None and n + len(data) > expected:
                data = data[:expected + 1 - n]  # never accept more than listed
            dst.write(data)  # local errors propagate unchanged
            n += len(data)
            check_not_more(where, n, expected)

        with self.pool.use() as ch:
            with proto.remote(ch, path, "open"):
                handle = proto.open_handle(ch, path, SFTP_FLAG_READ)
            if expected is not None and expected <= ch.read_chunk:
                # a small file: its reads and the CLOSE in one round trip
                got = proto.read_small(ch, path, handle, expected)
                if sum(len(d) for d in got) >= expected:
                    for piece in got:
                        take(piece)
                    check_listed_size(where, n, entry)
                    return n
                # a short read (the file shrank, or a server that reads less than
                # asked): read it again the general way, which tells the two apart
                with proto.remote(ch, path, "open"):
                    handle = proto.open_handle(ch, path, SFTP_FLAG_READ)
            chunks: Iterator[memoryview] | None = None
            try:
                if expected is None:
                    with proto.remote(ch, path, "stat"):
                        t, msg = ch.sftp._request(CMD_FSTAT, handle)
                        expected = SFTPAttributes._from_msg(msg).st_size
                chunks = proto.read_chunks(ch, path, handle, expected)
                for view in chunks:
                    take(view)
            finally:
                if chunks is not None:
                    chunks.close()  # type: ignore[attr-defined]
                with contextlib.suppress(Exception), proto.remote(ch, path, "close"):
                    proto.close_handle(ch, handle)
        check_listed_size(where, n, entry)
        return n

    def fetch_small(self, entries: Sequence[RemoteEntry]) -> dict[str, bytes | TransportError]:
        """The files listed with a size that one READ takes, pipelined on one channel
        (:meth:`Protocol.read_small_many`: two round trips for the lot); any other
        one by :meth:`fetch`."""
        _, refused = self.safe_names([e.name for e in entries])
        out: dict[str, bytes | TransportError] = dict(refused)
        small: list[RemoteEntry] = []
        for e in (e for e in entries if e.name not in refused):
            if e.size is not None and e.size <= MAX_SMALL_READ:
                small.append(e)
            else:
                out.update(super().fetch_small([e]))
        if not small:
            return out
        with self.pool.use() as ch:
            got = self.proto.read_small_many(ch, [(e.name, self._path(e.name), e.size or 0)
                                                  for e in small])
        for e in small:
            pieces = got[e.name]
            if isinstance(pieces, TransportError):
                out[e.name] = pieces
                continue
            data = b"".join(pieces)
            if len(data) != e.size:  # it changed, or a server that reads less than asked:
                out.update(super().fetch_small([e]))  # fetch tells the two apart
                continue
            out[e.name] = data
        return out

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.require("can_write")
        self.check_name(name)
        final = self._path(name)
        tmp = self._path(_tmp_name(name))
        with _INFLIGHT_LOCK:
            _INFLIGHT.add(posixpath.basename(tmp))
        try:
            with self.pool.use() as ch:
                return self._write_new(ch, name, final, tmp, src, size)
        finally:
            with _INFLIGHT_LOCK:
                _INFLIGHT.discard(posixpath.basename(tmp))

    def _write_new(self, ch: Channel, name: str, final: str, tmp: str, src: BinaryIO,
                   size: int) -> RemoteEntry:
        committed = False
        try:
            self.proto.write_file(ch, tmp, src, size, name, self.use_fsync)
            self.proto.rename(ch, tmp, final)
            committed = True
            if self.use_fsync and ch.has_fsync:
                self.proto.fsync_dir(ch, self.jobs)
            return RemoteEntry(name=name, size=size)
        finally:
            if not committed and ch.alive():
                with contextlib.suppress(Exception):
                    self.proto.remove(ch, tmp)

    def set_concurrency(self, n: int) -> int:
        if "connections" not in self.options:
            self.pool.grow(min(n, MAX_AUTO_CHANNELS))
        return n

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        """REMOVE requests pipelined on one channel (OpenSSH answers in order)."""
        self.require("can_delete")
        ok, errors = self.safe_names(names)
        todo = [(name, self._path(name)) for name in ok]
        if not todo:
            return errors
        with self.pool.use() as ch:
            self.proto.remove_many(ch, todo, errors)
        return errors

    def delete(self, name: str) -> None:
        self.require("can_delete")
        self.check_name(name)
        path = self._path(name)
        with self.pool.use() as ch:
            self.proto.remove(ch, path)

    def cleanup_temporaries(self) -> int:
        now = time.time()
        removed = 0
        with self.pool.use() as ch:
            for name, a in self.proto.listdir(ch, self.jobs):
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
                    self.proto.remove(ch, self._path(name))
                    removed += 1
                    log.info("sftp: removed leftover temporary %s", name)
                except RemoteNotFoundError:
                    pass
        return removed

    def close(self) -> None:
        self.pool.close()
