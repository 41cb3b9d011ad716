"""What the scheduler reads of requests and replies: the same fields, and the same refusals, as
the general :meth:`Session.deserialize` path it replaced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.controller.scheduler_wire import (
    read_copy,
    read_hub_copy,
    read_reply,
    read_request,
    split_route,
)
from corral.errors import CorralError, MalformedMessage, ReplayError, SignatureError
from corral.protocol.session import (
    DELIMITER,
    HEADER_FIELDS,
    Frame,
    Session,
    frame_view,
    split_identities,
)

KEY = b"scheduler-wire-key"


def _request(session: Session, metadata: dict[str, Any] | None = None) -> list[Frame]:
    msg = session.msg("apply_request", {}, metadata=metadata or {}, buffers=[b"f" * 40])
    return session.serialize(msg)[1:]  # after the delimiter


def _reply(session: Session, content: dict[str, Any] | None = None) -> list[Frame]:
    request = session.msg("apply_request", {})
    reply = session.msg(
        "apply_reply", content or {"status": "ok"}, request, {"status": "ok"}, [b"r"]
    )
    return session.serialize(reply)[1:]


def _as_zmq(frames: list[Frame]) -> list[Frame]:
    return [zmq.Frame(bytes(frame_view(frame))) for frame in frames]


@pytest.mark.parametrize("wrap", [list, _as_zmq])
def test_a_request_gives_the_header_and_metadata_the_general_path_gives(
    wrap: Callable[[list[Frame]], list[Frame]],
) -> None:
    frames = _request(Session(KEY), {"retries": 2, "after": None, "label": "x"})
    header, metadata = read_request(Session(KEY), wrap(frames))
    msg = Session(KEY).deserialize(frames, content=False)
    assert (header, metadata) == (msg.header, msg.metadata)


@pytest.mark.parametrize("wrap", [list, _as_zmq])
def test_a_reply_gives_its_parent_and_content(
    wrap: Callable[[list[Frame]], list[Frame]],
) -> None:
    frames = _reply(Session(KEY), {"status": "error", "ename": "E", "evalue": "v"})
    parent_id, content = read_reply(Session(KEY), wrap(frames))
    msg = Session(KEY).deserialize(frames)
    assert (parent_id, content) == (msg.parent_id, msg.content)


def test_signatures_are_checked_and_recorded() -> None:
    sender, receiver = Session(KEY), Session(KEY)
    frames = _request(sender)
    read_request(receiver, frames)
    with pytest.raises(ReplayError):
        read_request(receiver, frames)
    with pytest.raises(SignatureError):
        read_request(Session(b"another-key"), _request(sender))
    altered = _reply(sender)
    altered[4] = orjson.dumps({"status": "error"})
    with pytest.raises(SignatureError):
        read_reply(Session(KEY), altered)
    unsigned = _request(sender)
    unsigned[0] = b""
    with pytest.raises(SignatureError):
        read_request(Session(KEY), unsigned)


def _resigned(frames: list[Frame], index: int, part: bytes) -> list[Frame]:
    """``frames`` with JSON frame ``index`` (1-4) replaced and signed again, so that only the
    parsing can refuse it."""
    signer = Session(KEY)
    json_frames = [bytes(frame_view(frame)) for frame in frames[1:5]]
    json_frames[index - 1] = part
    return [signer.sign(json_frames), *json_frames, *frames[5:]]


BAD_PARTS = [
    (1, b"not json"),
    (1, b"[1, 2]"),
    (1, orjson.dumps({"msg_id": "m", "msg_type": "apply_request"})),  # fields missing
    (
        1,
        orjson.dumps(
            dict.fromkeys(("msg_id", "session", "username", "date", "version"), "x")
            | {"msg_type": "no_such_request"}
        ),
    ),
    (2, b"{"),
    (2, b"3"),
    (2, b"x" * (70 * 1024)),
]


@pytest.mark.parametrize(("index", "part"), BAD_PARTS)
def test_a_bad_header_or_parent_is_refused_as_the_general_path_refuses_it(
    index: int, part: bytes
) -> None:
    request = _resigned(_request(Session(KEY)), index, part)
    with pytest.raises(CorralError) as general:
        Session(KEY).deserialize(request, content=False)
    with pytest.raises(type(general.value)):
        read_request(Session(KEY), request)
    reply = _resigned(_reply(Session(KEY)), index, part)
    with pytest.raises(type(general.value)):
        read_reply(Session(KEY), reply)


@pytest.mark.parametrize("check_types", [True, False])
@pytest.mark.parametrize("wrap", [list, _as_zmq])
def test_a_copy_reads_as_deserialize_reads_it_without_the_signature(
    check_types: bool, wrap: Callable[[list[Frame]], list[Frame]]
) -> None:
    hub = Session(KEY, check_msg_type=check_types)
    for frames in (_request(Session(KEY), {"label": "x"}), _reply(Session(KEY))):
        frames = wrap(frames)
        frames[0] = b"not checked"
        copy = read_copy(hub, frames, [b"client", b"engine"], verify=False)
        expected = hub.deserialize(frames, idents=[b"client", b"engine"], verify=False)
        assert copy == expected


def test_a_checked_copy_has_its_signature_checked_and_recorded() -> None:
    hub = Session(KEY)
    frames = _reply(Session(KEY))
    assert read_copy(hub, frames, [b"c"]) == Session(KEY).deserialize(frames, idents=[b"c"])
    with pytest.raises(ReplayError):
        read_copy(hub, frames, [b"c"])
    altered = _reply(Session(KEY))
    altered[4] = orjson.dumps({"status": "error"})
    with pytest.raises(SignatureError):
        read_copy(hub, altered, [])
    assert read_copy(hub, altered, [], verify=False).content == {"status": "error"}


@pytest.mark.parametrize("check_types", [True, False])
def test_a_bad_copy_is_refused_as_deserialize_refuses_it(check_types: bool) -> None:
    hub = Session(KEY, check_msg_type=check_types)
    bad = [
        *[_resigned(_reply(Session(KEY)), index, part) for index, part in BAD_PARTS],
        _resigned(_reply(Session(KEY)), 3, b"[]"),
        _resigned(_reply(Session(KEY)), 4, b"nope"),
        _resigned(_reply(Session(KEY)), 4, orjson.dumps({"status": 1})),
        _reply(Session(KEY))[:4],
    ]
    refused = 0
    for frames in bad:
        try:
            expected = hub.deserialize(frames, verify=False)
        except CorralError as error:
            refused += 1
            with pytest.raises(type(error)):
                read_copy(hub, frames, (), verify=False)
        else:  # a session that checks no types takes an unknown type and any content
            assert read_copy(hub, frames, (), verify=False) == expected
    assert refused == (len(bad) if check_types else len(bad) - 2)


def test_a_signed_bad_copy_is_refused_for_its_fault_not_as_a_replay() -> None:
    """The controller's session (no type checks) reads a usual copy inline after checking its
    signature; a fault found after that check is named by the checked way, which must not
    check (and refuse) the recorded signature again."""
    bad = [
        *[_resigned(_reply(Session(KEY)), index, part) for index, part in BAD_PARTS],
        _resigned(_reply(Session(KEY)), 3, b"[]"),
        _resigned(_reply(Session(KEY)), 4, b"nope"),
        _resigned(_request(Session(KEY)), 1, orjson.dumps({"msg_id": 1})),
    ]
    refused = 0
    for frames in bad:
        try:
            expected = Session(KEY, check_msg_type=False).deserialize(frames)
        except CorralError as error:
            refused += 1
            assert not isinstance(error, ReplayError)
            with pytest.raises(type(error)):
                read_copy(Session(KEY, check_msg_type=False), frames, ())
        else:  # an unknown type: this session takes it
            assert read_copy(Session(KEY, check_msg_type=False), frames, ()) == expected
    assert refused == len(bad) - 1
    good = _reply(Session(KEY))
    hub = Session(KEY, check_msg_type=False)
    assert read_copy(hub, good, [b"c"]) == Session(KEY).deserialize(good, idents=[b"c"])
    with pytest.raises(ReplayError):
        read_copy(hub, good, [b"c"])


@pytest.mark.parametrize("field", HEADER_FIELDS)
@pytest.mark.parametrize("value", [None, 7])
def test_each_header_field_is_checked_on_the_inline_path_as_on_the_checked_one(
    field: str, value: object
) -> None:
    """The usual envelope's header check is written out field by field for speed
    (``corral.protocol.usual.usual_header``): each of the session's header fields, missing
    or not a string, is refused there as the general path refuses it."""
    readers: list[tuple[list[Frame], Callable[[Session, list[Frame]], object]]] = [
        (_request(Session(KEY)), read_request),
        (_reply(Session(KEY)), read_reply),
    ]
    for message, reader in readers:
        header = orjson.loads(bytes(frame_view(message[1])))
        if value is None:
            del header[field]
        else:
            header[field] = value
        bad = _resigned(message, 1, orjson.dumps(header))
        with pytest.raises(CorralError) as general:
            Session(KEY).deserialize(bad, content=False)
        with pytest.raises(type(general.value)):
            reader(Session(KEY), bad)


def test_bad_metadata_of_a_request_and_bad_content_of_a_reply_are_refused() -> None:
    with pytest.raises(MalformedMessage):
        read_request(Session(KEY), _resigned(_request(Session(KEY)), 3, b"[]"))
    for content in (b"nope", b"[]", b"{}", orjson.dumps({"status": 1})):
        with pytest.raises(MalformedMessage):
            read_reply(Session(KEY), _resigned(_reply(Session(KEY)), 4, content))


def test_too_few_frames_are_refused() -> None:
    with pytest.raises(MalformedMessage):
        read_request(Session(KEY), _request(Session(KEY))[:4])
    with pytest.raises(MalformedMessage):
        read_reply(Session(KEY), [])


def test_an_unsigned_session_reads_without_signatures() -> None:
    frames = _request(Session(b""))
    header, _ = read_request(Session(b""), frames)
    assert header["msg_type"] == "apply_request"


frame_lists = st.lists(
    st.one_of(st.binary(max_size=12), st.just(DELIMITER)), min_size=0, max_size=8
)


@settings(max_examples=300, deadline=None)
@given(frame_lists, st.integers(0, 8), st.sampled_from(["zmq", "memoryview"]))
def test_split_route_splits_as_split_identities(
    frames: list[bytes], wrapped: int, wrapper: str
) -> None:
    """Whatever the frames' kinds: the first ``wrapped`` of them as zmq Frames (a bundle's
    route) or memoryviews, the rest bytes."""
    wrap = zmq.Frame if wrapper == "zmq" else memoryview
    given_frames: list[Frame] = [
        wrap(frame) if index < wrapped else frame for index, frame in enumerate(frames)
    ]
    try:
        expected = split_identities(given_frames)
    except MalformedMessage:
        with pytest.raises(MalformedMessage):
            split_route(given_frames)
        return
    idents, rest = split_route(given_frames)
    assert idents == expected[0]
    assert all(type(ident) is bytes for ident in idents)
    assert [bytes(frame_view(f)) for f in rest] == [bytes(frame_view(f)) for f in expected[1]]


@pytest.mark.parametrize(
    "route",
    [
        [b"client-1"],
        [b"engine-uuid", b"client-1"],
        [b"a", b"b", b"c"],
        [DELIMITER],
        [b"x", DELIMITER],
    ],
)
def test_split_route_reads_the_usual_routes_as_split_identities(route: list[bytes]) -> None:
    """The two usual routes (one or two ``bytes`` identities) are taken without the loop; the
    others, and a tuple of frames, split as split_identities splits them."""
    frames = [*route, DELIMITER, *_request(Session(KEY))]
    for sequence in (frames, tuple(frames)):
        idents, rest = split_route(sequence)
        expected_idents, expected_rest = split_identities(list(sequence))
        assert idents == expected_idents and type(rest) is list
        assert [bytes(frame_view(f)) for f in rest] == [bytes(frame_view(f)) for f in expected_rest]


def test_the_hubs_copy_of_a_request_has_fresh_empty_objects_and_the_general_fields() -> None:
    """A request's parent header and content come as ``{}``, which the Hub's reader makes
    without the parser: equal to what the general parser gives, and a new dict each time (the
    records keep them); any other text is parsed, and refused as the general parser refuses
    it."""
    hub = Session(KEY, check_msg_type=False)
    frames = _request(Session(KEY), {"label": "x"})
    assert frames[2] == frames[4] == b"{}"
    first = read_hub_copy(hub, frames, verify=False)
    second = read_hub_copy(hub, frames, verify=False)
    expected = hub.deserialize(frames, verify=False)
    assert (first.header, first.parent_header, first.metadata, first.content) == (
        expected.header,
        expected.parent_header,
        expected.metadata,
        expected.content,
    )
    assert first.buffers == tuple(expected.buffers)
    assert first.msg_id == expected.msg_id and first.msg_type == "apply_request"
    assert first.parent_id is None
    assert first.parent_header is not second.parent_header
    assert first.content is not second.content
    assert first.parent_header is not first.content
    for index in (2, 4):  # the parent header, the content
        for bad in (b"{", b"{}}", b"[]", b"{} x"):
            with pytest.raises(MalformedMessage):
                Session(KEY, check_msg_type=False).deserialize(_resigned(frames, index, bad))
            with pytest.raises(MalformedMessage):
                read_hub_copy(Session(KEY, check_msg_type=False), _resigned(frames, index, bad))


def test_a_header_the_sender_checked_is_parsed_when_read() -> None:
    """The task scheduler's copies have their header checked there: the Hub's reader keeps it
    as its frame until it is read, then parses it as the general parser does; a header that
    is not what the scheduler passes on is refused when read."""
    hub = Session(KEY, check_msg_type=False)
    frames = _reply(Session(KEY))
    copy = read_hub_copy(hub, frames, verify=False, header_checked=True)
    assert copy.header_unread and copy.header_text == frames[1]
    expected = hub.deserialize(frames, verify=False)
    assert (copy.parent_header, copy.metadata, copy.content) == (
        expected.parent_header,
        expected.metadata,
        expected.content,
    )
    assert copy.parent_id == expected.parent_id
    assert copy.header == expected.header and not copy.header_unread
    assert copy.msg_id == expected.msg_id
    for bad in (b"[]", b"{", orjson.dumps({"msg_id": "m"})):
        copy = read_hub_copy(hub, _resigned(frames, 1, bad), verify=False, header_checked=True)
        with pytest.raises(MalformedMessage):
            _ = copy.header
    # the other frames are checked as without it
    with pytest.raises(MalformedMessage):
        read_hub_copy(hub, _resigned(frames, 3, b"[]"), verify=False, header_checked=True)
