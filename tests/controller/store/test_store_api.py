"""The ResultStore interface, run against every backend (memory, sqlite, mongodb)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from corral.controller.store import ResultStore
from corral.controller.store.base import IN_TEXTS
from corral.errors import QueryError, StoreError

StoreFactory = Callable[[], ResultStore]


def stamp(second: int) -> str:
    return f"2026-11-25T08:00:{second:02d}.000000+00:00"


def full_record(msg_id: str) -> dict[str, Any]:
    return {
        "msg_id": msg_id,
        "header": {"msg_id": msg_id, "msg_type": "apply_request", "date": stamp(0)},
        "metadata": {"after": [], "follow": [], "timeout": None, "retries": 0},
        "content": {},
        "queue": "task",
        "client_uuid": "client-1",
        "engine_uuid": "engine-a",
        "engine_id": 0,
        "submitted": stamp(1),
        "started": stamp(2),
        "completed": stamp(3),
        "received": stamp(4),
        "status": "ok",
        "result_header": {"msg_type": "apply_reply"},
        "result_metadata": {"status": "ok", "engine_id": 0},
        "result_content": {"status": "ok"},
        "result_buffers": [b"\x00pickle", b"", b"data" * 10],
        "stdout": "hello\n",
        "stderr": "",
        "retries": 0,
        "resubmitted": False,
        "custom": {"nested": [1, 2.5, "three", None, True]},
    }


def test_round_trip_of_every_field(store: ResultStore) -> None:
    record = full_record("m1")
    store.add_record("m1", record)
    assert store.get_record("m1") == record
    assert store.get_records(["m1"]) == {"m1": record}
    assert store.find_records({}) == [record]


def test_msg_id_is_added_when_the_record_lacks_it(store: ResultStore) -> None:
    store.add_record("m1", {"status": "pending"})
    assert store.get_record("m1") == {"msg_id": "m1", "status": "pending"}


def test_none_and_missing_fields_stay_distinct(store: ResultStore) -> None:
    store.add_record("m1", {"engine_id": None, "header": None, "result_buffers": None, "x": None})
    assert store.get_record("m1") == {
        "msg_id": "m1",
        "engine_id": None,
        "header": None,
        "result_buffers": None,
        "x": None,
    }


def test_unknown_msg_id(store: ResultStore) -> None:
    with pytest.raises(KeyError):
        store.get_record("nope")
    store.add_record("m1", {})
    assert store.get_records(["nope", "m1", "m1", "other"]) == {"m1": {"msg_id": "m1"}}
    assert store.get_records([]) == {}


def test_a_bare_string_is_not_a_list_of_msg_ids(store: ResultStore) -> None:
    store.add_record("m", {})
    with pytest.raises(QueryError, match="list"):
        store.get_records("m")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="list"):
        store.drop_records("m")  # type: ignore[arg-type]
    assert store.get_history() == ["m"]


def test_update_merges_top_level_fields(store: ResultStore) -> None:
    store.add_record("m1", {"status": "pending", "header": {"a": 1}, "tag": {"x": 1}})
    store.update_record("m1", {"status": "ok", "header": {"b": 2}, "tag": {"y": 2}, "n": 3})
    assert store.get_record("m1") == {
        "msg_id": "m1",
        "status": "ok",
        "header": {"b": 2},
        "tag": {"y": 2},
        "n": 3,
    }


def test_add_and_update_are_upserts_that_keep_submission_order(store: ResultStore) -> None:
    store.add_record("a", {"status": "pending"})
    store.update_record("b", {"status": "ok"})
    store.add_record("a", {"engine_id": 4})
    assert store.get_history() == ["a", "b"]
    assert store.get_record("a") == {"msg_id": "a", "status": "pending", "engine_id": 4}
    assert store.get_record("b") == {"msg_id": "b", "status": "ok"}


def test_set_engines_is_an_update_of_each(store: ResultStore) -> None:
    """Every backend: what update_record of each engine field pair does, in order, also for a
    task not recorded yet (an upsert, numbered where it is first written)."""
    store.add_record("a", {"status": "pending", "engine_uuid": None})
    store.add_record("b", {"status": "pending"})
    store.set_engines([("b", "engine-1", 1), ("new", "engine-2", None), ("a", "engine-2", 2)])
    store.set_engines([("b", "engine-3", 3)])  # sent again (a retry): the last one wins
    assert store.get_history() == ["a", "b", "new"]
    assert store.get_records(["a", "b", "new"]) == {
        "a": {"msg_id": "a", "status": "pending", "engine_uuid": "engine-2", "engine_id": 2},
        "b": {"msg_id": "b", "status": "pending", "engine_uuid": "engine-3", "engine_id": 3},
        "new": {"msg_id": "new", "engine_uuid": "engine-2", "engine_id": None},
    }


def test_set_engines_makes_every_good_write_and_raises_for_a_bad_one(store: ResultStore) -> None:
    bad: Any = [("a", "engine-1", 0), ("b", "engine-1", 2**70), ("c", 5, 1), ("d", "e", 4)]
    with pytest.raises(StoreError, match="64 bits"):
        store.set_engines(bad)
    assert store.get_history() == ["a", "d"]
    assert store.get_record("d") == {"msg_id": "d", "engine_uuid": "e", "engine_id": 4}


def test_records_come_in_the_order_seen_and_the_history_in_the_order_submitted(
    store: ResultStore,
) -> None:
    """Queries list records in the order the store first saw them; the history (``hub_history``)
    is by submission time, as ipyparallel's (its own test_hub_history checks it): the Hub sees
    a direct request's copy from its engine and a load-balanced one's from the scheduler, in
    another order than their clients sent them."""
    for index, second in enumerate([30, 10, 20, 5]):
        store.add_record(f"m{index}", {"submitted": stamp(second)})
    assert [r["msg_id"] for r in store.find_records({})] == ["m0", "m1", "m2", "m3"]
    assert list(store.get_records(["m3", "m0", "m2"])) == ["m0", "m2", "m3"]
    assert store.get_history() == ["m3", "m1", "m2", "m0"]
    # a tie keeps the order seen; a record without a date (a reply seen before its request)
    # or with an unreadable one sorts with the record seen before it; dates with and without
    # microseconds compare as times, not as text
    store.add_record("tie", {"submitted": stamp(10)})
    store.update_record("undated", {"status": "ok"})
    store.add_record("bad", {"submitted": "yesterday"})
    store.add_record("fraction", {"submitted": "2026-11-25T08:00:10.500000Z"})
    store.add_record("whole", {"submitted": "2026-11-25T08:00:10Z"})  # as text, after 10.5
    assert store.get_history() == [
        "m3", "m1", "tie", "undated", "bad", "whole", "fraction", "m2", "m0"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"engine_id": "3"}, "engine_id"),
        ({"engine_id": True}, "engine_id"),
        ({"engine_id": 2**64}, "64 bits"),
        ({"status": 1}, "status"),
        ({"resubmitted": 1}, "resubmitted"),
        ({"header": [1]}, "header"),
        ({"result_buffers": b"abc"}, "result_buffers"),
        ({"result_buffers": [1, 2]}, "result_buffers"),
        ({"msg_id": "other"}, "other"),
        ({"_id": 1}, "_id"),
        ({"$set": 1}, "$set"),
        ({"a.b": 1}, "a.b"),
        ({"": 1}, "''"),
    ],
)
def test_records_of_the_wrong_shape_are_refused_at_the_call(
    store: ResultStore, record: dict[str, Any], problem: str
) -> None:
    with pytest.raises(StoreError, match=problem.replace("$", r"\$").replace(".", r"\.")):
        store.add_record("m1", record)
    with pytest.raises(StoreError):
        store.update_record("m1", record)
    assert store.get_history() == []


def test_bad_msg_id_is_refused(store: ResultStore) -> None:
    with pytest.raises(StoreError):
        store.add_record("", {})
    with pytest.raises(StoreError):
        store.add_record(None, {})  # type: ignore[arg-type]


# ---------------------------------------------------------------- queries

DATA: list[dict[str, Any]] = [
    {
        "msg_id": "m0",
        "engine_id": 0,
        "status": "ok",
        "queue": "mux",
        "submitted": stamp(0),
        "completed": stamp(10),
        "resubmitted": False,
        "retries": 0,
        "header": {"msg_type": "apply_request"},
        "tag": "a",
        "nums": [1, 2],
    },
    {
        "msg_id": "m1",
        "engine_id": 1,
        "status": "error",
        "queue": "task",
        "submitted": stamp(1),
        "completed": None,
        "resubmitted": True,
        "retries": 2,
        "header": {"msg_type": "execute_request"},
        "tag": "b",
    },
    {
        "msg_id": "m2",
        "engine_id": None,
        "status": "pending",
        "queue": "task",
        "submitted": stamp(2),
        "header": {},
        "tag": 3,
    },
    {
        "msg_id": "m3",
        "engine_id": 2,
        "status": "aborted",
        "queue": "control",
        "submitted": stamp(3),
        "completed": stamp(13),
        "retries": 1,
        "tag": None,
    },
]


@pytest.fixture
def loaded(store: ResultStore) -> ResultStore:
    for record in DATA:
        store.add_record(record["msg_id"], record)
    return store


QUERIES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["m0", "m1", "m2", "m3"]),
    ({"status": "ok"}, ["m0"]),
    ({"status": "ok", "queue": "task"}, []),
    ({"queue": "task", "engine_id": 1}, ["m1"]),
    ({"msg_id": {"$in": ["m3", "m1", "zz"]}}, ["m1", "m3"]),
    ({"msg_id": {"$nin": ["m3", "m1"]}}, ["m0", "m2"]),
    ({"engine_id": None}, ["m2"]),
    ({"engine_id": {"$eq": None}}, ["m2"]),
    ({"engine_id": {"$ne": None}}, ["m0", "m1", "m3"]),
    ({"completed": None}, ["m1", "m2"]),
    ({"completed": {"$ne": None}}, ["m0", "m3"]),
    ({"completed": {"$in": [None, stamp(13)]}}, ["m1", "m2", "m3"]),
    ({"completed": {"$nin": [None]}}, ["m0", "m3"]),
    ({"completed": {"$nin": [stamp(13)]}}, ["m0", "m1", "m2"]),
    ({"engine_id": {"$lt": 1}}, ["m0"]),
    ({"engine_id": {"$lte": 1}}, ["m0", "m1"]),
    ({"engine_id": {"$gt": 0}}, ["m1", "m3"]),
    ({"engine_id": {"$gte": 1, "$lt": 2}}, ["m1"]),
    ({"engine_id": {"$gt": 0.5, "$lte": 1.0}}, ["m1"]),
    ({"engine_id": 1.0}, ["m1"]),
    ({"engine_id": {"$lte": None}}, ["m2"]),
    ({"engine_id": {"$lt": None}}, []),
    ({"engine_id": {"$gt": "0"}}, []),
    ({"engine_id": {"$ne": "0"}}, ["m0", "m1", "m2", "m3"]),
    ({"engine_id": True}, []),
    ({"resubmitted": True}, ["m1"]),
    ({"resubmitted": 1}, []),
    ({"resubmitted": {"$ne": True}}, ["m0", "m2", "m3"]),
    ({"resubmitted": {"$lt": True}}, ["m0"]),
    ({"retries": {"$in": [0, 1, "2"]}}, ["m0", "m3"]),
    ({"submitted": {"$gte": stamp(1), "$lt": stamp(3)}}, ["m1", "m2"]),
    ({"submitted": {"$gt": stamp(2)}}, ["m3"]),
    ({"status": {"$in": []}}, []),
    ({"status": {"$nin": []}}, ["m0", "m1", "m2", "m3"]),
    ({"status": {"$in": ["ok", "error"]}, "engine_id": {"$ne": 0}}, ["m1"]),
    ({"header": {"msg_type": "apply_request"}}, ["m0"]),
    ({"header": {}}, ["m2"]),
    ({"header": None}, ["m3"]),
    ({"header": {"$ne": {}}}, ["m0", "m1", "m3"]),
    ({"tag": "a"}, ["m0"]),
    ({"tag": {"$in": ["b", 3]}}, ["m1", "m2"]),
    ({"tag": {"$gt": "a"}}, ["m1"]),
    ({"tag": {"$gte": 3}}, ["m2"]),
    ({"tag": None}, ["m3"]),
    ({"tag": {"$ne": None}}, ["m0", "m1", "m2"]),
    ({"missing": None}, ["m0", "m1", "m2", "m3"]),
    ({"missing": {"$nin": [1]}}, ["m0", "m1", "m2", "m3"]),
    ({"missing": {"$gte": 0}}, []),
    ({"nums": [1, 2]}, ["m0"]),
    ({"nums": 1}, []),
    ({"nums": {"$in": [[1, 2], "x"]}}, ["m0"]),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=[str(q) for q, _ in QUERIES])
def test_query(loaded: ResultStore, query: dict[str, Any], expected: list[str]) -> None:
    assert [r["msg_id"] for r in loaded.find_records(query)] == expected
    assert [r["msg_id"] for r in loaded.find_records(query, keys=["tag"])] == expected


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ([("status", "ok")], "dict"),
        ({"status": {"$regex": "o.*"}}, "$regex"),
        ({"$or": [{"status": "ok"}]}, "$or"),
        ({"engine_id": {"$in": object()}}, "$in"),
        ({"engine_id": {"$nin": [1, float("nan")]}}, "$nin"),
        ({"status": {"$glob": 5}}, "$glob"),
        ({"engine_id": {"$lt": [1]}}, "$lt"),
        ({"engine_id": {"$gte": {"a": 1}}}, "$gte"),
        ({"engine_id": {"$eq": 1, "x": 2}}, "x"),
        ({"engine_id": float("nan")}, "NaN"),
        ({"engine_id": object()}, "object"),
        ({3: 1}, "3"),
        ({"a.b": 1}, "a.b"),
        ({"_id": 1}, "_id"),
    ],
)
def test_bad_queries_raise_query_error(store: ResultStore, query: Any, named: str) -> None:
    with pytest.raises(QueryError, match=named.replace("$", r"\$").replace(".", r"\.")):
        store.find_records(query)
    with pytest.raises(QueryError):
        store.drop_matching_records(query)


def test_keys_select_fields(loaded: ResultStore) -> None:
    found = loaded.find_records({"queue": "task"}, keys=["status", "tag", "completed", "nope"])
    assert found == [
        {"msg_id": "m1", "status": "error", "tag": "b", "completed": None},
        {"msg_id": "m2", "status": "pending", "tag": 3},
    ]
    assert loaded.find_records({"status": "ok"}, keys=[]) == [{"msg_id": "m0"}]
    assert loaded.find_records({"tag": "a"}, keys=["msg_id", "header"]) == [
        {"msg_id": "m0", "header": {"msg_type": "apply_request"}}
    ]


def test_keys_selection_with_buffers(store: ResultStore) -> None:
    store.add_record("m1", {"status": "ok", "result_buffers": [b"x" * 100, b"yz"]})
    store.add_record("m2", {"status": "ok"})
    assert store.find_records({"status": "ok"}, keys=["result_buffers"]) == [
        {"msg_id": "m1", "result_buffers": [b"x" * 100, b"yz"]},
        {"msg_id": "m2"},
    ]
    assert store.find_records({"result_buffers": [b"x" * 100, b"yz"]}, keys=["status"]) == [
        {"msg_id": "m1", "status": "ok"}
    ]


@pytest.mark.parametrize("keys", ["status", 3, [3], ["_id"], ["a.b"]])
def test_bad_keys_raise_query_error(store: ResultStore, keys: Any) -> None:
    with pytest.raises(QueryError):
        store.find_records({}, keys=keys)


# ---------------------------------------------------------------- buffers


def test_large_buffer_round_trip(store: ResultStore) -> None:
    big = os.urandom(20 * 1024 * 1024)
    store.add_record("big", {"status": "pending"})
    store.update_record("big", {"status": "ok", "result_buffers": [b"head", memoryview(big)]})
    record = store.get_record("big")
    assert record["status"] == "ok"
    assert len(record["result_buffers"]) == 2
    assert record["result_buffers"][0] == b"head"
    assert record["result_buffers"][1] == big
    assert all(isinstance(b, bytes) for b in record["result_buffers"])


def test_buffers_replaced_shrunk_and_dropped(store: ResultStore) -> None:
    big = os.urandom(9 * 1024 * 1024)
    store.add_record("m", {"result_buffers": [big]})
    store.update_record("m", {"result_buffers": [b"small"]})
    assert store.get_record("m")["result_buffers"] == [b"small"]
    store.update_record("m", {"result_buffers": [big, big]})
    assert store.get_record("m")["result_buffers"] == [big, big]
    store.update_record("m", {"result_buffers": []})
    assert store.get_record("m")["result_buffers"] == []
    store.update_record("m", {"result_buffers": [bytearray(b"abc"), b""]})
    assert store.get_record("m")["result_buffers"] == [b"abc", b""]


# ---------------------------------------------------------------- read your writes, drop


def test_reads_see_every_earlier_write(store: ResultStore) -> None:
    for index in range(3000):
        store.add_record(f"m{index:05d}", {"status": "pending", "engine_id": index % 7})
        if index % 500 == 0:
            assert store.get_record(f"m{index:05d}")["status"] == "pending"
            store.update_record(f"m{index:05d}", {"status": "ok"})
            assert store.find_records({"msg_id": f"m{index:05d}"}, ["status"]) == [
                {"msg_id": f"m{index:05d}", "status": "ok"}
            ]
    assert len(store.get_history()) == 3000
    assert len(store.find_records({"engine_id": 3}, keys=[])) == len(range(3, 3000, 7))
    store.drop_records([f"m{index:05d}" for index in range(0, 3000, 2)])
    assert len(store.get_history()) == 1500
    assert len(store.find_records({"status": "ok"})) == 0


def test_drop_records(loaded: ResultStore) -> None:
    loaded.drop_records(["m1", "unknown"])
    loaded.drop_records([])
    assert loaded.get_history() == ["m0", "m2", "m3"]
    with pytest.raises(KeyError):
        loaded.get_record("m1")
    loaded.add_record("m1", {"status": "again"})
    assert loaded.get_history() == ["m0", "m2", "m3", "m1"]
    assert loaded.get_record("m1") == {"msg_id": "m1", "status": "again"}


def test_drop_matching_records(loaded: ResultStore) -> None:
    loaded.drop_matching_records({"completed": {"$ne": None}})
    assert loaded.get_history() == ["m1", "m2"]
    loaded.drop_matching_records({"tag": 3})
    assert loaded.get_history() == ["m1"]
    loaded.drop_matching_records({})
    assert loaded.get_history() == []


def test_history_of_empty_store(store: ResultStore) -> None:
    assert store.get_history() == []
    assert store.find_records({}) == []
    store.flush()


def test_closed_store_refuses_calls(store: ResultStore) -> None:
    store.add_record("m1", {})
    store.close()
    store.close()
    for call in (
        lambda: store.add_record("m2", {}),
        lambda: store.get_records(["m1"]),
        lambda: store.find_records({}),
        lambda: store.get_history(),
        lambda: store.flush(),
    ):
        with pytest.raises(StoreError):
            call()


def test_context_manager_closes(store_factory: StoreFactory) -> None:
    with store_factory() as store:
        store.add_record("m1", {})
    with pytest.raises(StoreError):
        store.get_history()


# ---------------------------------------------------------------- persistence


def test_reopen_sees_every_record(persistent_factory: StoreFactory) -> None:
    first = persistent_factory()
    for record in DATA:
        first.add_record(record["msg_id"], record)
    first.update_record("m2", {"result_buffers": [b"r" * 5_000_000]})
    first.close()
    second = persistent_factory()
    assert second.get_history() == ["m0", "m1", "m2", "m3"]
    assert second.get_record("m0") == DATA[0]
    assert second.get_record("m2")["result_buffers"] == [b"r" * 5_000_000]
    second.add_record("m4", {"status": "pending"})
    assert second.get_history() == ["m0", "m1", "m2", "m3", "m4"]


def test_a_write_mark_is_written_once_its_writes_are_applied(store: ResultStore) -> None:
    store.add_record("a", full_record("a"))
    mark = store.write_mark()
    store.flush()
    assert store.written(mark)
    assert store.get_record("a")["msg_id"] == "a"


def test_decoded_records_are_stored_as_records(store: ResultStore) -> None:
    """The Hub passes on the JSON frames its copies' dicts were decoded from; every backend
    stores the same record with them as without (SQLite keeps the frames, the others the
    dicts)."""
    record = full_record("m0")
    header = b' {"date": "%s", "msg_type": "apply_request", "msg_id": "m0"}' % stamp(0).encode()
    metadata = b'{"after": [], "follow": [], "timeout": null, "retries": 0}'
    store.add_decoded_record("m0", record, (header, b"{}", metadata, b"{}"))
    store.add_record("m1", {**full_record("m1")})
    result = {"status": "ok", "result_content": {"status": "ok"}, "completed": stamp(2)}
    store.update_decoded_record("m0", result, (b"{}", b"{}", b"{}", b'{"status" : "ok"}'))
    store.update_record("m1", result)
    got = store.get_records(["m0", "m1"])
    assert got["m0"] == {**got["m1"], "msg_id": "m0", "header": record["header"]}
    assert got["m0"]["result_content"] == {"status": "ok"}


def test_a_field_left_in_its_frame_is_stored_decoded(store: ResultStore) -> None:
    """The Hub leaves a reply's header in its frame (``IN_TEXTS``: the task scheduler checked
    it, the Hub reads nothing of it); every backend stores it as the dict it says (SQLite the
    frame as it came, the others the decoded dict)."""
    store.add_record("m0", full_record("m0"))
    store.add_record("m1", full_record("m1"))
    header = b'{"msg_id": "r0", "msg_type": "apply_reply", "date": "%s"}' % stamp(1).encode()
    frames = (header, b'{"msg_id": "m0"}', b'{"engine_id": 0}', b'{"status":"ok"}')
    changes = {
        "status": "ok",
        "result_header": IN_TEXTS,
        "result_metadata": {"engine_id": 0},
        "result_content": {"status": "ok"},
    }
    store.update_decoded_record("m0", changes, frames)
    store.update_record("m1", {**changes, "result_header": {"msg_id": "r0"}})
    got = store.get_records(["m0", "m1"])
    assert got["m0"]["result_header"] == {
        "msg_id": "r0",
        "msg_type": "apply_reply",
        "date": stamp(1),
    }
    assert got["m0"]["result_metadata"] == got["m1"]["result_metadata"] == {"engine_id": 0}
    assert got["m0"]["status"] == "ok"
