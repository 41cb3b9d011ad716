"""Signals aimed at the main thread, and the time limits enforced with them (I/O thread).

Both run on the engine's I/O loop (:mod:`.io_shell`), which owns their timers; user code runs
on the main thread, where Python delivers signal handlers (:mod:`.interrupts`).

- :class:`SignalSender` sends a signal to the main thread, and sends a SIGINT again until the
  gate's handler has run.
- :class:`TimeLimits` interrupts a task that runs past its ``time_limit`` (it fails with
  TaskTimeout), and when it still runs ``TIME_LIMIT_GRACE`` seconds later, has the task answered
  with TaskTimeout and the engine stopped (exit status 1: a supervisor starts it again).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from corral.loop import Loop, Timer

from .interrupts import InterruptGate
from .runner import Request

SIGINT_RESEND = 0.05
SIGINT_RESEND_FOR = 5.0
TIME_LIMIT_GRACE = 3.0  # seconds a task over its time limit has to stop once interrupted
TIME_LIMIT_CHECK = 0.1  # seconds between looks for a time-limited task not yet started


class SignalSender:
    """Signals this process, aimed at the main thread (loop thread only).

    A process-directed signal may be taken by any thread that does not block it (a library's
    helper thread, a thread of the user's), and then the main thread's blocking call
    (``time.sleep``) is not interrupted; signals whose action is process-wide (SIGTERM,
    SIGKILL, SIGSTOP) act the same either way. SIGINT is re-sent every ``SIGINT_RESEND``
    seconds until the gate's handler has run: on CPython 3.11 another thread can reset the flag
    that makes the main thread run pending handlers, and a SIGINT that lands just before a
    blocking call would then wait for that call to end.
    """

    def __init__(self, loop: Loop, gate: InterruptGate, main_ident: int) -> None:
        self.loop = loop
        self.gate = gate
        self.main_ident = main_ident
        self._resend: Timer | None = None

    def send(self, signum: int) -> None:
        """ValueError for a number that is not a signal on this system."""
        if signum not in signal.valid_signals():
            raise ValueError(f"{signum} is not a valid signal number on this system")
        signal.pthread_kill(self.main_ident, signum)
        if signum == signal.SIGINT:
            if self._resend is not None:
                self._resend.cancel()
            self._resend = self.loop.call_every(
                SIGINT_RESEND, self._send_again, self.gate.seen, self.loop.time()
            )

    def _send_again(self, seen: int, sent: float) -> None:
        if self.gate.seen != seen or self.loop.time() > sent + SIGINT_RESEND_FOR:
            if self._resend is not None:
                self._resend.cancel()
                self._resend = None
        else:
            signal.pthread_kill(self.main_ident, signal.SIGINT)


Overrun = Callable[[Request | None, str], None]
"""``overrun(request, reason)``: the running task ignored its interrupt for the grace period;
answer ``request`` (None if it was answered meanwhile) with TaskTimeout and stop the engine."""


class TimeLimits:
    """The unanswered requests that have a time limit, and the timer that enforces them.

    Only the running task's limit is ever due (the gate knows it and its deadline): a queued
    request's limit runs from when it starts. While time-limited requests are unanswered, the
    timer looks again at the running task's deadline, every ``TIME_LIMIT_CHECK`` seconds while
    none of them has started.
    """

    def __init__(
        self,
        loop: Loop,
        gate: InterruptGate,
        signals: SignalSender,
        overrun: Overrun,
        stopping: Callable[[], bool],
        *,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.gate = gate
        self.signals = signals
        self.overrun = overrun
        self.stopping = stopping
        self.refresh = refresh  # brings answered() up to date before a look
        self._requests: dict[str, Request] = {}
        self._timer: Timer | None = None
        self._overrun: tuple[str, float] | None = None  # (msg_id, when to stop the engine)

    def watch(self, request: Request) -> None:
        """A request with a time limit was queued."""
        self._requests[request.msg.msg_id] = request
        if self._timer is None:
            self._timer = self.loop.call_later(0.0, self._check)

    def answered(self, msg_id: str) -> None:
        """``msg_id`` got its reply (or was aborted): its limit no longer matters."""
        self._requests.pop(msg_id, None)

    def _check(self) -> None:
        self._timer = None
        if self.refresh is not None:
            self.refresh()
        if not self._requests or self.stopping():
            self._overrun = None
            return
        gate = self.gate
        running, deadline = gate.running, gate.deadline
        now = self.loop.time()
        if running is None or deadline is None:  # queued, or between arm and the check
            self._overrun = None
            self._timer = self.loop.call_later(TIME_LIMIT_CHECK, self._check)
            return
        if self._overrun is None or self._overrun[0] != running:
            if now < deadline:
                self._timer = self.loop.call_at(deadline, self._check)
                return
            if gate.request_abort([running], time_limit=True) is not None:
                self.signals.send(signal.SIGINT)
            self._overrun = (running, now + TIME_LIMIT_GRACE)
        if now < self._overrun[1]:
            self._timer = self.loop.call_at(self._overrun[1], self._check)
            return
        reason = (
            f"task {running} ran longer than its time limit and did not stop when interrupted: "
            "its engine was stopped"
        )
        self.overrun(self._requests.pop(running, None), reason)
