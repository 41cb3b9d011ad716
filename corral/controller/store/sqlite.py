"""The SQLite result store: the default, one file (``tasks.db``) in the cluster folder.

One table, one row per task, ordered by an autoincrement ``seq`` (the submission order).
Known fields are columns; the dict fields (``header`` ...) are JSON text; fields outside the
schema go, JSON-encoded, into one ``extra`` column, so they must be JSON-serializable here
(a record that is not is refused at once with StoreError). Result buffers are one BLOB
column (last, so scans never walk its overflow pages) plus their lengths. Buffers of more
than :data:`CHUNK_BYTES` in all go instead, as chunks of at most that size, into a second table
``buffer_chunks`` (the row's BLOB is then NULL): SQLite refuses any single value over about
1 GB ("string or blob too big"), and a result the buffer limit admits must be kept whatever
its size. Triggers remove a row's chunks when the row is deleted or its buffers replaced, so
purges and the size limit treat them like any buffer.

Writes are encoded in the caller's thread (so bad values fail at the call) and applied by a
:class:`~.base.BatchWriter` thread in WAL mode, many per transaction. ``synchronous=NORMAL``:
a committed batch survives the process being killed; a power cut may lose the last batches,
never corrupt the file. Reads flush the writer first, then read on their own connection.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import orjson

from corral.errors import StoreError

from .base import (
    BOOL_FIELDS,
    BUFFERS_FIELD,
    DICT_FIELDS,
    INT_FIELDS,
    KNOWN_FIELDS,
    SCALAR_FIELD_CATEGORIES,
    TEXT_FIELDS,
    BatchWriter,
    ResultStore,
    WriteOp,
    check_keys,
    check_msg_ids,
    check_page,
    project,
    validate_record,
)
from .query import Atom, matches, parse_query, split_query
from .retention import RetentionSettings

SCHEMA_VERSION = 1
#: Known fields other than msg_id, in column order; a field's position is its bit in the
#: ``present`` column, which tells a field set to None from a field never set.
_FIELDS = (*TEXT_FIELDS[1:], *INT_FIELDS, *BOOL_FIELDS, *DICT_FIELDS, BUFFERS_FIELD)
_BITS = {name: 1 << index for index, name in enumerate(_FIELDS)}
_SQL_TYPES = {
    **dict.fromkeys(TEXT_FIELDS, "TEXT"),
    **dict.fromkeys((*INT_FIELDS, *BOOL_FIELDS), "INTEGER"),
    **dict.fromkeys(DICT_FIELDS, "TEXT"),
}
_SCALAR_COLUMNS = tuple(name for name in _FIELDS if name != BUFFERS_FIELD)
_SCHEMA = f"""
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    present INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{name} {_SQL_TYPES[name]}" for name in _SCALAR_COLUMNS)},
    extra TEXT,
    buffer_lengths TEXT,
    result_buffers BLOB
)"""
#: Buffers larger than this in all are stored as chunks of at most this size (SQLite's own
#: limit on one value is 1,000,000,000 bytes by default).
CHUNK_BYTES: Final = 64 << 20
_CHUNKS_SCHEMA = """
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
_INSERT_CHUNK = "INSERT INTO buffer_chunks (msg_id, part, data) VALUES (?, ?, ?)"
_CHUNKED = "SELECT result_buffers IS NULL FROM tasks WHERE seq = ?"
_READ_CHUNKS = "SELECT data FROM buffer_chunks WHERE msg_id = ? ORDER BY part"
_CHUNKS_SIZE = (
    "CASE WHEN result_buffers IS NULL AND buffer_lengths IS NOT NULL THEN coalesce((SELECT "
    "sum(length(data)) FROM buffer_chunks WHERE buffer_chunks.msg_id = tasks.msg_id), 0) "
    "ELSE 0 END"
)
_ALL_COLUMNS = ("seq", "present", "msg_id", *_SCALAR_COLUMNS, "extra", "buffer_lengths")
_JSON_LIST_MIN = 16
_ROW_OVERHEAD = 64
_INCREMENTAL = 2  # PRAGMA auto_vacuum value
_TABLE_EXISTS = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
_DELETE = "DELETE FROM tasks WHERE msg_id IN (SELECT value FROM json_each(?))"
_COMPARE = {"$eq": "=", "$ne": "IS NOT", "$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}


class Row(NamedTuple):
    """An encoded upsert: column names, their values, and the result buffers as given
    (joined into one BLOB by the writer thread, not the caller); ``chunk`` is the size of
    their chunks when they are too large for one BLOB, else 0."""

    columns: tuple[str, ...]
    values: tuple[Any, ...]
    buffers: list[Any] | None
    chunk: int = 0

    def size(self) -> int:
        """Bytes this write adds to the file, roughly: its text and its buffers."""
        text = sum([len(value) for value in self.values if value.__class__ is str])
        buffers = sum(map(len, self.buffers or ()))  # bytes or flat byte views
        return _ROW_OVERHEAD + text + buffers

    @property
    def chunked(self) -> bool:
        """Whether the buffers go to ``buffer_chunks`` (the row's BLOB then NULL)."""
        return self.chunk > 0

    def parameters(self) -> tuple[Any, ...]:
        if self.columns[-1] != BUFFERS_FIELD:
            return self.values
        buffers = self.buffers
        if buffers is None or self.chunked:
            return (*self.values, None)
        return (*self.values, buffers[0] if len(buffers) == 1 else b"".join(buffers))

    def chunks(self) -> Iterator[tuple[str, int, memoryview]]:
        """(msg_id, part, data) of a chunked row: each buffer cut in pieces of at most
        ``chunk`` bytes, in order, no piece spanning two buffers; views, not copies."""
        part = 0
        for buffer in self.buffers or ():
            view = memoryview(buffer).cast("B")
            for start in range(0, view.nbytes, self.chunk):
                yield self.values[0], part, view[start : start + self.chunk]
                part += 1


Payload = Row | None  # None: a drop, whose msg_ids are the WriteOp's


def _dumps(name: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise StoreError(f"field {name!r} cannot be stored as JSON in SQLite: {exc}") from None


def _encode(fields: dict[str, Any], chunk_bytes: int = CHUNK_BYTES) -> Row:
    """The row that upserts these (validated) fields; buffers of more than ``chunk_bytes`` in
    all are marked for chunks of that size."""
    present = 0
    extras: dict[str, list[Any]] = {}
    for name, value in fields.items():
        if name in _BITS:
            present |= _BITS[name]
        elif name != "msg_id":
            extras[name] = [value]
    columns: list[str] = ["msg_id", "present"]
    values: list[Any] = [fields["msg_id"], present]
    for name in _SCALAR_COLUMNS:
        if name in fields:
            value = fields[name]
            columns.append(name)
            values.append(
                _dumps(name, value) if name in DICT_FIELDS and value is not None else value
            )
    if extras:
        columns.append("extra")
        values.append(_dumps("extra fields", extras))
    buffers = None
    if BUFFERS_FIELD in fields:
        buffers = fields[BUFFERS_FIELD]
        columns += ["buffer_lengths", BUFFERS_FIELD]
        values.append(None if buffers is None else orjson.dumps([len(b) for b in buffers]).decode())
    large = buffers is not None and sum(map(len, buffers)) > chunk_bytes
    return Row(tuple(columns), tuple(values), buffers, chunk_bytes if large else 0)


@functools.lru_cache(maxsize=256)
def _upsert_sql(columns: tuple[str, ...]) -> str:
    updates = []
    for name in columns[1:]:
        if name == "present":
            updates.append("present = present | excluded.present")
        elif name == "extra":
            # Each extra value is wrapped in a one-item list, so that json_patch replaces
            # it whole (and a None value is kept, not deleted).
            updates.append(
                "extra = CASE WHEN extra IS NULL THEN excluded.extra "
                "ELSE json_patch(extra, excluded.extra) END"
            )
        else:
            updates.append(f"{name} = excluded.{name}")
    return (
        f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT (msg_id) DO UPDATE SET {', '.join(updates)}"
    )


def _members(values: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """An SQL list; long lists of strings travel as one JSON parameter (no variable limit)."""
    if len(values) >= _JSON_LIST_MIN and all(isinstance(v, str) for v in values):
        return "(SELECT value FROM json_each(?))", [orjson.dumps(list(values)).decode()]
    return f"({', '.join('?' * len(values))})", list(values)


def sql_where(atoms: list[Atom]) -> tuple[str, list[Any]]:
    """A WHERE clause with exactly the semantics of the atoms (NULL is None or missing)."""
    parts: list[str] = []
    params: list[Any] = []
    for atom in atoms:
        name = atom.field
        if atom.kind == "never":
            parts.append("0")
        elif atom.kind in ("null", "not_null"):
            parts.append(f"{name} IS {'' if atom.kind == 'null' else 'NOT '}NULL")
        elif atom.kind == "compare":
            parts.append(f"{name} {_COMPARE[atom.operator]} ?")
            params.append(atom.value)
        else:
            members, member_params = _members(atom.values)
            params += member_params
            if atom.kind == "in":
                expression = f"{name} IN {members}"
                parts.append(f"({name} IS NULL OR {expression})" if atom.with_null else expression)
            elif atom.with_null:
                parts.append(f"({name} IS NOT NULL AND {name} NOT IN {members})")
            else:
                parts.append(f"({name} IS NULL OR {name} NOT IN {members})")
    return " AND ".join(parts) or "1", params


def _columns_for(fields: set[str] | None) -> tuple[str, ...]:
    if fields is None:
        return _ALL_COLUMNS
    columns = ["seq", "present", "msg_id"]
    columns += [name for name in _SCALAR_COLUMNS if name in fields]
    if any(name not in KNOWN_FIELDS for name in fields):
        columns.append("extra")
    if BUFFERS_FIELD in fields:
        columns.append("buffer_lengths")
    return tuple(columns)


class SQLiteStore(ResultStore):
    """Result store in one SQLite file; see the module docs for layout and durability.

    ``read_only`` opens the file with ``mode=ro`` (to inspect a cluster's history): reads
    work, writes fail in the writer and are reported as StoreError by the next call.
    ``max_size`` caps the file (bytes); writes beyond it fail the same way, so a runaway
    cluster cannot fill the disk unnoticed. ``chunk_bytes`` (at most :data:`CHUNK_BYTES`,
    the default) is where buffers start going to chunks; smaller values are for tests.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        max_size: int | None = None,
        max_batch: int = 1000,
        retention: RetentionSettings | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if not 0 < chunk_bytes <= CHUNK_BYTES:
            raise StoreError(f"chunk_bytes must be in 1..{CHUNK_BYTES}, not {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self._setup_retention(retention)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        target = f"file://{quote(str(self.path.absolute()))}"
        connections: list[sqlite3.Connection] = []
        try:
            self._db = self._connect(f"{target}?mode={'ro' if read_only else 'rwc'}")
            connections.append(self._db)
            self._prepare(read_only, max_size)
            self._reader = self._connect(f"{target}?mode=ro")
            connections.append(self._reader)
        except (sqlite3.Error, StoreError) as exc:
            for connection in connections:
                connection.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the SQLite result store {self.path}: {exc}") from exc
        self._writer: BatchWriter[Payload] = BatchWriter(
            self._apply, name=f"sqlite writer ({self.path.name})", max_batch=max_batch
        )
        if self.retention is not None and not read_only:
            try:
                self._restore_retention(self._stored_sizes())
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _prepare(self, read_only: bool, max_size: int | None) -> None:
        db = self._db
        exists = db.execute(_TABLE_EXISTS).fetchone()[0]
        if not read_only:
            # before the first table is created: purged pages go back to the file system
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA journal_size_limit = 67108864")
            if not exists:
                db.execute("BEGIN IMMEDIATE")  # another process may be creating it too
                if db.execute(_TABLE_EXISTS).fetchone()[0] == 0:
                    db.execute(_SCHEMA)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
                exists = True
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if not exists or version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} is not a corral result store of schema version "
                f"{SCHEMA_VERSION} (found {version if exists else 'no table'})"
            )
        if not read_only:
            db.executescript(_CHUNKS_SCHEMA)  # also added to a store made before chunks
        if not read_only and self.retention is not None:
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
                db.execute("VACUUM")  # a store made before auto_vacuum: converted once
        if max_size is not None:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(1, int(max_size) // page_size)}")

    # ------------------------------------------------------------ writes (writer thread)

    def _apply(self, batch: list[WriteOp[Payload]]) -> None:
        """One transaction; runs of upserts with the same columns go in one executemany."""
        db = self._db
        dropped = False
        db.execute("BEGIN IMMEDIATE")
        try:
            for columns, run in itertools.groupby(batch, key=_columns_of):
                if columns is None:
                    for op in run:
                        db.execute(_DELETE, (orjson.dumps(op.msg_ids).decode(),))
                        dropped = True
                else:
                    self._upsert_run(_upsert_sql(columns), run)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if dropped:
            # give the pages of dropped records back to the file system (the file shrinks
            # at the next checkpoint), so purges free disk space, not just rows
            db.executescript("PRAGMA incremental_vacuum")  # execute() frees one page only

    def _upsert_run(self, sql: str, run: Iterator[WriteOp[Payload]]) -> None:
        """Upserts of the same columns: one executemany, except that a chunked row is
        written alone and followed by its chunks (its trigger first removes the old ones)."""
        db = self._db
        rows: list[tuple[Any, ...]] = []
        for op in run:
            row = op.payload
            if row is None:
                continue
            if not row.chunked:
                rows.append(row.parameters())
                continue
            if rows:
                db.executemany(sql, rows)
                rows = []
            db.execute(sql, row.parameters())
            db.executemany(_INSERT_CHUNK, row.chunks())
        if rows:
            db.executemany(sql, rows)

    # ------------------------------------------------------------ interface

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        self._upsert(msg_id, record)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        self._upsert(msg_id, changes)

    def _upsert(self, msg_id: str, fields: dict[str, Any]) -> None:
        checked = self._omit_large_buffers(validate_record(msg_id, fields))
        payload = _encode(checked, self.chunk_bytes)
        self._writer.submit(WriteOp("upsert", (msg_id,), payload))
        if self.retention is not None:
            self._account(msg_id, checked, payload.size())

    def drop_records(self, msg_ids: Sequence[str]) -> None:
        ids = tuple(check_msg_ids(msg_ids))
        if ids:
            self._forget(ids)
            self._writer.submit(WriteOp("drop", ids, None))
        else:
            self._writer.check()

    def _stored_sizes(self) -> list[tuple[str, int, Any, Any]]:
        """(msg_id, size, status, received) of every record, without reading any buffer."""
        size = " + ".join(
            [
                *(
                    f"coalesce(length({name}), 0)"
                    for name in (*_SCALAR_COLUMNS, "extra", "buffer_lengths", BUFFERS_FIELD)
                ),
                _CHUNKS_SIZE,
            ]
        )
        sql = f"SELECT msg_id, {_ROW_OVERHEAD} + {size}, status, received FROM tasks ORDER BY seq"
        with self._lock:
            return [(row[0], row[1], row[2], row[3]) for row in self._reader.execute(sql)]

    def get_records(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = check_msg_ids(msg_ids)
        if not ids:
            self.flush()
            return {}
        where = "msg_id IN (SELECT value FROM json_each(?))"
        records = self._select(_ALL_COLUMNS, where, [orjson.dumps(ids).decode()], [], None)
        return {record["msg_id"]: record for record in records}

    def find_records(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        conditions = parse_query(query)
        fields = check_keys(keys)
        atoms, residue = split_query(conditions, SCALAR_FIELD_CATEGORIES)
        where, params = sql_where(atoms)
        needed = None if fields is None else {*fields, *(c.field for c in residue)}
        return self._select(_columns_for(needed), where, params, residue, fields)

    def find_page(
        self,
        query: dict[str, Any],
        keys: Sequence[str] | None = None,
        *,
        limit: int,
        skip: int = 0,
        newest_first: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """Counted and sliced by SQLite when the whole query is native SQL (queries on the
        scalar fields: status, engine, dates, msg_id ...); otherwise the generic fallback."""
        limit, skip = check_page(limit, skip)
        conditions = parse_query(query)
        fields = check_keys(keys)
        atoms, residue = split_query(conditions, SCALAR_FIELD_CATEGORIES)
        if residue:
            return super().find_page(query, keys, limit=limit, skip=skip, newest_first=newest_first)
        where, params = sql_where(atoms)
        self.flush()
        with self._lock:
            self._check_open()
            (total,) = self._reader.execute(
                f"SELECT count(*) FROM tasks WHERE {where}", params
            ).fetchone()
        # SQLite walks past the skipped rows: a page in the far half is read from the other end
        flip = skip > int(total) // 2
        if flip:
            skip, limit = max(0, int(total) - skip - limit), min(limit, int(total) - skip)
        order = "DESC" if newest_first != flip else "ASC"
        page = self._select(
            _columns_for(None if fields is None else set(fields)),
            where,
            params,
            [],
            fields,
            suffix=f" {order} LIMIT {max(0, limit)} OFFSET {skip}",
        )
        if flip:
            page.reverse()
        return page, int(total)

    def get_history(self) -> list[str]:
        self.flush()
        with self._lock:
            self._check_open()
            return [row[0] for row in self._reader.execute("SELECT msg_id FROM tasks ORDER BY seq")]

    def write_mark(self) -> int:
        return self._writer.mark()

    def written(self, mark: int) -> bool:
        return self._writer.applied(mark)

    def flush(self) -> None:
        self._check_open()
        self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._writer.close()
        finally:
            with self._lock:  # a read in another thread finishes first
                self._db.close()
                self._reader.close()

    # ------------------------------------------------------------ reads

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the SQLite result store {self.path} is closed")

    def _select(
        self,
        columns: tuple[str, ...],
        where: str,
        params: list[Any],
        residue: list[Any],
        fields: tuple[str, ...] | None,
        suffix: str = "",
    ) -> list[dict[str, Any]]:
        """Rows in submission order (``suffix`` may reverse and slice it), decoded, filtered
        by the residue, projected; all in one read transaction, so buffers read by blob
        handles belong to the same snapshot."""
        self.flush()
        sql = f"SELECT {', '.join(columns)} FROM tasks WHERE {where} ORDER BY seq{suffix}"
        buffers_early = any(c.field == BUFFERS_FIELD for c in residue)
        records: list[dict[str, Any]] = []
        with self._lock:
            self._check_open()
            db = self._reader
            db.execute("BEGIN")
            try:
                for row in db.execute(sql, params):
                    record, lengths = _decode(row, columns)
                    if lengths is not None and buffers_early:
                        record[BUFFERS_FIELD] = self._read_buffers(row[0], row[2], lengths)
                        lengths = None
                    if residue and not matches(record, residue):
                        continue
                    if lengths is not None:
                        record[BUFFERS_FIELD] = self._read_buffers(row[0], row[2], lengths)
                    records.append(project(record, fields))
            except sqlite3.Error as exc:
                raise StoreError(f"reading the result store {self.path} failed: {exc}") from exc
            finally:
                db.execute("COMMIT")
        return records

    def _read_buffers(self, seq: int, msg_id: str, lengths: list[int]) -> list[bytes]:
        """Each buffer read straight from the BLOB into its own bytes object: one copy (a
        chunked buffer of more than one chunk: two)."""
        if not any(lengths):
            return [b"" for _ in lengths]
        (chunked,) = self._reader.execute(_CHUNKED, (seq,)).fetchone()
        if chunked:
            return self._read_chunks(msg_id, lengths)
        with self._reader.blobopen("tasks", BUFFERS_FIELD, seq, readonly=True) as blob:
            return [blob.read(length) if length else b"" for length in lengths]

    def _read_chunks(self, msg_id: str, lengths: list[int]) -> list[bytes]:
        chunks = (row[0] for row in self._reader.execute(_READ_CHUNKS, (msg_id,)))
        buffers: list[bytes] = []
        for length in lengths:
            pieces: list[bytes] = []
            got = 0
            while got < length:
                piece = next(chunks, None)
                if piece is None:
                    break
                pieces.append(piece)
                got += len(piece)
            if got != length:
                raise StoreError(
                    f"the result store {self.path} is damaged: a buffer of {msg_id} should "
                    f"hold {length} bytes, its chunks hold {got}"
                )
            buffers.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return buffers


def _columns_of(op: WriteOp[Payload]) -> tuple[str, ...] | None:
    return None if op.payload is None else op.payload.columns


def _decode(row: tuple[Any, ...], columns: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
    """A record from a row, and its buffer lengths when the buffers are still to read."""
    present = row[1]
    record: dict[str, Any] = {"msg_id": row[2]}
    lengths = None
    for name, value in zip(columns[3:], row[3:], strict=True):
        if name == "extra":
            if value is not None:
                record.update((key, item[0]) for key, item in orjson.loads(value).items())
        elif name == "buffer_lengths":
            if present & _BITS[BUFFERS_FIELD]:
                if value is None:
                    record[BUFFERS_FIELD] = None
                else:
                    lengths = orjson.loads(value)
        elif present & _BITS[name]:
            if value is not None:
                if name in DICT_FIELDS:
                    value = orjson.loads(value)
                elif name in BOOL_FIELDS:
                    value = bool(value)
            record[name] = value
    return record, lengths
