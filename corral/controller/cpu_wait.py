"""How long an engine beside the task scheduler has run and waited for a CPU: what lets a burst's
packing tell engines starved on a busy host from engines stuck in long tasks
(:mod:`corral.controller.packing`).

An engine reports at registration, in its ``cpus`` (docs/wire-flows.md), its machine (the
kernel's boot id), its pid and its process namespace. The scheduler reads the engine's CPU time
only when both match its own: a pid means the same process only within one namespace of one
kernel. What it reads is Linux's ``schedstat`` of each of the process's threads
(``/proc/<pid>/task/<tid>/schedstat``), summed: nanoseconds on a CPU, nanoseconds runnable but
waiting for one. Every thread counts: the engine's main thread runs the tasks, but its I/O
thread receives them, and a starved I/O thread leaves the main thread asleep with tasks on the
way (seen on a busy host: four packing engines holding 64 tasks each, their main threads
neither running nor waiting for 20 ms).
Elsewhere (no such file, another machine, a container with its own namespace) nothing is read
and a packing lapses by its timing alone, as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from corral.engine.placement import cpu_share, pid_namespace

PROC: str = "/proc"


def read_schedstat(pid: int, proc: str = PROC) -> tuple[int, int] | None:
    """Nanoseconds process ``pid``'s threads have run and have waited for a CPU, summed over
    those alive now; None when none can be read (gone, not Linux, scheduler statistics off).
    """
    tasks = f"{proc}/{pid}/task"
    try:
        threads = os.listdir(tasks)
    except OSError:
        return None
    run = wait = 0
    read = False
    for thread in threads:
        try:
            with open(f"{tasks}/{thread}/schedstat", "rb") as stats:
                fields = stats.read().split()
            run += int(fields[0])
            wait += int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended since it was listed, or a line not understood
        read = True
    return (run, wait) if read else None


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
