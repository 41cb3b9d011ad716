"""The scheduler core's packing of bursts (``burst_packing``, corral.controller.packing): on a
host with more than ``burst_packing`` engines per core, a burst of tiny tasks runs on the
first ``burst_packing`` x cores engines while they answer in bursts; the others are held (no
task any engine may run) until the packing lapses, and tasks that must go to them still do."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from corral.controller.packing import (
    DRAIN_GAP,
    LAPSE_REASONS,
    LONG_RUN,
    PROBE_WINDOW,
    STARVED_LIMIT,
    Hosts,
)
from corral.controller.scheduling import POLICIES, SchedulerCore
from corral.controller.scheduling_state import BURST_GAP, BURST_HOLD, Action, Dispatch, EngineState
from corral.protocol.dependency import Dependency
from tests.controller.test_scheduling import (
    Sim,
    finish_everything,
    no_queued_task_has_a_free_engine,
    random_task_fields,
)

APART = 10 * BURST_GAP  # between two replies of tasks that are not short
EIGHT = [f"e{index}" for index in range(8)]
ON_TWO_CORES = {uuid: ("m", [0, 1]) for uuid in EIGHT}  # 8 engines, 2 cores: 4 pack


def packing_counts(**changed: int) -> dict[str, int]:
    """The scheduler's packing exit counts: 0 but those ``changed``."""
    counts = {"started": 0, "lapsed": 0, "stalled": 0, "kept": 0, "starved": 0}
    return {**counts, **dict.fromkeys(LAPSE_REASONS, 0), **changed}


# a lapse of a core without read_cpu: never looked at
ONE_LAPSE = packing_counts(started=1, lapsed=1, unread=1)


def packed_sim(
    policy: str = "leastload", hosts: dict[str, tuple[str, list[int]]] | None = None
) -> Sim:
    core = SchedulerCore(policy, max_outstanding=2, burst_prefetch=4, burst_packing=2, seed=1)
    return Sim(core, engines=EIGHT, hosts=ON_TWO_CORES if hosts is None else hosts)


def submit_many(sim: Sim, count: int) -> None:
    for _ in range(count):
        sim.submit(f"t{len(sim.tasks)}")


def burst_until_packed(sim: Sim, packing: Sequence[str] = EIGHT[:4]) -> None:
    """The packing engines answer their oldest task back to back (a burst), and the others
    too until they hold nothing: then every task runs on the packing engines."""
    for _ in range(200):
        for uuid in EIGHT:
            if sim.queues[uuid]:
                sim.finish(sim.queues[uuid][0])
        if all(sim.core.held(u) for u in EIGHT if u not in packing) and not any(
            sim.queues[u] for u in EIGHT if u not in packing
        ):
            return
    raise AssertionError("the burst was never packed")


def kept_then_paused(pause: float = 5.0) -> tuple[Sim, float]:
    """A packed burst done, its packing kept (BURST_HOLD passed with nothing held or waiting),
    then ``pause`` seconds: the simulator and the time its next tasks come."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()
    sim.tick(sim.now + BURST_HOLD)
    assert sim.core.packing_counts()["kept"] == 1
    sim.now += pause
    return sim, sim.now


def dispatched_to(actions: Sequence[Action]) -> list[str]:
    return [a.engine_uuid for a in actions if isinstance(a, Dispatch)]


def test_burst_packing_below_zero_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="burst_packing"):
        SchedulerCore(burst_packing=-1)


def test_a_burst_on_an_oversubscribed_host_runs_on_its_first_engines() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    assert all(len(sim.queues[u]) == 2 for u in EIGHT)  # a burst after a pause: spread
    burst_until_packed(sim)
    for _ in range(100):
        for uuid in EIGHT[:4]:
            actions = sim.finish(sim.queues[uuid][0])
            assert set(dispatched_to(actions)) <= set(EIGHT[:4])
    assert not any(sim.queues[u] for u in EIGHT[4:])
    assert all(sim.core.capacity(u) == 8 == len(sim.queues[u]) for u in EIGHT[:4])
    no_queued_task_has_a_free_engine(sim)


def test_a_done_burst_keeps_its_host_packing_through_the_pause() -> None:
    """BURST_HOLD after the last burst reply, with the packing engines holding nothing and no
    task waiting, nothing can be stuck: the host stays packed (no deadline, nothing released)
    until its next task."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()  # the packing engines answer the rest in a burst: nothing is left queued
    last_burst = sim.now
    assert sim.core.next_deadline() == pytest.approx(last_burst + BURST_HOLD)
    assert not dispatched_to(sim.tick(last_burst + BURST_HOLD / 2))  # not yet
    assert sim.core.held("e7")
    assert not dispatched_to(sim.tick(last_burst + BURST_HOLD))
    assert all(sim.core.held(u) for u in EIGHT[4:])
    assert sim.core.next_deadline() is None
    assert sim.core.packed_until("e0") == float("inf")
    assert sim.core.packing_counts() == packing_counts(started=1, kept=1)


