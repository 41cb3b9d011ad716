"""A settled request's future kept compact once its one AsyncResult let it go
(corral.client.future_table), without sockets: requests and replies made by hand."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from corral.client.asyncresult import AsyncResult
from corral.client.cache import ResultsCache
from corral.client.records import Records
from corral.client.requestfuture import RequestFuture
from corral.errors import RemoteError
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")
HELD = 2_000


class Client:
    """What an AsyncResult asks of its client here: where its done-callbacks run."""

    @staticmethod
    def run_callback(call: Callable[[], None]) -> None:
        call()


CLIENT: Any = Client()  # what an AsyncResult asks of a client here (not all of Submitter)


def request(records: Records) -> Message:
    msg = SESSION.msg("apply_request", {})
    records.track(msg, "task")
    return msg


def reply(parent: Message, value: Any = None, *, error: bool = False) -> Message:
    content = (
        {"status": "error", "ename": "ValueError", "evalue": "no", "traceback": []}
        if error
        else {"status": "ok"}
    )
    return SESSION.msg(
        "apply_reply",
        content,
        parent=parent,
        metadata={"status": content["status"], "engine_id": 0},
        buffers=[] if error else serialize_object(value),
    )


def test_a_held_settled_result_is_one_tracked_object_and_its_future_reads_as_before() -> None:
    records = Records()
    requests = [request(records) for _ in range(HELD)]
    held = [AsyncResult(records, [req.msg_id], single=True, client=CLIENT) for req in requests]
    gc.collect()
    tracked = len(gc.get_objects())
    for req in requests:
        assert records.handle_reply(reply(req, 7))
    gc.collect()
    # each request's future, let go by its result, is gone: the result alone is walked
    assert len(gc.get_objects()) - tracked <= -HELD * 0.9, "request futures still tracked"
    for req, result in zip(requests, held, strict=True):
        entry = records.futures.entries[req.msg_id]
        assert type(entry) is tuple and not gc.is_tracked(entry)
        assert result.get(0) == 7 and result._children == (result,)  # noqa: SLF001
        assert result.progress == 1 and result.reply_channel is None
    first = requests[0].msg_id
    future = records.futures[first]  # a settled future again, kept from now on
    assert isinstance(future, RequestFuture) and future.done() and future.result(0) == 7
    assert records.futures[first] is future and records.futures.entries[first] is future
    assert records.is_taken(first) and records.is_taken(requests[1].msg_id)  # owners took them
    assert AsyncResult.join(held[0], held[1]).get(0) == [7, 7]


def test_marks_of_a_compact_entry_are_kept_and_changed_in_place() -> None:
    records = Records()
    req = request(records)
    result = AsyncResult(records, [req.msg_id], single=True, client=CLIENT)
    assert records.handle_reply(reply(req, 3))
    assert type(records.futures.entries[req.msg_id]) is tuple
    cache = ResultsCache(records)
    assert req.msg_id not in cache  # taken by its owner, as ipyparallel's
    cache[req.msg_id] = 4  # written back: shown again
    assert cache[req.msg_id] == 4 and not records.is_taken(req.msg_id)
    assert type(records.futures.entries[req.msg_id]) is tuple  # changed without building it
    assert records.futures[req.msg_id].taken is False and result.get(0) == 3


def test_a_failed_result_keeps_its_error_in_the_compact_entry() -> None:
    records = Records()
    req = request(records)
    result = AsyncResult(records, [req.msg_id], single=True, client=CLIENT)
    assert records.handle_reply(reply(req, error=True))
    with pytest.raises(RemoteError):
        result.get(0)
    future = records.futures[req.msg_id]
    assert isinstance(future.exception(0), RemoteError)
    assert result.get(0, return_exceptions=True) is future.exception(0)


def test_a_request_another_result_holds_is_not_compacted_under_it() -> None:
    """A second AsyncResult over the same request still watches its future: the request is
    compacted all the same (only the records read it), and both results get its value."""
    records = Records()
    req = request(records)
    first = AsyncResult(records, [req.msg_id], single=True, client=CLIENT)
    second = AsyncResult(records, [req.msg_id], single=True, client=CLIENT, owner=False)
    assert records.handle_reply(reply(req, 5))
    assert first.get(0) == second.get(0) == 5
    assert records.futures[req.msg_id].result(0) == 5


def _result_in_a_cycle(records: Records, req: Message, seen: list[Any], settle: bool) -> Any:
    """A result a user's callback refers to (result -> callback -> box -> result), settled
    first if ``settle``; only a weak reference to it is returned."""
    result = AsyncResult(records, [req.msg_id], single=True, client=CLIENT)
    box = [result]

    def callback(done: Any) -> None:
        seen.append((done.get(0), box[0] is done))

    result.add_done_callback(callback)
    result.on_done = callback  # a cycle that outlives the settlement too
    if settle:
        assert records.handle_reply(reply(req, 9))
    return weakref.ref(result)


@pytest.mark.parametrize("dropped", ["pending", "settled"])
def test_a_result_in_a_cycle_through_its_callback_is_freed_and_forgotten(dropped: str) -> None:
    """A result in a cycle (the collector must find it) is freed once dropped, whether
    dropped before or after its reply, and its records are forgotten."""
    records = Records()
    req = request(records)
    seen: list[Any] = []
    gone = _result_in_a_cycle(records, req, seen, settle=dropped == "settled")
    if dropped == "pending":
        assert records.handle_reply(reply(req, 9))
    assert seen == [(9, True)]
    gc.collect()
    assert gone() is None
    records.sweep()  # releases are applied by the next track or settlement
    assert req.msg_id not in records.futures and req.msg_id not in records.results
