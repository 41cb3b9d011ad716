"""TaskQueues alone: the order in which a freed engine takes queued tasks (priority, then
FIFO), across the per-priority FIFOs of tasks any engine may run and the per-engine heaps, and
the stale entries dropped on the way."""

from __future__ import annotations

from corral.controller.scheduling_state import QUEUED, RUNNING, EngineState, Task, TaskRecord
from corral.controller.task_queues import TaskQueues


class Queues:
    """A TaskQueues with the core's counting of ``seq`` (each push above all before it)."""

    def __init__(self) -> None:
        self.queues = TaskQueues()
        self.seq = 0

    def push(self, msg_id: str, priority: int = 0, uuids: list[str] | None = None) -> TaskRecord:
        record = TaskRecord(Task(msg_id, priority=priority), None, 0, state=QUEUED)
        self.seq += 1
        record.seq = self.seq
        self.queues.push(record, self.seq, uuids)
        return record


def taken(queues: TaskQueues, engine: EngineState) -> list[str]:
    names = []
    while (record := queues.pop_for(engine)) is not None:
        record.state = RUNNING
        names.append(record.task.msg_id)
    return names


def test_higher_priority_first_then_oldest_first() -> None:
    q = Queues()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", -1), ("e", 5), ("f", 0)]:
        q.push(name, priority)
    assert q.queues.waiting_for_any() == 6
    assert taken(q.queues, EngineState("engine-0", 0)) == ["b", "e", "a", "c", "f", "d"]
    assert q.queues.waiting_for_any() == 0
    assert len(q.queues) == 0


def test_an_engines_own_queue_and_the_shared_one_are_merged_in_order() -> None:
    q = Queues()
    q.push("any-1")
    q.push("own-1", uuids=["engine-0"])
    q.push("any-2", priority=3)
    q.push("own-2", priority=3, uuids=["engine-0"])
    q.push("other", uuids=["engine-1"])
    assert taken(q.queues, EngineState("engine-0", 0)) == ["any-2", "own-2", "any-1", "own-1"]
    assert taken(q.queues, EngineState("engine-1", 0)) == ["other"]


def test_a_held_engine_takes_only_its_own_tasks() -> None:
    q = Queues()
    q.push("any")
    q.push("own", uuids=["engine-0"])
    engine = EngineState("engine-0", 0, held=True)
    assert taken(q.queues, engine) == ["own"]
    assert q.queues.waiting_for_any() == 1


def test_stale_entries_are_skipped_and_dropped() -> None:
    q = Queues()
    first, second, third = q.push("a"), q.push("b"), q.push("c", priority=1)
    first.state = RUNNING  # taken by another engine's queue meanwhile
    third.seq += 100  # queued again since: this entry is stale
    assert q.queues.waiting_for_any() == 1  # "c", then "a", dropped at the heads: "b" left
    assert taken(q.queues, EngineState("engine-0", 0)) == ["b"]
    assert second.state == RUNNING
    assert len(q.queues) == 0


def test_a_push_out_of_order_still_comes_out_in_seq_order() -> None:
    queues = TaskQueues()
    records = {name: TaskRecord(Task(name), None, 0, state=QUEUED) for name in "abc"}
    for name, seq in [("a", 1), ("c", 3), ("b", 2)]:
        records[name].seq = seq
        queues.push(records[name], seq, None)
    assert taken(queues, EngineState("engine-0", 0)) == ["a", "b", "c"]