def test_a_burst_after_a_pause_stays_on_the_packing_engines() -> None:
    """The next burst, seconds later, runs where the last one did: each idle packing engine
    takes one task, the rest wait for its first reply, and its replies in a burst renew the
    packing. No task reaches a held engine (before, this burst was spread over all of them
    until a packing engine replied in a burst)."""
    sim, resumed = kept_then_paused()
    submit_many(sim, 2000)
    assert sorted(u for u in EIGHT if sim.queues[u]) == EIGHT[:4]
    assert all(len(sim.queues[u]) == 1 for u in EIGHT[:4])  # one each until it answers
    assert sim.core.next_deadline() == pytest.approx(resumed + BURST_HOLD)
    for _ in range(300):
        for uuid in EIGHT[:4]:
            if sim.queues[uuid]:
                assert set(dispatched_to(sim.finish(sim.queues[uuid][0]))) <= {uuid}
    assert not any(sim.queues[u] for u in EIGHT[4:])
    assert all(sim.core.capacity(u) == 8 == len(sim.queues[u]) for u in EIGHT[:4])
    assert sim.core.packing_counts() == packing_counts(started=1, kept=1)
    no_queued_task_has_a_free_engine(sim)


def test_a_few_long_tasks_after_a_pause_are_spread_drain_gap_after_the_first() -> None:
    """Tasks after a pause may be long: one on each idle packing engine, and when the others
    wait (no more of them than the held engines) and no packing engine has replied for
    DRAIN_GAP since the first of them, every engine takes one."""
    sim, resumed = kept_then_paused()
    submit_many(sim, 8)
    assert all(len(sim.queues[u]) == 1 for u in EIGHT[:4])
    assert not any(sim.queues[u] for u in EIGHT[4:])
    assert sim.core.next_deadline() == pytest.approx(resumed + DRAIN_GAP)  # not at once
    assert not dispatched_to(sim.tick(resumed + DRAIN_GAP / 2))
    assert sorted(dispatched_to(sim.tick(resumed + DRAIN_GAP))) == EIGHT[4:]
    assert all(len(sim.queues[u]) == 1 for u in EIGHT)  # one long task on every engine
    assert not any(sim.core.held(u) for u in EIGHT)
    expected = packing_counts(started=1, lapsed=1, stalled=1, kept=1, unread=1)
    assert sim.core.packing_counts() == expected


def test_many_long_tasks_after_a_pause_are_spread_burst_hold_after_the_first() -> None:
    """More tasks waiting than held engines: BURST_HOLD after the first task with no burst
    reply, the held engines take the queue, and the packing engines are no longer capped at
    one task."""
    sim, resumed = kept_then_paused()
    submit_many(sim, 20)
    assert sim.core.next_deadline() == pytest.approx(resumed + BURST_HOLD)
    assert not dispatched_to(sim.tick(resumed + BURST_HOLD / 2))
    assert sorted(set(dispatched_to(sim.tick(resumed + BURST_HOLD)))) == EIGHT  # all uncapped
    assert all(len(sim.queues[u]) == 2 for u in EIGHT)  # max_outstanding each, 4 still wait
    assert not any(sim.core.held(u) for u in EIGHT)
    assert sim.core.next_deadline() is None
    assert sim.core.packing_counts() == packing_counts(started=1, lapsed=1, kept=1, unread=1)


