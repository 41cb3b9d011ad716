"""Every backend (memory, SQLite, a real mongod) keeps a request's own buffers (``buffers``),
which ``Client.resubmit`` sends again: round trip small and chunked, replaced, dropped, bounded
by the per-task buffer limit, counted in the size limit, independent of the result buffers;
an SQLite store keeps a small request in its row and one of REQUEST_APART bytes or more in
parts (which its result's write leaves alone), written many to a statement; and an SQLite store
of schema version 1 or 2 gains the columns when opened for writing, its old requests read
where they were written."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from corral.controller.store import ResultStore, RetentionSettings, SQLiteStore
from corral.controller.store.retention import OMITTED_FIELD, REQUEST_OMITTED_FIELD
from corral.controller.store.sqlite_rows import REQUEST_APART
from corral.controller.store.sqlite_schema import REQUEST_SCHEMA
from corral.errors import StoreError
from tests.controller.store.conftest import Opener, StoreFactory


def request(msg_id: str, buffers: list[bytes] | None) -> dict[str, Any]:
    return {
        "header": {"msg_id": msg_id, "msg_type": "apply_request"},
        "content": {},
        "status": "pending",
        "buffers": buffers,
    }


def test_request_buffers_round_trip(store: ResultStore) -> None:
    store.add_record("m0", request("m0", [b"function", b"", memoryview(b"arguments")]))
    store.add_record("m1", request("m1", []))
    store.add_record("m2", request("m2", None))
    store.add_record("m3", {"status": "pending"})
    records = store.get_records(["m0", "m1", "m2", "m3"])
    assert records["m0"]["buffers"] == [b"function", b"", b"arguments"]
    assert records["m1"]["buffers"] == []
    assert records["m2"]["buffers"] is None
    assert "buffers" not in records["m3"]


def test_request_and_result_buffers_are_independent(store: ResultStore) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: chunked in SQLite (small chunks) and MongoDB
    store.add_record("m", request("m", [b"f", big]))
    store.update_record("m", {"status": "ok", "result_buffers": [big[::-1], b"r"]})
    record = store.get_record("m")
    assert record["buffers"] == [b"f", big]
    assert record["result_buffers"] == [big[::-1], b"r"]
    store.update_record("m", {"result_buffers": [b"small"]})  # the request's stay
    record = store.get_record("m")
    assert record["buffers"] == [b"f", big] and record["result_buffers"] == [b"small"]
    store.update_record("m", {"buffers": [b"new"]})  # the result's stay
    record = store.get_record("m")
    assert record["buffers"] == [b"new"] and record["result_buffers"] == [b"small"]


def test_keys_select_request_buffers(store: ResultStore) -> None:
    store.add_record("m", request("m", [b"abc"]))
    store.update_record("m", {"result_buffers": [b"xyz"]})
    (only,) = store.find_records({"msg_id": "m"}, keys=["header", "buffers"])
    assert only == {"msg_id": "m", "header": request("m", None)["header"], "buffers": [b"abc"]}
    (neither,) = store.find_records({"msg_id": "m"}, keys=["status"])
    assert neither == {"msg_id": "m", "status": "pending"}


def test_dropped_records_take_their_request_buffers(store: ResultStore) -> None:
    big = b"x" * (9 << 20)
    for msg_id in ("a", "b"):
        store.add_record(msg_id, request(msg_id, [big, b"y"]))
    store.drop_records(["a"])
    assert store.get_history() == ["b"]
    store.add_record("a", {"status": "pending"})  # the same msg_id again: nothing left over
    assert "buffers" not in store.get_record("a")
    assert store.get_record("b")["buffers"] == [big, b"y"]


def test_bad_request_buffers_are_refused_at_the_call(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="buffers"):
        store.add_record("m", {"buffers": ["text"]})
    with pytest.raises(StoreError, match="buffers"):
        store.add_record("m", {"buffers": b"not a list"})


def test_request_buffers_over_the_limit_are_replaced_by_a_marker(open_bounded: Opener) -> None:
    store = open_bounded(RetentionSettings(buffer_limit=1000))
    store.add_record("small", request("small", [b"a" * 1000]))
    store.add_record("large", request("large", [b"a" * 600, b"b" * 401]))
    store.update_record("large", {"status": "ok", "result_buffers": [b"r" * 10]})
    small, large = store.get_record("small"), store.get_record("large")
    assert small["buffers"] == [b"a" * 1000] and REQUEST_OMITTED_FIELD not in small
    assert large["buffers"] is None
    assert large[REQUEST_OMITTED_FIELD] == {"bytes": 1001, "count": 2, "limit": 1000}
    assert large["result_buffers"] == [b"r" * 10] and OMITTED_FIELD not in large


def test_request_buffers_count_towards_the_size_limit(open_bounded: Opener) -> None:
    store = open_bounded(RetentionSettings(buffer_limit=1 << 20, size_limit=4 << 20, ttl=None))
    for index in range(8):
        msg_id = f"t{index}"
        store.add_record(msg_id, request(msg_id, [bytes(1 << 20)]))
        store.update_record(msg_id, {"status": "ok", "received": "2026-11-30T01:00:00+00:00"})
        assert store.stored_size() <= 4 << 20
    history = store.get_history()
    assert 2 <= len(history) <= 4 and history[-1] == "t7"


def test_reopened_store_keeps_request_buffers(persistent_factory: StoreFactory) -> None:
    big = b"z" * (5 << 20)
    with persistent_factory() as store:
        store.add_record("m", request("m", [b"f", big]))
    with persistent_factory() as store:
        assert store.get_record("m")["buffers"] == [b"f", big]


def test_sqlite_parts_of_a_chunked_request(tmp_path: Path) -> None:
    """Buffers past the chunk size are cut in parts, every part removed with its record."""
    path = tmp_path / "tasks.db"
    with SQLiteStore(path, chunk_bytes=1000) as store:
        store.add_record("m", request("m", [b"a" * 2500, b"", b"b" * 10]))
        assert store.get_record("m")["buffers"] == [b"a" * 2500, b"", b"b" * 10]
        store.flush()
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 4
        store.update_record("m", {"buffers": [b"c"]})  # small: in the row, old parts gone
        store.flush()
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 0
            (data,) = db.execute("SELECT request_data FROM tasks WHERE msg_id = 'm'").fetchone()
            assert data == b"c"
        assert store.get_record("m")["buffers"] == [b"c"]
        store.update_record("m", {"buffers": [b"d" * 1001, b"e"]})  # large again: parts
        assert store.get_record("m")["buffers"] == [b"d" * 1001, b"e"]
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 3
            assert db.execute("SELECT request_data FROM tasks").fetchone()[0] is None
        store.drop_records(["m"])
        store.flush()
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 0
        for index in range(50):  # writes of one msg_id in a batch: the last one's parts stay
            store.add_record("n", request("n", [bytes([index]) * (100 * (index % 7))]))
        assert store.get_record("n")["buffers"] == [bytes([49]) * 0]
        store.add_record("n", request("n", [b"k" * 2001]))
        assert store.get_record("n")["buffers"] == [b"k" * 2001]
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 3


def _places(path: Path) -> dict[str, tuple[bool, int]]:
    """Each row's msg_id: (whether its request's BLOB is in the row, its parts)."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT msg_id, request_data IS NOT NULL, (SELECT count(*) FROM request_buffers AS p"
            " WHERE p.msg_id = tasks.msg_id) FROM tasks ORDER BY seq"
        ).fetchall()
    return {msg_id: (bool(inline), parts) for msg_id, inline, parts in rows}


