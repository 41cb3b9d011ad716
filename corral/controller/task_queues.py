"""The load-balancing scheduler's queued tasks (ready to run, waiting for a free slot), and
its timed ones.

A task any engine may run waits in one heap; a task only some engines may run (targets,
``follow``, engines that refused it) waits in one heap per engine it may go to, so a freed
engine looks at two heap tops, never at tasks it cannot take. Entries are ``(-priority, seq,
record)``: higher priority first, then FIFO. A task queued for several engines is taken by the
first one: its other entries go stale (the record's ``seq`` or state no longer match) and are
dropped lazily, when they reach a heap top or when a heap doubles in size.

Tasks with a ``timeout`` are also kept by deadline (:class:`Deadlines`), until they are first
dispatched, or while they wait for an engine they have not failed on (see the rules in
:mod:`corral.controller.scheduling`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from corral.controller.scheduling_state import (
    DONE,
    EngineState,
    QueueEntry,
    TaskRecord,
    is_current,
)

COMPACT_FROM = 64  # a per-engine heap this long is cleaned of stale entries at each doubling


class TaskQueues:
    """Queued tasks by the engines that may take them; see the module docstring."""

    def __init__(self) -> None:
        self._any: list[QueueEntry] = []  # tasks any engine may run
        self._for: dict[str, list[QueueEntry]] = {}  # the others, per allowed engine uuid

    def __len__(self) -> int:
        """Entries held, stale ones included (for tests of bounded bookkeeping)."""
        return len(self._any) + sum(map(len, self._for.values()))

    def push(self, record: TaskRecord, seq: int, uuids: Iterable[str] | None) -> None:
        """Queue ``record`` (its ``seq`` already set to ``seq``) for the engines ``uuids``,
        or for any engine if None."""
        entry = (-record.task.priority, seq, record)
        if uuids is None:
            heapq.heappush(self._any, entry)
            return
        for uuid in uuids:
            queue = self._for.get(uuid)
            if queue is None:
                queue = self._for[uuid] = []
            heapq.heappush(queue, entry)
            if len(queue) >= COMPACT_FROM and not len(queue) & (len(queue) - 1):
                # at powers of two, so O(log n) amortized: lest a queue for a uuid that never
                # registers grow with every task that names it
                current = [queued for queued in queue if is_current(queued)]
                heapq.heapify(current)
                queue[:] = current

    def waiting_for_any(self) -> int:
        """About how many tasks any engine may run are queued: none when it says 0 (stale
        entries at the top are dropped first; others, rare, may still be counted)."""
        queue_any = self._any
        while queue_any and not is_current(queue_any[0]):
            heapq.heappop(queue_any)
        return len(queue_any)

    def pop_for(self, engine: EngineState) -> TaskRecord | None:
        """The next queued task ``engine`` may run (highest priority first, oldest first among
        equals), taken off the queues; None if there is none. Stale entries met on the way
        are dropped. A held engine (:mod:`corral.controller.packing`) takes only the tasks
        queued for it, none that any engine may run."""
        queue_any = self._any if not engine.held else []
        queue_own = self._for.get(engine.uuid)
        heappop = heapq.heappop
        while queue_any and not is_current(queue_any[0]):
            heappop(queue_any)
        if queue_own is not None:
            while queue_own and not (is_current(queue_own[0]) and queue_own[0][2].allows(engine)):
                heappop(queue_own)
            if queue_own and (not queue_any or queue_own[0][:2] < queue_any[0][:2]):
                record = heappop(queue_own)[2]
                if not queue_own:
                    del self._for[engine.uuid]
                return record
            if not queue_own:
                del self._for[engine.uuid]
        return heappop(queue_any)[2] if queue_any else None

    def drop_pinned_to(self, engine: EngineState) -> list[TaskRecord]:
        """``engine`` left: narrow the ``follow`` placement of the tasks queued for it to the
        live engines, and return those left with none (the caller fails them)."""
        queue = self._for.pop(engine.uuid, None)
        if not queue:
            return []
        kept: list[QueueEntry] = []
        stranded: list[TaskRecord] = []
        for entry in queue:
            record = entry[2]
            if not is_current(entry):
                continue
            if record.pinned is None:
                kept.append(entry)
                continue
            record.pinned = frozenset(e for e in record.pinned if e.alive)
            if not record.pinned:
                stranded.append(record)
        if kept:
            heapq.heapify(kept)
            self._for[engine.uuid] = kept
        return stranded


class Deadlines:
    """The deadlines of timed tasks, earliest first, and the tasks that failed on every
    engine that may run them and, retries left, wait for a new engine until theirs
    (:attr:`exhausted`: few, so scanned when an engine registers)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TaskRecord]] = []
        self.exhausted: dict[str, TaskRecord] = {}

    def __len__(self) -> int:
        """Deadlines held, of finished tasks too until they reach the top."""
        return len(self._heap)

    def add(self, deadline: float, seq: int, record: TaskRecord) -> None:
        heapq.heappush(self._heap, (deadline, seq, record))

    def timed(self, record: TaskRecord) -> bool:
        """Whether the task's deadline still applies: it never ran, or it waits for an engine
        it has not failed on."""
        if record.state == DONE:
            return False
        return not record.attempts or record.task.msg_id in self.exhausted

    def due(self, now: float) -> Iterator[TaskRecord]:
        """The timed tasks whose deadline is at or before ``now``, each taken off once."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            record = heapq.heappop(heap)[2]
            if self.timed(record):
                yield record

    def earliest(self) -> float | None:
        """The earliest deadline that still applies (those that no longer do are dropped)."""
        heap = self._heap
        while heap and not self.timed(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None
