"""The scheduler core, driven by plain calls: every rule, big DAGs, and random schedules.

:class:`Sim` plays the socket shell and the engines. It applies every action the core
returns and checks, action by action, the invariants a client relies on: a task never runs
twice at once, no engine is over its cap, after/follow/targets are honoured, and each task
ends exactly once.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.controller.scheduling import (
    POLICIES,
    Action,
    Complete,
    Dispatch,
    Fail,
    SchedulerCore,
    Task,
)
from corral.errors import (
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    TaskTimeout,
)
from corral.protocol.dependency import Dependency


def dep(ids: str, all: bool = True, success: bool = True, failure: bool = False) -> Dependency:  # noqa: A002
    return Dependency(frozenset(ids.split()), all=all, success=success, failure=failure)


class Sim:
    """The shell and the engines around a core, checking every action it returns."""

    def __init__(
        self,
        core: SchedulerCore | None = None,
        engines: Iterable[str] = (),
        hosts: Mapping[str, tuple[str, list[int]]] | None = None,
        pids: Mapping[str, int] | None = None,
    ) -> None:
        self.core = core or SchedulerCore()
        self.hosts = hosts or {}  # engine uuid -> (machine, CPU ids) it registers with
        self.pids = pids or {}  # engine uuid -> the pid whose CPU time the core may read
        self.now = 0.0
        self.engines: set[str] = set()
        self.tasks: dict[str, Task] = {}
        self.running: dict[str, str] = {}  # msg_id -> engine uuid
        self.queues: dict[str, list[str]] = defaultdict(list)  # engine -> msg_ids, FIFO
        self.attempts: Counter[str] = Counter()
        self.final: dict[str, Complete | Fail] = {}
        self.succeeded: set[str] = set()
        self.failed: set[str] = set()
        self.succeeded_on: dict[str, set[str]] = defaultdict(set)
        self.failed_on: dict[str, set[str]] = defaultdict(set)
        self.dispatched_to: dict[str, list[str]] = defaultdict(list)
        self.log: list[Action] = []
        for uuid in engines:
            self.add(uuid)

    # ------------------------------------------------------------ driving

    def add(self, uuid: str) -> list[Action]:
        self.engines.add(uuid)
        self.succeeded_on.pop(uuid, None)  # a new engine under an old uuid has no history
        self.failed_on.pop(uuid, None)
        machine, cpus = self.hosts.get(uuid, (None, []))
        return self.apply(self.core.add_engine(uuid, machine, cpus, self.pids.get(uuid)))

    def remove(self, uuid: str) -> list[Action]:
        self.engines.discard(uuid)
        lost = self.queues.pop(uuid, [])
        for msg_id in lost:
            del self.running[msg_id]
        actions = self.apply(self.core.remove_engine(uuid))
        for msg_id in lost:  # each one is retried (sent, or queued) or failed as EngineError
            ended = self.final.get(msg_id)
            if ended is None:
                assert self.core.task_state(msg_id) in ("queued", "running")
            else:
                assert isinstance(ended, Fail) and ended.error is EngineError
        return actions

    def submit(self, msg_id: str, **fields: object) -> list[Action]:
        task = Task(msg_id, **fields)  # type: ignore[arg-type]
        self.tasks[msg_id] = task
        return self.apply(self.core.submit(task, self.now))

    def finish(self, msg_id: str, success: bool = True) -> list[Action]:
        engine = self.running.pop(msg_id)
        self.queues[engine].remove(msg_id)
        actions = self.core.task_finished(msg_id, engine, success, self.now)
        if not actions or actions[0].msg_id != msg_id:
            # a timed retry waiting for an engine it has not failed on (others may fill its slot)
            assert not success and self.core.task_state(msg_id) == "queued"
        elif isinstance(actions[0], Complete):
            assert actions[0].msg_id == msg_id
            target = self.succeeded_on if success else self.failed_on
            target[engine].add(msg_id)
        elif isinstance(actions[0], Fail):  # such a retry, past its deadline
            assert not success and actions[0].error is TaskTimeout
            assert actions[0].msg_id == msg_id
        else:
            assert not success and isinstance(actions[0], Dispatch)
            assert actions[0].msg_id == msg_id
        return self.apply(actions, replied=(msg_id, success))

    def tick(self, now: float) -> list[Action]:
        self.now = now
        return self.apply(self.core.tick(now))

    def finish_next(self, success: Callable[[str], bool] = lambda _: True) -> bool:
        """Let the busiest-first engine reply to its oldest task; False when all are idle."""
        for uuid in sorted(self.queues, key=lambda u: (-len(self.queues[u]), u)):
            if self.queues[uuid]:
                msg_id = self.queues[uuid][0]
                self.finish(msg_id, success(msg_id))
                return True
        return False

    def drain(self, success: Callable[[str], bool] = lambda _: True) -> None:
        while self.finish_next(success):
            pass

    # ------------------------------------------------------------ checking

    def apply(self, actions: list[Action], replied: tuple[str, bool] | None = None) -> list[Action]:
        for action in actions:
            self.log.append(action)
            assert action.msg_id not in self.final, f"{action} after {self.final[action.msg_id]}"
            if isinstance(action, Dispatch):
                self._dispatched(action)
            elif isinstance(action, Complete):
                assert replied is not None and replied[0] == action.msg_id
                self._ended(action, replied[1])
            else:
                assert issubclass(action.error, ImpossibleDependency | EngineError | TaskTimeout)
                assert action.msg_id not in self.running
                self._ended(action, False)
        for uuid in self.engines:
            # more than its capacity only after that went down: no Dispatch above it (below)
            outstanding = self.core.outstanding(uuid)
            assert outstanding == len(self.queues[uuid]) <= self.core.burst_cap
            capacity = self.core.capacity(uuid)
            assert capacity <= self.core.burst_cap
            # below max_outstanding only while a packing engine does not drain what it holds
            # (corral.controller.packing.stalled): then no more than that
            assert self.core.max_outstanding <= capacity or capacity == outstanding > 0
        unfinished = len(self.tasks) - len(self.final)
        assert self.core.waiting_count() == unfinished - len(self.running)
        return actions

    def _dispatched(self, action: Dispatch) -> None:
        msg_id, engine = action.msg_id, action.engine_uuid
        task = self.tasks[msg_id]
        assert msg_id not in self.running, f"{msg_id} dispatched twice at once"
        assert engine in self.engines, f"{msg_id} sent to unregistered {engine}"
        assert action.attempt == self.attempts[msg_id]
        assert action.attempt <= task.retries
        assert task.after.is_met(self.succeeded, self.failed), f"after not met for {msg_id}"
        assert task.follow.is_met(self.succeeded_on[engine], self.failed_on[engine]), msg_id
        assert task.targets is None or engine in task.targets
        self.attempts[msg_id] += 1
        self.running[msg_id] = engine
        self.queues[engine].append(msg_id)
        assert len(self.queues[engine]) <= self.core.capacity(engine), f"{engine} over its cap"
        self.dispatched_to[msg_id].append(engine)

    def _ended(self, action: Complete | Fail, success: bool) -> None:
        self.final[action.msg_id] = action
        (self.succeeded if success else self.failed).add(action.msg_id)

    def fails(self, error: type | None = None) -> dict[str, Fail]:
        return {
            m: a
            for m, a in self.final.items()
            if isinstance(a, Fail) and (error is None or a.error is error)
        }


def dispatches(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.msg_id, a.engine_uuid) for a in actions if isinstance(a, Dispatch)]


# ---------------------------------------------------------------- construction


def test_unknown_policy_and_bad_cap_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown scheduler policy 'fifo'"):
        SchedulerCore("fifo")
    with pytest.raises(ValueError, match="max_outstanding"):
        SchedulerCore(max_outstanding=0)


def test_a_plain_task_is_the_task_of_every_default() -> None:
    plain, made = Task.plain("t-1"), Task("t-1")
    assert plain == made and hash(plain) == hash(made) and repr(plain) == repr(made)
    assert type(plain) is Task and dataclasses.astuple(plain) == dataclasses.astuple(made)
    assert Task.plain("t-2").msg_id == "t-2" and plain.msg_id == "t-1"  # no shared fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.retries = 3  # type: ignore[misc]


def test_the_actions_written_out_are_still_frozen_dataclasses() -> None:
    """Dispatch, Complete and Task have their ``__init__`` written out (for the compiled
    build): equal by their fields, hashable, frozen, with the dataclass's repr and fields."""
    assert Dispatch("t", "e", 1) == Dispatch("t", "e", 1) != Dispatch("t", "e", 2)
    assert hash(Complete("t")) == hash(Complete("t")) and Complete("t") != Complete("u")
    assert repr(Dispatch("t", "e", 0)) == "Dispatch(msg_id='t', engine_uuid='e', attempt=0)"
    task = Task("t", retries=2, priority=5)
    assert [getattr(task, field.name) for field in dataclasses.fields(task)] == [
        "t",
        Dependency.EMPTY,
        Dependency.EMPTY,
        None,
        None,
        2,
        5,
    ]
    for action in (Dispatch("t", "e", 0), Complete("t")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            action.msg_id = "u"  # type: ignore[misc]
    assert dataclasses.replace(Task("t"), timeout=1.5) == Task("t", timeout=1.5)


def test_task_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="retries"):
        Task("t", retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        Task("t", timeout=-0.5)
    with pytest.raises(ValueError, match="timeout"):
        Task("t", timeout=float("nan"))


def test_duplicates_are_value_errors() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("t")
    with pytest.raises(ValueError, match="already submitted"):
        sim.core.submit(Task("t"), 0)
    sim.finish("t")
    with pytest.raises(ValueError, match="already submitted"):
        sim.core.submit(Task("t"), 0)
    with pytest.raises(ValueError, match="already registered"):
        sim.core.add_engine("e1")


def test_unknown_engine_removal_and_stale_replies_do_nothing() -> None:
    sim = Sim(engines=["e1", "e2"])
    assert sim.core.remove_engine("nobody") == []
    sim.submit("t")
    assert sim.core.task_finished("t", "e2", True, 0) == []
    assert sim.core.task_finished("unknown", "e1", True, 0) == []
    assert sim.core.outstanding("nobody") == 0


# ---------------------------------------------------------------- the hot path


def test_a_task_without_dependencies_is_dispatched_at_once() -> None:
    sim = Sim(engines=["e1"])
    assert sim.submit("t") == [Dispatch("t", "e1", 0)]
    assert sim.core.task_state("t") == "running"
    assert sim.finish("t") == [Complete("t")]
    assert sim.core.task_state("t") is None
    assert sim.core.waiting_count() == 0


def test_tasks_wait_for_the_first_engine() -> None:
    sim = Sim()
    assert sim.submit("a") == [] and sim.submit("b") == []
    assert sim.core.task_state("a") == "queued" and sim.core.waiting_count() == 2
    assert dispatches(sim.add("e1")) == [("a", "e1"), ("b", "e1")]


def test_a_failed_reply_without_retries_is_completed() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("t")
    assert sim.finish("t", success=False) == [Complete("t")]
    assert "t" in sim.failed


# ---------------------------------------------------------------- policies


def test_leastload_spreads_evenly() -> None:
    sim = Sim(SchedulerCore("leastload", max_outstanding=1000), engines=["e1", "e2", "e3", "e4"])
    for index in range(100):
        sim.submit(f"t{index}")
    assert {sim.core.outstanding(e) for e in sim.engines} == {25}
    for msg_id in list(sim.queues["e3"])[:5]:
        sim.finish(msg_id)
    assert dispatches(sim.submit("next")) == [("next", "e3")]


def test_leastload_breaks_ties_by_least_recently_used() -> None:
    sim = Sim(SchedulerCore("leastload"), engines=["e1", "e2", "e3"])
    for msg_id in ("a", "b", "c"):
        sim.submit(msg_id)
    sim.finish("c")
    sim.finish("a")
    sim.finish("b")
    got = [dispatches(sim.submit(m))[0][1] for m in ("d", "e", "f")]
    assert got == ["e1", "e2", "e3"]


def test_a_new_engine_is_least_recently_used() -> None:
    sim = Sim(SchedulerCore("lru"), engines=["e1", "e2"])
    sim.submit("a")
    sim.submit("b")
    sim.add("e3")
    assert dispatches(sim.submit("c")) == [("c", "e3")]


def test_lru_rotates_whatever_the_load() -> None:
    sim = Sim(SchedulerCore("lru"), engines=["e1", "e2", "e3"])
    got = [dispatches(sim.submit(f"t{i}"))[0][1] for i in range(3)]
    sim.finish("t1")
    sim.finish("t2")
    got += [dispatches(sim.submit(f"u{i}"))[0][1] for i in range(4)]
    assert got == ["e1", "e2", "e3", "e1", "e2", "e3", "e1"]


@pytest.mark.parametrize("policy", ["random", "weighted"])
def test_random_policies_are_deterministic_with_a_seed(policy: str) -> None:
    def run(seed: int) -> list[Action]:
        sim = Sim(SchedulerCore(policy, max_outstanding=1000, seed=seed), engines="abcdef")
        for index in range(300):
            sim.submit(f"t{index}")
            if index % 3 == 0:
                sim.finish_next()
        return sim.log

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    assert {a.engine_uuid for a in first if isinstance(a, Dispatch)} == set("abcdef")


def test_weighted_favours_the_less_loaded_engine() -> None:
    sim = Sim(SchedulerCore("weighted", max_outstanding=1000, seed=1), engines=["busy"])
    for index in range(30):
        sim.submit(f"load{index}")
    sim.add("idle")
    chosen: Counter[str] = Counter()
    for index in range(1000):
        (msg_id, engine), *_ = dispatches(sim.submit(f"t{index}"))
        chosen[engine] += 1
        if engine == "idle":
            sim.finish(msg_id)
    assert chosen["idle"] > 10 * chosen["busy"] > 0


def test_twobin_takes_the_least_recently_used_of_two_random_engines() -> None:
    """ipyparallel's ``twobin`` scheme: two engines drawn at random (the same one possibly
    twice), the less recently used of them wins; of three free engines the least recently
    used is then chosen 5 times in 9, the most recently used 1 time in 9."""
    sim = Sim(SchedulerCore("twobin", max_outstanding=1000, seed=3), engines="abc")
    order: list[str] = []  # least recently used first, once every engine was used
    ranks: Counter[int] = Counter()
    for index in range(1800):
        (msg_id, engine), *_ = dispatches(sim.submit(f"t{index}"))
        if len(order) == 3:
            ranks[order.index(engine)] += 1
        if engine in order:
            order.remove(engine)
        order.append(engine)
        sim.finish(msg_id)
    assert sum(ranks.values()) > 1700
    assert ranks[0] > 1.3 * ranks[1] and ranks[1] > 2 * ranks[2] > 0


def test_plainrandom_is_ipyparallels_name_for_random() -> None:
    def run(policy: str) -> list[Action]:
        sim = Sim(SchedulerCore(policy, max_outstanding=1000, seed=5), engines="abcd")
        for index in range(50):
            sim.submit(f"t{index}")
        return sim.log

    assert SchedulerCore("plainrandom").policy == "random"
    assert run("plainrandom") == run("random")


# ---------------------------------------------------------------- max_outstanding


def test_the_cap_holds_and_queued_tasks_go_out_in_order() -> None:
    sim = Sim(SchedulerCore(max_outstanding=2), engines=["e1", "e2"])
    for index in range(10):
        sim.submit(f"t{index}")
    assert len(sim.running) == 4 and sim.core.waiting_count() == 6
    assert sim.core.task_state("t4") == "queued"
    assert sim.finish("t0") == [Complete("t0"), Dispatch("t4", "e1", 0)]
    assert dispatches(sim.finish("t1")) == [("t5", "e2")]
    assert dispatches(sim.add("e3")) == [("t6", "e3"), ("t7", "e3")]
    sim.drain()
    assert len(sim.final) == 10 and not sim.fails()


def test_fifo_per_engine_with_targets() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["A", "B"])
    sim.submit("busyA", targets=frozenset({"A"}))
    sim.submit("busyB", targets=frozenset({"B"}))
    sim.submit("onlyB", targets=frozenset({"B"}))
    sim.submit("any")
    sim.submit("onlyA", targets=frozenset({"A"}))
    assert dispatches(sim.finish("busyA")) == [("any", "A")]
    assert dispatches(sim.finish("busyB")) == [("onlyB", "B")]
    assert dispatches(sim.finish("any")) == [("onlyA", "A")]


