"""How the SQLite writer groups a batch into runs (``upsert_runs``): same-column upserts in
one run when that keeps every record's writes in order and the writes that insert rows in
their order; the result checked against applying the writes one by one."""

from __future__ import annotations

import random
from pathlib import Path

from corral.controller.store.base import WriteOp
from corral.controller.store.sqlite import SQLiteStore
from corral.controller.store.sqlite_rows import Payload, Row, upsert_runs


def op(msg_id: str, columns: str) -> WriteOp[Payload]:
    row = Row(("seq", "present", "msg_id", columns), (None, 0, msg_id, columns), None)
    return WriteOp("upsert", (msg_id,), row)


def drop(*msg_ids: str) -> WriteOp[Payload]:
    return WriteOp("drop", msg_ids, None)


def shape(batch: list[WriteOp[Payload]], existing: frozenset[str] = frozenset()) -> list[list[str]]:
    return [[o.msg_ids[0] for o in ops] for _, ops in upsert_runs(batch, existing)]


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
    stores = [
        SQLiteStore(tmp_path / "grouped.db"),
        SQLiteStore(tmp_path / "single.db", max_batch=1),
    ]
    try:
        for store in stores:
            for kind, msg_id, step in writes:
                if kind == "add":
                    store.add_record(msg_id, {"status": "pending", "stdout": f"{step}"})
                elif kind == "update":
                    store.update_record(msg_id, {"status": "ok", "result_buffers": [b"%d" % step]})
                elif kind == "label":
                    store.update_record(msg_id, {"label": f"l{step}", "note": step})
                else:
                    store.drop_records([msg_id])
            store.flush()
        grouped, single = stores
        assert grouped.get_history() == single.get_history()
        ids = single.get_history()
        assert grouped.get_records(ids) == single.get_records(ids)
    finally:
        for store in stores:
            store.close()


def test_runs_cover_the_batch_exactly_once() -> None:
    columns = ["request", "reply", "label"]
    batch = [op(f"m{i % 5}", columns[i % 3]) for i in range(30)]
    batch.insert(17, drop("m2", "m4"))
    runs = upsert_runs(batch, frozenset({"m1", "m3"}))
    assert sorted(id(o) for _, ops in runs for o in ops) == sorted(id(o) for o in batch)
    assert len(runs) < len(batch)
