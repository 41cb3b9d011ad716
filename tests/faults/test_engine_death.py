"""An engine killed with SIGKILL is known dead in well under a second, from its closed
connections, not after missed heartbeats (the heartbeat here is 3 s, so missed beats would take
over 9 s): its direct task fails with EngineError, its load-balanced task is retried elsewhere."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from corral.errors import EngineError
from tests.conftest import running_cluster
from tests.polling import until

HEARTBEAT = 3.0
# how the Hub says it knew: from the closed connections, not from missed beats ("heartbeat
# stopped"); checked instead of a time bound, which a loaded machine can always exceed
BY_SOCKET_EVENTS = "its connections closed: it died"


def _engine_pid(rc, engine_id: int) -> int:  # type: ignore[no-untyped-def]
    return int(rc[engine_id].apply_sync(os.getpid))


def _queues(rc) -> dict[int, dict[str, int]]:  # type: ignore[no-untyped-def]
    status = rc.queue_status()
    return {i: status[i] for i in rc.ids}


def _sleeps_and_returns_pid(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


@pytest.mark.timeout(120)
def test_killed_engine_fails_its_direct_task_within_a_second(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2, heartbeat_period=HEARTBEAT) as cluster:
        rc = cluster.client
        pid = _engine_pid(rc, 0)
        running = rc[0].apply_async(_sleeps_and_returns_pid, 60)
        lingering = rc[1].apply_async(_sleeps_and_returns_pid, 0.5)
        until(lambda: rc.queue_status(targets=[0])[0]["queue"], 30, "the task to reach it")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(EngineError) as failed:
            running.get(timeout=30)
        detected = time.monotonic() - killed_at
        print(f"engine death detected after {detected * 1000:.0f} ms")
        assert BY_SOCKET_EVENTS in str(failed.value)
        assert lingering.get(timeout=30) != pid  # the other engine is untouched
        assert rc.ids == [1]


@pytest.mark.timeout(120)
def test_killed_engine_load_balanced_task_is_retried_elsewhere(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2, heartbeat_period=HEARTBEAT) as cluster:
        rc = cluster.client
        pids = {engine_id: _engine_pid(rc, engine_id) for engine_id in (0, 1)}
        view = rc.load_balanced_view(retries=1)
        task = view.apply_async(_sleeps_and_returns_pid, 2.0)
        busy: list[int] = []
        until(
            lambda: busy.extend(i for i, q in _queues(rc).items() if q["tasks"]) or busy,
            30,
            "an engine to take the task",
        )
        victim = busy[0]
        witness = rc[victim].apply_async(_sleeps_and_returns_pid, 60)  # tells how it was known
        until(lambda: rc.queue_status(targets=[victim])[victim]["queue"], 30, "the witness")
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = 1 - victim
        assert task.get(timeout=30) == pids[survivor]
        print(f"re-run on the survivor done {time.monotonic() - killed_at:.2f} s after the kill")
        with pytest.raises(EngineError) as failed:
            witness.get(timeout=30)
        assert BY_SOCKET_EVENTS in str(failed.value)
