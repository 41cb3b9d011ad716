"""Engines as child processes of this one, on this machine (the default launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from .base import EngineLauncher, LaunchSpec, launcher_environment, log_tail


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_file = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        log_file.close()


def terminate(process: subprocess.Popen[bytes], grace: float = 3.0, group: bool = False) -> None:
    """SIGTERM (the whole process group with ``group``), then SIGKILL after ``grace``; reaped
    either way."""
    if process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    try:
        send(signal.SIGTERM)
        process.wait(grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            send(signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def scheduling_args(engines: int, cores: int | None) -> list[str]:
    """``--batch-scheduling`` when ``engines`` outnumber ``cores`` (the CPUs this process may
    run on): engines then wait for a core in turn, and under the default policy each woken one
    preempted another, which resumed with its caches cold (:mod:`corral.engine.cpu_policy`).
    With as many cores as engines, nothing: the default policy wakes an engine soonest."""
    return ["--batch-scheduling"] if cores is not None and engines > cores else []


def usable_cores() -> int | None:
    """The CPUs this process may run on (its affinity where the system says), None if
    unknown."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count()


class LocalLauncher(EngineLauncher):
    """``n`` engine processes here, each ending with its owner (``--owner-pid``)."""

    name = "local"

    def __init__(self, spec: LaunchSpec, first_index: int = 0) -> None:
        super().__init__(spec)
        self.first_index = first_index
        self.processes: list[subprocess.Popen[bytes]] = []

    def _log(self, index: int) -> Path:
        return self.spec.cluster_path / f"engine-{index}.log"

    def start(self) -> None:
        env = launcher_environment(self.name)
        scheduling = scheduling_args(self.spec.n, usable_cores())
        for index in range(self.first_index, self.first_index + self.spec.n):
            argv = self.spec.engine_command() + scheduling
            if self.spec.owner_pid is not None:
                argv += ["--owner-pid", str(self.spec.owner_pid)]
            self.processes.append(spawn(argv, self._log(index), env))

    def failure(self) -> str | None:
        for offset, process in enumerate(self.processes):
            code = process.poll()
            if code is not None and code != 0:
                index = self.first_index + offset
                return f"engine {index} exited with {code}: {log_tail(self._log(index), 600)}"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                terminate(process)
            timeout = 0.1

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "pids": [p.pid for p in self.processes if p.poll() is None],
        }
