"""The load-balancing scheduler's queued tasks (ready to run, waiting for a free slot), and
its timed ones.

A task any engine may run waits in one FIFO per priority; a task only some engines may run
(targets, ``follow``, engines that refused it) waits in one heap per engine it may go to, so a
freed engine looks at two queue heads, never at tasks it cannot take. Entries are
``(-priority, seq, record)``: higher priority first, then FIFO. A task queued for several
engines is taken by the first one: its other entries go stale (the record's ``seq`` or state no
longer match) and are dropped lazily, when they reach a queue head or when a heap doubles in
size.

Every entry is pushed with a ``seq`` above all before it (the core counts them), so the
entries of one priority arrive in their order: the tasks any engine may run (nearly all of a
load-balanced burst) wait in a ``deque`` per priority, taken from its left in O(1), rather
than in one heap whose every pop sifts a tuple through its depth (about 1 us a task with
thousands queued). Only the priorities present are kept in a heap of their own.

Tasks with a ``timeout`` are also kept by deadline (:class:`Deadlines`), until they are first
dispatched, or while they wait for an engine they have not failed on (see the rules in
:mod:`corral.controller.scheduling`).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final

from corral.controller.scheduling_state import (
    DONE,
    EngineState,
    QueueEntry,
    TaskRecord,
    is_current,
)

COMPACT_FROM: Final = 64  # a per-engine heap this long is cleaned of stale entries at each doubling


def _seq_of(entry: QueueEntry) -> int:
    return entry[1]


class TaskQueues:
    """Queued tasks by the engines that may take them; see the module docstring."""

    def __init__(self) -> None:
        # tasks any engine may run: a FIFO per -priority, and those keys in a heap
        self._any: dict[int, deque[QueueEntry]] = {}
        self._ranks: list[int] = []
        self._for: dict[str, list[QueueEntry]] = {}  # the others, per allowed engine uuid

    def __len__(self) -> int:
        """Entries held, stale ones included (for tests of bounded bookkeeping)."""
        return sum(map(len, self._any.values())) + sum(map(len, self._for.values()))

    def push(self, record: TaskRecord, seq: int, uuids: Iterable[str] | None) -> None:
        """Queue ``record`` (its ``seq`` already set to ``seq``) for the engines ``uuids``,
        or for any engine if None."""
        rank = -record.task.priority
        entry = (rank, seq, record)
        if uuids is None:
            fifo = self._any.get(rank)
            if fifo is None:
                fifo = self._any[rank] = deque()
                heapq.heappush(self._ranks, rank)
            if fifo and fifo[-1][1] > seq:  # not pushed in order: keep the FIFO sorted
                bisect.insort(fifo, entry, key=_seq_of)
            else:
                fifo.append(entry)
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
        self._head_any()
        return sum(map(len, self._any.values()))

    def _head_any(self) -> deque[QueueEntry] | None:
        """The FIFO of the highest priority among the tasks any engine may run, its first
        entry current (stale ones before it dropped, emptied FIFOs forgotten); None if no
        such task is queued."""
        ranks = self._ranks
        while ranks:
            fifo = self._any[ranks[0]]
            while fifo and not is_current(fifo[0]):
                fifo.popleft()
            if fifo:
                return fifo
            del self._any[heapq.heappop(ranks)]
        return None

    def pop_for(self, engine: EngineState) -> TaskRecord | None:
        """The next queued task ``engine`` may run (highest priority first, oldest first among
        equals), taken off the queues; None if there is none. Stale entries met on the way
        are dropped. A held engine (:mod:`corral.controller.packing`) takes only the tasks
        queued for it, none that any engine may run."""
        queue_any = None if engine.held else self._head_any()
        queue_own = self._for.get(engine.uuid)
        if queue_own is not None:
            heappop = heapq.heappop
            while queue_own and not (is_current(queue_own[0]) and queue_own[0][2].allows(engine)):
                heappop(queue_own)
            if queue_own and (queue_any is None or queue_own[0][:2] < queue_any[0][:2]):
                record = heappop(queue_own)[2]
                if not queue_own:
                    del self._for[engine.uuid]
                return record
            if not queue_own:
                del self._for[engine.uuid]
        return queue_any.popleft()[2] if queue_any is not None else None

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
