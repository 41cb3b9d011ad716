"""Jupyter's stop_on_error rule on a real cluster, as ipyparallel users meet it: cells sent
without waiting (``%autopx`` or ``%%px`` on a non-blocking view, ``execute(silent=False,
block=False)``) never run after one sent before them has failed on that engine.

Each test holds its engine in a first task until the requests sent after it are in the
engine's queue (:func:`tests.polling.requests_queued`), so they are queued there when the
failing one runs, whatever the machine's load."""

from __future__ import annotations

from typing import Any

import pytest

from corral import error
from tests.polling import requests_queued


def test_executes_queued_behind_a_failed_one_are_aborted(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc[rc.ids[-1]]
    view.execute("stop_a = stop_b = 0", block=True)
    gate = view.apply_async(requests_queued, 4)
    failing = view.execute("1/0", silent=False, block=False)
    later = view.execute("stop_a = 1", silent=False, block=False)
    pulled = view.pull("stop_a", block=False)  # an apply: not aborted
    silent_later = view.execute("stop_b = 1", block=False)
    assert gate.get(90) == 4
    with pytest.raises(error.RemoteError) as failed:
        failing.get(30)
    assert failed.value.ename == "ZeroDivisionError"
    for aborted in (later, silent_later):
        with pytest.raises(error.TaskAborted, match="stop_on_error"):
            aborted.get(30)
    assert pulled.get(30) == 0
    # sent after the failure was seen: runs
    view.execute("stop_a = 2", silent=False, block=True)
    assert view.pull(["stop_a", "stop_b"], block=True) == [2, 0]


def test_silent_or_non_stopping_failures_abort_nothing(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's default execute is silent: a failing script does not stop the queue."""
    view = rc[rc.ids[0]]
    view.execute("kept = 0", block=True)
    gate = view.apply_async(requests_queued, 2)
    failing = view.execute("1/0", block=False)
    later = view.execute("kept += 1", silent=False, block=False)
    assert gate.get(90) == 2
    with pytest.raises(error.RemoteError):
        failing.get(30)
    later.get(30)
    assert view.pull("kept", block=True) == 1


def test_autopx_with_a_non_blocking_view(rc) -> None:  # type: ignore[no-untyped-def]
    """The peer's test_autopx_nonblocking, in our words: the cell after the failing one does
    not change ``b``, and the failure is not printed (the view does not wait for it)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell: Any = InteractiveShell.instance(config=config)  # IPython's methods are untyped
    view = rc[rc.ids[-1]]
    view.push({"requests_queued": requests_queued}, block=True)
    try:
        view.activate()
        view.block = False
        cells = ["a = 5; b = 10; c = 0", "print(b)", "requests_queued(2)", "b / c", "b *= 2"]
        with capture_output() as captured:
            shell.run_line_magic("autopx", "")
            for cell in cells:
                shell.run_cell(cell)
            shell.run_line_magic("autopx", "")
        assert captured.stdout.startswith("%autopx enabled")
        assert captured.stdout.rstrip().endswith("%autopx disabled")
        assert "ZeroDivisionError" not in captured.stdout
        with pytest.raises(error.RemoteError) as raised:
            view.get_result(-2, owner=False).get(90)
        assert raised.value.ename == "ZeroDivisionError"
        with pytest.raises(error.TaskAborted):
            view.get_result(-1, owner=False).get(30)
        assert view.pull(["a", "b"], block=True) == [5, 10]
    finally:
        view.block = True
        InteractiveShell.clear_instance()
