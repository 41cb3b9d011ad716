"""The SQLite result store's file: its tables, triggers and schema versions, the fixed
statements on them, and opening a connection that makes or migrates them.

The layout (docs in :mod:`.sqlite`): one ``tasks`` row per record, ordered by ``seq``; the
known fields as columns in :data:`FIELD_COLUMNS` order, each with its bit in ``present``;
result buffers in one BLOB or as chunks in ``buffer_chunks``; a request's buffers in the
row's ``request_data`` or as parts in ``request_buffers``; triggers remove a row's chunks and
parts with it. Schema version 3; a store of version 1 or 2 gains the columns and the table in
place when opened for writing (:func:`prepare`). How a record becomes a row is
:mod:`.sqlite_rows`; the store that owns the connections is :mod:`.sqlite`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from corral.errors import StoreError

from .base import (
    BOOL_FIELDS,
    BUFFER_FIELDS,
    BUFFERS_FIELD,
    DICT_FIELDS,
    INT_FIELDS,
    REQUEST_BUFFERS_FIELD,
    TEXT_FIELDS,
)

SCHEMA_VERSION = 3
#: Known fields other than msg_id, in column order; a field's position is its bit in the
#: ``present`` column, which tells a field set to None from a field never set (new fields
#: go last, so that the bits of a store made by an earlier version keep their meaning).
FIELD_COLUMNS = (
    *TEXT_FIELDS[1:],
    *INT_FIELDS,
    *BOOL_FIELDS,
    *DICT_FIELDS,
    BUFFERS_FIELD,
    REQUEST_BUFFERS_FIELD,
)
PRESENT_BITS = {name: 1 << index for index, name in enumerate(FIELD_COLUMNS)}
_SQL_TYPES = {
    **dict.fromkeys(TEXT_FIELDS, "TEXT"),
    **dict.fromkeys((*INT_FIELDS, *BOOL_FIELDS), "INTEGER"),
    **dict.fromkeys(DICT_FIELDS, "TEXT"),
}
SCALAR_COLUMNS = tuple(name for name in FIELD_COLUMNS if name not in BUFFER_FIELDS)
SCHEMA = f"""
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    present INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{name} {_SQL_TYPES[name]}" for name in SCALAR_COLUMNS)},
    extra TEXT,
    buffer_lengths TEXT,
    result_buffers BLOB,
    request_buffer_lengths TEXT,
    request_data BLOB
)"""
#: From schema version 1 (no request buffers) to 2: one column more, added in place.
MIGRATE_FROM_1 = "ALTER TABLE tasks ADD COLUMN request_buffer_lengths TEXT"
#: From 2 (every request's buffers in ``request_buffers``) to 3: their BLOB in the row, added
#: in place; rows written before keep their parts, which reads still find (NULL here).
MIGRATE_FROM_2 = "ALTER TABLE tasks ADD COLUMN request_data BLOB"
#: The column of a request's buffers joined (NULL: in ``request_buffers``, or none).
REQUEST_DATA = "request_data"
#: Buffers larger than this in all are stored as chunks of at most this size (SQLite's own
#: limit on one value is 1,000,000,000 bytes by default).
CHUNK_BYTES: Final = 64 << 20
CHUNKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS buffer_chunks (
    msg_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (msg_id, part)
);
CREATE TRIGGER IF NOT EXISTS buffer_chunks_replaced
AFTER UPDATE OF buffer_lengths ON tasks
WHEN old.result_buffers IS NULL AND old.buffer_lengths IS NOT NULL
BEGIN DELETE FROM buffer_chunks WHERE msg_id = old.msg_id; END;
CREATE TRIGGER IF NOT EXISTS buffer_chunks_dropped
AFTER DELETE ON tasks
WHEN old.result_buffers IS NULL AND old.buffer_lengths IS NOT NULL
BEGIN DELETE FROM buffer_chunks WHERE msg_id = old.msg_id; END;
"""
#: A request's buffers of more than the chunk size in all (and, in stores of schema version 2,
#: every request's), cut into parts of at most the chunk size (an empty buffer has none);
#: the row's ``request_buffer_lengths`` says where each buffer ends.
REQUEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS request_buffers (
    msg_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (msg_id, part)
);
CREATE TRIGGER IF NOT EXISTS request_buffers_replaced
AFTER UPDATE OF request_buffer_lengths ON tasks
WHEN old.request_buffer_lengths IS NOT NULL
BEGIN DELETE FROM request_buffers WHERE msg_id = old.msg_id; END;
CREATE TRIGGER IF NOT EXISTS request_buffers_dropped
AFTER DELETE ON tasks
WHEN old.request_buffer_lengths IS NOT NULL
BEGIN DELETE FROM request_buffers WHERE msg_id = old.msg_id; END;
"""
#: Why the newest purged records were purged (the retention's size limit or time to live),
#: so that a restarted controller still says a purged msg_id was purged, not unknown; not a
#: record, so not counted by the size limit (some 100 bytes a row, at most
#: :data:`~.retention.PURGES_REMEMBERED` rows: :data:`FORGET_PURGED` trims it).
PURGED_SCHEMA = """
CREATE TABLE IF NOT EXISTS purged (
    n INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    why TEXT NOT NULL
);
"""
REMEMBER_PURGED = "INSERT OR REPLACE INTO purged (msg_id, why) VALUES (?, ?)"
FORGET_PURGED = "DELETE FROM purged WHERE n <= (SELECT max(n) FROM purged) - ?"
RECALL_PURGED = (
    "SELECT msg_id, why FROM (SELECT n, msg_id, why FROM purged ORDER BY n DESC LIMIT ?) ORDER BY n"
)
INSERT_REQUEST_PART = "INSERT INTO request_buffers (msg_id, part, data) VALUES (?, ?, ?)"
READ_REQUEST_PARTS = "SELECT data FROM request_buffers WHERE msg_id = ? ORDER BY part"
REQUEST_SIZE = (
    "coalesce((SELECT sum(length(data)) FROM request_buffers "
    "WHERE request_buffers.msg_id = tasks.msg_id), 0)"
)
INSERT_CHUNK = "INSERT INTO buffer_chunks (msg_id, part, data) VALUES (?, ?, ?)"
IS_CHUNKED = "SELECT result_buffers IS NULL FROM tasks WHERE seq = ?"
READ_REQUEST_DATA = "SELECT request_data FROM tasks WHERE seq = ?"
READ_CHUNKS = "SELECT data FROM buffer_chunks WHERE msg_id = ? ORDER BY part"
CHUNKS_SIZE = (
    "CASE WHEN result_buffers IS NULL AND buffer_lengths IS NOT NULL THEN coalesce((SELECT "
    "sum(length(data)) FROM buffer_chunks WHERE buffer_chunks.msg_id = tasks.msg_id), 0) "
    "ELSE 0 END"
)
ALL_COLUMNS = (
    "seq",
    "present",
    "msg_id",
    *SCALAR_COLUMNS,
    "extra",
    "request_buffer_lengths",
    "buffer_lengths",
)
INCREMENTAL = 2  # PRAGMA auto_vacuum value
TABLE_EXISTS = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
DELETE = "DELETE FROM tasks WHERE msg_id IN (SELECT value FROM json_each(?))"


def connect(uri: str) -> sqlite3.Connection:
    """A connection to the store's ``file:`` URI: autocommit (transactions are explicit),
    usable from the writer thread, statements cached, and a busy timeout of 10 s for another
    process that holds the file's lock."""
    db = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    try:
        db.execute("PRAGMA busy_timeout = 10000")
    except sqlite3.Error:
        db.close()
        raise
    return db


