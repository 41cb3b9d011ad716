"""What the client does with requests in flight across a controller outage (sans-I/O)."""

from __future__ import annotations

import gc

from corral.client.recovery import RESEND_LIMIT, UNKNOWN_CHECKS, Recovery, Resender
from corral.protocol.messages import RESENT
from corral.protocol.session import DELIMITER, Frame, Message, Session


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


def held_frames(session: Session, msg: Message) -> list[Frame]:
    """What the client holds of a load-balanced request: its frames from the signature on."""
    frames = session.serialize(msg)
    assert frames[0] == DELIMITER
    return frames[1:]


def test_a_held_request_is_given_back_a_bounded_number_of_times_until_released() -> None:
    session = Session(b"k")
    msg = session.msg("apply_request", {}, buffers=[b"call", b"buffer"])
    resender = Resender()
    assert resender.take("unknown", session) is None
    resender.hold(msg.msg_id, held_frames(session, msg))
    for sent in range(1, RESEND_LIMIT + 1):
        again = resender.take(msg.msg_id, session)
        assert again is not None
        assert (again.header, again.parent_header, again.content) == (msg.header, {}, {})
        assert again.buffers == (b"call", b"buffer")
        assert again.metadata == {**msg.metadata, RESENT: sent}
    assert resender.take(msg.msg_id, session) is None  # sent again often enough: it fails
    resender.hold("answered", held_frames(session, msg))
    resender.release("answered")
    assert resender.take("answered", session) is None and "answered" not in resender.held


def test_a_held_request_of_bytes_is_left_alone_by_the_cyclic_collector() -> None:
    """Every load-balanced task in flight is held: as a tuple of bytes, the collector stops
    tracking it at its first look, so it neither walks it again nor counts it towards its
    next full collection."""
    session = Session(b"k")
    msg = session.msg("apply_request", {}, metadata={"shm_reader": {"host": "h", "pid": 1}})
    resender = Resender()
    resender.hold(msg.msg_id, held_frames(session, msg))
    gc.collect()
    assert not gc.is_tracked(resender.held[msg.msg_id])


def test_each_copy_sent_again_has_a_new_signature() -> None:
    """Engines drop a signature they have seen as a replay: a copy the restarted scheduler
    forwards unchanged to an engine that received the first one would never be answered."""
    session = Session(b"k")
    msg = session.msg("apply_request", {}, metadata={"retries": 2})
    resender = Resender()
    resender.hold(msg.msg_id, held_frames(session, msg))
    copies = [resender.take(msg.msg_id, session) for _ in range(RESEND_LIMIT)]
    signatures = {session.serialize(m)[1] for m in [msg, *copies] if m is not None}
    assert len(signatures) == RESEND_LIMIT + 1
    receiver = Session(b"k")
    for copy in [msg, *copies]:
        assert copy is not None
        frames = session.serialize(copy)
        assert receiver.deserialize(frames[1:]).msg_id == msg.msg_id  # none is a replay
