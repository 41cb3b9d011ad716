"""Where an engine runs: host, pid, MPI rank, launcher and batch job, told to the Hub; and
the CPUs it shares with other engines, told to the scheduler.

The engine reads these from its own process and environment when it starts, so that `corral
list`, ``rc.engine_info()`` and reply metadata can say where each engine is without the
launcher having to know pids on hosts it cannot see. MPI launchers and batch systems each set
their own variables; the first one present wins.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE = "/proc/self/ns/pid"

LAUNCHER_VARIABLE = "CORRAL_LAUNCHER"  # set by corral's launchers on the engines they start

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
# an array's own id first: the job the user submitted, not the element
JOB_VARIABLES = ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")
# the batch system a job variable belongs to: the launcher of an engine in a job whose script
# did not say (a template of the user's own, or `corral engine` in a job script written by hand)
JOB_LAUNCHERS = {
    "SLURM_ARRAY_JOB_ID": "slurm",
    "SLURM_JOB_ID": "slurm",
    "PBS_JOBID": "pbs",
    "LSB_JOBID": "lsf",
    "JOB_ID": "sge",
}


def _first_int(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def engine_placement(environ: Mapping[str, str], mpi_rank: int | None = None) -> dict[str, Any]:
    """This engine's host, pid, MPI rank and size (None outside MPI and multi-task job steps),
    launcher and job id. The launcher is what corral's launchers set, else the batch system
    whose job the engine runs in, else ``local``.

    ``environ`` is the engine process's environment, passed in by its entry point (the
    launcher's variables are read there only); ``mpi_rank`` overrides it (the rank mpi4py
    reports, when it is loaded).
    """
    env = environ
    job_variable = next((name for name in JOB_VARIABLES if env.get(name)), None)
    job_id = env[job_variable] if job_variable is not None else None
    launcher = env.get(LAUNCHER_VARIABLE) or JOB_LAUNCHERS.get(job_variable or "", "local")
    size = _first_int(env, SIZE_VARIABLES)
    if mpi_rank is None and size is not None:  # a rank means something only within a size
        mpi_rank = _first_int(env, RANK_VARIABLES)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "mpi_rank": mpi_rank,
        "mpi_size": size,
        "launcher": launcher,
        "job_id": job_id,
    }


def pid_namespace(link: str = PID_NAMESPACE) -> str | None:
    """This process's pid namespace (Linux: ``pid:[inode]``), or None where none is told: a pid
    names the same process only within one namespace."""
    try:
        return os.readlink(link)
    except OSError:
        return None


def cpu_share(boot_id: Path = BOOT_ID) -> dict[str, Any]:
    """The machine this engine runs on and the CPU ids it may run on, its pid and its pid
    namespace: ``{machine, ids, pid, pid_ns}``, the registration's ``cpus``
    (docs/wire-flows.md). The scheduler packs bursts of tiny tasks on a few engines of a
    machine that has far fewer CPUs than engines (:mod:`corral.controller.packing`), and reads
    the CPU time of those beside it (the same machine and namespace) to tell them starved
    from stuck (:mod:`corral.controller.cpu_wait`).

    The machine is the running kernel's boot id where Linux tells it (every container of one
    kernel shares its CPUs, and the CPU ids are that kernel's), else the host name. The ids
    are the process's affinity where the system says (an engine pinned to one core reports
    that core), else every CPU of the machine.
    """
    try:
        machine = "boot:" + boot_id.read_text().strip()
    except OSError:
        machine = "host:" + socket.gethostname()
    affinity = getattr(os, "sched_getaffinity", None)
    ids = sorted(affinity(0)) if affinity is not None else list(range(os.cpu_count() or 1))
    share: dict[str, Any] = {"machine": machine, "ids": ids, "pid": os.getpid()}
    namespace = pid_namespace()
    if namespace is not None:
        share["pid_ns"] = namespace
    return share
