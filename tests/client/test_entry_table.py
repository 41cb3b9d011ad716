"""corral.client.entry_table: the plain mapping around the client's two msg_id tables'
entries, as each of them (MetadataTable, FutureTable) has it (a compiled build lets no
interpreted class subclass it, so the tables themselves are tested)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from corral.client.future_table import FutureTable
from corral.client.metadata import Metadata
from corral.client.metadata_table import MetadataTable
from corral.client.requestfuture import settled_future

TABLES: dict[str, tuple[Callable[[Any], Any], Callable[[Any, int], Any]]] = {
    "metadata": (MetadataTable, lambda lock, n: Metadata(engine_id=n)),
    "futures": (
        lambda lock: FutureTable(lambda call: call(), lock),
        lambda lock, n: settled_future(lambda call: call(), lock, n, False),
    ),
}


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_entries_are_kept_as_written_and_read_through_the_table(kind: str) -> None:
    make_table, make_value = TABLES[kind]
    lock = threading.RLock()
    table = make_table(lock)
    first, second = make_value(lock, 1), make_value(lock, 2)
    table["a"] = first
    table["b"] = second
    assert table.entries == {"a": first, "b": second}
    assert "a" in table and "c" not in table and 3 not in table
    assert len(table) == 2
    assert table["a"] is first
    assert table == {"a": first, "b": second} and table != {"a": first}
    with pytest.raises(TypeError):
        hash(table)
    del table["a"]
    assert list(table) == ["b"]


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_iteration_is_a_snapshot_entries_added_meanwhile_do_not_break_it(kind: str) -> None:
    make_table, make_value = TABLES[kind]
    lock = threading.RLock()
    table = make_table(lock)
    table["a"], table["b"] = make_value(lock, 1), make_value(lock, 2)
    seen = []
    for msg_id in table:
        table[msg_id + "+"] = make_value(lock, 0)  # the I/O thread adds requests meanwhile
        seen.append(msg_id)
    assert seen == ["a", "b"]
    assert len(table) == 4
