"""The SFTP requests the transport uses, pipelined, with errors mapped to ours.

paramiko's SFTPClient answers one request at a time; here reads, writes and removes keep
several requests in flight on one channel (OpenSSH answers in order, so responses are
awaited FIFO), the request size follows the server's ``limits@openssh.com``, and
``fsync@openssh.com`` is used when the server offers it (paramiko discards the server's
extension list; :class:`Client` keeps it).

Writes never overwrite: a file is created with ``O_EXCL`` under a temporary name and
moved with the *plain* SFTP rename, which OpenSSH implements as link()+unlink() and which
therefore fails when the target exists (the overwriting ``posix-rename@openssh.com`` is
never used).  The directory is then fsynced (best effort: OpenSSH's server opens a
directory as a file).

Every remote call runs inside :meth:`Protocol.remote`, which maps paramiko's exceptions:
a lost connection → TransientError (and the connection is dropped so that the next call
reconnects), ENOENT → RemoteNotFoundError, the rest → TransportError, one line each.
"""

from __future__ import annotations

import contextlib
import errno
import io
import posixpath
import typing
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STATUS,
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
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)

#: SFTP request size when the server does not announce ``limits@openssh.com``.
DEFAULT_CHUNK = 32768
#: Upper bound of one read/write request even if the server allows more.
MAX_CHUNK = 256 * 1024
#: Requests kept in flight per transfer (pipelining).
PIPELINE_DEPTH = 16
#: REMOVE requests sent together (one write) by :meth:`Protocol.remove_many`.
DELETE_PIPELINE = 64
_SFTP_VERSION = 3


def _small_read_requests(sftp: SFTPClient, handle: bytes, size: int) -> list[int]:
    """Send what reads a whole file of ``size`` bytes and closes it (the caller corks):
    a READ of ``size`` bytes (none for an empty file), a 1-byte READ at ``size`` (end of
    file, unless it grew) and the CLOSE; their request numbers, in that order."""
    nums = [sftp._async_request(type(None), CMD_READ, handle, _int64(0), size)] if size else []
    nums.append(sftp._async_request(type(None), CMD_READ, handle, _int64(size), 1))
    nums.append(sftp._async_request(type(None), CMD_CLOSE, handle))
    return nums


def _int64(n: int) -> Any:
    return _INT64(n)


@dataclass
class Connection:
    """One SSH connection made by paramiko: it carries the channels.  (The OpenSSH data
    path has its own, :class:`~fspl_gateway.transports.sftp.openssh.OpenSSHConnection`,
    with the same three methods.)"""

    transport: paramiko.Transport
    timeout: float

    def is_active(self) -> bool:
        return bool(self.transport.is_active())

    def open_sftp(self) -> Client:
        """A new SFTP session (a channel with the ``sftp`` subsystem)."""
        chan = self.transport.open_session(timeout=self.timeout)
        chan.settimeout(self.timeout)
        chan.invoke_subsystem("sftp")
        return Client(chan)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()


class Link(typing.Protocol):
    """What a channel needs of its connection (paramiko's or OpenSSH's)."""

    timeout: float

    def is_active(self) -> bool: ...

    def open_sftp(self) -> Client: ...

    def close(self) -> None: ...


