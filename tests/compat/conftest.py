"""Helpers of the compatibility tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def loud_sleep(seconds: float) -> float:
    """Print (so the client sees it start on iopub), then sleep."""
    import time

    print("started", flush=True)
    time.sleep(seconds)
    return seconds
