"""Interrupting running work: SIGINT and abort stop a running task (direct or load-balanced)
with a clear error, and the engine goes on serving."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from corral.errors import RemoteError, TaskAborted
from tests.polling import until


def loud_sleep(seconds: float) -> int:
    """Say "started" (so the client sees it start on iopub), then sleep; the engine's pid.

    Without a newline or a flush the engine's flusher thread publishes the text, not this
    call: printed with a flush, the client could see it and interrupt while the publishing
    call still ran here (the traceback then ended in print, not in the sleep)."""
    sys.stdout.write("started")
    time.sleep(seconds)
    return os.getpid()


def started(ar) -> bool:  # type: ignore[no-untyped-def]
    return bool(ar.stdout)


def test_sigint_stops_a_running_sleep_and_the_engine_serves_again(rc) -> None:  # type: ignore[no-untyped-def]
    running = rc[0].apply_async(loud_sleep, 60)
    until(lambda: started(running), 20, "the task to start")
    began = time.monotonic()
    rc.send_signal(signal.SIGINT, targets=0)
    with pytest.raises(RemoteError) as info:
        running.get(timeout=20)
    assert info.value.ename == "KeyboardInterrupt"
    assert time.monotonic() - began < 10
    assert "time.sleep" in info.value.traceback
    assert rc[0].apply_sync(lambda: "next") == "next"


def test_abort_interrupts_a_running_direct_task(rc) -> None:  # type: ignore[no-untyped-def]
    running = rc[1].apply_async(loud_sleep, 60)
    queued = rc[1].apply_async(loud_sleep, 0)
    until(lambda: started(running), 20, "the task to start")
    began = time.monotonic()
    running.abort()
    with pytest.raises(TaskAborted) as info:
        running.get(timeout=20)
    assert time.monotonic() - began < 10
    assert "interrupted while running" in info.value.evalue
    assert info.value.engine_id == 1
    assert "time.sleep" in info.value.traceback
    assert running.metadata["status"] == "aborted"
    assert isinstance(queued.get(timeout=20), int), "a task not named by the abort was hurt"
    assert rc[1].apply_sync(lambda: "next") == "next"


def test_abort_interrupts_a_running_load_balanced_task(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view(retries=3)  # an aborted task is not retried
    running = view.apply_async(loud_sleep, 60)
    until(lambda: started(running), 20, "the task to start")
    began = time.monotonic()
    running.abort()
    with pytest.raises(TaskAborted):
        running.get(timeout=20)
    assert time.monotonic() - began < 10
    assert running.metadata["status"] == "aborted"
    assert running.metadata["engine_id"] in (0, 1)
    # both engines serve again, and the scheduler did not resubmit the aborted task
    assert sorted(set(rc[:].apply_sync(lambda: "next"))) == ["next"]
    assert view.map_sync(lambda x: x * 2, range(8)) == [x * 2 for x in range(8)]
    assert rc.queue_status()["unassigned"] == 0


def test_abort_after_completion_changes_nothing(rc) -> None:  # type: ignore[no-untyped-def]
    done = rc[0].apply_async(lambda: 5)
    assert done.get(timeout=20) == 5
    rc.abort(done.msg_ids, targets=0)
    assert done.get(timeout=1) == 5
    assert rc[0].apply_sync(lambda: 6) == 6
