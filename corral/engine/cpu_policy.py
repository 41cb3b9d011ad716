"""The engine's CPU scheduling policy with ``--batch-scheduling``: SCHED_BATCH on Linux, so
that a woken engine does not preempt the process running on its core. The local launcher asks
for it when it starts more engines than this machine has cores
(:func:`corral.cluster.launchers.local.scheduling_args`).

An engine runs tasks one after another and sends their replies in bundles; many engines on
few cores (64 on 2, say) each get a core in turn. Under the default policy (SCHED_OTHER) a
thread woken by a message preempts the one running if it slept long enough, and the processes
that sleep most (the Hub, the scheduler, the client, idle engines) wake all the time: an engine
running a bundle of short tasks was preempted about every ten tasks, and resumed only after
the others had run, its memory gone from the caches (bench/README.md, round nine, 64
engines). SCHED_BATCH keeps the engine's share of the CPU and its priority (nice) and only
drops the wake-up preemption (the kernel treats its threads as CPU-bound): measured with 64
engines, 3-5 times fewer preemptions of the engines' main threads and less CPU per task.
A woken engine still runs at once on an idle core. Not the default: with no more engines
than cores an engine seldom waits for a core, and one that cannot preempt may make a lone
task's round trip wait for a slice of whatever runs there (the controller, the client, another
program).

Set on the main thread before any other thread starts: threads inherit it (the I/O thread,
the heart, zmq's own).
"""

from __future__ import annotations

import logging
import os


def use_batch_scheduling(log: logging.Logger) -> bool:
    """Put the calling thread (and the threads it starts later) under SCHED_BATCH; whether it
    was done. Not Linux, or the call refused: logged and left as it is (never an error: the
    policy only changes how the CPU is shared)."""
    set_policy = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if set_policy is None or batch is None:
        log.debug("SCHED_BATCH is not available here: the default CPU scheduling is kept")
        return False
    try:
        set_policy(0, batch, os.sched_param(0))
    except OSError as err:
        log.warning("could not use SCHED_BATCH (%s): the default CPU scheduling is kept", err)
        return False
    return True
