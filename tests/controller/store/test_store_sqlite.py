"""What only the SQLite store promises: durability, reported write failures, the file."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from corral.controller.store import SQLiteStore, open_store, sqlite_writes
from corral.controller.store.base import SCALAR_FIELD_CATEGORIES, BatchWriter, WriteOp
from corral.controller.store.query import parse_query, split_query
from corral.controller.store.sqlite_rows import sql_where
from corral.errors import StoreError
from tests.polling import until

REPO_ROOT = Path(__file__).resolve().parents[3]

WRITER_SCRIPT = """
import sys
from corral.controller.store import SQLiteStore

store = SQLiteStore(sys.argv[1])
index = 0
while True:
    for _ in range(50):
        store.add_record(f"m{index:07d}", {
            "status": "pending", "engine_id": index, "header": {"n": index},
            "result_buffers": [bytes([index % 256]) * 2000],
        })
        store.update_record(f"m{index:07d}", {"status": "ok"})
        index += 1
    store.flush()
    print(index, flush=True)
"""


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "tasks.db")
    yield store
    store.close()


def test_file_is_in_wal_mode(sqlite_store: SQLiteStore) -> None:
    sqlite_store.add_record("m1", {})
    sqlite_store.flush()
    with closing(sqlite3.connect(sqlite_store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT msg_id FROM tasks").fetchall() == [("m1",)]


def test_the_writer_gives_way_between_the_statements_of_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of many rows is several statements, and the writer thread lets a waiting thread
    have its CPU between them (a woken engine or client thread does not wait for the whole
    batch), then commits every row."""
    gave_way: list[str] = []
    # the system call itself: give_way is a compiled call under ``make native``
    monkeypatch.setattr(
        sqlite_writes,
        "_sched_yield",
        lambda: gave_way.append(threading.current_thread().name),
    )
    store = SQLiteStore(tmp_path / "tasks.db")
    try:
        with store.holding_writes():
            for index in range(100):
                store.add_record(f"m{index:03d}", {"status": "pending", "engine_id": index})
        store.flush()
    finally:
        store.close()
    # 100 new rows: statements of 64, 32 and 4 rows, a way given after each
    assert len(gave_way) >= 3
    assert threading.current_thread().name not in gave_way  # the writer's own thread
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as db:
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 100


def test_msg_id_queries_use_the_index(sqlite_store: SQLiteStore) -> None:
    sqlite_store.flush()
    ids = [f"m{index}" for index in range(1000)]
    for query in ({"msg_id": {"$in": ids}}, {"msg_id": "m1", "status": "ok"}):
        atoms, residue = split_query(parse_query(query), SCALAR_FIELD_CATEGORIES)
        assert residue == []
        where, params = sql_where(atoms)
        with closing(sqlite3.connect(sqlite_store.path)) as db:
            plan = db.execute(f"EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE {where}", params)
            assert "USING INDEX" in " ".join(row[3] for row in plan)


