"""Supervision of a cluster's processes: a dead controller or engine is started again.

Two parts. :class:`Backoff` is the decision, with no processes and no clock of its own: told
that a process exited (and when), it answers whether to start it again and after how long, so
that a process that keeps dying is restarted ever more slowly instead of in a tight loop, while
one that ran for a good while before dying is restarted at once. :class:`Supervisor` is the thin
shell: one thread that learns of each exit the moment it happens (a Linux pidfd per process,
readable when the process ends) and runs the restart callbacks its owner gave it.

A process that exits with status 0 stopped on purpose (a shutdown request, SIGTERM) and is left
alone; any other status, or death by a signal, is a crash.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
    due: float | None = None  # when to restart it (it is dead), None while it runs
    pidfd: int = -1


class Supervisor:
    """Watches processes and restarts those that crash, per :class:`Backoff`.

    ``watch(name, process, restart)`` adds one; ``restart()`` is called on the supervisor's
    thread and returns the new process. ``on_change`` is called after every restart (the
    Cluster saves its state file). :meth:`stop` ends the supervision (call it before stopping
    the processes on purpose); :attr:`given_up` names processes it stopped restarting.
    """

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.on_change = on_change
        self.given_up: dict[str, str] = {}
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="corral-supervisor", daemon=True)
        self._thread.start()

    @property
    def restarts(self) -> dict[str, int]:
        """How often each process was restarted."""
        with self._lock:
            return {name: w.backoff.restarts for name, w in self._watched.items()}

    def watch(self, name: str, process: Process, restart: Restart) -> None:
        with self._lock:
            backoff = Backoff(self.policy, started_at=time.monotonic())
            self._watched[name] = _Watched(name, process, restart, backoff)
        self._wake()

    def stop(self, timeout: float = 90.0) -> None:
        """End the supervision; a restart under way finishes first (at most ``timeout``)."""
        self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # closed: the thread has ended

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._track_new()
                timeout = self._next_due()
                for key, _ in self._selector.select(timeout):
                    if key.data is None:
                        os.read(self._wake_read, 4096)
                    else:
                        self._on_exit(key.data)
                self._restart_due()
        finally:
            for watched in self._watched.values():
                self._untrack(watched)
            self._selector.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _track_new(self) -> None:
        with self._lock:
            fresh = [w for w in self._watched.values() if w.pidfd < 0 and w.due is None]
        for watched in fresh:
            try:
                watched.pidfd = os.pidfd_open(watched.process.pid)
            except ProcessLookupError:
                self._on_exit(watched)  # gone before we looked
                continue
            self._selector.register(watched.pidfd, selectors.EVENT_READ, watched)

    def _untrack(self, watched: _Watched) -> None:
        if watched.pidfd >= 0:
            self._selector.unregister(watched.pidfd)
            os.close(watched.pidfd)
            watched.pidfd = -1

    def _next_due(self) -> float | None:
        with self._lock:
            due = [w.due for w in self._watched.values() if w.due is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_exit(self, watched: _Watched) -> None:
        self._untrack(watched)
        returncode = watched.process.wait()
        decision = watched.backoff.exited(time.monotonic(), returncode)
        if self._stopping:
            return
        if not decision.restart:
            log.warning("supervisor: %s %s", watched.name, decision.reason)
            self.given_up[watched.name] = decision.reason
            with self._lock:
                del self._watched[watched.name]
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
        watched.due = time.monotonic() + decision.delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [w for w in self._watched.values() if w.due is not None and w.due <= now]
        for watched in due:
            if self._stopping:
                return
            try:
                watched.process = watched.restart()
            except Exception as err:  # noqa: BLE001 - any failure to start is a crash to retry
                log.error("supervisor: restarting %s failed: %s", watched.name, err)
                decision = watched.backoff.exited(time.monotonic(), 1)
                watched.due = time.monotonic() + decision.delay if decision.restart else None
                if not decision.restart:
                    self.given_up[watched.name] = f"restart failed: {err}"
                    with self._lock:
                        del self._watched[watched.name]
                continue
            watched.due = None
            watched.backoff.started(time.monotonic())
            log.warning("supervisor: %s restarted (pid %d)", watched.name, watched.process.pid)
            if self.on_change is not None:
                self.on_change()
