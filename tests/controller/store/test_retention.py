"""The retention rule alone (no store, no sockets): sizes, durations, and what gets purged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.controller.store.retention import (
    COMPACT_AT,
    GIB,
    LOW_WATER,
    MIB,
    PURGES_REMEMBERED,
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


class DictRetention:
    """The rule as two plain dicts (how Retention kept it until its compact table): the
    model the compact bookkeeping must agree with."""

    def __init__(self, settings: RetentionSettings, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self.total = 0
        self.sizes: dict[str, int] = {}
        self.completed: dict[str, float] = {}

    def recorded(self, msg_id: str, size: int, status: str | None) -> list[str]:
        self.sizes[msg_id] = self.sizes.get(msg_id, 0) + size
        self.total += size
        if status is not None:
            self.completed.pop(msg_id, None)
            if status != "pending":
                self.completed[msg_id] = self.clock()
        limit = self.settings.size_limit
        if limit is None or self.total <= limit:
            return []
        chosen, freed = [], 0
        for msg_id in self.completed:
            if self.total - freed <= limit * LOW_WATER:
                break
            chosen.append(msg_id)
            freed += self.sizes[msg_id]
        self.forget(chosen)
        return chosen

    def expired(self) -> list[str]:
        assert self.settings.ttl is not None
        chosen = [
            m for m, when in self.completed.items() if when <= self.clock() - self.settings.ttl
        ]
        self.forget(chosen)
        return chosen

    def forget(self, msg_ids: list[str]) -> None:
        for msg_id in msg_ids:
            self.total -= self.sizes.pop(msg_id, 0)
            self.completed.pop(msg_id, None)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pending", "ok", "size", "forget", "expire", "tick"]),
            st.integers(0, 40),
            st.integers(1, 300),
        ),
        max_size=300,
    )
)
def test_the_compact_bookkeeping_agrees_with_two_dicts(
    steps: list[tuple[str, int, int]],
) -> None:
    """Any mix of writes (pending, completed, completed again, size only), drops, expiries
    and time passing: the same totals, sizes, completion order and purges as the model."""
    clock = Clock()
    settings = RetentionSettings(buffer_limit=None, size_limit=3000, ttl=50)
    compact, model = Retention(settings, clock), DictRetention(settings, clock)
    for action, number, size in steps:
        msg_id = f"m{number}"
        if action == "tick":
            clock.now += size / 10
        elif action == "forget":
            compact.forget([msg_id, "never-seen"])
            model.forget([msg_id])
        elif action == "expire":
            purge = compact.expired()
            assert (purge.msg_ids if purge else []) == model.expired()
        else:
            status = None if action == "size" else action
            # the reply's copy of a msg_id is another string object than the request's
            purge = compact.recorded(msg_id.encode().decode(), size, status)
            assert (purge.msg_ids if purge else []) == model.recorded(msg_id, size, status)
        assert compact.total == model.total
        assert compact.sizes == model.sizes
        assert compact.completed == list(model.completed)
        assert len(compact) == len(model.sizes)


def test_the_completion_log_is_swept_when_most_of_it_is_stale() -> None:
    """Dropping most completed records (a purge of all, then more work) leaves the log no
    longer than the live records and a bounded slack, and no msg_id of a dropped record."""
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=None, ttl=None))
    count = 3 * COMPACT_AT
    for index in range(count):
        retention.recorded(f"t{index}", 10, "pending")
        retention.recorded(f"t{index}", 10, "ok")
    retention.forget([f"t{index}" for index in range(0, count, 4)])  # a quarter, spread
    assert len(retention.completed) == count - count // 4
    retention.forget([f"t{index}" for index in range(count) if index % 4])  # all the rest
    assert retention.total == 0 and len(retention) == 0
    retention.recorded("new", 10, "ok")
    assert retention.completed == ["new"]
    assert len(retention.log_entries()) <= COMPACT_AT
    assert set(retention.log_entries()) <= {f"t{index}" for index in range(count)} | {"new"}
    for _ in range(2 * COMPACT_AT):  # completed again and again: one entry counts each
        retention.recorded("again", 1, "ok")
    assert retention.completed == ["new", "again"]
    assert len(retention.log_entries()) <= 2 * COMPACT_AT + 2


def test_a_record_costs_one_table_entry_and_two_log_slots() -> None:
    """The bookkeeping's bytes per completed record, its msg_id string aside (the Hub's own
    tables hold the same object: the reply's, kept in place of the request's)."""
    retention = Retention(RetentionSettings())
    count = 20_000
    requests = [f"{index:032x}" for index in range(count)]
    replies = [msg_id.encode().decode() for msg_id in requests]  # equal, other objects
    for request_id, reply_id in zip(requests, replies, strict=True):
        retention.recorded(request_id, 1400, "pending")
        retention.recorded(reply_id, 1500, "ok")
    assert all(kept is reply for kept, reply in zip(retention.log_entries(), replies, strict=True))
    assert retention.footprint() / count < 120  # bytes; the two dicts took about 190


def test_purged_records_are_remembered_with_why_the_newest_kept() -> None:
    clock = Clock()
    retention = Retention(RetentionSettings(buffer_limit=None, size_limit=1000, ttl=60), clock)
    for index in range(12):
        retention.recorded(f"m{index}", 100, "ok")
    by_size = set(retention.why_purged)
    assert by_size and all("--store-size-limit" in why for why in retention.why_purged.values())
    clock.now += 61
    assert retention.expired() is not None
    aged = set(retention.why_purged) - by_size
    assert aged and all("--result-ttl" in retention.why_purged[m] for m in aged)
    assert len(retention.why_purged) == 12
    # bounded: past PURGES_REMEMBERED the oldest are forgotten
    for index in range(PURGES_REMEMBERED + 10):
        retention.recorded(f"n{index}", 100, "ok")
    assert len(retention.why_purged) == PURGES_REMEMBERED
    assert "m0" not in retention.why_purged
    assert next(reversed(retention.why_purged)).startswith("n")
