"""SIGINT on the engine: a KeyboardInterrupt for the running task, and nothing else.

Python runs signal handlers on the main thread only, between bytecodes, which is where user
code runs. The :class:`InterruptGate` is that handler; it decides, from where the main thread
is in a request, whether the interrupt is raised, held or ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from types import FrameType


class InterruptGate:
    """Decides what SIGINT does on the main thread: KeyboardInterrupt in a task only.

    Between :meth:`arm` (a request was taken) and :meth:`leave_task`, SIGINT interrupts the
    task: at once while user code runs, or as soon as user code starts (:meth:`enter_task`) if
    it arrives just before. While the main thread sends a message (:meth:`shielded`) the
    interrupt is held until the send completes, so no multipart message is cut in half. While
    idle, and after the task's user code has finished, SIGINT is ignored.

    ``seen`` counts the handler's runs, so a sender can tell whether a signal it sent has been
    handled yet (see :meth:`corral.engine.io_shell.IOShell.deliver_signal`).

    An abort_request naming the running request interrupts it the same way
    (:meth:`request_abort`); ``aborted`` then tells the runner to report it as aborted. Such a
    SIGINT names its request, so one that lands after that request ended is dropped rather than
    interrupting the next.
    """

    def __init__(self) -> None:
        self._main_ident = threading.main_thread().ident
        self._armed = False
        self._in_task = False
        self._shield_depth = 0
        self._pending = False
        self.seen = 0
        self.running: str | None = None
        self.aborted = False
        self.timed_out = False  # the abort was for overrunning the time limit
        self.deadline: float | None = None  # monotonic time the running task must end by
        self._abort_target: str | None = None
        self._abort_for_time = False

    def handle_sigint(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler; runs on the main thread between bytecodes."""
        self.seen += 1
        target, self._abort_target = self._abort_target, None
        if target is not None:
            if target != self.running:
                return  # sent to abort a request that has finished since
            self.aborted = True
            self.timed_out = self._abort_for_time
        if not self._armed:
            return
        if self._in_task and not self._shield_depth:
            raise KeyboardInterrupt
        self._pending = True

    def arm(self, msg_id: str | None = None, deadline: float | None = None) -> None:
        """Request ``msg_id`` is about to run (by ``deadline``, monotonic, if it has a time
        limit): from now on SIGINT is meant for it."""
        self._pending = False
        self.aborted = self.timed_out = False
        self.deadline = deadline
        self.running = msg_id
        self._armed = True

    def disarm(self) -> None:
        self._armed = False
        self._pending = False
        self.running = None
        self.deadline = None

    def request_abort(
        self, msg_ids: Collection[str], mark: bool = True, *, time_limit: bool = False
    ) -> str | None:
        """(Any thread.) If the running request is one of ``msg_ids``, mark it for abort
        (unless ``mark`` is False: only asking; ``time_limit``: it overran its limit) and
        return its msg_id: the caller then sends
        SIGINT to the main thread. None otherwise."""
        running = self.running
        if running is None or running not in msg_ids:
            return None
        if mark:
            self._abort_for_time = time_limit
            self._abort_target = running
        return running

    def enter_task(self) -> None:
        """User code starts; raises KeyboardInterrupt if one arrived since :meth:`arm`."""
        self._in_task = True
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def leave_task(self) -> None:
        """User code is done: later interrupts are ignored until the next :meth:`arm`."""
        self._in_task = False
        self.disarm()

    def shielded(self) -> _Shield:
        """A region of the main thread that SIGINT must not interrupt; other threads pass.
        (Every reply is sent inside one: a plain class, cheaper than a generator.)"""
        return _Shield(self)

    def _enter_shield(self) -> bool:
        if threading.get_ident() != self._main_ident:
            return False
        self._shield_depth += 1
        return True

    def _leave_shield(self) -> None:
        self._shield_depth -= 1
        if not self._shield_depth and self._pending and self._in_task:
            self._pending = False
            raise KeyboardInterrupt


class _Shield:
    """The ``with`` block of :meth:`InterruptGate.shielded`."""

    __slots__ = ("_gate", "_entered")

    def __init__(self, gate: InterruptGate) -> None:
        self._gate = gate
        self._entered = False

    def __enter__(self) -> None:
        self._entered = self._gate._enter_shield()  # noqa: SLF001 - the gate's own block

    def __exit__(self, *exc: object) -> None:
        if self._entered:
            self._gate._leave_shield()  # noqa: SLF001