def test_a_pause_with_a_packing_engine_still_busy_is_a_lapse() -> None:
    """A packing engine that holds a task BURST_HOLD after the last burst reply may be stuck
    in it: the packing lapses as before, and the next burst after a pause is spread."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    for uuid in EIGHT[1:4]:
        while sim.queues[uuid]:
            sim.finish(sim.queues[uuid][0])
    while len(sim.queues["e0"]) > 1:
        sim.finish(sim.queues["e0"][0])
    assert not sim.core.waiting_count()
    sim.tick(sim.now + BURST_HOLD)
    assert not any(sim.core.held(u) for u in EIGHT)
    assert sim.core.packing_counts() == ONE_LAPSE
    sim.now += 5.0
    submit_many(sim, 8)
    assert all(sim.queues[u] for u in EIGHT[1:])  # spread again


def test_the_packing_lapses_after_burst_hold_and_the_held_engines_take_the_queue() -> None:
    """Packing engines that drained their tasks and then fall silent with tasks queued (stuck
    in long tasks, or starved of CPU: the two look alike) keep the packing until BURST_HOLD
    after their last burst reply; then the held engines take the queue, max_outstanding
    each."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    last_burst = sim.now
    assert sim.core.next_deadline() == pytest.approx(last_burst + BURST_HOLD)
    assert not dispatched_to(sim.tick(last_burst + BURST_HOLD / 2))  # not yet
    assert sim.core.held("e7")
    released = dispatched_to(sim.tick(last_burst + BURST_HOLD))
    assert sorted(set(released)) == EIGHT[4:]  # filled at once, max_outstanding each
    assert all(sim.core.outstanding(u) == sim.core.capacity(u) for u in EIGHT[4:])
    assert not any(sim.core.held(u) for u in EIGHT)
    assert sim.core.next_deadline() is None
    assert sim.core.packing_counts() == ONE_LAPSE
    no_queued_task_has_a_free_engine(sim)


def test_long_tasks_right_after_a_burst_run_side_by_side() -> None:
    """Tasks submitted just after a packed burst ended (well within BURST_HOLD of its last
    burst reply) may be long: each idle packing engine takes one, the others wait in the
    scheduler, and DRAIN_GAP after the first of them (no packing engine replied) the held
    engines take them, one each. None waits behind another on an engine while an engine sits
    idle."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()
    assert sim.core.held("e7")
    sim.now += BURST_GAP  # the client's next tasks come at once
    before = len(sim.tasks)
    submit_many(sim, 8)
    assert sorted(u for u in EIGHT if sim.queues[u]) == EIGHT[:4]
    assert all(len(sim.queues[u]) == 1 for u in EIGHT[:4])
    assert sim.core.task_state(f"t{before + 7}") == "queued"
    assert sim.core.next_deadline() == pytest.approx(sim.now + DRAIN_GAP)  # from the first
    assert not dispatched_to(sim.tick(sim.now - BURST_GAP + DRAIN_GAP))  # not from the reply
    sim.tick(sim.now + DRAIN_GAP)
    assert all(len(sim.queues[u]) == 1 for u in EIGHT)  # one long task on every engine
    assert not any(sim.core.held(u) for u in EIGHT)
    assert sim.core.packing_counts() == packing_counts(started=1, lapsed=1, stalled=1, unread=1)


def test_more_tasks_waiting_than_held_engines_keep_the_packing_until_burst_hold() -> None:
    """A backlog larger than the held engines is a burst's, most likely (its packing engines
    starved of CPU): it is not spread over the held engines DRAIN_GAP after the first task,
    but BURST_HOLD after it (the work resumed then: not BURST_HOLD after the last burst
    reply, which a burst that follows at once could not renew in time), and then one task each
    in turn, least loaded first."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()
    sim.now += BURST_GAP
    resumed = sim.now
    submit_many(sim, 9)  # one for each packing engine, five waiting for 4 held engines
    assert sim.core.next_deadline() == pytest.approx(resumed + BURST_HOLD)
    assert not dispatched_to(sim.tick(resumed + 2 * DRAIN_GAP))
    assert not dispatched_to(sim.tick(resumed - BURST_GAP + BURST_HOLD))
    released = dispatched_to(sim.tick(resumed + BURST_HOLD))
    assert released == ["e4", "e5", "e6", "e7", "e0"]  # the least loaded first
    assert sim.core.packing_counts() == ONE_LAPSE


