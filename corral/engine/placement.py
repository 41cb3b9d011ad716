"""Where an engine runs: host, pid, MPI rank, launcher and batch job, told to the Hub.

The engine reads these from its own process and environment when it starts, so that `corral
list`, ``rc.engine_info()`` and reply metadata can say where each engine is without the
launcher having to know pids on hosts it cannot see. MPI launchers and batch systems each set
their own variables; the first one present wins.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

LAUNCHER_VARIABLE = "CORRAL_LAUNCHER"  # set by corral's launchers on the engines they start

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
# an array's own id first: the job the user submitted, not the element
JOB_VARIABLES = ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def _first_int(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def engine_placement(environ: Mapping[str, str], mpi_rank: int | None = None) -> dict[str, Any]:
    """This engine's host, pid, MPI rank and size (None outside MPI and multi-task job steps),
    launcher and job id.

    ``environ`` is the engine process's environment, passed in by its entry point (the
    launcher's variables are read there only); ``mpi_rank`` overrides it (the rank mpi4py
    reports, when it is loaded).
    """
    env = environ
    job_id = next((env[name] for name in JOB_VARIABLES if env.get(name)), None)
    size = _first_int(env, SIZE_VARIABLES)
    if mpi_rank is None and size is not None:  # a rank means something only within a size
        mpi_rank = _first_int(env, RANK_VARIABLES)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "mpi_rank": mpi_rank,
        "mpi_size": size,
        "launcher": env.get(LAUNCHER_VARIABLE, "local"),
        "job_id": job_id,
    }
