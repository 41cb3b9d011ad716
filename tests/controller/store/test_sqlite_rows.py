"""The SQLite writer's batches (``sqlite_batches``) and rows (``sqlite_rows``). How it groups a
batch into runs (``upsert_runs``): same-column upserts in
one run when that keeps every record's writes in order and the writes that insert rows in
their order; how it merges a record's upserts into one row (``merge_upserts``); and the
one-pass encoding of the Hub's records (``encode_exact``). Each checked against applying
the writes one by one, or against the long way."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from corral.controller.store import sqlite as sqlite_module
from corral.controller.store.base import IN_TEXTS, WriteOp, validate_record
from corral.controller.store.retention import RetentionSettings
from corral.controller.store.sqlite import SQLiteStore
from corral.controller.store.sqlite_batches import (
    KnownRows,
    later_updates,
    merge_rows,
    merge_upserts,
    rows_per_statement,
    statement_sizes,
    upsert_runs,
    upsert_sql,
)
from corral.controller.store.sqlite_rows import (
    Payload,
    Row,
    encode_exact,
    encode_row,
    engine_row,
)
from corral.errors import StoreError


def op(msg_id: str, columns: str) -> WriteOp[Payload]:
    row = Row(("seq", "present", "msg_id", columns), (None, 0, msg_id, columns), None)
    return WriteOp("upsert", (msg_id,), row)


def drop(*msg_ids: str) -> WriteOp[Payload]:
    return WriteOp("drop", msg_ids, None)


def shape(batch: list[WriteOp[Payload]], existing: frozenset[str] = frozenset()) -> list[list[str]]:
    return [[o.msg_ids[0] for o in ops] for _, ops in upsert_runs(batch, existing)]


def assert_batches_store_what_single_writes_store(
    grouped: SQLiteStore, single: SQLiteStore, write: Callable[[SQLiteStore], None]
) -> None:
    """``write`` applied to both stores (``single`` opened with ``max_batch=1``): they hold the
    same records in the same order. Both are closed."""
    try:
        for store in (grouped, single):
            write(store)
            store.flush()
        assert grouped.get_history() == single.get_history()
        ids = single.get_history()
        assert grouped.get_records(ids) == single.get_records(ids)
    finally:
        grouped.close()
        single.close()


def test_requests_and_replies_of_other_tasks_gather_into_two_runs() -> None:
    batch = [
        op("a", "request"),
        op("z", "reply"),
        op("b", "request"),
        op("a", "reply"),
        op("c", "request"),
        op("b", "reply"),
    ]
    assert shape(batch, frozenset({"z"})) == [["a", "b", "c"], ["z", "a", "b"]]
    # z unknown: its update inserts a row, after a's and before b's
    assert shape(batch) == [["a"], ["z", "a"], ["b", "c"], ["b"]]


def test_a_record_never_sees_a_write_before_an_earlier_one() -> None:
    batch = [op("a", "reply"), op("a", "request"), op("a", "reply")]
    assert shape(batch, frozenset({"a"})) == [["a"], ["a"], ["a"]]


def test_adds_keep_their_order_across_columns() -> None:
    batch = [
        op("a", "request"),
        op("b", "labelled"),
        op("c", "request"),
    ]
    assert shape(batch) == [["a"], ["b"], ["c"]]


def test_a_drop_is_a_barrier() -> None:
    batch = [op("a", "request"), drop("a"), op("b", "request")]
    runs = upsert_runs(batch, frozenset())
    assert [columns is None for columns, _ in runs] == [False, True, False]


def test_grouped_batches_store_what_writes_one_by_one_store(tmp_path: Path) -> None:
    """Random interleavings of adds, updates and drops: the store written in batches (grouped)
    holds the same records, in the same order, as one written a write per batch."""
    rng = random.Random(13)
    writes = []
    for step in range(400):
        msg_id = f"m{rng.randrange(40)}"
        kind = rng.choice(["add", "update", "update", "label", "drop"])
        writes.append((kind, msg_id, step))

    def write(store: SQLiteStore) -> None:
        for kind, msg_id, step in writes:
            if kind == "add":
                store.add_record(msg_id, {"status": "pending", "stdout": f"{step}"})
            elif kind == "update":
                store.update_record(msg_id, {"status": "ok", "result_buffers": [b"%d" % step]})
            elif kind == "label":
                store.update_record(msg_id, {"label": f"l{step}", "note": step})
            else:
                store.drop_records([msg_id])

    assert_batches_store_what_single_writes_store(
        SQLiteStore(tmp_path / "grouped.db"),
        SQLiteStore(tmp_path / "single.db", max_batch=1, look_ahead=0),
        write,
    )


def test_a_batch_takes_the_later_writes_of_its_records_in_order() -> None:
    batch = [op("a", "request"), op("b", "request")]
    queued = [op("c", "request"), op("a", "reply"), op("b", "reply"), op("a", "label")]
    assert later_updates(batch, queued) == [1, 2, 3]


def test_a_batch_takes_no_later_write_past_a_drop() -> None:
    queued = [op("a", "reply"), drop("z"), op("b", "reply"), op("a", "label")]
    assert later_updates([op("a", "request"), op("b", "request")], queued) == [0]


def test_a_record_the_batch_drops_has_no_row_to_update() -> None:
    queued = [op("a", "reply"), op("b", "reply")]
    assert later_updates([op("a", "request"), drop("a")], queued) == []
    assert later_updates([op("a", "request"), drop("a"), op("a", "x")], queued) == [0]
    assert later_updates([drop("a", "b")], queued) == []


def test_batches_that_take_later_writes_store_what_writes_one_by_one_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes of random interleavings queued at once, so that the writer's small batches
    are cut and take later writes of their records (counted, so the test sees it happen):
    the same records, in the same order, as a store written a write per batch."""
    rng = random.Random(29)
    writes = []
    for step in range(600):
        msg_id = f"m{rng.randrange(30)}"
        kind = rng.choice(["add", "update", "update", "engine", "label", "drop"])
        writes.append((kind, msg_id, step))
    taken: list[int] = []

    def counting(batch: Any, queued: Any) -> list[int]:
        found = later_updates(batch, queued)
        taken.append(len(found))
        return found

    monkeypatch.setattr(sqlite_module, "later_updates", counting)

    def write(store: SQLiteStore) -> None:
        with store.holding_writes():  # queued at once: the batches are cut
            for kind, msg_id, step in writes:
                if kind == "add":
                    store.add_record(msg_id, {"status": "pending", "stdout": f"{step}"})
                elif kind == "update":
                    store.update_record(msg_id, {"status": "ok", "result_buffers": [b"%d" % step]})
                elif kind == "engine":
                    store.set_engines([(msg_id, f"engine-{step}", step)])
                elif kind == "label":
                    store.update_record(msg_id, {"label": f"l{step}", "note": step})
                else:
                    store.drop_records([msg_id])

    assert_batches_store_what_single_writes_store(
        SQLiteStore(tmp_path / "grouped.db", max_batch=7),
        SQLiteStore(tmp_path / "single.db", max_batch=1, look_ahead=0),
        write,
    )
    assert sum(taken) > 20


