"""Ending a cluster's processes: one at a time, a list by a deadline, or a whole cluster from
another process.

:class:`~corral.cluster.cluster.Cluster` stops the processes it started itself (asking the
Hub first, then :func:`wait_or_terminate`); :func:`stop_cluster` is what ``corral stop`` does
with a cluster some other process manages, knowing only what its ``cluster.json`` recorded:
it asks the manager (SIGTERM), else the Hub, then kills what is left (the launchers' local
processes too, such as an engine set's ``mpiexec``) and sweeps the cluster's shared-memory
names. Kept apart from :mod:`corral.cluster.cluster`, which starts and
supervises, because stopping from outside needs none of a running Cluster's state.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final

import psutil

from corral.client.client import Client
from corral.cluster.folders import STATE_FILE, alive_since, launcher_pids
from corral.cluster.launchers.ssh import clean_recorded as clean_ssh_hosts
from corral.cluster.launchers.watch import cancel_recorded_jobs
from corral.errors import ConnectionError, CorralError
from corral.protocol.connection_files import CLIENT_FILE
from corral.sharedmem import cluster_prefix, sweep

__all__ = ["TERMINATE_GRACE", "nothing_alive", "stop_cluster", "wait_or_terminate"]

#: Seconds a cluster's process gets to act on SIGTERM before it is killed.
TERMINATE_GRACE: Final = 3.0

#: Seconds :func:`stop_cluster` waits at most for the Hub to answer (a crashed controller
#: never does).
HUB_ANSWER_TIMEOUT: Final = 5.0


def wait_or_terminate(processes: Sequence[subprocess.Popen[bytes]], deadline: float) -> None:
    """Wait for each process until ``deadline`` (``time.monotonic()``; each gets at least 0.1 s
    more), then end the ones still running together: SIGTERM to each, SIGKILL to those still
    running ``TERMINATE_GRACE`` seconds later; reaped either way. Together, because a process
    may take a while to act on SIGTERM (an engine whose controller is gone waits for its
    unregistration's answer and lingers, about 2 s): one after the other, a cluster's stop
    would take that times its engines."""
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)  # nothing if it ended since the poll
    killed_at = time.monotonic() + TERMINATE_GRACE
    for process in running:
        try:
            process.wait(max(0.0, killed_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def local_engine_pids(client: Client) -> set[int] | None:
    """The pids of this host's engines the Hub has registered (which a shutdown request
    reaches), or None if it cannot say (then every engine is waited for, as before)."""
    try:
        info = client.engine_info()
    except (CorralError, OSError):
        return None
    host = socket.gethostname()
    return {
        fields["pid"]
        for fields in info.values()
        if isinstance(fields.get("pid"), int) and fields.get("host") == host
    }


def unreached_engines(
    engines: Sequence[subprocess.Popen[bytes]], told: Collection[int] | None
) -> list[subprocess.Popen[bytes]]:
    """The local engine processes a shutdown request cannot have reached: still running, and
    not among the pids of this host's engines the Hub had registered when it was sent
    (``told``; None when that is unknown: then none). Such an engine is between registrations
    (re-registering with a restarted controller, say) and would wait for connections to a
    controller that is leaving (10 s) before it noticed; SIGTERM is its own clean stop."""
    if told is None:
        return []
    return [engine for engine in engines if engine.poll() is None and engine.pid not in told]


def unreached_pids(pids: Any, told: Collection[int] | None, since: float) -> list[int]:
    """As :func:`unreached_engines`, for the engine ``pids`` a cluster's state file recorded
    at ``since`` (its time): those still running since then (not a newer process that took the
    pid) that the Hub had not registered."""
    if told is None or not isinstance(pids, list):
        return []
    mine = os.getpid()
    engines = [p for p in pids if isinstance(p, int) and p != mine]  # the file may be edited
    return [p for p in engines if p not in told and alive_since(p, since)]


def stop_cluster(path: Path, timeout: float = 10.0) -> bool:
    """Stop the cluster in ``path`` (from another process): ask its manager, else the Hub,
    then kill what is left. ``timeout`` bounds each wait: for the Hub's answer (at most
    ``HUB_ANSWER_TIMEOUT``), for the processes to end, for the killed ones to go. True if
    something was running."""
    state_file = path / STATE_FILE
    state: dict[str, Any] = {}
    written = 0.0
    if state_file.exists():
        written = state_file.stat().st_mtime
        state = json.loads(state_file.read_text())
    manager = state.get("manager_pid")
    # a launcher's processes (mpiexec, ssh sessions) end when its manager stops it; after the
    # manager was killed nobody does, and mpiexec waits for ranks that may never end. Only
    # those that already ran when the file was written: a newer one merely reuses the pid.
    launched = [p for p in launcher_pids(state) if alive_since(p, written)]
    pids = [
        p
        for p in [
            manager,
            state.get("controller_pid"),
            *state.get("engine_pids", []),
            state.get("dashboard_pid"),
        ]
        if isinstance(p, int) and p != os.getpid()
    ]
    was_running = any(psutil.pid_exists(p) for p in pids) or bool(launched)
    # a zombie manager (killed, its parent not reaping it: a daemon's is init, which in a
    # container may not) counts as gone; so does a newer process that took its pid
    managed = alive_since(manager, written)
    if manager and manager != os.getpid() and managed:
        os.kill(manager, signal.SIGTERM)
    elif (path / CLIENT_FILE).exists():
        try:
            client = Client(
                connection_file=path / CLIENT_FILE, timeout=min(HUB_ANSWER_TIMEOUT, timeout)
            )
        except ConnectionError:
            client = None
        if client is not None:
            was_running = True
            told = local_engine_pids(client)
            try:
                client.shutdown(targets="all", hub=True, block=True)
            except ConnectionError:
                pass  # it went away meanwhile (its owner died): what is left is killed below
            finally:
                client.close()
            for pid in unreached_pids(state.get("engine_pids", []), told, written):
                _terminate(pid)
    pids += [p for p in launched if p not in pids]
    processes = [process for process in map(_process, pids) if process is not None]
    # without a manager to stop them, a launcher's processes are not waited for: mpiexec
    # waits for its ranks, which may never end (the manager's stop would have ended them)
    orphans = [] if managed else [p for p in processes if p.pid in launched]
    _, alive = psutil.wait_procs([p for p in processes if p not in orphans], timeout=timeout)
    alive += [p for p in orphans if p.is_running()]
    was_running = cancel_recorded_jobs(state.get("launchers", [])) or was_running
    for process in alive:
        _kill(process, group=process.pid in launched)
    psutil.wait_procs(alive, timeout=timeout)
    if not managed:  # the manager's stop cleans the far sides of an ssh engine set itself
        for record in state.get("launchers", []):
            if isinstance(record, dict) and record.get("launcher") == "ssh":
                clean_ssh_hosts(record)
    sweep(cluster_prefix(path), alive=nothing_alive)  # stopped: no segment is needed any more
    state_file.unlink(missing_ok=True)
    return was_running


def nothing_alive(pid: int) -> bool:
    """For the sweep after a stop: the names' owners count as gone (a client that still maps a
    result keeps its memory; only the names go)."""
    return False


def _kill(process: psutil.Process, group: bool) -> None:
    """SIGKILL ``process``; with ``group``, its whole process group when it leads one (a
    launcher starts its tool in a session of its own, so an MPI whose ranks stay in mpiexec's
    group loses them too; MPICH's Hydra gives each rank a session, and its proxy kills them
    once mpiexec is gone)."""
    try:
        if group and os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass  # it ended since the wait


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended since


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
