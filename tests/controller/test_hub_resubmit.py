"""The Hub core's ``resubmit_request``, without sockets: what it sends again, what it records,
and what it refuses (sending nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from corral.controller.hub import Send
from corral.controller.hub_actions import Resubmit
from corral.controller.hub_resubmit import resubmit_failed
from corral.controller.store.memory import MemoryStore
from corral.controller.store.retention import REQUEST_OMITTED_FIELD, RetentionSettings
from corral.protocol.session import Message, Session
from tests.controller.hub_harness import HubHarness
from tests.controller.test_hub import (
    CLIENT_ADDRESSES,
    ENGINE_ADDRESSES,
    KEY,
    register,
    reply_for,
)

session = Session(KEY)
CLIENT = b"client-1"


def make_hub(retention: RetentionSettings | None = None) -> HubHarness:
    return HubHarness.create(
        MemoryStore(retention),
        ENGINE_ADDRESSES,
        CLIENT_ADDRESSES,
        heartbeat_period=1.0,
        max_misses=2,
    )


@pytest.fixture
def hub() -> HubHarness:
    return make_hub()


def balanced(hub: HubHarness, metadata: dict[str, Any] | None = None, *buffers: bytes) -> Message:
    """A load-balanced request as the scheduler's copy brings it, buffers included."""
    req = session.msg("apply_request", {}, metadata=metadata or {}, buffers=buffers or (b"f",))
    hub.handle_monitor(b"task_in", [CLIENT], req)
    return req


def finish(hub: HubHarness, req: Message, engine: str, queue: str = "task") -> None:
    hub.handle_monitor(f"{queue}_out".encode(), [CLIENT, engine.encode()], reply_for(req))


def resubmit(hub: HubHarness, *msg_ids: str, **content: Any) -> list[Any]:
    msg = session.msg("resubmit_request", {"msg_ids": list(msg_ids), **content})
    return hub.handle_request([CLIENT], msg)


def test_a_finished_task_is_sent_again_under_a_new_msg_id(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub, {"retries": 2, "after": [], "shm_reader": {"host": "h", "pid": 1}})
    finish(hub, req, "e0")
    hub.now += 5
    sent, reply = resubmit(hub, req.msg_id)
    assert isinstance(sent, Resubmit) and isinstance(reply, Send)
    assert reply.msg_type == "resubmit_reply" and reply.content["status"] == "ok"
    new_id = reply.content["resubmitted"][req.msg_id]
    assert new_id != req.msg_id
    # the original header but for msg_id and date; metadata as recorded, without the first
    # client's shared-memory reader (the reply goes to the Hub); the same buffers
    assert sent.queue == "task" and sent.engine_uuid is None
    assert {k: v for k, v in sent.header.items() if k not in ("msg_id", "date")} == {
        k: v for k, v in req.header.items() if k not in ("msg_id", "date")
    }
    assert sent.header["msg_id"] == new_id and sent.header["date"] != req.header["date"]
    assert sent.metadata == {"retries": 2, "after": []}
    assert [bytes(b) for b in sent.buffers] == [b"f"]
    new = hub.store.get_record(new_id)
    assert new["status"] == "pending" and new["resubmitted_from"] == req.msg_id
    assert new["buffers"] == [b"f"] and new["header"] == sent.header
    assert new["client_uuid"] == session.session_id  # who asked
    old = hub.store.get_record(req.msg_id)
    assert old["resubmitted"] is True and old["resubmitted_as"] == new_id
    assert old["status"] == "ok"  # its own result stays
    assert new_id in hub.pending


