"""Processes that end with their owner, and act on SIGTERM at once.

A Cluster (or `corral start`) starts the controller and engines as its children and passes
``--owner-pid``; the controller starts its scheduler the same way. If the owner dies without
stopping them (killed, crashed), each child learns of it at once and terminates itself
cleanly with SIGTERM, which every process handles (unregister, flush the store, close
sockets).

A process whose main thread waits in ``zmq.Poller.poll`` does not see a signal until the poll
returns: pyzmq runs the Python handler and polls again for the rest of the timeout.
:class:`SignalWakeup` makes the poll return at once.
"""

from __future__ import annotations

import os
import select
import signal
import socket
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


class SignalWakeup:
    """A socket that becomes readable when a signal with a Python handler arrives.

    Register :meth:`fileno` in the poller of the main thread's loop and :meth:`drain` it when
    readable; the handler itself (which sets the loop's stop flag) has run by then. Uses
    ``signal.set_wakeup_fd``, so there is one per process, created on the main thread.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def drain(self) -> None:
        try:
            while self._reader.recv(64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        self._reader.close()
        self._writer.close()
