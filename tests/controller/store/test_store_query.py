"""The query language: its semantics, its errors, and agreement between backends.

Random queries must either raise QueryError everywhere or select the same records in the
memory, SQLite and MongoDB stores as :func:`match` does, whatever the mix of types.
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from corral.controller.store import MemoryStore, ResultStore, SQLiteStore, match, validate_query
from corral.controller.store.mongodb import MongoStore
from corral.controller.store.query import OPERATORS
from corral.errors import QueryError


@pytest.mark.parametrize(
    ("record", "query", "expected"),
    [
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": True}, {"a": 1}, False),
        ({"a": 1}, {"a": {"$lt": "2"}}, False),
        ({"a": "1"}, {"a": {"$ne": 1}}, True),
        ({}, {"a": None}, True),
        ({}, {"a": {"$ne": None}}, False),
        ({}, {"a": {"$lte": None}}, True),
        ({}, {"a": {"$lt": None}}, False),
        ({}, {"a": {"$nin": [1]}}, True),
        ({"a": None}, {"a": {"$in": [None]}}, True),
        ({"a": [1, 2]}, {"a": 1}, False),
        ({"a": [1, True]}, {"a": [1, 1]}, False),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, True),
        ({"a": b"ab"}, {"a": {"$gt": b"aa"}}, True),
        ({"a": datetime.datetime.now()}, {"a": {"$gt": "2020"}}, False),
        ({"a": datetime.datetime.now()}, {"a": {"$ne": "2020"}}, True),
        ({"a": 5}, {"a": {"$gt": 1, "$lt": 5}}, False),
        ({"a": 5, "b": "x"}, {"a": {"$gte": 5}, "b": {"$in": ["x", "y"]}}, True),
        # ipyparallel's basic_task_label example: a scalar is a list of that one value
        ({"a": "x"}, {"a": {"$nin": ""}}, True),
        ({"a": ""}, {"a": {"$nin": ""}}, False),
        ({}, {"a": {"$nin": ""}}, True),
        ({"a": 1}, {"a": {"$in": 1}}, True),
        ({"a": [1]}, {"a": {"$in": [1]}}, False),
        ({"a": [1]}, {"a": {"$in": [[1]]}}, True),
        # $glob: fnmatch's shell patterns, case-sensitive, strings only
        ({"a": "dview_map_10"}, {"a": {"$glob": "dview_*"}}, True),
        ({"a": "bview_map_00"}, {"a": {"$glob": "*_map_*"}}, True),
        ({"a": "bview_apply_00"}, {"a": {"$glob": "*_map_*"}}, False),
        ({"a": "Dview"}, {"a": {"$glob": "dview"}}, False),
        ({"a": "ok"}, {"a": {"$glob": "?k"}}, True),
        ({"a": "ok"}, {"a": {"$glob": "[!o]k"}}, False),
        ({"a": "a\nb"}, {"a": {"$glob": "a*b"}}, True),
        ({}, {"a": {"$glob": "*"}}, False),
        ({"a": None}, {"a": {"$glob": "*"}}, False),
        ({"a": 1}, {"a": {"$glob": "*"}}, False),
        ({"a": ["x"]}, {"a": {"$glob": "*"}}, False),
        ({"a": "xy"}, {"a": {"$glob": "x*", "$ne": "xy"}}, False),
    ],
)
def test_match_semantics(record: dict[str, Any], query: dict[str, Any], expected: bool) -> None:
    assert match(record, query) is expected


def test_unknown_operator_is_named() -> None:
    with pytest.raises(QueryError, match=r"\$where"):
        validate_query({"a": {"$where": "1"}})
    with pytest.raises(QueryError, match=r"\$exists"):
        match({}, {"a": {"$exists": True}})


def test_glob_needs_a_string_pattern() -> None:
    for pattern in (None, 1, ["a*"], b"a*"):
        with pytest.raises(QueryError, match=r"\$glob.*string pattern"):
            validate_query({"a": {"$glob": pattern}})


# ---------------------------------------------------------------- agreement between backends

FIELDS = [
    "msg_id",
    "engine_id",
    "status",
    "submitted",
    "resubmitted",
    "retries",
    "header",
    "tag",
    "missing",
]
NUMBERS = [0, 1, 2, -1, 2**53 + 1, 2**62, 0.5, -1.5, 1e300, float("inf")]
STRINGS = [
    "",
    "ok",
    "pending",
    "a\x00b",
    "é",
    "𝄞",
    "2026-11-25T08:00:01.000000+00:00",
    "2026-11-25T08:00:02.000000+00:00",
    "m3",
]
SCALARS = [None, True, False, *NUMBERS, *STRINGS]


def _records() -> list[dict[str, Any]]:
    rng = random.Random(1234)
    records = []
    for index in range(60):
        record: dict[str, Any] = {"msg_id": f"m{index}"}
        choices = {
            "engine_id": [None, 0, 1, 2, -1, 2**53 + 1, 2**62],
            "status": [None, *STRINGS],
            "submitted": [None, *STRINGS[-3:]],
            "resubmitted": [None, True, False],
            "retries": [None, 0, 1, 5],
            "header": [None, {}, {"msg_type": "a"}, {"n": 1, "m": [1, 2.5]}],
            "tag": [*SCALARS, [1, 2], [True], {"k": "v"}, [], {}],
        }
        for field, values in choices.items():
            if rng.random() < 0.8:
                record[field] = rng.choice(values)
        if record.get("tag") == float("inf"):
            record["tag"] = 1e300  # JSON (the SQLite extras column) has no infinity
        records.append(record)
    return records


RECORDS = _records()
GLOBS = st.sampled_from(
    ["*", "", "?", "ok", "o*", "*k", "m?", "m1*", "[op]*", "[!p]*", "*é*", "2026-*"]
)

COMPOUND = [[1, 2], [True], {"k": "v"}, [], {}, {"msg_type": "a"}, {"n": 1, "m": [1, 2.5]}]
pool = st.sampled_from([*SCALARS, *COMPOUND])
scalars = st.one_of(
    st.sampled_from(SCALARS),
    st.sampled_from(SCALARS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=4),
    st.binary(max_size=3),
)
values = st.one_of(
    pool,
    pool,
    pool,
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("kmn"), inner, max_size=2)
        ),
        max_leaves=5,
    ),
)


def _conditions(field: str) -> st.SearchStrategy[Any]:
    """Conditions on ``field``, biased to values its records hold so that queries select."""
    seen = [r[field] for r in RECORDS if field in r] or [None]
    near: st.SearchStrategy[Any] = st.sampled_from(seen)
    operand = near | near | values
    ordered = near.filter(lambda v: not isinstance(v, list | dict)) | scalars
    items = st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne"]), operand),
        st.tuples(st.sampled_from(["$lt", "$lte", "$gt", "$gte"]), ordered),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(operand, max_size=4) | operand),
        st.tuples(st.just("$glob"), GLOBS | st.text("*?[]!-mok0", max_size=5)),
    )
    return operand | st.lists(items, min_size=1, max_size=3).map(dict)


valid_conditions = st.sampled_from(FIELDS).flatmap(_conditions)
valid_queries = st.lists(
    st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), _conditions(f))),
    max_size=2,
).map(dict)
garbage = st.one_of(
    st.floats(allow_nan=True),
    st.sampled_from([None, [], "status", {1: 2}, object(), {"a": set()}]),
    st.lists(
        st.tuples(st.sampled_from([*OPERATORS, "$exists", "$regex", "plain"]), values | st.floats())
    ).map(dict),
)
garbage_queries = st.dictionaries(
    st.sampled_from([*FIELDS, "$or", "_id", "a.b", ""]), garbage | valid_conditions, max_size=2
)
queries = st.one_of(valid_queries, valid_queries, valid_queries, garbage_queries)


@pytest.fixture(scope="module")
def stores(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ResultStore]]:
    database = f"corral_test_{uuid.uuid4().hex[:12]}"
    opened: dict[str, ResultStore] = {
        "memory": MemoryStore(),
        "sqlite": SQLiteStore(tmp_path_factory.mktemp("query") / "tasks.db"),
        "mongodb": MongoStore(f"{mongodb_url}/{database}", "query"),
    }
    try:
        for store in opened.values():
            for record in RECORDS:
                store.add_record(record["msg_id"], record)
        yield opened
    finally:
        for store in opened.values():
            store.close()
        with MongoClient(mongodb_url) as client:
            client.drop_database(database)


def _outcome(store: ResultStore, query: Any) -> list[str] | str:
    try:
        return [record["msg_id"] for record in store.find_records(query, keys=[])]
    except QueryError:
        return "QueryError"


# a thousand queries against three live backends: ~15 s alone, several times that on a loaded
# 2-core machine, so the hang guard is wider than the suite's default
@pytest.mark.timeout(300)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries)
def test_backends_agree_with_match(stores: dict[str, ResultStore], query: Any) -> None:
    try:
        expected: list[str] | str = [r["msg_id"] for r in RECORDS if match(r, query)]
    except QueryError:
        expected = "QueryError"
    for name, store in stores.items():
        assert _outcome(store, query) == expected, name


def test_records_round_trip_unchanged(stores: dict[str, ResultStore]) -> None:
    for store in stores.values():
        assert store.get_records([r["msg_id"] for r in RECORDS]) == {
            r["msg_id"]: r for r in RECORDS
        }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extras=st.dictionaries(st.sampled_from(["x", "y", "z"]), json_values, max_size=3),
    header=st.dictionaries(st.sampled_from(["msg_id", "date"]), json_values, max_size=2),
)
def test_random_records_round_trip(
    stores: dict[str, ResultStore], extras: dict[str, Any], header: dict[str, Any]
) -> None:
    msg_id = f"rt-{uuid.uuid4().hex}"
    record = {"msg_id": msg_id, "header": header, **extras}
    for store in stores.values():
        store.add_record(msg_id, record)
        assert store.get_record(msg_id) == record
        store.drop_records([msg_id])
