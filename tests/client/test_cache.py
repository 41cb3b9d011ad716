"""Client.results and Client.metadata (corral/client/cache.py) over Records, without sockets:
what an owning AsyncResult takes once done is hidden; everything else reads as a dict."""

from __future__ import annotations

from typing import Any

import pytest

from corral.client.asyncresult import AsyncResult
from corral.client.cache import MetadataCache, ResultsCache
from corral.client.records import Records
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")


def _request(records: Records) -> Message:
    msg = SESSION.msg("apply_request", {})
    records.track(msg, "task")
    return msg


def _answer(records: Records, request: Message, value: Any) -> None:
    reply = SESSION.msg(
        "apply_reply",
        {"status": "ok"},
        parent=request,
        metadata={"status": "ok", "engine_id": 2},
        buffers=serialize_object(value),
    )
    assert records.handle_reply(reply)


def test_an_owner_takes_its_requests_once_done_and_keeps_them() -> None:
    records = Records()
    results, metadata = ResultsCache(records), MetadataCache(records)
    owned_request, shared_request = _request(records), _request(records)
    owner = AsyncResult(records, [owned_request.msg_id], single=True)
    viewer = AsyncResult(records, [shared_request.msg_id], single=True, owner=False)
    assert owned_request.msg_id in metadata and len(metadata) == 2  # pending: still shown
    _answer(records, owned_request, "mine")
    _answer(records, shared_request, "shared")
    assert owner.get(0) == "mine" and viewer.get(0) == "shared"
    assert dict(results) == {shared_request.msg_id: "shared"} and len(results) == 1
    assert list(metadata) == [shared_request.msg_id]
    assert owned_request.msg_id not in results and owned_request.msg_id not in metadata
    assert metadata[owned_request.msg_id]["engine_id"] is None  # reads as empty
    assert owner.engine_id == 2  # the owner keeps them
    assert records.results[owned_request.msg_id] == "mine"  # held: still recorded
    assert repr(results) == repr({shared_request.msg_id: "shared"})


def test_writes_and_deletes_act_on_the_client_copy() -> None:
    records = Records()
    results = ResultsCache(records)
    request = _request(records)
    owner = AsyncResult(records, [request.msg_id], single=True)
    _answer(records, request, 1)
    assert owner.get(0) == 1 and request.msg_id not in results
    with pytest.raises(KeyError):  # taken: not in the client's copy
        del results[request.msg_id]
    results[request.msg_id] = "back"
    assert results[request.msg_id] == "back"
    del results[request.msg_id]
    assert request.msg_id not in records.results and owner.get(0) == 1
    results.clear()
    assert results.copy() == {}


def test_forgetting_a_request_forgets_that_it_was_taken() -> None:
    records = Records()
    request = _request(records)
    owner = AsyncResult(records, [request.msg_id], single=True)
    _answer(records, request, 1)
    assert owner.get(0) == 1 and records.taken == {request.msg_id}
    assert records.forget([request.msg_id]) == 1
    assert records.taken == set()
