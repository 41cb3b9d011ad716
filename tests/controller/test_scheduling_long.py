"""The long-task rule of the scheduler core (corral.controller.scheduling): an engine whose
last task ran ``long_task`` or more, or whose pace is unknown, holds one task at a time, so no
task waits behind a long one while another engine could run it (ipyparallel's scheduler holds
every engine to one); engines of short tasks keep their prefetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.controller.config import ControllerConfig
from corral.controller.scheduling import SchedulerCore
from corral.controller.scheduling_state import BURST_HOLD, Dispatch, Task

LONG = 0.1


def task(msg_id: str) -> Task:
    return Task(msg_id=msg_id)


def dispatched(actions: list[object]) -> list[tuple[str, str]]:
    return [(a.msg_id, a.engine_uuid) for a in actions if isinstance(a, Dispatch)]


def core(long_task: float = LONG, engines: int = 4) -> SchedulerCore:
    scheduler = SchedulerCore("leastload", 16, long_task=long_task)
    for index in range(engines):
        scheduler.add_engine(f"e{index}")
    return scheduler


def test_engines_of_unknown_pace_get_one_task_each() -> None:
    """13 tasks at once on 4 idle engines: one each, 9 wait in the scheduler (with the rule
    off, leastload spreads them 4, 3, 3, 3 and the short ones queue behind a long one)."""
    scheduler = core()
    sent = [d for i in range(13) for d in dispatched(scheduler.submit(task(f"t{i}"), 0.0))]
    assert sorted(engine for _, engine in sent) == ["e0", "e1", "e2", "e3"]
    off = core(long_task=0)
    sent = [d for i in range(13) for d in dispatched(off.submit(task(f"t{i}"), 0.0))]
    assert len(sent) == 13


def test_a_short_reply_lifts_the_engine_to_its_prefetch_and_a_long_one_brings_it_back() -> None:
    scheduler = core(engines=1)
    for i in range(40):
        scheduler.submit(task(f"t{i}"), 0.0)
    assert scheduler.outstanding("e0") == 1
    # answered 1 ms after it got it: short, so it is filled up to max_outstanding
    scheduler.task_finished("t0", "e0", True, 0.001)
    assert scheduler.outstanding("e0") == 16
    assert scheduler.capacity("e0") == 16
    # the next reply 0.5 s after the one before: that task ran long
    scheduler.task_finished("t1", "e0", True, 0.501)
    assert scheduler.outstanding("e0") == 15  # nothing more sent
    assert scheduler.capacity("e0") == 1


def test_an_engine_silent_that_long_with_tasks_gets_no_more() -> None:
    """It runs a long task now: tasks submitted meanwhile go to an idle engine, or wait."""
    scheduler = core(engines=1)
    scheduler.submit(task("t0"), 0.0)
    scheduler.task_finished("t0", "e0", True, 0.001)  # short: prefetch 16
    sent = dispatched(scheduler.submit(task("long"), 0.002))
    assert sent == [("long", "e0")]
    assert dispatched(scheduler.submit(task("next"), 0.01)) == [("next", "e0")]
    assert dispatched(scheduler.submit(task("later"), 0.2)) == []  # silent 0.199 s with two
    assert scheduler.capacity("e0") == 2
    scheduler.add_engine("e1")  # a new engine takes the waiting task
    assert scheduler.outstanding("e1") == 1


def test_an_engine_idle_for_a_while_counts_as_unknown_again() -> None:
    """Tasks submitted after a pause may be long: one each until a short reply."""
    scheduler = core(engines=1)
    scheduler.submit(task("t0"), 0.0)
    scheduler.task_finished("t0", "e0", True, 0.001)
    assert scheduler.capacity("e0") == 16
    later = 0.001 + BURST_HOLD + 0.01  # idle since
    for i in range(5):
        scheduler.submit(task(f"u{i}"), later)
    assert scheduler.outstanding("e0") == 1
    scheduler.task_finished("u0", "e0", True, later + 0.001)
    assert scheduler.outstanding("e0") == 4


@pytest.mark.parametrize("bad", [-1, 3601, float("nan"), float("inf")])
def test_a_bad_long_task_is_refused_by_the_core(bad: float) -> None:
    with pytest.raises(ValueError, match="long_task"):
        SchedulerCore("leastload", 16, long_task=bad)


@pytest.mark.parametrize("bad", [-1, 3601, "0.1", True, None, float("nan")])
def test_a_bad_long_task_is_refused_by_the_controller_config(bad: object, tmp_path: Path) -> None:
    """Before any process starts (the compiled core would take True for 1.0 s)."""
    with pytest.raises(ValueError, match="long_task"):
        ControllerConfig(cluster_path=tmp_path, long_task=bad)  # type: ignore[arg-type]
