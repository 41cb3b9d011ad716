"""The stores' writer thread (corral/controller/store/writer.py): writes held in a burst."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from corral.controller.store import ResultStore
from corral.controller.store.writer import BatchWriter, WriteOp
from corral.errors import StoreError


class Recorder:
    """An ``apply`` that records every batch it is given, and can be made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail: set[str] = set()

    def __call__(self, batch: list[WriteOp[None]]) -> None:
        ids = [op.kind + ":" + ",".join(op.msg_ids) for op in batch]
        if self.fail & {msg_id for op in batch for msg_id in op.msg_ids}:
            raise RuntimeError("refused")
        self.batches.append(ids)

    @property
    def applied(self) -> list[str]:
        return [op for batch in self.batches for op in batch]


def upsert(msg_id: str) -> WriteOp[None]:
    return WriteOp("upsert", (msg_id,), None)


def in_other_thread(call: Any) -> None:
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def writer(recorder: Recorder) -> Any:
    writer: BatchWriter[None] = BatchWriter(recorder, name="test writer", linger=0.0)
    yield writer
    writer.close()


def test_held_writes_are_queued_together_when_the_block_ends(
    writer: BatchWriter[None], recorder: Recorder
) -> None:
    with writer.holding():
        for msg_id in "abc":
            writer.submit(upsert(msg_id))
        in_other_thread(writer.flush)  # another thread's flush does not wait for held writes
        assert recorder.applied == []
    writer.flush()
    assert recorder.applied == ["upsert:a", "upsert:b", "upsert:c"]
    assert len(recorder.batches) == 1


def test_a_read_in_the_block_sees_every_write_before_it_in_order(
    writer: BatchWriter[None], recorder: Recorder
) -> None:
    with writer.holding():
        writer.submit(upsert("a"))
        writer.submit(WriteOp("drop", ("a", "b"), None))
        writer.flush()  # what a read does first
        assert recorder.applied == ["upsert:a", "drop:a,b"]
        writer.submit(upsert("b"))
        mark = writer.mark()  # counts the held write, and queues it
        assert mark == 3
    writer.flush()
    assert writer.applied(mark)
    assert recorder.applied == ["upsert:a", "drop:a,b", "upsert:b"]


def test_another_threads_writes_are_never_held(
    writer: BatchWriter[None], recorder: Recorder
) -> None:
    def other() -> None:
        writer.submit(upsert("other"))
        writer.flush()

    with writer.holding():
        in_other_thread(other)
        assert recorder.applied == ["upsert:other"]
        with writer.holding():  # nested: the outer block queues
            writer.submit(upsert("inner"))
        writer.submit(upsert("outer"))
        assert recorder.applied == ["upsert:other"]
    writer.flush()
    assert recorder.applied == ["upsert:other", "upsert:inner", "upsert:outer"]


def test_an_earlier_failure_is_raised_when_the_block_ends_and_nothing_held_is_lost(
    writer: BatchWriter[None], recorder: Recorder
) -> None:
    recorder.fail = {"bad"}
    writer.submit(upsert("bad"))
    with pytest.raises(StoreError, match="bad"):
        writer.flush()
    writer.submit(upsert("bad"))  # fails again, in the writer
    writer.mark()  # never raises, and never waits: the failure may come later
    with pytest.raises(StoreError, match="bad"), writer.holding():
        writer.submit(upsert("after"))
        writer.flush()  # the failure of the write before the block
    writer.flush()
    assert recorder.applied == ["upsert:after"]


def test_many_writes_queue_in_order_held_or_not_and_raise_an_earlier_failure(
    writer: BatchWriter[None], recorder: Recorder
) -> None:
    writer.submit_many([upsert("a"), upsert("b")])
    with writer.holding():
        writer.submit(upsert("c"))
        writer.submit_many([upsert("d"), upsert("e")])
        assert writer.mark() == 5
    writer.flush()
    assert recorder.applied == [f"upsert:{msg_id}" for msg_id in "abcde"]
    recorder.fail = {"bad"}
    writer.submit(upsert("bad"))
    with pytest.raises(StoreError, match="bad"):
        writer.flush()
    writer.submit(upsert("bad"))
    with pytest.raises(StoreError, match="bad"):  # raised by the flush or by submit_many
        writer.submit_many([upsert("f")])
        writer.flush()
    writer.flush()
    assert recorder.applied[-1] == "upsert:f"
    writer.submit_many([])  # nothing to queue: only the pending error, if any
    writer.close()
    with pytest.raises(StoreError, match="closed"):
        writer.submit_many([upsert("g")])


def test_close_queues_what_is_held(recorder: Recorder) -> None:
    writer: BatchWriter[None] = BatchWriter(recorder, name="test writer", linger=0.0)
    with writer.holding():
        writer.submit(upsert("a"))
        writer.close()
        with pytest.raises(StoreError, match="closed"):
            writer.submit(upsert("b"))
    assert recorder.applied == ["upsert:a"]


def test_a_store_holding_writes_answers_reads_with_them(store: ResultStore) -> None:
    """Every backend: inside the block a read sees the writes before it, a bad write fails at
    its own call, and after the block every write is there."""
    with store.holding_writes():
        store.add_record("a", {"status": "pending", "engine_id": 1})
        with pytest.raises(StoreError):
            store.add_record("bad", {"engine_id": 1 << 70})
        assert store.get_record("a")["engine_id"] == 1
        store.update_record("a", {"status": "ok"})
        store.add_record("b", {"status": "pending"})
    assert store.get_record("a")["status"] == "ok"
    assert sorted(store.get_history()) == ["a", "b"]


def test_writes_taken_early_join_the_batch_and_marks_still_mean_every_write_before(
    recorder: Recorder,
) -> None:
    """A backend's ``later`` rule takes queued writes into a batch that ``max_batch`` cut
    (here: the later writes of the batch's records). They are applied with it, their places
    skipped when the writer reaches them, and ``applied(mark)`` stays true only once every
    write up to the mark is applied: one taken early does not count before those queued
    ahead of it."""
    second_batch = threading.Event()
    release = threading.Event()

    def apply(batch: list[WriteOp[None]]) -> None:
        recorder(batch)
        if len(recorder.batches) == 2:  # hold the writer in its second batch
            second_batch.set()
            assert release.wait(30)

    def later(batch: list[WriteOp[None]], queued: Any) -> list[int]:
        mine = {op.msg_ids[0] for op in batch}
        return [place for place, op in enumerate(queued) if op.msg_ids[0] in mine]

    writer: BatchWriter[None] = BatchWriter(
        apply, name="test writer", max_batch=2, linger=0.0, later=later, look_ahead=10
    )
    try:
        with writer.holding():
            for msg_id in ("a", "b", "c", "a", "d", "b", "e"):
                writer.submit(upsert(msg_id))
        assert second_batch.wait(30)
        # the first batch took a and b, and their later writes (places 4 and 6): applied,
        # but counted only as the writer passes their places
        assert recorder.batches[0] == ["upsert:a", "upsert:b", "upsert:a", "upsert:b"]
        assert writer.applied(2)
        assert not writer.applied(3)  # c is being applied, a's second write already was
        release.set()
        writer.flush()
        assert recorder.batches[1] == ["upsert:c", "upsert:d"]
        assert recorder.batches[2:] == [["upsert:e"]]
        assert writer.applied(7)
    finally:
        release.set()
        writer.close()
