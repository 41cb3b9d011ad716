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
purges and the size limit treat them like any buffer. A request's own buffers (``buffers``,
kept for ``Client.resubmit``) go the same way: one BLOB column, ``request_data``, or past
that size parts in ``request_buffers``; so do those of at least
:data:`~.sqlite_rows.REQUEST_APART` bytes (a function pickled by value), which the result's
rewrite of the row would otherwise copy again. Schema versions: 1 had no request buffers, 2 put
every request's buffers in ``request_buffers`` (one row per buffer: a second insert per
task), 3 (this one) keeps them in the row. A store of version 1 or 2 gains the columns and
the table in place when opened for writing; its old requests stay where they were and are
read from there. A read-only open reads a store of version 2 or 3.

Writes are encoded in the caller's thread (so bad values fail at the call) and applied by a
:class:`~.base.BatchWriter` thread in WAL mode, many per transaction. ``synchronous=NORMAL``:
a committed batch survives the process being killed; a power cut may lose the last batches,
never corrupt the file. Reads flush the writer first, then read on their own connection.
The schema, its versions and opening a connection are in :mod:`.sqlite_schema`, the encoding
of records into rows (pure, no connection) in :mod:`.sqlite_rows`, how a batch becomes
statements in :mod:`.sqlite_batches`, the per-write paths (a record's row queued, a batch
applied: compiled by ``make native``) in :mod:`.sqlite_writes`, reading buffers back in
:mod:`.sqlite_buffers`; this module owns the connections and the writer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from corral.errors import StoreError

from .base import (
    BUFFERS_FIELD,
    REQUEST_BUFFERS_FIELD,
    SCALAR_FIELD_CATEGORIES,
    BatchWriter,
    MessageJSON,
    ResultStore,
    WriteOp,
    check_keys,
    check_msg_ids,
    check_page,
    decoded_fields,
    in_submission_order,
    project,
    validate_record,
)
from .query import matches, parse_query, split_query
from .retention import Purge, RetentionSettings
from .sqlite_batches import (
    LOOK_AHEAD,
    KnownRows,
    later_updates,
)
from .sqlite_buffers import read_request_buffers, read_result_buffers
from .sqlite_rows import (
    ROW_OVERHEAD,
    Payload,
    columns_for,
    decode_row,
    encode_row,
    engine_row,
    sql_where,
)
from .sqlite_schema import (
    ALL_COLUMNS,
    CHUNK_BYTES,
    CHUNKS_SIZE,
    FORGET_PURGED,
    RECALL_PURGED,
    REMEMBER_PURGED,
    REQUEST_DATA,
    REQUEST_SIZE,
    SCALAR_COLUMNS,
    connect,
    prepare,
)
from .sqlite_writes import RowQueue, apply_batch

logger = logging.getLogger("corral.controller.store")

#: ``_tuple_new(WriteOp, (...))`` is ``WriteOp(...)`` made in C, as :mod:`.sqlite_rows` makes
#: its rows: 0.16 -> 0.10 us, once per write in the Hub's thread.
_tuple_new = tuple.__new__

#: Values the sqlite3 module binds as they are, but only after looking for an adapter: for
#: any value not exactly an int, float, str or bytearray it asks the adapters' table, then the
#: protocol type for ``__adapt__`` (an AttributeError formatted and dropped each time), then
#: the value for ``__conform__``. The Hub's rows bind some eight such values a task (NULLs,
#: the ``resubmitted`` flag, the two BLOBs, a request's parts, which are views): 170-270 ns
#: each, 60-120 ns with an adapter that hands the value back (plain sqlite3, 64-row inserts).
#: Only registered where the process has none for that type, so a program's own adapter is
#: never replaced.
_BOUND_AS_THEY_ARE = (type(None), bool, bytes, memoryview)


def _as_is(value: Any) -> Any:
    """The adapter of :data:`_BOUND_AS_THEY_ARE`: the value, which sqlite3 binds as it would
    have without one (NULL, an integer, a BLOB)."""
    return value


