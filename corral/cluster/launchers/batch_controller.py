"""The controller as a batch job (``corral start --controller slurm``, also pbs, lsf, sge).

On many HPC systems the login node is no place for a long-running process, so the controller
goes into a job of its own: the same job script, options and commands as the engines' batch
launcher (corral.cluster.launchers.batch), with one task that runs ``python -m corral
controller``. It writes its connection files into the cluster folder, which the batch scripts
already need on a filesystem the nodes share; the cluster waits for them, failing with the
scheduler's words if the job is rejected or ends first. The job is recorded in the state file
beside the engines' (``"role": "controller"``), so ``corral stop`` cancels it even when the
cluster's manager was killed, and ``corral list`` tells it runs by asking the scheduler, not by
a pid of a compute node. Engines on other nodes reach it when it listens beyond loopback
(``--ip 0.0.0.0``, with CurveZMQ on by default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import LaunchError
from corral.protocol.connection_files import CLIENT_FILE, ENGINE_FILE

from .base import LaunchSpec
from .batch import BatchLauncher

CONNECTION_FILES = (ENGINE_FILE, CLIENT_FILE)


def batch_controller_names() -> tuple[str, ...]:
    """The batch launchers that can run the controller."""
    from .registry import ENGINE_LAUNCHERS

    return tuple(name for name, cls in ENGINE_LAUNCHERS.items() if issubclass(cls, BatchLauncher))


def controller_job(
    name: str,
    cluster_id: str,
    cluster_path: Path,
    command: Sequence[str],
    options: Mapping[str, Any],
) -> BatchLauncher:
    """A batch launcher ``name`` whose one task runs ``command`` (the controller)."""
    from .registry import ENGINE_LAUNCHERS

    cls = ENGINE_LAUNCHERS.get(name)
    if cls is None or not issubclass(cls, BatchLauncher):
        raise LaunchError(
            f"no controller launcher {name!r}; choose local, ssh or one of "
            f"{', '.join(batch_controller_names())}"
        )
    spec = LaunchSpec(
        cluster_id=cluster_id,
        cluster_path=cluster_path,
        engine_file=cluster_path / CONNECTION_FILES[0],
        n=1,
        options=options,
        role="controller",
        command=tuple(command),
    )
    return cls(spec)


def _complete(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def start_controller_job(job: BatchLauncher, timeout: float, poll: float = 0.5) -> None:
    """Submit the controller's job and wait until its connection files are written; files a
    former controller left are removed first, so only this one's count. LaunchError with the
    scheduler's words if the job is rejected or ends without them, or after ``timeout``."""
    folder = job.spec.cluster_path
    for name in CONNECTION_FILES:
        (folder / name).unlink(missing_ok=True)
    job.start()
    deadline = time.monotonic() + timeout
    while not all(_complete(folder / name) for name in CONNECTION_FILES):
        why = job.failure()
        if why is not None:
            raise LaunchError(f"the controller's {job.name} job failed: {why}")
        if time.monotonic() > deadline:
            state = job.described_state()
            raise LaunchError(
                f"the controller's {job.name} job {job.job_id} wrote no connection files within "
                f"{timeout:.0f} s (it is {state}); `--start-timeout` waits longer"
            )
        time.sleep(poll)  # a file written on another node, a scheduler to ask: no event
