"""Settling small replies on the thread that reads them (corral.client.requestfuture, and
Records.complete), without sockets: replies made by hand, a real results worker."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.client.asyncresult import AsyncMapResult, AsyncResult
from corral.client.completion import Worker
from corral.client.records import Records
from corral.client.requestfuture import (
    FUTURE_FIELDS,
    INLINE_LIMIT,
    LightFuture,
    RequestFuture,
    settles_inline,
)
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")
PROMPT = 10.0  # seconds: far longer than any step here takes


@pytest.fixture
def worker() -> Iterator[Worker]:
    worker = Worker("test-results")
    yield worker
    worker.close()


class Deferrals:
    """A ``defer`` that counts the calls handed to the worker and notes their thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.count = 0
        self.threads: list[str] = []

    def __call__(self, call: Callable[[], None]) -> None:
        self.count += 1

        def noted() -> None:
            self.threads.append(threading.current_thread().name)
            call()

        self.worker.submit(noted)

    def drain(self) -> None:
        done = threading.Event()
        self.worker.submit(done.set)
        assert done.wait(PROMPT)


class Client:
    """What an AsyncResult asks of its client here: where its done-callbacks run."""

    @staticmethod
    def run_callback(call: Callable[[], None]) -> None:
        call()


def request(records: Records) -> Message:
    msg = SESSION.msg("apply_request", {})
    records.track(msg, "task")
    return msg


def reply(parent: Message, buffers: list[Any]) -> Message:
    return SESSION.msg(
        "apply_reply",
        {"status": "ok"},
        parent=parent,
        metadata={"status": "ok", "engine_id": 0},
        buffers=buffers,
    )


def test_a_small_reply_settles_on_the_reading_thread(worker: Worker) -> None:
    defer = Deferrals(worker)
    records = Records(defer)
    req = request(records)
    ar = AsyncResult(records, [req.msg_id], single=True, client=Client())
    assert records.handle_reply(reply(req, serialize_object({"answer": 42})))
    assert ar.done() and ar.get(0) == {"answer": 42}  # no wait: settled by handle_reply itself
    assert defer.count == 0
    assert records.results[req.msg_id] == {"answer": 42} and not records.outstanding


def test_a_large_reply_or_one_needing_an_import_goes_to_the_worker(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defer = Deferrals(worker)
    records = Records(defer)
    large, importing = request(records), request(records)
    (tmp_path / "corral_settle_probe.py").write_text("def value():\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import corral_settle_probe

    needs_import = serialize_object(corral_settle_probe.value)
    monkeypatch.delitem(sys.modules, "corral_settle_probe")
    records.handle_reply(reply(large, serialize_object(b"x" * (INLINE_LIMIT + 1))))
    records.handle_reply(reply(importing, needs_import))
    defer.drain()
    assert records.futures[large.msg_id].result(0) == b"x" * (INLINE_LIMIT + 1)
    assert records.futures[importing.msg_id].result(0)() == 7  # imported on the worker
    assert defer.count == 2 and set(defer.threads) == {"test-results"}


def test_callbacks_not_marked_inline_never_run_on_the_settling_thread(worker: Worker) -> None:
    defer = Deferrals(worker)
    records = Records(defer)
    req = request(records)
    future = records.futures[req.msg_id]
    seen: dict[str, str] = {}
    future.add_done_callback(lambda _: seen.setdefault("inline", _thread()), inline=True)
    future.add_done_callback(lambda _: seen.setdefault("other", _thread()))
    records.handle_reply(reply(req, serialize_object(1)))
    assert seen == {"inline": threading.current_thread().name}  # the other one is queued
    defer.drain()
    assert seen["other"] == "test-results"
    late: list[str] = []
    future.add_done_callback(lambda _: late.append(_thread()))  # done already: runs at once
    assert late == [threading.current_thread().name]


def test_a_maps_parts_settle_on_the_worker_with_the_join(worker: Worker) -> None:
    """A map's join may take long: its parts are settled on the results worker, so the map
    is done as soon as its last part is (nothing waits on a hop in between)."""
    defer = Deferrals(worker)
    records = Records(defer)
    parts = [request(records) for _ in range(3)]
    ar = AsyncMapResult(records, [p.msg_id for p in parts], client=Client())
    for index, part in enumerate(parts):
        records.handle_reply(reply(part, serialize_object([index])))
    defer.drain()
    assert ar.get(0) == [0, 1, 2] and defer.count == 3


def test_a_release_racing_an_inline_settlement_forgets_the_request(worker: Worker) -> None:
    """An AsyncResult dropped while its reply is being settled on another thread: whichever
    runs first, the request is forgotten once both are done (nothing kept for ever)."""
    records = Records(Deferrals(worker))
    for _ in range(200):
        req = request(records)
        ar = AsyncResult(records, [req.msg_id], single=True, client=None)
        del ar  # released; applied by the next track or settlement, on its thread
        settler = threading.Thread(
            target=records.handle_reply, args=(reply(req, serialize_object(0)),)
        )
        settler.start()
        request(records)  # a track, applying the release, while the reply settles
        settler.join(PROMPT)
    Deferrals(worker).drain()
    request(records)  # applies any release left
    finished = [m for m, f in records.futures.items() if f.done()]
    assert finished == [], f"{len(finished)} finished requests kept"


def test_light_condition_serves_every_way_of_waiting() -> None:
    """Light futures (a bare lock for a condition, their own waiting) still work with
    result(), wait(), as_completed() and add_done_callback from other threads."""
    futures = [RequestFuture(lambda call: call()) for _ in range(20)]
    assert all(isinstance(f, LightFuture) for f in futures)
    order: list[int] = []
    for index, future in enumerate(futures):
        future.add_done_callback(lambda _, index=index: order.append(index), inline=True)

    def settle_all() -> None:
        for index, future in enumerate(futures):
            future.set_result(index)

    setter = threading.Timer(0.05, settle_all)
    setter.start()
    try:
        assert futures[-1].result(PROMPT) == 19
        done, pending = concurrent.futures.wait(futures, PROMPT)
        assert len(done) == 20 and not pending
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, PROMPT)) == list(
            range(20)
        )
    finally:
        setter.join(PROMPT)
    assert order == list(range(20))
    failed = RequestFuture(lambda call: call())
    failed.set_exception(ValueError("first"))
    done, pending = concurrent.futures.wait(  # takes each condition again while holding it
        [failed, RequestFuture(lambda call: call())], PROMPT, concurrent.futures.FIRST_EXCEPTION
    )
    assert done == {failed} and len(pending) == 1
    waited = RequestFuture(lambda call: call())
    with pytest.raises(concurrent.futures.TimeoutError):
        waited.result(0.01)
    assert waited.cancel() and waited.cancelled()


