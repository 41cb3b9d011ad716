"""The engine's record of held tasks and recent replies, without sockets or clock."""

from __future__ import annotations

from corral.engine.replies import MAX_KEPT, ReplyLog, parent_msg_id
from corral.protocol.session import Session

session = Session(b"key")


def reply_frames(request_id: str) -> list[bytes]:
    request = session.msg("apply_request", {})
    request.header["msg_id"] = request_id
    reply = session.msg("apply_reply", {"status": "ok"}, parent=request)
    return [bytes(f) for f in session.serialize(reply, [b"client"])]


def test_parent_msg_id_reads_the_parent_header() -> None:
    assert parent_msg_id(reply_frames("abc")) == "abc"
    assert parent_msg_id([b"no", b"delimiter"]) is None
    assert parent_msg_id([b"<IDS|MSG>", b"sig"]) is None


def test_held_until_replied_then_kept_until_the_controller_is_seen_alive() -> None:
    log = ReplyLog(keep_for=2.0)
    log.received("a")
    log.received("b")
    log.replied(b"mux", reply_frames("a"), now=10.0)
    assert log.to_report() == ["b", "a"]
    log.controller_alive(now=11.0)  # too recent to be sure it was read
    assert "a" in log.recent
    log.controller_alive(now=12.5)
    assert log.to_report() == ["b"]


def test_resend_gives_recent_replies_oldest_first_once() -> None:
    log = ReplyLog()
    log.replied(b"mux", reply_frames("a"), now=1.0)
    log.replied(b"task", reply_frames("b"), now=2.0)
    resend = log.to_resend()
    assert [channel for channel, _ in resend] == [b"mux", b"task"]
    assert parent_msg_id(resend[1][1]) == "b"
    assert log.to_resend() == []


def test_recent_replies_are_bounded() -> None:
    log = ReplyLog()
    frames = reply_frames("x")
    for index in range(MAX_KEPT + 5):
        log.recent[str(index)] = (0.0, b"mux", frames)
    log.replied(b"mux", reply_frames("newest"), now=0.0)
    assert len(log.recent) == MAX_KEPT and "newest" in log.recent and "0" not in log.recent