@pytest.mark.parametrize("after", [Dependency.EMPTY, dep("a")])
def test_empty_targets_are_impossible(after: Dependency) -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    [fail] = sim.submit("t", after=after, targets=frozenset())
    assert isinstance(fail, Fail) and fail.error is ImpossibleDependency
    assert "empty targets" in fail.reason


def test_targets_are_honoured_and_unknown_targets_wait_for_their_engine() -> None:
    sim = Sim(engines=["e1", "e2"])
    assert dispatches(sim.submit("t", targets=frozenset({"e2", "e9"}))) == [("t", "e2")]
    assert sim.submit("later", targets=frozenset({"e9"})) == []
    sim.tick(1e9)
    assert sim.core.task_state("later") == "queued"
    assert dispatches(sim.add("e9")) == [("later", "e9")]


def test_retries_go_ahead_of_nothing_but_are_not_lost_when_all_are_busy() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2"])
    sim.submit("a", retries=1)
    sim.submit("b")
    sim.submit("c")
    assert dispatches(sim.finish("a", success=False)) == [("a", "e1")]
    sim.drain()
    assert set(sim.final) == {"a", "b", "c"} and sim.attempts["a"] == 2


# ---------------------------------------------------------------- after


def test_after_waits_for_its_dependency() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    assert sim.submit("b", after=dep("a")) == []
    assert sim.core.task_state("b") == "waiting"
    actions = sim.finish("a")
    assert actions[0] == Complete("a") and dispatches(actions) == [("b", "e2")]