def _adapt_as_they_are() -> None:
    for kind in _BOUND_AS_THEY_ARE:
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(kind, _as_is)


class SQLiteStore(ResultStore):
    """Result store in one SQLite file; see the module docs for layout and durability.

    ``read_only`` opens the file with ``mode=ro`` (to inspect a cluster's history): reads
    work, writes fail in the writer and are reported as StoreError by the next call.
    ``max_size`` caps the file (bytes); writes beyond it fail the same way, so a runaway
    cluster cannot fill the disk unnoticed. ``chunk_bytes`` (at most :data:`CHUNK_BYTES`,
    the default) is where buffers start going to chunks; smaller values are for tests.
    ``look_ahead``: how many writes queued behind a batch that ``max_batch`` cut the writer
    looks at for later writes of the batch's records, applied with it
    (:func:`~.sqlite_batches.later_updates`; 0: none, every batch is the queue's next
    writes).
    """

    persists_purges = True

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        max_size: int | None = None,
        max_batch: int = 1000,
        retention: RetentionSettings | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        look_ahead: int = LOOK_AHEAD,
    ) -> None:
        if not 0 < chunk_bytes <= CHUNK_BYTES:
            raise StoreError(f"chunk_bytes must be in 1..{CHUNK_BYTES}, not {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        _adapt_as_they_are()
        self._setup_retention(retention)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        target = f"file://{quote(str(self.path.absolute()))}"
        connections: list[sqlite3.Connection] = []
        try:
            self._db = connect(f"{target}?mode={'ro' if read_only else 'rwc'}")
            connections.append(self._db)
            version = prepare(
                self._db,
                self.path,
                read_only=read_only,
                max_size=max_size,
                incremental_vacuum=self.retention is not None,
            )
            # version 2 (read only) has no request_data: every request is in request_buffers
            self._inline_requests = version >= 3
            self._reader = connect(f"{target}?mode=ro")
            connections.append(self._reader)
        except (sqlite3.Error, StoreError) as exc:
            for connection in connections:
                connection.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the SQLite result store {self.path}: {exc}") from exc
        self._known = KnownRows()  # the writer thread's only
        self._writer: BatchWriter[Payload] = BatchWriter(
            self._apply,
            name=f"sqlite writer ({self.path.name})",
            max_batch=max_batch,
            later=later_updates if look_ahead > 0 else None,
            look_ahead=look_ahead,
        )
        self._rows = RowQueue(
            self._writer, chunk_bytes, self.retention, self._retention_lock, self._apply_purge
        )
        if self.retention is not None and not read_only:
            try:
                with self._lock:
                    recalled = self._reader.execute(RECALL_PURGED, (self.purges_remembered,))
                    self._recall_purges(recalled.fetchall())
                self._restore_retention(self._stored_sizes())
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------ writes (writer thread)

    def _apply(self, batch: list[WriteOp[Payload]]) -> None:
        """One transaction of the writer thread (:func:`~.sqlite_writes.apply_batch`), after
        the reasons of the purges since the last one, whose drops may be in it."""
        purges = self._take_unwritten_purges()
        if purges:
            try:
                self._remember(purges)
            except sqlite3.Error as exc:  # the records' writes matter more: they go on
                logger.warning(
                    "result store %s: why records were purged not kept: %s", self.path, exc
                )
        apply_batch(self._db, batch, self._known)

    def _remember(self, purges: list[Purge]) -> None:
        """(Writer thread) Why these records were purged, in the ``purged`` table, the
        newest :attr:`purges_remembered` kept. Written before the drops: a controller killed
        in between finds the records still there, which its retention purges again."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(REMEMBER_PURGED, self._reasons_to_write(purges))
            db.execute(FORGET_PURGED, (self.purges_remembered,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ interface

    def background_threads(self) -> list[threading.Thread]:
        return [self._writer.thread]

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        if not self._rows.upsert(msg_id, record, None):
            self._upsert(msg_id, record)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        if not self._rows.upsert(msg_id, changes, None):
            self._upsert(msg_id, changes)

    def add_decoded_record(
        self, msg_id: str, record: dict[str, Any], json_texts: MessageJSON
    ) -> None:
        """The JSON frames are kept as they came (:func:`encode_exact`): the Hub's records
        hold its copies' header, metadata and content, six dicts a task, which cost about
        0.1 us each to encode again."""
        if not self._rows.upsert(msg_id, record, json_texts):
            self._upsert(msg_id, decoded_fields(record, json_texts))

    def update_decoded_record(
        self, msg_id: str, changes: dict[str, Any], json_texts: MessageJSON
    ) -> None:
        if not self._rows.upsert(msg_id, changes, json_texts):
            self._upsert(msg_id, decoded_fields(changes, json_texts))

    def _upsert(self, msg_id: str, fields: dict[str, Any]) -> None:
        """A write :class:`RowQueue` declined (not the Hub's usual record: the Hub's own are
        queued there, compiled): validated, large buffers omitted, encoded field by field."""
        fields = self._omit_large_buffers(validate_record(msg_id, fields))
        payload = encode_row(fields, self.chunk_bytes)
        self._writer.submit(_tuple_new(WriteOp, ("upsert", (msg_id,), payload)))
        self._account(msg_id, fields, payload.size(), ROW_OVERHEAD + len(msg_id))

    def set_engines(self, destinations: Iterable[tuple[str, str, int | None]]) -> None:
        """The rows made at once (:func:`engine_row`) and queued under one lock; a value not
        exactly its type takes :meth:`update_record`'s way, in its place. These rows add
        nothing to the size the store's limit counts: they write two small fields of a task's
        row, which its result writes again, and is counted with (the bookkeeping of a row
        each, two lookups in tables of every record, cost the Hub's thread about 1 us per
        waiting task in a cluster)."""
        ops: list[WriteOp[Payload]] = []
        failure: StoreError | None = None
        for msg_id, engine_uuid, engine_id in destinations:
            row = engine_row(msg_id, engine_uuid, engine_id)
            if row is not None:
                ops.append(_tuple_new(WriteOp, ("upsert", (msg_id,), row)))
                continue
            queued, ops = ops, []  # the rows before it go first, queued even if this raises
            try:
                self._writer.submit_many(queued)
            except StoreError as err:  # an earlier write's failure
                failure = failure or err
            try:
                self.update_record(msg_id, {"engine_uuid": engine_uuid, "engine_id": engine_id})
            except StoreError as err:  # this value's (or an earlier write's)
                failure = failure or err
        try:
            self._writer.submit_many(ops)
        except StoreError as err:
            failure = failure or err
        if failure is not None:
            raise failure

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
                    for name in (
                        *SCALAR_COLUMNS,
                        "extra",
                        "buffer_lengths",
                        BUFFERS_FIELD,
                        "request_buffer_lengths",
                        REQUEST_DATA,
                    )
                ),
                CHUNKS_SIZE,
                REQUEST_SIZE,
            ]
        )
        sql = f"SELECT msg_id, {ROW_OVERHEAD} + {size}, status, received FROM tasks ORDER BY seq"
        with self._lock:
            return [(row[0], row[1], row[2], row[3]) for row in self._reader.execute(sql)]

    def get_records(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = check_msg_ids(msg_ids)
        if not ids:
            self.flush()
            return {}
        where = "msg_id IN (SELECT value FROM json_each(?))"
        records = self._select(ALL_COLUMNS, where, [orjson.dumps(ids).decode()], [], None)
        return {record["msg_id"]: record for record in records}

    def find_records(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        conditions = parse_query(query)
        fields = check_keys(keys)
        atoms, residue = split_query(conditions, SCALAR_FIELD_CATEGORIES)
        where, params = sql_where(atoms)
        needed = None if fields is None else {*fields, *(c.field for c in residue)}
        return self._select(columns_for(needed), where, params, residue, fields)

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
        # the count and the page in one snapshot: a row the Hub writes between them must not
        # be on the page and missing from the count (a dashboard test saw total 0, one row)
        with self._snapshot() as db:
            (total,) = db.execute(f"SELECT count(*) FROM tasks WHERE {where}", params).fetchone()
            # SQLite walks past the skipped rows: a page in the far half is read from the other
            # end
            flip = skip > int(total) // 2
            if flip:
                skip, limit = max(0, int(total) - skip - limit), min(limit, int(total) - skip)
            order = "DESC" if newest_first != flip else "ASC"
            page = self._read_rows(
                db,
                columns_for(None if fields is None else set(fields)),
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
            rows = self._reader.execute("SELECT msg_id, submitted FROM tasks ORDER BY seq")
            return in_submission_order(rows)

    def holding_writes(self) -> AbstractContextManager[None]:
        return self._writer.holding()

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

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """The reader in one read transaction, under the store's lock (after the writes issued
        so far): what is read in it is one state of the store (blobs read by handle too)."""
        self.flush()
        with self._lock:
            self._check_open()
            db = self._reader
            db.execute("BEGIN")
            try:
                yield db
            except sqlite3.Error as exc:
                raise StoreError(f"reading the result store {self.path} failed: {exc}") from exc
            finally:
                db.execute("COMMIT")

    def _select(
        self,
        columns: tuple[str, ...],
        where: str,
        params: list[Any],
        residue: list[Any],
        fields: tuple[str, ...] | None,
    ) -> list[dict[str, Any]]:
        """Rows in submission order, decoded, filtered by the residue, projected; in one
        snapshot (:meth:`_snapshot`)."""
        with self._snapshot() as db:
            return self._read_rows(db, columns, where, params, residue, fields)

    def _read_rows(
        self,
        db: sqlite3.Connection,
        columns: tuple[str, ...],
        where: str,
        params: list[Any],
        residue: list[Any],
        fields: tuple[str, ...] | None,
        suffix: str = "",
    ) -> list[dict[str, Any]]:
        """:meth:`_select`'s work inside a snapshot; ``suffix`` may reverse and slice it."""
        sql = f"SELECT {', '.join(columns)} FROM tasks WHERE {where} ORDER BY seq{suffix}"
        buffers_early = any(c.field == BUFFERS_FIELD for c in residue)
        request_early = any(c.field == REQUEST_BUFFERS_FIELD for c in residue)
        records: list[dict[str, Any]] = []
        for row in db.execute(sql, params):
            record, lengths, request_lengths = decode_row(row, columns)
            if request_lengths is not None and request_early:
                record[REQUEST_BUFFERS_FIELD] = self._read_request(row[0], row[2], request_lengths)
                request_lengths = None
            if lengths is not None and buffers_early:
                record[BUFFERS_FIELD] = read_result_buffers(db, self.path, row[0], row[2], lengths)
                lengths = None
            if residue and not matches(record, residue):
                continue
            if lengths is not None:
                record[BUFFERS_FIELD] = read_result_buffers(db, self.path, row[0], row[2], lengths)
            if request_lengths is not None:
                record[REQUEST_BUFFERS_FIELD] = self._read_request(row[0], row[2], request_lengths)
            records.append(project(record, fields))
        return records

    def _read_request(self, seq: int, msg_id: str, lengths: list[int]) -> list[bytes]:
        """A request's buffers (:func:`read_request_buffers`), from the row's BLOB where the
        store's schema has one."""
        if not any(lengths):
            return [b"" for _ in lengths]
        if not self._inline_requests:  # read only, version 2 when opened: migrated since?
            self._inline_requests = self._reader.execute("PRAGMA user_version").fetchone()[0] >= 3
        return read_request_buffers(
            self._reader, self.path, seq, msg_id, lengths, inline=self._inline_requests
        )
