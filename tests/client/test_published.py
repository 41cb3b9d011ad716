"""Data a task publishes (corral/client/published.py), without sockets: merged into
``ar.data`` in order, also when it arrives after the reply, and awaited by wait_for_output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral.client.asyncresult import AsyncResult
from corral.client.completion import Worker
from corral.client.records import Records
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")


@pytest.fixture
def records() -> Iterator[Records]:
    worker = Worker("test-published")  # the thread the client settles on
    yield Records(defer=worker.submit)
    worker.close()


def _request(records: Records) -> Message:
    msg = SESSION.msg("execute_request", {"code": "..."})
    records.track(msg, "mux", "engine-uuid", 0)
    return msg


def _data(request: Message, data: dict[str, Any]) -> Message:
    return SESSION.msg(
        "data_message", {"keys": list(data)}, parent=request, buffers=serialize_object(data)
    )


def _reply(request: Message, data_messages: int) -> Message:
    metadata: dict[str, Any] = {"status": "ok", "engine_id": 0, "stdout": "", "stderr": ""}
    if data_messages:
        metadata["data_messages"] = data_messages
    return SESSION.msg("execute_reply", {"status": "ok"}, parent=request, metadata=metadata)


def test_data_is_merged_in_order_even_after_the_reply(records: Records) -> None:
    request = _request(records)
    ar = AsyncResult(records, [request.msg_id], single=True, owner=False)
    records.handle_iopub(_data(request, {"i": 0, "first": True}))
    records.handle_reply(_reply(request, 3))  # the reply overtook two of the three
    ar.get(10)
    records.handle_iopub(_data(request, {"i": 1}))
    assert ar.wait_for_output(0.2) is False  # one still missing
    records.handle_iopub(_data(request, {"i": 2}))
    assert ar.wait_for_output(10) is True
    assert ar.data == {"i": 2, "first": True}
    assert records.published.merged(request.msg_id) == 3


def test_a_task_that_published_nothing_waits_for_its_reply_only(records: Records) -> None:
    request = _request(records)
    ar = AsyncResult(records, [request.msg_id], single=True)
    records.handle_reply(_reply(request, 0))
    assert ar.wait_for_output(10) is True and ar.data == {}


def test_undecodable_or_unknown_data_is_dropped(records: Records) -> None:
    request = _request(records)
    ar = AsyncResult(records, [request.msg_id], single=True, owner=False)
    garbage = SESSION.msg("data_message", {"keys": ["x"]}, parent=request, buffers=[b"junk"])
    records.handle_iopub(garbage)
    records.handle_iopub(_data(request, {"x": 1}))
    stranger = SESSION.msg("execute_request", {"code": "..."})  # not this client's
    records.handle_iopub(_data(stranger, {"x": 2}))
    records.handle_reply(_reply(request, 2))
    assert ar.wait_for_output(10) and ar.data == {"x": 1}
    assert records.published.merged(stranger.msg_id) == 0
    del ar
    records.forget([request.msg_id])
    assert records.published.merged(request.msg_id) == 0