def test_records_survive_sigkill_mid_write(tmp_path: Path) -> None:
    """A writer killed mid-batch loses at most what it had not yet flushed."""
    path = tmp_path / "tasks.db"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    committed = 0
    try:
        while committed < 3000:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.wait()}"
            committed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        remaining = child.stdout.read().split()
        child.stdout.close()
    committed = max([committed, *map(int, remaining)])
    assert child.returncode == -signal.SIGKILL
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SQLiteStore(path) as store:
        history = store.get_history()
        assert len(history) >= committed
        assert history[:committed] == [f"m{index:07d}" for index in range(committed)]
        for index in (0, committed // 2, committed - 1):
            record = store.get_record(f"m{index:07d}")
            assert record["header"] == {"n": index}
            assert record["result_buffers"] == [bytes([index % 256]) * 2000]
        assert store.find_records({"status": {"$ne": "ok"}, "engine_id": {"$lt": committed}}) == []


def test_queued_writes_are_applied_when_the_process_exits_without_close(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    script = (
        "import sys\n"
        "from corral.controller.store import SQLiteStore\n"
        "store = SQLiteStore(sys.argv[1])\n"
        "for index in range(5000):\n"
        "    store.add_record(f'm{index}', {'status': 'ok'})\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO_ROOT, check=True)
    with SQLiteStore(path) as store:
        assert len(store.get_history()) == 5000


def test_set_engines_after_a_failed_write_makes_every_good_write(tmp_path: Path) -> None:
    """An earlier write's failure (raised by the next call) and a value of the wrong type in
    the middle of a turn's engine writes cost nothing else: the rows before and after the bad
    one are written, and the first failure is raised."""
    with SQLiteStore(tmp_path / "tasks.db", max_size=2_000_000) as store:
        store.add_record("huge", {"result_buffers": [b"\xff" * 3_000_000]})
        mark = store.write_mark()
        until(lambda: store.written(mark), 30, "the oversized write to fail")

        class Name(str):
            """A string, but not exactly one: its write takes update_record's long way."""

        with pytest.raises(StoreError, match="full"):
            store.set_engines([("a", "e", 1), ("b", Name("f"), 2), ("c", "e", 3)])
        bad: Any = [("d", "e", 4), ("x", 5, 5), ("y", "e", 2**70), ("z", "e", 6)]
        with pytest.raises(StoreError, match="must be string"):
            store.set_engines(bad)
        store.flush()
        assert store.get_history() == ["a", "b", "c", "d", "z"]
        records = store.get_records(store.get_history())
        assert [(r["engine_uuid"], r["engine_id"]) for r in records.values()] == [
            ("e", 1),
            ("f", 2),
            ("e", 3),
            ("e", 4),
            ("e", 6),
        ]


def test_disk_full_is_reported_and_loses_only_the_failing_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reported: list[StoreError] = []

    def call(write: Callable[..., None], *args: object) -> None:
        """The failure surfaces at the first call after the writer meets it: any write's."""
        try:
            write(*args)
        except StoreError as error:
            reported.append(error)

    with SQLiteStore(tmp_path / "tasks.db", max_size=2_000_000) as store:
        with caplog.at_level(logging.ERROR, logger="corral.controller.store"):
            for index in range(200):
                call(store.add_record, f"m{index}", {"status": "ok", "stdout": "x" * 100})
                if index == 100:
                    call(store.add_record, "huge", {"result_buffers": [b"\xff" * 3_000_000]})
            call(store.flush)
        assert len(reported) == 1
        assert "huge" in str(reported[0])
        assert "full" in str(reported[0])
        assert "huge" in caplog.text
        store.flush()  # reported once
        assert store.get_history() == [f"m{index}" for index in range(200)]
        store.add_record("after", {"status": "ok"})
        assert store.get_record("after") == {"msg_id": "after", "status": "ok"}


def test_failed_write_is_raised_by_the_next_write_which_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLiteStore(tmp_path / "tasks.db", max_size=1_000_000) as store:
        with caplog.at_level(logging.ERROR, logger="corral.controller.store"):
            store.add_record("huge", {"stdout": "y" * 2_000_000})
            # the writer logs the failure as it happens
            until(lambda: "huge" in caplog.text, 10, "the failed write to be logged")
        with pytest.raises(StoreError, match="huge"):
            store.add_record("ok", {})
        assert store.get_history() == ["ok"]


def test_read_only_store_reads_and_reports_writes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SQLiteStore(path) as store:
        store.add_record("m1", {"status": "ok"})
    with open_store(f"sqlite://{path}?mode=ro") as read_only:
        assert read_only.get_record("m1") == {"msg_id": "m1", "status": "ok"}
        read_only.add_record("m2", {})
        with pytest.raises(StoreError, match="readonly"):
            read_only.flush()
        assert read_only.get_history() == ["m1"]


def test_read_only_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="tasks.db"):
        SQLiteStore(tmp_path / "tasks.db", read_only=True)


def test_open_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no-such-dir"):
        SQLiteStore(tmp_path / "no-such-dir" / "tasks.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="garbage.db"):
        SQLiteStore(garbage)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE tasks (x)")
        db.execute("PRAGMA user_version = 99")
        db.commit()
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(other)


def test_extra_fields_must_be_json(sqlite_store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="JSON"):
        sqlite_store.add_record("m1", {"blob": b"bytes"})
    with pytest.raises(StoreError, match="header"):
        sqlite_store.add_record("m1", {"header": {"date": object()}})
    assert sqlite_store.get_history() == []


def test_concurrent_readers_and_a_writer(sqlite_store: SQLiteStore) -> None:
    """Reads from other threads while the Hub's thread writes see consistent records."""
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                for record in sqlite_store.find_records({"status": "ok"}):
                    assert record["result_buffers"] == [record["msg_id"].encode() * 100]
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for index in range(2000):
            msg_id = f"m{index}"
            sqlite_store.add_record(msg_id, {"status": "pending"})
            sqlite_store.update_record(
                msg_id, {"status": "ok", "result_buffers": [msg_id.encode() * 100]}
            )
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert len(sqlite_store.find_records({"status": "ok"}, keys=[])) == 2000


def test_batch_writer_marks_say_which_writes_are_applied_without_waiting() -> None:
    release = threading.Event()
    applied: list[str] = []

    def apply(batch: list[WriteOp[None]]) -> None:
        assert release.wait(30), "the test never released the writer"
        applied.extend(op.msg_ids[0] for op in batch)

    writer: BatchWriter[None] = BatchWriter(apply, name="test writer", linger=0.0)
    try:
        writer.submit(WriteOp("upsert", ("a",), None))
        mark = writer.mark()
        writer.submit(WriteOp("upsert", ("b",), None))
        assert mark == 1 and not writer.applied(mark)  # held by the writer: not applied yet
        release.set()
        writer.flush()
        assert writer.applied(mark) and writer.applied(writer.mark())
        assert applied == ["a", "b"]
    finally:
        release.set()
        writer.close()


def test_values_bound_as_they_are_read_back_and_a_programs_adapter_stays(
    tmp_path: Path,
) -> None:
    """The store has None, bools and bytes bound without the adapter lookup that fails for
    each (an adapter that hands the value back): they read back as before; a program's own
    adapter for such a type, registered first, is left as it is."""
    key = (bytes, sqlite3.PrepareProtocol)
    own = sqlite3.adapters.pop(key, None)
    tagged: list[bytes] = []

    def tag(value: bytes) -> bytes:
        tagged.append(value)
        return value

    sqlite3.register_adapter(bytes, tag)
    try:
        with SQLiteStore(tmp_path / "tasks.db") as store:
            store.add_record(
                "m", {"status": None, "resubmitted": True, "result_buffers": [b"data"]}
            )
            assert store.get_record("m") == {
                "msg_id": "m",
                "status": None,
                "resubmitted": True,
                "result_buffers": [b"data"],
            }
            assert sqlite3.adapters[key] is tag and tagged == [b"data"]
            for kind in (type(None), bool):
                adapter = sqlite3.adapters[(kind, sqlite3.PrepareProtocol)]
                assert adapter(kind()) == kind()
    finally:
        del sqlite3.adapters[key]
        if own is not None:
            sqlite3.adapters[key] = own
