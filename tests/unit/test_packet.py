"""The packet codec: encode/decode, every error path, and property tests."""

from __future__ import annotations

import io
import os
import struct
import zlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fspl_gateway.core.errors import PacketError
from fspl_gateway.core.packet import (
    MAGIC,
    MAX_META_LEN,
    PREFIX_LEN,
    Command,
    Meta,
    decode_meta,
    decode_prefix,
    encode_header,
    encode_meta,
    env_from_environ,
    read_header,
    read_header_fd,
    read_header_file,
    read_header_path,
)


def _prefix(meta_bytes: bytes, *, magic: bytes = MAGIC, version: int = 1,
            length: int | None = None, metacrc: int | None = None) -> bytes:
    n = len(meta_bytes) if length is None else length
    crc = zlib.crc32(meta_bytes) if metacrc is None else metacrc
    head = struct.pack(">12sHQI", magic, version, n, crc)
    return head + struct.pack(">I", zlib.crc32(head))


def _packet(meta_obj: object) -> bytes:
    m = msgpack.packb(meta_obj)
    return _prefix(m) + m


def _reader(data: bytes):  # read(n) over bytes, short only at the end
    bio = io.BytesIO(data)
    return bio.read


CMD = Command((b"a", b"b c", b"\xff\x00"), ((b"FOO", b"bar"), (b"ZED", b""), (b"A", b"1")))


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["NOP", "Fail", CMD, Command()])
def test_round_trip(cmd: object) -> None:
    meta = Meta(seq=42, ctime=(1651970311, 425412511), cmd=cmd)  # type: ignore[arg-type]
    head = encode_header(meta)
    got, n = read_header(_reader(head + b"payload"))
    assert got == meta
    assert n == len(head)


def test_header_layout() -> None:
    meta = Meta(seq=7, ctime=(1, 2), cmd="NOP")
    head = encode_header(meta)
    magic, version, n, metacrc, prefcrc = struct.unpack(">12sHQII", head[:30])
    assert (magic, version, n) == (MAGIC, 1, len(head) - 30)
    assert metacrc == zlib.crc32(head[30:])
    assert prefcrc == zlib.crc32(head[:26])
    assert msgpack.unpackb(head[30:]) == {"seq": 7, "ctime": [1, 2], "cmd_type": "NOP"}


def test_byte_strings_written_as_arrays_env_order_kept() -> None:
    m = msgpack.unpackb(encode_meta(Meta(1, (5, 6), CMD)))
    c = m["cmd_type"]["Command"]
    assert c["params"] == [[97], [98, 32, 99], [255, 0]]
    assert [bytes(k) for k, _ in c["env"]] == [b"FOO", b"ZED", b"A"]  # order as given
    assert list(m) == ["seq", "ctime", "cmd_type"]


@pytest.mark.parametrize("form", ["bin", "str", "array"])
def test_byte_string_forms_accepted(form: str) -> None:
    def conv(b: bytes) -> object:
        return {"bin": b, "str": b.decode(), "array": list(b)}[form]

    obj = {"seq": 3, "ctime": [10, 20], "cmd_type": {"Command": {
        "params": [conv(b"x y")], "env": [[conv(b"K"), conv(b"v=1")]]}}}
    meta = decode_meta(msgpack.packb(obj, use_bin_type=True))
    assert meta.cmd == Command((b"x y",), ((b"K", b"v=1"),))


def test_struct_as_array_accepted() -> None:
    # serde also reads a struct written as an array in field order
    meta = decode_meta(msgpack.packb([9, [1, 2], "Fail"]))
    assert meta == Meta(9, (1, 2), "Fail")


def test_env_vars_order_and_render() -> None:
    meta = Meta(45, (1651970311, 425412511), Command((b"hithere",), ((b"FOO", b"bar"),)))
    out = meta.render(b"fspl-x.fspl", b"/tmp/bar").decode()
    keys = [line.split("=", 1)[0] for line in out.splitlines()]
    assert keys == ["FSPL_SEQ", "FSPL_CTIME_SECS", "FSPL_CTIME_NANOS", "FSPL_CTIME_RFC3339_UTC",
                    "FSPL_CTIME_RFC3339_LOCAL", "FSPL_JOB_FILENAME", "FSPL_JOB_QUEUEDIR",
                    "FSPL_JOB_FULLPATH", "FSPL_PARAM_1", "FSPL_SET_FOO"]
    assert "FSPL_CTIME_RFC3339_UTC=2022-05-08T00:38:31Z\n" in out
    assert "FSPL_JOB_FULLPATH=/tmp/bar/jobs/fspl-x.fspl\n" in out
    assert "FSPL_SEQ" in meta.render().decode() and "FSPL_JOB" not in meta.render().decode()