def test_an_idle_packing_engine_that_answers_at_once_takes_the_tasks_that_waited() -> None:
    """A burst that comes in pieces (the client slower than the engines) stays packed: the
    tasks that waited for an idle packing engine's first reply go to it when it comes."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()
    sim.now += BURST_GAP
    submit_many(sim, 40)
    assert all(len(sim.queues[u]) == 1 for u in EIGHT[:4])
    assert all(sim.core.capacity(u) == 1 for u in EIGHT[:4])  # until it answers
    for uuid in EIGHT[:4]:
        actions = sim.finish(sim.queues[uuid][0])
        assert set(dispatched_to(actions)) == {uuid}  # filled up to its cap from the queue
    assert all(len(sim.queues[u]) == sim.core.capacity(u) > 1 for u in EIGHT[:4])
    assert not any(sim.queues[u] for u in EIGHT[4:])
    assert sim.core.held("e7")
    no_queued_task_has_a_free_engine(sim)


def test_an_unanswered_packing_engine_takes_no_more_while_others_that_answered_do() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.drain()
    sim.now += BURST_GAP
    submit_many(sim, 4)  # one for each idle packing engine
    sim.now += DRAIN_GAP * 1.5  # e0's task is long; the others answer theirs
    for uuid in EIGHT[1:4]:
        sim.finish(sim.queues[uuid][0])
    assert sim.core.capacity("e0") == 1 == sim.core.outstanding("e0")
    submit_many(sim, 12)
    assert len(sim.queues["e0"]) == 1
    assert all(len(sim.queues[u]) == sim.core.capacity(u) for u in EIGHT[1:4])  # the rest wait
    assert not any(sim.queues[u] for u in EIGHT[4:])
    assert sim.core.held("e7")
    no_queued_task_has_a_free_engine(sim)


def test_each_burst_reply_of_a_packing_engine_renews_the_packing() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    for _ in range(5):
        sim.now += BURST_HOLD * 0.6  # each reply comes before the lapse, and is a burst
        sim.finish(sim.queues["e0"][0])
        sim.finish(sim.queues["e0"][0])
        assert not dispatched_to(sim.tick(sim.now))
        assert sim.core.held("e5")


def test_the_first_burst_reply_of_a_packing_engine_starts_the_packing() -> None:
    """Not the burst rule's average, which rises only after a few burst replies: meanwhile
    leastload would fill every engine of the host."""
    sim = packed_sim()
    submit_many(sim, 2000)
    sim.now += APART
    sim.finish(sim.queues["e0"][0])  # a first reply is never a burst
    assert not sim.core.held("e4")
    sim.finish(sim.queues["e0"][0])  # the next one at once is
    assert sim.core.held("e4") and sim.core.capacity("e0") == 2  # its cap not raised yet


def test_replies_apart_do_not_renew_the_packing() -> None:
    """A packing engine that now answers longer tasks (replies apart) keeps answering, but
    not in bursts: the packing lapses BURST_HOLD after its last burst reply, and the held
    engines take the queue."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    last_burst = sim.now
    while sim.now < last_burst + BURST_HOLD:
        sim.now += APART
        sim.finish(sim.queues["e0"][0])
    assert set(dispatched_to(sim.tick(sim.now))) == set(EIGHT[4:])


