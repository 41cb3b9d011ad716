"""Processes that end with their owner, and act on SIGTERM at once.

A Cluster (or `corral start`) starts the controller and engines as its children and passes
``--owner-pid``; the controller starts its scheduler the same way. If the owner dies without
stopping them (killed, crashed), each child learns of it at once and terminates itself
cleanly with SIGTERM, which every process handles (unregister, flush the store, close
sockets).

Acting on SIGTERM at once is the event loop's part: :meth:`corral.loop.Loop.handle_signals`.
The watching thread started here lives as long as the process and holds nothing to release,
so nobody joins it: it ends with the process, the way the owner's end ends the process.
"""

from __future__ import annotations

import os
import select
import signal
import threading


def exit_with_owner(owner_pid: int | None) -> None:
    """SIGTERM this process as soon as ``owner_pid`` (its parent at start) ends.

    A Linux pidfd of the owner becomes readable when it ends: one thread waits on it, so the
    process reacts at once and nothing polls. Opened only while the owner is still this
    process's parent, so a reused pid is never mistaken for it. Linux's PR_SET_PDEATHSIG is not
    used because it fires when the *thread* that spawned us exits, which would kill clusters
    started from a worker thread.
    """
    if not owner_pid or os.getppid() != owner_pid:
        return
    try:
        owner = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        owner = -1
    if owner < 0 or os.getppid() != owner_pid:  # it ended before (or while) we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        select.select([owner], [], [])  # readable once the owner has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()
