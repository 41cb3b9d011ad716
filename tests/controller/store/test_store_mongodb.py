"""What only the MongoDB store does: chunked buffers, and errors only the server sees."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from corral.controller.store.mongodb import CHUNK_SIZE, MongoStore
from corral.errors import StoreError


@pytest.fixture
def database(mongodb_database: str) -> Iterator[Database[dict[str, Any]]]:
    with MongoClient(mongodb_database) as client:
        yield client.get_default_database()


def test_large_buffers_are_chunked_and_cleaned_up(
    mongodb_database: str, database: Database[dict[str, Any]]
) -> None:
    big = os.urandom(2 * CHUNK_SIZE + 5)
    with MongoStore(mongodb_database, "c") as store:
        store.add_record("m1", {"result_buffers": [big, b"tail"]})
        store.add_record("m2", {"result_buffers": [big]})
        store.flush()
        assert database["c.buffers"].count_documents({"msg_id": "m1"}) == 4
        store.update_record("m1", {"result_buffers": [big[:10]]})
        store.flush()
        assert database["c.buffers"].count_documents({"msg_id": "m1"}) == 0
        assert store.get_record("m1")["result_buffers"] == [big[:10]]
        store.drop_records(["m2"])
        store.flush()
        assert database["c.buffers"].count_documents({}) == 0


def test_write_rejected_by_the_server_is_reported(
    mongodb_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two stores on one collection (a misconfiguration) collide on the submission
    sequence; the server refuses the second write, and the store says so."""
    with MongoStore(mongodb_database, "c") as first, MongoStore(mongodb_database, "c") as second:
        first.add_record("m1", {"status": "ok"})
        first.flush()
        reported: list[StoreError] = []
        with caplog.at_level(logging.ERROR, logger="corral.controller.store"):
            for index in range(2, 6):
                try:  # the failure surfaces at the first call after the writer meets it
                    second.add_record(f"m{index}", {"status": "ok"})
                except StoreError as error:
                    reported.append(error)
            try:
                second.flush()
            except StoreError as error:
                reported.append(error)
        assert len(reported) == 1
        assert "m2" in str(reported[0])
        assert "duplicate key" in str(reported[0]).lower()
        assert "m2" in caplog.text
        assert second.get_history() == ["m1", "m3", "m4", "m5"]


def test_oversized_record_is_refused_at_the_call(mongodb_database: str) -> None:
    with MongoStore(mongodb_database, "c") as store:
        with pytest.raises(StoreError, match="bytes"):
            store.add_record("m1", {"stdout": "x" * (13 * 1024 * 1024)})
        with pytest.raises(StoreError, match="MongoDB"):
            store.add_record("m1", {"custom": {1: "non-string key"}})
        assert store.get_history() == []