def test_replies_of_held_engines_do_not_renew_the_packing() -> None:
    """A burst stuck on its packing engines (long tasks there) must not keep the others idle
    because they answered tiny tasks: only the packing engines' bursts count."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    start = sim.now
    targeted = [f"x{index}" for index in range(40)]
    for msg_id in targeted:
        sim.submit(msg_id, targets=frozenset(["e6"]))
    for _ in range(30):  # e6 answers tiny tasks back to back all along
        sim.now += BURST_HOLD / 50
        sim.finish(sim.queues["e6"][0])
    assert dispatched_to(sim.tick(start + BURST_HOLD))  # lapsed
    assert not sim.core.held("e5")


def test_tasks_that_must_go_to_a_held_engine_still_do() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    assert dispatched_to(sim.submit("pinned", targets=frozenset(["e6"]))) == ["e6"]
    assert dispatched_to(sim.submit("either", targets=frozenset(["e5", "e6"]))) == ["e5"]
    sim.finish("pinned")
    sim.submit("after-pinned", follow=Dependency(frozenset(["pinned"])))
    assert sim.running["after-pinned"] == "e6"
    assert sim.core.held("e6")
    no_queued_task_has_a_free_engine(sim)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_chooses_among_the_engines_not_held(policy: str) -> None:
    sim = packed_sim(policy)
    submit_many(sim, 2000)
    burst_until_packed(sim)
    for _ in range(60):
        uuid = random.Random(len(sim.log)).choice(EIGHT[:4])
        if sim.queues[uuid]:
            sim.finish(sim.queues[uuid][0])
    assert not any(sim.queues[u] for u in EIGHT[4:])


def test_engines_of_longer_tasks_are_never_packed() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    for _ in range(300):
        sim.now += APART
        sim.finish_next()
        assert not any(sim.core.held(u) for u in EIGHT)
    assert all(sim.queues[u] for u in EIGHT)


@pytest.mark.parametrize(
    "hosts",
    [
        {uuid: ("m", [0, 1]) for uuid in EIGHT[:4]},  # 4 engines on 2 cores: 2 per core
        {uuid: ("m", [index]) for index, uuid in enumerate(EIGHT)},  # each pinned to a core
        {uuid: (f"m{index % 4}", [0]) for index, uuid in enumerate(EIGHT)},  # 2 per machine
        {},  # engines that said nothing of their CPUs
    ],
    ids=["two-per-core", "pinned", "two-per-machine", "unknown"],
)
def test_hosts_not_oversubscribed_never_hold_an_engine(
    hosts: dict[str, tuple[str, list[int]]],
) -> None:
    sim = packed_sim(hosts=hosts)
    submit_many(sim, 2000)
    for _ in range(300):
        sim.finish_next()  # all at one time: every reply a burst
        assert not any(sim.core.held(u) for u in EIGHT)


def test_one_host_packing_holds_none_of_another_hosts_engines() -> None:
    hosts = dict(ON_TWO_CORES)
    hosts.update({"f0": ("other", [0, 1]), "f1": ("other", [0, 1])})
    sim = packed_sim(hosts=hosts)
    for uuid in ("f0", "f1"):
        sim.add(uuid)
    submit_many(sim, 2000)
    burst_until_packed(sim)
    assert not sim.core.held("f0") and not sim.core.held("f1")
    assert sim.queues["f0"] and sim.queues["f1"]


def test_when_a_packing_engine_leaves_the_next_one_packs_and_takes_tasks() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    actions = sim.remove("e1")  # its tasks are retried: on the packing engines, or queued
    assert not sim.core.held("e4")
    assert "e4" in dispatched_to(actions)
    assert sim.core.held("e5")
    no_queued_task_has_a_free_engine(sim)


def test_a_new_engine_of_a_packing_host_is_held_and_takes_nothing_queued() -> None:
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.hosts["late"] = ("m", [0, 1])
    assert not dispatched_to(sim.add("late"))
    assert sim.core.held("late")


def test_more_cores_let_more_engines_pack() -> None:
    """CPU ids are a machine's union: an engine reporting new ones raises the packing size."""
    sim = packed_sim()
    submit_many(sim, 2000)
    burst_until_packed(sim)
    sim.hosts["wide"] = ("m", [2, 3])  # 4 cores now: 8 of the 9 engines pack
    actions = sim.add("wide")
    assert set(dispatched_to(actions)) == set(EIGHT[4:])
    assert sim.core.held("wide")


def test_the_groups_forget_cpus_and_machines_with_their_engines() -> None:
    hosts = Hosts(2)
    engines = [EngineState(f"e{index}", index) for index in range(3)]
    hosts.add(engines[0], "m", [0])
    hosts.add(engines[1], "m", [1])
    hosts.add(engines[2], "n", [0])
    group = engines[0].group
    assert group is not None and sorted(group.cpus) == [0, 1]
    hosts.remove(engines[1])
    assert sorted(group.cpus) == [0] and engines[1].group is None
    hosts.remove(engines[0])
    hosts.remove(engines[2])
    assert not hosts._groups


