"""Processes that end with their owner, and act on SIGTERM at once.

A Cluster (or `corral start`) starts the controller and engines as its children and passes
``--owner-pid``; the controller starts its scheduler the same way. If the owner dies without
stopping them (killed, crashed), each child learns of it at once and terminates itself
cleanly with SIGTERM, which every process handles (unregister, flush the store, close
sockets).

Acting on SIGTERM at once is the event loop's part: :meth:`corral.loop.Loop.handle_signals`.
A process with a :class:`~corral.loop.Loop` (controller, scheduler, engine) watches its owner
on that loop (:func:`watch_owner`: one more reader, no thread). Only a process without one
(the dashboard, on asyncio) uses :func:`exit_with_owner`, whose watching thread lives as long
as the process and holds nothing to release, so nobody joins it: it ends with the process, the
way the owner's end ends the process.

The owner's side of a child's end is :func:`terminate`: SIGTERM first, SIGKILL only for a
child that did not act on it within its grace period.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.loop import Loop


def _owner_pidfd(owner_pid: int | None) -> int | None:
    """A pidfd of ``owner_pid`` (readable once it ends); None if there is no owner to watch
    (none given, or not an ancestor of this process); -1 if it has already ended.

    A Linux pidfd tells of the owner's end at once, and nothing polls. It is opened only while
    the owner is still this process's parent or a parent of its parents (an MPI engine's
    parent is its MPI launcher's proxy, whose parent is ``mpiexec``, whose parent is the
    owner), so a reused pid is never mistaken for it: a process whose ancestor ended is
    handed to init, never to another process of that pid. A rank on another host has no such
    ancestor and is not watched. Linux's PR_SET_PDEATHSIG is not used because it fires when
    the *thread* that spawned us exits, which would kill clusters started from a worker
    thread.
    """
    if not owner_pid or not _is_ancestor(owner_pid):
        return None
    try:
        owner = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        return -1
    if not _is_ancestor(owner_pid):  # it ended while we looked
        os.close(owner)
        return -1
    return owner


MAX_ANCESTORS = 64  # how far up the parents are followed (a chain longer is not an owner's)


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process's parent, or a parent of its parents (init, pid 1,
    never counts: it is everyone's)."""
    if pid <= 1:
        return False
    current = os.getppid()
    for _ in range(MAX_ANCESTORS):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            current = _parent_of(current)
        except (OSError, ValueError, IndexError):  # it ended meanwhile, or no /proc
            return False
    return False


def _parent_of(pid: int) -> int:
    """The parent pid of ``pid``, from ``/proc/<pid>/stat`` (after the command's name, which
    may itself hold spaces and parentheses: "pid (comm) state ppid ...")."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def watch_owner(loop: Loop, owner_pid: int | None, on_gone: Callable[[], object]) -> None:
    """Run ``on_gone()`` on ``loop`` as soon as ``owner_pid`` (this process's parent, or an
    ancestor, at start) ends: the owner's pidfd is one more reader of the loop, so the process
    acts on it in the same turn as on its messages, with no thread to join. Call it before the
    loop runs, from the thread that sets the loop up; ``on_gone`` should do what SIGTERM does
    (a clean stop)."""
    owner = _owner_pidfd(owner_pid)
    if owner is None:
        return
    if owner < 0:
        loop.call_soon_threadsafe(on_gone)
        return

    def gone() -> None:
        loop.remove(owner)
        os.close(owner)
        on_gone()

    loop.add_reader(owner, gone)


def exit_with_owner(owner_pid: int | None) -> None:
    """SIGTERM this process as soon as ``owner_pid`` (its parent, or an ancestor, at start)
    ends: one thread waits on the owner's pidfd (for a process without a
    :class:`~corral.loop.Loop`; see :func:`watch_owner`)."""
    owner = _owner_pidfd(owner_pid)
    if owner is None:
        return
    if owner < 0:
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        select.select([owner], [], [])  # readable once the owner has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """End a child: SIGTERM (which every corral process acts on at once, cleanly), SIGKILL if
    it still runs ``grace`` seconds later; reaped either way. A child that has ended already
    is left as it is."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
