"""The dependency graph: who waits on what, and where follow dependencies allow a task to run."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.controller.dependencies import (
    WAIT,
    DependencyGraph,
    Outcome,
    Waiter,
    follow_placement,
)
from corral.protocol.dependency import Dependency

EMPTY = Dependency.EMPTY


def dep(ids: str, all: bool = True, success: bool = True, failure: bool = False) -> Dependency:  # noqa: A002
    return Dependency(frozenset(ids.split()), all=all, success=success, failure=failure)


def usable_unless(*bad: str) -> object:
    def unusable(location: str) -> str | None:
        return "which is gone" if location in bad else None

    return unusable


# ---------------------------------------------------------------- waiting and waking


def test_no_dependencies_is_ready_at_once() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, EMPTY)
    assert waiter.ready and not waiter.unreachable
    assert "t" in graph and len(graph) == 1


def test_a_resolution_wakes_exactly_the_waiters_that_name_it() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    on_a = graph.add("t1", dep("a"), EMPTY)
    on_b = graph.add("t2", dep("b"), EMPTY)
    on_both = graph.add("t3", dep("a b"), EMPTY)
    assert graph.resolve("a", True, "e1") == [on_a, on_both]
    assert on_a.ready and not on_both.ready and not on_b.ready
    assert graph.resolve("b", True, "e1") == [on_b, on_both]
    assert on_both.ready
    assert graph.resolve("c", True, "e1") == ()


def test_known_outcomes_apply_when_added() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.resolve("a", True, "e1")
    graph.resolve("b", False, None)
    assert graph.add("t1", dep("a"), EMPTY).ready
    assert graph.add("t2", dep("b"), EMPTY).unreachable
    assert graph.add("t3", dep("b", failure=True), EMPTY).ready
    assert graph.outcome("a") == Outcome(True, "e1")
    assert graph.outcome("b") == Outcome(False, None)
    assert graph.outcome("zzz") is None


def test_a_removed_waiter_is_not_woken() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add("t", dep("a"), EMPTY)
    graph.remove("t")
    assert "t" not in graph
    assert graph.resolve("a", True, "e") == []


def test_unreachable_reasons_name_the_dependency() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    w1 = graph.add("t1", dep("a"), EMPTY)
    w2 = graph.add("t2", EMPTY, dep("a b", all=False))
    w3 = graph.add("t3", dep("a", success=False, failure=True), EMPTY)
    graph.resolve("a", False, "e")
    graph.resolve("b", False, "e")
    assert w1.reason == "after dependency a failed, and this dependency accepts only successes"
    assert w2.reason is not None and "none of the 2 follow dependencies" in w2.reason
    assert w3.ready
    w4 = graph.add("t4", dep("c", success=False, failure=True), EMPTY)
    graph.resolve("c", True, "e")
    assert w4.reason == "after dependency c succeeded, and this dependency accepts only failures"


def test_unreachable_stays_unreachable() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("a b"), EMPTY)
    graph.resolve("a", False, None)
    reason = waiter.reason
    graph.resolve("b", True, "e")
    assert waiter.reason == reason and not waiter.ready


def test_one_msg_id_in_both_after_and_follow() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("a"), dep("a"))
    graph.resolve("a", True, "e1")
    assert waiter.ready
    assert waiter.follow_locations == [("a", "e1")]


def test_follow_locations_in_arrival_order_and_only_accepted() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, dep("a b c", all=False))
    graph.resolve("c", True, "e3")
    graph.resolve("a", False, "e1")
    graph.resolve("b", True, None)
    assert waiter.follow_locations == [("c", "e3"), ("b", None)]
    assert waiter.follow_left == 0


def test_waiters_at_a_location_and_cleanup() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    w1 = graph.add("t1", dep("x"), dep("a"))
    w2 = graph.add("t2", dep("x"), dep("a b"))
    graph.resolve("a", True, "e1")
    assert graph.waiters_at("e1") == [w1, w2]
    assert graph.waiters_at("e2") == []
    graph.remove("t1")
    assert graph.waiters_at("e1") == [w2]
    graph.remove("t2")
    assert graph.waiters_at("e1") == []


def test_pending_lists_what_is_still_awaited() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("c a"), dep("b"))
    graph.resolve("a", True, "e")
    assert graph.pending(waiter) == ["b", "c"]
    assert graph.waiter("t") is waiter


def test_forget_drops_outcomes() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.resolve("a", True, "e")
    graph.forget(["a", "never-seen"])
    assert graph.outcome("a") is None


def test_mistakes_are_value_errors() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add("t", dep("a"), EMPTY)
    with pytest.raises(ValueError, match="already waiting"):
        graph.add("t", EMPTY, EMPTY)
    graph.resolve("a", True, "e")
    with pytest.raises(ValueError, match="already has an outcome"):
        graph.resolve("a", True, "e")


def test_waiter_repr_says_its_state() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    assert repr(graph.add("t1", EMPTY, EMPTY)) == "<Waiter t1 ready>"
    assert repr(graph.add("t2", dep("a"), EMPTY)) == "<Waiter t2 waiting>"
    graph.resolve("a", False, None)
    assert repr(graph.waiter("t2")) == "<Waiter t2 unreachable>"


@given(
    st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
    st.booleans(),
    st.sampled_from([(True, False), (False, True), (True, True)]),
    st.lists(st.booleans(), min_size=6, max_size=6),
    st.integers(0, 6),
    st.booleans(),
)
def test_incremental_counts_agree_with_dependency_semantics(
    ids: list[str],
    all_: bool,
    flags: tuple[bool, bool],
    successes: list[bool],
    known_before: int,
    as_follow: bool,
) -> None:
    """Whatever the order and whichever outcomes were known at add time, the waiter's state
    after each outcome is what Dependency.is_met / is_unreachable say."""
    dependency = Dependency(frozenset(ids), all=all_, success=flags[0], failure=flags[1])
    graph: DependencyGraph[str] = DependencyGraph()
    succeeded: set[str] = set()
    failed: set[str] = set()

    def resolve(msg_id: str, success: bool) -> None:
        (succeeded if success else failed).add(msg_id)
        graph.resolve(msg_id, success, "e")

    order = list(zip(ids, successes, strict=False))
    for msg_id, success in order[:known_before]:
        resolve(msg_id, success)
    after, follow = (EMPTY, dependency) if as_follow else (dependency, EMPTY)
    waiter = graph.add("t", after, follow)
    for step in range(known_before, len(order) + 1):
        assert waiter.unreachable == dependency.is_unreachable(succeeded, failed)
        assert waiter.ready == dependency.is_met(succeeded, failed)
        if step < len(order):
            resolve(*order[step])


def test_waking_is_proportional_to_waiters_not_graph_size() -> None:
    """20000 tasks wait on 20000 distinct msg_ids; resolving them all is linear."""
    graph: DependencyGraph[str] = DependencyGraph()
    count = 20_000
    for index in range(count):
        graph.add(f"t{index}", dep(f"d{index}"), EMPTY)
    started = time.perf_counter()
    for index in range(count):
        woken = graph.resolve(f"d{index}", True, "e")
        assert len(woken) == 1 and woken[0].ready
        graph.remove(woken[0].msg_id)
    assert time.perf_counter() - started < 20.0  # linear, not quadratic: no timing claim
    assert len(graph) == 0


# ---------------------------------------------------------------- follow placement


def placement(waiter: Waiter[str], *gone: str) -> object:
    return follow_placement(waiter, usable_unless(*gone))  # type: ignore[arg-type]


def test_no_follow_runs_anywhere_once_ready() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("a"), EMPTY)
    assert placement(waiter) is WAIT
    graph.resolve("a", True, "e1")
    assert placement(waiter) is None


def test_follow_all_pins_the_one_place() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, dep("a b"))
    graph.resolve("a", True, "e1")
    assert placement(waiter) is WAIT
    graph.resolve("b", True, "e1")
    assert placement(waiter) == frozenset({"e1"})


def test_follow_all_in_two_places_is_impossible_before_the_rest_finish() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, dep("a b c"))
    graph.resolve("a", True, "e1")
    graph.resolve("b", True, "e2")
    verdict = placement(waiter)
    assert verdict == (
        "follow dependencies a and b ran on e1 and e2, and all=True needs them in one place"
    )


def test_follow_all_on_an_unusable_place_is_impossible() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("x"), dep("a"))
    graph.resolve("a", True, "e1")
    assert placement(waiter) is WAIT
    assert placement(waiter, "e1") == "follow dependency a ran on e1, which is gone"


def test_follow_on_a_task_that_never_ran_is_impossible() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, dep("a", failure=True))
    graph.resolve("a", False, None)
    assert placement(waiter) == "follow dependency a ended without running anywhere"


def test_follow_any_offers_every_usable_place() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("x"), dep("a b c", all=False))
    graph.resolve("a", True, "e1")
    assert placement(waiter) is WAIT  # after is not met
    graph.resolve("b", True, "e2")
    graph.resolve("x", True, "e9")
    assert placement(waiter) == frozenset({"e1", "e2"})
    assert placement(waiter, "e1") == frozenset({"e2"})


def test_follow_any_waits_for_pending_ones_when_no_place_is_usable() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", EMPTY, dep("a b", all=False))
    graph.resolve("a", True, "e1")
    assert placement(waiter, "e1") is WAIT
    graph.resolve("b", True, "e1")
    verdict = placement(waiter, "e1")
    assert isinstance(verdict, str) and "can still take it" in verdict


def test_unreachable_outcomes_come_first() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    waiter = graph.add("t", dep("a"), dep("b"))
    graph.resolve("a", False, "e1")
    assert placement(waiter) == waiter.reason
