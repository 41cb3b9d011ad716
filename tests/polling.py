"""The one way tests wait for state that has no event to await: poll with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL = 0.01  # seconds between polls: short next to any deadline, cheap next to a query


def until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = INTERVAL
) -> None:
    """Return once ``predicate()`` is true; AssertionError naming ``what`` after ``timeout``
    seconds. ``predicate`` may do the work that makes it true (send, query): it is called
    again after each ``interval``, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