@pytest.mark.parametrize("seed", range(16))
def test_random_schedules_with_packing_keep_every_invariant(seed: int) -> None:
    """Sim checks every action; replies come in bursts or apart, ticks come at random, engines
    come and go, tasks fail, retry, time out and name targets and dependencies."""
    rng = random.Random(seed)
    policy = POLICIES[seed % len(POLICIES)]
    clock = CpuClock()  # odd seeds: the core reads the engines' CPU time, starved or not
    core = SchedulerCore(
        policy,
        max_outstanding=rng.randint(1, 3),
        seed=seed,
        burst_prefetch=3,
        burst_packing=1,
        read_cpu=clock.read if seed % 2 else None,
    )
    pool = ("e0", "e1", "e2", "e3")
    hosts = {"e0": ("m", [0]), "e1": ("m", [0]), "e2": ("m", [0]), "e3": ("n", [0])}
    pids = {uuid: 100 + index for index, uuid in enumerate(pool)}
    clock.spend(list(pids.values()), 0.0, 0.0)
    sim = Sim(core, engines=pool, hosts=hosts, pids=pids)
    held = 0
    for step in range(800):
        bursts = step // 100 % 2 == 0
        roll = rng.random()
        if roll < 0.4:
            fields = random_task_fields(rng, list(sim.tasks)) if rng.random() < 0.3 else {}
            sim.submit(f"t{len(sim.tasks)}", **fields)
        elif roll < 0.9 and sim.running:
            sim.now += 0.0 if bursts else APART
            sim.finish(rng.choice(sorted(sim.running)), rng.random() < 0.9)
        elif roll < 0.93:  # in a burst, before the next reply; else past a lapse, or not
            ran, waited = rng.choice([(0.0, 0.0), (0.0001, 0.05), (0.05, 0.01)])
            clock.spend(list(pids.values()), ran, waited)
            sim.tick(sim.now + rng.random() * (BURST_GAP / 2 if bursts else 2 * BURST_HOLD))
        elif roll < 0.975:
            missing = [u for u in pool if u not in sim.engines]
            if missing:
                sim.add(rng.choice(missing))
        elif roll < 0.985 and sim.engines:  # seldom: a packing engine must get to burst
            sim.remove(rng.choice(sorted(sim.engines)))
        held += any(sim.core.held(u) for u in sim.engines)
        if rng.random() < 0.2:
            no_queued_task_has_a_free_engine(sim)
    finish_everything(sim, rng)
    assert len(sim.final) == len(sim.tasks) > 250
    assert held  # the schedule did hold engines
    counts = core.packing_counts()  # each lapse counted under exactly one reason
    assert counts["lapsed"] == sum(counts[reason] for reason in LAPSE_REASONS)


def test_packings_lapsing_together_release_their_engines_in_the_order_they_started() -> None:
    """The core is deterministic: the same calls give the same actions, whatever the ids of
    its objects."""
    hosts = {f"a{index}": ("first", [0]) for index in range(3)}
    hosts.update({f"b{index}": ("second", [0]) for index in range(3)})
    core = SchedulerCore(max_outstanding=1, burst_packing=1)
    sim = Sim(core, engines=["b0", "a0", "b1", "a1", "b2", "a2"], hosts=hosts)
    submit_many(sim, 200)
    for packing in ("b0", "a0"):  # b's machine starts packing first
        sim.finish(sim.queues[packing][0])
        sim.finish(sim.queues[packing][0])
    for uuid in ("a1", "a2", "b1", "b2"):
        sim.finish(sim.queues[uuid][0])  # held: nothing new for them
        assert core.held(uuid) and not sim.queues[uuid]
    released = dispatched_to(sim.tick(sim.now + BURST_HOLD))
    assert released == ["b1", "b2", "a1", "a2"]


# ------------------------------------------------------------ starved, not stuck


class CpuClock:
    """The engines' CPU time as ``read_cpu`` reads it (ns run, ns waited for a CPU), by pid:
    what the test says each engine did between two looks."""

    def __init__(self) -> None:
        self.times: dict[int, tuple[int, int]] = {}

    def read(self, pid: int) -> tuple[int, int] | None:
        return self.times.get(pid)

    def spend(self, pids: Sequence[int], ran: float, waited: float) -> None:
        for pid in pids:
            run, wait = self.times.get(pid, (0, 0))
            self.times[pid] = (run + int(ran * 1e9), wait + int(waited * 1e9))


PIDS = {uuid: 1000 + index for index, uuid in enumerate(EIGHT)}
PACKING_PIDS = [PIDS[uuid] for uuid in EIGHT[:4]]
SCHEDULER_PID = 999


