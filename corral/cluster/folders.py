"""Cluster folders on disk: which exist, which are in use, and removing the ones that are not.

Every cluster lives in ``<cluster_dir>/<cluster_id>/`` (connection files, logs, the SQLite
store). Whoever runs a cluster holds a shared ``flock`` on its ``cluster.lock`` for as long
as it runs: the ``Cluster`` that started it, and (inherited) its controller and engines, or a
``corral controller`` started by hand. The kernel drops the lock when the last of them exits,
however it exits, so "is it running" never depends on pids that may have been reused. Removal
takes the lock exclusively first, so a folder in use is never removed, and a cluster cannot
start in a folder while it is being removed.

States: ``running`` (the lock is held, or a recorded process still lives), ``stale`` (not
running, but it did not stop cleanly: its state or connection files are still there, e.g. its
owner was killed), ``stopped`` (stopped cleanly; what is left is the store and the logs).
A ``temporary`` folder (``Cluster(...)`` without a cluster_id) is removed when its cluster
stops, and, if its owner was killed, by the next ``Cluster`` start or ``corral clean``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from corral.protocol.connection_files import (
    CLIENT_FILE,
    ENGINE_FILE,
    STORE_FILE,
    read_json_object,
)

log = logging.getLogger("corral.cluster")

LOCK_FILE = "cluster.lock"
STATE_FILE = "cluster.json"  # written by Cluster (corral/cluster/cluster.py)
LOCK_TIMEOUT = 10.0

State = Literal["running", "stopped", "stale"]


@dataclass(frozen=True)
class ClusterFolder:
    """One cluster folder as found on disk."""

    cluster_id: str
    path: Path
    state: State
    temporary: bool
    size: int  # bytes on disk
    age: float  # seconds since anything in it last changed
    store: dict[str, Any] | None  # the store settings a running controller published


def hold(path: Path, timeout: float = LOCK_TIMEOUT) -> int:
    """Create ``path`` (0700) if needed and take a shared lock on its ``cluster.lock``; return
    the descriptor, which marks the cluster as running until it (and every copy a child
    process inherited) is closed. CorralError if the folder is being removed for longer
    than ``timeout``."""
    from corral.errors import CorralError

    deadline = time.monotonic() + timeout
    while True:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # the folder may have been removed between open and flock: lock the live file
            if os.fstat(fd).st_ino == (path / LOCK_FILE).stat().st_ino:
                return fd
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
        if time.monotonic() > deadline:
            raise CorralError(f"the cluster folder {path} is being removed; try again")
        time.sleep(0.05)  # another process is removing the folder; no event to wait on


@contextmanager
def _exclusive(path: Path, create: bool) -> Iterator[bool]:
    """Yield True holding ``path``'s lock exclusively (nobody runs the cluster), else False.
    ``create``: make the lock file if there is none (to remove the folder); without it, a
    folder with no lock file counts as free and is left unchanged (to inspect it)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path / LOCK_FILE, flags, 0o600)
    except FileNotFoundError:
        yield not create and path.is_dir()
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) or {}