def test_after_on_a_finished_task_dispatches_at_once() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.finish("a")
    assert dispatches(sim.submit("b", after=dep("a"))) == [("b", "e1")]


@pytest.mark.parametrize(
    ("success", "dependency", "runs"),
    [
        (True, dep("a"), True),
        (False, dep("a"), False),
        (False, dep("a", failure=True), True),
        (True, dep("a", success=False, failure=True), False),
        (False, dep("a", success=False, failure=True), True),
    ],
)
def test_after_outcomes(success: bool, dependency: Dependency, runs: bool) -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b", after=dependency)
    actions = sim.finish("a", success=success)
    if runs:
        assert dispatches(actions) == [("b", "e1")]
    else:
        assert isinstance(fail := actions[-1], Fail) and fail.error is ImpossibleDependency
        assert "after dependency a" in fail.reason


def test_after_any_needs_one_and_fails_when_none_can() -> None:
    sim = Sim(engines=["e1"])
    for msg_id in ("a", "b", "c", "d"):
        sim.submit(msg_id)
    sim.submit("any1", after=dep("a b", all=False))
    sim.submit("any2", after=dep("c d", all=False))
    sim.finish("a", success=False)
    assert dispatches(sim.finish("b")) == [("any1", "e1")]
    sim.finish("c", success=False)
    assert sim.core.task_state("any2") == "waiting"
    assert sim.finish("d", success=False)[-1].error is ImpossibleDependency  # type: ignore[union-attr]


