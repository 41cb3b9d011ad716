"""What every launcher shares: the engine command, running a tool, and waiting for engines.

A launcher starts engines somewhere (local processes, one mpiexec, SSH sessions, a batch job),
tells whether they are still there, and stops them. It never talks to the controller: engines
register by themselves with the engine connection file, and the Hub learns where each runs from
the engine (corral.engine.placement). So a launcher only needs a command to run and a way to
stop it, which is what keeps the batch launchers pure functions plus four commands.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from corral.engine.placement import LAUNCHER_VARIABLE
from corral.errors import LaunchError, TimeoutError

if TYPE_CHECKING:
    from corral.client.client import Client

TOOL_TIMEOUT = 30.0  # seconds a submission or cancel command may take before it is an error


@dataclass(frozen=True)
class LaunchSpec:
    """What a launcher needs to start ``n`` engines of one cluster.

    ``options`` are the launcher's own settings (partition, hosts, mpiexec ...), from the
    command line and the per-cluster config file (corral.cluster.launchers.config).
    ``role`` and ``command`` let a batch launcher run the controller instead
    (corral.cluster.launchers.batch_controller).
    """

    cluster_id: str
    cluster_path: Path
    engine_file: Path
    n: int
    python: str = sys.executable
    log_level: str = "WARNING"
    engine_args: tuple[str, ...] = ()
    owner_pid: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    role: str = "engines"  # or "controller": a batch job that runs the controller
    command: tuple[str, ...] = ()  # what the job runs instead of the engine command

    def engine_command(
        self, *, engine_file: str | None = None, python: str | None = None, mpi: bool = False
    ) -> list[str]:
        """``python -m corral engine --file ...``: what every launcher runs once per engine."""
        command = [
            python or self.python,
            "-m",
            "corral",
            "engine",
            "--file",
            engine_file or str(self.engine_file),
            "--log-level",
            self.log_level,
        ]
        if mpi:
            command.append("--mpi")
        return command + list(self.engine_args)

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None or value == "" else value


class EngineLauncher(ABC):
    """Starts, watches and stops the engines of one launch (see the module doc)."""

    name: ClassVar[str]

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.lost: str | None = None  # why the engines are gone, once a watcher noticed

    @abstractmethod
    def start(self) -> None:
        """Start the engines; LaunchError with the tool's own message if that fails at once."""

    @abstractmethod
    def failure(self) -> str | None:
        """Why the engines are gone or could not start (the tool's words), or None while they
        may still be running. Cheap enough to call every second."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Make sure nothing of this launch is left: processes, jobs, copied files."""

    def state(self) -> dict[str, Any]:
        """What `corral list` and `corral stop` from another process need (JSON-safe)."""
        state: dict[str, Any] = {"launcher": self.name, "n": self.spec.n}
        if self.spec.role != "engines":
            state["role"] = self.spec.role
        if self.lost:
            state["lost"] = self.lost
        return state


def require_tool(name: str, launcher: str) -> str:
    """The full path of ``name``; LaunchError naming the launcher if it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise LaunchError(
            f"the {launcher} launcher needs `{name}`, which is not on PATH "
            f"({os.environ.get('PATH', '')}); install it or pass its path in the launcher options"
        )
    return path


def run_tool(
    argv: Sequence[str], what: str, input_text: str | None = None, cwd: Path | None = None
) -> str:
    """Run a submission or query command and return its stdout; LaunchError carrying its
    stderr (its own error text) if it fails or takes longer than TOOL_TIMEOUT."""
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise LaunchError(f"{what}: `{argv[0]}` is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(
            f"{what}: `{shlex.join(argv)}` gave no answer in {TOOL_TIMEOUT:.0f} s"
        ) from None
    if done.returncode != 0:
        text = (done.stderr.strip() or done.stdout.strip() or "(no output)")[-2000:]
        raise LaunchError(f"{what} failed (`{shlex.join(argv)}` exited {done.returncode}): {text}")
    return done.stdout


def launcher_environment(name: str) -> dict[str, str]:
    """The environment of a launched engine: ours plus the launcher's name."""
    return {**os.environ, LAUNCHER_VARIABLE: name}


def log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace").strip()[-limit:]
    except OSError:
        return ""


def wait_for_launched_engines(
    client: Client,
    n: int,
    launchers: Sequence[EngineLauncher],
    timeout: float,
    poll: float = 0.5,
) -> None:
    """Wait until ``n`` engines registered, failing fast with LaunchError (the launcher's own
    words) as soon as a launcher reports that its engines cannot come."""
    deadline = time.monotonic() + timeout
    while True:
        for launcher in launchers:
            why = launcher.failure()
            if why is not None:
                raise LaunchError(f"the {launcher.name} launcher failed: {why}")
        remaining = deadline - time.monotonic()
        try:
            client.wait_for_engines(n, timeout=max(0.01, min(poll, remaining)))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(client.ids)} of {n} engines registered after {timeout:.0f} s; "
                    f"launchers: {', '.join(launcher.name for launcher in launchers)}"
                ) from None