@pytest.mark.parametrize("count", [0, 1, 2, 3, 63, 64, 65, 100, 1000])
def test_a_run_is_written_in_few_statements_of_every_row(count: int) -> None:
    sizes = list(statement_sizes(count))
    assert sum(sizes) == count
    assert all(size in (1, 2, 4, 8, 16, 32, 64) for size in sizes)
    assert len(sizes) <= count // 64 + 7
    assert upsert_sql(("msg_id", "status"), 3).count("(?, ?)") == 3


def test_rows_per_statement_stay_under_the_variable_limit() -> None:
    assert rows_per_statement(29, 32766) == 64
    assert rows_per_statement(29, 999) == 32  # an older SQLite's default limit
    assert rows_per_statement(29, 100) == 2
    assert rows_per_statement(29, 10) == 1
    assert list(statement_sizes(100, 32)) == [32, 32, 32, 4]


def test_a_store_under_a_low_variable_limit_writes_in_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Statements fit the library's limit: no batch fails (to be retried write by write)."""
    with SQLiteStore(tmp_path / "tasks.db") as store:
        # the writer's connection, limited as a small build of SQLite is
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)
        for index in range(300):
            store.add_record(f"m{index}", {"status": "pending", "stdout": "x", "engine_id": 1})
        store.flush()
        assert store.get_history() == [f"m{index}" for index in range(300)]
    assert not [record for record in caplog.records if "failed" in record.getMessage()]


