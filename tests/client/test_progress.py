"""Progress bars of the waits (the text bar; its drawing on a real terminal is checked in
test_terminal.py): what they count, timeouts, and that they end at 100%."""

from __future__ import annotations

import sys
import threading
import time

import cloudpickle
import pytest

from corral.errors import TimeoutError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_for(path: str) -> str:
    """Task body: return once ``path`` exists (at most 60 s)."""
    import os

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def test_client_wait_interactive_counts_everything_outstanding(rc, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    gate = tmp_path / "gate"
    # no task can finish before the wait starts: the gate opens 0.5 s after it is called
    results = [view.apply_async(wait_for, str(gate)) for _ in range(8)]
    assert len(rc.outstanding) == 8
    opener = threading.Timer(0.5, gate.touch)
    opener.start()
    try:
        assert rc.wait_interactive(interval=0.02, timeout=60) is True
    finally:
        opener.cancel()
        gate.touch()
    assert all(r.done() for r in results)
    bar = capsys.readouterr().err
    assert "tasks: 100%" in bar and "8/8" in bar


def test_wait_interactive_timeout_returns_with_work_going_on(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    ar = rc.load_balanced_view().map_async(nap, [0.5] * 4)
    started = time.monotonic()
    assert ar.wait_interactive(interval=0.05, timeout=0.1) is None
    assert time.monotonic() - started < 10 and not ar.ready()
    assert "/4" in capsys.readouterr().err
    assert ar.get(timeout=60) == [0.5] * 4


def test_wait_for_engines_interactive(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    rc.wait_for_engines(2, timeout=30, interactive=True)
    assert "engines: 100%" in capsys.readouterr().err
    with pytest.raises(TimeoutError, match="2 of 5 engines registered"):
        rc.wait_for_engines(5, timeout=0.3, interactive=True)
    assert "2/5" in capsys.readouterr().err


def fail_first(i: int) -> int:
    if i == 0:
        raise ValueError("first")
    time.sleep(30)
    return i


def test_wait_interactive_return_when(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    """FIRST_EXCEPTION / FIRST_COMPLETED return as soon as that happened (the 30 s item still
    runs), not after everything; the rest is aborted afterwards."""
    from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION

    from corral.errors import CompositeError

    view = rc[:]
    for return_when in (FIRST_EXCEPTION, FIRST_COMPLETED):
        ar = view.map_async(fail_first, range(len(view)))
        ar.wait_interactive(interval=0.05, timeout=60, return_when=return_when)
        assert not ar.ready() and ar.progress >= 1
        ar.abort()
        with pytest.raises(CompositeError) as failed:
            ar.get(timeout=60)
        assert {name for name, *_ in failed.value.elist} == {"ValueError", "TaskAborted"}
    capsys.readouterr()