def test_an_unknown_dependency_fails_at_submission_naming_it() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    [fail] = sim.submit("b", after=dep("a ghost"))
    assert isinstance(fail, Fail) and fail.error is InvalidDependency
    assert "ghost" in fail.reason and "a," not in fail.reason
    [fail] = sim.submit("c", follow=dep("phantom"))
    assert isinstance(fail, Fail) and "phantom" in fail.reason


def test_a_task_cannot_depend_on_itself() -> None:
    sim = Sim(engines=["e1"])
    [fail] = sim.submit("t", after=dep("t"))
    assert isinstance(fail, Fail) and fail.error is InvalidDependency


def test_forgotten_outcomes_are_unknown_and_unfinished_ones_are_kept() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b")
    sim.finish("a")
    sim.core.forget(["a", "b"])
    assert sim.submit("c", after=dep("a"))[0].error is InvalidDependency  # type: ignore[union-attr]
    sim.submit("d", after=dep("b"))
    assert dispatches(sim.finish("b")) == [("d", "e1")]
    sim.core.forget(["a"])
    assert sim.core.submit(Task("a"), 0) == [Dispatch("a", "e1", 0)]  # it may come back


def test_failure_cascades_down_a_chain_in_one_call() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("t0")
    for index in range(1, 600):
        sim.submit(f"t{index}", after=dep(f"t{index - 1}"))
    actions = sim.finish("t0", success=False)
    assert len(actions) == 600
    assert all(isinstance(a, Fail) and a.error is ImpossibleDependency for a in actions[1:])


def test_a_failed_task_satisfies_failure_dependencies_downstream() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b", after=dep("a"))  # will be impossible
    sim.submit("cleanup", after=dep("b", success=False, failure=True))
    actions = sim.finish("a", success=False)
    assert actions[1] == Fail("b", ImpossibleDependency, actions[1].reason)  # type: ignore[union-attr]
    assert dispatches(actions) == [("cleanup", "e1")]


def test_unreachable_at_submission() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.finish("a", success=False)
    [fail] = sim.submit("b", after=dep("a"))
    assert isinstance(fail, Fail) and fail.error is ImpossibleDependency


# ---------------------------------------------------------------- follow


def test_follow_runs_where_its_dependency_ran() -> None:
    sim = Sim(SchedulerCore("lru"), engines=["e1", "e2", "e3"])
    sim.submit("a")
    sim.submit("x")
    assert sim.submit("b", follow=dep("a")) == []
    assert dispatches(sim.finish("a")) == [("b", "e1")]
    sim.finish("x")
    assert dispatches(sim.submit("c", follow=dep("x"))) == [("c", "e2")]


def test_follow_all_on_two_engines_is_impossible() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    sim.submit("b")
    sim.submit("c", follow=dep("a b"))
    sim.finish("a")
    [fail] = sim.finish("b")[1:]
    assert isinstance(fail, Fail) and fail.error is ImpossibleDependency
    assert "one place" in fail.reason