def test_sqlite_request_of_request_apart_bytes_goes_to_parts(tmp_path: Path) -> None:
    """From REQUEST_APART bytes in all, a request's buffers are parts (one per non-empty
    buffer under the chunk size), written with its row, read back whole, left alone by the
    result's write, replaced by a smaller request's BLOB and removed with the row; the stored
    size counts them either way, also once reopened."""
    path = tmp_path / "tasks.db"
    small = [b"s" * (REQUEST_APART - 1)]
    apart = [b"f" * (REQUEST_APART - 10), b"", b"a" * 10]
    with SQLiteStore(path, retention=RetentionSettings(ttl=None)) as store:
        store.add_record("small", request("small", small))
        store.add_record("apart", request("apart", apart))
        store.update_record("apart", {"status": "ok", "result_buffers": [b"r" * 500]})
        assert store.get_record("apart")["buffers"] == apart
        assert store.get_record("small")["buffers"] == small
        assert _places(path) == {"small": (True, 0), "apart": (False, 2)}
        size = store.stored_size()
        store.update_record("apart", {"buffers": small})  # in its row now, the parts gone
        assert store.get_record("apart")["buffers"] == small
        assert _places(path)["apart"] == (True, 0)
        store.update_record("apart", {"buffers": apart})
        store.drop_records(["small"])
        store.flush()
        assert _places(path) == {"apart": (False, 2)}
    with SQLiteStore(path, retention=RetentionSettings(ttl=None)) as store:
        assert store.get_record("apart")["buffers"] == apart
        assert store.stored_size() < size  # "small" went; "apart" is counted with its parts
        store.drop_records(["apart"])
        store.flush()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 0


