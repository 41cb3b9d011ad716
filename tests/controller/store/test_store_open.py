"""open_store: every URL form, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from pymongo import MongoClient

from corral.controller.store import MemoryStore, MongoStore, SQLiteStore, open_store
from corral.errors import StoreError


def test_memory() -> None:
    with open_store("memory") as store:
        assert isinstance(store, MemoryStore)


def test_sqlite_in_cluster_folder(tmp_path: Path) -> None:
    with open_store("sqlite", tmp_path) as store:
        assert isinstance(store, SQLiteStore)
        store.add_record("m1", {})
    assert (tmp_path / "tasks.db").exists()
    with open_store("sqlite", tmp_path) as store:
        assert store.get_history() == ["m1"]


def test_sqlite_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "my#tasks?.db"
    path.parent.mkdir()
    with open_store(f"sqlite://{quote(str(path))}?max_size=10000000") as store:
        store.add_record("m1", {})
        store.flush()
    assert path.exists()


def test_mongodb_collections_named_by_cluster_id(mongodb_database: str) -> None:
    with open_store(mongodb_database, cluster_id="c42") as store:
        assert isinstance(store, MongoStore)
        store.add_record("m1", {"status": "ok"})
        store.flush()
    with MongoClient(mongodb_database) as client:
        database = client.get_default_database()
        assert "c42.tasks" in database.list_collection_names()
        assert database["c42.tasks"].find_one({}, {"_id": 0}) == {"msg_id": "m1", "status": "ok"}


@pytest.mark.parametrize(
    "url",
    [
        "",
        "postgres://localhost/db",
        "Memory",
        "sqlite://relative/tasks.db",
        "sqlite:relative.db",
        "sqlite:///tmp/tasks.db?bogus=1",
        "sqlite:///tmp/tasks.db?mode=rwc",
        "sqlite:///tmp/tasks.db?max_size=-1",
    ],
)
def test_bad_urls_are_named(url: str) -> None:
    with pytest.raises(StoreError, match="URL") as raised:
        open_store(url)
    assert repr(url) in str(raised.value)


def test_sqlite_needs_a_cluster_folder() -> None:
    with pytest.raises(StoreError, match="cluster folder"):
        open_store("sqlite")


def test_unreachable_mongodb_fails_at_open(free_port: int) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        MongoStore(f"mongodb://127.0.0.1:{free_port}/x", timeout_ms=300)


def test_malformed_mongodb_url() -> None:
    with pytest.raises(StoreError, match="mongodb://:::"):
        open_store("mongodb://:::")
    with pytest.raises(StoreError, match="cluster id"):
        open_store("mongodb://127.0.0.1:1/x", cluster_id="")
