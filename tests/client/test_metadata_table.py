"""A request's metadata kept compact until read whole (corral.client.metadata_table).

Without sockets: requests tracked and replies fed by hand, each reply through the wire's
frames so that its strings are the reader's own, as a client's are. Read lazily (one key, or
the whole ``Metadata`` built at the first read) the metadata is what the eager records built
when the reply came, key for key; a held result keeps a bounded number of objects and bytes.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from corral.client.asyncresult import AsyncResult
from corral.client.metadata import Metadata
from corral.client.records import Records
from corral.errors import RemoteError, error_content
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")
NOW = 1_800_000_000.123456  # the records' clock: ``received``
ENGINE = "0b5e1c2a-7652-49be-8c1d-730c2fcd6d4c"


def _records() -> Records:
    return Records(clock=lambda: NOW)


def _request(metadata: dict[str, Any] | None = None) -> Message:
    return SESSION.msg("apply_request", {}, metadata=metadata or {})


def _track(records: Records, request: Message, engine_id: int | None = None) -> None:
    if engine_id is None:
        records.track(request, "task")
    else:
        records.track(request, "mux", ENGINE, engine_id)


def _reply(request: Message, metadata: dict[str, Any], failed: bool = False) -> Message:
    """The reply as a client reads it: its frames decoded anew (the msg_id and every string a
    copy of the request's, as off the wire)."""
    content = error_content(ValueError("no"), 0, ENGINE) if failed else {"status": "ok"}
    reply = SESSION.msg(
        "apply_reply",
        content,
        parent=request,
        metadata=metadata,
        buffers=() if failed else serialize_object(7),
    )
    return SESSION.deserialize(SESSION.serialize(reply)[1:], verify=False)


def _usual(**changes: Any) -> dict[str, Any]:
    """An engine's reply metadata (corral.engine.reply_messages.reply_metadata)."""
    metadata = {
        "engine_uuid": ENGINE,
        "engine_id": 0,
        "status": "ok",
        "started": "2026-12-01T17:55:00.211299Z",
        "completed": "2026-12-01T17:55:00.211474Z",
        "stdout": "",
        "stderr": "",
        "engine_host": "vm",
        "call": "one()",
    }
    metadata.update(changes)
    return metadata


REPLIES = {
    "usual": (_usual(), {}, None, False),
    "direct": (_usual(), {}, 0, False),
    "dependencies and label": (
        _usual(),
        {"after": ["a"], "follow": ["b"], "label": "x"},
        None,
        False,
    ),
    "published data and a rank": (_usual(data_messages=2, mpi_rank=3), {}, None, False),
    "an unreadable date": (_usual(started="yesterday"), {}, None, False),
    "an offset date": (_usual(completed="2026-12-01T19:55:00.5+02:00"), {}, None, False),
    "a status other than the content's": (_usual(status="aborted"), {}, None, False),
    "printed text": (_usual(stdout="hello\n", stderr="careful\n"), {}, None, False),
    "no dates": ({"engine_uuid": ENGINE, "engine_id": 1, "status": "ok"}, {}, None, False),
    "failed": (_usual(status="error"), {}, None, True),
}


def _same(a: Any, b: Any) -> bool:
    """Equal; an error (each records' own RemoteError object) by its type and text."""
    if isinstance(a, BaseException):
        return type(a) is type(b) and repr(a) == repr(b) and a.args == b.args
    return bool(a == b)


def _eager_and_lazy(case: str) -> tuple[Metadata, Records, str]:
    """The case's reply recorded twice: into a Metadata read before the reply came (the
    eager path, as every reply was recorded before), and into a compact entry."""
    metadata, request_metadata, engine_id, failed = REPLIES[case]
    request = _request(request_metadata)
    eager, lazy = _records(), _records()
    for records in (eager, lazy):
        _track(records, request, engine_id)
    read_early = eager.metadata[request.msg_id]
    assert type(read_early) is Metadata
    for records in (eager, lazy):
        records.handle_reply(_reply(request, metadata, failed))
    md = eager.metadata[request.msg_id]
    assert md is read_early  # the dict a user holds is the one filled
    return md, lazy, request.msg_id


@pytest.mark.parametrize("case", list(REPLIES))
def test_each_key_read_alone_is_what_the_eager_metadata_holds(case: str) -> None:
    eager, lazy, msg_id = _eager_and_lazy(case)
    mutable = ("outputs", "data")  # read from the Metadata itself, whose lists a user may fill
    for key, value in eager.items():
        if key not in mutable:
            assert _same(lazy.metadata.value(msg_id, key), value), key
            assert _same(lazy.metadata.value(msg_id, key, "absent"), value), key
    with pytest.raises(KeyError):
        lazy.metadata.value(msg_id, "no such key")
    assert lazy.metadata.value(msg_id, "no such key", "absent") == "absent"
    failed = REPLIES[case][3]
    # one-key reads build nothing; a failure's error is recorded in the Metadata at once
    assert lazy.metadata.is_compact(msg_id) is not failed
    outputs = lazy.metadata.value(msg_id, "outputs")
    assert outputs == [] and lazy.metadata.value(msg_id, "data") == {}
    assert outputs is lazy.metadata[msg_id]["outputs"]


@pytest.mark.parametrize("case", list(REPLIES))
def test_the_metadata_read_whole_equals_the_eager_one_and_stays(case: str) -> None:
    eager, lazy, msg_id = _eager_and_lazy(case)
    md = lazy.metadata[msg_id]
    assert type(md) is Metadata
    assert list(md) == list(eager)  # every key, in the same order
    assert all(_same(md[key], eager[key]) for key in eager), (dict(md), dict(eager))
    assert md.received == eager.received and md.received.timestamp() == pytest.approx(NOW)
    md["label"] = "changed"  # a user's change stays: every later read gets this dict
    assert lazy.metadata[msg_id] is md and lazy.metadata.get(msg_id) is md
    assert lazy.metadata.value(msg_id, "label") == "changed"
    if REPLIES[case][3]:
        assert isinstance(md["error"], RemoteError) and lazy.results[msg_id] is md["error"]


def test_results_are_keyed_by_the_requests_own_msg_id() -> None:
    """The reply's msg_id is an equal copy; keeping it as the key of ``results`` was one more
    string per held result."""
    records = _records()
    request = _request()
    _track(records, request)
    reply = _reply(request, _usual())
    assert reply.parent_id == request.msg_id and reply.parent_id is not request.msg_id
    records.handle_reply(reply)
    (key,) = records.results
    assert key is request.header["msg_id"]


def test_output_after_a_reply_that_carried_it_is_ignored_and_before_it_is_replaced() -> None:
    records = _records()
    request = _request()
    _track(records, request)
    topic = (b"engine.0.stream",)
    early = SESSION.msg("stream", {"name": "stdout", "text": "early\n"}, parent=request)
    records.handle_iopub(Message(early.header, early.parent_header, {}, early.content, (), topic))
    assert records.metadata[request.msg_id]["stdout"] == "early\n"
    records.handle_reply(_reply(request, _usual(stdout="final\n")))
    late = SESSION.msg("stream", {"name": "stdout", "text": "late\n"}, parent=request)
    records.handle_iopub(Message(late.header, late.parent_header, {}, late.content, (), topic))
    assert records.metadata[request.msg_id]["stdout"] == "final\n"


def test_unknown_msg_ids_read_as_empty_metadata_and_forget_drops_both_forms() -> None:
    records = _records()
    empty = records.metadata["never-sent"]
    assert empty == Metadata() and "never-sent" in records.metadata
    requests = [_request() for _ in range(4)]
    for request in requests:
        _track(records, request)
        records.handle_reply(_reply(request, _usual()))
    read = records.metadata[requests[0].msg_id]  # one read whole, the others compact
    assert read["status"] == "ok"
    assert records.forget([r.msg_id for r in requests[:2]]) == 2
    assert len(records.metadata) == 3 and requests[2].msg_id in records.metadata
    assert records.metadata.pop(requests[2].msg_id)["status"] == "ok"
    assert records.metadata.get(requests[2].msg_id) is None
    records.forget([request.msg_id for request in requests] + ["never-sent"])
    assert records.metadata == {} and not records.results and not records.futures


HELD = 5_000


def test_a_held_result_keeps_few_objects_and_bytes() -> None:
    """5,000 finished no-ops held by their AsyncResults: what the records and the results
    keep per task, traced by tracemalloc and counted by the collector (not RSS): about 1,000
    bytes and 2 tracked objects (the AsyncResult and its request's future; the compact
    metadata, a tuple of atoms, is untracked). Before it, 1,900 bytes and 4 objects."""
    records = _records()
    requests = [_request() for _ in range(HELD)]
    held: list[AsyncResult] = []
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request in requests:
            records.track(request, "task")
            held.append(AsyncResult(records, [request.msg_id], single=True))
            records.handle_reply(_reply(request, _usual()))
        gc.collect()
        kept = (tracemalloc.get_traced_memory()[0] - before) / HELD
    finally:
        tracemalloc.stop()
    objects = (len(gc.get_objects()) - tracked) / HELD
    assert all(result.get(timeout=0) == 7 for result in held)
    assert kept < 1_200, f"{kept:.0f} bytes per held result"
    assert objects < 2.5, f"{objects:.2f} tracked objects per held result"
