"""Where a ready task goes: an engine chosen now, or its place in the queue.

A mixin of :class:`corral.controller.scheduling.SchedulerCore`, sans-I/O like it (the rules are
in that module's doc): choosing among the free engines by the policy (:meth:`Placement._pick`),
dispatching (:meth:`Placement._dispatch`), refilling a freed engine from the queue heads
(:meth:`Placement._fill`) or engines a packing released (:meth:`Placement._release_held`), and
the retries of a failed task, which avoid the engines it failed on.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from corral.controller.scheduling_state import (
    BURST_HOLD,
    QUEUED,
    RUNNING,
    Action,
    Dispatch,
    EngineState,
    Finished,
    Redelivery,
    TaskRecord,
    choose_engine,
)
from corral.errors import RemoteError, TaskTimeout

if TYPE_CHECKING:
    from corral.controller.free_engines import FreeEngines
    from corral.controller.packing import Hosts
    from corral.controller.task_queues import Deadlines, TaskQueues

__all__ = ["Placement"]


class Placement:
    """Engine choice and dispatch for a SchedulerCore (see the module doc)."""

    # provided by SchedulerCore (declared here: the compiled class owns its attributes)
    policy: str
    _rng: random.Random
    _now: float
    _engines: dict[str, EngineState]
    _free: FreeEngines
    _hosts: Hosts
    _queued: TaskQueues
    _deadlines: Deadlines
    _unreachable: Redelivery
    _running: int
    _seq: int
    _clock: int

    def _cap(self, engine: EngineState) -> int:
        raise NotImplementedError

    def _mark_free(self, engine: EngineState) -> None:
        raise NotImplementedError

    def _settle(self, finished: Finished, now: float | None, actions: list[Action]) -> None:
        raise NotImplementedError

    def _fail(
        self,
        record: TaskRecord,
        error: type[RemoteError],
        reason: str,
        actions: list[Action],
        finished: Finished,
    ) -> None:
        raise NotImplementedError

    def _untried_engine(self, record: TaskRecord, failed_on: str) -> bool:
        avoid = record.avoid | {failed_on}
        return any(
            record.allows(engine) and uuid not in avoid for uuid, engine in self._engines.items()
        )

    def _wait_for_new_engine(
        self, record: TaskRecord, failed_on: str, deadline: float, now: float, actions: list[Action]
    ) -> None:
        """A retry with a timeout and no engine it has not failed on: wait for a new one until
        the deadline (TaskTimeout at once if it has passed)."""
        record.retries_left -= 1
        record.avoid = record.avoid | {failed_on}
        if now >= deadline:
            finished: Finished = deque()
            self._fail(record, TaskTimeout, self._exhausted_reason(record), actions, finished)
            self._settle(finished, now, actions)
            return
        record.state = QUEUED
        self._seq += 1
        record.seq = self._seq
        self._deadlines.exhausted[record.task.msg_id] = record
        self._deadlines.add(deadline, self._seq, record)

    def _exhausted_reason(self, record: TaskRecord) -> str:
        return (
            f"task {record.task.msg_id} timed out after {record.task.timeout} s: it failed on "
            f"each of the {len(record.avoid)} engine(s) that may run it, and a retry does not "
            "go back to an engine it failed on"
        )

    def _retry(self, record: TaskRecord, failed_on: str, actions: list[Action]) -> None:
        record.retries_left -= 1
        record.avoid = record.avoid | {failed_on}
        self._enqueue_or_dispatch(record, actions)

    def _enqueue_or_dispatch(self, record: TaskRecord, actions: list[Action]) -> None:
        record.state = QUEUED
        engine = self._pick(record)
        if engine is not None:
            self._dispatch(record, engine, actions)
            return
        self._seq += 1
        record.seq = self._seq
        uuids: Iterable[str] | None
        if record.pinned is not None:
            uuids = [e.uuid for e in record.pinned]
        elif record.task.targets is not None:
            uuids = record.task.targets
        elif record.refused:
            uuids = [uuid for uuid in self._engines if uuid not in record.refused]
        else:
            uuids = None
        self._queued.push(record, self._seq, uuids)

    def _pick(self, record: TaskRecord) -> EngineState | None:
        """A free engine the task may run on, chosen by the policy; None if there is none."""
        free = self._free
        if not free:
            return None
        if record.pinned is None and record.task.targets is None and not record.avoid:
            if free.ordered:
                best = free.best()
                # an engine whose raised cap lapsed (see _cap) is full until its next reply
                while best is not None and best.load >= self._cap(best):
                    free.remove(best.uuid)
                    best = free.best()
                return best
            candidates = [e for e in free.values() if e.load < self._cap(e) and not e.held]
            return choose_engine(self.policy, self._rng, candidates) if candidates else None
        candidates = [e for e in free.values() if record.allows(e) and e.load < self._cap(e)]
        if record.pinned is None and record.task.targets is None and not record.refused:
            # a retry any engine may run: queued for all (TaskQueues), so never a held engine
            candidates = [e for e in candidates if not e.held]
        if record.avoid:
            fresh = [e for e in candidates if e.uuid not in record.avoid]
            candidates = fresh or candidates
        return choose_engine(self.policy, self._rng, candidates) if candidates else None

    def _dispatch(self, record: TaskRecord, engine: EngineState, actions: list[Action]) -> None:
        msg_id = record.task.msg_id
        if self._unreachable.entries:
            self._unreachable.discard(msg_id)  # this Dispatch replaces any pending retry
        record.state = RUNNING
        record.engine = engine
        engine.running[msg_id] = record
        if not engine.load:
            if self._now - engine.last_reply > BURST_HOLD:  # after a pause the next tasks may
                engine.runs_long = True  # be long ones: one at a time until a short reply
            engine.busy_since = self._now
            if engine.packs:  # its host's work may resume after a pause (packing.Hosts.woke)
                self._hosts.woke(engine, self._now)
        engine.load += 1
        self._running += 1
        self._clock += 1
        engine.last_used = self._clock
        if engine.load >= self._cap(engine):
            self._free.remove(engine.uuid)
        else:
            self._free.put(engine)  # its load and last use changed
        actions.append(Dispatch(msg_id, engine.uuid, record.attempts))
        record.attempts += 1

    def _fill(self, engine: EngineState, actions: list[Action]) -> bool:
        """Give a freed (or new) engine the queued tasks it may run, highest priority first and
        oldest first among equals, up to its cap. Whether it gave any (each dispatch sets the
        engine's place among the free ones)."""
        given = False
        cap = self._cap(engine)
        pop_for = self._queued.pop_for
        while engine.load < cap:
            record = pop_for(engine)
            if record is None:
                break
            self._dispatch(record, engine, actions)
            given = True
        return given

    def _release_held(self, engines: list[EngineState], actions: list[Action]) -> None:
        """Engines no longer held or packing (:mod:`.packing`) are free for any task again:
        fill them, each queued task to the least loaded of them in turn (not each up to its
        cap in turn: long tasks that waited for an unanswered packing would queue behind each
        other on the first ones)."""
        turns = []
        for index, engine in enumerate(engines):
            if engine.alive:
                self._mark_free(engine)
                turns.append((engine.load, index, engine))
        heapq.heapify(turns)
        pop_for = self._queued.pop_for
        while turns:
            _, index, engine = turns[0]
            record = pop_for(engine) if engine.load < self._cap(engine) else None
            if record is None:
                heapq.heappop(turns)
                continue
            self._dispatch(record, engine, actions)
            heapq.heapreplace(turns, (engine.load, index, engine))

    def _has_eligible_engine(self, record: TaskRecord) -> bool:
        if record.pinned is not None:
            return any(engine.alive for engine in record.pinned)
        targets = record.task.targets
        if targets is None:
            return bool(self._engines)
        return any(uuid in self._engines for uuid in targets)
