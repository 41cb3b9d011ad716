"""The usual envelope's shared first steps (corral.protocol.usual), without sockets."""

from __future__ import annotations

import orjson
import pytest

from corral.errors import ReplayError, SignatureError
from corral.protocol.session import DELIMITER, HEADER_FIELDS, Session
from corral.protocol.usual import load_objects, read_routed, usual_header, usual_json

KEY = b"usual-test-key"


def signed(session: Session) -> list[bytes]:
    """A signature and four JSON frames, as on the wire after the delimiter."""
    msg = session.msg("apply_request", {}, metadata={"retries": 0})
    return [bytes(frame) for frame in session.serialize(msg)][1:]  # after the delimiter


def test_the_usual_frames_come_back_with_their_signature_checked_and_recorded() -> None:
    frames = signed(Session(KEY))
    reader = Session(KEY)
    parts = usual_json(reader, [b"client", b"<IDS|MSG>", *frames], 2)
    assert parts == tuple(frames[1:5])
    with pytest.raises(ReplayError):  # recorded: the same signature again is a replay
        usual_json(reader, frames, 0)
    assert usual_json(Session(KEY), frames, 0, verify=False) == tuple(frames[1:5])


def test_a_bad_signature_is_refused() -> None:
    frames = signed(Session(KEY))
    with pytest.raises(SignatureError):
        usual_json(Session(b"another key"), frames, 0)


@pytest.mark.parametrize("index", range(5))
def test_another_shape_is_none_and_nothing_is_checked(index: int) -> None:
    frames: list[object] = list(signed(Session(KEY)))
    frames[index] = memoryview(frames[index])  # type: ignore[arg-type]
    reader = Session(KEY)
    assert usual_json(reader, frames, 0) is None  # type: ignore[arg-type]
    assert usual_json(reader, signed(Session(KEY))[:4], 0) is None  # too few frames
    good = signed(Session(KEY))
    assert usual_json(reader, good, 0) is not None  # nothing was recorded before


def test_headers_over_the_size_limit_are_not_the_usual_shape() -> None:
    reader = Session(KEY)
    reader.max_header_bytes = 10
    assert usual_json(reader, signed(Session(KEY)), 0) is None


def test_load_objects_wants_four_json_objects() -> None:
    parts = (b'{"a": 1}', b"{}", b"{}", b'{"status": "ok"}')
    assert load_objects(parts) == ({"a": 1}, {}, {}, {"status": "ok"})
    assert load_objects((b"{}", b"[]", b"{}", b"{}")) is None
    assert load_objects((b"{}", b"{}", b"{", b"{}")) is None


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_usual_header_wants_every_field_a_string(field: str) -> None:
    session = Session(KEY)
    header = orjson.loads(signed(session)[1])
    assert usual_header(session, header)
    assert not usual_header(session, {**header, field: 7})
    assert not usual_header(session, {k: v for k, v in header.items() if k != field})
    assert not usual_header(session, [header])


def test_usual_header_checks_the_type_only_where_the_session_does() -> None:
    session = Session(KEY)
    header = {**orjson.loads(signed(session)[1]), "msg_type": "no_such_request"}
    session.check_msg_type = True
    assert not usual_header(session, header)
    session.check_msg_type = False
    assert usual_header(session, header)


def test_a_tuple_of_frames_reads_as_the_same_list_does() -> None:
    """Compiled, a list of frames is indexed as a list (and anything else copied into one
    first): a tuple (a bundle's message on the client) gives the same parts and Message."""
    sender = Session(KEY)
    routed = [b"engine", DELIMITER, *signed(sender), b"buffer"]
    assert usual_json(Session(KEY), tuple(routed), 2) == usual_json(Session(KEY), routed, 2)
    from_tuple = read_routed(Session(KEY), tuple(routed))
    from_list = read_routed(Session(KEY), routed)
    assert from_tuple == from_list
    assert from_tuple.idents == (b"engine",) and from_tuple.buffers == (b"buffer",)
