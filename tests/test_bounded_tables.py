"""drop_oldest: a table of the latest entries trimmed, oldest first, in one pass."""

from __future__ import annotations

from corral.bounded_tables import drop_oldest


def test_the_oldest_entries_go_and_the_order_stays() -> None:
    table = dict.fromkeys(["a", "b", "c", "d", "e"])
    drop_oldest(table, 3)
    assert list(table) == ["c", "d", "e"]
    drop_oldest(table, 3)  # at the limit: nothing goes
    assert list(table) == ["c", "d", "e"]
    table.update(dict.fromkeys(["d", "f"]))  # a key seen again keeps its place
    drop_oldest(table, 2)
    assert list(table) == ["e", "f"]
    drop_oldest(table, 0)
    assert table == {}


def test_many_evictions_at_once() -> None:
    table = dict.fromkeys(str(n) for n in range(120_000))
    drop_oldest(table, 20_000)
    assert len(table) == 20_000 and next(iter(table)) == "100000"
