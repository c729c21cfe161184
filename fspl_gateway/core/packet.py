"""Filespooler v1 packets (job files): encode and decode the header.

Layout (all integers big-endian)::

    offset  size  field
    0       12    b"*FILESPOOLER"
    12      2     version (u16) = 1
    14      8     metadata length N (u64)
    22      4     CRC-32 (zlib.crc32) of the N metadata bytes
    26      4     CRC-32 of bytes 0..26
    30      N     metadata: MessagePack map {"seq", "ctime", "cmd_type"}
    30+N    ...   payload, raw, to end of file

``cmd_type`` is ``"NOP"``, ``"Fail"`` or ``{"Command": {"params": [...], "env": [[k, v]]}}``.
Byte strings (params, env keys and values) are written as MessagePack arrays of byte
values, as fspl 1.2 writes them, so our packets are byte-identical to fspl's; on reading
we also accept ``bin`` and ``str``.  Env keys are stored without the ``FSPL_SET_`` prefix.

Nothing here reads a payload: readers stop exactly at its first byte.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgpack

from fspl_gateway.core.errors import PacketError
from fspl_gateway.core.fsutil import read_exact

MAGIC = b"*FILESPOOLER"
VERSION = 1
PREFIX_LEN = 30
_PREFIX = struct.Struct(">12sHQII")
#: Largest metadata block we accept.  fspl trusts the length field and aborts on a huge
#: value; we refuse anything above this with a PacketError instead of allocating it.
MAX_META_LEN = 64 << 20
ENV_PREFIX = b"FSPL_SET_"
_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U32 = (1 << 32) - 1
# The ctimes fspl can show as dates: chrono's range, years -262144 ..= 262143, in UTC and
# in local time (fspl decodes any i64/u32 pair but panics rendering one outside this).
# Nanoseconds of 10⁹ and more are chrono's leap-second form (see _rfc3339).
_SECS_MIN, _SECS_MAX = -8334632851200, 8210298412799
_NANOS_SHOWN_MAX = 1_999_999_999


@dataclass(frozen=True, slots=True)
class Command:
    """A command job: extra parameters and FSPL_SET_ variables (keys without prefix)."""

    params: tuple[bytes, ...] = ()
    env: tuple[tuple[bytes, bytes], ...] = ()


CmdType = str | Command  # "NOP", "Fail" or a Command


def now_ctime() -> tuple[int, int]:
    ns = time.time_ns()
    return ns // 1_000_000_000, ns % 1_000_000_000


@dataclass(frozen=True, slots=True)
class Meta:
    """The decoded metadata of one packet."""

    seq: int
    ctime: tuple[int, int] = field(default_factory=now_ctime)
    cmd: CmdType = "NOP"

    # -- times ---------------------------------------------------------------------
    # Both raise PacketError for a ctime fspl cannot show (it panics there); such a job
    # still decodes and, being NOP or Fail, runs, as with fspl.
    def rfc3339_utc(self) -> str:
        return _rfc3339(*self.ctime, local=False)

    def rfc3339_local(self) -> str:
        return _rfc3339(*self.ctime, local=True)

    # -- environment ---------------------------------------------------------------
    def env_vars(self, filename: bytes | None = None,
                 queuedir: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """The FSPL_* variables, in fspl's order (what queue-info prints)."""
        out: list[tuple[bytes, bytes]] = [
            (b"FSPL_SEQ", b"%d" % self.seq),
            (b"FSPL_CTIME_SECS", b"%d" % self.ctime[0]),
            (b"FSPL_CTIME_NANOS", b"%d" % self.ctime[1]),
            (b"FSPL_CTIME_RFC3339_UTC", self.rfc3339_utc().encode()),
            (b"FSPL_CTIME_RFC3339_LOCAL", self.rfc3339_local().encode()),
        ]
        if filename is not None:
            out.append((b"FSPL_JOB_FILENAME", filename))
        if queuedir is not None:
            out.append((b"FSPL_JOB_QUEUEDIR", queuedir))
        if filename is not None and queuedir is not None:
            out.append((b"FSPL_JOB_FULLPATH", queuedir + b"/jobs/" + filename))
        if isinstance(self.cmd, Command):
            for i, p in enumerate(self.cmd.params, 1):
                out.append((b"FSPL_PARAM_%d" % i, p))
            for k, v in self.cmd.env:
                out.append((ENV_PREFIX + k, v))
        return out

    def render(self, filename: bytes | None = None, queuedir: bytes | None = None) -> bytes:
        """``KEY=value`` lines, as queue-info and stdin-info print them."""
        return b"".join(k + b"=" + v + b"\n" for k, v in self.env_vars(filename, queuedir))

    @property
    def kind(self) -> str:
        return "Command" if isinstance(self.cmd, Command) else self.cmd


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar, ``days`` after 1970-01-01
    (H. Hinnant's algorithm: exact integers for any year, unlike :mod:`datetime`)."""
    z = days + 719468
    era, doe = divmod(z, 146097)
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


_GREGORIAN_CYCLE = 146097 * 86400  # 400 years: calendar and weekdays repeat


def _tz_is_rule() -> bool:
    """Whether $TZ is a POSIX rule (``CET-1CEST,M3.5.0,M10.5.0/3``) rather than a zone
    file: the C library reads it as a file first, as chrono does."""
    tz = os.environ.get("TZ", "").removeprefix(":")
    if not tz:
        return False
    base = os.environ.get("TZDIR") or "/usr/share/zoneinfo"
    return not os.path.isfile(tz if tz.startswith("/") else os.path.join(base, tz))


def _local_offset(secs: int) -> int:
    """The local UTC offset (seconds) at ``secs``, as chrono finds it.  glibc applies a
    POSIX $TZ rule's DST only from 1970 on; chrono applies it in every year, so an earlier
    instant is moved ahead by whole 400-year cycles (the rule gives the same offset)."""
    if secs < 0 and _tz_is_rule():
        secs += -(secs // _GREGORIAN_CYCLE) * _GREGORIAN_CYCLE
    return time.localtime(secs).tm_gmtoff


def _rfc3339(secs: int, nanos: int, *, local: bool) -> str:
    """A ctime as fspl (chrono's ``to_rfc3339_opts(Secs, …)``) writes it: ``Z`` in UTC,
    else the local ``±HH:MM`` with the offset's seconds dropped (old local mean times such
    as +09:18:59); a year outside 0..9999 gets a sign and at least four digits
    (``+10000``, ``-0001``); nanoseconds of 10⁹ and more (a leap second) add one to the
    seconds field without carrying (``23:59:60``, or ``00:00:01`` for (0, 10⁹)).
    Computed with integers: :mod:`datetime` stops at years 1 and 9999."""
    offset = 0
    if _SECS_MIN <= secs <= _SECS_MAX and local:
        offset = _local_offset(secs)
    if not (_SECS_MIN <= secs + offset <= _SECS_MAX and _SECS_MIN <= secs <= _SECS_MAX
            and nanos <= _NANOS_SHOWN_MAX):
        where = "local time" if local else "UTC"
        raise PacketError(f"ctime ({secs} s, {nanos} ns) cannot be shown as a date in {where} "
                          "(fspl's range is the years -262144 to 262143)")
    days, sod = divmod(secs + offset, 86400)
    y, mo, d = _civil_from_days(days)
    hh, rem = divmod(sod, 3600)
    mi, ss = divmod(rem, 60)
    if nanos >= 1_000_000_000:
        ss += 1
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    if not local:
        zone = "Z"
    else:
        a = abs(offset)
        zone = f"{'-' if offset < 0 else '+'}{a // 3600:02d}:{a // 60 % 60:02d}"
    return f"{year}-{mo:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}{zone}"


# -- encoding ----------------------------------------------------------------------
def _bytes_as_array(b: bytes) -> list[int]:
    return list(b)


def encode_meta(meta: Meta) -> bytes:
    if isinstance(meta.cmd, Command):
        cmd: Any = {"Command": {
            "params": [_bytes_as_array(p) for p in meta.cmd.params],
            "env": [[_bytes_as_array(k), _bytes_as_array(v)] for k, v in meta.cmd.env],
        }}
    elif meta.cmd in ("NOP", "Fail"):
        cmd = meta.cmd
    else:
        raise ValueError(f"bad cmd_type {meta.cmd!r}")
    if not 0 <= meta.seq <= _U64:
        raise ValueError("seq out of range")
    return msgpack.packb({"seq": meta.seq, "ctime": [meta.ctime[0], meta.ctime[1]],
                          "cmd_type": cmd})


def encode_header(meta: Meta) -> bytes:
    """The prefix and metadata: everything before the payload."""
    m = encode_meta(meta)
    head = struct.pack(">12sHQI", MAGIC, VERSION, len(m), zlib.crc32(m))
    return head + struct.pack(">I", zlib.crc32(head)) + m


# -- decoding ----------------------------------------------------------------------
def decode_prefix(prefix: bytes) -> tuple[int, int]:
    """Check the 30-byte prefix; return (metadata length, metadata CRC)."""
    if len(prefix) < PREFIX_LEN:
        raise PacketError(f"truncated packet: {len(prefix)} of {PREFIX_LEN} header bytes")
    magic, version, n, metacrc, prefcrc = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise PacketError("not a Filespooler packet (bad magic)")
    if version != VERSION:
        raise PacketError(f"unsupported packet version {version} (only 1 is known)")
    if zlib.crc32(prefix[:26]) != prefcrc:
        raise PacketError("header CRC-32 mismatch")
    if n > MAX_META_LEN:
        raise PacketError(f"metadata length {n} exceeds the limit of {MAX_META_LEN} bytes")
    return n, metacrc


def _as_bytes(v: Any, what: str) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    if isinstance(v, list):
        try:
            return bytes(v)
        except (TypeError, ValueError):
            pass
    raise PacketError(f"metadata: {what} is not a byte string")


def _as_int(v: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PacketError(f"metadata: {what} is not an integer in range")
    return v


def _field(m: Any, key: bytes, idx: int, what: str) -> Any:
    # serde accepts a struct as a map with named fields or as an array in field order.
    if isinstance(m, dict):
        if key not in m:
            raise PacketError(f"metadata: missing {what}")
        return m[key]
    if isinstance(m, list) and len(m) > idx:
        return m[idx]
    raise PacketError(f"metadata: missing {what}")


def _decode_cmd(c: Any) -> CmdType:
    if isinstance(c, bytes) and c in (b"NOP", b"Fail"):
        return c.decode()
    if isinstance(c, dict) and len(c) == 1:
        (k, v), = c.items()
        if k in (b"NOP", b"Fail") and v in (None, [], {}):
            return k.decode()
        if k == b"Command":
            params = _field(v, b"params", 0, "params")
            env = _field(v, b"env", 1, "env")
            if not isinstance(params, list) or not isinstance(env, list):
                raise PacketError("metadata: params/env are not lists")
            pairs = []
            for e in env:
                if not isinstance(e, list) or len(e) != 2:
                    raise PacketError("metadata: env entry is not a pair")
                pairs.append((_as_bytes(e[0], "env key"), _as_bytes(e[1], "env value")))
            return Command(tuple(_as_bytes(p, "param") for p in params), tuple(pairs))
    raise PacketError("metadata: unknown cmd_type")


def decode_meta(data: bytes) -> Meta:
    try:
        m = msgpack.unpackb(data, raw=True, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise PacketError(f"metadata is not valid MessagePack ({type(e).__name__})") from None
    seq = _as_int(_field(m, b"seq", 0, "seq"), 0, _U64, "seq")
    ct = _field(m, b"ctime", 1, "ctime")
    if not isinstance(ct, list) or len(ct) != 2:
        raise PacketError("metadata: ctime is not a (secs, nanos) pair")
    secs = _as_int(ct[0], _I64_MIN, _I64_MAX, "ctime seconds")  # as fspl: (i64, u32)
    nanos = _as_int(ct[1], 0, _U32, "ctime nanoseconds")
    return Meta(seq, (secs, nanos), _decode_cmd(_field(m, b"cmd_type", 2, "cmd_type")))


def read_header(read: Callable[[int], bytes]) -> tuple[Meta, int]:
    """Read exactly one header through ``read(n)`` (which returns fewer bytes only at end
    of input); return (meta, header length).  The payload is not touched."""
    prefix = read(PREFIX_LEN)
    n, metacrc = decode_prefix(prefix)
    return _checked_meta(read(n), n, metacrc), PREFIX_LEN + n


def _checked_meta(data: bytes, n: int, metacrc: int) -> Meta:
    """The metadata block ``data`` (which should be ``n`` bytes with CRC ``metacrc``)
    checked and decoded."""
    if len(data) != n:
        raise PacketError(f"truncated packet: metadata has {len(data)} of {n} bytes")
    if zlib.crc32(data) != metacrc:
        raise PacketError("metadata CRC-32 mismatch")
    return decode_meta(data)


def read_header_fd(fd: int) -> tuple[Meta, int]:
    """Read a header from a raw descriptor, leaving its offset at the payload."""
    return read_header(lambda n: read_exact(fd, n))


def read_header_file(f: BinaryIO) -> tuple[Meta, int]:
    """Read a header from a binary file object (buffered is fine if the caller keeps
    reading from the same object)."""

    def rd(n: int) -> bytes:
        parts = []
        while n > 0:
            b = f.read(n)
            if not b:
                break
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    return read_header(rd)


_FIRST_READ = 64 << 10


def read_header_path(path: str | os.PathLike[str]) -> Meta:
    """The header of a job file (for scans): one read covers the usual small header."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.read(fd, _FIRST_READ)
        if len(head) >= PREFIX_LEN:  # the usual case: the whole header in that read
            n, metacrc = decode_prefix(head)
            end = PREFIX_LEN + n
            if end <= len(head):
                return _checked_meta(head[PREFIX_LEN:end], n, metacrc)
        pos = 0

        def rd(n: int) -> bytes:
            nonlocal pos
            out = head[pos:pos + n]
            pos += len(out)
            if len(out) < n and len(head) == _FIRST_READ:  # a big header: read the rest
                out += read_exact(fd, n - len(out))
            return out

        return read_header(rd)[0]
    finally:
        os.close(fd)


def make_command(params: Iterable[bytes] = (), env: Iterable[tuple[bytes, bytes]] = ()) -> Command:
    return Command(tuple(params), tuple(env))


def env_from_environ(environ: Iterable[tuple[bytes, bytes]] | None = None) -> tuple[tuple[bytes, bytes], ...]:
    """The FSPL_SET_* variables of an environment (prefix stripped), in its order."""
    items = os.environb.items() if environ is None else environ
    return tuple((k[len(ENV_PREFIX):], v) for k, v in items if k.startswith(ENV_PREFIX))