def test_rfc3339_local_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    meta = Meta(1, (1651970311, 0), "NOP")
    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        assert meta.rfc3339_local() == "2022-05-07T19:38:31-05:00"
    finally:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
    assert meta.rfc3339_local() == "2022-05-08T00:38:31+00:00"


def test_env_from_environ_strips_prefix_keeps_order() -> None:
    env = [(b"PATH", b"/bin"), (b"FSPL_SET_B", b"2"), (b"FSPL_SET_A", b"1"), (b"FSPL_SETX", b"no")]
    assert env_from_environ(env) == ((b"B", b"2"), (b"A", b"1"))


def test_encode_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        encode_meta(Meta(-1, (0, 0), "NOP"))
    with pytest.raises(ValueError):
        encode_meta(Meta(1 << 64, (0, 0), "NOP"))
    with pytest.raises(ValueError):
        encode_meta(Meta(1, (0, 0), "Bogus"))


# -- error paths ---------------------------------------------------------------------------
GOOD = encode_header(Meta(5, (100, 200), CMD))


def _reprefix(head: bytes, **kw: object) -> bytes:
    return _prefix(head[30:], **kw) + head[30:]  # type: ignore[arg-type]


@pytest.mark.parametrize("data,msg", [
    (b"", "truncated"),
    (GOOD[:29], "truncated"),
    (b"*FILESPOOLEX" + GOOD[12:], "bad magic"),
    (_reprefix(GOOD, version=2), "version 2"),
    (GOOD[:26] + bytes([GOOD[26] ^ 1]) + GOOD[27:], "header CRC"),
    (GOOD[:40] + bytes([GOOD[40] ^ 0x20]) + GOOD[41:], "metadata CRC"),
    (GOOD[:-1], "truncated packet: metadata"),
    (GOOD[:31], "truncated packet: metadata"),
])
def test_decode_errors(data: bytes, msg: str) -> None:
    with pytest.raises(PacketError, match=msg):
        read_header(_reader(data))


@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, MAX_META_LEN + 1, 2 << 30])
def test_huge_metadata_length_refused_without_allocating(length: int) -> None:
    data = _prefix(b"", length=length)
    asked: list[int] = []
    bio = io.BytesIO(data)

    def rd(n: int) -> bytes:
        asked.append(n)
        return bio.read(n)

    with pytest.raises(PacketError, match="exceeds the limit"):
        read_header(rd)
    assert asked == [PREFIX_LEN]  # never asked for the metadata bytes


def test_max_meta_len_itself_is_allowed_by_prefix() -> None:
    n, _ = decode_prefix(_prefix(b"", length=MAX_META_LEN))
    assert n == MAX_META_LEN


@pytest.mark.parametrize("obj", [
    5, "NOP", [], {}, {"seq": 1}, {"seq": 1, "ctime": [1, 2]},
    {"seq": -1, "ctime": [1, 2], "cmd_type": "NOP"},
    {"seq": "1", "ctime": [1, 2], "cmd_type": "NOP"},
    {"seq": True, "ctime": [1, 2], "cmd_type": "NOP"},
    {"seq": 1, "ctime": [1], "cmd_type": "NOP"},
    {"seq": 1, "ctime": 5, "cmd_type": "NOP"},
    {"seq": 1, "ctime": [1, -1], "cmd_type": "NOP"},
    {"seq": 1, "ctime": [1 << 63, 0], "cmd_type": "NOP"},  # fspl: (i64, u32)
    {"seq": 1, "ctime": [1, 1 << 32], "cmd_type": "NOP"},
    {"seq": 1, "ctime": [1, 2], "cmd_type": "Bogus"},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {"params": 1, "env": []}}},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {"params": [], "env": [[b"k"]]}}},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {"params": [[256]], "env": []}}},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {"params": [1.5], "env": []}}},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {"params": []}}},
    {"seq": 1, "ctime": [1, 2], "cmd_type": {"Command": {}, "NOP": None}},
])
def test_wrong_shape_metadata(obj: object) -> None:
    with pytest.raises(PacketError):
        read_header(_reader(_packet(obj)))


