"""Helpers of the compatibility tests."""

from __future__ import annotations


def loud_sleep(seconds: float) -> float:
    """Print (so the client sees it start on iopub), then sleep."""
    import time

    print("started", flush=True)
    time.sleep(seconds)
    return seconds
