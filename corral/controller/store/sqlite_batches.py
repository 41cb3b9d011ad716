"""How the SQLite writer turns a batch of encoded writes into few statements, with no
connection in sight.

A batch (the writes queued while the last one committed, see :class:`~.base.BatchWriter`) is
applied as: a record's upserts merged into one row where they can be (:func:`merge_upserts`),
upserts of the same columns gathered into runs that keep the batch's meaning
(:func:`upsert_runs`, which needs to know which rows exist: :class:`KnownRows`), and each run
written by a few multi-row statements (:func:`statement_sizes`, :func:`upsert_sql`). Applying
the statements gives what applying the batch write by write gives (tested so).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any, Final

from .base import BUFFERS_FIELD, WriteOp
from .sqlite_rows import Payload, Row
from .sqlite_schema import REQUEST_DATA, SCALAR_COLUMNS

#: The most rows one upsert statement writes. A run of rows goes in statements of
#: power-of-two sizes up to this (a few statements to prepare per set of columns): each
#: statement is one step in SQLite, so one release of the GIL, where ``executemany`` steps,
#: and releases it, once per row. 64 rows of the widest layout bind under 2,000 values, far
#: under SQLite's usual limit of 32,766 (a library built with a lower one gets fewer rows per
#: statement: :func:`rows_per_statement`).
ROWS_PER_STATEMENT: Final = 64


def statement_sizes(count: int, most: int = ROWS_PER_STATEMENT) -> Iterator[int]:
    """How many rows each statement of a run of ``count`` rows writes: as many of ``most`` (a
    power of two) as fit, then the binary digits of the rest (``100``: 64, 32, 4)."""
    while count:
        size = min(most, 1 << (count.bit_length() - 1))
        yield size
        count -= size


def rows_per_statement(columns: int, max_values: int) -> int:
    """The most rows of ``columns`` values one statement binds under SQLite's ``max_values``
    limit: a power of two, at most :data:`ROWS_PER_STATEMENT`, at least 1."""
    fit = max(1, min(ROWS_PER_STATEMENT, max_values // max(1, columns)))
    return 1 << (fit.bit_length() - 1)


@functools.lru_cache(maxsize=512)
def upsert_sql(columns: tuple[str, ...], rows: int = 1) -> str:
    """The upsert of ``rows`` rows of these columns in one statement (multi-row VALUES: the
    rows are applied in order, a later one updating what an earlier one inserted)."""
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
    values = ", ".join([f"({', '.join('?' * len(columns))})"] * rows)
    return (
        f"INSERT INTO tasks ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT (msg_id) DO UPDATE SET {', '.join(updates)}"
    )


@functools.lru_cache(maxsize=16)
def request_parts_sql(rows: int) -> str:
    """The insert of ``rows`` parts of requests' buffers ((msg_id, part, data) each) in one
    statement: a batch's requests kept apart from their rows (:data:`~.sqlite_rows.
    REQUEST_APART`) go in a few statements, not one step (and one release of the GIL) each."""
    values = ", ".join(["(?, ?, ?)"] * rows)
    return f"INSERT INTO request_buffers (msg_id, part, data) VALUES {values}"


#: Every column an upsert may write, in the order :func:`_layout` puts them.
_COLUMN_ORDER = (
    "msg_id",
    "present",
    *SCALAR_COLUMNS,
    "extra",
    "request_buffer_lengths",
    "buffer_lengths",
    REQUEST_DATA,
    BUFFERS_FIELD,
)
#: The columns whose value a row's ``values`` lack (the writer joins them from the buffers).
_BLOBS = (REQUEST_DATA, BUFFERS_FIELD)


@functools.lru_cache(maxsize=256)
def _merged_layout(
    first: tuple[str, ...], second: tuple[str, ...]
) -> tuple[tuple[str, ...], Callable[[tuple[Any, ...]], tuple[Any, ...]]] | None:
    """The columns of two upserts of one record written as one, and a getter that picks each
    value from the two rows' values joined (the second's where both write a column). None
    when both write ``extra`` (merged by SQLite's ``json_patch``, not here)."""
    if "extra" in first and "extra" in second:
        return None
    names = {*first, *second}
    columns = tuple(name for name in _COLUMN_ORDER if name in names)
    # the BLOB columns (always last) have no value: the writer appends the joined buffers,
    # so a column's index among the names is its value's index
    offset = len(first) - (REQUEST_DATA in first) - (BUFFERS_FIELD in first)
    indices = [
        offset + second.index(name) if name in second else first.index(name)
        for name in columns
        if name not in _BLOBS
    ]
    return columns, operator.itemgetter(*indices)


def merge_rows(first: Row, second: Row) -> Row | None:
    """One row that writes what ``first`` then ``second`` (upserts of the same record) write,
    or None when they must stay two (both carry extra fields). The second's value wins for a
    column both write; ``present`` bits add up; buffers are the last ones written. When the
    second writes every field the first does (a waiting task's engine, then its result, which
    names the engine again), that is ``second`` itself: no new row, no lookup of a merged
    layout (halved the writer's merging per task: 1.8 -> 0.8 us)."""
    if not first.values[1] & ~second.values[1] and "extra" not in first.columns:
        return second
    layout = _merged_layout(first.columns, second.columns)
    if layout is None:
        return None
    columns, pick = layout
    a, b = first.values, second.values
    values = pick(a + b)
    values = (values[0], a[1] | b[1], *values[2:])  # present: both rows' bits
    result = second if BUFFERS_FIELD in second.columns else first
    request = second if "request_buffer_lengths" in second.columns else first
    return Row(
        columns,
        values,
        result.buffers,
        result.chunk,
        request.request_buffers,
        request.request_part,
    )


def merge_upserts(batch: Sequence[WriteOp[Payload]]) -> list[WriteOp[Payload]]:
    """The batch with each record's upserts written as one where they can be (a task's
    request and its reply usually land in the same batch: one row inserted whole instead of
    inserted, then updated). The merged write takes the place of the record's first one, so
    rows are still numbered in the order they were first written; a drop is a barrier no
    merge crosses. Applying the result is applying the batch write by write."""
    merged: list[WriteOp[Payload]] = []
    index: dict[str, int] = {}  # msg_id -> its merged upsert's place in ``merged``
    rows: dict[int, Row] = {}  # place -> the row merged there so far (WriteOps made at the end)
    for op in batch:
        row = op.payload
        if row is None:
            index.clear()
            merged.append(op)
            continue
        msg_id = op.msg_ids[0]
        end = len(merged)
        at = index.setdefault(msg_id, end)
        if at != end:
            previous = rows.get(at) or merged[at].payload
            assert previous is not None
            combined = merge_rows(previous, row)
            if combined is not None:
                rows[at] = combined
                continue
            index[msg_id] = end
        merged.append(op)
    for at, row in rows.items():
        merged[at] = WriteOp("upsert", merged[at].msg_ids, row)
    return merged


Run = tuple[tuple[str, ...] | None, list[WriteOp[Payload]]]


def upsert_runs(batch: Sequence[WriteOp[Payload]], existing: Container[str]) -> list[Run]:
    """The batch as runs to apply in order, each run one ``executemany`` (columns) or a drop
    (None). Upserts with the same columns are gathered into one run, not only when adjacent
    (a task's request and another's reply alternate in a batch), within two rules that make
    the result that of applying the batch write by write: every write of a record lands in a
    run no earlier than its previous write, and writes that insert a row (its msg_id not in
    ``existing`` before the batch, or dropped since) stay in their order, so rows are
    numbered (``seq``) in the order they were written. A drop is a barrier nothing crosses."""
    runs: list[Run] = []
    open_runs: dict[tuple[str, ...], int] = {}  # columns -> the run writes may still join
    last_run: dict[str, int] = {}  # msg_id -> the run of its latest write
    dropped: set[str] = set()  # msg_ids dropped in this batch, not written since
    last_insert = -1  # the run of the latest write that inserts a row
    for op in batch:
        row = op.payload
        if row is None:
            runs.append((None, [op]))
            open_runs.clear()
            last_run.clear()
            dropped.update(op.msg_ids)
            last_insert = len(runs) - 1
            continue
        msg_id = op.msg_ids[0]
        inserts = msg_id not in last_run and (msg_id in dropped or msg_id not in existing)
        index = open_runs.get(row.columns, -1)
        if index < 0 or index < last_run.get(msg_id, -1) or (inserts and index < last_insert):
            index = len(runs)
            runs.append((row.columns, []))
            open_runs[row.columns] = index
        runs[index][1].append(op)
        last_run[msg_id] = index
        dropped.discard(msg_id)
        if inserts:
            last_insert = index
    return runs


#: How many writes queued behind a batch :func:`later_updates` looks at (the writer's
#: batches are at most 1000 writes: a task's writes queued some hundred apart, when the Hub
#: reads its copies behind a backlog, are found within one batch's length).
LOOK_AHEAD: Final = 1000


def later_updates(
    batch: Sequence[WriteOp[Payload]], queued: Iterable[WriteOp[Payload]]
) -> list[int]:
    """The places, among ``queued`` (writes queued after ``batch``, in order), of the upserts
    that may be applied with the batch, so that a record's writes that a batch's size limit
    cut apart land in one batch again (and merge into one row, :func:`merge_upserts`): with a
    backlog, a waiting task's engine row ends one batch and its result starts the next, and
    each rewrote the task's page.

    Those are the later upserts of records the batch upserts (and does not drop after),
    before the first drop queued: each updates a row that exists once the batch is applied
    (no new ``seq``), and upserts of different records commute, so applying them early gives
    what applying the queue in order gives. A record's later writes are all taken, in order.
    Applied early, a write is committed sooner, never later."""
    written: set[str] = set()
    for op in batch:
        if op.payload is None:
            written.difference_update(op.msg_ids)
        else:
            written.add(op.msg_ids[0])
    found: list[int] = []
    if not written:
        return found
    for place, op in enumerate(queued):
        if op.payload is None:
            break
        if op.msg_ids[0] in written:
            found.append(place)
    return found


#: How many msg_ids :class:`KnownRows` remembers at least (at most twice as many, some 4 MB):
#: more than the tasks a busy cluster queues between a task's request and its result (5000 in
#: ``bench_cpu_roles.py``); a longer queue only groups its results' writes less well.
KNOWN_ROWS: Final = 1 << 14


class KnownRows:
    """The msg_ids whose rows exist because the writer upserted them in a committed batch and
    has not dropped them since: what :func:`upsert_runs` needs to know of a batch without a
    query (``ids``, a dict for its C-speed ``in``). Bounded: at least the last ``limit``
    first written are kept; a msg_id forgotten (or written before this store was opened) only
    counts as one whose write may insert a row, which keeps that write in its place among
    inserts: fewer writes grouped, the same result."""

    def __init__(self, limit: int = KNOWN_ROWS) -> None:
        self._limit = limit
        self.ids: dict[str, None] = {}

    def committed(self, batch: Iterable[WriteOp[Payload]]) -> None:
        """The batch is committed: its upserted rows exist, its dropped ones do not."""
        ids = self.ids
        for op in batch:
            if op.payload is None:
                for msg_id in op.msg_ids:
                    ids.pop(msg_id, None)
            else:
                ids[op.msg_ids[0]] = None
        if len(ids) > 2 * self._limit:  # keep the newest (in the order first written)
            self.ids = dict.fromkeys(list(ids)[-self._limit :])
