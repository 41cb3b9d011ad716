"""Results larger than one SQLite value (about 1 GB), or than one chunk, are kept when the buffer
limit admits them, by every backend alike: bit-exact, counted by the size limit, and their
chunks gone with the record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from corral.controller.store import RetentionSettings, SQLiteStore
from corral.controller.store.retention import MIB, OMITTED_FIELD
from corral.controller.store.sqlite_schema import CHUNK_BYTES
from corral.errors import StoreError
from tests.controller.store.conftest import Opener
from tests.controller.store.test_store_retention import reply, request_record

GIB = 1024 * MIB


def pattern(size: int, seed: int) -> bytes:
    """``size`` bytes that differ at every 8-byte word (a misplaced chunk shows)."""
    words = np.arange(seed, seed + size // 8 + 1, dtype=np.uint64)
    return words.view(np.uint8)[:size].tobytes()


def chunk_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM buffer_chunks").fetchone()
    db.close()
    return int(count)


@pytest.mark.timeout(240)
def test_a_result_of_several_chunks_is_kept_by_every_backend(open_bounded: Opener) -> None:
    big, other = pattern(CHUNK_BYTES + 12_345, 1), pattern(CHUNK_BYTES // 2, 7)
    store = open_bounded(RetentionSettings(buffer_limit=256 * MIB, size_limit=GIB, ttl=None))
    store.add_record("big", request_record("big"))
    store.update_record("big", reply([b"head", big, b"", other]))
    record = store.get_record("big")
    assert OMITTED_FIELD not in record
    assert record["result_buffers"] == [b"head", big, b"", other]
    assert store.stored_size() >= len(big) + len(other)
    store.update_record("big", reply([b"small"]))  # the chunks are replaced by one BLOB
    assert store.get_record("big")["result_buffers"] == [b"small"]


@pytest.mark.timeout(240)
def test_the_buffer_limit_still_decides_for_large_results(open_bounded: Opener) -> None:
    store = open_bounded(RetentionSettings(buffer_limit=CHUNK_BYTES, size_limit=GIB, ttl=None))
    store.add_record("over", request_record("over"))
    store.update_record("over", reply([bytes(CHUNK_BYTES + 1)]))
    record = store.get_record("over")
    assert record["result_buffers"] is None
    assert record[OMITTED_FIELD]["bytes"] == CHUNK_BYTES + 1


@pytest.mark.timeout(300)
def test_sqlite_keeps_a_result_larger_than_one_sqlite_value(tmp_path: Path) -> None:
    """Over SQLite's 1,000,000,000-byte limit on one value: refused before chunks."""
    path = tmp_path / "tasks.db"
    size = GIB + 4096  # a multiple of 8
    settings = RetentionSettings(buffer_limit=2 * GIB, size_limit=4 * GIB, ttl=None)
    data = np.arange(size // 8, dtype=np.uint64).view(np.uint8)  # no copy into bytes
    store = SQLiteStore(path, retention=settings)
    try:
        store.add_record("huge", request_record("huge"))
        store.update_record("huge", {**reply([b"head"]), "result_buffers": [b"head", data.data]})
        (head, stored) = store.get_record("huge")["result_buffers"]
        assert head == b"head" and len(stored) == size
        assert np.array_equal(np.frombuffer(stored, np.uint8), data)
        del stored
        counted = store.stored_size()
        assert size <= counted < size + MIB
    finally:
        store.close()
    reopened = SQLiteStore(path, retention=settings)  # counts the chunks again
    try:
        assert abs(reopened.stored_size() - counted) < MIB
        assert chunk_rows(path) == 1 + -(-size // CHUNK_BYTES)  # b"head" is one
        reopened.drop_records(["huge"])
        reopened.flush()
        assert chunk_rows(path) == 0 and reopened.stored_size() == 0
    finally:
        reopened.close()


def test_chunks_are_replaced_not_added_and_go_with_their_record(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    chunk = 1000
    store = SQLiteStore(path, retention=RetentionSettings(None, None, None), chunk_bytes=chunk)
    try:
        first, second = pattern(chunk + 1, 11), pattern(2 * chunk + 5, 13)
        store.add_record("m", request_record("m"))
        store.update_record("m", reply([first]))
        store.update_record("m", reply([second]))  # same batch or not: one set of chunks
        assert store.get_record("m")["result_buffers"] == [second]
        store.flush()
        assert chunk_rows(path) == 3
        store.update_record("m", {"status": "ok"})  # buffers untouched: chunks stay
        assert store.get_record("m")["result_buffers"] == [second]
        store.update_record("m", reply([first, first]))
        assert store.get_record("m")["result_buffers"] == [first, first]
        store.update_record("m", reply([]))
        store.flush()
        assert chunk_rows(path) == 0
        assert store.get_record("m")["result_buffers"] == []
        store.update_record("m", reply([second]))
        store.drop_records(["m"])
        store.flush()
        assert chunk_rows(path) == 0
    finally:
        store.close()


def test_a_damaged_chunk_is_reported_not_returned_short(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SQLiteStore(path, chunk_bytes=1000)
    try:
        store.add_record("m", reply([pattern(2500, 5)]))
        store.flush()
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM buffer_chunks WHERE part = 2")
        db.close()
        with pytest.raises(StoreError, match="damaged"):
            store.get_record("m")
    finally:
        store.close()


def test_chunk_sizes_outside_the_range_are_refused(tmp_path: Path) -> None:
    for bad in (0, CHUNK_BYTES + 1):
        with pytest.raises(StoreError, match="chunk_bytes"):
            SQLiteStore(tmp_path / "tasks.db", chunk_bytes=bad)
