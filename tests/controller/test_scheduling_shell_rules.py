"""Rules the scheduler's socket shell used to hold, now the core's and driven by ``now``: which
late replies to drop, requests refused before they are tasks, and sending again a Dispatch an
engine could not take yet (its task connection not up). No sockets, no polling loop."""

from __future__ import annotations

import pytest

from corral.controller.scheduling import SchedulerCore
from corral.controller.scheduling_state import (
    UNREACHABLE_GRACE,
    UNREACHABLE_RETRY,
    Complete,
    Dispatch,
    Fail,
    FinishedMemory,
    Task,
)
from corral.errors import ProtocolError
from corral.protocol.dependency import Dependency


def test_finished_tasks_are_answered_and_the_oldest_forgotten() -> None:
    core = SchedulerCore(finished_memory=3)
    core.add_engine("e1")
    for name in ("a", "b", "c", "d"):
        (dispatch,) = core.submit(Task(name), 0.0)
        assert dispatch == Dispatch(name, "e1", 0)
        assert core.answered(name) is False  # running: a reply now is its answer
        assert core.task_finished(name, "e1", True, 0.0) == [Complete(name)]
    assert [core.answered(m) for m in "abcd"] == [False, True, True, True]
    # a's outcome fell out with it: a task naming it now is refused as unknown
    (refused,) = core.submit(Task("after-a", after=Dependency(frozenset({"a"}))), 0.0)
    assert isinstance(refused, Fail) and "unknown to the scheduler" in refused.reason
    assert core.answered("after-a")  # a Fail is an answer too


def test_the_finished_memory_pushes_out_the_oldest_and_keeps_a_repeated_ids_place() -> None:
    memory = FinishedMemory(3)
    assert [memory.add(m) for m in "abc"] == [None, None, None]
    assert memory.add("b") is None  # remembered already: its place kept, nothing pushed out
    assert [memory.add(m) for m in "def"] == ["a", "b", "c"]
    assert len(memory) == 3 and [m in memory for m in "abcdef"] == [False] * 3 + [True] * 3
    # far past its capacity (each add pushing one out, in O(1)): still the newest three
    pushed = [memory.add(f"t{index}") for index in range(10_000)]
    assert pushed[:3] == ["d", "e", "f"] and pushed[3:] == [f"t{i}" for i in range(9_997)]
    assert len(memory) == 3 and all(f"t{index}" in memory for index in range(9_997, 10_000))


def test_a_request_that_is_no_task_is_failed_and_counts_as_answered() -> None:
    core = SchedulerCore()
    assert core.reject("bad", ProtocolError, "the task queue does not run x") == [
        Fail("bad", ProtocolError, "the task queue does not run x")
    ]
    assert core.answered("bad") and core.task_state("bad") is None


def test_an_unreachable_engine_is_retried_every_interval_until_the_grace_runs_out() -> None:
    core = SchedulerCore()
    core.add_engine("e1")
    (dispatch,) = core.submit(Task("t"), 100.0)
    core.engine_unreachable("t", "e1", 100.0)
    assert core.next_deadline() == pytest.approx(100.0 + UNREACHABLE_RETRY)
    assert core.tick(100.0) == []  # not yet
    now = 100.0 + UNREACHABLE_RETRY
    assert core.tick(now) == [dispatch]  # the same Dispatch, same attempt
    assert core.next_deadline() is None  # waiting to hear whether it failed again
    assert core.tick(now + 1.0) == []
    # failing again and again: retried while within the grace, from the first failure
    sent = 1
    while True:
        core.engine_unreachable("t", "e1", now)
        due = core.next_deadline()
        assert due is not None
        if due == now:  # the grace ran out: due at once, to be taken back
            break
        now = due
        assert core.tick(now) == [dispatch]
        sent += 1
    assert now - 100.0 == pytest.approx(UNREACHABLE_GRACE, abs=2 * UNREACHABLE_RETRY)
    assert sent >= UNREACHABLE_GRACE / UNREACHABLE_RETRY - 2
    # taken back: e1 is the only engine, so it is tried again there, as a new attempt
    assert core.tick(now) == [Dispatch("t", "e1", 1)]
    assert core.task_state("t") == "running"
    (failed,) = core.remove_engine("e1")
    assert isinstance(failed, Fail) and failed.msg_id == "t"


