"""The engine launchers by name: what `--engines NAME` and ``Cluster(engines=NAME)`` pick."""

from __future__ import annotations

from corral.errors import LaunchError

from .base import EngineLauncher, LaunchSpec
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
