"""The scheduler's engines with a free slot, and the one its policy picks, in O(log n).

Picking by scanning every free engine (``min`` over them) cost O(engines) per task: with 64
engines it was most of the scheduler core's time per task. For the ``leastload`` and ``lru``
policies :class:`FreeEngines` keeps a heap of ``(key, sequence, engine)`` entries beside the
mapping, and pushes a new entry whenever an engine's key changes (it got a task, a slot was
freed). Entries whose engine left or whose key changed since are stale and dropped when they
come to the top; the heap is rebuilt when stale entries outnumber the engines, so it stays
O(engines). The engine picked is exactly the one ``min(engines, key)`` would pick: keys are
unique (every engine's ``last_used`` is a distinct tick of the dispatch clock).

A *held* engine (:attr:`EngineState.held`, a burst packed on other engines of its host:
:mod:`corral.controller.packing`) is free, in the mapping, for the tasks that must go where it
is, but never :meth:`FreeEngines.best`: it has no heap entry while held, and gets one when it is
put again once released.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import ValuesView
from typing import Final

from corral.controller.scheduling_state import EngineState

#: Policies whose choice among all free engines is the minimum of a key (see :func:`_key`).
ORDERED_POLICIES: Final = frozenset({"leastload", "lru"})


def _key(policy: str, engine: EngineState) -> tuple[int, ...]:
    if policy == "leastload":
        return (engine.load, engine.last_used)
    return (engine.last_used,)


class FreeEngines:
    """Registered engines below their cap, by uuid; :meth:`best` for an ordered policy."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.ordered = policy in ORDERED_POLICIES
        self._engines: dict[str, EngineState] = {}
        self._heap: list[tuple[tuple[int, ...], int, EngineState]] = []
        self._sequence = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def __contains__(self, engine_uuid: str) -> bool:
        return engine_uuid in self._engines

    def values(self) -> ValuesView[EngineState]:
        return self._engines.values()

    def put(self, engine: EngineState) -> None:
        """``engine`` is free (again), or its load or last use changed while free."""
        self._engines[engine.uuid] = engine
        if self.ordered and not engine.held:
            entry = (_key(self.policy, engine), next(self._sequence), engine)
            heapq.heappush(self._heap, entry)
            self._bound()

    def remove(self, engine_uuid: str) -> None:
        """The engine is full, or gone; unknown uuids are ignored."""
        self._engines.pop(engine_uuid, None)
        self._bound()

    def _bound(self) -> None:
        if len(self._heap) > 2 * len(self._engines) + 64:
            self._rebuild()

    def best(self) -> EngineState | None:
        """The free engine the (ordered) policy picks, None if there is none; never a held
        one."""
        heap = self._heap
        engines = self._engines
        policy = self.policy
        while heap:
            key, _, engine = heap[0]
            if (
                engines.get(engine.uuid) is engine
                and key == _key(policy, engine)
                and not engine.held
            ):
                return engine
            heapq.heappop(heap)
        return None

    def _rebuild(self) -> None:
        """Only the current entries, one per free engine not held."""
        self._heap = [
            (_key(self.policy, engine), next(self._sequence), engine)
            for engine in self._engines.values()
            if not engine.held
        ]
        heapq.heapify(self._heap)