def test_sqlite_batch_of_requests_apart_is_read_back(tmp_path: Path) -> None:
    """A batch of many requests kept apart (their parts inserted many to a statement, in runs
    cut at odd sizes) and their results, some in the same batch: every request reads back
    whole, each with its own parts."""
    path = tmp_path / "tasks.db"
    buffers = {
        f"m{index}": [bytes([index]) * (REQUEST_APART + index), bytes([index + 1]) * index]
        for index in range(203)
    }
    with SQLiteStore(path) as store:
        with store.holding_writes():
            for index, (msg_id, request_buffers) in enumerate(buffers.items()):
                store.add_record(msg_id, request(msg_id, request_buffers))
                if index % 3 == 0:
                    store.update_record(msg_id, {"status": "ok", "result_buffers": [b"r"]})
        records = store.get_records(list(buffers))
        assert {msg_id: record["buffers"] for msg_id, record in records.items()} == buffers
    places = _places(path)
    assert places["m0"] == (False, 1)
    assert all(places[f"m{index}"] == (False, 2) for index in range(1, 203))


V1_SCHEMA = """
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    present INTEGER NOT NULL DEFAULT 0,
    queue TEXT, client_uuid TEXT, engine_uuid TEXT, submitted TEXT, started TEXT,
    completed TEXT, received TEXT, status TEXT, stdout TEXT, stderr TEXT,
    engine_id INTEGER, retries INTEGER, resubmitted INTEGER,
    header TEXT, metadata TEXT, content TEXT, result_header TEXT, result_metadata TEXT,
    result_content TEXT,
    extra TEXT,
    buffer_lengths TEXT,
    result_buffers BLOB
)"""


def test_sqlite_store_of_version_1_gains_request_buffers(tmp_path: Path) -> None:
    """A store written by the previous version keeps its records and takes request buffers
    once opened for writing; opened read-only first, it is refused with the reason."""
    path = tmp_path / "tasks.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(V1_SCHEMA)
        status_bit = 1 << 7  # status is the 8th field after msg_id in version 1
        db.execute(
            "INSERT INTO tasks (msg_id, present, status) VALUES ('old', ?, 'ok')", (status_bit,)
        )
        db.execute("PRAGMA user_version = 1")
        db.commit()
    with pytest.raises(StoreError, match="schema version 2"):
        SQLiteStore(path, read_only=True)
    with SQLiteStore(path) as store:
        assert store.get_record("old") == {"msg_id": "old", "status": "ok"}
        store.add_record("new", request("new", [b"f"]))
        assert store.get_record("new")["buffers"] == [b"f"]
    with SQLiteStore(path, read_only=True) as store:
        assert store.get_history() == ["old", "new"]