class Client(SFTPClient):
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

    def _read_packet(self) -> tuple[int, bytes]:
        """One packet; over OpenSSH's pipe read with ``recv_into`` into one buffer and
        copied once (paramiko's own loop re-copies what it has for every piece
        received, then once more to strip the type byte)."""
        recv_into = getattr(self.sock, "recv_into", None)
        if recv_into is None:
            t, data = super()._read_packet()
            return int(t), bytes(data)
        size = int.from_bytes(self._recv_exactly(recv_into, 4), "big")
        if size >> 24:
            raise SFTPError("Garbage packet received")
        if not size:
            return 0, b""
        buf = self._recv_exactly(recv_into, size)
        return buf[0], bytes(memoryview(buf)[1:])

    def read_data(self, num: int) -> memoryview | None:
        """The answer to READ request ``num`` (the next one: OpenSSH answers in order):
        its bytes, or None at end of file.  Over OpenSSH's pipe the bytes are a view of
        the received packet (no copy); other errors are raised as paramiko raises
        them."""
        recv_into = getattr(self.sock, "recv_into", None)
        if recv_into is None:
            try:
                t, msg = self._read_response(num)
            except EOFError:
                return None
            if t != CMD_DATA:
                raise SFTPError("expected data")
            return memoryview(msg.get_string())
        try:
            size = int.from_bytes(self._recv_exactly(recv_into, 4), "big")
            if size >> 24 or size < 5:
                raise SFTPError("Garbage packet received")
            buf = self._recv_exactly(recv_into, size)
        except EOFError as e:
            raise paramiko.SSHException(f"Server connection dropped: {e}") from None
        t = buf[0]
        got = int.from_bytes(buf[1:5], "big")
        with self._lock:
            self._expecting.pop(got, None)
        if got != num:
            raise SFTPError(f"answer {got} out of order (expected {num})")
        if t == CMD_STATUS:
            self._convert_status(Message(bytes(buf[5:])))  # EOFError at end of file
            raise SFTPError("expected data")
        if t != CMD_DATA or size < 9:
            raise SFTPError("expected data")
        n = int.from_bytes(buf[5:9], "big")
        return memoryview(buf)[9:9 + n]

    @staticmethod
    def _recv_exactly(recv_into: Callable[[Any], int], n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = recv_into(view[got:])
            if not k:
                raise EOFError()
            got += k
        return buf


class Channel:
    """One SFTP session on a connection (a paramiko channel, or an ``ssh`` process),
    with the server's limits."""

    def __init__(self, conn: Link) -> None:
        self.conn = conn
        self.sftp = conn.open_sftp()
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
        return (self.conn.is_active() and not self.sftp.sock.closed
                and not self.sftp.sock.eof_received)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()


@contextlib.contextmanager
def corked(ch: Channel) -> Iterator[None]:
    """The requests sent inside go out in one write where the stream can hold them (the
    OpenSSH path: one SSH packet instead of several small ones, see
    :meth:`~fspl_gateway.transports.sftp.openssh.PipeStream.cork`)."""
    sock = ch.sftp.sock
    cork = getattr(sock, "cork", None)
    if cork is None:
        yield
        return
    cork()
    try:
        yield
    finally:
        sock.uncork()


def is_conn_error(e: BaseException) -> bool:
    """True for an exception that means the connection is gone."""
    if isinstance(e, (paramiko.SSHException, EOFError, TimeoutError, ConnectionError)):
        return True
    if isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF,
                                              errno.ENOTCONN, errno.ETIMEDOUT):
        return True
    return False


