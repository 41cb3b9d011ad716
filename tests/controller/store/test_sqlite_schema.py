"""The SQLite store's file (corral/controller/store/sqlite_schema.py): made, checked and
migrated on a bare connection, without a store around it. Through the store: opening in
test_store_sqlite.py, migrations in test_store_request_buffers.py."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from corral.controller.store.sqlite_schema import SCHEMA_VERSION, connect, prepare
from corral.errors import StoreError


def uri(path: Path, mode: str) -> str:
    return f"file:{path}?mode={mode}"


def tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_file_gets_every_table_in_wal_mode_and_its_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with closing(connect(uri(path, "rwc"))) as db:
        version = prepare(db, path, read_only=False, max_size=1 << 20, incremental_vacuum=True)
        assert version == SCHEMA_VERSION == 3
        assert {"tasks", "buffer_chunks", "request_buffers"} <= tables(db)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        assert db.execute("PRAGMA max_page_count").fetchone()[0] == (1 << 20) // page_size
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    with closing(connect(uri(path, "ro"))) as reader:  # and it reads as a store
        assert prepare(reader, path, read_only=True, max_size=None, incremental_vacuum=False) == 3


def test_a_file_that_is_not_a_store_is_refused_with_what_was_found(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with closing(connect(uri(empty, "ro"))) as db, pytest.raises(StoreError, match="no table"):
        prepare(db, empty, read_only=True, max_size=None, incremental_vacuum=False)
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as db:
        db.execute("CREATE TABLE tasks (x)")
        db.execute("PRAGMA user_version = 4")
        db.commit()
    for mode, read_only, readable in (("ro", True, "2 or 3"), ("rw", False, "3")):
        with (
            closing(connect(uri(newer, mode))) as db,
            pytest.raises(StoreError, match=f"schema version {readable} \\(found 4\\)"),
        ):
            prepare(db, newer, read_only=read_only, max_size=None, incremental_vacuum=False)
