"""All engines as the ranks of one ``mpiexec``: they share COMM_WORLD, so a task can call
``mpi4py``'s collectives across engines (``MPI.COMM_WORLD.allreduce``).

Each engine runs with ``--mpi``: it initialises MPI on its main thread, the one that runs tasks,
and reports its rank to the Hub. Options: ``mpiexec`` (the command, default ``mpiexec``),
``mpi_args`` (extra arguments before the program: hosts, binding ...).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

from corral.errors import LaunchError

from .base import EngineLauncher, launcher_environment, log_tail, require_tool
from .local import spawn, terminate


def mpiexec_command(mpiexec: str, n: int, mpi_args: list[str], engine: list[str]) -> list[str]:
    """``mpiexec [mpi_args] -n N <engine command>``."""
    if n < 1:
        raise LaunchError(f"the mpi launcher needs at least one engine, not {n}")
    return [mpiexec, *mpi_args, "-n", str(n), *engine]


def is_hydra(mpiexec: str) -> bool:
    """Whether ``mpiexec`` is MPICH's Hydra (it then takes ``-disable-auto-cleanup``)."""
    try:
        done = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=10,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in done.stdout


def option_list(value: Any) -> list[str]:
    """A launcher option that is a list of words: a list, or a string split like a shell."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def mpi_controller_prefix(options: Any) -> list[str]:
    """``mpiexec [mpi_args] -n 1``: what runs the controller as one MPI process
    (``--controller mpi``, for sites whose long-running processes go through their MPI
    launcher); LaunchError if there is no mpiexec."""
    mpiexec = require_tool(str(options.get("mpiexec") or "mpiexec"), "mpi controller")
    return [mpiexec, *option_list(options.get("mpi_args")), "-n", "1"]


class MPILauncher(EngineLauncher):
    name = "mpi"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.spec.cluster_path / "engines-mpi.log"

    def start(self) -> None:
        mpiexec = require_tool(str(self.spec.option("mpiexec", "mpiexec")), self.name)
        # engines end with os._exit, not MPI_Finalize: Hydra would then kill every other rank
        # (before it could unregister), and one engine's crash would take down all of them
        keep_going = ["-disable-auto-cleanup"] if is_hydra(mpiexec) else []
        engine = self.spec.engine_command(mpi=True)
        if self.spec.owner_pid is not None:
            # ranks on this host end with the owner (an ancestor of theirs: corral.lifetime);
            # ranks on other hosts have no such ancestor and ignore it
            engine += ["--owner-pid", str(self.spec.owner_pid)]
        argv = mpiexec_command(
            mpiexec,
            self.spec.n,
            keep_going + option_list(self.spec.option("mpi_args")),
            engine,
        )
        self.process = spawn(argv, self.log_path, launcher_environment(self.name))

    def failure(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        return f"mpiexec exited with {self.process.returncode}: {log_tail(self.log_path)}"

    def stop(self, timeout: float = 10.0) -> None:
        """mpiexec ends once every rank has (the engines were asked to shut down); else the
        whole process group, ranks included, is terminated."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            terminate(self.process, group=True)

    def state(self) -> dict[str, Any]:
        pid = self.process.pid if self.process and self.process.poll() is None else None
        return {**super().state(), "pids": [pid] if pid else []}