def prepare(
    db: sqlite3.Connection,
    path: Path,
    *,
    read_only: bool,
    max_size: int | None,
    incremental_vacuum: bool,
) -> int:
    """Make ``db`` a result store of this schema version, or check that it is one, and return
    the version it has: with ``read_only`` False, in WAL mode (StoreError if the file system
    refuses it), the table made if missing and a store of version 1 or 2 migrated in place
    (inside ``BEGIN IMMEDIATE``, as another process may be doing the same); a read-only open
    reads version 2 or 3 as it is. ``incremental_vacuum`` (a store with a size limit): a store
    made before auto_vacuum is converted once. ``max_size`` caps the file (bytes)."""
    exists = db.execute(TABLE_EXISTS).fetchone()[0]
    if not read_only:
        # before the first table is created: purged pages go back to the file system
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot use WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA journal_size_limit = 67108864")
        if not exists:
            db.execute("BEGIN IMMEDIATE")  # another process may be creating it too
            if db.execute(TABLE_EXISTS).fetchone()[0] == 0:
                db.execute(SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
            exists = True
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if exists and version in (1, 2) and not read_only:
        db.execute("BEGIN IMMEDIATE")  # another process may be migrating it too
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:
            db.execute(MIGRATE_FROM_1)
        if version in (1, 2):
            db.execute(MIGRATE_FROM_2)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
        version = db.execute("PRAGMA user_version").fetchone()[0]
    readable = (2, SCHEMA_VERSION) if read_only else (SCHEMA_VERSION,)
    if not exists or version not in readable:
        raise StoreError(
            f"{path} is not a corral result store of schema version "
            f"{' or '.join(map(str, readable))} (found {version if exists else 'no table'})"
        )
    if not read_only:
        db.executescript(CHUNKS_SCHEMA)  # also added to a store made before chunks
        db.executescript(REQUEST_SCHEMA)
        db.executescript(PURGED_SCHEMA)
    if not read_only and incremental_vacuum:
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
            db.execute("VACUUM")  # a store made before auto_vacuum: converted once
    if max_size is not None:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {max(1, int(max_size) // page_size)}")
    return int(version)
