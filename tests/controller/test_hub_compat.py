"""What the Hub answers for ipyparallel's queries (issue 11): unknown msg_ids a client may
know before the Hub does, verbose queue status with unassigned msg_ids, labels, and
db queries that leave buffers out unless asked for."""

from __future__ import annotations

from corral.controller.hub import Send
from tests.controller.hub_harness import HubHarness
from tests.controller.test_hub import hub, register, reply_for, request, session, submit_mux

__all__ = ["hub"]  # the fixture, shared with test_hub


def only(actions: list[object]) -> Send:
    (reply,) = actions
    assert isinstance(reply, Send)
    return reply


def test_unknown_msg_ids_are_reported_not_refused_when_asked(hub: HubHarness) -> None:
    register(hub, "e0")
    known = submit_mux(hub, "e0")
    reply = only(
        hub.handle_request(
            [b"c"],
            request(
                "result_request",
                msg_ids=[known.msg_id, "not-yet"],
                statusonly=False,
                unknown_pending=True,
            ),
        )
    )
    assert reply.content["status"] == "ok"
    assert reply.content["unknown"] == ["not-yet"]
    assert reply.content["pending"] == [known.msg_id]
    refused = only(hub.handle_request([b"c"], request("result_request", msg_ids=["not-yet"])))
    assert refused.content["status"] == "error"  # without the flag: as before


def test_verbose_queue_status_lists_unassigned_msg_ids(hub: HubHarness) -> None:
    register(hub, "e0")
    task = session.msg("apply_request", {}, metadata={"label": "mine"})
    hub.handle_monitor(b"task_in", [b"client-1"], task)
    direct = submit_mux(hub, "e0")
    verbose = only(hub.handle_request([b"c"], request("queue_request", verbose=True))).content
    assert verbose["unassigned"] == [task.msg_id]
    assert verbose["0"]["queue"] == [direct.msg_id]
    counts = only(hub.handle_request([b"c"], request("queue_request"))).content
    assert counts["unassigned"] == 1 and counts["0"]["queue"] == 1
    labelled = only(
        hub.handle_request([b"c"], request("db_request", query={"label": "mine"}))
    ).content
    assert [r["msg_id"] for r in labelled["records"]] == [task.msg_id]


def test_db_query_leaves_buffers_out_unless_named(hub: HubHarness) -> None:
    register(hub, "e0")
    req = submit_mux(hub, "e0")
    hub.handle_monitor(b"mux_out", [b"client-1", b"e0"], reply_for(req, buffers=(b"xy",)))
    plain = only(hub.handle_request([b"c"], request("db_request", query={})))
    assert "result_buffers" not in plain.content["records"][0] and not plain.buffers
    named = only(
        hub.handle_request(
            [b"c"], request("db_request", query={}, keys=["msg_id", "result_buffers"])
        )
    )
    assert named.content["records"][0]["result_buffer_count"] == 1