def starving_sim() -> tuple[Sim, CpuClock, float]:
    """A packed burst whose packing engines then fall silent with tasks queued (the lapse due
    BURST_HOLD after their last burst reply), the core able to read their CPU time and its
    own: the simulator, the clock, and when the lapse is due."""
    clock = CpuClock()
    clock.spend([*PIDS.values(), SCHEDULER_PID], 0.0, 0.0)
    core = SchedulerCore(
        max_outstanding=2,
        burst_prefetch=4,
        burst_packing=2,
        seed=1,
        read_cpu=clock.read,
        own_pid=SCHEDULER_PID,
    )
    sim = Sim(core, engines=EIGHT, hosts=ON_TWO_CORES, pids=PIDS)
    submit_many(sim, 2000)
    burst_until_packed(sim)
    return sim, clock, sim.now + BURST_HOLD


def test_a_lapse_of_starved_packing_engines_is_put_off() -> None:
    """Packing engines that hold tasks, waited for a CPU and hardly ran are starved, not stuck:
    releasing the held engines would spread the backlog over cold engines waiting for the
    same cores. The due lapse looks for PROBE_WINDOW, then is put off BURST_HOLD at a time;
    a burst reply renews the packing as ever."""
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))  # the first look
    assert sim.core.next_deadline() == pytest.approx(due + PROBE_WINDOW)
    clock.spend(PACKING_PIDS, ran=0.0005, waited=0.015)
    assert not dispatched_to(sim.tick(due + PROBE_WINDOW))
    assert sim.core.packing_counts()["starved"] == 1
    assert sim.core.next_deadline() == pytest.approx(due + PROBE_WINDOW + BURST_HOLD)
    assert all(sim.core.held(u) for u in EIGHT[4:])
    clock.spend(PACKING_PIDS, ran=0.001, waited=0.09)
    assert not dispatched_to(sim.tick(due + PROBE_WINDOW + BURST_HOLD))
    assert sim.core.packing_counts()["starved"] == 2
    # they get the CPU: burst replies renew the packing and the looks are forgotten
    sim.now = due + PROBE_WINDOW + BURST_HOLD + 0.01
    for _ in range(2):  # each one's second reply is a burst reply
        for uuid in EIGHT[:4]:
            assert set(dispatched_to(sim.finish(sim.queues[uuid][0]))) <= set(EIGHT[:4])
    renewed = sim.now
    assert not dispatched_to(sim.tick(sim.core.next_deadline() or 0.0))  # the look due before
    assert sim.core.next_deadline() == pytest.approx(renewed + BURST_HOLD)
    assert sim.core.packing_counts()["lapsed"] == 0
    no_queued_task_has_a_free_engine(sim)


def test_a_packing_engine_that_runs_without_replying_is_stuck_and_the_packing_lapses() -> None:
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))
    clock.spend(PACKING_PIDS[:1], ran=LONG_RUN / 1e9, waited=0.001)  # a long task on one
    clock.spend(PACKING_PIDS[1:], ran=0.0, waited=0.02)
    released = dispatched_to(sim.tick(due + PROBE_WINDOW))
    assert sorted(set(released)) == EIGHT[4:]
    assert sim.core.packing_counts() == packing_counts(started=1, lapsed=1, long=1)
    no_queued_task_has_a_free_engine(sim)


def test_packing_engines_that_neither_run_nor_wait_are_blocked_and_the_packing_lapses() -> None:
    """Engines asleep in their tasks (a sleep, I/O) leave the cores to others: the held
    engines take the queue, PROBE_WINDOW after the lapse was due."""
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))
    clock.spend(PACKING_PIDS, ran=0.0, waited=0.0)
    assert sorted(set(dispatched_to(sim.tick(due + PROBE_WINDOW)))) == EIGHT[4:]
    assert sim.core.packing_counts() == packing_counts(started=1, lapsed=1, blocked=1)


def test_idle_packing_engines_of_a_scheduler_kept_from_a_cpu_keep_the_packing() -> None:
    """Engines that neither ran nor waited while the scheduler itself waited for a CPU longer
    than it ran: their tasks may not have left the scheduler's I/O thread yet, so they are
    starved through it and the lapse is put off; once the scheduler runs freely, the same
    silence is taken for engines blocked in their tasks and the packing lapses."""
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))
    clock.spend(PACKING_PIDS, ran=0.0, waited=0.0)
    clock.spend([SCHEDULER_PID], ran=0.002, waited=0.015)
    assert not dispatched_to(sim.tick(due + PROBE_WINDOW))
    assert sim.core.packing_counts()["starved"] == 1
    assert all(sim.core.held(u) for u in EIGHT[4:])
    clock.spend(PACKING_PIDS, ran=0.0, waited=0.0)
    clock.spend([SCHEDULER_PID], ran=0.002, waited=0.001)
    released = dispatched_to(sim.tick(due + PROBE_WINDOW + BURST_HOLD))
    assert sorted(set(released)) == EIGHT[4:]
    assert sim.core.packing_counts() == packing_counts(started=1, lapsed=1, starved=1, blocked=1)


