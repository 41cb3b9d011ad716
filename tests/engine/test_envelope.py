"""The engine's inline reading of a request equals ``Session.feed``: the same Message, the same
errors, the same replay record, whatever the frames."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.engine.envelope import read_request
from corral.errors import MalformedMessage, ProtocolError, ReplayError, SignatureError
from corral.protocol.serialize import pack_apply_message
from corral.protocol.session import DELIMITER, Message, Session

KEY = b"envelope-test-key"


def one() -> int:
    return 1


def request_frames(client: Session, metadata: dict[str, Any] | None = None) -> list[bytes]:
    """An apply request as the MUX or the scheduler delivers it: the client's identity first."""
    msg = client.msg(
        "apply_request", {}, metadata=metadata or {}, buffers=pack_apply_message(one, (), {})
    )
    return [bytes(memoryview(frame)) for frame in client.serialize(msg, [b"client-1"])]


def same(first: Message, second: Message) -> None:
    assert first.header == second.header
    assert first.parent_header == second.parent_header
    assert first.metadata == second.metadata
    assert first.content == second.content
    assert [bytes(memoryview(b)) for b in first.buffers] == [
        bytes(memoryview(b)) for b in second.buffers
    ]
    assert first.idents == second.idents


def outcome(session: Session, frames: list[Any], reader: Any) -> Message | str:
    try:
        return reader(session, frames)  # type: ignore[no-any-return]
    except ProtocolError as err:
        return f"{type(err).__name__}: {err}"


def test_the_usual_request_reads_as_feed_reads_it() -> None:
    client = Session(KEY)
    frames = request_frames(client, {"after": [], "shm_reader": {"host": "h", "pid": 7}})
    inline = read_request(Session(KEY, check_msg_type=False), frames)
    general = Session(KEY, check_msg_type=False).feed(frames)
    same(inline, general)
    assert inline.idents == (b"client-1",)
    assert inline.msg_type == "apply_request"


def test_a_replay_is_refused_and_a_bad_signature_too() -> None:
    client = Session(KEY)
    engine = Session(KEY, check_msg_type=False)
    frames = request_frames(client)
    read_request(engine, frames)
    with pytest.raises(ReplayError):
        read_request(engine, frames)
    forged = request_frames(client)
    forged[2] = b"0" * len(forged[2])
    with pytest.raises(SignatureError):
        read_request(engine, forged)
    with pytest.raises(SignatureError):
        read_request(Session(b"another key", check_msg_type=False), request_frames(client))


def test_a_fault_after_the_signature_names_the_fault_not_a_replay() -> None:
    """A signed request whose header lacks a field: verified, recorded, then refused by the
    general parse for what it is (without verifying again, which would call it a replay)."""
    client = Session(KEY)
    engine = Session(KEY, check_msg_type=False)
    msg = client.msg("apply_request", {})
    del msg.header["username"]
    frames = [bytes(memoryview(f)) for f in client.serialize(msg, [b"client-1"])]
    with pytest.raises(MalformedMessage, match="username"):
        read_request(engine, frames)
    not_json = request_frames(client)
    not_json[5] = b"{not json"
    not_json[2] = client.sign(not_json[3:7])
    with pytest.raises(MalformedMessage, match="metadata"):
        read_request(engine, not_json)
    a_list = request_frames(client)
    a_list[6] = b"[]"
    a_list[2] = client.sign(a_list[3:7])
    with pytest.raises(MalformedMessage, match="content is a JSON list"):
        read_request(engine, a_list)


def test_other_shapes_go_the_general_way() -> None:
    """No identity, two identities, a frame that is not bytes, an oversized header, or a
    session that checks types: each is read (or refused) exactly as feed does."""
    client = Session(KEY)
    frames = request_frames(client)
    cases = [
        frames[1:],  # no identity
        [b"device", *frames],  # two identities
        [frames[0], memoryview(frames[1]), *frames[2:]],
        [bytearray(frames[0]), *frames[1:]],
        frames[:6],  # too few frames
        [frames[0], frames[0], *frames[2:]],  # no delimiter
        [DELIMITER, *frames[1:]],  # the delimiter where the identity was
    ]
    for case in cases:
        inline = outcome(Session(KEY, check_msg_type=False), case, read_request)
        general = outcome(Session(KEY, check_msg_type=False), case, Session.feed)
        if isinstance(inline, Message) and isinstance(general, Message):
            same(inline, general)
        else:
            assert inline == general
    small = Session(KEY, check_msg_type=False, max_header_bytes=16)
    assert "oversized header" in str(outcome(small, request_frames(client), read_request))
    checking = Session(KEY)  # check_msg_type: the general path, which validates the type
    frames = request_frames(client)
    same(read_request(checking, frames), Session(KEY).feed(frames))


def test_an_unsigned_session_reads_the_usual_request() -> None:
    client = Session(b"")
    frames = request_frames(client)
    same(read_request(Session(b"", check_msg_type=False), frames), Session(b"").feed(frames))


@given(
    index=st.integers(min_value=0, max_value=8),
    junk=st.binary(max_size=40),
)
def test_any_frame_replaced_reads_as_feed_reads_it(index: int, junk: bytes) -> None:
    """Garbage in any frame (re-signed, so that the parse is reached too): the same Message or
    the same error from both readers."""
    client = Session(KEY)
    frames = request_frames(client)
    index = min(index, len(frames) - 1)
    frames[index] = junk
    for resign in (False, True):
        if resign and len(frames) >= 7:
            frames[2] = client.sign(frames[3:7])
        inline = outcome(Session(KEY, check_msg_type=False), list(frames), read_request)
        general = outcome(Session(KEY, check_msg_type=False), list(frames), Session.feed)
        if isinstance(inline, Message) and isinstance(general, Message):
            same(inline, general)
        else:
            assert inline == general
