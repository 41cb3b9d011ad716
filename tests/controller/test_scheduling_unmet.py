"""The scheduler core's answer to a task an engine cannot run (its ``depend`` condition is
false there, or a ``require`` import fails): another engine, never a spent retry, and
ImpossibleDependency only once no engine is left to try (issue 11)."""

from __future__ import annotations

from corral.controller.scheduling import Complete, Dispatch, Fail, SchedulerCore, Task
from corral.errors import ImpossibleDependency


def engines(core: SchedulerCore, *uuids: str) -> None:
    for uuid in uuids:
        core.add_engine(uuid)


def dispatched(actions: list[object]) -> str:
    sends = [a for a in actions if isinstance(a, Dispatch)]
    assert len(sends) == 1, actions
    return sends[0].engine_uuid


def test_an_unmet_task_goes_to_each_other_engine_once_then_is_impossible() -> None:
    core = SchedulerCore()
    engines(core, "a", "b", "c")
    tried = [dispatched(core.submit(Task("t"), 0.0))]
    for _ in range(2):
        tried.append(dispatched(core.task_unmet("t", tried[-1], 0.0)))
    assert sorted(tried) == ["a", "b", "c"]  # no engine twice, and no retries were needed
    final = core.task_unmet("t", tried[-1], 0.0)
    fails = [a for a in final if isinstance(a, Fail)]
    assert len(fails) == 1 and fails[0].error is ImpossibleDependency
    assert "could not meet its depend" in fails[0].reason
    assert core.task_state("t") is None


def test_an_unmet_task_waits_for_a_busy_engine_that_has_not_refused_it() -> None:
    core = SchedulerCore(max_outstanding=1)
    engines(core, "a", "b")
    busy = dispatched(core.submit(Task("busy"), 0.0))
    other = dispatched(core.submit(Task("t"), 0.0))
    assert {busy, other} == {"a", "b"}
    assert not [a for a in core.task_unmet("t", other, 0.0) if isinstance(a, Dispatch)]
    assert core.task_state("t") == "queued"
    # the refusing engine is free now, yet the task waits for the other one
    assert core.task_finished("busy", busy, True, 0.0) == [Complete("busy"), Dispatch("t", busy, 1)]


def test_a_stale_unmet_reply_changes_nothing() -> None:
    core = SchedulerCore()
    engines(core, "a", "b")
    where = dispatched(core.submit(Task("t"), 0.0))
    other = "b" if where == "a" else "a"
    assert core.task_unmet("t", other, 0.0) == []
    assert core.task_unmet("nothing", where, 0.0) == []
    assert core.task_state("t") == "running"