class Protocol:
    """The requests, for one server (``where``: its host entry, for messages).

    ``on_lost(channel)`` is called when a call finds the connection lost (the pool drops
    it); ``stats`` counts ``fsyncs`` and ``dir_fsyncs``."""

    def __init__(self, where: str, on_lost: Callable[[Channel], None],
                 stats: dict[str, int]) -> None:
        self.where = where
        self.on_lost = on_lost
        self.stats = stats

    @contextlib.contextmanager
    def remote(self, ch: Channel, path: str, what: str) -> Iterator[None]:
        """Map exceptions of remote calls to our errors."""
        where = self.where
        try:
            yield
        except TransportError:
            raise
        except (TimeoutError, EOFError, paramiko.SSHException, ConnectionError) as e:
            self.on_lost(ch)
            raise TransientError(f"{what} {path} on {where}: connection lost "
                                 f"({e or type(e).__name__})") from None
        except SFTPError as e:
            raise TransportError(f"{what} {path} on {where}: {e}") from None
        except OSError as e:
            if is_conn_error(e) or not ch.alive():
                self.on_lost(ch)
                raise TransientError(f"{what} {path} on {where}: connection lost "
                                     f"({e.strerror or e})") from None
            if e.errno == errno.ENOENT:
                raise RemoteNotFoundError(f"{what} {path} on {where}: "
                                          "no such file or directory") from None
            if e.errno == errno.EACCES:
                raise TransportError(f"{what} {path} on {where}: "
                                     "permission denied") from None
            msg = e.strerror or (e.args[0] if e.args else type(e).__name__)
            raise TransportError(f"{what} {path} on {where}: {msg}") from None

    # -- handles ---------------------------------------------------------------------
    @staticmethod
    def open_handle(ch: Channel, path: str, flags: int) -> bytes:
        t, msg = ch.sftp._request(CMD_OPEN, path, flags, SFTPAttributes())
        if t != CMD_HANDLE:
            raise SFTPError("expected a handle")
        return bytes(msg.get_binary())

    @staticmethod
    def close_handle(ch: Channel, handle: bytes) -> None:
        ch.sftp._request(CMD_CLOSE, handle)

    @staticmethod
    def drain(ch: Channel, outstanding: deque[Any]) -> None:
        """Read (and ignore) the answers of the requests still in flight."""
        while outstanding:
            item = outstanding.popleft()
            num = item[0] if isinstance(item, tuple) else item
            with contextlib.suppress(EOFError, OSError, SFTPError):
                ch.sftp._read_response(num)

    # -- reading ---------------------------------------------------------------------
    def read_chunks(self, ch: Channel, path: str, handle: bytes,
                    size_hint: int | None) -> Generator[memoryview, None, None]:
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
                with self.remote(ch, path, "read"), corked(ch):
                    while len(outstanding) < PIPELINE_DEPTH:
                        if size_hint is not None and next_off >= size_hint:
                            if probe_sent:
                                break
                            probe_sent = True
                        n = chunk
                        if size_hint is not None and next_off < size_hint:
                            n = min(chunk, size_hint - next_off)
                        num = sftp._async_request(type(None), CMD_READ, handle,
                                                  _int64(next_off), n)
                        outstanding.append((num, next_off, n))
                        next_off += n
                if not outstanding:
                    return
                num, off, n = outstanding.popleft()
                with self.remote(ch, path, "read"):
                    try:
                        data = sftp.read_data(num)
                    except EOFError:  # the SFTP EOF status (a dropped link is SSHException)
                        data = None
                    if data is None:
                        self.drain(ch, outstanding)
                        return
                if not data:
                    continue
                if off >= (size_hint if size_hint is not None else off + 1):
                    size_hint = None  # the file is longer than announced: read to EOF
                yield data
                if len(data) < n:
                    # short read: discard what is in flight and continue after it
                    with self.remote(ch, path, "read"):
                        self.drain(ch, outstanding)
                    next_off = off + len(data)
                    probe_sent = False
        finally:
            if outstanding:
                # the consumer stopped early or failed: leave the channel in sync
                with contextlib.suppress(Exception):
                    self.drain(ch, outstanding)

    def read_small(self, ch: Channel, path: str, handle: bytes, size: int) -> list[bytes]:
        """Read a whole file of ``size`` bytes (at most one request) and close its handle
        in one round trip: a READ of ``size`` bytes, a 1-byte READ at ``size`` (end of
        file, unless the file grew) and the CLOSE are sent together, then answered in
        order.  Returns what the reads returned (the caller checks the sizes)."""
        sftp = ch.sftp
        out: list[bytes] = []
        outstanding: deque[int] = deque()
        try:
            with self.remote(ch, path, "read"):
                with corked(ch):
                    outstanding.extend(_small_read_requests(sftp, handle, size))
                while len(outstanding) > 1:
                    try:
                        t, msg = sftp._read_response(outstanding.popleft())
                    except EOFError:  # the SFTP EOF status
                        continue
                    if t != CMD_DATA:
                        raise SFTPError("expected data")
                    out.append(msg.get_string())
            with self.remote(ch, path, "close"):
                sftp._read_response(outstanding.popleft())
        finally:
            if outstanding:
                with contextlib.suppress(Exception), self.remote(ch, path, "read"):
                    self.drain(ch, outstanding)
        return out

    def read_small_many(self, ch: Channel, items: Sequence[tuple[str, str, int]]
                        ) -> dict[str, list[bytes] | TransportError]:
        """Whole small files (name, path, listed size) in two round trips for the lot:
        every OPEN sent together; then, for each file opened, the :meth:`read_small`
        trio (a READ of its size, a 1-byte READ at its end, its CLOSE), all sent
        together; the answers read in order (OpenSSH answers in order).  Name → what its
        reads returned (the caller checks the sizes), or its own error (e.g. no such
        file).  A transient error (the connection is lost) propagates: the caller reads
        them all again."""
        sftp = ch.sftp
        out: dict[str, list[bytes] | TransportError] = {}
        opens: deque[tuple[int, str, str, int]] = deque()
        reads: deque[tuple[int, str, str, bool]] = deque()
        try:
            with self.remote(ch, items[0][1], "open"), corked(ch):
                for name, path, size in items:
                    opens.append((sftp._async_request(type(None), CMD_OPEN, path,
                                                      SFTP_FLAG_READ, SFTPAttributes()),
                                  name, path, size))
            handles: list[tuple[str, str, int, bytes]] = []
            while opens:
                num, name, path, size = opens.popleft()
                try:
                    with self.remote(ch, path, "open"):
                        t, msg = sftp._read_response(num)
                        if t != CMD_HANDLE:
                            raise SFTPError("expected a handle")
                        handles.append((name, path, size, bytes(msg.get_binary())))
                except TransportError as e:
                    if e.transient:
                        raise
                    out[name] = e
            if not handles:
                return out
            with self.remote(ch, handles[0][1], "read"), corked(ch):
                for name, path, size, handle in handles:
                    out[name] = []
                    *data, close = _small_read_requests(sftp, handle, size)
                    reads.extend((num, name, path, False) for num in data)
                    reads.append((close, name, path, True))
            while reads:
                num, name, path, is_close = reads.popleft()
                try:
                    with self.remote(ch, path, "close" if is_close else "read"):
                        try:
                            t, msg = sftp._read_response(num)
                        except EOFError:  # the SFTP EOF status of a READ
                            continue
                        if is_close:
                            continue
                        if t != CMD_DATA:
                            raise SFTPError("expected data")
                        got = out[name]
                        if isinstance(got, list):
                            got.append(msg.get_string())
                except TransportError as e:
                    if e.transient:
                        raise
                    if not is_close:  # a failed CLOSE leaves the bytes read good
                        out[name] = e
        finally:
            if opens or reads:
                with contextlib.suppress(Exception), self.remote(ch, items[0][1], "read"):
                    self.drain(ch, deque(n for n, *_ in (*opens, *reads)))
        return out

    def listdir(self, ch: Channel, path: str) -> list[tuple[str, SFTPAttributes]]:
        """(name, lstat attributes) of every entry of directory ``path`` (names decoded
        as UTF-8 with surrogateescape: paramiko's own listdir fails on other bytes)."""
        out: list[tuple[str, SFTPAttributes]] = []
        with self.remote(ch, path, "list"):
            sftp = ch.sftp
            t, msg = sftp._request(CMD_OPENDIR, path)
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

    # -- writing ---------------------------------------------------------------------
    def write_file(self, ch: Channel, path: str, src: BinaryIO, size: int, name: str,
                   fsync: bool) -> None:
        """Create ``path`` (exclusively) with ``size`` bytes from ``src``, pipelined;
        ``fsync@openssh.com`` when ``fsync`` and the server offers it; close.  On an
        error the channel is left in sync; the file may remain (the caller removes it)."""
        sftp = ch.sftp
        with self.remote(ch, posixpath.dirname(path), "create a temporary in"):
            handle = self.open_handle(ch, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)
        handle_open = True
        done = False
        outstanding: deque[int] = deque()
        try:
            off = 0
            chunk = ch.write_chunk
            while off < size:
                buf = src.read(min(chunk, size - off))  # local errors propagate unchanged
                if not buf:
                    raise TransportError(f"{name}: the source ended after {off} of {size} bytes; "
                                         "nothing was written")
                with self.remote(ch, path, "write"):
                    # never more than chunk per request (src may return more)
                    for i in range(0, len(buf), chunk):
                        part = buf[i:i + chunk]
                        outstanding.append(sftp._async_request(
                            type(None), CMD_WRITE, handle, _int64(off), part))
                        off += len(part)
                        while len(outstanding) >= PIPELINE_DEPTH:
                            sftp._read_response(outstanding.popleft())
            with self.remote(ch, path, "write"):
                while outstanding:
                    sftp._read_response(outstanding.popleft())
            if off != size:
                raise TransportError(f"{name}: the source gave {off} bytes, expected {size}")
            if fsync and ch.has_fsync:
                with self.remote(ch, path, "fsync"):
                    sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)
                self.stats["fsyncs"] += 1
            with self.remote(ch, path, "close"):
                handle_open = False
                self.close_handle(ch, handle)
            done = True
        finally:
            if not done and ch.alive():
                with contextlib.suppress(Exception):
                    self.drain(ch, outstanding)
                    if handle_open:
                        self.close_handle(ch, handle)

    def rename(self, ch: Channel, src: str, dst: str) -> None:
        """The plain SFTP rename, which never overwrites: RemoteExistsError if ``dst``
        exists."""
        try:
            with self.remote(ch, dst, "rename a temporary to"):
                ch.sftp._request(CMD_RENAME, src, dst)
        except TransportError as e:
            if e.transient:
                raise
            if self.exists(ch, dst):
                raise RemoteExistsError(f"{dst} already exists on {self.where}; "
                                        "nothing was written") from None
            raise

    def exists(self, ch: Channel, path: str) -> bool:
        try:
            with self.remote(ch, path, "stat"):
                ch.sftp.lstat(path)
            return True
        except RemoteNotFoundError:
            return False

    def fsync_dir(self, ch: Channel, path: str) -> None:
        """Best effort: OpenSSH's server opens a directory as a file, so fsync@openssh.com
        can make a rename durable.  Other servers may refuse; that is fine."""
        try:
            handle = self.open_handle(ch, path, SFTP_FLAG_READ)
        except (OSError, SFTPError, EOFError):
            return
        try:
            ch.sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)
            self.stats["dir_fsyncs"] += 1
        except (OSError, SFTPError, EOFError):
            pass
        finally:
            with contextlib.suppress(OSError, SFTPError, EOFError):
                self.close_handle(ch, handle)

    # -- removing --------------------------------------------------------------------
    def remove(self, ch: Channel, path: str) -> None:
        with self.remote(ch, path, "delete"):
            ch.sftp._request(CMD_REMOVE, path)

    def remove_many(self, ch: Channel, todo: Sequence[tuple[str, str]],
                    errors: dict[str, TransportError]) -> None:
        """REMOVE requests for (name, path) pairs, DELETE_PIPELINE in flight; the error
        of each name that failed goes into ``errors``.  A transient error (the connection
        is lost) propagates: the caller retries every name, and those already removed
        then answer "no such file"."""
        sftp = ch.sftp
        outstanding: deque[tuple[int, str, str]] = deque()

        def collect() -> None:
            num, name, path = outstanding.popleft()
            try:
                with self.remote(ch, path, "delete"):
                    sftp._read_response(num)
            except (RemoteNotFoundError, RemoteExistsError) as e:
                errors[name] = e
            except TransportError as e:
                if e.transient:
                    raise  # the link is gone: the caller retries what is left
                errors[name] = e

        for i in range(0, len(todo), DELETE_PIPELINE):
            group = todo[i:i + DELETE_PIPELINE]
            with self.remote(ch, group[0][1], "delete"), corked(ch):
                for name, path in group:
                    num = sftp._async_request(type(None), CMD_REMOVE, path)
                    outstanding.append((num, name, path))
            while outstanding:
                collect()


class Reader(io.RawIOBase):
    """A raw stream of one remote file, pipelined, on a channel of its own; when the
    stream is closed the channel goes to ``give_back`` if it is still in step (its
    handle closed cleanly), else it is closed."""

    def __init__(self, proto: Protocol, ch: Channel, path: str, handle: bytes,
                 give_back: Callable[[Channel], None]) -> None:
        self._ch = ch
        self._handle = handle
        self._give_back = give_back
        self._it = proto.read_chunks(ch, path, handle, None)
        self._buf: bytes | memoryview = b""

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
            try:
                self._ch.sftp._request(CMD_CLOSE, self._handle)
            except Exception:  # noqa: BLE001 - out of step or gone: not reused
                self._ch.close()
            else:
                self._give_back(self._ch)
        finally:
            super().close()
