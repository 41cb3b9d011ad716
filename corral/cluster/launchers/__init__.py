"""Launchers: where and how engines run (local processes, mpiexec, SSH, batch systems).

``corral start --engines slurm -n 64`` and ``Cluster(n=64, engines="slurm")`` pick one by
name; its options come from the command line and the per-cluster config file
(:mod:`.config`). Every launcher starts ``python -m corral engine --file corral-engine.json``
somewhere; the engines register by themselves.
"""

from __future__ import annotations

from corral.errors import LaunchError

from .base import EngineLauncher, LaunchSpec, wait_for_launched_engines
from .batch import BatchLauncher
from .local import LocalLauncher
from .lsf import LSFLauncher
from .mpi import MPILauncher
from .pbs import PBSLauncher
from .sge import SGELauncher
from .slurm import SlurmLauncher
from .ssh import SSHLauncher

ENGINE_LAUNCHERS: dict[str, type[EngineLauncher]] = {
    "local": LocalLauncher,
    "mpi": MPILauncher,
    "ssh": SSHLauncher,
    "slurm": SlurmLauncher,
    "pbs": PBSLauncher,
    "lsf": LSFLauncher,
    "sge": SGELauncher,
}


def engine_launcher(name: str, spec: LaunchSpec) -> EngineLauncher:
    """The launcher called ``name`` for ``spec``; LaunchError listing the names otherwise."""
    try:
        cls = ENGINE_LAUNCHERS[name]
    except KeyError:
        raise LaunchError(
            f"no engine launcher {name!r}; choose one of {', '.join(ENGINE_LAUNCHERS)}"
        ) from None
    return cls(spec)


__all__ = [
    "ENGINE_LAUNCHERS",
    "BatchLauncher",
    "EngineLauncher",
    "LaunchSpec",
    "engine_launcher",
    "wait_for_launched_engines",
]
