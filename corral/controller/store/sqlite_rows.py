"""How a task record becomes a SQLite row and back, with no connection in sight.

The layout (docs in :mod:`.sqlite`): one ``tasks`` row per record, known fields as columns,
dict fields as JSON text, unknown fields JSON-encoded in ``extra``, a ``present`` bit per
known field (a field set to None differs from one never set), and result buffers either as
one BLOB or, past :data:`CHUNK_BYTES` in all, as chunks in ``buffer_chunks``. A request's
own buffers (``buffers``) go the same way: one BLOB in the row's ``request_data`` (schema
version 3), or from :data:`REQUEST_APART` bytes in all parts of at most :data:`CHUNK_BYTES`
in ``request_buffers`` (version 2 kept every request there, one row per buffer), their lengths
in the row. Everything
here is pure: encoding a record (in the caller's thread, so a bad value fails at the call),
the WHERE clause for a parsed query, and decoding a row. The tables and the fixed statements
are in :mod:`.sqlite_schema`; how the writer turns a batch of rows into statements is in
:mod:`.sqlite_batches`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final, NamedTuple, cast

import orjson

from corral.errors import StoreError

from .base import (
    BOOL_FIELDS,
    BUFFERS_FIELD,
    DICT_FIELDS,
    IN_TEXTS,
    INT64_MAX,
    INT64_MIN,
    INT_FIELDS,
    JSON_FRAME_OF,
    KNOWN_FIELDS,
    REQUEST_BUFFERS_FIELD,
    TEXT_FIELDS,
    MessageJSON,
)
from .query import Atom
from .sqlite_schema import (
    ALL_COLUMNS,
    CHUNK_BYTES,
    PRESENT_BITS,
    REQUEST_DATA,
    SCALAR_COLUMNS,
)

_JSON_LIST_MIN = 16
#: A request whose buffers hold at least this many bytes in all keeps them apart from its row,
#: as parts in ``request_buffers`` (one per buffer up to the chunk size), not in the row's
#: ``request_data``: its result rewrites the row (and its page) a moment later, so a row
#: without them is rewritten at a fraction of the cost, while the parts are appended once and
#: never touched again. A function pickled by value (a notebook's, ``__main__``'s: 400-600
#: bytes for a small one) goes apart; one pickled by reference (about 50 bytes) stays in the
#: row, where a second insert would cost more than it saves (plain SQLite, a request row
#: rewritten by its result 2000 tasks later, thread CPU per task in the row against apart:
#: 52 bytes 11-17 against 19 us, 250 bytes even, 500 bytes 18-20 against 15-16 us and 30%
#: fewer write calls; bench/README.md, round sixteen). Both ways are schema version 3: a
#: reader looks for the parts when ``request_data`` is NULL.
REQUEST_APART: Final = 384
ROW_OVERHEAD = 64
_COMPARE = {"$eq": "=", "$ne": "IS NOT", "$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}


class Row(NamedTuple):
    """An encoded upsert: column names, their values, and the result buffers as given
    (joined into one BLOB by the writer thread, not the caller); ``chunk`` is the size of
    their chunks when they are too large for one BLOB, else 0. ``request_buffers`` (None:
    not written) likewise: one BLOB in ``request_data``, or when ``request_part`` is not 0,
    parts of at most that many bytes in ``request_buffers``. The two BLOB columns come last
    in ``columns`` and have no entry in ``values`` (:meth:`parameters` adds them)."""

    columns: tuple[str, ...]
    values: tuple[Any, ...]
    buffers: list[Any] | None
    chunk: int = 0
    request_buffers: list[Any] | None = None
    request_part: int = 0
    known_size: int = -1  # size() worked out while encoding (-1: not)

    def size(self) -> int:
        """Bytes this write adds to the file, roughly: its text and its buffers."""
        if self.known_size >= 0:
            return self.known_size
        text = sum([len(value) for value in self.values if value.__class__ is str])
        buffers = sum(map(len, self.buffers or ()))  # bytes or flat byte views
        return ROW_OVERHEAD + text + buffers + sum(map(len, self.request_buffers or ()))

    @property
    def chunked(self) -> bool:
        """Whether the buffers go to ``buffer_chunks`` (the row's BLOB then NULL)."""
        return self.chunk > 0

    def parameters(self) -> tuple[Any, ...]:
        """The values to bind, the BLOBs joined (in the writer thread)."""
        values: list[Any] = []
        self.bind(values)
        return tuple(values)

    def bind(self, values: list[Any]) -> None:
        """Append the values to bind to ``values``, the BLOBs joined (in the writer thread):
        a multi-row statement's parameters are its rows' one after the other, made without a
        tuple per row."""
        values += self.values
        columns = self.columns
        last = columns[-1]
        if last == BUFFERS_FIELD:
            if columns[-2] == REQUEST_DATA:
                values.append(self._request_blob())
            buffers = self.buffers
            values.append(None if buffers is None or self.chunk else _joined(buffers))
        elif last == REQUEST_DATA:
            values.append(self._request_blob())

    def _request_blob(self) -> Any:
        buffers = self.request_buffers
        return None if buffers is None or self.request_part else _joined(buffers)

    def chunks(self) -> Iterator[tuple[str, int, memoryview]]:
        """(msg_id, part, data) of a chunked row: each buffer cut in pieces of at most
        ``chunk`` bytes, in order, no piece spanning two buffers; views, not copies."""
        part = 0
        for buffer in self.buffers or ():
            view = memoryview(buffer).cast("B")
            for start in range(0, view.nbytes, self.chunk):
                yield self.values[0], part, view[start : start + self.chunk]
                part += 1

    def request_parts(self) -> Iterator[tuple[str, int, memoryview]]:
        """(msg_id, part, data) of the request's buffers, as :meth:`chunks` cuts them (none
        when they go in the row's BLOB)."""
        if not self.request_part:
            return
        part = 0
        for buffer in self.request_buffers or ():
            view = memoryview(buffer).cast("B")
            for start in range(0, view.nbytes, self.request_part):
                yield self.values[0], part, view[start : start + self.request_part]
                part += 1


Payload = Row | None  # None: a drop, whose msg_ids are the WriteOp's

#: ``_tuple_new(Row, (...))`` makes the Row that ``Row(...)`` makes, in C, without the named
#: tuple's generated ``__new__`` (a Python frame): 0.17 -> 0.09 us. The Hub's thread makes two
#: or three rows per task (:func:`encode_exact`, :func:`engine_row`).
_tuple_new = tuple.__new__


def _joined(buffers: list[Any]) -> Any:
    """Buffers as one value to bind: a single buffer as it is (no copy)."""
    return buffers[0] if len(buffers) == 1 else b"".join(buffers)


def _dumps(name: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise StoreError(f"field {name!r} cannot be stored as JSON in SQLite: {exc}") from None


#: How :func:`_exact_values` checks and encodes a scalar: text, integer, bool, JSON of a dict
#: (``Final``, as the bounds below: compiled, a constant, not a lookup in the module's dict).
_TEXT: Final = 0
_INT: Final = 1
_BOOL: Final = 2
_JSON: Final = 3
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: One scalar of a layout on the one-pass way: its name, the exact type of its values, how it
#: is encoded, and the frame of a message's JSON (:data:`~.base.MessageJSON`) a dict field is
#: decoded from (-1: none).
_Check = tuple[str, type, int, int]


class _Layout(NamedTuple):
    """Where the fields of a record with a given set of names go: the ``present`` bits, the
    scalar columns in column order (and whether each holds JSON), the names kept in ``extra``,
    and whether request or result buffers are written; ``checks``: :func:`encode_exact`'s
    check and encoding of each scalar of such a record, in column order; ``texts``: whether
    the JSON frames of one message may stand for its dict fields (not when it holds both a
    request's and a result's, whose frames would be two messages')."""

    present: int
    scalars: tuple[tuple[str, bool], ...]
    extras: tuple[str, ...]
    columns: tuple[str, ...]
    request: bool
    buffers: bool
    checks: tuple[_Check, ...]
    texts: bool


_TYPES: dict[str, type] = {
    **dict.fromkeys(TEXT_FIELDS, str),
    **dict.fromkeys(INT_FIELDS, int),
    **dict.fromkeys(BOOL_FIELDS, bool),
    **dict.fromkeys(DICT_FIELDS, dict),
}
_HOW = {str: _TEXT, int: _INT, bool: _BOOL, dict: _JSON}


@functools.lru_cache(maxsize=256)
def _layout(names: tuple[str, ...]) -> _Layout:
    """The layout of a record with these field names, worked out once per set of names (the
    Hub writes a few kinds of record, each always with the same names)."""
    present = 0
    extras: list[str] = []
    for name in names:
        if name in PRESENT_BITS:
            present |= PRESENT_BITS[name]
        elif name != "msg_id":
            extras.append(name)
    scalars = tuple((name, name in DICT_FIELDS) for name in SCALAR_COLUMNS if name in names)
    columns = ["msg_id", "present", *(name for name, _ in scalars)]
    if extras:
        columns.append("extra")
    request = REQUEST_BUFFERS_FIELD in names
    if request:
        columns.append("request_buffer_lengths")
    buffers = BUFFERS_FIELD in names
    if buffers:
        columns.append("buffer_lengths")
    if request:  # the BLOBs last: they have no value until the writer joins them
        columns.append(REQUEST_DATA)
    if buffers:
        columns.append(BUFFERS_FIELD)
    checks = tuple(
        (name, _TYPES[name], _HOW[_TYPES[name]], JSON_FRAME_OF.get(name, -1)) for name, _ in scalars
    )
    messages = {name.startswith("result_") for name, is_json in scalars if is_json}
    return _Layout(
        present,
        scalars,
        tuple(extras),
        tuple(columns),
        request,
        buffers,
        checks,
        len(messages) < 2,
    )


def _exact_values(
    msg_id: str, present: int, fields: dict[str, Any], layout: _Layout, texts: MessageJSON | None
) -> tuple[list[Any], int] | None:
    """The values of a record's row so far (msg_id, ``present``, the scalars in column order)
    and the length of their text, for :func:`encode_exact`; None for a value not exactly its
    field's type. Each scalar: None as it is, else exactly its field's type; a dict
    JSON-encoded (StoreError when it cannot be), an int within 64 bits. With ``texts`` (the
    JSON frames of the message the record's dict fields were decoded from,
    :meth:`~.base.ResultStore.add_decoded_record`), each dict field's frame is kept as it came
    (UTF-8 decoded) instead of encoding its dict again; a frame that is not UTF-8 (never one a
    dict was decoded from) is encoded as without ``texts``, and so is every field of a record
    that holds both a request's and a result's. A dict field left in its frame
    (:data:`~.base.IN_TEXTS`) is kept as it came, and declined (None) without the frames."""
    if not layout.texts:
        texts = None
    text = len(msg_id)
    values: list[Any] = [msg_id, present]
    for name, kind, how, frame in layout.checks:
        value: Any = fields[name]
        if value is not None:
            # a dict field left in its frame (IN_TEXTS) is kept as it came, or declined
            if type(value) is not kind and (value is not IN_TEXTS or how != _JSON or texts is None):
                return None
            if how == _JSON:
                encoded: str | None = None
                if texts is not None:
                    try:
                        encoded = texts[frame].decode()
                    except UnicodeDecodeError:
                        encoded = None
                if encoded is None:
                    if value is IN_TEXTS:
                        return None
                    encoded = _dumps(name, value)
                text += len(encoded)
                values.append(encoded)
                continue
            if how == _TEXT:
                text += len(cast(str, value))
            elif how == _INT and not _INT64_MIN <= cast(int, value) <= _INT64_MAX:
                return None
        values.append(value)
    return values, text


def encode_row(fields: dict[str, Any], chunk_bytes: int = CHUNK_BYTES) -> Row:
    """The row that upserts these (validated) fields; buffers of more than ``chunk_bytes`` in
    all are marked for chunks of that size."""
    layout = _layout(tuple(fields))
    values: list[Any] = [fields["msg_id"], layout.present]
    for name, is_json in layout.scalars:
        value = fields[name]
        values.append(_dumps(name, value) if is_json and value is not None else value)
    if layout.extras:
        values.append(_dumps("extra fields", {name: [fields[name]] for name in layout.extras}))
    return _with_buffers(layout, values, fields, chunk_bytes)


def _with_buffers(
    layout: _Layout, values: list[Any], fields: dict[str, Any], chunk_bytes: int
) -> Row:
    """The row, once its scalar values are encoded: the buffers' lengths, and the buffers."""
    request = result = None
    request_size = result_size = 0
    if layout.request:
        request = fields[REQUEST_BUFFERS_FIELD]
        request_size = _append_lengths(values, request)
    if layout.buffers:
        result = fields[BUFFERS_FIELD]
        result_size = _append_lengths(values, result)
    return Row(
        layout.columns,
        tuple(values),
        result,
        chunk_bytes if result_size > chunk_bytes else 0,
        request,
        chunk_bytes if request_size > chunk_bytes or request_size >= REQUEST_APART else 0,
    )


def _append_lengths(values: list[Any], buffers: list[Any] | None) -> int:
    """Append the lengths column of ``buffers`` (NULL for none) to ``values``; the buffers'
    total size."""
    if buffers is None:
        values.append(None)
        return 0
    size, encoded = _lengths(buffers)
    values.append(encoded)
    return size


def _lengths(buffers: list[Any]) -> tuple[int, str]:
    """The size of these buffers (bytes or flat byte views) in all, and their lengths as the
    JSON the row keeps."""
    lengths = list(map(len, buffers))
    return sum(lengths), orjson.dumps(lengths).decode()


def _buffers_column(
    values: list[Any], buffers: Any, buffer_limit: int | None, chunk_bytes: int, apart: int
) -> tuple[int, int] | None:
    """Append the lengths column of ``buffers`` (None stays None) to ``values``; the bytes it
    adds to the row's size and the chunk to write it in (0: in one piece), or None when
    :func:`_flat_lengths` refuses them (the caller takes the general way). Buffers of more
    than ``chunk_bytes``, or at least ``apart`` bytes, in all go in chunks."""
    if buffers is None:
        values.append(None)
        return 0, 0
    lengths = _flat_lengths(buffers, buffer_limit)
    if lengths is None:
        return None
    values.append(lengths[1])
    size = lengths[0]
    return size + len(lengths[1]), chunk_bytes if size > chunk_bytes or size >= apart else 0


def _flat_lengths(value: Any, limit: int | None) -> tuple[int, str] | None:
    """The size in all and the lengths column (:func:`_lengths`) of buffers
    :func:`~.base.validate_record` keeps as they are (a list of bytes and flat, contiguous
    byte views) and, with ``limit``, no more than it in all; None for anything else. One
    pass, and one buffer's lengths without a JSON encoder (the Hub's usual request and
    result)."""
    if value.__class__ is not list:
        return None
    for buffer in value:
        if buffer.__class__ is bytes:
            continue
        if not (
            buffer.__class__ is memoryview
            and buffer.format == "B"
            and buffer.ndim == 1
            and buffer.c_contiguous
        ):
            return None
    if len(value) == 1:
        size = len(value[0])
        encoded = f"[{size}]"
    else:
        size, encoded = _lengths(value)
    if limit is not None and size > limit:
        return None
    return size, encoded


#: :func:`_layout` of each set of names :func:`encode_exact` met, in a plain dict (compiled, a
#: lookup in C; the ``lru_cache`` wrapper is a generic call, about 1.3k instructions a write),
#: at most :data:`_LAYOUTS_KEPT` of them (the Hub writes a few kinds of record).
_LAYOUTS: Final[dict[tuple[str, ...], _Layout]] = {}
_LAYOUTS_KEPT: Final = 256


def encode_exact(
    msg_id: object,
    fields: Mapping[str, Any],
    chunk_bytes: int,
    buffer_limit: int | None,
    json_texts: MessageJSON | None = None,
) -> Row | None:
    """The row for a write that :func:`~.base.validate_record` would pass unchanged and the
    per-task buffer limit keeps whole, in one pass: every name a known field, every value None
    or of exactly its field's type (an int within 64 bits; buffers a list of bytes or flat
    byte views of at most ``buffer_limit`` in all). None for anything else: the caller then
    validates, omits and encodes the long way, which accepts and refuses what it always did.
    The Hub's own records take this path (JSON it decoded, views of frames it received); it
    makes the row :func:`encode_row` makes, with its size (tested so). ``json_texts``: the JSON
    frames of the message the record's dict fields were decoded from, kept as they came (the
    same values once read). ``msg_id`` and ``fields`` are what a caller of the store passed,
    unchecked: anything not a str and a mapping of str is declined here too (compiled, the
    annotations are checked at the call). A mapping that is not a dict is declined too (the
    long way reads it): a dict's fields are read in C, compiled, not by generic calls."""
    if type(fields) is not dict:
        return None
    record: dict[str, Any] = fields
    names = tuple(record)
    layout = _LAYOUTS.get(names)
    if layout is None:
        layout = _layout(names)
        if len(_LAYOUTS) < _LAYOUTS_KEPT:
            _LAYOUTS[names] = layout
    if (
        layout.extras
        or type(msg_id) is not str
        or not msg_id
        or record.get("msg_id", msg_id) != msg_id
    ):
        return None
    # the values, and the text Row.size counts
    checked = _exact_values(msg_id, layout.present, record, layout, json_texts)
    if checked is None:
        return None
    values, size = checked
    size += ROW_OVERHEAD
    request = result = None
    request_part = result_chunk = 0
    if layout.request:
        request = record[REQUEST_BUFFERS_FIELD]
        added = _buffers_column(values, request, buffer_limit, chunk_bytes, REQUEST_APART)
        if added is None:
            return None
        size += added[0]
        request_part = added[1]
    if layout.buffers:
        result = record[BUFFERS_FIELD]
        added = _buffers_column(values, result, buffer_limit, chunk_bytes, chunk_bytes + 1)
        if added is None:
            return None
        size += added[0]
        result_chunk = added[1]
    row = (layout.columns, tuple(values), result, result_chunk, request, request_part, size)
    return _tuple_new(Row, row)


_ENGINE_LAYOUT = _layout(("engine_uuid", "engine_id"))


def engine_row(msg_id: Any, engine_uuid: Any, engine_id: Any) -> Row | None:
    """The row :func:`encode_exact` makes of ``{"engine_uuid": engine_uuid, "engine_id":
    engine_id}`` for ``msg_id``, without a dict, a layout lookup or a generated check (the
    Hub writes one per task that waited for an engine); None where that would be None (a
    value not exactly its type: the caller then takes the long way)."""
    if (
        msg_id.__class__ is not str
        or not msg_id
        or (engine_uuid is not None and engine_uuid.__class__ is not str)
        or (
            engine_id is not None
            and (engine_id.__class__ is not int or not INT64_MIN <= engine_id <= INT64_MAX)
        )
    ):
        return None
    layout = _ENGINE_LAYOUT
    text = len(msg_id) + (0 if engine_uuid is None else len(engine_uuid))
    values = (msg_id, layout.present, engine_uuid, engine_id)
    return _tuple_new(Row, (layout.columns, values, None, 0, None, 0, ROW_OVERHEAD + text))


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


def columns_for(fields: set[str] | None) -> tuple[str, ...]:
    if fields is None:
        return ALL_COLUMNS
    columns = ["seq", "present", "msg_id"]
    columns += [name for name in SCALAR_COLUMNS if name in fields]
    if any(name not in KNOWN_FIELDS for name in fields):
        columns.append("extra")
    if REQUEST_BUFFERS_FIELD in fields:
        columns.append("request_buffer_lengths")
    if BUFFERS_FIELD in fields:
        columns.append("buffer_lengths")
    return tuple(columns)


def decode_row(row: tuple[Any, ...], columns: tuple[str, ...]) -> tuple[dict[str, Any], Any, Any]:
    """A record from a row, and the lengths of its result and request buffers when those are
    still to read (else None)."""
    present = row[1]
    record: dict[str, Any] = {"msg_id": row[2]}
    lengths = request_lengths = None
    for name, value in zip(columns[3:], row[3:], strict=True):
        if name == "extra":
            if value is not None:
                record.update((key, item[0]) for key, item in orjson.loads(value).items())
        elif name == "request_buffer_lengths":
            if present & PRESENT_BITS[REQUEST_BUFFERS_FIELD]:
                if value is None:
                    record[REQUEST_BUFFERS_FIELD] = None
                else:
                    request_lengths = orjson.loads(value)
        elif name == "buffer_lengths":
            if present & PRESENT_BITS[BUFFERS_FIELD]:
                if value is None:
                    record[BUFFERS_FIELD] = None
                else:
                    lengths = orjson.loads(value)
        elif present & PRESENT_BITS[name]:
            if value is not None:
                if name in DICT_FIELDS:
                    value = orjson.loads(value)
                elif name in BOOL_FIELDS:
                    value = bool(value)
            record[name] = value
    return record, lengths, request_lengths
