"""FSPL_CTIME_RFC3339_*: the dates fspl (chrono) shows for every ctime it can show, and a
one-line PacketError for those it cannot (fspl panics on them).  The expected strings are
what the real fspl 1.2.2 printed; tests/interop/test_edges.py compares with it live."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fspl_gateway.core.errors import PacketError
from fspl_gateway.core.packet import Command, Meta
from fspl_gateway.core.process import ProcessOpts, run_job


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    def set_tz(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_tz
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def _times(secs: int, nanos: int = 0) -> tuple[str, str]:
    m = Meta(1, (secs, nanos), "NOP")
    return m.rfc3339_utc(), m.rfc3339_local()


@pytest.mark.parametrize(("zone", "ctime", "utc", "local"), [
    # the edges of Python's datetime: east of UTC past 9999, west of it before year 1
    ("Asia/Tokyo", (253402300799, 0), "9999-12-31T23:59:59Z", "+10000-01-01T08:59:59+09:00"),
    ("America/Los_Angeles", (-62135596800, 0), "0001-01-01T00:00:00Z",
     "0000-12-31T16:07:02-07:52"),  # local mean time -7:52:58: seconds of the offset dropped
    ("Asia/Tokyo", (-62135596800, 0), "0001-01-01T00:00:00Z", "0001-01-01T09:18:59+09:18"),
    ("UTC", (253402300800, 0), "+10000-01-01T00:00:00Z", "+10000-01-01T00:00:00+00:00"),
    ("UTC", (-62135596801, 0), "0000-12-31T23:59:59Z", "0000-12-31T23:59:59+00:00"),
    ("UTC", (-8334632851200, 0), "-262144-01-01T00:00:00Z", "-262144-01-01T00:00:00+00:00"),
    ("America/Los_Angeles", (8210298412799, 0), "+262143-12-31T23:59:59Z",
     "+262143-12-31T15:59:59-08:00"),
    # nanoseconds ≥ 10⁹: one more second in the seconds field, never carried
    ("Asia/Tokyo", (253402300799, 1_000_000_000), "9999-12-31T23:59:60Z",
     "+10000-01-01T08:59:60+09:00"),
    ("America/Los_Angeles", (59, 1_500_000_000), "1970-01-01T00:00:60Z",
     "1969-12-31T16:00:60-08:00"),
    ("UTC", (0, 1_999_999_999), "1970-01-01T00:00:01Z", "1970-01-01T00:00:01+00:00"),
    ("UTC", (58, 1_000_000_000), "1970-01-01T00:00:59Z", "1970-01-01T00:00:59+00:00"),
    ("America/Chicago", (1651970311, 425412511), "2022-05-08T00:38:31Z",
     "2022-05-07T19:38:31-05:00"),
])
def test_rfc3339_as_fspl(tz, zone: str, ctime: tuple[int, int], utc: str, local: str) -> None:
    tz(zone)
    assert _times(*ctime) == (utc, local)


@pytest.mark.parametrize(("zone", "ctime", "where"), [
    ("UTC", (0, 2_000_000_000), "UTC"),
    ("UTC", (8210298412800, 0), "UTC"),
    ("UTC", (-8334632851201, 0), "UTC"),
    ("UTC", (-(1 << 63), 0), "UTC"),
    ("UTC", ((1 << 63) - 1, (1 << 32) - 1), "UTC"),
    ("Asia/Tokyo", (8210298412799, 0), "local time"),  # UTC fine, local past the range
    ("America/Los_Angeles", (-8334632851200, 0), "local time"),
])
def test_ctime_fspl_cannot_show_is_one_line_error(tz, zone: str, ctime: tuple[int, int],
                                                  where: str) -> None:
    tz(zone)
    m = Meta(1, ctime, "NOP")
    with pytest.raises(PacketError, match=f"cannot be shown as a date in {where}") as e:
        m.render()
    assert "\n" not in str(e.value)


def test_posix_tz_rule_applies_before_1970_as_in_chrono(tz) -> None:
    """glibc keeps a $TZ rule's DST out of years before 1970; chrono (fspl) applies it."""
    tz("EST5EDT,M3.2.0,M11.1.0")
    july_1900 = -2192486400  # 1900-07-11T00:00:00Z
    assert _times(july_1900)[1] == "1900-07-10T20:00:00-04:00"
    assert _times(july_1900 + 180 * 86400)[1] == "1901-01-06T19:00:00-05:00"
    tz("America/New_York")  # a zone file: its own history (no DST in 1900)
    assert _times(july_1900)[1] == "1900-07-10T19:00:00-05:00"


def test_job_with_unshowable_ctime(tz) -> None:
    """NOP and Fail need no variables and behave as ever (fspl runs them too); a command
    job fails with the reason (fspl panics), so the on-error policy decides."""
    tz("UTC")
    opts = ProcessOpts(command="true")
    assert run_job(opts, Meta(1, (1 << 62, 0), "NOP"), None).success
    assert not run_job(opts, Meta(1, (1 << 62, 0), "Fail"), None).success
    res = run_job(opts, Meta(7, (1 << 62, 0), Command()), None)
    assert not res.success and "job 7: ctime" in res.status and "cannot be shown" in res.status
