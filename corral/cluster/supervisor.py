"""Supervision of a cluster's processes: a dead controller or engine is started again.

Two parts. :class:`Backoff` is the decision, with no processes and no clock of its own: told
that a process exited (and when), it answers whether to start it again and after how long, so
that a process that keeps dying is restarted ever more slowly instead of in a tight loop, while
one that ran for a good while before dying is restarted at once. :class:`Supervisor` is the thin
shell: one owned loop thread (:class:`corral.loop.LoopThread`) that learns of each exit the
moment it happens (a Linux pidfd per process, readable when the process ends) and runs the
restart callbacks its owner gave it.

A process that exits with status 0 stopped on purpose (a shutdown request, SIGTERM) and is left
alone; any other status, or death by a signal, is a crash.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.errors import ConnectionError
from corral.loop import LoopThread, Timer

log = logging.getLogger("corral.cluster")

Process = subprocess.Popen[bytes]


@dataclass(frozen=True)
class RestartPolicy:
    """How eagerly to restart: ``first_delay`` seconds after a first crash, multiplied by
    ``factor`` for each crash that follows within ``stable_after`` seconds of the restart, up to
    ``max_delay``. ``max_restarts`` (None: no limit) crashes in a row end the supervision."""

    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    stable_after: float = 60.0
    max_restarts: int | None = None


@dataclass(frozen=True)
class Decision:
    """What to do about one exit: ``restart`` after ``delay`` seconds, and why."""

    restart: bool
    delay: float
    reason: str


@dataclass
class Backoff:
    """The restart decisions for one supervised process (sans-I/O: times are arguments)."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    started_at: float = 0.0
    crashes_in_a_row: int = 0
    restarts: int = 0

    def exited(self, now: float, returncode: int) -> Decision:
        """The process ended with ``returncode`` (negative: killed by that signal)."""
        how = describe_exit(returncode)
        if returncode == 0:
            return Decision(False, 0.0, f"{how}: stopped on purpose, not restarted")
        if now - self.started_at >= self.policy.stable_after:
            self.crashes_in_a_row = 0
        limit = self.policy.max_restarts
        if limit is not None and self.crashes_in_a_row >= limit:
            return Decision(
                False, 0.0, f"{how}: crashed {self.crashes_in_a_row + 1} times in a row, given up"
            )
        delay = min(
            self.policy.first_delay * self.policy.factor**self.crashes_in_a_row,
            self.policy.max_delay,
        )
        self.crashes_in_a_row += 1
        return Decision(True, delay, how)

    def started(self, now: float) -> None:
        """It was started again."""
        self.started_at = now
        self.restarts += 1


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


Restart = Callable[[], Process]


@dataclass
class _Watched:
    name: str
    process: Process
    restart: Restart
    backoff: Backoff
    pidfd: int = -1  # readable when the process ends; -1 while it is not running
    timer: Timer | None = None  # the restart to come, while it is dead


class Supervisor:
    """Watches processes and restarts those that crash, per :class:`Backoff`.

    ``watch(name, process, restart)`` adds one; ``restart()`` is called on the supervisor's
    thread and returns the new process. ``on_change`` is called after every restart (the
    Cluster saves its state file). :meth:`stop` ends the supervision (call it before stopping
    the processes on purpose); :attr:`given_up` names processes it stopped restarting.

    The shell is a :class:`~corral.loop.LoopThread`: each process's pidfd is a reader of its
    loop, each pending restart a timer, and :meth:`watch` hands work over with
    ``call_soon_threadsafe``; :meth:`stop` stops and joins the thread.
    """

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.on_change = on_change
        self.given_up: dict[str, str] = {}
        self._watched: dict[str, _Watched] = {}  # changed on the loop thread only
        self._lock = threading.Lock()  # for readers on other threads (restarts)
        self._stopping = False
        self._thread = LoopThread("corral-supervisor", lambda loop: None, self._untrack_all)
        self._thread.start()
        self._loop = self._thread.loop

    @property
    def restarts(self) -> dict[str, int]:
        """How often each process was restarted."""
        with self._lock:
            return {name: w.backoff.restarts for name, w in self._watched.items()}

    def watch(self, name: str, process: Process, restart: Restart) -> None:
        watched = _Watched(name, process, restart, Backoff(self.policy, time.monotonic()))
        try:
            self._loop.call_soon_threadsafe(self._add, watched)
        except ConnectionError as err:
            log.warning("supervisor: not watching %s: %s", name, err)

    def stop(self, timeout: float = 90.0) -> None:
        """End the supervision; a restart under way finishes first (at most ``timeout``)."""
        self._stopping = True
        self._thread.stop(timeout)

    # ------------------------------------------------------------ on the loop thread

    def _add(self, watched: _Watched) -> None:
        with self._lock:
            self._watched[watched.name] = watched
        self._track(watched)

    def _track(self, watched: _Watched) -> None:
        try:
            watched.pidfd = os.pidfd_open(watched.process.pid)
        except ProcessLookupError:
            self._on_exit(watched)  # gone before we looked
            return
        self._loop.add_reader(watched.pidfd, lambda: self._on_exit(watched))

    def _untrack(self, watched: _Watched) -> None:
        if watched.pidfd >= 0:
            self._loop.remove(watched.pidfd)
            os.close(watched.pidfd)
            watched.pidfd = -1

    def _untrack_all(self) -> None:
        for watched in self._watched.values():
            self._untrack(watched)
            if watched.timer is not None:
                watched.timer.cancel()

    def _forget(self, watched: _Watched, reason: str) -> None:
        self.given_up[watched.name] = reason
        with self._lock:
            del self._watched[watched.name]

    def _on_exit(self, watched: _Watched) -> None:
        self._untrack(watched)
        returncode = watched.process.wait()
        decision = watched.backoff.exited(time.monotonic(), returncode)
        if self._stopping:
            return
        if not decision.restart:
            log.warning("supervisor: %s %s", watched.name, decision.reason)
            self._forget(watched, decision.reason)
            if self.on_change is not None:
                self.on_change()
            return
        log.warning(
            "supervisor: %s (pid %d) %s; restarting it in %.1f s (restart %d)",
            watched.name,
            watched.process.pid,
            decision.reason,
            decision.delay,
            watched.backoff.restarts + 1,
        )
        watched.timer = self._loop.call_later(decision.delay, self._restart, watched)

    def _restart(self, watched: _Watched) -> None:
        watched.timer = None
        if self._stopping:
            return
        try:
            watched.process = watched.restart()
        except Exception as err:  # noqa: BLE001 - any failure to start is a crash to retry
            log.error("supervisor: restarting %s failed: %s", watched.name, err)
            decision = watched.backoff.exited(time.monotonic(), 1)
            if decision.restart:
                watched.timer = self._loop.call_later(decision.delay, self._restart, watched)
            else:
                self._forget(watched, f"restart failed: {err}")
            return
        watched.backoff.started(time.monotonic())
        log.warning("supervisor: %s restarted (pid %d)", watched.name, watched.process.pid)
        self._track(watched)
        if self.on_change is not None:
            self.on_change()
