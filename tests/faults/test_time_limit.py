"""time_limit= on both views: a task that runs too long is interrupted and fails with
TaskTimeout, and its engine goes on; one that does not stop when interrupted has its engine
stopped and (supervised) started again under its id. Other tasks are untouched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from corral.cluster.supervisor import RestartPolicy
from corral.errors import TaskTimeout
from tests.conftest import running_cluster
from tests.polling import until

LIMIT = 2.0  # seconds: generous, so a short task never overruns on a loaded machine


def _sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def _stubborn(seconds: float) -> str:
    import signal
    import time

    # ignores the interrupt altogether (catching KeyboardInterrupt around a sleep is not enough:
    # the interrupt may land between the loop's own bytecodes): only stopping the engine ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished"


@pytest.mark.timeout(120)
def test_overrunning_tasks_fail_with_task_timeout_and_the_engine_goes_on(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2) as cluster:
        rc = cluster.client
        pid = rc[0].apply_sync(os.getpid)
        other = rc[1].apply_async(_sleep, 1.0)
        view = rc[0]
        view.time_limit = LIMIT
        started = time.monotonic()
        with pytest.raises(TaskTimeout, match="time limit"):
            view.apply_sync(_sleep, 60)
        assert time.monotonic() - started < LIMIT + 10
        assert view.apply_sync(_sleep, 0.05) == 0.05  # within its limit
        view.time_limit = None
        assert rc[0].apply_sync(os.getpid) == pid  # the same engine, usable
        assert other.get(timeout=30) == 1.0
        balanced = rc.load_balanced_view(time_limit=LIMIT)
        with pytest.raises(TaskTimeout):
            balanced.apply_sync(_sleep, 60)
        with pytest.raises(TaskTimeout):
            rc.direct_view(targets=1, time_limit=LIMIT).execute(
                "import time; time.sleep(60)", block=True
            )
        with pytest.raises(ValueError):
            rc[0].time_limit = 0


@pytest.mark.timeout(120)
def test_a_task_that_ignores_the_interrupt_has_its_engine_restarted(tmp_path: Path) -> None:
    policy = RestartPolicy(first_delay=0.1)
    with running_cluster(tmp_path, 2, restart=True, restart_policy=policy) as cluster:
        rc = cluster.client
        pid = rc[0].apply_sync(os.getpid)
        # functions of this module travel by reference: import it on engine 0 before the limit
        # counts (importing the test package takes seconds on a loaded machine)
        assert rc[0].apply_sync(_sleep, 0.0) == 0.0
        other = rc[1].apply_async(_sleep, 2.0)
        view = rc.direct_view(targets=0, time_limit=LIMIT)
        with pytest.raises(TaskTimeout, match="stopped"):
            view.apply_sync(_stubborn, 60)
        assert other.get(timeout=30) == 2.0
        rc.wait_for_engines(2, timeout=30)

        def restarted_pid() -> int | None:
            try:
                return int(rc[0].apply_sync(os.getpid))
            except Exception:  # noqa: BLE001 - the old engine 0 until it is replaced
                rc.wait_for_engines(2, timeout=30)
                return None

        new_pid = until(restarted_pid, 30, "engine 0 to come back under its id")
        assert new_pid != pid
        assert cluster.restarts.get("engine-0") == 1