def alive_since(pid: Any, written: float) -> bool:
    """Whether ``pid`` runs and already ran when a file naming it was written at ``written``
    (a process created later merely reuses the pid of one that is gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= written + 1
    except psutil.Error:
        return False


def launcher_pids(state: Mapping[str, Any]) -> list[int]:
    """The local processes a state file's launcher records name (an engine set's
    ``mpiexec``, its ssh sessions, a local launch's engines): apart from the top-level pids,
    they run on after a killed manager until ``corral stop`` ends them."""
    found = []
    for record in state.get("launchers", []):
        if isinstance(record, Mapping):
            found += [pid for pid in record.get("pids", []) if isinstance(pid, int) and pid > 0]
    return found


def _recorded_processes_alive(path: Path) -> bool:
    """A process the state or connection files name still runs (for clusters whose owner
    predates the lock, or a controller started without one, or a launcher's process left by
    a killed manager)."""
    for name, keys in ((STATE_FILE, ("manager_pid", "controller_pid")), (CLIENT_FILE, ())):
        file = path / name
        try:
            written = file.stat().st_mtime
        except OSError:
            continue
        info = _read_json(file)
        pids = [info.get(key) for key in keys] + list(info.get("engine_pids", []))
        if name == CLIENT_FILE:
            pids.append(info.get("controller_pid"))
        else:
            pids += launcher_pids(info)
        if any(alive_since(pid, written) for pid in pids):
            return True
    return False


def _running(path: Path) -> bool:
    with _exclusive(path, create=False) as free:
        if not free and path.exists():
            return True
    return _recorded_processes_alive(path)


def _disk_usage(path: Path) -> tuple[int, float]:
    """Bytes on disk (allocated blocks) and the newest modification time under ``path``."""
    size = 0
    newest = 0.0
    for root, _, files in os.walk(path):
        for name in [".", *files]:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            size += info.st_blocks * 512 if name != "." else 0
            newest = max(newest, info.st_mtime)
    return size, newest


def inspect(path: Path) -> ClusterFolder:
    """The state, size and age of one cluster folder."""
    state_info = _read_json(path / STATE_FILE)
    state: State
    if _running(path):
        state = "running"
    elif (
        (path / STATE_FILE).exists()
        or (path / CLIENT_FILE).exists()
        or (path / ENGINE_FILE).exists()
    ):
        state = "stale"
    else:
        state = "stopped"
    size, newest = _disk_usage(path)
    store = _read_json(path / CLIENT_FILE).get("store") if state == "running" else None
    return ClusterFolder(
        cluster_id=path.name,
        path=path,
        state=state,
        temporary=bool(state_info.get("temporary", False)),
        size=size,
        age=max(0.0, time.time() - newest),
        store=store if isinstance(store, dict) else None,
    )


def inventory(base: Path) -> list[ClusterFolder]:
    """Every cluster folder under ``base`` (a folder with a lock, state, connection file or
    store), oldest first."""
    if not base.is_dir():
        return []
    found = []
    for path in sorted(base.iterdir()):
        if path.is_dir() and not path.is_symlink() and _is_cluster_folder(path):
            found.append(inspect(path))
    return sorted(found, key=lambda folder: -folder.age)


def _is_cluster_folder(path: Path) -> bool:
    markers = (LOCK_FILE, STATE_FILE, CLIENT_FILE, ENGINE_FILE, STORE_FILE, "controller.log")
    return any((path / name).exists() for name in markers)


def remove(path: Path) -> int | None:
    """Remove a cluster folder that nobody runs; the bytes freed, or None if it is running
    (then nothing is touched)."""
    with _exclusive(path, create=True) as free:
        if not free or _recorded_processes_alive(path):
            return None
        size, _ = _disk_usage(path)
        _remove_far_folder(path)
        shutil.rmtree(path, ignore_errors=True)
        return size


def _remove_far_folder(path: Path) -> None:
    """The folder a controller started over ssh left on its host goes with this one; if it
    cannot, say where it is (this folder's record of it is about to go)."""
    from corral.cluster.launchers.controller import remove_far_folder

    why = remove_far_folder(path)
    if why is not None:
        log.warning("the controller's folder on its far host: %s; remove it by hand", why)


def release(fd: int, path: Path, remove_folder: bool) -> bool:
    """Close a descriptor from :func:`hold`; with ``remove_folder``, first remove the folder
    if no other process holds it (a child that could not be stopped). True if removed."""
    removed = False
    try:
        if remove_folder:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # upgrade: nobody else runs it
            except BlockingIOError:
                log.warning(
                    "cluster folder %s is still in use by another process; left in place "
                    "(`corral clean` removes it once that process is gone)",
                    path,
                )
            else:
                shutil.rmtree(path, ignore_errors=True)
                removed = not path.exists()
    finally:
        os.close(fd)
    return removed


def reclaim_temporary(base: Path) -> list[ClusterFolder]:
    """Remove temporary folders whose owner died without removing them (the stale ones);
    return them. Called by every Cluster start, so a killed notebook leaves nothing for long."""
    reclaimed: list[ClusterFolder] = []
    if not base.is_dir():
        return reclaimed
    for path in base.iterdir():
        if not path.is_dir() or path.is_symlink():
            continue
        if not _read_json(path / STATE_FILE).get("temporary"):
            continue
        folder = inspect(path)
        if folder.state == "stale" and remove(path) is not None:
            log.info("removed the temporary cluster folder %s left by a killed owner", path)
            reclaimed.append(folder)
    return reclaimed


def clean(
    base: Path, older_than: float | None = None, cluster_id: str | None = None
) -> tuple[list[ClusterFolder], list[ClusterFolder]]:
    """Remove stopped and stale cluster folders (only ``cluster_id``'s, if given; only those
    unchanged for ``older_than`` seconds, if given). Returns (removed, left running)."""
    removed: list[ClusterFolder] = []
    running: list[ClusterFolder] = []
    if cluster_id is not None:
        path = base / cluster_id
        folders = [inspect(path)] if path.is_dir() else []
    else:
        folders = inventory(base)
    for folder in folders:
        if folder.state == "running":
            running.append(folder)
            continue
        if older_than is not None and folder.age < older_than:
            continue
        freed = remove(folder.path)
        if freed is None:
            running.append(folder)
        else:
            removed.append(ClusterFolder(**{**folder.__dict__, "size": freed}))
    return removed, running


def format_age(seconds: float) -> str:
    """``"3d"``, ``"5h"``, ``"12m"``, ``"40s"``: the largest whole unit."""
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{int(seconds // scale)}{unit}"
    return f"{int(seconds)}s"


def folder_table(folders: list[ClusterFolder]) -> list[str]:
    """``corral list --all``: one line per folder, with a header."""
    from corral.controller.store.retention import format_size

    lines = [f"{'cluster':<24} {'state':<8} {'kind':<9} {'size':>10} {'age':>6}  folder"]
    for folder in folders:
        kind = "temporary" if folder.temporary else "kept"
        lines.append(
            f"{folder.cluster_id:<24} {folder.state:<8} {kind:<9} "
            f"{format_size(folder.size):>10} {format_age(folder.age):>6}  {folder.path}"
        )
    return lines
