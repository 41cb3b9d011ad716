"""What the client does with requests in flight across a controller outage (sans-I/O)."""

from __future__ import annotations

from corral.client.recovery import RESEND_LIMIT, UNKNOWN_CHECKS, Recovery, Resender
from corral.protocol.messages import RESENT
from corral.protocol.session import Session


def test_completed_at_the_hub_are_fetched_and_pending_ones_asked_again() -> None:
    recovery = Recovery.of(["done", "running"])
    assert sorted(recovery.to_ask(["done", "running"])) == ["done", "running"]
    plan = recovery.answered({"done": "ok", "running": "pending"})
    assert plan.fetch == ["done"] and plan.lost == [] and plan.ask_again
    plan = recovery.answered({"running": "error"})
    assert plan.fetch == ["running"] and not plan.ask_again


def test_answered_here_meanwhile_is_forgotten() -> None:
    recovery = Recovery.of(["a", "b"])
    assert recovery.to_ask(["b"]) == ["b"]


def test_unknown_to_the_hub_several_times_in_a_row_is_lost() -> None:
    recovery = Recovery.of(["gone", "late"])
    for _ in range(UNKNOWN_CHECKS - 1):
        plan = recovery.answered({})
        assert plan.lost == [] and plan.ask_again
    plan = recovery.answered({"late": "pending"})  # recorded at last: the count starts over
    assert plan.lost == ["gone"] and plan.ask_again
    for _ in range(UNKNOWN_CHECKS - 1):
        assert recovery.answered({}).lost == []


def test_a_held_request_is_given_back_a_bounded_number_of_times_until_released() -> None:
    msg = Session(b"k").msg("apply_request", {})
    resender = Resender()
    assert resender.take("unknown") is None
    resender.hold(msg.msg_id, msg)
    for sent in range(1, RESEND_LIMIT + 1):
        again = resender.take(msg.msg_id)
        assert again is not None
        assert (again.header, again.content, again.buffers) == (msg.header, msg.content, ())
        assert again.metadata == {**msg.metadata, RESENT: sent}
    assert resender.take(msg.msg_id) is None  # sent again often enough: it fails instead
    resender.hold("answered", msg)
    resender.release("answered")
    assert resender.take("answered") is None and "answered" not in resender.held


def test_each_copy_sent_again_has_a_new_signature() -> None:
    """Engines drop a signature they have seen as a replay: a copy the restarted scheduler
    forwards unchanged to an engine that received the first one would never be answered."""
    session = Session(b"k")
    msg = session.msg("apply_request", {}, metadata={"retries": 2})
    resender = Resender()
    resender.hold(msg.msg_id, msg)
    copies = [resender.take(msg.msg_id) for _ in range(RESEND_LIMIT)]
    signatures = {session.serialize(m)[1] for m in [msg, *copies] if m is not None}
    assert len(signatures) == RESEND_LIMIT + 1
    receiver = Session(b"k")
    for copy in [msg, *copies]:
        assert copy is not None
        frames = session.serialize(copy)
        assert receiver.deserialize(frames[1:]).msg_id == msg.msg_id  # none is a replay
