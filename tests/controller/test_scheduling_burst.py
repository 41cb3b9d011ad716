"""The scheduler core's prefetch for engines that answer in bursts (``burst_prefetch``): an
engine running tasks far shorter than a millisecond may hold more than ``max_outstanding``,
engines of longer tasks never do, and the cap comes back down when the tasks get longer."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from corral.controller.scheduling import POLICIES, SchedulerCore
from corral.controller.scheduling_state import BURST_GAP, BURST_HOLD, Action, Dispatch
from tests.controller.test_scheduling import (
    Sim,
    finish_everything,
    no_queued_task_has_a_free_engine,
    random_task_fields,
)

APART = 10 * BURST_GAP  # between two replies of tasks that are not short


def submit_many(sim: Sim, count: int) -> None:
    for _ in range(count):
        sim.submit(f"t{len(sim.tasks)}")


def reply_oldest(sim: Sim, uuid: str, gap: float) -> None:
    """``uuid`` answers its oldest task ``gap`` seconds after the previous reply."""
    sim.now += gap
    sim.finish(sim.queues[uuid][0])


def test_burst_prefetch_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="burst_prefetch"):
        SchedulerCore(burst_prefetch=0)


def test_an_engine_answering_in_bursts_may_hold_more() -> None:
    sim = Sim(SchedulerCore(max_outstanding=2, burst_prefetch=4), engines=["e1"])
    submit_many(sim, 40)
    assert sim.core.outstanding("e1") == 2 and sim.core.capacity("e1") == 2
    reply_oldest(sim, "e1", APART)  # a first reply is never a burst
    for _ in range(5):  # most recent replies must have come in a burst, not one or two
        reply_oldest(sim, "e1", 0.0)
        assert sim.core.capacity("e1") == 2
    reply_oldest(sim, "e1", 0.0)
    assert sim.core.capacity("e1") == 8
    assert sim.core.outstanding("e1") == 8  # filled from the queue at once


def test_engines_of_longer_tasks_keep_max_outstanding() -> None:
    sim = Sim(SchedulerCore(max_outstanding=2, burst_prefetch=4), engines=["e1", "e2"])
    submit_many(sim, 60)
    for index in range(50):
        reply_oldest(sim, "e1" if index % 2 else "e2", APART / 2)
        assert sim.core.capacity("e1") == sim.core.capacity("e2") == 2
        assert sim.core.outstanding("e1") == sim.core.outstanding("e2") == 2


def test_the_cap_comes_back_down_when_replies_come_apart() -> None:
    sim = Sim(SchedulerCore(max_outstanding=2, burst_prefetch=4), engines=["e1"])
    submit_many(sim, 100)
    reply_oldest(sim, "e1", APART)
    while sim.core.capacity("e1") == 2:
        reply_oldest(sim, "e1", 0.0)
    assert sim.core.outstanding("e1") == 8
    while sim.core.capacity("e1") == 8:
        reply_oldest(sim, "e1", APART)
    # above its cap now: no task is sent to it until it holds fewer than max_outstanding
    while sim.core.outstanding("e1") > 2:
        before = len(sim.log)
        reply_oldest(sim, "e1", APART)
        assert not [a for a in sim.log[before:] if isinstance(a, Dispatch)]
    reply_oldest(sim, "e1", APART)
    assert sim.core.outstanding("e1") == 2  # refilled to max_outstanding only


def test_after_a_pause_an_engine_takes_max_outstanding_until_it_answers_again() -> None:
    """Tasks submitted after a pause may be long ones: an engine whose last reply is older
    than BURST_HOLD takes max_outstanding of them; its next reply in a burst restores its cap."""
    sim = Sim(SchedulerCore(max_outstanding=2, burst_prefetch=4), engines=["e1"])
    submit_many(sim, 8)
    reply_oldest(sim, "e1", APART)
    while sim.core.capacity("e1") == 2:
        reply_oldest(sim, "e1", 0.0)
    sim.drain()
    sim.now += BURST_HOLD + APART  # the core learns the time from the next event
    submit_many(sim, 10)
    assert sim.core.capacity("e1") == 2
    assert sim.core.outstanding("e1") == 2
    reply_oldest(sim, "e1", 0.0)  # a burst again (its burstiness was kept)
    assert sim.core.capacity("e1") == 8
    assert sim.core.outstanding("e1") == 8


def test_leastload_still_sends_a_task_to_the_least_loaded_engine() -> None:
    """A bursty engine with room gets no task while another engine holds fewer."""
    sim = Sim(SchedulerCore(max_outstanding=2, burst_prefetch=4), engines=["fast", "slow"])
    submit_many(sim, 4)
    sim.now += APART
    while sim.core.capacity("fast") == 2:
        reply_oldest(sim, "fast", 0.0)
        submit_many(sim, 1)
    assert sim.core.outstanding("fast") == sim.core.outstanding("slow") == 2
    reply_oldest(sim, "slow", APART)
    assert dispatches_of(sim.submit("a")) == ["slow"]  # it holds 1, the bursty engine 2
    assert dispatches_of(sim.submit("b")) == ["fast"]  # slow is full: fast has room
    assert dispatches_of(sim.submit("c")) == ["fast"]


def dispatches_of(actions: Sequence[Action]) -> list[str]:
    return [a.engine_uuid for a in actions if isinstance(a, Dispatch)]


@pytest.mark.parametrize("seed", range(16))
def test_random_schedules_with_burst_prefetch_keep_every_invariant(seed: int) -> None:
    """Sim checks every action (no Dispatch above an engine's cap, none while a ready task
    has an engine with room, one outcome per task); replies come at random gaps, so caps go
    up and down while engines come and go and tasks fail, retry and time out."""
    rng = random.Random(seed)
    policy = POLICIES[seed % len(POLICIES)]
    core = SchedulerCore(policy, max_outstanding=rng.randint(1, 3), seed=seed, burst_prefetch=3)
    sim = Sim(core, engines=("e0", "e1", "e2", "e3"))
    raised = 0
    for step in range(800):
        bursts = step // 100 % 2 == 0  # phases of short tasks, then of longer ones
        roll = rng.random()
        if roll < 0.4:
            sim.submit(f"t{len(sim.tasks)}", **random_task_fields(rng, list(sim.tasks)))
        elif roll < 0.9 and sim.running:
            sim.now += 0.0 if bursts and rng.random() < 0.95 else APART
            sim.finish(rng.choice(sorted(sim.running)), rng.random() < 0.9)
        elif roll < 0.93 and not bursts:
            sim.tick(sim.now + rng.random())
        elif roll < 0.97:
            missing = [u for u in ("e0", "e1", "e2", "e3") if u not in sim.engines]
            if missing:
                sim.add(rng.choice(missing))
        elif sim.engines:
            sim.remove(rng.choice(sorted(sim.engines)))
        raised += any(sim.core.capacity(u) > core.max_outstanding for u in sim.engines)
        if rng.random() < 0.2:
            no_queued_task_has_a_free_engine(sim)
    finish_everything(sim, rng)
    assert len(sim.final) == len(sim.tasks) > 250
    assert raised  # the schedule did exercise raised caps
