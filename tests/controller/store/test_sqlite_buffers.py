"""Reading buffers back from the SQLite store's file (corral/controller/store/
sqlite_buffers.py): cut where their lengths say, joined from parts, and a damaged store
reported, never a short buffer. Through the store: test_store_large.py and
test_store_request_buffers.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from corral.controller.store.sqlite_buffers import read_chunks, read_request_buffers, split
from corral.controller.store.sqlite_schema import (
    INSERT_CHUNK,
    INSERT_REQUEST_PART,
    READ_REQUEST_PARTS,
    connect,
    prepare,
)
from corral.errors import StoreError


def test_split_cuts_at_the_lengths_and_keeps_a_single_buffer_whole() -> None:
    data = b"abcdefgh"
    assert split(data, [8])[0] is data
    assert split(data, [3, 0, 5]) == [b"abc", b"", b"defgh"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "tasks.db"
    with closing(connect(f"file:{path}?mode=rwc")) as connection:
        prepare(connection, path, read_only=False, max_size=None, incremental_vacuum=False)
        yield connection


def test_chunks_are_joined_per_buffer_and_a_missing_one_is_damage(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    db.executemany(INSERT_CHUNK, [("m", 0, b"aaa"), ("m", 1, b"bb"), ("m", 2, b"cccc")])
    assert read_chunks(db, tmp_path, "m", [5, 4]) == [b"aaabb", b"cccc"]
    db.execute("DELETE FROM buffer_chunks WHERE part = 2")
    with pytest.raises(StoreError, match="damaged: a buffer of m should hold 4 bytes"):
        read_chunks(db, tmp_path, "m", [5, 4])


def test_a_request_without_its_row_blob_is_read_from_its_parts(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    """A request of schema version 2 (or past the chunk size): parts, not the row's BLOB."""
    db.execute("INSERT INTO tasks (msg_id) VALUES ('m')")
    db.executemany(INSERT_REQUEST_PART, [("m", 0, b"x"), ("m", 1, b"yz")])  # none spans two
    (seq,) = db.execute("SELECT seq FROM tasks WHERE msg_id = 'm'").fetchone()
    for inline in (True, False):
        assert read_request_buffers(db, tmp_path, seq, "m", [1, 2], inline=inline) == [
            b"x",
            b"yz",
        ]
    assert read_chunks(db, tmp_path, "m", [3], READ_REQUEST_PARTS) == [b"xyz"]
