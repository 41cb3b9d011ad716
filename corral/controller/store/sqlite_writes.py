"""The SQLite store's two per-write paths, compiled by ``make native``: a record's row queued in
the caller's thread (:class:`RowQueue`) and a batch applied in the writer thread
(:func:`apply_batch`).

Both ran as methods of :class:`~.sqlite.SQLiteStore`, which stays uncompiled (the memory and
MongoDB stores, and tests, subclass its base class, which a compiled class cannot be): for a
load-balanced no-op they were about 3 us of the Hub's thread (the calls around
:func:`~.sqlite_rows.encode_exact`, the write's queueing and its size accounting) and some 7 us
of the writer thread's Python between SQLite's steps (the runs, the rows' values bound one
after the other, the statements' sizes). The store keeps what is not per write: connections,
the long way of a record that is not the Hub's usual one, reads.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .base import MessageJSON
from .retention import Purge, Retention
from .sqlite_batches import (
    KnownRows,
    merge_upserts,
    request_parts_sql,
    rows_per_statement,
    statement_sizes,
    upsert_runs,
    upsert_sql,
)
from .sqlite_rows import ROW_OVERHEAD, Payload, Row, encode_exact
from .sqlite_schema import DELETE, INSERT_CHUNK, INSERT_REQUEST_PART
from .writer import BatchWriter, WriteOp

_sched_yield = os.sched_yield
#: ``_tuple_new(WriteOp, (...))`` is ``WriteOp(...)`` made in C, without the named tuple's
#: ``__new__`` (a Python call, compiled or not), as :mod:`.sqlite_rows` makes its rows.
_tuple_new = tuple.__new__


def give_way() -> None:
    """Let a thread waiting for this CPU run now (``sched_yield``), between the statements of
    a batch. A batch is 0.3-1 ms of CPU at a trickle of tasks, and the kernel lets a running
    thread use up its slice (1.4 ms here) before a woken one preempts it, nice 10 or not: an
    engine's or a client's thread woken on the writer's CPU waited for the whole batch, the
    cause of most of the slowest 1% of apply round trips (bench/README.md, round twelve).
    With a way given between statements it waits for one statement at most."""
    _sched_yield()


class RowQueue:
    """The caller's side of a write that :func:`~.sqlite_rows.encode_exact` encodes (every
    write the Hub makes of its own records): the row made, queued on ``writer``, and its size
    counted by ``retention`` (under ``lock``, as the store counts every write), a purge the
    size limit then requires handed to ``purge``. Anything else is declined, for the store's
    long way (validated, buffers over the limit omitted, encoded field by field)."""

    def __init__(
        self,
        writer: BatchWriter[Payload],
        chunk_bytes: int,
        retention: Retention | None,
        lock: threading.Lock,
        purge: Callable[[Purge], None],
    ) -> None:
        self.writer = writer
        self.chunk_bytes = chunk_bytes
        self.retention = retention
        self.lock = lock
        self.purge = purge

    def upsert(
        self, msg_id: object, fields: Mapping[str, Any], json_texts: MessageJSON | None
    ) -> bool:
        """Queue the write and count it (True), or decline it (False: nothing done).
        ``msg_id`` and ``fields`` are what the store's caller passed, unchecked (as
        :func:`~.sqlite_rows.encode_exact` takes them). A StoreError of an earlier write is
        raised once this one is queued (which is then not counted, as on the long way), as
        :meth:`BatchWriter.submit` raises it."""
        retention = self.retention
        limit = retention.settings.buffer_limit if retention is not None else None
        row = encode_exact(msg_id, fields, self.chunk_bytes, limit, json_texts)
        if row is None:
            return False
        msg_ids: tuple[str, ...] = (row.values[0],)  # msg_id, checked a str by encode_exact
        self.writer.submit(_tuple_new(WriteOp, ("upsert", msg_ids, row)))
        if retention is not None:
            with self.lock:  # encode_exact worked out the row's size
                msg_id = msg_ids[0]
                repeated = ROW_OVERHEAD + len(msg_id)  # the row's, and its msg_id column
                purge = retention.recorded(msg_id, row.known_size, fields.get("status"), repeated)
            if purge is not None:
                self.purge(purge)
        return True


def apply_batch(db: sqlite3.Connection, batch: list[WriteOp[Payload]], known: KnownRows) -> None:
    """One transaction (the writer thread's step, :meth:`~.sqlite.SQLiteStore._apply`): a
    record's upserts merged into one row where they can be, then runs of upserts with the same
    columns go in a few multi-row statements (which rows exist already, so which writes may be
    grouped: :class:`KnownRows`, no query). The writer gives way to other threads between
    statements (:func:`give_way`)."""
    dropped = False
    batch = merge_upserts(batch)
    db.execute("BEGIN IMMEDIATE")
    try:
        for columns, run in upsert_runs(batch, known.ids):
            if columns is None:
                for op in run:
                    db.execute(DELETE, (orjson.dumps(op.msg_ids).decode(),))
                    dropped = True
                    give_way()
            else:
                _upsert_run(db, columns, run)  # gives way after each statement
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    known.committed(batch)
    if dropped:
        # give the pages of dropped records back to the file system (the file shrinks at the
        # next checkpoint), so purges free disk space, not just rows
        db.executescript("PRAGMA incremental_vacuum")  # execute() frees one page only


def _upsert_run(
    db: sqlite3.Connection, columns: tuple[str, ...], run: list[WriteOp[Payload]]
) -> None:
    """Upserts of the same columns: a few multi-row statements (:func:`statement_sizes`), then a
    few more for the parts of requests kept apart from their rows; a chunked row is written
    alone and followed by its chunks, and a second row with parts for the same msg_id waits for
    the first's (each row's triggers remove the old chunks and parts before the new ones go
    in)."""
    rows: list[Row] = []
    parts: list[tuple[str, int, memoryview]] = []
    with_parts: set[str] = set()
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    most = rows_per_statement(len(columns), limit)
    parts_most = rows_per_statement(3, limit)
    for op in run:
        row = op.payload
        if row is None:
            continue
        msg_id = op.msg_ids[0]
        chunked = row.chunk > 0
        if chunked or msg_id in with_parts:
            _write_rows(db, columns, rows, most, parts, parts_most)
            with_parts.clear()
        if chunked:
            db.execute(upsert_sql(columns), row.parameters())
            db.executemany(INSERT_CHUNK, row.chunks())
            if row.request_part:
                db.executemany(INSERT_REQUEST_PART, row.request_parts())
            continue
        rows.append(row)
        if row.request_part:
            parts.extend(row.request_parts())
            with_parts.add(msg_id)
    _write_rows(db, columns, rows, most, parts, parts_most)


def _write_rows(
    db: sqlite3.Connection,
    columns: tuple[str, ...],
    rows: list[Row],
    most: int,
    parts: list[tuple[str, int, memoryview]],
    parts_most: int,
) -> None:
    """The rows gathered (then emptied), ``most`` to a statement at most, then the parts of
    their requests, ``parts_most`` to a statement: a way given after each statement."""
    start = 0
    for size in statement_sizes(len(rows), most):
        values: list[Any] = []
        for at in range(start, start + size):
            rows[at].bind(values)
        db.execute(upsert_sql(columns, size), values)
        give_way()
        start += size
    start = 0
    for size in statement_sizes(len(parts), parts_most):
        values = []
        for at in range(start, start + size):
            values.extend(parts[at])
        db.execute(request_parts_sql(size), values)
        give_way()
        start += size
    rows.clear()
    parts.clear()
