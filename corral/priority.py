"""Threads off the data path run at a lower CPU priority than the ones on it.

The Hub is never on the data path: a task's request and reply go through the MUX device
threads or the task scheduler, and the Hub only records copies of them. But it does its
recording at the very moment the data path needs the cores: a copy of a request reaches the
Hub as the request reaches its engine, the copy of the reply as the reply reaches its client.
On a machine where the controller shares its cores with the engines and the client (a laptop,
a login node, the benchmarks' two cores), the Hub's loop and its store's writer then take a
core from the engine or the client, and every round trip waits for the Hub's bookkeeping.
Measured on two cores (bench/README.md, round eight): a direct no-op round trip 0.70-0.78 ms
with the Hub at the same priority, 0.53-0.66 ms with its two threads 10 nice steps lower.

A lower priority makes the Hub catch up a moment later, never drop anything: its monitor
sockets have no high-water mark, so copies wait in them, and a client's query is answered
after the copies that came before it, as always. Heartbeats are answered by the engines' C
hearts; the Hub's own timers run late by at most a scheduler time slice.

Linux gives each thread its own nice value (``setpriority`` with a thread id), so the device
threads of the same process keep theirs. Elsewhere a thread id names no process and nothing
is changed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger("corral.priority")

LOWEST = 19
"""The largest nice value: the lowest priority a thread can have."""


def lower(threads: Iterable[threading.Thread], steps: int) -> list[int]:
    """Lower each started thread's CPU priority by ``steps`` nice steps (at most to
    :data:`LOWEST`), relative to what it has (a controller started with ``nice`` keeps its
    threads' order). Returns the new nice values; an empty list where threads have no
    priority of their own, or for ``steps`` <= 0.
    """
    if steps <= 0 or not sys.platform.startswith("linux"):
        return []
    values = []
    for thread in threads:
        thread_id = thread.native_id
        if thread_id is None or not thread.is_alive():
            continue
        try:
            value = min(LOWEST, os.getpriority(os.PRIO_PROCESS, thread_id) + steps)
            os.setpriority(os.PRIO_PROCESS, thread_id, value)
        except OSError as err:  # it ended in between, or a sandbox forbids it: run as it is
            log.debug("cannot lower the priority of thread %s: %s", thread.name, err)
            continue
        values.append(value)
    return values
