"""The retention rule alone (no store, no sockets): sizes, durations, and what gets purged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.controller.store.retention import (
    GIB,
    LOW_WATER,
    MIB,
    Retention,
    RetentionSettings,
    completion_time,
    format_duration,
    format_size,
    not_stored_message,
    parse_duration,
    parse_size,
)
from corral.errors import StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("64M", 64 * MIB),
        ("64MB", 64 * MIB),
        ("64 MiB", 64 * MIB),
        ("2g", 2 * GIB),
        ("1.5k", 1536),
        ("none", None),
        ("unlimited", None),
        (5, 5),
        (None, None),
    ],
)
def test_parse_size(text: str | int | None, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "12 parsecs", "M", "1e9", "1.2.3M"])
def test_bad_sizes_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="64M"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("45s", 45.0), ("30m", 1800.0), ("12h", 43200.0), ("7d", 604800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration("none") is None


@pytest.mark.parametrize("text", ["soon", "-5s", "7 days", "h"])
def test_bad_durations_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="7d"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_formatted_durations_parse_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_formatting() -> None:
    assert format_size(64 * MIB) == "64 MiB"
    assert format_size(None) == "unlimited"
    assert format_size(12) == "12 B"
    assert format_duration(7 * 86400) == "7d"
    assert format_duration(None) == "unlimited"


def test_settings_name_the_flag_of_a_bad_value() -> None:
    with pytest.raises(StoreError, match="--result-ttl"):
        RetentionSettings.parse(ttl="tomorrow")
    with pytest.raises(StoreError, match="--store-size-limit"):
        RetentionSettings.parse(size_limit="lots")
    with pytest.raises(StoreError, match="cannot exceed"):
        RetentionSettings.parse(buffer_limit="2G", size_limit="1G")
    settings = RetentionSettings.parse(buffer_limit="1M", size_limit="none", ttl="1h")
    assert settings == RetentionSettings(buffer_limit=MIB, size_limit=None, ttl=3600.0)
    assert RetentionSettings.parse() == RetentionSettings()
    assert settings.describe() == {"buffer_limit": "1 MiB", "size_limit": "unlimited", "ttl": "1h"}


def test_large_buffers_get_a_marker_small_ones_do_not() -> None:
    retention = Retention(RetentionSettings(buffer_limit=100))
    assert retention.omitted([b"x" * 60, bytearray(40)]) is None
    marker = retention.omitted([b"x" * 60, memoryview(b"y" * 41)])
    assert marker == {"bytes": 101, "count": 2, "limit": 100}
    assert Retention(RetentionSettings(buffer_limit=None)).omitted([b"x" * 10**6]) is None
    message = not_stored_message("abc", marker)
    assert "abc" in message and "--store-buffer-limit" in message and "101 B" in message


def test_size_limit_purges_oldest_completed_first_down_to_low_water() -> None:
    clock = Clock()
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=1000), clock)
    assert retention.recorded("pending-old", 300, "pending") is None
    for index in range(6):
        clock.now += 1
        assert retention.recorded(f"m{index}", 100, "pending") is None
    # completion order, not submission order, decides which goes first; each reply past
    # 1000 bytes purges the oldest completed result, down to 90% of the limit
    purges = [retention.recorded(f"m{index}", 50, "ok") for index in (3, 1, 0, 2, 4, 5)]
    assert [p.msg_ids if p else None for p in purges] == [
        None,
        None,
        ["m3"],
        None,
        None,
        ["m1"],
    ]
    assert purges[2] is not None and purges[2].freed == 150
    assert "--store-size-limit" in purges[2].reason
    assert retention.total == 900
    assert list(retention.completed) == ["m0", "m2", "m4", "m5"]
    assert "pending-old" in retention.sizes
    assert retention.take_purged() == ["m3", "m1"]
    assert retention.take_purged() == []


def test_pending_records_are_never_purged_even_over_the_limit() -> None:
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=100))
    for index in range(5):
        assert retention.recorded(f"p{index}", 50, "pending") is None
    assert retention.total == 250
    purge = retention.recorded("done", 10, "error")
    assert purge is not None and purge.msg_ids == ["done"]
    assert set(retention.sizes) == {f"p{index}" for index in range(5)}


def test_low_water_batches_purges() -> None:
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=10_000))
    purges = [retention.recorded(f"m{index}", 100, "ok") for index in range(1000)]
    done = [purge for purge in purges if purge is not None]
    # each purge brings the total to 90%: about one purge per 10 results after the first
    assert len(done) <= 1000 // int(10_000 * (1 - LOW_WATER) / 100) + 1
    assert retention.total <= 10_000
    assert list(retention.completed)[-1] == "m999"


def test_ttl_purges_only_what_is_old_and_completed() -> None:
    clock = Clock()
    retention = Retention(RetentionSettings(ttl=60), clock)
    retention.recorded("old", 10, "pending")
    retention.recorded("old", 10, "ok")
    retention.recorded("running", 10, "pending")
    clock.now += 30
    retention.recorded("young", 10, "ok")
    assert retention.expired() is None
    clock.now += 31
    purge = retention.expired()
    assert purge is not None and purge.msg_ids == ["old"] and purge.freed == 20
    assert "--result-ttl" in purge.reason
    clock.now += 3600
    purge = retention.expired()
    assert purge is not None and purge.msg_ids == ["young"]
    assert set(retention.sizes) == {"running"}
    assert Retention(RetentionSettings(ttl=None), clock).expired() is None


def test_a_result_completed_again_becomes_the_newest() -> None:
    clock = Clock()
    retention = Retention(RetentionSettings(ttl=10), clock)
    retention.recorded("a", 1, "ok")
    retention.recorded("b", 1, "ok")
    clock.now += 5
    retention.recorded("a", 1, "ok")
    assert list(retention.completed) == ["b", "a"]
    clock.now += 6
    purge = retention.expired()
    assert purge is not None and purge.msg_ids == ["b"]


def test_forget_and_restore() -> None:
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=100))
    retention.restored("p", 40, None)
    retention.restored("a", 40, 5.0)
    retention.restored("b", 40, 6.0)
    purge = retention.over_limit()
    assert purge is not None and purge.msg_ids == ["a"]
    retention.forget(["b", "unknown"])
    assert retention.total == 40 and list(retention.sizes) == ["p"]


def test_completion_time() -> None:
    assert completion_time("1970-01-01T00:01:00+00:00", 0.0) == 60.0
    assert completion_time("garbage", 7.0) == 7.0
    assert completion_time(None, 7.0) == 7.0