def test_not_msgpack_metadata() -> None:
    with pytest.raises(PacketError, match="not valid MessagePack"):
        read_header(_reader(_prefix(b"\xc1\xc1") + b"\xc1\xc1"))
    with pytest.raises(PacketError, match="not valid MessagePack"):  # trailing data
        read_header(_reader(_prefix(b"\x01\x02") + b"\x01\x02"))


def test_readers_stop_at_payload(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "p.fspl")
    with open(path, "wb") as f:
        f.write(GOOD + b"PAYLOAD")
    fd = os.open(path, os.O_RDONLY)
    try:
        meta, n = read_header_fd(fd)
        assert n == len(GOOD) and os.read(fd, 100) == b"PAYLOAD"
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert read_header_file(f)[0] == meta
        assert f.read() == b"PAYLOAD"
    assert read_header_path(path) == meta


# -- property tests ------------------------------------------------------------------------
byte_strings = st.binary(max_size=40)
commands = st.builds(
    Command,
    st.lists(byte_strings, max_size=6).map(tuple),
    st.lists(st.tuples(byte_strings, byte_strings), max_size=6).map(tuple),
)
metas = st.builds(
    Meta,
    st.integers(0, (1 << 64) - 1),
    st.tuples(st.integers(-62135596800, 253402300799), st.integers(0, 999_999_999)),
    st.one_of(st.just("NOP"), st.just("Fail"), commands),
)


@settings(max_examples=300, deadline=None)
@given(metas, st.binary(max_size=64))
def test_property_round_trip(meta: Meta, payload: bytes) -> None:
    head = encode_header(meta)
    bio = io.BytesIO(head + payload)
    got, n = read_header(bio.read)
    assert got == meta and n == len(head)
    assert bio.read() == payload


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    head = bytearray(encode_header(draw(metas)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "fix_crc"]))
        if op == "flip" and head:
            i = draw(st.integers(0, len(head) - 1))
            head[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and head:
            i = draw(st.integers(0, len(head) - 1))
            head[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del head[draw(st.integers(0, len(head))):]
        elif op == "extend":
            head += draw(st.binary(min_size=1, max_size=16))
        elif op == "fix_crc" and len(head) >= 30:
            # make the CRCs right again so the corruption reaches the MessagePack decoder
            meta_bytes = bytes(head[30:])
            n = struct.unpack(">Q", head[14:22])[0]
            if n <= len(meta_bytes):
                head[22:26] = struct.pack(">I", zlib.crc32(meta_bytes[:n]))
            head[26:30] = struct.pack(">I", zlib.crc32(bytes(head[:26])))
    return bytes(head)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_property_corruption_only_packet_error(data: bytes) -> None:
    try:
        meta, n = read_header(io.BytesIO(data).read)
    except PacketError as e:
        assert str(e)  # a message, one line
        assert "\n" not in str(e)
        return
    # decoded: the result must be self-consistent
    assert 30 <= n <= len(data)
    assert 0 <= meta.seq < 1 << 64
    assert 0 <= meta.ctime[1] < 1 << 32
    assert meta.cmd in ("NOP", "Fail") or isinstance(meta.cmd, Command)
    try:
        assert meta.render()  # renderable, or one PacketError line for a ctime fspl cannot show
    except PacketError as e:
        assert "cannot be shown as a date" in str(e) and "\n" not in str(e)
    again = decode_meta(data[30:n])
    assert again == meta
    # re-encoding what we decoded gives a header that decodes to the same meta
    assert read_header(io.BytesIO(encode_header(meta)).read)[0] == meta


def test_read_header_path_handles_headers_past_the_first_read(tmp_path) -> None:
    """Scans read a header with one 64 KiB read; a bigger header (many params) must still
    decode, and a truncated one must still fail."""
    import pytest as _pytest

    from fspl_gateway.core.errors import PacketError as _PacketError
    from fspl_gateway.core.packet import Meta as _Meta
    from fspl_gateway.core.packet import encode_header as _enc
    from fspl_gateway.core.packet import make_command as _mk
    from fspl_gateway.core.packet import read_header_path as _rhp

    meta = _Meta(seq=7, ctime=(1, 2), cmd=_mk([b"p" * 1000] * 200))
    data = _enc(meta)
    assert len(data) > 64 << 10
    p = tmp_path / "fspl-big.fspl"
    p.write_bytes(data + b"payload")
    assert _rhp(p) == meta
    p.write_bytes(data[:-1])
    with _pytest.raises(_PacketError):
        _rhp(p)