def test_follow_any_may_use_any_of_their_engines() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2", "e3"])
    for msg_id in ("a", "b", "other"):
        sim.submit(msg_id)
    sim.submit("c", follow=dep("a b", all=False))
    sim.finish("a")
    assert sim.running["c"] == "e1"
    sim.finish("c")
    sim.submit("busy1", targets=frozenset({"e1"}))
    sim.submit("d", follow=dep("a b", all=False))
    assert sim.core.task_state("d") == "queued"  # for e1, the one place usable when queued
    assert dispatches(sim.finish("b")) == []
    assert dispatches(sim.finish("busy1")) == [("d", "e1")]


def test_follow_failure_allowed_pins_to_the_engine_it_failed_on() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    sim.submit("b")
    sim.submit("c", follow=dep("b", success=False, failure=True))
    assert dispatches(sim.finish("b", success=False)) == [("c", "e2")]


def test_follow_a_task_that_never_ran_is_impossible() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a", after=dep("ghost"))  # fails at once, never reaches an engine
    [fail] = sim.submit("b", follow=dep("a", failure=True))
    assert isinstance(fail, Fail) and "without running" in fail.reason


def test_follow_and_targets_must_intersect() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    assert sim.submit("b", follow=dep("a"), targets=frozenset({"e2"})) == []  # a still runs
    [_, fail] = sim.finish("a")
    assert isinstance(fail, Fail) and "targets exclude" in fail.reason


def test_follow_waits_while_its_engine_is_busy() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2"])
    sim.submit("a")
    sim.finish("a")
    sim.submit("hog", targets=frozenset({"e1"}))
    sim.submit("b", follow=dep("a"))
    assert sim.core.task_state("b") == "queued"
    assert dispatches(sim.finish("hog")) == [("b", "e1")]


def test_losing_the_followed_engine_fails_waiting_and_queued_tasks() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2"])
    sim.submit("a")
    sim.finish("a")  # ran on e1
    sim.submit("hog", targets=frozenset({"e1"}), retries=0)
    sim.submit("never")
    sim.submit("queued", follow=dep("a"))
    sim.submit("waiting", after=dep("never"), follow=dep("a"))
    sim.submit("elsewhere", follow=dep("a", all=False))
    actions = sim.remove("e1")
    failed = {a.msg_id: a.error for a in actions if isinstance(a, Fail)}
    assert failed == {
        "hog": EngineError,
        "queued": ImpossibleDependency,
        "waiting": ImpossibleDependency,
        "elsewhere": ImpossibleDependency,
    }


def test_a_restarted_engine_under_the_same_uuid_is_not_followed() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.finish("a")
    sim.remove("e1")
    sim.add("e1")
    [fail] = sim.submit("b", follow=dep("a"))
    assert isinstance(fail, Fail) and "gone" in fail.reason


def test_follow_any_keeps_waiting_while_a_usable_engine_may_appear() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    sim.submit("b")
    sim.submit("c", follow=dep("a b", all=False))
    sim.submit("d", after=dep("b"), follow=dep("a b", all=False))
    sim.finish("a")  # c runs on e1 at once
    sim.remove("e1")  # c is lost; d still waits for b
    assert sim.core.task_state("d") == "waiting"
    assert dispatches(sim.finish("b")) == [("d", "e2")]


def test_an_in_flight_follow_task_on_a_lost_engine_cannot_retry() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a")
    sim.finish("a")
    sim.submit("b", follow=dep("a"), retries=5)
    [fail] = sim.remove("e1")
    assert isinstance(fail, Fail) and fail.error is EngineError and "follow" in fail.reason


# ---------------------------------------------------------------- timeouts


def test_waiting_past_the_timeout_fails() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.now = 10.0
    sim.submit("b", after=dep("a"), timeout=5.0)
    assert sim.core.next_deadline() == 15.0
    assert sim.tick(14.9) == []
    [fail] = sim.tick(15.0)
    assert isinstance(fail, Fail) and fail.error is DependencyTimeout
    assert "still waiting for a" in fail.reason
    assert sim.core.next_deadline() is None


def test_a_timeout_cascades_as_a_failure() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b", after=dep("a"), timeout=1.0)
    sim.submit("c", after=dep("b"))
    sim.submit("d", after=dep("b", failure=True))
    actions = sim.tick(2.0)
    assert [type(a) for a in actions] == [Fail, Fail, Dispatch]


def test_dependencies_met_after_the_deadline_but_before_tick() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b", after=dep("a"), timeout=1.0)
    sim.now = 1.5
    [_, fail] = sim.finish("a")
    assert isinstance(fail, Fail) and fail.error is DependencyTimeout


def test_targets_never_registered_time_out_only_with_a_timeout() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("timed", targets=frozenset({"ghost"}), timeout=3.0)
    sim.submit("patient", targets=frozenset({"ghost"}))
    [fail] = sim.tick(3.0)
    assert fail.msg_id == "timed" and "no registered engine" in fail.reason  # type: ignore[union-attr]
    sim.tick(1e12)
    assert sim.core.task_state("patient") == "queued"


def test_waiting_for_a_free_slot_is_not_timed() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1"])
    sim.submit("hog")
    sim.submit("patient", timeout=1.0)
    assert sim.tick(5.0) == []
    assert dispatches(sim.finish("hog")) == [("patient", "e1")]


def test_dispatched_tasks_and_retries_after_engine_loss_are_not_timed() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("t", timeout=1.0, retries=2)
    assert sim.core.next_deadline() is None
    sim.now = 10.0
    sim.remove("e1")
    assert sim.tick(100.0) == []
    assert dispatches(sim.add("e2")) == [("t", "e2")]