def test_the_copy_of_the_resubmission_keeps_the_asking_client(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    finish(hub, req, "e0")
    sent, reply = resubmit(hub, req.msg_id)
    copy = Message(sent.header, {}, sent.metadata, sent.content, sent.buffers)
    hub.handle_monitor(b"task_in", [hub.resubmit_identity.encode()], copy)
    finish(hub, copy, "e0")
    record = hub.store.get_record(sent.header["msg_id"])
    assert record["client_uuid"] == session.session_id
    assert record["resubmitted_from"] == req.msg_id and record["status"] == "ok"


def test_a_chain_of_resubmissions(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    finish(hub, req, "e0")
    msg_id = req.msg_id
    for _ in range(3):
        sent, reply = resubmit(hub, msg_id)
        new_id = reply.content["resubmitted"][msg_id]
        finish(hub, Message(sent.header, {}, sent.metadata, sent.content), "e0")
        assert hub.store.get_record(new_id)["resubmitted_from"] == msg_id
        msg_id = new_id


def test_a_direct_task_goes_back_to_its_engine(hub: HubHarness) -> None:
    engine_id = register(hub, "e0")
    req = session.msg("execute_request", {"code": "x = 1"}, buffers=())
    hub.handle_monitor(b"mux_in", [b"e0", CLIENT], req)
    finish(hub, req, "e0", "mux")
    sent, reply = resubmit(hub, req.msg_id)
    assert sent.queue == "mux" and sent.engine_uuid == "e0"
    assert sent.content == {"code": "x = 1"}
    new_id = reply.content["resubmitted"][req.msg_id]
    assert new_id in hub.engines[engine_id].queue
    assert hub.store.get_record(new_id)["engine_id"] == engine_id


def test_a_direct_task_whose_engine_is_gone_is_refused(hub: HubHarness) -> None:
    register(hub, "e0")
    req = session.msg("apply_request", {}, buffers=(b"f",))
    hub.handle_monitor(b"mux_in", [b"e0", CLIENT], req)
    finish(hub, req, "e0", "mux")
    hub.handle_request([b"e0"], session.msg("unregistration_request", {"uuid": "e0"}))
    (reply,) = resubmit(hub, req.msg_id)
    assert reply.content["ename"] == "EngineError"
    assert "no longer registered" in reply.content["evalue"]


def test_unknown_msg_ids_are_a_key_error_and_nothing_is_sent(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    finish(hub, req, "e0")
    (reply,) = resubmit(hub, req.msg_id, "invalid")
    assert reply.content["status"] == "error" and reply.content["ename"] == "KeyError"
    assert "invalid" in reply.content["evalue"]
    assert hub.store.get_history() == [req.msg_id]
    assert "resubmitted_as" not in hub.store.get_record(req.msg_id)


def test_a_running_task_may_be_resubmitted(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    sent, reply = resubmit(hub, req.msg_id)
    assert isinstance(sent, Resubmit) and reply.content["status"] == "ok"
    assert req.msg_id in hub.pending  # the original still runs


def test_a_request_whose_buffers_were_not_kept_is_refused_naming_the_setting() -> None:
    hub = make_hub(RetentionSettings(buffer_limit=10))
    register(hub, "e0")
    kept = balanced(hub, {}, b"small")
    large = balanced(hub, {}, b"x" * 11)
    for req in (kept, large):
        finish(hub, req, "e0")
    assert hub.store.get_record(large.msg_id)[REQUEST_OMITTED_FIELD]["bytes"] == 11
    (reply,) = resubmit(hub, kept.msg_id, large.msg_id)
    assert reply.content["ename"] == "RequestNotStored"
    assert "--store-buffer-limit" in reply.content["evalue"]
    assert "resubmitted_as" not in hub.store.get_record(kept.msg_id)  # all or nothing


def test_a_copy_the_scheduler_sent_without_buffers_is_marked() -> None:
    hub = make_hub(RetentionSettings(buffer_limit=100))
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [CLIENT, b"omitted:5000"], req)
    record = hub.store.get_record(req.msg_id)
    assert record["buffers"] is None and record["client_uuid"] == CLIENT.decode()
    assert record[REQUEST_OMITTED_FIELD] == {"bytes": 5000, "limit": 100}
    (reply,) = resubmit(hub, req.msg_id)
    assert reply.content["ename"] == "RequestNotStored" and "4.88 KiB" in reply.content["evalue"]


def test_a_copy_naming_its_engine_and_sent_without_buffers_has_both() -> None:
    """A task dispatched at once whose buffers were over the limit: (client, engine, omitted)."""
    hub = make_hub(RetentionSettings(buffer_limit=100))
    register(hub, "a")
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [CLIENT, b"a", b"omitted:5000"], req)
    record = hub.store.get_record(req.msg_id)
    assert (record["engine_uuid"], record["engine_id"]) == ("a", 0)
    assert record[REQUEST_OMITTED_FIELD] == {"bytes": 5000, "limit": 100}


def test_a_request_the_shell_could_not_read_is_marked_with_why(hub: HubHarness) -> None:
    req = session.msg("apply_request", {})
    hub.perform(hub.hub.handle_monitor(b"task_in", [CLIENT], req, hub.now, {"why": "gone"}))
    (reply,) = resubmit(hub, req.msg_id)
    assert reply.content["ename"] == "RequestNotStored" and "(gone)" in reply.content["evalue"]


def test_a_record_made_from_a_reply_alone_cannot_be_resubmitted(hub: HubHarness) -> None:
    register(hub, "e0")
    req = session.msg("apply_request", {})
    finish(hub, req, "e0")  # its request was never recorded (a controller restart)
    (reply,) = resubmit(hub, req.msg_id)
    assert reply.content["ename"] == "RequestNotStored"


def test_metadata_given_replaces_the_recorded_fields(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub, {"retries": 0, "timeout": 5})
    finish(hub, req, "e0")
    sent, _ = resubmit(hub, req.msg_id, metadata={"retries": 3})
    assert sent.metadata == {"retries": 3, "timeout": 5}


def test_a_stale_request_and_an_empty_one_are_refused(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    (stale,) = resubmit(hub, req.msg_id, controller="an-earlier-run")
    assert stale.content["ename"] == "StaleRequest"
    (empty,) = resubmit(hub)
    assert empty.content["status"] == "error" and "no msg_ids" in empty.content["evalue"]


def test_a_resubmission_that_could_not_be_sent_fails_its_record(hub: HubHarness) -> None:
    register(hub, "e0")
    req = balanced(hub)
    finish(hub, req, "e0")
    sent, _ = resubmit(hub, req.msg_id)
    new_id = sent.header["msg_id"]
    hub.perform(resubmit_failed(hub.hub, new_id, "no queue", hub.now))
    record = hub.store.get_record(new_id)
    assert record["status"] == "error" and record["result_content"]["evalue"] == "no queue"
    assert new_id not in hub.pending
