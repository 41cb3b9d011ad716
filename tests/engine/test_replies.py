"""The engine's record of held tasks and recent replies, without sockets or clock."""

from __future__ import annotations

import gc

import pytest

from corral.engine import replies
from corral.engine.replies import MAX_KEPT, ReplyLog, marked_resent, parent_msg_id
from corral.kept_frames import compact, expand, kept_size
from corral.protocol.messages import RESENT
from corral.protocol.session import Frame, Session, frame_view
from corral.sockets import COPY_BELOW

session = Session(b"key")


def reply_frames(request_id: str) -> list[Frame]:
    request = session.msg("apply_request", {})
    request.header["msg_id"] = request_id
    reply = session.msg("apply_reply", {"status": "ok"}, parent=request)
    return [bytes(frame_view(f)) for f in session.serialize(reply, [b"client"])]


def test_parent_msg_id_reads_the_parent_header() -> None:
    assert parent_msg_id(reply_frames("abc")) == "abc"
    assert parent_msg_id([b"no", b"delimiter"]) is None
    assert parent_msg_id([b"<IDS|MSG>", b"sig"]) is None


def test_held_until_replied_then_kept_until_the_hub_confirms_the_record() -> None:
    log = ReplyLog()
    log.received("a")
    log.received("b")
    log.replied(b"mux", reply_frames("a"), now=10.0)
    assert log.to_report() == ["b", "a"]
    # no clock forgets it: a Hub far behind may not have read it yet however old it is
    assert log.recorded(b"task", "a") == 0  # confirmed on another channel: not this reply
    assert log.to_report() == ["b", "a"]
    assert log.recorded(b"mux", "a") == 1
    assert log.to_report() == ["b"]


def test_a_reply_named_by_its_sender_is_kept_under_that_name() -> None:
    """The main thread names the request a reply answers: the frames are not parsed then
    (unreadable ones are kept too); unnamed, they are read as before."""
    log = ReplyLog()
    log.received("a")
    assert log.replied(b"task", [b"not", b"parsed"], now=1.0, answers="a") == "a"
    assert log.replied(b"task", reply_frames("b"), now=2.0) == "b"
    assert log.replied(b"task", [b"unreadable"], now=3.0) is None
    assert log.to_report() == ["a", "b"]
    first, second = log.to_resend()
    assert first == (b"task", [b"not", b"parsed"])
    assert parent_msg_id(second[1]) == "b"


def test_kept_replies_are_not_walked_by_every_collection() -> None:
    """Thousands of replies wait for the Hub's confirmation (seconds): kept as tuples of bytes,
    the cyclic collector stops tracking them instead of walking them in every later pass (and
    promoting them to the oldest generation, whose walks cost most): the frames at the first
    pass, the entry holding them at the next."""
    log = ReplyLog()
    log.replied(b"task", reply_frames("a"), now=1.0, answers="a")
    gc.collect()
    gc.collect()
    kept = log.recent["a"]
    assert not gc.is_tracked(kept[2]) and not gc.is_tracked(kept)
    assert log.to_resend()[0][1] == expand(kept[2])


def test_a_kept_reply_is_joined_and_given_back_frame_by_frame() -> None:
    """Kept compact (orjson's output holds a 4 KiB buffer whatever its length: a reply's four
    JSON frames were 16 KiB of heap each, thousands kept): its small bytes frames joined, and
    given back the same frames to send again."""
    frames = reply_frames("a")
    kept = compact(frames)
    assert isinstance(kept[0], bytes) and kept[0] == b"".join(frames)
    assert expand(kept) == frames
    assert compact(kept) == kept  # already compact: as it is
    log = ReplyLog()
    log.replied(b"mux", kept, now=1.0)  # as the main thread notes it
    assert log.to_report() == ["a"]  # the parent header read from the joined frames
    assert log.to_resend() == [(b"mux", frames)]


def test_a_confirmation_covers_earlier_replies_of_its_channel_only() -> None:
    log = ReplyLog()
    for msg_id, channel in [("t1", b"task"), ("m1", b"mux"), ("t2", b"task"), ("t3", b"task")]:
        log.replied(channel, reply_frames(msg_id), now=0.0)
    assert log.recorded(b"task", "t2") == 2
    assert list(log.recent) == ["m1", "t3"]
    assert log.recorded(b"task", "unknown") == 0  # already forgotten, or never sent here
    assert list(log.recent) == ["m1", "t3"]


def test_resend_gives_recent_replies_oldest_first_once() -> None:
    log = ReplyLog()
    log.replied(b"mux", reply_frames("a"), now=1.0)
    log.replied(b"task", reply_frames("b"), now=2.0)
    resend = log.to_resend()
    assert [channel for channel, _ in resend] == [b"mux", b"task"]
    assert parent_msg_id(resend[1][1]) == "b"
    assert log.to_resend() == []


