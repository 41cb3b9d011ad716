"""corral.lane: the codec (packets of a message, their reassembly, malformed packets) and the
sockets (a backlog kept in order while the peer reads nothing, send_whole never half-sends,
a closed peer seen as closed). Real seqpacket socket pairs."""

from __future__ import annotations

import os
import socket

import pytest
import zmq

from corral.errors import ProtocolError
from corral.lane import (
    FIRST,
    HELLO,
    LANE_PACKET,
    LAST,
    Lane,
    LaneClosed,
    LaneListener,
    LaneServer,
    Reassembly,
    lane_name,
    packets,
    read_hello,
)


def through(frames: list[object]) -> tuple[int, list[bytes]]:
    """How many packets ``frames`` take, and what a reassembly makes of them."""
    reassembly, out = Reassembly(), None
    parts = packets(frames)
    for packet in parts:
        data = b"".join(bytes(part) for part in packet)  # type: ignore[call-overload]
        assert len(data) <= LANE_PACKET
        got = reassembly.feed(data)
        if got is not None:
            assert out is None, "two messages out of one"
            out = got
    assert out is not None and not reassembly.partial
    return len(parts), [bytes(frame) for frame in out]  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("frames", "count"),
    [
        ([b"a"], 1),
        ([b"", b"x" * 10], 1),
        ([b"a" * (LANE_PACKET - 9)], 1),  # flags, count and one length: 9 bytes
        ([b"a" * (LANE_PACKET - 8)], 2),
        ([b"y" * 70_000], 2),
        ([b"a", os.urandom(200_000), b"", b"z" * 65_530], 5),
        ([zmq.Frame(b"q" * 100_000), memoryview(b"w" * 5)], 2),
        ([memoryview(bytearray(range(256)) * 600).cast("B")], 3),
    ],
)
def test_a_message_comes_out_as_it_went_in(frames: list[object], count: int) -> None:
    assert through(frames) == (count, [bytes(frame) for frame in frames])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        bytes([FIRST | LAST]) + b"\x01\x00",  # header cut short
        bytes([FIRST | LAST]) + b"\x00\x00\x00\x00",  # no frames
        bytes([FIRST | LAST]) + b"\x01\x00\x00\x00\x05\x00\x00\x00abc",  # frame cut short
        bytes([LAST]) + b"abc",  # continues nothing
        bytes([0]) + b"abc",
    ],
)
def test_a_malformed_packet_is_refused(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        Reassembly().feed(packet)


def test_packets_must_add_up_to_the_message() -> None:
    parts = packets([b"x" * (2 * LANE_PACKET)])
    first, second = (b"".join(bytes(p) for p in packet) for packet in parts[:2])  # type: ignore[call-overload]
    reassembly = Reassembly()
    assert reassembly.feed(first) is None
    with pytest.raises(ProtocolError, match="began before"):
        reassembly.feed(first)
    reassembly = Reassembly()
    reassembly.feed(first)
    with pytest.raises(ProtocolError, match="add up"):
        reassembly.feed(bytes([LAST]) + second[1:])  # claims to end a message it does not


def pair() -> tuple[Lane, Lane]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Lane(a, b"b"), Lane(b, b"a")


def drain(lane: Lane) -> list[list[bytes]]:
    messages, still_open = lane.receive(1 << 30)
    assert still_open
    return [[bytes(frame) for frame in message] for message in messages]  # type: ignore[call-overload]


def test_a_backlog_keeps_the_order_while_the_peer_reads_nothing() -> None:
    sender, receiver = pair()
    sent = [[b"%d" % n, os.urandom(5000)] for n in range(400)]  # about 2 MB: far past the buffer
    flushed = [sender.send(message) for message in sent]
    assert not all(flushed) and sender.backlog
    got: list[list[bytes]] = []
    while sender.backlog:
        got += drain(receiver)
        sender.flush()
    got += drain(receiver)
    assert got == sent
    sender.close()
    receiver.close()


def test_send_whole_sends_one_packet_or_nothing() -> None:
    sender, receiver = pair()
    assert not sender.send_whole([b"x" * (2 * LANE_PACKET)])  # more than a packet
    assert drain(receiver) == []
    while sender.send_whole([b"y" * 4000]):  # until the buffer is full
        pass
    assert not sender.backlog
    received = drain(receiver)
    assert received and all(message == [b"y" * 4000] for message in received)
    while sender.send([b"z" * (3 * LANE_PACKET)]):  # until some of it waits in the backlog
        pass
    assert not sender.send_whole([b"after"])  # behind a backlog: never ahead of it
    sender.close()
    receiver.close()


def test_a_closed_peer_reads_as_closed_and_sends_raise() -> None:
    sender, receiver = pair()
    sender.send([b"last words"])
    sender.close()
    messages, still_open = receiver.receive(10)
    assert [[bytes(f) for f in m] for m in messages] == [[b"last words"]]  # type: ignore[call-overload]
    assert not still_open and receiver.closed
    with pytest.raises(LaneClosed):
        receiver.send([b"x"])
    other, its_peer = pair()
    other.close()
    assert other.receive(1) == ([], False)
    its_peer.close()


def test_a_listener_accepts_a_lane_that_says_hello() -> None:
    listener = LaneListener(lane_name("engine-uuid"))
    try:
        assert listener.accept() == []
        client = Lane.connect(listener.name, b"client-id", b"engine-uuid")
        (server,) = listener.accept()
        messages = drain(server)
        assert messages == [[HELLO, b"client-id"]]
        assert read_hello(messages[0]) == b"client-id"
        assert read_hello([b"hello", b"x"]) is None and read_hello([HELLO, b""]) is None
        client.close()
        server.close()
        with pytest.raises(OSError):
            Lane.connect(lane_name("nobody"), b"client-id", b"x")
    finally:
        listener.close()


def test_a_connect_to_a_full_listener_fails_at_once() -> None:
    """A listener that accepts nothing (its engine runs a long task) with a full queue: a new
    lane fails at once (OSError: the caller keeps the ROUTER), it never waits."""
    listener = LaneListener(lane_name("busy"))
    connected: list[Lane] = []
    try:
        with pytest.raises(OSError):
            for _ in range(1000):
                connected.append(Lane.connect(listener.name, b"c", b"busy"))
        assert len(connected) >= 1
    finally:
        for lane in connected:
            lane.close()
        listener.close()


Got = list[tuple[bytes | None, list[bytes]]]


def _recording_server(listener: LaneListener) -> tuple[LaneServer, dict[int, object], Got]:
    """A LaneServer with a dict for the loop (descriptor -> callback) that records each
    message as (peer, frames)."""
    watched: dict[int, object] = {}
    got: Got = []

    def on_message(lane: Lane, frames: list[object]) -> None:
        got.append((lane.peer, [bytes(frame) for frame in frames]))  # type: ignore[call-overload]

    return (
        LaneServer(listener, watched.__setitem__, watched.__delitem__, on_message, 8),
        watched,
        got,
    )


def test_a_lane_server_names_its_peers_hands_on_their_messages_and_drops_closed_lanes() -> None:
    """LaneServer, with a dict for the loop: the hello names the peer, later messages go to
    ``on_message``, a lane without hello is closed and counted, a closed lane is unwatched."""
    listener = LaneListener(lane_name("server"))
    server, watched, got = _recording_server(listener)
    try:
        server.start()
        assert list(watched) == [listener.fileno()]
        alice = Lane.connect(listener.name, b"alice", b"server")
        rude = Lane.connect(listener.name, b"rude", b"server")
        server.accept()
        assert len(watched) == 3 and len(server.lanes) == 2
        alice.send([b"one", b"two"])
        rude.sock.close()  # a client gone before its turn: only its hello was sent
        server.read_all(8)
        assert got == [(b"alice", [b"one", b"two"])]
        assert list(server.by_peer) == [b"alice"] and len(watched) == 2
        stranger = Lane(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        stranger.sock.connect("\0" + listener.name)
        stranger.send([b"no", b"hello"])
        server.read_all(8)
        assert server.rejected == 1 and len(server.lanes) == 1
        alice.close()
        server.read_all(8)
        assert server.lanes == {} and server.by_peer == {} and list(watched) == [listener.fileno()]
        stranger.close()
    finally:
        server.close()
        listener.close()


def test_read_all_without_accept_reads_the_known_lanes_and_leaves_a_new_one_to_the_listener() -> (
    None
):
    """``read_all(limit, accept=False)`` (the Hub's gathering timer, whose loop still watches
    the listener): the lanes already accepted are read, a lane that connected since is not
    accepted until a read that accepts (or the listener's own callback)."""
    listener = LaneListener(lane_name("gatherer"))
    server, watched, got = _recording_server(listener)
    known = Lane.connect(listener.name, b"known", b"gatherer")
    late: Lane | None = None
    try:
        server.start()
        server.accept()
        known.send([b"copy", b"1"])
        late = Lane.connect(listener.name, b"late", b"gatherer")
        late.send([b"copy", b"2"])
        server.read_all(2, accept=False)  # the hello, then the copy
        assert got == [(b"known", [b"copy", b"1"])]
        assert len(server.lanes) == 1 and list(server.by_peer) == [b"known"]
        server.read_all(2)
        assert got[1:] == [(b"late", [b"copy", b"2"])] and len(server.lanes) == 2
    finally:
        known.close()
        if late is not None:
            late.close()
        server.close()
        listener.close()