def test_mongodb_chunks_of_requests_and_results_are_told_apart(mongodb_database: str) -> None:
    from corral.controller.store.mongodb import MongoStore

    big = b"q" * (6 << 20)
    with MongoStore(mongodb_database, "test") as store:
        store.add_record("m", request("m", [big]))
        store.update_record("m", {"result_buffers": [big, big]})
        store.update_record("m", {"result_buffers": [b"tiny"]})  # result chunks go, not these
        assert store.get_record("m")["buffers"] == [big]
        store.flush()
        with MongoClient(mongodb_database, serverSelectionTimeoutMS=10_000) as client:
            chunks = client.get_default_database()["test.buffers"]
            assert chunks.count_documents({"msg_id": "m", "field": "buffers"}) == 2
            assert chunks.count_documents({"msg_id": "m", "field": None}) == 0
        store.drop_records(["m"])
        store.flush()
        with MongoClient(mongodb_database, serverSelectionTimeoutMS=10_000) as client:
            assert client.get_default_database()["test.buffers"].count_documents({}) == 0


def write_version_2(path: Path) -> None:
    """A store as schema version 2 wrote it: a request's buffers in ``request_buffers``."""
    status_bit, request_bit = 1 << 7, 1 << 20  # the fields' places after msg_id
    with closing(sqlite3.connect(path)) as db:
        db.execute(V1_SCHEMA)
        db.execute("ALTER TABLE tasks ADD COLUMN request_buffer_lengths TEXT")
        db.executescript(REQUEST_SCHEMA)
        db.execute(
            "INSERT INTO tasks (msg_id, present, status, request_buffer_lengths) "
            "VALUES ('old', ?, 'ok', '[3, 0, 2]')",
            (status_bit | request_bit,),
        )
        db.executemany(
            "INSERT INTO request_buffers (msg_id, part, data) VALUES ('old', ?, ?)",
            [(0, b"abc"), (1, b"de")],
        )
        db.execute("PRAGMA user_version = 2")
        db.commit()


def test_sqlite_store_of_version_2_keeps_its_requests_where_they_are(tmp_path: Path) -> None:
    """Version 2 read only as it is; opened for writing, it gains the row's BLOB for new
    requests while the old ones are read from their parts, also by a reader opened before."""
    path = tmp_path / "tasks.db"
    write_version_2(path)
    old = {"msg_id": "old", "status": "ok", "buffers": [b"abc", b"", b"de"]}
    with SQLiteStore(path, read_only=True) as reader:
        assert reader.get_record("old") == old
        with SQLiteStore(path) as store:
            assert store.get_record("old") == old
            store.add_record("new", request("new", [b"f", b"gh"]))
            assert store.get_record("new")["buffers"] == [b"f", b"gh"]
            store.flush()
            assert reader.get_record("new")["buffers"] == [b"f", b"gh"]
            with closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA user_version").fetchone()[0] == 3
                parts = "SELECT msg_id, count(*) FROM request_buffers GROUP BY msg_id"
                assert db.execute(parts).fetchall() == [("old", 2)]
            store.drop_records(["old"])
            store.flush()
            with closing(sqlite3.connect(path)) as db:
                assert db.execute("SELECT count(*) FROM request_buffers").fetchone()[0] == 0
    with SQLiteStore(path, read_only=True) as reader:
        assert reader.get_history() == ["new"]


def test_sqlite_request_in_its_row_of_the_wrong_length_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SQLiteStore(path) as store:
        store.add_record("m", request("m", [b"ab", b"cde"]))
        assert store.get_record("m")["buffers"] == [b"ab", b"cde"]
        with closing(sqlite3.connect(path)) as db:
            db.execute("UPDATE tasks SET request_data = x'00' WHERE msg_id = 'm'")
            db.commit()
        with pytest.raises(StoreError, match="damaged"):
            store.get_record("m")