def test_a_scheduler_whose_own_cpu_cannot_be_read_takes_silent_engines_as_blocked() -> None:
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))
    del clock.times[SCHEDULER_PID]
    clock.spend(PACKING_PIDS, ran=0.0, waited=0.0)
    assert sorted(set(dispatched_to(sim.tick(due + PROBE_WINDOW)))) == EIGHT[4:]
    assert sim.core.packing_counts()["starved"] == 0


def test_a_starved_packing_lapses_at_the_limit() -> None:
    """No task waits on starved engines without bound: STARVED_LIMIT after the first look the
    packing lapses whatever the looks find."""
    sim, clock, due = starving_sim()
    sim.tick(due)
    now = due
    while sim.core.held("e7"):
        now = sim.core.next_deadline() or pytest.fail("no look is due")
        clock.spend(PACKING_PIDS, ran=0.0, waited=0.05)
        sim.tick(now)
    assert now == pytest.approx(due + STARVED_LIMIT, abs=BURST_HOLD)
    assert now >= due + STARVED_LIMIT
    assert sim.core.packing_counts()["lapsed"] == 1
    assert sim.core.packing_counts()["at_limit"] == 1
    no_queued_task_has_a_free_engine(sim)


def test_a_packing_engine_whose_cpu_cannot_be_read_lapses_at_once() -> None:
    """An engine elsewhere (no pid), or one whose CPU time is gone: the lapse is taken when
    due, as without read_cpu."""
    sim, clock, due = starving_sim()
    del clock.times[PACKING_PIDS[2]]
    assert sorted(set(dispatched_to(sim.tick(due)))) == EIGHT[4:]
    assert sim.core.packing_counts() == ONE_LAPSE


def test_a_stalled_lapse_of_starved_engines_is_put_off_too() -> None:
    """The DRAIN_GAP lapse (every packing engine got its task while idle and none replied)
    looks at them first as well: starved, it is put off."""
    sim, clock, _ = starving_sim()
    sim.drain()
    sim.tick(sim.now + BURST_HOLD)  # kept through the pause
    sim.now += 5.0
    resumed = sim.now
    submit_many(sim, 6)  # one on each packing engine (unanswered), two wait
    assert sim.core.next_deadline() == pytest.approx(resumed + DRAIN_GAP)
    assert not dispatched_to(sim.tick(resumed + DRAIN_GAP))
    clock.spend(PACKING_PIDS, ran=0.0002, waited=0.02)
    assert not dispatched_to(sim.tick(resumed + DRAIN_GAP + PROBE_WINDOW))
    assert sim.core.packing_counts()["starved"] == 1
    assert all(sim.core.held(u) for u in EIGHT[4:])


def test_packing_engines_that_reply_slowly_on_a_busy_host_keep_the_packing() -> None:
    """Replies too far apart to be a burst's, from engines that waited for a CPU longer than
    they ran: their replies are slowed by the busy host, not by long tasks (ran LONG_RUN and
    more, but replied since the previous look)."""
    sim, clock, due = starving_sim()
    assert not dispatched_to(sim.tick(due))
    sim.now = due + PROBE_WINDOW / 2
    for uuid in EIGHT[:4]:  # one reply each, long after their last: not a burst reply
        assert set(dispatched_to(sim.finish(sim.queues[uuid][0]))) <= set(EIGHT[:4])
    clock.spend(PACKING_PIDS, ran=2 * LONG_RUN / 1e9, waited=0.05)
    assert not dispatched_to(sim.tick(due + PROBE_WINDOW))
    assert sim.core.packing_counts()["starved"] == 1
    assert all(sim.core.held(u) for u in EIGHT[4:])
    # the same CPU time without a reply since the last look: a long task, the packing lapses
    clock.spend(PACKING_PIDS, ran=2 * LONG_RUN / 1e9, waited=0.05)
    released = dispatched_to(sim.tick(due + PROBE_WINDOW + BURST_HOLD))
    assert sorted(set(released)) == EIGHT[4:]
