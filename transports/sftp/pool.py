"""Connections and channels: one SSH connection per transport, carrying a pool of SFTP
channels (one per concurrent call), reconnected when it drops.  On the OpenSSH data path
(:mod:`.openssh`) the "connection" only spawns ``ssh`` processes, one per channel: a
channel whose process died is dropped and the next call starts a fresh one.

:func:`open_connection` makes one connection: TCP, the SSH handshake (asking first for
the host key types known for the host), the host key check, public-key authentication.
:class:`ChannelPool` hands out channels (at most ``max_channels`` at once; a caller waits
for a free one), drops a channel or the connection that broke, and reconnects on the next
call.  It never retries: a connection that cannot be made, or that turns out dead when a
channel is opened on it, is a TransientError for the call at hand (the connection is
dropped, so the caller's retry policy, :mod:`fspl_gateway.gateway.retry`, reconnects).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import paramiko

from fspl_gateway.core.errors import (
    AuthError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.sftp.auth import Authenticator
from fspl_gateway.transports.sftp.hostkeys import HostKeyPolicy
from fspl_gateway.transports.sftp.protocol import Channel, Connection, Link

log = get_logger(__name__)

#: Channels of finished open() streams kept for the next ones.
MAX_SPARE = 2
#: Seconds between SSH keepalives on an idle connection.
KEEPALIVE = 30


def open_connection(host: str, port: int, timeout: float, hostkeys: HostKeyPolicy,
                    auth: Authenticator) -> Connection:
    """One authenticated SSH connection; TransientError when the host cannot be reached
    (or the link drops), HostKeyError/AuthError when it must not be used."""
    entry = hostkeys.entry
    known = hostkeys.load()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise TransientError(f"cannot resolve SSH host {host}: {e.strerror}") from None
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise TransientError(f"cannot connect to {host} port {port}: {why}") from None
    t = paramiko.Transport(sock)
    ok = False
    try:
        t.banner_timeout = timeout
        t.auth_timeout = timeout
        opts = t.get_security_options()
        opts.key_types = hostkeys.preferred_key_types(known, tuple(opts.key_types))
        try:
            t.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise TransientError(f"SSH handshake with {entry} failed: "
                                 f"{e or type(e).__name__}") from None
        hostkeys.check(t.get_remote_server_key(), known)
        try:
            auth.authenticate(t)
        except paramiko.SSHException as e:
            if not t.is_active():
                raise TransientError(f"connection to {entry} dropped during "
                                     f"authentication: {e}") from None
            raise AuthError(f"SSH authentication with {entry} failed: "
                            f"{type(e).__name__}") from None
        t.set_keepalive(KEEPALIVE)
        ok = True
        return Connection(transport=t, timeout=timeout)
    finally:
        if not ok:
            t.close()


class ChannelPool:
    """Up to ``max_channels`` SFTP channels on one connection made by ``connect``."""

    def __init__(self, connect: Callable[[], Link], where: str, what: str,
                 max_channels: int) -> None:
        self._connect = connect
        self.where = where  # the host entry, for messages
        self.what = what  # the remote, for messages
        self.max_channels = max_channels
        self._lock = threading.Condition()
        self._connect_lock = threading.Lock()
        self._conn: Link | None = None
        self._idle: list[Channel] = []
        #: Channels of finished :meth:`~.SFTPTransport.open` streams, kept for the next
        #: one (on the OpenSSH path a new channel is a new ssh process).
        self._spare: list[Channel] = []
        self.nchan = 0
        self._closed = False

    def grow(self, n: int) -> None:
        """Allow up to ``n`` channels (never fewer than now)."""
        with self._lock:
            self.max_channels = max(self.max_channels, n)

    def connection(self) -> Link:
        """The live SSH connection, connecting (once) if there is none."""
        with self._connect_lock:
            c = self._conn
            if c is not None and c.is_active():
                return c
            if c is not None:
                log.debug("sftp: the connection to %s was lost; reconnecting", self.where)
                c.close()
                self._conn = None
            self._conn = self._connect()
            return self._conn

    def new_channel(self) -> Channel:
        """A channel outside the pool (the caller closes it or gives it back with
        :meth:`give_back`)."""
        stale: list[Channel] = []
        with self._lock:
            while self._spare:
                ch = self._spare.pop()
                if ch.alive() and ch.conn is self._conn:
                    break
                stale.append(ch)
            else:
                ch = None
        for old in stale:
            old.close()
        if ch is not None:
            return ch
        conn = self.connection()
        try:
            return Channel(conn)
        except (paramiko.SSHException, EOFError, OSError) as e:
            if isinstance(e, paramiko.ChannelException):
                # the server refused a channel (e.g. MaxSessions): the link is fine
                raise TransientError(f"{self.where} refused an SFTP channel: {e} "
                                     "(lower the sftp option connections?)") from None
            # the connection was dead before paramiko's reader thread noticed: drop it,
            # so that the next attempt connects afresh
            with self._connect_lock:
                if self._conn is conn:
                    self._conn = None
            conn.close()
            raise TransientError(f"cannot open an SFTP channel on {self.where}: "
                                 f"{e or type(e).__name__}") from None

    def acquire(self) -> Channel:
        with self._lock:
            if self._closed:
                raise TransportError(f"{self.what}: transport is closed")
            while True:
                while self._idle:
                    ch = self._idle.pop()
                    if ch.alive() and ch.conn is self._conn:
                        return ch
                    ch.close()
                    self.nchan -= 1
                if self.nchan < self.max_channels:
                    self.nchan += 1
                    break
                self._lock.wait()
        try:
            return self.new_channel()
        except BaseException:
            with self._lock:
                self.nchan -= 1
                self._lock.notify()
            raise

    def give_back(self, ch: Channel) -> None:
        """Keep a channel of :meth:`new_channel` (in step, not broken) for the next one;
        close it if there are enough already."""
        with self._lock:
            if (not self._closed and ch.alive() and ch.conn is self._conn
                    and len(self._spare) < MAX_SPARE):
                self._spare.append(ch)
                return
        ch.close()

    def release(self, ch: Channel, broken: bool) -> None:
        with self._lock:
            if broken or self._closed or not ch.alive():
                ch.close()
                self.nchan -= 1
            else:
                self._idle.append(ch)
            self._lock.notify()

    @contextlib.contextmanager
    def use(self) -> Iterator[Channel]:
        """A channel of the pool for one call; a channel that broke is not reused."""
        ch = self.acquire()
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
            self.release(ch, broken)

    def drop_if_dead(self, ch: Channel) -> None:
        """Forget the connection of ``ch`` if it is gone (the next call reconnects)."""
        if not ch.conn.is_active():
            with self._connect_lock:
                if self._conn is ch.conn:
                    self._conn = None
            ch.conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self.nchan -= len(idle)
            idle += self._spare
            self._spare = []
        for ch in idle:
            ch.close()
        with self._connect_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