def test_with_a_timeout_a_retry_never_goes_back_to_an_engine_it_failed_on() -> None:
    """ipyparallel's rule: the task waits for a new engine, and times out with TaskTimeout."""
    sim = Sim(engines=["e1", "e2"])
    sim.submit("t", timeout=5.0, retries=5)
    first = sim.running["t"]
    other = ({"e1", "e2"} - {first}).pop()
    assert dispatches(sim.finish("t", success=False)) == [("t", other)]
    assert sim.finish("t", success=False) == []  # failed everywhere: it waits
    assert sim.core.task_state("t") == "queued" and sim.core.next_deadline() == 5.0
    assert sim.tick(4.9) == []
    assert dispatches(sim.add("e3")) == [("t", "e3")]  # a new engine takes it
    assert sim.finish("t", success=False) == []
    (failed,) = sim.tick(5.0)
    assert isinstance(failed, Fail) and failed.error is TaskTimeout
    assert "3 engine(s)" in failed.reason and sim.core.task_state("t") is None
    assert sim.attempts["t"] == 3


def test_an_exhausted_retry_past_its_deadline_times_out_at_once() -> None:
    sim = Sim(engines=["solo"])
    sim.submit("t", timeout=1.0, retries=3)
    sim.now = 2.0
    (failed,) = sim.finish("t", success=False)
    assert isinstance(failed, Fail) and failed.error is TaskTimeout
    sim.submit("u", retries=3)  # no timeout: retried on the same engine, never stuck
    assert dispatches(sim.finish("u", success=False)) == [("u", "solo")]


def test_no_timeouts_no_deadline() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("t")
    assert sim.core.next_deadline() is None
    assert sim.tick(1e9) == []


# ---------------------------------------------------------------- retries and engine loss


def test_a_failure_with_retries_is_dispatched_again_elsewhere() -> None:
    sim = Sim(engines=["e1", "e2", "e3"])
    sim.submit("t", retries=2)
    first = sim.running["t"]
    actions = sim.finish("t", success=False)
    assert len(actions) == 1 and isinstance(actions[0], Dispatch) and actions[0].attempt == 1
    second = sim.running["t"]
    sim.finish("t", success=False)
    third = sim.running["t"]
    assert len({first, second, third}) == 3
    assert sim.finish("t", success=False) == [Complete("t")]
    assert sim.attempts["t"] == 3


def test_retry_prefers_an_engine_it_has_not_failed_on_even_if_more_loaded() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("x")  # e1
    sim.submit("y")  # e2
    sim.submit("t", retries=1)  # e1 (tie on load, least recently used)
    sim.submit("z")  # e2
    sim.finish("x")
    assert sim.running["t"] == "e1"
    assert dispatches(sim.finish("t", success=False)) == [("t", "e2")]


def test_with_one_engine_a_retry_runs_there_again() -> None:
    sim = Sim(engines=["solo"])
    sim.submit("t", retries=1)
    assert dispatches(sim.finish("t", success=False)) == [("t", "solo")]


def test_an_aborted_task_is_final_whatever_its_retries() -> None:
    core = SchedulerCore()
    core.add_engine("e1")
    core.add_engine("e2")
    (dispatch,) = core.submit(Task("t", retries=3), 0.0)
    assert isinstance(dispatch, Dispatch)
    finished = core.task_finished("t", dispatch.engine_uuid, False, 0.0, retry=False)
    assert finished == [Complete("t")]
    assert core.task_state("t") is None


def test_engine_loss_retries_in_flight_tasks_elsewhere() -> None:
    sim = Sim(engines=["e1", "e2"])
    sim.submit("a", retries=1)
    sim.submit("b", retries=0)
    sim.submit("c", retries=3)
    assert sim.running == {"a": "e1", "b": "e2", "c": "e1"}
    actions = sim.remove("e1")
    assert actions == [Dispatch("a", "e2", 1), Dispatch("c", "e2", 1)]
    actions = sim.remove("e2")
    assert [a.msg_id for a in actions if isinstance(a, Fail)] == ["b", "a"]
    assert sim.core.task_state("c") == "queued"
    assert dispatches(sim.add("e3")) == [("c", "e3")]
    assert sim.core.task_finished("a", "e1", True, 0) == []  # late reply from the lost engine


def test_a_lost_task_is_failed_for_its_dependents() -> None:
    sim = Sim(engines=["e1"])
    sim.submit("a")
    sim.submit("b", after=dep("a"))
    sim.submit("c", after=dep("a", success=False, failure=True))
    actions = sim.remove("e1")
    assert [(type(a), a.msg_id) for a in actions] == [(Fail, "a"), (Fail, "b")]
    assert sim.core.task_state("c") == "queued"


# ---------------------------------------------------------------- scale


def run_to_completion(sim: Sim) -> float:
    started = time.perf_counter()
    sim.drain()
    return time.perf_counter() - started


def test_a_thousand_task_diamond_dag() -> None:
    """Layers fan out from a hub to 24 tasks and back in to the next hub, 40 times over."""
    sim = Sim(SchedulerCore(max_outstanding=4), engines=["e1", "e2", "e3", "e4"])
    started = time.perf_counter()
    sim.submit("hub0")
    count = 1
    for layer in range(40):
        fan = [f"l{layer}.{index}" for index in range(24)]
        for msg_id in fan:
            sim.submit(msg_id, after=dep(f"hub{layer}"))
        sim.submit(f"hub{layer + 1}", after=Dependency(frozenset(fan)))
        count += 25
    elapsed = run_to_completion(sim) + time.perf_counter() - started
    assert count == 1001
    assert len(sim.final) == count and not sim.fails()
    assert all(v == 1 for v in sim.attempts.values())
    assert elapsed < 20.0, f"{count} tasks took {elapsed:.3f}s"  # linear, not quadratic


