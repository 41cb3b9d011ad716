"""The one way tests wait for state that has no event to await: poll with a deadline.

:func:`until` is for the test's side (a file, a query, a page); :func:`file_appears` is a task
body for the engine's side: a task that runs until the test creates a file, so it is "slow"
exactly as long as the test needs, however loaded the machine; :func:`requests_queued` holds an
engine until the requests sent after it have reached it. This module is pickled by value, so
engines run its functions without importing ``tests``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import cloudpickle  # type: ignore[import-untyped]

INTERVAL = 0.01  # seconds between polls: short next to any deadline, cheap next to a query

T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float, what: str, interval: float = INTERVAL) -> T:
    """Return ``predicate()``'s first true value; AssertionError naming ``what`` after
    ``timeout`` seconds. ``predicate`` may do the work that makes it true (send, query): it is
    called again after each ``interval``, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def file_appears(path: str | os.PathLike[str], timeout: float = 60.0) -> str:
    """Task body: return ``path`` once it exists (the test's go signal); AssertionError after
    ``timeout`` seconds."""
    until(lambda: os.path.exists(path), timeout, f"{path} to appear")
    return str(path)


def requests_queued(count: int, timeout: float = 60.0) -> int:
    """Task body: return ``count`` once that many requests wait in this engine's work queue
    behind the running task (so they have reached the engine, not just been sent); for tests
    of what an engine does with its queue. AssertionError after ``timeout`` seconds."""
    import gc

    shells = [item for item in gc.get_objects() if type(item).__name__ == "TaskShell"]
    assert len(shells) == 1, f"{len(shells)} task shells in this engine"
    shell = shells[0]  # this task runs on its main thread, which lent the sockets meanwhile

    def queued() -> bool:
        with shell.lock:
            return bool(shell.take_available() >= count)

    until(queued, timeout, f"{count} queued requests")
    return count


cloudpickle.register_pickle_by_value(sys.modules[__name__])
