"""How long an engine beside the task scheduler has run and waited for a CPU: what lets a burst's
packing tell engines starved on a busy host from engines stuck in long tasks
(:mod:`corral.controller.packing`).

An engine reports at registration, in its ``cpus`` (docs/wire-flows.md), its machine (the
kernel's boot id), its pid and its process namespace. The scheduler reads the engine's CPU time
only when both match its own: a pid means the same process only within one namespace of one
kernel. What it reads is Linux's ``/proc/<pid>/schedstat`` of the process's main thread (where
the engine runs its tasks): nanoseconds on a CPU, nanoseconds runnable but waiting for one.
Elsewhere (no such file, another machine, a container with its own namespace) nothing is read
and a packing lapses by its timing alone, as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from corral.engine.placement import cpu_share, pid_namespace

SCHEDSTAT: str = "/proc/{pid}/schedstat"


def read_schedstat(pid: int, path: str = SCHEDSTAT) -> tuple[int, int] | None:
    """Nanoseconds process ``pid``'s main thread has run and has waited for a CPU; None when
    it cannot be read (gone, not Linux, scheduler statistics off)."""
    try:
        with open(path.format(pid=pid), "rb") as stats:
            fields = stats.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


class LocalEngines:
    """Which engines run beside this process, by what they reported: their pid if its CPU
    time can be read here, else None."""

    def __init__(self, machine: str | None = None, namespace: str | None = None) -> None:
        self.machine = machine if machine is not None else str(cpu_share()["machine"])
        self.namespace = namespace if namespace is not None else pid_namespace()

    def pid(self, reported: Mapping[str, object]) -> int | None:
        """The pid from an engine's ``cpus`` report when it runs on this machine in this
        process namespace (both known); None otherwise, or when the pid is not a pid."""
        pid = reported.get("pid")
        if (
            self.namespace is None
            or reported.get("machine") != self.machine
            or reported.get("pid_ns") != self.namespace
            or type(pid) is not int
            or pid <= 0
            or pid == os.getpid()
        ):
            return None
        return pid
