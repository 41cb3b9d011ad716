"""The envelope: round trips, interop with jupyter_client, and every kind of bad input."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client.session import Session as JupyterSession

from corral.errors import (
    InvalidContent,
    MalformedMessage,
    ProtocolError,
    ReplayError,
    SignatureError,
    UnknownMessageType,
)
from corral.protocol.session import DELIMITER, Session, new_key, split_identities, utcnow
from tests.wire import recv_msg, send_msg

KEY = b"a-test-key-0123456789abcdef"


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A PAIR socket pair over tcp loopback: the real transport, no inproc shortcuts."""
    ctx = zmq.Context()
    a = ctx.socket(zmq.PAIR)
    b = ctx.socket(zmq.PAIR)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    a.linger = b.linger = 0
    yield a, b
    a.close()
    b.close()
    ctx.term()


def frames_of(session: Session, **kwargs: object) -> list:
    msg = session.msg("execute_request", {"code": "1+1"}, **kwargs)  # type: ignore[arg-type]
    return session.serialize(msg)


def test_round_trip_and_header_shape() -> None:
    session = Session(KEY)
    msg = session.msg("execute_request", {"code": "x = 1"}, metadata={"after": []})
    decoded = Session(KEY).feed(session.serialize(msg, idents=[b"peer"]))
    assert decoded.idents == (b"peer",)
    assert decoded.header == msg.header
    assert decoded.content == {"code": "x = 1"}
    assert decoded.metadata == {"after": []}
    assert decoded.header["version"] == "5.3"
    assert datetime.fromisoformat(decoded.header["date"]).tzinfo is not None


def test_msg_ids_are_unique() -> None:
    session = Session(KEY)
    ids = {session.msg("clear_request").msg_id for _ in range(10000)}
    assert len(ids) == 10000


def test_msg_ids_are_uuid_shaped_and_count_past_48_bits_without_repeating() -> None:
    session = Session(KEY)
    first, second = session.new_msg_id(), session.new_msg_id()
    assert len(first) == 36 and first[:24] == second[:24]
    assert int(second[24:], 16) == int(first[24:], 16) + 1 == 2
    session._id_counter = itertools.count((1 << 49) - 1)  # the last 48-bit count, then past
    last, past = session.new_msg_id(), session.new_msg_id()
    assert last[24:] == "f" * 12
    assert past[24:] == "1" + "0" * 12 and past != last


def test_utcnow_writes_the_microseconds_in_six_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    second = 1_800_000_000 * 1_000_000_000
    for nanoseconds, written in [(5_999, "000005"), (0, "000000"), (999_999_999, "999999")]:
        monkeypatch.setattr(time, "time_ns", lambda now=second + nanoseconds: now)
        assert utcnow() == f"2027-01-15T08:00:00.{written}+00:00"


def test_parent_header_links_reply() -> None:
    session = Session(KEY)
    request = session.msg("clear_request")
    reply = session.msg("clear_reply", {"status": "ok"}, parent=request)
    assert Session(KEY).feed(session.serialize(reply)).parent_id == request.msg_id


def test_header_only_parse_leaves_content_and_buffers_alone() -> None:
    session = Session(KEY)
    buffer = memoryview(bytearray(b"x" * 100_000))
    msg = session.msg("apply_request", {}, metadata={"retries": 2}, buffers=[buffer])
    frames = session.serialize(msg)
    frames[-2] = b"{not json, but never parsed"  # content frame
    receiver = Session(KEY)
    receiver._auth = None  # the tampered content would fail the signature; parse only
    decoded = receiver.feed(frames, content=False)
    assert decoded.content is None
    assert decoded.metadata == {"retries": 2}
    assert decoded.buffers[0] is buffer