def test_a_five_hundred_long_chain_with_follow() -> None:
    sim = Sim(engines=["e1", "e2", "e3", "e4"])
    sim.submit("c0")
    for index in range(1, 500):
        follow = dep(f"c{index - 1}") if index % 2 else Dependency.EMPTY
        sim.submit(f"c{index}", after=dep(f"c{index - 1}"), follow=follow)
    assert run_to_completion(sim) < 2.0
    assert len(sim.final) == 500 and not sim.fails()
    order = [a.msg_id for a in sim.log if isinstance(a, Complete)]
    assert order == [f"c{i}" for i in range(500)]
    for index in range(1, 500, 2):
        assert sim.dispatched_to[f"c{index}"] == sim.dispatched_to[f"c{index - 1}"]


# ---------------------------------------------------------------- random schedules

POOL = ("e0", "e1", "e2", "e3")
POOL_HOSTS = {"e0": ("m", [0]), "e1": ("m", [0]), "e2": ("m", [0]), "e3": ("n", [0])}
"""Three engines of the pool on a machine of one core, one alone on another: with
``burst_packing=1`` a burst there is packed on the first of the three to register."""


def random_task_fields(rng: random.Random, known: list[str]) -> dict[str, object]:
    def random_dependency() -> Dependency:
        if not known or rng.random() < 0.4:
            return Dependency.EMPTY
        ids = rng.sample(known[-12:], rng.randint(1, min(3, len(known[-12:]))))
        success, failure = rng.choice([(True, False), (True, False), (False, True), (True, True)])
        return Dependency(frozenset(ids), rng.random() < 0.7, success, failure)

    return {
        "after": random_dependency(),
        "follow": random_dependency() if rng.random() < 0.3 else Dependency.EMPTY,
        "targets": frozenset(rng.sample(POOL, rng.randint(1, 3))) if rng.random() < 0.2 else None,
        "timeout": rng.choice([None, None, 0.5, 3.0]),
        "retries": rng.choice([0, 0, 1, 2]),
    }


def no_queued_task_has_a_free_engine(sim: Sim) -> None:
    """The scheduler never holds back a ready task from an engine that has room for it (but
    for a held engine, while a burst is packed on others of its host, and a task any engine
    may run: corral.controller.packing)."""
    free = [e for e in sim.engines if sim.core.outstanding(e) < sim.core.capacity(e)]
    for msg_id, task in sim.tasks.items():
        if msg_id in sim.final or sim.core.task_state(msg_id) != "queued" or task.follow.msg_ids:
            continue
        tried = set(sim.dispatched_to[msg_id])
        allowed = [e for e in sim.engines if task.targets is None or e in task.targets]
        if task.timeout is not None and tried and tried.issuperset(allowed):
            continue  # a timed retry waits for an engine it has not failed on
        if task.targets is None:
            assert not [e for e in free if not sim.core.held(e)], msg_id
        else:
            assert not [e for e in free if e in task.targets], msg_id


def finish_everything(sim: Sim, rng: random.Random | None = None) -> None:
    """Register every engine, let engines answer everything, and let every timeout pass:
    then each task must have ended exactly once."""
    for uuid in POOL:
        if uuid not in sim.engines:
            sim.add(uuid)
    while len(sim.final) < len(sim.tasks):
        if not sim.finish_next(lambda _: rng is None or rng.random() < 0.8):
            before = len(sim.final)
            sim.tick(sim.now + 100.0)
            stuck = {m: sim.core.task_state(m) for m in sim.tasks if m not in sim.final}
            assert len(sim.final) > before, f"stuck: {stuck}"
    assert sim.core.waiting_count() == 0 and not sim.running
    sim.tick(sim.now + 100.0)  # a packed burst's lapse may still be due (nothing to do then)
    assert sim.core.next_deadline() is None


@pytest.mark.parametrize("seed", range(24))
def test_random_schedules_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    policy = POLICIES[seed % len(POLICIES)]
    sim = Sim(SchedulerCore(policy, max_outstanding=rng.randint(1, 4), seed=seed))
    for _ in range(600):
        roll = rng.random()
        if roll < 0.45:
            msg_id = f"t{len(sim.tasks)}"
            sim.submit(msg_id, **random_task_fields(rng, list(sim.tasks)))
        elif roll < 0.8 and sim.running:
            sim.finish(rng.choice(sorted(sim.running)), rng.random() < 0.8)
        elif roll < 0.88:
            sim.tick(sim.now + rng.random())
        elif roll < 0.94:
            missing = [u for u in POOL if u not in sim.engines]
            if missing:
                sim.add(rng.choice(missing))
        elif sim.engines:
            sim.remove(rng.choice(sorted(sim.engines)))
        if rng.random() < 0.1:
            no_queued_task_has_a_free_engine(sim)
    finish_everything(sim, rng)
    assert len(sim.final) == len(sim.tasks) > 200


@pytest.mark.parametrize("seed", range(12))
def test_impossible_exactly_when_after_is_unreachable(seed: int) -> None:
    """Without engine loss, targets, follow or timeouts, the outcome of every task is known in
    advance from the outcomes of its after dependencies: check it against Dependency."""
    rng = random.Random(seed)
    sim = Sim(SchedulerCore(max_outstanding=2), engines=POOL)
    for index in range(400):
        fields = random_task_fields(rng, list(sim.tasks))
        sim.submit(f"t{index}", after=fields["after"], retries=fields["retries"])
        if rng.random() < 0.6 and sim.running:
            sim.finish(rng.choice(sorted(sim.running)), rng.random() < 0.7)
    sim.drain(lambda _: rng.random() < 0.7)
    assert len(sim.final) == len(sim.tasks)
    for msg_id, task in sim.tasks.items():
        if isinstance(sim.final[msg_id], Fail):
            assert task.after.is_unreachable(sim.succeeded, sim.failed), msg_id
        else:
            assert task.after.is_met(sim.succeeded, sim.failed), msg_id


