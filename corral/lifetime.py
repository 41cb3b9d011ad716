"""Processes that end with their owner: no orphaned controllers or engines.

A Cluster (or `corral start`) starts the controller and engines as its children and passes
``--owner-pid``. If the owner dies without stopping them (killed, crashed), each child notices
that its parent changed and terminates itself cleanly with SIGTERM, which the controller and
engines already handle (unregister, flush the store, close sockets).
"""

from __future__ import annotations

import os
import signal
import threading
import time

CHECK_PERIOD = 1.0


def exit_with_owner(owner_pid: int | None, period: float = CHECK_PERIOD) -> None:
    """SIGTERM this process once ``owner_pid`` (its parent at start) is no longer its parent.

    Polls ``os.getppid()`` from a daemon thread: a dead parent's children are re-parented, so
    this is immune to pid reuse. Linux's PR_SET_PDEATHSIG is not used because it fires when the
    *thread* that spawned us exits, which would kill clusters started from a worker thread.
    """
    if not owner_pid or os.getppid() != owner_pid:
        return

    def watch() -> None:
        while os.getppid() == owner_pid:
            time.sleep(period)  # no event exists for "my parent died" without the Linux hook
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()
