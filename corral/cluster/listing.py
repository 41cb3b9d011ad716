"""What `corral list` says about each cluster's engines and launches.

The Hub knows where each engine runs (the engine reported it when it registered), so the rows
come from asking it, not from pids this machine may not have; the launches (which launcher,
which batch job, and why it ended when it did) come from the cluster's state file, which the
cluster's manager rewrites when a launcher reports a loss; a batch job's state is asked of its
batch system at the time of listing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.cluster.folders import STATE_FILE
from corral.errors import CorralError
from corral.protocol.connection_files import CLIENT_FILE, read_json_object

if TYPE_CHECKING:
    from corral.cluster.launchers.batch import BatchLauncher

ENGINE_COLUMNS = ("engine", "host", "pid", "launcher", "job", "mpi rank")


def controller_running(folder: Path, pid: int | None) -> str | None:
    """The controller's pid (``pid``, from its connection file) as `corral list` shows it if
    it runs, else None. A controller on
    this host is checked by its pid; one started over ssh by the ssh session that carries it,
    whose pid the state file records (the far pid means nothing here), shown as ``PID@HOST``;
    one in a batch job by asking its scheduler, shown as ``PID (slurm job 12)``."""
    import psutil

    from corral.cluster.launchers.controller import remote_record

    state = _state(folder)
    job = _controller_job(state)
    if job is not None:
        if job.query_state() not in job.system.active_states:
            return None
        return f"{pid} ({job.name} job {job.job_id})"
    if state.get("controller_launcher") == "ssh":
        session = state.get("controller_pid")
        if not isinstance(session, int) or not psutil.pid_exists(session):
            return None
        record = remote_record(folder) or {}
        return f"{pid}@{record.get('host', '?')}"
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return None
    return str(pid)


def _state(folder: Path) -> dict[str, Any]:
    """The cluster's state file (written by its manager), or {}."""
    return read_json_object(folder / STATE_FILE) or {}


def _controller_job(state: dict[str, Any]) -> BatchLauncher | None:
    """The controller's batch job, if the state file records one."""
    from corral.cluster.launchers.watch import recorded_job

    for launch in state.get("launchers", []):
        if launch.get("role") == "controller":
            return recorded_job(launch)
    return None


def engine_rows(client_file: Path, timeout: float = 5.0) -> list[tuple[str, ...]]:
    """One row per registered engine (ENGINE_COLUMNS), asked of the cluster's Hub."""
    from corral.client.client import Client

    with Client(connection_file=client_file, timeout=timeout) as client:
        info = client.engine_info()
    rows = []
    for engine_id, fields in sorted(info.items()):
        rows.append(
            tuple(
                "-" if value is None else str(value)
                for value in (
                    engine_id,
                    fields.get("host"),
                    fields.get("pid"),
                    fields.get("launcher"),
                    fields.get("job_id"),
                    fields.get("mpi_rank"),
                )
            )
        )
    return rows


def launch_lines(state_file: Path) -> list[str]:
    """``slurm job 12: CANCELLED`` lines for the launches the state file records."""
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for launch in state.get("launchers", []):
        words = [f"{launch.get('launcher')} launcher, {launch.get('n')} engines"]
        if launch.get("role") == "controller":
            words = [f"{launch.get('launcher')} launcher, the controller"]
        if launch.get("job_id"):
            words.append(f"job {launch['job_id']} {_job_state(launch)}".rstrip())
        if launch.get("lost"):
            words.append(f"lost: {launch['lost']}")
        lines.append("; ".join(words))
    return lines


def _job_state(launch: dict[str, Any]) -> str:
    """The job's state as its batch system says it now (the state file's copy is only as new
    as the manager's last look), or the recorded one when the system cannot be asked."""
    from corral.cluster.launchers.watch import recorded_job

    job = recorded_job(launch)
    if job is not None:
        state = job.described_state()
        if not state.startswith("UNKNOWN"):
            return state
    return str(launch.get("job_state") or "")


def describe_engines(cluster_folders: Iterable[Path]) -> list[str]:
    """The text `corral list` prints below its cluster table."""
    out: list[str] = []
    for folder in cluster_folders:
        out.append(f"\n{folder.name}:")
        out.extend(f"  {line}" for line in launch_lines(folder / STATE_FILE))
        try:
            rows = engine_rows(folder / CLIENT_FILE)
        except CorralError as err:
            out.append(f"  engines: cannot ask the controller ({err})")
            continue
        if not rows:
            out.append("  no engines registered")
            continue
        widths = [max(len(r[i]) for r in [ENGINE_COLUMNS, *rows]) for i in range(6)]
        for row in [ENGINE_COLUMNS, *rows]:
            out.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return out