class SchedulerMachine(RuleBasedStateMachine):
    """Hypothesis explores orders of events; Sim checks every action; all tasks end."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = Sim(SchedulerCore("leastload", max_outstanding=2))

    @rule(
        policy=st.sampled_from(POLICIES),
        cap=st.integers(1, 3),
        seed=st.integers(0, 3),
        burst=st.sampled_from([1, 3]),
        packing=st.sampled_from([0, 1]),
    )
    @precondition(lambda self: not self.sim.tasks and not self.sim.engines)
    def configure(self, policy: str, cap: int, seed: int, burst: int, packing: int) -> None:
        core = SchedulerCore(
            policy, max_outstanding=cap, seed=seed, burst_prefetch=burst, burst_packing=packing
        )
        self.sim = Sim(core, hosts=POOL_HOSTS)

    @rule(uuid=st.sampled_from(POOL))
    def add_engine(self, uuid: str) -> None:
        if uuid not in self.sim.engines:
            self.sim.add(uuid)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.sim.engines))
    def remove_engine(self, data: st.DataObject) -> None:
        self.sim.remove(data.draw(st.sampled_from(sorted(self.sim.engines))))

    @rule(seed=st.integers(0, 2**16))
    def submit(self, seed: int) -> None:
        fields = random_task_fields(random.Random(seed), list(self.sim.tasks))
        self.sim.submit(f"t{len(self.sim.tasks)}", **fields)

    @rule(data=st.data(), success=st.booleans())
    @precondition(lambda self: bool(self.sim.running))
    def finish(self, data: st.DataObject, success: bool) -> None:
        self.sim.finish(data.draw(st.sampled_from(sorted(self.sim.running))), success)

    @rule(delta=st.sampled_from([0.0, 0.3, 1.0, 5.0]))
    def tick(self, delta: float) -> None:
        self.sim.tick(self.sim.now + delta)

    @invariant()
    def ready_tasks_are_not_held_back(self) -> None:
        no_queued_task_has_a_free_engine(self.sim)

    def teardown(self) -> None:
        finish_everything(self.sim)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- priorities


def test_higher_priorities_leave_the_queue_first_and_equal_ones_in_order() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1"])
    sim.submit("busy")
    for msg_id, priority in [("low1", 0), ("high1", 5), ("low2", 0), ("mid", 2), ("high2", 5)]:
        assert sim.submit(msg_id, priority=priority) == []
    sim.drain()
    ran = [a.msg_id for a in sim.log if isinstance(a, Dispatch)]
    assert ran == ["busy", "high1", "high2", "mid", "low1", "low2"]


def test_priority_never_holds_back_a_task_a_free_engine_can_take() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2"])
    sim.submit("busy", targets=frozenset({"e1"}))
    assert dispatches(sim.submit("low", priority=-3)) == [("low", "e2")]


def test_priorities_keep_targets_and_dependencies() -> None:
    sim = Sim(SchedulerCore(max_outstanding=1), engines=["e1", "e2"])
    sim.submit("a", targets=frozenset({"e1"}))
    sim.submit("b", targets=frozenset({"e2"}))
    sim.submit("after-a", priority=9, after=dep("a"))  # waits for a whatever its priority
    sim.submit("on-e2", priority=1, targets=frozenset({"e2"}))
    sim.submit("any", priority=0)
    assert sim.core.task_state("after-a") == "waiting"
    assert dispatches(sim.finish("b")) == [("on-e2", "e2")]  # e2: the highest it may run
    # a's slot goes to the queue before its dependents wake (see task_finished)
    assert dispatches(sim.finish("a")) == [("any", "e1")]
    assert sim.core.task_state("after-a") == "queued"
    assert dispatches(sim.finish("on-e2")) == [("after-a", "e2")]


def test_tables_stay_bounded_when_finished_tasks_are_forgotten() -> None:
    """What the core does to a task falling out of its finished memory: forget its outcome.
    Then nothing of a finished round stays in the core, whatever its tasks named."""
    sim = Sim(engines=["e1", "e2"])
    for round_number in range(3):
        names = [f"r{round_number}-{index}" for index in range(300)]
        for index, msg_id in enumerate(names):
            fields: dict[str, object] = {"timeout": 60.0, "retries": 1}
            if index % 3 == 1:
                fields["after"] = dep(names[index - 1])
            elif index % 3 == 2:
                fields["follow"] = dep(names[index - 2], all=False)
            sim.submit(msg_id, **fields)
        failing = lambda msg_id: not msg_id.endswith("7")  # noqa: E731
        sim.drain(success=failing)
        # a failed task whose retry may only go where it failed (follow) waits for another
        # engine until its deadline, then fails with TaskTimeout
        sim.tick(sim.now + 61.0)
        sim.drain(success=failing)
        assert all(sim.core.task_state(m) is None for m in names)
        sim.core.forget(names)
        sim.core.next_deadline()  # drops the deadlines of finished tasks
        core, graph = sim.core, sim.core._graph
        sizes = {
            "records": len(core._records),
            "queued": len(core._queued),
            "deadlines": len(core._deadlines),
            "outcomes": len(graph._outcomes),
            "waiters": len(graph._waiters),
            "waiting_on": len(graph._waiting_on),
            "at_location": len(graph._at_location),
        }
        assert set(sizes.values()) == {0}, (round_number, sizes)
