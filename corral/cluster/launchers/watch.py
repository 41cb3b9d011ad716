"""Watching and ending launches: what `corral start` and `corral stop` do with launchers.

``corral stop`` from another shell normally asks the cluster's manager process, which stops its
launchers itself. When that process is gone (killed, machine rebooted) the batch jobs it
submitted may still be queued: the state file records each job, and :func:`cancel_recorded_jobs`
cancels them so that no job is left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import CorralError

from .base import EngineLauncher, LaunchSpec
from .batch import BatchLauncher

log = logging.getLogger("corral.cluster")


def stop_launchers(launchers: Sequence[EngineLauncher], timeout: float) -> list[str]:
    """Stop every launcher, even when one fails; the failures, also logged."""
    failures = []
    for launcher in launchers:
        try:
            launcher.stop(timeout)
        except (CorralError, OSError) as err:
            log.warning("stopping the %s launcher: %s", launcher.name, err)
            failures.append(f"{launcher.name}: {err}")
    return failures


def launcher_failures(launchers: Iterable[EngineLauncher]) -> list[str]:
    """What each launcher that lost its engines (or the controller) says about it, as
    ``slurm engines: slurm job 12 is TIMEOUT ...`` (a job cancelled or over its walltime,
    mpiexec exited); each launcher remembers it for the state file."""
    found = []
    for launcher in launchers:
        why = launcher.failure()
        if why is not None:
            launcher.lost = why.splitlines()[0][:300]
            found.append(f"{launcher.name} {launcher.spec.role}: {why}")
    return found


def recorded_job(record: Mapping[str, Any]) -> BatchLauncher | None:
    """A handle on the batch job a state file's launcher record names (to query or cancel it
    from any process), or None when the record is not a submitted batch job."""
    from .registry import ENGINE_LAUNCHERS

    cls = ENGINE_LAUNCHERS.get(str(record.get("launcher")))
    job_id = record.get("job_id")
    if cls is None or not issubclass(cls, BatchLauncher) or not job_id:
        return None
    launcher = cls(LaunchSpec("", Path("."), Path("."), 0))
    launcher.job_id = str(job_id)
    return launcher


def cancel_recorded_jobs(records: Iterable[Mapping[str, Any]], timeout: float = 30.0) -> bool:
    """Cancel the batch jobs a state file lists and wait until they are gone; True if one
    was still there."""
    found = False
    for record in records:
        launcher = recorded_job(record)
        if launcher is None:
            continue
        system = launcher.system
        if launcher.query_state() in system.active_states | system.leaving_states:
            found = True
        try:
            launcher.stop(timeout)
        except CorralError as err:
            log.warning("cancelling %s job %s: %s", launcher.name, launcher.job_id, err)
    return found
