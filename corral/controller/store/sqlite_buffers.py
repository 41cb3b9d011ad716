"""Reading a record's buffers back from the SQLite store's file, and checking they are whole.

Result buffers are one BLOB in the row, read through a blob handle straight into one bytes
object per buffer, or (past the chunk size) chunks in ``buffer_chunks``; a request's buffers
are the row's ``request_data`` BLOB, cut at their lengths, or parts in ``request_buffers`` (a
request past the chunk size, or any written by schema version 2). A buffer whose stored bytes
do not add up to its recorded length is a damaged store: StoreError naming the task, never a
short buffer. The write side of the same layout is :class:`~.sqlite_rows.Row`
(``chunks``, ``request_parts``); the tables are :mod:`.sqlite_schema`'s.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from corral.errors import StoreError

from .base import BUFFERS_FIELD
from .sqlite_schema import IS_CHUNKED, READ_CHUNKS, READ_REQUEST_DATA, READ_REQUEST_PARTS

__all__ = ["read_chunks", "read_request_buffers", "read_result_buffers", "split"]


def read_result_buffers(
    db: sqlite3.Connection, path: Path, seq: int, msg_id: str, lengths: list[int]
) -> list[bytes]:
    """Each buffer read straight from the BLOB into its own bytes object: one copy (a
    chunked buffer of more than one chunk: two)."""
    if not any(lengths):
        return [b"" for _ in lengths]
    (chunked,) = db.execute(IS_CHUNKED, (seq,)).fetchone()
    if chunked:
        return read_chunks(db, path, msg_id, lengths)
    with db.blobopen("tasks", BUFFERS_FIELD, seq, readonly=True) as blob:
        return [blob.read(length) if length else b"" for length in lengths]


def read_request_buffers(
    db: sqlite3.Connection,
    path: Path,
    seq: int,
    msg_id: str,
    lengths: list[int],
    *,
    inline: bool,
) -> list[bytes]:
    """A request's buffers: the row's BLOB read in one query and cut (a single buffer is
    the BLOB itself), or joined from their parts (a request larger than the chunk size, or
    one written by schema version 2). ``inline``: the store's schema has the BLOB column."""
    if inline:
        (data,) = db.execute(READ_REQUEST_DATA, (seq,)).fetchone()
        if data is not None:
            if len(data) != sum(lengths):
                raise StoreError(
                    f"the result store {path} is damaged: the request buffers of "
                    f"{msg_id} should hold {sum(lengths)} bytes, its row holds {len(data)}"
                )
            return split(data, lengths)
    return read_chunks(db, path, msg_id, lengths, READ_REQUEST_PARTS)


def read_chunks(
    db: sqlite3.Connection, path: Path, msg_id: str, lengths: list[int], sql: str = READ_CHUNKS
) -> list[bytes]:
    """Buffers of these lengths joined from the pieces ``sql`` reads for ``msg_id`` in order
    (result chunks, or with :data:`~.sqlite_schema.READ_REQUEST_PARTS` a request's parts)."""
    chunks = (row[0] for row in db.execute(sql, (msg_id,)))
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
                f"the result store {path} is damaged: a buffer of {msg_id} should "
                f"hold {length} bytes, its chunks hold {got}"
            )
        buffers.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
    return buffers


def split(data: bytes, lengths: list[int]) -> list[bytes]:
    """Buffers of these lengths, one after the other in ``data`` (one buffer: ``data`` itself)."""
    if len(lengths) == 1 and lengths[0] == len(data):
        return [data]
    view = memoryview(data)
    buffers: list[bytes] = []
    start = 0
    for length in lengths:
        buffers.append(bytes(view[start : start + length]))
        start += length
    return buffers