def test_known_rows_are_those_written_and_not_dropped_and_bounded() -> None:
    known = KnownRows(limit=4)
    known.committed([op("a", "request"), op("b", "reply"), drop("b"), op("c", "reply")])
    assert "a" in known.ids and "c" in known.ids and "b" not in known.ids
    known.committed([drop("a", "x")])
    assert "a" not in known.ids and "c" in known.ids
    known.committed([op(f"n{i}", "request") for i in range(7)])  # 8: up to twice the limit
    assert "c" in known.ids and all(f"n{i}" in known.ids for i in range(7))
    known.committed([op("k", "request")])  # over: the newest four kept
    assert list(known.ids) == ["n4", "n5", "n6", "k"]  # the others count as maybe new


def test_a_reopened_store_groups_writes_of_rows_it_did_not_write(tmp_path: Path) -> None:
    """Rows from before the store was opened are unknown to its writer (writes to them count
    as maybe inserting): batches still store what writes one by one store."""
    rng = random.Random(5)
    stores = [SQLiteStore(tmp_path / "grouped.db"), SQLiteStore(tmp_path / "single.db")]
    for store in stores:
        for index in range(20):
            store.add_record(f"m{index}", {"status": "pending"})
        store.close()
    writes = [(rng.randrange(30), rng.choice(["add", "update", "drop"])) for _ in range(300)]

    def write(store: SQLiteStore) -> None:
        for index, kind in writes:
            msg_id = f"m{index}"
            if kind == "add":
                store.add_record(msg_id, {"status": "pending", "stdout": "x"})
            elif kind == "update":
                store.update_record(msg_id, {"status": "ok", "result_buffers": [b"r"]})
            else:
                store.drop_records([msg_id])

    assert_batches_store_what_single_writes_store(
        SQLiteStore(tmp_path / "grouped.db"),
        SQLiteStore(tmp_path / "single.db", max_batch=1, look_ahead=0),
        write,
    )


def test_runs_cover_the_batch_exactly_once() -> None:
    columns = ["request", "reply", "label"]
    batch = [op(f"m{i % 5}", columns[i % 3]) for i in range(30)]
    batch.insert(17, drop("m2", "m4"))
    runs = upsert_runs(batch, frozenset({"m1", "m3"}))
    assert sorted(id(o) for _, ops in runs for o in ops) == sorted(id(o) for o in batch)
    assert len(runs) < len(batch)


def test_a_request_and_its_reply_merge_into_one_row() -> None:
    request = encode_row(
        {"msg_id": "a", "status": "pending", "header": {"h": 1}, "buffers": [b"fn"]}
    )
    reply = encode_row(
        {"msg_id": "a", "status": "ok", "result_content": {"x": 2}, "result_buffers": [b"r"]}
    )
    merged = merge_rows(request, reply)
    assert merged is not None
    by_column = dict(zip(merged.columns, merged.values, strict=False))
    assert by_column["status"] == "ok"  # the later write wins
    assert by_column["header"] == '{"h":1}' and by_column["result_content"] == '{"x":2}'
    assert by_column["present"] == request.values[1] | reply.values[1]
    assert merged.request_buffers == [b"fn"] and merged.buffers == [b"r"]
    assert merged.columns[-1] == "result_buffers"  # the blob stays the last parameter
    assert merged.parameters()[-1] == b"r"