def test_direct_replies_are_confirmed_apart_and_sent_again_through_the_mux() -> None:
    """A direct reply reaches the Hub as the engine's own copy, a MUX reply through the
    device: a confirmation of the MUX's newest must not forget a direct reply sent before it
    (its copy may still be on its way), and the other way round. Sent again to a restarted
    controller, a direct reply goes through the MUX, whose device copies it for the Hub."""
    log = ReplyLog()
    for msg_id, channel in [("d1", b"direct"), ("m1", b"mux"), ("d2", b"direct")]:
        log.replied(channel, reply_frames(msg_id), now=0.0)
    assert log.recorded(b"mux", "m1") == 1
    assert list(log.recent) == ["d1", "d2"]
    assert log.recorded(b"direct", "d1") == 1
    assert list(log.recent) == ["d2"]
    log.replied(b"mux", reply_frames("m2"), now=0.0)
    assert [channel for channel, _ in log.to_resend()] == [b"mux", b"mux"]


def test_recent_replies_are_bounded() -> None:
    log = ReplyLog()
    frames = reply_frames("x")
    for index in range(MAX_KEPT + 5):
        log.received(str(index), index % 3)  # load-balanced, with retries
        log.replied(b"task", frames, now=0.0, answers=str(index))
    log.replied(b"mux", reply_frames("newest"), now=0.0)
    assert len(log.recent) == MAX_KEPT and "newest" in log.recent and "0" not in log.recent
    assert log.dropped == 6
    assert log.kept_bytes == sum(kept_size(kept) for _, _, kept in log.recent.values())
    assert log.replied_retries.keys() == log.recent.keys() - {"newest"}  # dropped with them


def test_a_bursts_replies_are_kept_until_confirmed() -> None:
    """A burst's replies wait seconds for the Hub's confirmation (it reads and writes their
    copies behind the burst): 30,000 no-op replies on one engine are all kept (10,000 were)."""
    log = ReplyLog()
    frames = reply_frames("x")
    for index in range(30_000):
        log.replied(b"task", frames, now=0.0, answers=str(index))
    assert log.dropped == 0 and len(log.recent) == 30_000
    assert log.recorded(b"task", "29999") == 30_000 and log.kept_bytes == 0


def test_kept_replies_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large results are kept by the bytes: the oldest go first, the newest always stays;
    the count follows what is confirmed, resent and replaced."""
    monkeypatch.setattr(replies, "MAX_KEPT_BYTES", 3 * COPY_BELOW)
    log = ReplyLog()
    for index in range(5):
        log.replied(b"mux", [*reply_frames(str(index)), b"r" * COPY_BELOW], now=0.0)
    assert list(log.recent) == ["3", "4"] and log.dropped == 3
    assert log.kept_bytes == sum(kept_size(kept) for _, _, kept in log.recent.values())
    log.replied(b"mux", reply_frames("4"), now=1.0)  # again, small now: replaces the kept one
    assert log.kept_bytes == sum(kept_size(kept) for _, _, kept in log.recent.values())
    assert log.recorded(b"mux", "3") == 1 and list(log.recent) == ["4"]
    log.replied(b"mux", [*reply_frames("big"), b"r" * (4 * COPY_BELOW)], now=2.0)
    assert list(log.recent) == ["big"]  # over the bound alone, the newest is still kept
    log.to_resend()
    assert log.kept_bytes == 0 and not log.recent


def test_a_reply_sent_again_has_a_new_signature_and_is_no_replay() -> None:
    """The restarted scheduler may have received the first copy (queued in the engine while
    no scheduler ran) before its copy to the Hub could be delivered; an identical second copy
    would be dropped there as a replay and the task never recorded."""
    frames = reply_frames("task-1")
    again = marked_resent(frames, session.sign)
    assert again[0] == b"client" and parent_msg_id(again) == "task-1"
    assert again[2] != frames[2]  # the signature
    receiver = Session(b"key")
    first = receiver.feed(frames)
    second = receiver.feed(again)  # not a ReplayError
    assert second.metadata == {**first.metadata, RESENT: 1}
    assert (second.header, second.content) == (first.header, first.content)
    # kept again and sent to the next controller: marked anew, another signature
    third = marked_resent(again, session.sign)
    assert third[2] not in (frames[2], again[2])
    assert receiver.feed(third).metadata == {**first.metadata, RESENT: 2}
    assert marked_resent([b"no", b"delimiter"], session.sign) == [b"no", b"delimiter"]