def test_settles_inline_counts_every_kind_of_frame() -> None:
    assert settles_inline([b"x" * INLINE_LIMIT])
    assert not settles_inline([b"x" * INLINE_LIMIT, memoryview(b"y")])
    assert settles_inline([zmq.Frame(b"x" * 10), memoryview(bytearray(20)), b""])
    assert not settles_inline([zmq.Frame(b"x" * (INLINE_LIMIT + 1))])


def _thread() -> str:
    return threading.current_thread().name


def test_light_futures_are_initialised_as_future_init_does() -> None:
    """RequestFuture and AsyncResult skip ``Future.__init__`` (see ``lighten``): the fields it
    sets must be exactly those, with the same initial values, on this Python."""
    reference = concurrent.futures.Future()
    assert tuple(vars(reference)) == FUTURE_FIELDS
    light = RequestFuture(lambda call: call())
    for name in FUTURE_FIELDS[1:]:
        assert getattr(light, name) == getattr(reference, name), name
    assert type(light._condition).__name__ == "RLock"  # the C lock, no Condition
    result = AsyncResult(Records(), [])  # no parts: done at once
    assert result.done() and result.get() == []
    light.set_result(3)
    assert light.result(0) == 3 and light.done()


def test_on_settled_hears_each_request_once_whatever_settles_it(worker: Worker) -> None:
    """The client's Resender drops its copy of a load-balanced request from this hook: a
    reply (inline or on the worker), an error and a late reply are each told exactly once."""
    told: list[str] = []
    defer = Deferrals(worker)
    records = Records(defer, told.append)
    small, large, failed = request(records), request(records), request(records)
    records.handle_reply(reply(small, serialize_object(1)))
    records.handle_reply(reply(large, serialize_object(b"x" * (INLINE_LIMIT + 1))))
    records.fail(failed.msg_id, RuntimeError("engine gone"))
    assert not records.handle_reply(reply(small, serialize_object(2)))  # late: ignored
    defer.drain()
    assert sorted(told) == sorted([small.msg_id, large.msg_id, failed.msg_id])


def test_a_light_future_makes_its_sleepers_queue_when_first_waited_on() -> None:
    """Nothing is made for waiting until a thread waits in result(); a waiter that times out
    leaves the queue, one woken by the settlement gets the result, and a cancellation wakes
    them with CancelledError."""
    future = RequestFuture(lambda call: call())
    assert future._sleepers is None and future._waiting is None  # noqa: SLF001
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(0.01)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.exception(0)
    assert not future._sleepers  # noqa: SLF001
    outcomes: list[Any] = []

    def wait_for(target: RequestFuture) -> None:
        try:
            outcomes.append(target.result(PROMPT))
        except concurrent.futures.CancelledError as error:
            outcomes.append(type(error))

    cancelled = RequestFuture(lambda call: call())
    threads = [threading.Thread(target=wait_for, args=(f,)) for f in (future, cancelled) * 2]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PROMPT
    while time.monotonic() < deadline and not (
        len(future._sleepers or ()) == 2 and len(cancelled._sleepers or ()) == 2  # noqa: SLF001
    ):
        time.sleep(0.001)  # polling for both waiters of each to be asleep, bounded
    future.set_result("done")
    assert cancelled.cancel()
    for thread in threads:
        thread.join(PROMPT)
    assert sorted(map(str, outcomes)) == sorted(
        map(str, ["done", "done", *[concurrent.futures.CancelledError] * 2])
    )
    assert not future._sleepers and not cancelled._sleepers  # noqa: SLF001


