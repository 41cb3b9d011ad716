"""The engine launchers by name: what `--engines NAME` and ``Cluster(engines=NAME)`` pick.

corral's own launchers go by their short names, in any case. A launcher of one's own (a
subclass of :class:`~corral.cluster.launchers.base.EngineLauncher`) is found, as ipyparallel
finds its third-party launchers, by the name a package registers for it in the
``corral.engine_launchers`` entry point group (``mine = mypackage:MyLauncher``), or by its
import path (``mypackage:MyLauncher`` or ``mypackage.MyLauncher``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

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

ENTRY_POINT_GROUP = "corral.engine_launchers"


def launcher_key(name: str) -> str:
    """``name`` as the registry looks it up: corral's own names in lower case (ipyparallel's
    docs write ``engines="MPI"``); a registered or importable name as it is."""
    return name.lower() if name.lower() in ENGINE_LAUNCHERS else name


def engine_launcher(name: str, spec: LaunchSpec) -> EngineLauncher:
    """The launcher called ``name`` for ``spec``; LaunchError listing the names otherwise."""
    cls = ENGINE_LAUNCHERS.get(launcher_key(name)) or _registered(name) or _imported(name)
    if cls is None:
        registered = sorted(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
        raise LaunchError(
            f"no engine launcher {name!r}; choose one of "
            f"{', '.join([*ENGINE_LAUNCHERS, *registered])}, or name an EngineLauncher "
            f"subclass by its import path (package.module:Class) or a {ENTRY_POINT_GROUP} "
            "entry point"
        )
    return cls(spec)


def _registered(name: str) -> type[EngineLauncher] | None:
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _launcher_class(point.load(), f"the {ENTRY_POINT_GROUP} entry point {name!r}")
    return None


def _imported(name: str) -> type[EngineLauncher] | None:
    """The class at import path ``module:Class`` or ``module.Class``; None for a bare name."""
    module_name, _, attribute = name.rpartition(":" if ":" in name else ".")
    if not module_name:
        return None
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise LaunchError(f"engine launcher {name!r} cannot be imported: {err}") from None
    return _launcher_class(found, name)


def _launcher_class(found: object, what: str) -> type[EngineLauncher]:
    if not (isinstance(found, type) and issubclass(found, EngineLauncher)):
        raise LaunchError(f"{what} is {found!r}, not a subclass of corral's EngineLauncher")
    return found