@pytest.mark.parametrize(
    ("first", "second"),
    [({}, {}), ({}, {"status": "ok"}), ({"status": "ok"}, {}), ({"engine_id": 1}, {"status": "x"})],
)
def test_small_writes_merge(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Writes of no field or one merge too (their values after ``present`` are 0 or 1)."""
    a = encode_row(validate_record("m", first))
    b = encode_row(validate_record("m", second))
    merged = merge_rows(a, b)
    assert merged is not None
    expected = encode_row(validate_record("m", {**first, **second}))
    assert merged.columns == expected.columns and merged.values == expected.values


def test_a_write_of_every_field_of_the_one_before_takes_its_place_as_it_is() -> None:
    """A waiting task's engine, then its result (which names the engine again): the result's
    row is the merged row, the same object; the engine row's bits are among its own."""
    engine = engine_row("a", "e", 1)
    result = encode_row(
        {"msg_id": "a", "status": "ok", "engine_uuid": "e", "engine_id": 1, "stdout": "x"}
    )
    assert engine is not None
    assert merge_rows(engine, result) is result
    merged = merge_upserts([WriteOp("upsert", ("a",), engine), WriteOp("upsert", ("a",), result)])
    assert [o.payload for o in merged] == [result]
    assert merge_rows(result, engine) is not result  # the other way, the engine row writes less
    extra = encode_row({"msg_id": "a", "note": 1})
    assert merge_rows(extra, result) is not result  # an extra field is merged by SQLite


def test_rows_with_extra_fields_on_both_sides_stay_apart() -> None:
    first = encode_row({"msg_id": "a", "note": 1})
    second = encode_row({"msg_id": "a", "other": 2})
    assert merge_rows(first, second) is None
    merged = merge_upserts([WriteOp("upsert", ("a",), first), WriteOp("upsert", ("a",), second)])
    assert [o.payload for o in merged] == [first, second]


def test_merges_never_cross_a_drop_and_keep_the_first_place() -> None:
    rows = {key: encode_row({"msg_id": key[0], "stdout": key}) for key in ("a1", "b1", "a2", "a3")}
    batch: list[WriteOp[Payload]] = [
        WriteOp("upsert", ("a",), rows["a1"]),
        WriteOp("upsert", ("b",), rows["b1"]),
        WriteOp("upsert", ("a",), rows["a2"]),
        drop("a"),
        WriteOp("upsert", ("a",), rows["a3"]),
    ]
    merged = merge_upserts(batch)
    assert [o.msg_ids for o in merged] == [("a",), ("b",), ("a",), ("a",)]
    first = merged[0].payload
    assert (
        first is not None and dict(zip(first.columns, first.values, strict=False))["stdout"] == "a2"
    )
    assert merged[3].payload is rows["a3"]


def test_merged_batches_store_what_writes_one_by_one_store(tmp_path: Path) -> None:
    """The Hub's kinds of write (request with its buffers, destination, reply with result
    buffers, some chunked; extra fields; drops) in random interleavings: a store whose writer
    merges them holds exactly what one applying each write alone holds."""
    rng = random.Random(7)
    writes = []
    for step in range(600):
        msg_id = f"m{rng.randrange(30)}"
        writes.append((rng.choice(["request", "dest", "reply", "extra", "drop"]), msg_id, step))

    def write(store: SQLiteStore) -> None:
        for kind, msg_id, step in writes:
            if kind == "request":
                fields = {
                    "msg_id": msg_id,
                    "header": {"step": step},
                    "status": "pending",
                    "buffers": [b"f" * (step % 40), b""],
                    "engine_id": None,
                }
                store.add_record(msg_id, fields)
            elif kind == "dest":
                store.update_record(msg_id, {"engine_uuid": "e", "engine_id": step % 3})
            elif kind == "reply":
                buffers = [b"r" * (step % 50)]
                changes = {"status": "ok", "result_buffers": buffers, "stdout": str(step)}
                store.update_record(msg_id, changes)
            elif kind == "extra":
                store.update_record(msg_id, {f"x{step % 2}": step, "received": str(step)})
            else:
                store.drop_records([msg_id])

    assert_batches_store_what_single_writes_store(
        SQLiteStore(tmp_path / "merged.db", chunk_bytes=16),
        SQLiteStore(tmp_path / "single.db", chunk_bytes=16, max_batch=1, look_ahead=0),
        write,
    )


HUB_REQUEST = {
    "msg_id": "t1",
    "header": {"msg_id": "t1", "date": "2026-01-01T00:00:00+00:00"},
    "metadata": {"retries": 1},
    "content": {},
    "buffers": [memoryview(b"pickled function")],
    "queue": "task",
    "client_uuid": "c",
    "engine_uuid": "e",
    "engine_id": 0,
    "submitted": "2026-01-01T00:00:00+00:00",
    "status": "pending",
    "started": None,
    "resubmitted": False,
}


@pytest.mark.parametrize(
    ("changes", "exact"),
    [
        ({}, True),
        ({"result_buffers": [b"a", memoryview(b"bc")]}, True),
        ({"result_buffers": [b""], "buffers": []}, True),
        ({"result_buffers": [b"x" * 32], "buffers": [memoryview(b"y" * 32)]}, True),  # the limit
        ({"result_buffers": [b"x" * 33]}, False),  # one byte over it: omitted
        ({"engine_id": 2**63}, False),  # out of 64 bits: refused the long way
        ({"engine_id": True}, False),  # a bool is not an engine id
        ({"status": 3}, False),
        ({"header": [1]}, False),
        ({"note": "an extra field"}, False),
        ({"buffers": (b"a",)}, False),  # a tuple: normalised the long way
        ({"buffers": [memoryview(b"abcd")[::2]]}, False),  # not contiguous
        ({"buffers": [memoryview(bytearray(8)).cast("d")]}, False),  # not bytes: cast
        ({"result_buffers": [b"x" * 40]}, False),  # over the buffer limit: omitted
        ({"msg_id": "other"}, False),
        ({"header": None, "engine_id": None, "buffers": None}, True),  # None as it is
        ({"engine_id": -(2**63)}, True),
        ({"resubmitted": 1}, False),  # an int is not a bool
        ({"queue": b"task"}, False),
    ],
)
def test_the_one_pass_encoding_is_the_long_way_or_declines(
    changes: dict[str, Any], exact: bool
) -> None:
    """``encode_exact`` gives the very row validate + omit + encode gives, or None (then the
    store takes the long way, which refuses what it always refused)."""
    fields = {**HUB_REQUEST, **changes}
    row = encode_exact("t1", fields, 1 << 20, 32)
    assert (row is not None) == exact
    if row is not None:
        store = SQLiteStore.__new__(SQLiteStore)
        store._setup_retention(RetentionSettings(buffer_limit=32))
        expected = encode_row(store._omit_large_buffers(validate_record("t1", fields)), 1 << 20)
        assert row.columns == expected.columns and row.values == expected.values
        assert row.size() == expected.size() and row.chunk == expected.chunk
        assert [bytes(b) for b in row.buffers or []] == [bytes(b) for b in expected.buffers or []]


def test_the_one_pass_encoding_refuses_what_json_cannot_hold_at_the_call() -> None:
    with pytest.raises(StoreError, match="'metadata' cannot be stored as JSON"):
        encode_exact("t1", {**HUB_REQUEST, "metadata": {"x": object()}}, 1 << 20, None)


def test_writes_the_one_pass_way_and_the_long_way_store_and_count_alike(tmp_path: Path) -> None:
    """A record the one-pass encoding takes is queued and counted by the store's compiled
    ``RowQueue``; one it declines (a field outside the schema) takes the store's long way. Both
    read back as written, and both count toward the size limit by their own row's size."""
    usual = {**HUB_REQUEST, "buffers": [b"pickled function"]}
    unusual = {**usual, "msg_id": "t2", "header": {"msg_id": "t2"}, "custom": [1]}
    assert encode_exact("t1", usual, 1 << 20, 32) is not None
    assert encode_exact("t2", unusual, 1 << 20, 32) is None
    with SQLiteStore(tmp_path / "tasks.db", retention=RetentionSettings(buffer_limit=32)) as store:
        store.add_record("t1", usual)
        store.add_record("t2", unusual)
        records = store.get_records(["t1", "t2"])
        assert store.retention is not None
        sizes = store.retention.sizes
    assert {key: records["t1"][key] for key in usual} == usual
    assert {key: records["t2"][key] for key in unusual} == unusual
    exact = encode_exact("t1", usual, 1 << 20, 32)
    assert exact is not None and sizes["t1"] == exact.size()
    assert sizes["t2"] == encode_row(validate_record("t2", unusual), 1 << 20).size()


def test_the_one_pass_encoding_declines_bad_msg_ids() -> None:
    assert encode_exact("", {"status": "ok"}, 1 << 20, None) is None
    assert encode_exact(None, {"status": "ok"}, 1 << 20, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msg_id", "engine_uuid", "engine_id"),
    [
        ("t1", "e", 0),
        ("t1", "a6f7a72a-f42a-46e2-8447-8860fbb91a7e", None),
        ("t1", None, 3),
        ("t1", "e", 2**63),  # out of 64 bits
        ("t1", "e", True),  # a bool is not an engine id
        ("t1", b"e", 1),
        ("", "e", 1),
        (None, "e", 1),
    ],
)
def test_an_engine_row_is_the_one_pass_encoding_of_its_two_fields(
    msg_id: Any, engine_uuid: Any, engine_id: Any
) -> None:
    """``engine_row`` (the Hub's ``task_dest`` writes) gives the row ``encode_exact`` gives
    for the same two fields, and None where it gives None."""
    row = engine_row(msg_id, engine_uuid, engine_id)
    fields = {"engine_uuid": engine_uuid, "engine_id": engine_id}
    expected = encode_exact(msg_id, fields, 1 << 20, 32)
    assert (row is None) == (expected is None)
    if row is not None and expected is not None:
        assert row == expected
        assert row.size() == expected.size()


REQUEST_FRAMES = {
    "compact": (orjson.dumps(HUB_REQUEST["header"]), b"{}", b'{"retries":1}', b"{}"),
    "spaced": (
        b'{ "date": "2026-01-01T00:00:00+00:00", "msg_id": "t1" }',
        b"{}",
        b'{"retries": 1}',
        b" {} ",
    ),
}


@pytest.mark.parametrize("frames", REQUEST_FRAMES.values(), ids=REQUEST_FRAMES)
def test_the_one_pass_encoding_keeps_json_frames_as_they_came(
    frames: tuple[bytes, bytes, bytes, bytes],
) -> None:
    """With the JSON frames a record's dict fields were decoded from, ``encode_exact`` keeps
    them as they came (however they are spaced or ordered): the row is the one made without
    them, but for those columns, which decode to the same values, and its size counts them."""
    fields = dict(HUB_REQUEST)
    row = encode_exact("t1", fields, 1 << 20, 32, frames)
    plain = encode_exact("t1", fields, 1 << 20, 32)
    assert row is not None and plain is not None
    assert row.columns == plain.columns
    kept = {"header": frames[0], "metadata": frames[2], "content": frames[3]}
    for column, value, expected in zip(row.columns, row.values, plain.values, strict=False):
        if column in kept:
            assert value == kept[column].decode()
            assert orjson.loads(value) == orjson.loads(expected)
        else:
            assert value == expected
    extra = sum(len(kept[c]) - len(orjson.dumps(fields[c])) for c in kept)
    assert row.size() == plain.size() + extra


#: A reply's four JSON frames, and the result fields the Hub decodes from them.
RESULT_FRAMES = (b'{"msg_id": "r1"}', b'{"msg_id": "t1"}', b'{"engine_id": 0}', b'{"status":"ok"}')
RESULT_FIELDS = {
    "status": "ok",
    "result_header": {"msg_id": "r1"},
    "result_metadata": {"engine_id": 0},
    "result_content": {"status": "ok"},
}


def test_a_results_frames_go_to_its_result_fields() -> None:
    frames, fields = RESULT_FRAMES, dict(RESULT_FIELDS)
    row = encode_exact("t1", fields, 1 << 20, 32, frames)
    assert row is not None
    stored = dict(zip(row.columns, row.values, strict=False))
    assert stored["result_header"] == frames[0].decode()
    assert stored["result_metadata"] == frames[2].decode()
    assert stored["result_content"] == frames[3].decode()


def test_the_one_pass_encoding_encodes_what_frames_cannot_stand_for() -> None:
    """A frame that is not UTF-8 (never one a dict was decoded from) is not kept, and a record
    holding a request's and a result's dicts (two messages) keeps none: their dicts are
    encoded as without frames."""
    plain = encode_exact("t1", dict(HUB_REQUEST), 1 << 20, 32)
    not_utf8 = (b"{}", b"{}", b'{"retries": 1, "x": "\xff"}', b"{}")
    row = encode_exact("t1", dict(HUB_REQUEST), 1 << 20, 32, not_utf8)
    assert row is not None and plain is not None
    metadata = row.columns.index("metadata")
    assert row.values[metadata] == plain.values[metadata]
    both = {**HUB_REQUEST, "result_content": {"status": "ok"}}
    row = encode_exact("t1", both, 1 << 20, 32, (b"{ }", b"{}", b"{ }", b"{ }"))
    plain = encode_exact("t1", both, 1 << 20, 32)
    assert row is not None and plain is not None and row.values == plain.values


def test_decoded_records_read_back_as_added(tmp_path: Path) -> None:
    """``add_decoded_record`` / ``update_decoded_record`` store what ``add_record`` /
    ``update_record`` store, the dict fields kept as the frames that came."""
    header = b'{"msg_id": "t1",  "date": "2026-01-01T00:00:00+00:00"}'
    reply = b'{"status":"ok"}'
    with SQLiteStore(tmp_path / "tasks.db") as store:
        request = {**HUB_REQUEST, "header": orjson.loads(header)}
        request_frames = (header, b"{}", b'{"retries": 1}', b"{}")
        store.add_decoded_record("t1", request, request_frames)
        changes = {"status": "ok", "result_content": orjson.loads(reply)}
        store.update_decoded_record("t1", changes, (b"{}", header, b"{}", reply))
        record = store.get_record("t1")
        assert record["header"] == orjson.loads(header)
        assert record["result_content"] == {"status": "ok"}
        assert record["buffers"] == [b"pickled function"]
        store.flush()
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        (stored,) = db.execute("SELECT header FROM tasks").fetchone()
    assert stored == header.decode()


def test_a_field_left_in_its_frame_is_kept_as_the_frame_or_declined() -> None:
    """``IN_TEXTS`` (a dict field not decoded) makes the row its frame would: with the frames,
    the row of the decoded dict; without them, or in a record of two messages' fields,
    declined (the store's long way decodes it)."""
    frames, fields = RESULT_FRAMES, dict(RESULT_FIELDS)
    left = {**fields, "result_header": IN_TEXTS}
    row = encode_exact("t1", left, 1 << 20, 32, frames)
    assert row is not None and row == encode_exact("t1", fields, 1 << 20, 32, frames)
    assert encode_exact("t1", left, 1 << 20, 32) is None
    assert encode_exact("t1", {**HUB_REQUEST, **left}, 1 << 20, 32, frames) is None
    assert encode_exact("t1", left, 1 << 20, 32, (b"\xff", *frames[1:])) is None


def test_a_field_left_in_its_frame_takes_the_long_way_decoded(tmp_path: Path) -> None:
    """A reply whose buffers are over the per-task limit takes the store's long way: a header
    left in its frame is decoded there, and stored as the one-pass way stores it."""
    header = b'{"msg_id": "r1", "msg_type": "apply_reply"}'
    frames = (header, b'{"msg_id": "t1"}', b"{}", b'{"status":"ok"}')
    retention = RetentionSettings(buffer_limit=10)
    with SQLiteStore(tmp_path / "tasks.db", retention=retention) as store:
        store.add_record("t1", dict(HUB_REQUEST))
        changes = {"status": "ok", "result_header": IN_TEXTS, "result_buffers": [b"x" * 100]}
        store.update_decoded_record("t1", changes, frames)
        record = store.get_record("t1")
    assert record["result_header"] == orjson.loads(header)
    assert not record["result_buffers"]  # over the limit: omitted, as always
    with pytest.raises(StoreError):  # decoded there: a frame that is not an object is refused
        store_again = SQLiteStore(tmp_path / "again.db", retention=retention)
        try:
            store_again.update_decoded_record("t1", changes, (b"[1]", *frames[1:]))
        finally:
            store_again.close()