def test_light_futures_settle_as_future_does(caplog: pytest.LogCaptureFixture) -> None:
    """LightFuture's own set_result/set_exception: settled once (InvalidStateError after, as
    the base), a thread waiting in result() is woken, each callback runs once and one that
    raises is logged without stopping the next, and the callbacks are not kept."""
    future = RequestFuture(lambda call: call())
    calls: list[str] = []

    def failing(_: concurrent.futures.Future[Any]) -> None:
        calls.append("failing")
        raise RuntimeError("a callback failed")

    future.add_done_callback(failing, inline=True)
    future.add_done_callback(lambda _: calls.append("second"), inline=True)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(future.result(PROMPT)))
    waiter.start()
    deadline = time.monotonic() + PROMPT
    while not future._sleepers and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.001)  # polling for the waiter to be in result(), bounded
    assert future._sleepers  # noqa: SLF001
    future.set_result(7)
    waiter.join(PROMPT)
    assert got == [7] and calls == ["failing", "second"]
    assert "exception calling callback" in caplog.text
    assert not future._done_callbacks and not isinstance(future._done_callbacks, list)  # noqa: SLF001
    future.add_done_callback(lambda _: calls.append("late"), inline=True)
    assert calls[-1] == "late"
    with pytest.raises(concurrent.futures.InvalidStateError):
        future.set_result(8)
    with pytest.raises(concurrent.futures.InvalidStateError):
        future.set_exception(ValueError("late"))
    assert future.result(0) == 7
    failed = RequestFuture(lambda call: call())
    done_waiting = threading.Thread(
        target=lambda: got.append(concurrent.futures.wait([failed], PROMPT))
    )
    done_waiting.start()
    failed.set_exception(ValueError("failed"))
    done_waiting.join(PROMPT)
    assert got[-1].done == {failed}
    with pytest.raises(ValueError, match="failed"):
        failed.result(0)
    cancelled = RequestFuture(lambda call: call())
    assert cancelled.cancel()
    with pytest.raises(concurrent.futures.InvalidStateError):
        cancelled.set_result(1)


def test_a_one_request_result_is_told_by_its_request_and_shares_its_lock() -> None:
    """The AsyncResult over one request is told by the request's future itself (attach: no
    link object, no callbacks' list) and shares its lock; another result over the same
    request falls back to a callback; every way of waiting still works across threads; the
    request's future is also its entry in ``pending``."""
    records = Records()
    req = request(records)
    client: Any = Client()  # what an AsyncResult asks of a client here (not all of Submitter)
    child = records.futures[req.msg_id]
    assert records.pending[req.msg_id] is child
    assert child.kind == "task" and child.channel == "task" and child.future is child
    result = AsyncResult(records, [req.msg_id], single=True, client=client)
    assert child._owner is result and child._callbacks is None  # noqa: SLF001
    assert result._link is None and result._condition is child._condition  # noqa: SLF001
    other = AsyncResult(records, [req.msg_id], single=True, client=client, owner=False)
    assert not child.attach(other) and other._link is not None  # noqa: SLF001
    assert result._callbacks is None and other._callbacks is None  # noqa: SLF001
    got: list[Any] = []
    waiters = [
        threading.Thread(  # the future's own wait (AsyncResult.get waits through a client)
            target=lambda: got.append(result.exception(PROMPT) or result.get(0))
        ),
        threading.Thread(
            target=lambda: got.append(concurrent.futures.wait([result, child, other], PROMPT))
        ),
    ]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + PROMPT
    while not (result._sleepers and child._waiting) and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.001)  # polling for both waiters to be waiting, bounded
    assert records.handle_reply(reply(req, serialize_object(5)))
    for waiter in waiters:
        waiter.join(PROMPT)
    done = {result, child, other}
    assert 5 in got and any(isinstance(item, tuple) and item[0] == done for item in got)
    assert result.get(0) == other.get(0) == 5 and child._owner is None  # noqa: SLF001
    assert req.msg_id not in records.pending
    settled = request(records)
    assert records.handle_reply(reply(settled, serialize_object(6)))
    late = AsyncResult(records, [settled.msg_id], single=True, client=client)
    assert not records.futures[settled.msg_id].attach(late) and late.get(0) == 6