def test_a_task_never_delivered_within_the_grace_goes_to_another_engine() -> None:
    """An engine the Hub counts alive but this scheduler cannot reach (its task connection
    never came up) must not hold a task for ever while another engine idles: no
    unregistration will ever free it."""
    core = SchedulerCore(max_outstanding=1)
    core.add_engine("e1")
    assert core.submit(Task("stuck"), 0.0) == [Dispatch("stuck", "e1", 0)]
    core.add_engine("e2")  # idle from now on
    now = 0.0
    core.engine_unreachable("stuck", "e1", now)
    while True:  # e1 never becomes reachable
        due = core.next_deadline()
        assert due is not None
        if due == now:
            break
        now = due
        assert core.tick(now) == [Dispatch("stuck", "e1", 0)]
        core.engine_unreachable("stuck", "e1", now)
    assert now > UNREACHABLE_GRACE
    # taken back from e1 (a new attempt, no retry spent: the task has none) and sent to e2
    assert core.tick(now) == [Dispatch("stuck", "e2", 1)]
    assert core.outstanding("e1") == 0 and core.outstanding("e2") == 1
    assert core.task_finished("stuck", "e2", True, now) == [Complete("stuck")]
    assert core.next_deadline() is None


def test_a_retry_is_dropped_once_the_task_finished_or_moved() -> None:
    core = SchedulerCore()
    core.add_engine("e1")
    core.submit(Task("done"), 0.0)
    core.submit(Task("moved", retries=1), 0.0)
    core.engine_unreachable("done", "e1", 0.0)
    core.engine_unreachable("moved", "e1", 0.0)
    assert core.task_finished("done", "e1", True, 0.0) == [Complete("done")]
    core.add_engine("e2")
    # e1 is lost: "moved" is retried on e2 (a new Dispatch replaces the pending retry)
    assert core.remove_engine("e1") == [Dispatch("moved", "e2", 1)]
    assert core.next_deadline() is None
    assert core.tick(1.0) == []
    core.engine_unreachable("moved", "e1", 1.0)  # stale: it no longer runs there
    assert core.next_deadline() is None


def test_a_retry_waits_for_a_timeout_deadline_in_the_same_timer() -> None:
    core = SchedulerCore()
    core.add_engine("e1")
    core.submit(Task("busy"), 0.0)
    core.engine_unreachable("busy", "e1", 0.0)
    core.submit(Task("later", targets=frozenset({"nobody"}), timeout=5.0), 0.0)
    assert core.next_deadline() == pytest.approx(UNREACHABLE_RETRY)
    (retry,) = core.tick(UNREACHABLE_RETRY)
    assert retry == Dispatch("busy", "e1", 0)
    assert core.next_deadline() == 5.0
    (timed_out,) = core.tick(5.0)
    assert isinstance(timed_out, Fail) and timed_out.msg_id == "later"


def test_a_held_task_is_never_rejected_so_it_keeps_its_one_outcome() -> None:
    """A request sent again under the msg_id of a task the scheduler holds is not a task; its
    rejection must not answer the held one (which would then be answered twice)."""
    core = SchedulerCore()
    assert core.submit(Task("held"), 0.0) == []  # no engine yet: queued
    with pytest.raises(ValueError, match="already submitted"):
        core.submit(Task("held"), 0.0)
    assert core.reject("held", ProtocolError, "already submitted") == []
    assert not core.answered("held") and core.task_state("held") == "queued"
    assert core.add_engine("e1") == [Dispatch("held", "e1", 0)]
    assert core.task_finished("held", "e1", True, 0.0) == [Complete("held")]