def test_buffers_travel_without_copy_over_tcp(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    a, b = pair
    array = np.arange(1_000_000, dtype=np.float64)
    sender, receiver = Session(KEY), Session(KEY)
    send_msg(sender, a, "apply_request", {}, buffers=[memoryview(array)])
    msg = recv_msg(receiver, b)
    assert isinstance(msg.buffers[0], zmq.Frame)
    received = np.frombuffer(msg.buffers[0].buffer, dtype=np.float64)
    assert np.array_equal(received, array)


# ---------------------------------------------------------------- interop with jupyter_client


def test_jupyter_client_reads_our_messages(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    a, b = pair
    ours = Session(KEY)
    theirs = JupyterSession(key=KEY, signature_scheme="hmac-sha256")
    send_msg(ours, a, "execute_request", {"code": "print(1)"}, metadata={"k": 1})
    buffers = [b"buffer-one", memoryview(b"buffer-two" * 1000)]
    send_msg(ours, a, "apply_request", {}, buffers=buffers)
    first = theirs.recv(b, mode=0)[1]
    assert first["header"]["msg_type"] == "execute_request"
    assert first["content"] == {"code": "print(1)"}
    assert first["metadata"] == {"k": 1}
    second = theirs.recv(b, mode=0, copy=True)[1]
    assert second["header"]["msg_type"] == "apply_request"
    assert [bytes(x) for x in second["buffers"]] == [b"buffer-one", b"buffer-two" * 1000]


def test_we_read_jupyter_client_messages(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    a, b = pair
    theirs = JupyterSession(key=KEY, signature_scheme="hmac-sha256")
    ours = Session(KEY)
    theirs.send(a, "execute_request", {"code": "x"}, metadata={"m": 2})
    theirs.send(a, "apply_request", {}, buffers=[b"abc", b"d" * 100_000])
    first = recv_msg(ours, b)
    assert first.msg_type == "execute_request"
    assert first.content == {"code": "x"}
    assert first.metadata == {"m": 2}
    assert first.header["session"] == theirs.session
    second = recv_msg(ours, b)
    assert [bytes(f.buffer) for f in second.buffers] == [b"abc", b"d" * 100_000]


def test_jupyter_client_rejects_our_message_with_wrong_key(
    pair: tuple[zmq.Socket, zmq.Socket],
) -> None:
    a, b = pair
    send_msg(Session(b"other-key"), a, "clear_request")
    with pytest.raises(ValueError, match="Invalid Signature"):
        JupyterSession(key=KEY).recv(b, mode=0)


# ---------------------------------------------------------------- bad input


def test_wrong_key() -> None:
    with pytest.raises(SignatureError, match="invalid signature"):
        Session(KEY).feed(frames_of(Session(b"wrong")))


def test_unsigned_message_on_signed_session() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        Session(KEY).feed(frames_of(Session(b"")))


@pytest.mark.parametrize("index,name", [(2, "header"), (5, "content"), (3, "parent"), (4, "meta")])
def test_tampered_frames(index: int, name: str) -> None:
    frames = frames_of(Session(KEY))
    frames[index] = frames[index].replace(b"}", b', "x": 1}', 1)
    with pytest.raises(SignatureError):
        Session(KEY).feed(frames)


def test_replay_rejected() -> None:
    frames = frames_of(Session(KEY))
    receiver = Session(KEY)
    receiver.feed(frames)
    with pytest.raises(ReplayError, match="replayed"):
        receiver.feed(frames)


def test_replay_history_is_bounded() -> None:
    sender, receiver = Session(KEY), Session(KEY, digest_history_size=100)
    for _ in range(500):
        receiver.feed(frames_of(sender))
    assert len(receiver._digests) <= 100


def test_a_message_fed_by_several_threads_at_once_is_accepted_once() -> None:
    """Two threads may feed one session (a client's I/O thread and a thread reading its own
    reply): the same signed message arriving on both is accepted by one of them only. (The
    check and the record of a signature are adjacent steps with no call between them, where
    CPython 3.11 never switches threads: keep them so.)"""
    sender, receiver = Session(KEY), Session(KEY)
    messages = [frames_of(sender) for _ in range(300)]
    accepted: list[bytes] = []
    start = threading.Barrier(6)

    def feed_all() -> None:
        start.wait(10)
        for frames in messages:
            try:
                receiver.feed(list(frames))
            except ReplayError:
                continue
            accepted.append(frames[frames.index(DELIMITER) + 1])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=feed_all) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(accepted) == sorted(frames[frames.index(DELIMITER) + 1] for frames in messages)


def test_missing_delimiter() -> None:
    frames = frames_of(Session(KEY))
    frames.remove(DELIMITER)
    with pytest.raises(MalformedMessage, match="delimiter"):
        Session(KEY).feed(frames)


def test_too_few_frames() -> None:
    frames = frames_of(Session(KEY))[:4]
    with pytest.raises(MalformedMessage, match="too few frames"):
        Session(KEY).feed(frames)


def signed(session: Session, header: bytes, content: bytes = b"{}") -> list:
    json_frames = [header, b"{}", b"{}", content]
    return [DELIMITER, session.sign(json_frames), *json_frames]


def good_header(**changes: object) -> bytes:
    header = Session(KEY).header("clear_request")
    header.update(changes)
    return json.dumps(header).encode()


def test_invalid_json() -> None:
    with pytest.raises(MalformedMessage, match="invalid JSON in header"):
        Session(KEY).feed(signed(Session(KEY), b"{nope"))


def test_non_dict_json() -> None:
    with pytest.raises(MalformedMessage, match="header is a JSON list"):
        Session(KEY).feed(signed(Session(KEY), b"[1, 2]"))


def test_header_missing_field() -> None:
    header = json.loads(good_header())
    del header["msg_id"]
    with pytest.raises(MalformedMessage, match="msg_id"):
        Session(KEY).feed(signed(Session(KEY), json.dumps(header).encode()))


def test_unknown_msg_type() -> None:
    with pytest.raises(UnknownMessageType, match="bogus_request"):
        Session(KEY).feed(signed(Session(KEY), good_header(msg_type="bogus_request")))


def test_invalid_content_on_receive() -> None:
    frames = signed(Session(KEY), good_header(msg_type="abort_request"), b'{"msg_ids": 5}')
    with pytest.raises(InvalidContent, match="msg_ids"):
        Session(KEY).feed(frames)


def test_oversized_header() -> None:
    huge = good_header(padding="x" * 100_000)
    with pytest.raises(MalformedMessage, match="oversized header"):
        Session(KEY).feed(signed(Session(KEY), huge))


def test_bad_signature_scheme() -> None:
    with pytest.raises(ValueError, match="signature scheme"):
        Session(KEY, signature_scheme="md5")


def test_split_identities_does_not_touch_large_frames() -> None:
    big = memoryview(bytearray(10_000_000))
    idents, rest = split_identities([b"a", b"b", DELIMITER, big])
    assert idents == [b"a", b"b"]
    assert rest[0] is big


def test_new_key_is_random() -> None:
    assert new_key() != new_key()
    assert len(new_key()) == 64


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_random_frames_only_raise_protocol_errors(frames: list[bytes]) -> None:
    receiver = Session(KEY)
    try:
        receiver.feed(frames)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(
        st.binary(max_size=40),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    content=st.binary(max_size=40),
)
def test_signed_garbage_only_raises_protocol_errors(header: bytes, content: bytes) -> None:
    """Signed with the right key but garbage inside: still only ProtocolErrors."""
    try:
        Session(KEY).feed(signed(Session(KEY), header, content))
    except ProtocolError:
        pass


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512"])
@pytest.mark.parametrize("content_size", [2, 70_000])  # one-shot below 64 KiB, updates above
def test_the_signature_is_the_hmac_of_the_four_json_frames(scheme: str, content_size: int) -> None:
    """Signing takes two paths by size: both give the HMAC of the frames in order."""
    session = Session(KEY, signature_scheme=scheme)
    frames = [b'{"msg_id": "a"}', memoryview(b"{}"), b'{"x": 1}', b"c" * content_size]
    reference = hmac.new(KEY, digestmod=getattr(hashlib, scheme.removeprefix("hmac-")))
    for frame in frames:
        reference.update(frame)
    assert session.sign(frames) == reference.hexdigest().encode("ascii")


def test_utcnow_is_an_iso_utc_timestamp_with_microseconds_and_keeps_time() -> None:
    before = datetime.now(UTC)
    stamps = [utcnow() for _ in range(1000)]
    after = datetime.now(UTC)
    parsed = [datetime.fromisoformat(stamp) for stamp in stamps]
    assert all(len(stamp) == len("2026-01-02T03:04:05.000006+00:00") for stamp in stamps)
    assert all(when.utcoffset() == timedelta(0) for when in parsed)
    assert parsed == sorted(parsed)  # the per-second prefix never lags its microseconds
    tolerance = timedelta(milliseconds=1)  # two clocks read in turn: rounding only
    assert before - tolerance <= parsed[0] and parsed[-1] <= after + tolerance
