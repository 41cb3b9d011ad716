"""FreeEngines picks exactly what a scan of every free engine would, whatever happened before."""

from __future__ import annotations

import random

import pytest

from corral.controller.free_engines import FreeEngines
from corral.controller.scheduling import SchedulerCore
from corral.controller.scheduling_state import Dispatch, EngineState, Task, choose_engine
from corral.protocol.dependency import Dependency


@pytest.mark.parametrize("policy", ["leastload", "lru"])
@pytest.mark.parametrize("seed", range(5))
def test_best_is_the_minimum_a_scan_finds(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    cap = 4
    free = FreeEngines(policy)
    engines: dict[str, EngineState] = {}
    clock = 0
    for step in range(3000):
        choice = rng.random()
        if choice < 0.05 or not engines:  # an engine registers (a uuid may come back)
            uuid = f"engine-{rng.randrange(40)}"
            clock += 1
            engine = EngineState(uuid, -1_000_000 + clock)
            engines[uuid] = engine
            free.put(engine)
        elif choice < 0.08:  # one leaves
            uuid = rng.choice(sorted(engines))
            del engines[uuid]
            free.remove(uuid)
        elif choice < 0.55:  # the best one gets a task
            engine_or_none = free.best()
            if engine_or_none is None:
                continue
            engine = engine_or_none
            clock += 1
            engine.load += 1
            engine.last_used = clock
            if engine.load >= cap:
                free.remove(engine.uuid)
            else:
                free.put(engine)
        else:  # a busy engine finishes one
            busy = [e for e in engines.values() if e.load]
            if not busy:
                continue
            engine = rng.choice(busy)
            engine.load -= 1
            free.put(engine)
        below_cap = [e for e in engines.values() if e.load < cap]
        assert sorted(e.uuid for e in free.values()) == sorted(e.uuid for e in below_cap)
        expected = choose_engine(policy, rng, below_cap) if below_cap else None
        assert free.best() is expected, f"step {step}"
        assert len(free._heap) <= 2 * len(free) + 64  # stale entries stay bounded


def test_sixty_four_engines_share_the_work_as_before() -> None:
    """The core with many engines still spreads one-at-a-time tasks over all of them, least
    recently used first (leastload with every load at 0 or 1)."""
    core = SchedulerCore("leastload", max_outstanding=16, seed=0)
    for index in range(64):
        core.add_engine(f"engine-{index:02d}")
    used = []
    for index in range(128):
        task = Task(f"task-{index}", Dependency.from_wire(None), Dependency.from_wire(None))
        (dispatch,) = core.submit(task, 0.0)
        assert isinstance(dispatch, Dispatch)
        used.append(dispatch.engine_uuid)
        core.task_finished(dispatch.msg_id, dispatch.engine_uuid, True, 0.0)
    assert used[:64] == [f"engine-{index:02d}" for index in range(64)]
    assert used[64:] == used[:64]
